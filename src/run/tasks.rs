//! Tasks: opened on assignment (restored from the changelog when local
//! state does not provably continue it) and closed on revocation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::events::RestoreProgress;
use crate::store::TaskStore;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::group::{is_fatal_consumer_error, GroupConsumer};
use super::{now_ms, RunError, Table, Worker, TIMEOUT};

impl Worker {
    pub(super) fn on_revoke(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        self.commit(consumer)?;
        for (ti, partitions) in self.tasks_of(tpl) {
            let table = &mut self.tables[ti];
            for p in partitions.into_keys() {
                if table.tasks.remove(&p).is_some() {
                    tracing::info!(table = %table.name, partition = p, "task closed (revoked)");
                }
            }
        }
        Ok(())
    }

    /// The (table, partitions) pairs whose tasks `tpl` names: partitions of
    /// the topics a table's tasks consume (a source re-keyed into a
    /// repartition topic is consumed outside the tasks).
    fn tasks_of(&self, tpl: &TopicPartitionList) -> BTreeMap<usize, BTreeMap<i32, BTreeSet<String>>> {
        let mut out: BTreeMap<usize, BTreeMap<i32, BTreeSet<String>>> = BTreeMap::new();
        for el in tpl.elements() {
            match self.routes.get(el.topic()) {
                Some(route) if route.rekey.is_none() => {
                    out.entry(route.table).or_default().entry(el.partition()).or_default().insert(el.topic().to_string());
                }
                _ => {}
            }
        }
        out
    }

    pub(super) fn on_assign(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        let assigned = self.tasks_of(tpl);
        let mut new: Vec<(usize, i32)> = Vec::new();
        for (ti, partitions) in &assigned {
            let table = &self.tables[*ti];
            for (p, topics) in partitions {
                if topics != &table.topics {
                    let missing: Vec<&String> = table.topics.difference(topics).collect();
                    return Err(RunError::Assignment(format!(
                        "partition {p} of table {} was assigned for {topics:?} but not for {missing:?}; use partition.assignment.strategy=range and equal partition counts",
                        table.name
                    )));
                }
                if !table.tasks.contains_key(p) {
                    new.push((*ti, *p));
                }
            }
        }
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
        for (ti, p) in &new {
            for topic in &self.tables[*ti].topics {
                wanted.add_partition(topic, *p);
            }
        }
        consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| RunError::kafka("read the group's committed offsets of the assigned partitions", e))?;
        for (ti, p) in new {
            let table = &self.tables[ti];
            let mut task = self.db.table_task(table.store_name.as_deref(), p)?;
            task.bind_changelog(&table.changelog_id);
            let started = Instant::now();
            let restored = self.restore(ti, &mut task)?;
            tracing::info!(
                table = %table.name,
                partition = p,
                restored,
                checkpoint = task.checkpoint(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "task opened"
            );
            self.tables[ti].tasks.insert(p, task);
        }
        Ok(())
    }

    /// Why the task's local keyspace cannot be taken to continue at its
    /// checkpoint within the changelog partition spanning `low..high`
    /// (`None`: it can).
    pub(super) fn discontinuity(table: &Table, task: &TaskStore, low: i64, high: i64) -> Option<String> {
        let cp = task.checkpoint_info();
        if cp.offset == 0 && task.approximate_keys() == 0 {
            return None;
        }
        match &cp.changelog {
            None => return Some("the checkpoint does not say which changelog it belongs to (written by an earlier version)".into()),
            Some(id) if *id != table.changelog_id => {
                return Some(format!("the changelog is not the one the checkpoint belongs to (it was {id}, now {}): deleted and created again, or another cluster", table.changelog_id))
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
        if cp.offset < high && age >= table.changelog_delete_retention_ms {
            // Another owner wrote after the checkpoint; a null record it
            // wrote (a key deleted and collected) may have been compacted
            // away since, and the local keyspace would keep that key.
            return Some(format!(
                "the checkpoint was written {} s ago, longer than the changelog's delete.retention.ms ({} s): null records written since may be compacted away",
                age / 1000,
                table.changelog_delete_retention_ms / 1000
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
    pub(super) fn restore(&self, table: usize, task: &mut TaskStore) -> Result<u64, RunError> {
        let p = task.partition();
        let table = &self.tables[table];
        let changelog = table.changelog.as_str();
        let watermarks = || {
            self.watermarks
                .fetch_watermarks(changelog, p, TIMEOUT)
                .map_err(|e| RunError::kafka(format!("watermarks of {changelog} partition {p}"), e))
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
        if let Some(why) = Self::discontinuity(table, task, low, high) {
            let removed = task.wipe()?;
            tracing::info!(
                table = %table.name,
                partition = p,
                removed,
                "local state of task {p} not trusted, restoring it from the changelog's start: {why}"
            );
        }
        let start = task.checkpoint().max(low);
        if start >= high {
            task.commit(start)?;
            RestoreProgress { table: &table.name, partition: p, remaining: 0, rate: 0.0 }.emit(&self.metrics);
            return Ok(0);
        }
        let began = Instant::now();
        tracing::info!(table = %table.name, partition = p, from = start, to = high, "restoring state from the changelog");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(changelog, p, Offset::Offset(start)).map_err(|e| RunError::kafka("restore", e))?;
        self.restorer.assign(&tpl).map_err(|e| RunError::kafka("assign changelog", e))?;
        let result = self.restore_from(table, task, start, high, began);
        let _ = self.restorer.unassign();
        let restored = result?;
        let rate = restored as f64 / began.elapsed().as_secs_f64().max(1e-3);
        RestoreProgress { table: &table.name, partition: p, remaining: 0, rate }.emit(&self.metrics);
        Ok(restored)
    }

    pub(super) fn restore_from(
        &self,
        table: &Table,
        task: &mut TaskStore,
        start: i64,
        high: i64,
        began: Instant,
    ) -> Result<u64, RunError> {
        let p = task.partition();
        let changelog = table.changelog.as_str();
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
            match self.restorer.fetch_watermarks(changelog, p, TIMEOUT) {
                Ok((_, stable)) => Ok(stable >= high),
                // Not known now (the broker away): not settled; asked again.
                Err(e) if !is_fatal_consumer_error(&e) => {
                    tracing::debug!(partition = p, "last stable offset of {}: {e}", changelog);
                    Ok(false)
                }
                Err(e) => Err(RunError::kafka(format!("last stable offset of {} partition {p}", changelog), e)),
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
                            .seek(changelog, p, Offset::Offset(next), TIMEOUT)
                            .map_err(|e| RunError::kafka(format!("seek {} partition {p}", changelog), e))?;
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
                        tracing::warn!(partition = p, at = next, to = high, "restoring {}: {e}; retrying", changelog);
                        last_log = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(RunError::kafka(format!("restore {} partition {p}", changelog), e)),
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
                        let rate = restored as f64 / began.elapsed().as_secs_f64().max(1e-3);
                        RestoreProgress { table: &table.name, partition: p, remaining: high - next, rate }.emit(&self.metrics);
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
