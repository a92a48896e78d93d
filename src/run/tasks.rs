//! Tasks: opened on assignment (restored from the changelog when local
//! state does not provably continue it) and closed on revocation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::store::TaskStore;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::group::{is_fatal_consumer_error, GroupConsumer};
use super::{now_ms, RunError, Worker, TIMEOUT};

impl Worker {
    pub(super) fn on_revoke(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        self.commit(consumer)?;
        let revoked: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        for p in &revoked {
            if self.tasks.remove(p).is_some() {
                tracing::info!(partition = p, "task closed (revoked)");
            }
        }
        Ok(())
    }

    pub(super) fn on_assign(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        let mut by_partition: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        for el in tpl.elements() {
            by_partition.entry(el.partition()).or_default().insert(el.topic().to_string());
        }
        for (p, topics) in &by_partition {
            if topics != &self.sources {
                let missing: Vec<&String> = self.sources.difference(topics).collect();
                return Err(RunError::Assignment(format!(
                    "partition {p} was assigned for {topics:?} but not for {missing:?}; use partition.assignment.strategy=range and equal partition counts"
                )));
            }
        }
        let new: Vec<i32> = by_partition.keys().copied().filter(|p| !self.tasks.contains_key(p)).collect();
        if new.is_empty() {
            return Ok(());
        }
        // The group's committed offsets first: with read_committed this
        // fetch waits until no transactional offset commit of the group is
        // pending (KIP-447), so the previous owner's last transaction is
        // complete, and every changelog record it wrote lies below the high
        // watermarks read next. Restoring up to those brings the state up to
        // the offsets the consumer will start from.
        let mut wanted = TopicPartitionList::new();
        for el in tpl.elements().iter().filter(|el| new.contains(&el.partition())) {
            wanted.add_partition(el.topic(), el.partition());
        }
        consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| RunError::kafka("read the group's committed offsets of the assigned partitions", e))?;
        for p in new {
            let mut task = self.db.task(p)?;
            task.bind_changelog(&self.changelog_id);
            let started = Instant::now();
            let restored = self.restore(&mut task)?;
            tracing::info!(
                partition = p,
                restored,
                checkpoint = task.checkpoint(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "task opened"
            );
            self.tasks.insert(p, task);
        }
        Ok(())
    }

    /// Why the task's local keyspace cannot be taken to continue at its
    /// checkpoint within the changelog partition spanning `low..high`
    /// (`None`: it can).
    pub(super) fn discontinuity(&self, task: &TaskStore, low: i64, high: i64) -> Option<String> {
        let cp = task.checkpoint_info();
        if cp.offset == 0 && task.approximate_keys() == 0 {
            return None;
        }
        match &cp.changelog {
            None => return Some("the checkpoint does not say which changelog it belongs to (written by an earlier version)".into()),
            Some(id) if *id != self.changelog_id => {
                return Some(format!("the changelog is not the one the checkpoint belongs to (it was {id}, now {}): deleted and created again, or another cluster", self.changelog_id))
            }
            Some(_) => {}
        }
        if cp.offset > high {
            return Some(format!("the checkpoint {} is past the changelog's end {high}", cp.offset));
        }
        if cp.offset < low {
            return Some(format!("the checkpoint {} is below the changelog's start {low}", cp.offset));
        }
        let age = now_ms() - cp.written_ms;
        if cp.offset < high && age >= self.changelog_delete_retention_ms {
            // Another owner wrote after the checkpoint; a null record it
            // wrote (a key deleted and collected) may have been compacted
            // away since, and the local keyspace would keep that key.
            return Some(format!(
                "the checkpoint was written {} s ago, longer than the changelog's delete.retention.ms ({} s): null records written since may be compacted away",
                age / 1000,
                self.changelog_delete_retention_ms / 1000
            ));
        }
        None
    }

    /// Brings the task's keyspace up to the changelog's high watermark:
    /// from its checkpoint when the local keyspace provably continues the
    /// changelog, otherwise wiped and from the changelog's start. Reads
    /// committed records only, and does not stop at an end that an open
    /// transaction pins (the last stable offset) below the high watermark:
    /// it waits until everything up to the high watermark is decided.
    pub(super) fn restore(&self, task: &mut TaskStore) -> Result<u64, RunError> {
        let p = task.partition();
        let watermarks = || {
            self.watermarks
                .fetch_watermarks(&self.changelog, p, TIMEOUT)
                .map_err(|e| RunError::kafka(format!("watermarks of {} partition {p}", self.changelog), e))
        };
        let (mut low, mut high) = watermarks()?;
        // A checkpoint counts the commit marker of this instance's last
        // transaction, which the broker may still be writing when the
        // partition comes straight back (commit returns before every marker
        // is written): give it a moment before calling the checkpoint
        // "past the end".
        let deadline = Instant::now() + Duration::from_secs(5);
        while task.checkpoint() > high && Instant::now() < deadline && !self.shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            (low, high) = watermarks()?;
        }
        if let Some(why) = self.discontinuity(task, low, high) {
            let removed = task.wipe()?;
            tracing::info!(
                partition = p,
                removed,
                "local state of task {p} not trusted, restoring it from the changelog's start: {why}"
            );
        }
        let start = task.checkpoint().max(low);
        if start >= high {
            task.commit(start)?;
            self.metrics.restore(p, 0, 0.0);
            return Ok(0);
        }
        let began = Instant::now();
        tracing::info!(partition = p, from = start, to = high, "restoring state from the changelog");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.changelog, p, Offset::Offset(start)).map_err(|e| RunError::kafka("restore", e))?;
        self.restorer.assign(&tpl).map_err(|e| RunError::kafka("assign changelog", e))?;
        let result = self.restore_from(task, start, high, began);
        let _ = self.restorer.unassign();
        let restored = result?;
        self.metrics.restore(p, 0, restored as f64 / began.elapsed().as_secs_f64().max(1e-3));
        Ok(restored)
    }

    pub(super) fn restore_from(&self, task: &mut TaskStore, start: i64, high: i64, began: Instant) -> Result<u64, RunError> {
        let p = task.partition();
        let mut next = start;
        let mut restored = 0u64;
        let mut last_log = Instant::now();
        // Below `high`, past the last committed record, lie only transaction
        // markers and aborted records once the last stable offset (LSO) has
        // reached `high`. An end-of-partition seen before that may be at an
        // older LSO; so once the LSO has reached `high`, seek to `next` again
        // (the LSO never goes back) and take the next end-of-partition as
        // the end.
        let settled = || -> Result<bool, RunError> {
            match self.restorer.fetch_watermarks(&self.changelog, p, TIMEOUT) {
                Ok((_, stable)) => Ok(stable >= high),
                // Not known now (the broker away): not settled; asked again.
                Err(e) if !is_fatal_consumer_error(&e) => {
                    tracing::debug!(partition = p, "last stable offset of {}: {e}", self.changelog);
                    Ok(false)
                }
                Err(e) => Err(RunError::kafka(format!("last stable offset of {} partition {p}", self.changelog), e)),
            }
        };
        let mut confirmed: Option<Instant> = None;
        while next < high {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(RunError::Interrupted);
            }
            match self.restorer.poll(Duration::from_millis(200)) {
                Some(Err(KafkaError::PartitionEOF(_))) if confirmed.is_some() => break,
                None | Some(Err(KafkaError::PartitionEOF(_))) => {
                    // A seek whose end-of-partition librdkafka does not
                    // report again (it was reported already) is repeated.
                    let again = confirmed.is_some_and(|at| at.elapsed() > Duration::from_secs(3));
                    if (confirmed.is_none() && settled()?) || again {
                        self.restorer
                            .seek(&self.changelog, p, Offset::Offset(next), TIMEOUT)
                            .map_err(|e| RunError::kafka(format!("seek {} partition {p}", self.changelog), e))?;
                        confirmed = Some(Instant::now());
                    } else if confirmed.is_none() && last_log.elapsed() > Duration::from_secs(5) {
                        tracing::info!(
                            partition = p,
                            at = next,
                            to = high,
                            "waiting for an open transaction on the changelog partition to finish before the task starts"
                        );
                        last_log = Instant::now();
                    }
                }
                // The broker away for a while (a restart): librdkafka
                // reconnects by itself; the restore waits, as the main loop does.
                Some(Err(e)) if !is_fatal_consumer_error(&e) => {
                    if last_log.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(partition = p, at = next, to = high, "restoring {}: {e}; retrying", self.changelog);
                        last_log = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(RunError::kafka(format!("restore {} partition {p}", self.changelog), e)),
                Some(Ok(m)) => {
                    // Stored as it is: the state decodes when first read.
                    task.put_restored_bytes(m.key().unwrap_or_default(), m.payload())?;
                    next = m.offset() + 1;
                    restored += 1;
                    if restored.is_multiple_of(10_000) {
                        // Bounded memory, and progress that survives a crash.
                        task.commit(next)?;
                    }
                    if restored.is_multiple_of(1000) {
                        self.metrics.restore(p, high - next, restored as f64 / began.elapsed().as_secs_f64().max(1e-3));
                    }
                    if last_log.elapsed() > Duration::from_secs(5) {
                        tracing::info!(partition = p, at = next, to = high, restored, "restoring");
                        last_log = Instant::now();
                    }
                }
            }
        }
        // Complete up to the high watermark (what lies between the last
        // record and it is markers or aborted records).
        task.commit(high)?;
        Ok(restored)
    }
}
