//! The processor's happenings, one type each, in the manner of Vector's
//! instrumentation spec: a call site builds the event with its context and
//! calls `emit`, which writes the one log line (if the happening deserves
//! one) and updates every count of it: the run's [`Counters`] and the
//! exported [`Metrics`]. So a happening is logged and counted the same way
//! wherever it occurs, a new count is added in one place, and tests check
//! what happened by reading the metrics, not the log text.
//!
//! Per-record happenings in the hot path (a record consumed, emitted,
//! dropped) log nothing above DEBUG. The sink's happenings live in
//! `sink::metrics` under the same rule.

use std::fmt::Display;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};

use crate::metrics::Metrics;
use crate::normalize::KeyChange;

/// Counters of one run, returned by [`run`](crate::run::run) (the demo
/// reports them); the same happenings are exported as metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Records consumed.
    pub consumed: u64,
    /// Output records produced (committed or not).
    pub emitted: u64,
    /// Stale or duplicate events.
    pub dropped: u64,
    /// Dead letters produced.
    pub dead_letters: u64,
    /// Committed cycles.
    pub commits: u64,
    /// Aborted cycles.
    pub aborts: u64,
    /// Deleted keys dropped after `tombstone_retention`.
    pub tombstones_dropped: u64,
    /// Debezium tombstones (null values after a delete), ignored by design.
    pub ignored: u64,
    /// Where events found their keys' states (committed cycles).
    pub state_reads: crate::store::StateReads,
}

/// Where a source record is: the structured fields of every log line about one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl<'a> At<'a> {
    pub(crate) fn of(msg: &'a BorrowedMessage<'_>) -> Self {
        Self { topic: msg.topic(), partition: msg.partition(), offset: msg.offset() }
    }
}

/// A source record was read by the processor.
pub(crate) struct RecordConsumed<'a> {
    pub table: &'a str,
    pub source: &'a str,
}

impl RecordConsumed<'_> {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        counters.consumed += 1;
        metrics.consumed(self.table, self.source);
    }
}

/// A merged record went into the open cycle.
pub(crate) struct RecordEmitted<'a> {
    pub table: &'a str,
    pub source: &'a str,
    pub at: At<'a>,
    /// Versions in the key's set afterwards (more than one: a conflict).
    pub siblings: usize,
    /// Now minus the event's commit time.
    pub age_ms: i64,
    /// The Kafka record time minus the commit time, when the record has one.
    pub skew_ms: Option<i64>,
    /// The table's policy and the winning source, for the conflict count.
    pub policy: &'a str,
    pub winner: Option<&'a str>,
}

impl RecordEmitted<'_> {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        counters.emitted += 1;
        metrics.emitted(self.table, self.source, self.siblings, self.age_ms, self.skew_ms);
        if self.siblings > 1 {
            metrics.conflict(self.table, self.policy, self.winner.unwrap_or("-"));
            let At { topic, partition, offset } = self.at;
            tracing::debug!(table = %self.table, source = self.source, topic, partition, offset, siblings = self.siblings, "conflict");
        }
    }
}

/// Why an event changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Older than what the key holds.
    Stale,
    /// Seen before.
    Duplicate,
    /// A Debezium tombstone (the null value after a delete).
    Ignored,
}

impl Dropped {
    /// The `outcome` label.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// An event was dropped or ignored by the merge.
pub(crate) struct EventDropped<'a> {
    pub table: &'a str,
    pub source: &'a str,
    pub why: Dropped,
}

impl EventDropped<'_> {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        match self.why {
            Dropped::Stale | Dropped::Duplicate => counters.dropped += 1,
            Dropped::Ignored => counters.ignored += 1,
        }
        metrics.dropped(self.table, self.source, self.why.outcome());
    }
}

/// A conflict's audit record was larger than the record limit and was not
/// written (the output goes on without it).
pub(crate) struct AuditRecordTooLarge<'a> {
    pub table: &'a str,
    pub source: &'a str,
    pub at: At<'a>,
    pub bytes: usize,
    pub limit: usize,
}

impl AuditRecordTooLarge<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        let At { topic, partition, offset } = self.at;
        tracing::warn!(
            table = %self.table,
            topic,
            partition,
            offset,
            bytes = self.bytes,
            limit = self.limit,
            "conflict audit record too large for the record limit; not written"
        );
        metrics.dropped(self.table, self.source, "audit_too_large");
    }
}

/// One half of a primary-key change was merged.
pub(crate) struct PrimaryKeyChanged<'a> {
    pub table: &'a str,
    pub source: &'a str,
    pub at: At<'a>,
    pub change: &'a KeyChange,
}

impl PrimaryKeyChanged<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        metrics.primary_key_change(self.table, self.source, self.change);
        let At { topic, partition, offset } = self.at;
        tracing::debug!(table = %self.table, source = self.source, topic, partition, offset, change = ?self.change, "primary key change");
    }
}

/// A record went to the dead-letter topic (the send succeeded).
pub(crate) struct DeadLettered<'a> {
    pub table: &'a str,
    /// The source, when the record got far enough to know it.
    pub source: Option<&'a str>,
    pub at: At<'a>,
    /// The bounded `reason` label (also the record's header).
    pub reason: &'static str,
    pub error: &'a dyn Display,
}

impl DeadLettered<'_> {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        let At { topic, partition, offset } = self.at;
        tracing::warn!(table = %self.table, topic, partition, offset, reason = self.reason, "dead letter: {}", self.error);
        counters.dead_letters += 1;
        metrics.dead_letter(self.table, self.source.unwrap_or("unknown"), self.reason);
    }
}

/// A cycle's transaction (or at-least-once commit) went through.
pub(crate) struct CycleCommitted {
    pub took: Duration,
}

impl CycleCommitted {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        tracing::debug!(elapsed_ms = self.took.as_millis() as u64, "cycle committed");
        counters.commits += 1;
        metrics.cycle(true, self.took.as_secs_f64());
    }
}

/// A cycle was aborted (a failed commit or produce, the registry away):
/// the consumer goes back to the committed offsets.
pub(crate) struct CycleAborted<'a> {
    pub why: &'a str,
}

impl CycleAborted<'_> {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        tracing::warn!(error = %self.why, "cycle failed; aborting and rewinding to the committed offsets");
        counters.aborts += 1;
        metrics.cycle(false, 0.0);
    }
}

/// Deleted keys past `tombstone_retention` left a task's state.
pub(crate) struct TombstonesDropped<'a> {
    pub table: &'a str,
    pub partition: i32,
    pub keys: usize,
}

impl TombstonesDropped<'_> {
    pub(crate) fn emit(self, metrics: &Metrics, counters: &mut Counters) {
        tracing::info!(table = %self.table, partition = self.partition, keys = self.keys, "dropped deleted keys past tombstone_retention");
        counters.tombstones_dropped += self.keys as u64;
        metrics.tombstones_dropped(self.table, self.keys);
    }
}

/// The Schema Registry call a record needed failed as unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegistryCall {
    /// Reading a writer schema to decode a record.
    Decode,
    /// Registering the output schema.
    Register,
}

/// A record could not be processed because the Schema Registry is
/// unavailable: the cycle is aborted and the record comes back after a
/// wait ([`RegistryWaiting`] logs it).
pub(crate) struct RegistryUnavailable {
    pub call: RegistryCall,
}

impl RegistryUnavailable {
    pub(crate) fn emit(self, metrics: &Metrics) {
        metrics.registry_error(match self.call {
            RegistryCall::Decode => "decode",
            RegistryCall::Register => "register",
        });
    }
}

/// Processing pauses for `wait` because the Schema Registry is
/// unavailable: not ready until a cycle commits again.
pub(crate) struct RegistryWaiting<'a> {
    pub attempt: u32,
    pub wait: Duration,
    pub why: &'a str,
}

impl RegistryWaiting<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        tracing::warn!(attempt = self.attempt, wait_ms = self.wait.as_millis() as u64, "{}; pausing, then retrying", self.why);
        metrics.set_ready(false);
    }
}

/// A cycle committed after waits for the Schema Registry.
pub(crate) struct RegistryAvailable {
    /// The waits it took.
    pub after: u32,
}

impl RegistryAvailable {
    pub(crate) fn emit(self, metrics: &Metrics) {
        tracing::info!(after = self.after, "schema registry available again; processing resumed");
        metrics.set_ready(true);
    }
}

/// A record of a source that is not co-partitioned with its table went
/// into the table's repartition topic.
pub(crate) struct RecordRepartitioned<'a> {
    pub table: &'a str,
    pub source: &'a str,
}

impl RecordRepartitioned<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        metrics.repartitioned_record(self.table, self.source);
    }
}

/// A task's restore from its changelog progressed (`remaining` 0: done).
/// A gauge only: restoring reports its start, end and a line every few
/// seconds in the log itself, with more context than a count has.
pub(crate) struct RestoreProgress<'a> {
    pub table: &'a str,
    pub partition: i32,
    pub remaining: i64,
    /// Records per second so far.
    pub rate: f64,
}

impl RestoreProgress<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        metrics.restore(self.table, self.partition, self.remaining, self.rate);
    }
}

/// How far a standby copy of a task (kept for another member that owns it)
/// is behind its changelog's end. A gauge only: copies starting, catching
/// up, stopping and being handed over are logged where they happen.
pub(crate) struct StandbyLag<'a> {
    pub table: &'a str,
    pub partition: i32,
    pub lag: i64,
}

impl StandbyLag<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        metrics.standby_lag(self.table, self.partition, self.lag);
    }
}

/// A changelog record whose key the state store cannot hold (none, or over
/// [`MAX_KEY_BYTES`](crate::normalize::MAX_KEY_BYTES)) was left out of a
/// restore. Tributary writes no such record (such source keys are dead
/// letters); one written by hand, or by a version before that check whose
/// commit then failed, would otherwise stop every restore of the task.
pub(crate) struct ChangelogRecordSkipped<'a> {
    pub table: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key_bytes: usize,
}

impl ChangelogRecordSkipped<'_> {
    pub(crate) fn emit(self) {
        tracing::warn!(
            table = self.table,
            partition = self.partition,
            offset = self.offset,
            key_bytes = self.key_bytes,
            "changelog record skipped: the state store cannot hold a key of {} bytes (1 to {} bytes)",
            self.key_bytes,
            crate::normalize::MAX_KEY_BYTES
        );
    }
}

/// The group called a rebalance callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebalanced {
    /// Partitions were handed over (ready once their tasks are open).
    Assign,
    /// Partitions are taken away: not ready until the next assignment.
    Revoke,
}

impl Rebalanced {
    pub(crate) fn emit(self, metrics: &Metrics) {
        let kind = match self {
            Self::Assign => "assign",
            Self::Revoke => "revoke",
        };
        tracing::debug!(kind, "rebalance");
        metrics.rebalance(kind);
        if self == Self::Revoke {
            metrics.set_ready(false);
        }
    }
}

/// A source's pause switch, set at start-up, on a request or a new
/// assignment; `changed` holds its paused (or resumed) partitions when the
/// consumer's state changed.
pub(crate) struct SourcePause<'a> {
    pub source: &'a str,
    pub paused: bool,
    pub changed: Option<&'a [i32]>,
}

impl SourcePause<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        metrics.source_paused(self.source, self.paused);
        if let Some(partitions) = self.changed {
            tracing::info!(source = %self.source, ?partitions, "source {}", if self.paused { "paused" } else { "resumed" });
        }
    }
}

/// A table found by `[tables_pattern]` while running joined the process.
pub(crate) struct TableFound<'a> {
    pub table: &'a str,
    pub sources: usize,
    /// Tables merged now, this one included.
    pub tables: usize,
}

impl TableFound<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        tracing::info!(table = %self.table, sources = self.sources, "new table found by pattern; merging it");
        metrics.tables(self.tables);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> At<'static> {
        At { topic: "eu.customers", partition: 3, offset: 42 }
    }

    #[test]
    fn a_dead_letter_counts_once_in_the_run_and_in_the_metrics() {
        let (m, mut c) = (Metrics::new(), Counters::default());
        let error = "bad json";
        DeadLettered { table: "t", source: Some("eu"), at: at(), reason: "bad_value", error: &error }.emit(&m, &mut c);
        DeadLettered { table: "t", source: None, at: at(), reason: "bad_value", error: &error }.emit(&m, &mut c);
        assert_eq!(c.dead_letters, 2);
        let count =
            |source| m.sample("tributary_dead_letters_total", &[("table", "t"), ("source", source), ("reason", "bad_value")]);
        assert_eq!(count("eu"), Some(1.0));
        assert_eq!(count("unknown"), Some(1.0), "a record whose source is not known yet");
    }

    #[test]
    fn cycles_count_by_outcome_and_only_commits_are_timed() {
        let (m, mut c) = (Metrics::new(), Counters::default());
        CycleCommitted { took: Duration::from_millis(30) }.emit(&m, &mut c);
        CycleAborted { why: "produce failed" }.emit(&m, &mut c);
        CycleAborted { why: "registry away" }.emit(&m, &mut c);
        assert_eq!((c.commits, c.aborts), (1, 2));
        assert_eq!(m.sample("tributary_transactions_total", &[("outcome", "committed")]), Some(1.0));
        assert_eq!(m.sample("tributary_transactions_total", &[("outcome", "aborted")]), Some(2.0));
        assert_eq!(m.sample("tributary_cycle_duration_seconds", &[]), Some(1.0), "one observation: the commit");
    }

    #[test]
    fn dropped_events_split_stale_and_duplicate_from_ignored_tombstones() {
        let (m, mut c) = (Metrics::new(), Counters::default());
        for why in [Dropped::Stale, Dropped::Stale, Dropped::Duplicate, Dropped::Ignored] {
            EventDropped { table: "t", source: "us", why }.emit(&m, &mut c);
        }
        assert_eq!((c.dropped, c.ignored), (3, 1));
        let count =
            |outcome| m.sample("tributary_events_dropped_total", &[("table", "t"), ("source", "us"), ("outcome", outcome)]);
        assert_eq!((count("stale"), count("duplicate"), count("ignored")), (Some(2.0), Some(1.0), Some(1.0)));
    }

    #[test]
    fn a_conflict_is_counted_only_when_siblings_remain() {
        let (m, mut c) = (Metrics::new(), Counters::default());
        let emitted = |siblings| RecordEmitted {
            table: "t",
            source: "eu",
            at: at(),
            siblings,
            age_ms: 10,
            skew_ms: None,
            policy: "lww",
            winner: Some("eu"),
        };
        emitted(1).emit(&m, &mut c);
        emitted(2).emit(&m, &mut c);
        assert_eq!(c.emitted, 2);
        assert_eq!(m.sample("tributary_records_emitted_total", &[("table", "t"), ("source", "eu")]), Some(2.0));
        assert_eq!(m.sample("tributary_conflicts_total", &[("table", "t"), ("policy", "lww"), ("winner", "eu")]), Some(1.0));
    }

    #[test]
    fn swept_tombstones_are_counted_per_table() {
        let (m, mut c) = (Metrics::new(), Counters::default());
        TombstonesDropped { table: "t", partition: 0, keys: 5 }.emit(&m, &mut c);
        TombstonesDropped { table: "t", partition: 1, keys: 2 }.emit(&m, &mut c);
        assert_eq!(c.tombstones_dropped, 7);
        assert_eq!(m.sample("tributary_tombstones_dropped_total", &[("table", "t")]), Some(7.0));
    }

    #[test]
    fn registry_waits_make_the_process_unready_until_it_is_back() {
        let m = Metrics::new();
        m.set_ready(true);
        RegistryUnavailable { call: RegistryCall::Decode }.emit(&m);
        RegistryWaiting { attempt: 1, wait: Duration::from_millis(100), why: "registry down" }.emit(&m);
        assert!(!m.is_ready());
        assert_eq!(m.sample("tributary_schema_registry_errors_total", &[("operation", "decode")]), Some(1.0));
        RegistryAvailable { after: 1 }.emit(&m);
        assert!(m.is_ready());
    }

    #[test]
    fn a_revocation_makes_the_process_unready() {
        let m = Metrics::new();
        m.set_ready(true);
        Rebalanced::Assign.emit(&m);
        assert!(m.is_ready());
        Rebalanced::Revoke.emit(&m);
        assert!(!m.is_ready());
        assert_eq!(m.sample("tributary_rebalances_total", &[("kind", "revoke")]), Some(1.0));
    }
}
