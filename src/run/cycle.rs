//! A cycle: begin, commit (transaction or at-least-once), abort and
//! rewind to the committed offsets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::group::GroupConsumer;
use super::{ChangelogEntry, RunError, Worker, TIMEOUT};
use crate::events::{CycleAborted, CycleCommitted, RegistryAvailable, RegistryWaiting};

impl Worker {
    pub(super) fn begin(&mut self) -> Result<(), RunError> {
        if self.exactly_once && !self.txn_open {
            self.producer.begin_transaction().map_err(|e| RunError::kafka("begin transaction", e))?;
        }
        self.txn_open = true;
        Ok(())
    }

    /// Ends the open cycle: commit (output, changelog, offsets), then write
    /// the local store. On an abortable failure, abort and rewind.
    pub(super) fn commit(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
        let result = self.commit_cycle(consumer);
        self.cycle_events = 0;
        self.cycle_bytes = 0;
        // The interval runs from the end of a commit: a commit slower than the
        // interval must not make the next cycle a single record.
        self.last_commit = Instant::now();
        result
    }

    pub(super) fn commit_cycle(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
        if !self.txn_open {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.positions {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| RunError::kafka("build offsets", e))?;
        }
        let started = Instant::now();
        let result = if self.exactly_once {
            self.commit_transaction(consumer, &offsets)
        } else {
            self.commit_at_least_once(consumer, &offsets)
        };
        match result {
            Ok(()) => {
                let delivered = std::mem::take(&mut self.producer.context().state.lock().expect("deliveries").delivered);
                // Only this task's owner writes its changelog partition, so in
                // exactly-once mode the transaction's commit marker directly
                // follows its last record: the next offset is one further on.
                let marker = i64::from(self.exactly_once);
                for table in &mut self.tables {
                    let written = delivered.get(&table.changelog);
                    for (p, task) in table.tasks.iter_mut() {
                        let checkpoint = written.and_then(|w| w.get(p)).map_or(task.checkpoint(), |o| o + 1 + marker);
                        task.commit(checkpoint)?;
                        let reads = task.take_reads();
                        self.metrics.state_reads(&table.name, reads);
                        self.counters.state_reads.add(reads);
                    }
                }
                self.purge.committed(&self.positions);
                self.positions.clear();
                self.txn_open = false;
                self.failed_cycles = 0;
                CycleCommitted { took: started.elapsed() }.emit(&self.metrics, &mut self.counters);
                if self.registry_backoff.attempts() > 0 {
                    RegistryAvailable { after: self.registry_backoff.attempts() }.emit(&self.metrics);
                    self.registry_backoff.reset();
                }
                for table in &self.tables {
                    for (p, task) in &table.tasks {
                        self.metrics.state_keys(&table.name, *p, task.approximate_keys());
                    }
                    for (source, n) in table.pipeline.take_foreign_owner_writes() {
                        self.metrics.foreign_owner_writes(&table.name, source, n);
                    }
                    for (source, matched, dropped) in table.pipeline.take_filter_counts() {
                        self.metrics.filter_records(&table.name, source, matched, dropped);
                    }
                }
                Ok(())
            }
            Err(e) => self.abort(consumer, e),
        }
    }

    pub(super) fn take_delivery_failures(&self) -> Vec<String> {
        std::mem::take(&mut self.producer.context().state.lock().expect("deliveries").failures)
    }

    /// Aborts the open transaction. librdkafka purges the queued records and
    /// then waits for their delivery reports, which only `poll` serves on
    /// this producer: so abort in short steps, polling in between.
    pub(super) fn abort_transaction(&self, within: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + within;
        loop {
            self.producer.poll(Duration::from_millis(10));
            match self.producer.abort_transaction(Duration::from_millis(500)) {
                Err(KafkaError::Transaction(rd)) if rd.is_retriable() && Instant::now() < deadline => continue,
                other => return other,
            }
        }
    }

    /// Serves delivery reports until nothing is in flight. rdkafka's `flush`
    /// (called by `commit_transaction`) waits in 100 ms steps whenever
    /// anything is in flight; draining first with short polls makes a commit
    /// take milliseconds instead.
    pub(super) fn drain_deliveries(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
    }

    pub(super) fn commit_transaction(
        &mut self,
        consumer: &GroupConsumer,
        offsets: &TopicPartitionList,
    ) -> Result<(), KafkaError> {
        self.drain_deliveries();
        // Every transaction carries the group's metadata, also one that only
        // holds a tombstone sweep: the group coordinator then fences it if
        // this member is a zombie of an older generation. With nothing
        // consumed in the cycle, the current positions are sent again.
        let current;
        let offsets = if offsets.count() > 0 {
            offsets
        } else {
            current = current_positions(consumer)?;
            &current
        };
        if offsets.count() > 0 {
            let metadata = consumer.group_metadata().ok_or(KafkaError::NoMessageReceived)?;
            retrying(|| self.producer.send_offsets_to_transaction(offsets, &metadata, TIMEOUT))?;
        }
        retrying(|| self.producer.commit_transaction(TIMEOUT))
    }

    /// At-least-once, ordered so that a crash at any point can only repeat
    /// output records, never lose one: (1) every output, audit and dead
    /// letter of the cycle is acknowledged; (2) only then the changed states
    /// go to the changelog; (3) then the offsets are committed (and after
    /// this returns, the local store). A failure before (2) leaves the
    /// changelog without the cycle's states, so whoever restores them
    /// processes the events again and writes their outputs.
    pub(super) fn commit_at_least_once(
        &mut self,
        consumer: &GroupConsumer,
        offsets: &TopicPartitionList,
    ) -> Result<(), KafkaError> {
        self.drain_deliveries();
        self.producer.flush(TIMEOUT)?;
        self.check_deliveries()?;
        let changes: Vec<(usize, i32, Vec<ChangelogEntry>)> = self
            .tables
            .iter_mut()
            .enumerate()
            .flat_map(|(ti, table)| table.tasks.iter_mut().map(move |(p, t)| (ti, *p, t.pending_changes())))
            .filter(|(_, _, c)| !c.is_empty())
            .collect();
        for (ti, p, keyed) in &changes {
            for (key, state) in keyed {
                let record = BaseRecord::to(&self.tables[*ti].changelog).partition(*p).key(key.as_bytes());
                let record = match state {
                    Some(bytes) => record.payload(bytes.as_slice()),
                    None => record,
                };
                self.send(record).map_err(|e| match e {
                    RunError::Kafka { source, .. } => source,
                    _ => KafkaError::MessageProduction(RDKafkaErrorCode::Fail),
                })?;
            }
        }
        self.drain_deliveries();
        self.producer.flush(TIMEOUT)?;
        self.check_deliveries()?;
        if offsets.count() > 0 {
            consumer.commit(offsets, rdkafka::consumer::CommitMode::Sync)?;
        }
        Ok(())
    }

    pub(super) fn check_deliveries(&self) -> Result<(), KafkaError> {
        let failures = self.take_delivery_failures();
        if let Some(f) = failures.first() {
            tracing::warn!(failures = failures.len(), "delivery failed: {f}");
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        }
        Ok(())
    }

    /// Classifies a failed commit the way librdkafka says: fatal → stop;
    /// otherwise abort, drop the cache and rewind to the committed offsets.
    pub(super) fn abort(&mut self, consumer: &GroupConsumer, error: KafkaError) -> Result<(), RunError> {
        if let KafkaError::Transaction(rd) = &error {
            if rd.is_fatal() {
                return Err(RunError::Fatal { source: error });
            }
        }
        self.abort_cycle(consumer, &error.to_string())
    }

    /// Aborts the open cycle for `why` and rewinds to the committed offsets.
    pub(super) fn abort_cycle(&mut self, consumer: &GroupConsumer, why: &str) -> Result<(), RunError> {
        // Every aborted cycle counts, whatever failed: a commit, a produce, the registry.
        CycleAborted { why }.emit(&self.metrics, &mut self.counters);
        self.failed_cycles = self.failed_cycles.saturating_add(1);
        self.cycle_bytes = 0;
        if self.exactly_once && self.txn_open {
            if let Err(source) = self.abort_transaction(TIMEOUT) {
                return Err(RunError::AbortFailed { why: why.to_string(), source });
            }
        }
        self.take_delivery_failures();
        self.producer.context().state.lock().expect("deliveries").delivered.clear();
        for task in self.tables.iter_mut().flat_map(|t| t.tasks.values_mut()) {
            task.abort();
        }
        self.positions.clear();
        self.txn_open = false;
        self.rewind(consumer)
    }

    /// The schema registry is unavailable: abort the cycle (nothing is
    /// dead-lettered for it), report not ready, wait with a growing backoff
    /// and let the rewind bring the records back.
    pub(super) fn registry_wait(&mut self, consumer: &GroupConsumer, why: &str, shutdown: &AtomicBool) -> Result<(), RunError> {
        let wait = self.registry_backoff.next_delay();
        RegistryWaiting { attempt: self.registry_backoff.attempts(), wait, why }.emit(&self.metrics);
        self.abort_cycle(consumer, why)?;
        crate::retry::sleep(wait, shutdown);
        Ok(())
    }

    /// Drops the open cycle without rewinding (the process is stopping):
    /// the transaction is aborted, nothing reaches the local store.
    pub(super) fn discard(&mut self) {
        if self.txn_open && self.exactly_once {
            let _ = self.abort_transaction(Duration::from_secs(5));
        }
        for task in self.tables.iter_mut().flat_map(|t| t.tasks.values_mut()) {
            task.abort();
        }
        self.positions.clear();
        self.txn_open = false;
    }

    /// Seeks every assigned partition back to its committed offset; reading
    /// the committed offsets is retried for a while before giving up.
    pub(super) fn rewind(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
        // 0.5 s doubling to 8 s, six tries (about 30 s in all).
        let mut backoff = crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(8), 2);
        loop {
            match self.rewind_once(consumer) {
                Err(RunError::Kafka { context, source }) if backoff.attempts() < 6 && !self.shutdown.load(Ordering::Relaxed) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(attempt = backoff.attempts(), "{context}: {source}; retrying the rewind");
                    crate::retry::sleep(wait, &self.shutdown);
                }
                other => return other,
            }
        }
    }

    pub(super) fn rewind_once(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
        let committed = consumer.committed(TIMEOUT).map_err(|e| RunError::kafka("read committed offsets", e))?;
        for el in committed.elements() {
            // A partition whose committed offset could not be read must not
            // fall back to its beginning (that reprocesses the whole
            // partition): fail, and the cycle is retried after a wait.
            if let Err(e) = el.error() {
                return Err(RunError::kafka(
                    format!("read the committed offset of {} partition {}", el.topic(), el.partition()),
                    e,
                ));
            }
            let offset = match el.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                // No offset committed yet: auto.offset.reset (earliest).
                Offset::Invalid => Offset::Beginning,
                offset => {
                    return Err(RunError::CommittedOffset { topic: el.topic().to_string(), partition: el.partition(), offset })
                }
            };
            consumer
                .seek(el.topic(), el.partition(), offset, TIMEOUT)
                .map_err(|e| RunError::kafka(format!("seek {} partition {}", el.topic(), el.partition()), e))?;
        }
        Ok(())
    }
}

/// The consumer's current positions of its assigned partitions (those it
/// has one for), else the group's committed offsets.
pub(super) fn current_positions(consumer: &GroupConsumer) -> Result<TopicPartitionList, KafkaError> {
    let valid = |tpl: TopicPartitionList| {
        let mut out = TopicPartitionList::new();
        for el in tpl.elements() {
            if let Offset::Offset(o) = el.offset() {
                let _ = out.add_partition_offset(el.topic(), el.partition(), Offset::Offset(o));
            }
        }
        out
    };
    let positions = valid(consumer.position()?);
    if positions.count() > 0 {
        return Ok(positions);
    }
    Ok(valid(consumer.committed(TIMEOUT)?))
}

/// Calls `f` again while librdkafka says its error is retriable (a timeout:
/// the outcome is not known yet, and calling again is how to learn it).
pub(super) fn retrying(mut f: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    // 200 ms doubling to 1 s, five tries (about 3.4 s beside the calls' own timeouts).
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(1), 2);
    loop {
        match f() {
            Err(KafkaError::Transaction(rd)) if rd.is_retriable() && !rd.txn_requires_abort() && backoff.attempts() < 5 => {
                let wait = backoff.next_delay();
                tracing::warn!(attempt = backoff.attempts(), "retriable transaction error: {rd}");
                std::thread::sleep(wait);
            }
            other => return other,
        }
    }
}
