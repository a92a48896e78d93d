//! Resynchronising the table with the topic.
//!
//! The compacted output topic keeps a tombstone only for its
//! `delete.retention.ms`; then the cleaner removes it, and a sink that had not
//! read it yet never learns that the row is gone. At start-up the sink checks
//! every partition: if its stored offset lies below the log start, beyond the
//! end (a recreated topic), or behind a record older than the retention, it
//! may have missed tombstones, and the table is resynchronised: the topic is
//! read from the beginning to the end offsets taken first, every record is
//! applied as usual (those the table already reflects only mark their key
//! live or gone), and then the rows whose key the topic no longer holds are
//! deleted in bounded batches.
//!
//! Crash safety: a row in `tributary_sink_resync` records the resync as in
//! progress from its first transaction until its last, and a start that finds
//! it starts the resync over. The batches of the scan store rows and offsets
//! together as always, so what they applied counts whatever happens next.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{apply_batch, build_resync_batch, read_message, AvroReader, RawRecord, SinkError, SinkStats, TableSpec, Target};
use crate::config::KafkaConfig;
use crate::time::now_ms;

/// The broker's default `log.cleaner.delete.retention.ms` (one day), used
/// when the topic's setting cannot be read.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 86_400_000;

/// How long a broker request may take before the check gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The topic the sink reads and how to reach it.
pub struct Source<'a> {
    /// The sink consumer's configuration.
    pub client: &'a ClientConfig,
    /// `[kafka]`, for the admin client.
    pub kafka: &'a KafkaConfig,
    /// The topic.
    pub topic: &'a str,
    /// The sink's group (names its offsets).
    pub group: &'a str,
    /// Partitions of the topic.
    pub partitions: i32,
}

/// Where a stored offset lies in its partition now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the end, or one offset before it: nothing can have been missed.
    AtEnd,
    /// Records to read from the stored offset on.
    Behind,
    /// Below the log start: records the sink never read are gone.
    BelowStart,
    /// Past the end: the topic was recreated (or truncated) since.
    BeyondEnd,
}

/// Where `next` lies between the partition's log start `low` and end `high`.
///
/// One offset before the end counts as the end: the partition's last offset
/// is in its active segment, which the cleaner never touches, and after a
/// transactional producer (`tributary run`) it is the commit marker of the
/// last transaction the sink read. Without this an idle topic would be
/// resynchronised on every start once its last record is older than the
/// retention.
pub fn position(next: i64, low: i64, high: i64) -> Position {
    if next > high {
        Position::BeyondEnd
    } else if next < low {
        Position::BelowStart
    } else if next + 1 >= high {
        Position::AtEnd
    } else {
        Position::Behind
    }
}

/// The age (ms) of the records after the stored offset when it exceeds the
/// retention: the cleaner may have removed tombstones among them. `ts` is
/// the timestamp of the last record applied: every later record was written
/// after it, so its age bounds theirs from above and the test errs towards
/// resynchronising. (Output timestamps are commit times of the merged
/// events, never later than the write, which errs the same way.)
pub fn too_old(ts: i64, now: i64, retention_ms: i64) -> Option<i64> {
    let age = now - ts;
    (age > retention_ms).then_some(age)
}

/// What a resync must do.
#[derive(Debug, Default)]
pub struct Plan {
    /// Why (for the log).
    pub reasons: Vec<String>,
    /// Partitions whose stored offsets belong to a topic that is gone.
    pub reset: Vec<i32>,
    /// Per partition, the offset below which the table already reflects the
    /// topic (the stored offset, or 0 after a reset).
    pub applied: HashMap<i32, i64>,
}

/// Decides at start-up whether the table must be resynchronised, and logs
/// why at INFO.
pub fn check<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    target: &mut dyn Target,
    source: &Source<'_>,
    requested: bool,
) -> Result<Option<Plan>, SinkError> {
    let topic = source.topic;
    // Taking the offsets first also takes PostgreSQL's advisory lock.
    let stored = target.offsets(source.group, topic)?;
    let mut plan = Plan { applied: stored.iter().map(|(p, o)| (*p, o.next)).collect(), ..Plan::default() };
    if requested {
        tracing::info!(topic, "resync requested with --resync");
        plan.reasons.push("requested with --resync".into());
    }
    if let Some(started) = target.resync_started(source.group, topic)? {
        tracing::info!(
            topic,
            started_at_ms = started,
            "a resync of this table started earlier and did not finish: starting it over"
        );
        plan.reasons.push(format!("the resync started at {started} ms did not finish"));
    }
    let mut retention: Option<i64> = None;
    for p in 0..source.partitions {
        let Some(o) = stored.get(&p) else { continue };
        let (low, high) = consumer
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(|source| SinkError::Kafka { context: format!("offsets of {topic} partition {p}"), source })?;
        match position(o.next, low, high) {
            Position::AtEnd => {}
            Position::BeyondEnd => {
                tracing::info!(
                    topic,
                    partition = p,
                    stored_offset = o.next,
                    end_offset = high,
                    "the stored offset lies past the partition's end (the topic was recreated?): resynchronising the table"
                );
                plan.reasons.push(format!("partition {p}: stored offset {} past the end {high}", o.next));
                plan.reset.push(p);
                plan.applied.insert(p, 0);
            }
            Position::BelowStart => {
                tracing::info!(
                    topic, partition = p, stored_offset = o.next, log_start_offset = low,
                    "the stored offset lies below the partition's log start: records the sink never read are gone; resynchronising the table"
                );
                plan.reasons.push(format!("partition {p}: stored offset {} below the log start {low}", o.next));
            }
            Position::Behind => {
                let ts = match o.record_ts {
                    Some(ts) => Some(ts),
                    None => probe_timestamp(consumer, topic, p, o.next)?,
                };
                let Some(ts) = ts else {
                    tracing::info!(
                        topic,
                        partition = p,
                        stored_offset = o.next,
                        "no record timestamp at the stored offset; cannot tell its age"
                    );
                    continue;
                };
                let retention_ms = *retention.get_or_insert_with(|| delete_retention_ms(source.kafka, topic));
                if let Some(age_ms) = too_old(ts, now_ms(), retention_ms) {
                    tracing::info!(
                        topic, partition = p, stored_offset = o.next, age_ms, delete_retention_ms = retention_ms,
                        "the sink is further behind than the topic keeps tombstones (the cleaner may have removed some it never read): resynchronising the table"
                    );
                    plan.reasons.push(format!(
                        "partition {p}: stored offset {} is {age_ms} ms old, delete.retention.ms is {retention_ms}",
                        o.next
                    ));
                }
            }
        }
    }
    Ok((!plan.reasons.is_empty()).then_some(plan))
}

/// The timestamp of the first record at or after `offset` (the record at the
/// offset itself may be compacted away), for databases written before the
/// sink stored timestamps with its offsets; from their first batch on, the
/// stored timestamp is used. It is the weaker bound: a tombstone the cleaner
/// removed just before that record was older than the record.
fn probe_timestamp<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, SinkError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|source| SinkError::Kafka { context: format!("assign {topic} partition {partition}"), source })?;
    consumer
        .assign(&tpl)
        .map_err(|source| SinkError::Kafka { context: format!("assign {topic} partition {partition}"), source })?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let found = loop {
        if Instant::now() > deadline {
            break None;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.partition() == partition => break m.timestamp().to_millis(),
            Some(Err(e)) => tracing::warn!(topic, partition, "reading the record at the stored offset: {e}"),
            _ => {}
        }
    };
    consumer.unassign().map_err(|source| SinkError::Kafka { context: "unassign".into(), source })?;
    Ok(found)
}

/// The topic's effective `delete.retention.ms` (its own setting or the
/// broker's default), or the broker's default default when the broker does
/// not say.
pub fn delete_retention_ms(kafka: &KafkaConfig, topic: &str) -> i64 {
    match describe_delete_retention(kafka, topic) {
        Ok(ms) => ms,
        Err(e) => {
            tracing::warn!(
                topic,
                "cannot read the topic's delete.retention.ms ({e}); assuming the broker default {DEFAULT_DELETE_RETENTION_MS} ms"
            );
            DEFAULT_DELETE_RETENTION_MS
        }
    }
}

/// Why a topic's `delete.retention.ms` could not be read.
#[derive(Debug, thiserror::Error)]
enum RetentionError {
    /// The admin client could not be created or the request failed.
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// The runtime for the admin client's answer could not start.
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
    /// The broker answered for no topic.
    #[error("no answer")]
    NoAnswer,
    /// The broker refused to describe the topic.
    #[error("{0:?}")]
    Refused(rdkafka::types::RDKafkaErrorCode),
    /// The answer lacks the setting.
    #[error("no delete.retention.ms in the answer")]
    Missing,
    /// The setting is not a number.
    #[error("delete.retention.ms = {value:?}: {source}")]
    NotANumber {
        /// The setting's text.
        value: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
}

fn describe_delete_retention(kafka: &KafkaConfig, topic: &str) -> Result<i64, RetentionError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    // The sink runs on a plain thread; the admin client's answer is a future.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let described = runtime.block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts))?;
    let resource = described.into_iter().next().ok_or(RetentionError::NoAnswer)?.map_err(RetentionError::Refused)?;
    let value = resource.get("delete.retention.ms").and_then(|e| e.value.clone()).ok_or(RetentionError::Missing)?;
    value.parse::<i64>().map_err(|source| RetentionError::NotANumber { value, source })
}

/// Runs the resync. Returns false when `shutdown` stopped it before the end
/// (it stays recorded as in progress and the next start redoes it).
#[allow(clippy::too_many_arguments)]
pub fn resync(
    source: &Source<'_>,
    target: &mut dyn Target,
    spec: &TableSpec,
    plan: Plan,
    avro: &mut AvroReader,
    shutdown: &AtomicBool,
    batch_size: usize,
    stats: &mut SinkStats,
) -> Result<bool, SinkError> {
    let (topic, group) = (source.topic, source.group);
    let started = Instant::now();
    target.begin_resync(spec, group, topic, &plan.reset)?;
    let kafka = |source: KafkaError| SinkError::Kafka { context: format!("resync of {topic}"), source };
    let mut client = source.client.clone();
    // The end of a partition is where its scan stops even when the last
    // offsets hold transaction markers, which a read_committed consumer
    // never returns.
    client.set("enable.partition.eof", "true");
    // End-of-partition events, which the scan waits for, at DEBUG.
    let consumer: BaseConsumer<crate::kafka::quiet::QuietContext> =
        client.create_with_context(crate::kafka::quiet::QuietContext).map_err(kafka)?;
    // The end offsets first: the scan ends although producers keep writing.
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..source.partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT).map_err(kafka)?;
        if high > low {
            ends.insert(p, high);
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(kafka)?;
    }
    tracing::info!(
        topic, table = %spec.table, reasons = %plan.reasons.join("; "), end_offsets = ?ends,
        "resync: reading the topic from the beginning, then deleting the rows whose keys it no longer holds"
    );
    consumer.assign(&tpl).map_err(kafka)?;
    let records_before = stats.records;
    let mut remaining = ends.clone();
    let mut pending: Vec<RawRecord> = Vec::new();
    let mut first = Instant::now();
    let mut last_progress = Instant::now();
    while !remaining.is_empty() && !shutdown.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let Some(record) = read_message(&m, avro, shutdown) else {
                    break;
                };
                if remaining.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    remaining.remove(&m.partition());
                }
                if pending.is_empty() {
                    first = Instant::now();
                }
                pending.push(record);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(topic, "resync consumer: {e}"),
            None => {}
        }
        if !pending.is_empty() && (pending.len() >= batch_size || first.elapsed() >= Duration::from_millis(100)) {
            let batch = build_resync_batch(spec, &pending, &plan.applied);
            apply_batch(target, spec, group, batch, &mut pending, stats)?;
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            tracing::info!(topic, records = stats.records - records_before, partitions_left = remaining.len(), "resync: reading");
        }
    }
    if !pending.is_empty() {
        let batch = build_resync_batch(spec, &pending, &plan.applied);
        apply_batch(target, spec, group, batch, &mut pending, stats)?;
    }
    if !remaining.is_empty() {
        return Ok(false);
    }
    let records = stats.records - records_before;
    // Bounded batches: one short transaction each, so readers and the
    // database's log never see one huge delete.
    let mut removed = 0;
    let mut after = None;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let step = target.sweep(spec, after.as_deref(), batch_size)?;
        removed += step.deleted;
        if step.examined < batch_size {
            break;
        }
        after = step.last;
    }
    target.finish_resync(group, topic)?;
    tracing::info!(
        topic, table = %spec.table, records, rows_removed = removed, elapsed_ms = started.elapsed().as_millis() as u64,
        "resync finished: the table holds what the topic holds"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_a_stored_offset() {
        assert_eq!(position(10, 0, 10), Position::AtEnd);
        assert_eq!(position(9, 0, 10), Position::AtEnd, "only the last transaction's commit marker left");
        assert_eq!(position(8, 0, 10), Position::Behind);
        assert_eq!(position(5, 0, 10), Position::Behind);
        assert_eq!(position(5, 6, 10), Position::BelowStart);
        assert_eq!(position(11, 0, 10), Position::BeyondEnd);
        assert_eq!(position(0, 0, 0), Position::AtEnd);
    }

    #[test]
    fn only_a_gap_older_than_the_retention_counts() {
        assert_eq!(too_old(1_000, 2_000, 1_000), None, "exactly the retention: not yet removable");
        assert_eq!(too_old(1_000, 2_001, 1_000), Some(1_001));
        assert_eq!(too_old(5_000, 2_000, 1_000), None, "a timestamp in the future");
    }
}
