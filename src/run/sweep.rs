//! Deleted keys past `tombstone_retention` leave the store and the
//! changelog (by stream time).

use std::time::{Duration, Instant};

use rdkafka::producer::BaseRecord;

use super::{RunError, Worker, SWEEP_BATCH};
use crate::events::TombstonesDropped;

impl Worker {
    /// How often deleted keys are collected: a quarter of the shortest
    /// retention of any table, between 100 ms and a minute.
    pub(super) fn sweep_interval(&self) -> Duration {
        let retention = self.tables.iter().map(|t| t.config.merge.tombstone_retention).min().unwrap_or(Duration::from_secs(240));
        (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Drops the states of keys that resolve to deleted and whose newest
    /// version is older than `tombstone_retention` (design §1, "Deleted
    /// keys"), a bounded batch per task: removed from the local store at the
    /// commit, and a null record on the changelog so compaction forgets them
    /// too. The output topic already holds the key's tombstone.
    pub(super) fn sweep_tombstones(&mut self) -> Result<(), RunError> {
        self.last_sweep = Instant::now();
        let mut expired: Vec<(usize, i32, Vec<String>)> = Vec::new();
        for (ti, table) in self.tables.iter_mut().enumerate() {
            let engine = table.pipeline.engine();
            for (p, task) in table.tasks.iter_mut() {
                // Stream time, not the wall clock: catching up on an old backlog
                // must not collect a delete while an older concurrent update may
                // still wait in another source's partition.
                let Some(stream_time) = task.stream_time(&table.topics) else { continue };
                let keys = task.sweep(SWEEP_BATCH, |s| engine.tombstone_expired(s, stream_time))?;
                if !keys.is_empty() {
                    expired.push((ti, *p, keys));
                }
            }
        }
        if expired.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for (ti, p, keys) in expired {
            for key in &keys {
                if self.exactly_once {
                    // (At-least-once writes the null record at the commit.)
                    self.send(BaseRecord::to(&self.tables[ti].changelog).partition(p).key(key.as_bytes()))?;
                }
                if let Some(task) = self.tables[ti].tasks.get_mut(&p) {
                    task.remove(key);
                }
            }
            TombstonesDropped { table: &self.tables[ti].name, partition: p, keys: keys.len() }
                .emit(&self.metrics, &mut self.counters);
        }
        Ok(())
    }
}
