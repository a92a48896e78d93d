//! `tributary run`: the stream processor of design §2.
//!
//! One consumer group subscribes to every source topic with the `range`
//! assignor, so partition p of every source lands on the same member; that
//! partition number is one *task* with its own keyspace in the local store,
//! its partition of the changelog and its partition of the output topic.
//!
//! Exactly-once: each cycle is one Kafka transaction holding the output
//! records, the changelog records and the consumed offsets
//! (`send_offsets_to_transaction` with the consumer's group metadata, so a
//! zombie from an older generation is fenced). The local store is written
//! only after the transaction commits; an abort drops the cache and rewinds
//! the consumer to the committed offsets, so nothing is applied twice.

pub mod quiet;
pub mod topics;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiet::QuietContext;
use rdkafka::admin::AdminClient;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Config, Processing};
use crate::metrics::Metrics;
use crate::normalize::{InputRecord, NormalizeError};
use crate::pipeline::{Pipeline, ProcessError, Step};
use crate::store::{decode_state, encode_state, StateDb, StoreError, TaskStore};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Events after which a cycle commits even before `commit_interval`.
const MAX_CYCLE_EVENTS: usize = 20_000;
/// Keys one tombstone sweep looks at per task.
const SWEEP_BATCH: usize = 2_000;
/// Largest output or changelog record Tributary writes when the topics'
/// limits cannot be read (librdkafka's default `message.max.bytes` is
/// 1 000 000, and a record needs headers and batch framing too).
const MAX_RECORD_BYTES: usize = 900_000;
/// What a record needs beyond its key and value: batch framing and headers.
const RECORD_OVERHEAD: usize = 16 * 1024;
/// librdkafka's default `message.max.bytes`.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A Kafka call failed.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// Source topics have different partition counts.
    #[error(
        "co-partitioning violated: every source topic must have the same partition count so that key k lives in partition p of every source ({0})"
    )]
    CoPartitioning(String),
    /// A topic is missing or misconfigured.
    #[error("{0}")]
    Topics(String),
    /// The group handed this member an assignment that splits a task.
    #[error("assignment violates co-partitioning: {0}")]
    Assignment(String),
    /// The local state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event that must be set aside after the open cycle is aborted: its
    /// merged record would exceed the record size limit, or does not fit the
    /// Avro output schema. After the rewind it goes to the dead letters.
    #[error("{0}")]
    SetAside(NormalizeError),
    /// The schema registry is unavailable: abort the cycle, wait, retry.
    #[error("{0}")]
    RegistryUnavailable(String),
    /// Fenced by a newer instance, or a fatal producer error: stop.
    #[error("fatal producer error (fenced by another instance with the same transactional.id, or unrecoverable): {0}")]
    Fatal(String),
    /// SIGINT or SIGTERM arrived while a task was waiting to restore: not an
    /// error, the process stops.
    #[error("stopped while restoring")]
    Interrupted,
}

impl RunError {
    fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        RunError::Kafka { context: context.into(), source }
    }
}

/// The changelog topic of a group.
pub fn changelog_topic(group_id: &str) -> String {
    format!("{group_id}-state-changelog")
}

/// The conflict audit topic of a group.
pub fn conflicts_topic(group_id: &str) -> String {
    format!("{group_id}-conflicts")
}

/// The dead-letter topic of a group.
pub fn dlq_topic(group_id: &str) -> String {
    format!("{group_id}-dlq")
}

/// The instance id: configured, or derived from the host name and the state
/// directory, so it is stable across restarts of one instance and distinct
/// between instances on one host.
pub fn instance_id(config: &Config) -> String {
    if let Some(id) = &config.kafka.instance_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tributary".into());
    let dir = std::fs::canonicalize(&config.runtime.state_dir).unwrap_or_else(|_| config.runtime.state_dir.clone());
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let hash = dir.to_string_lossy().bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{host}-{:08x}", hash as u32)
}

fn client_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    // User properties last: they override Tributary's defaults.
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Counts the delivery reports of the open cycle.
#[derive(Default)]
struct Deliveries {
    /// Highest delivered changelog offset per partition.
    changelog: HashMap<i32, i64>,
    /// Delivery failures (the cycle must not commit).
    failures: Vec<String>,
}

struct DeliveryTracker {
    changelog_topic: String,
    state: Mutex<Deliveries>,
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        quiet::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        quiet::error(&error, reason);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut st = self.state.lock().expect("delivery state");
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let e = st.changelog.entry(m.partition()).or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Ok(_) => {}
            Err((e, m)) => st.failures.push(format!("{} partition {}: {e}", m.topic(), m.partition())),
        }
    }
}

type Producer_ = BaseProducer<DeliveryTracker>;

/// A key and its encoded state (`None`: removed) for the changelog.
type ChangelogEntry = (String, Option<Vec<u8>>);

/// Counters of one run, logged on exit and read by tests through the logs.
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
}

struct Worker {
    config: Config,
    pipeline: Pipeline,
    producer: Producer_,
    db: StateDb,
    tasks: BTreeMap<i32, TaskStore>,
    /// Next offset per consumed topic-partition in the open cycle.
    positions: HashMap<(String, i32), i64>,
    txn_open: bool,
    exactly_once: bool,
    changelog: String,
    dlq: String,
    sources: BTreeSet<String>,
    last_commit: Instant,
    /// Records set aside after their merged records turned out too large:
    /// after the abort and rewind they go to the dead-letter topic.
    set_aside: HashMap<(String, i32, i64), NormalizeError>,
    /// Events in the open cycle.
    cycle_events: usize,
    fatal: Option<RunError>,
    counters: Counters,
    metrics: Arc<Metrics>,
    /// Topic → source name, for metric labels.
    source_of: HashMap<String, String>,
    /// The audit topic, when enabled.
    audit: Option<String>,
    /// The source partition count.
    partitions: i32,
    /// Avro output: the registered ids of the audit and dead-letter schemas.
    avro_records: Option<AvroRecordIds>,
    /// Consecutive cycles lost to an unavailable schema registry.
    registry_failures: u32,
    /// Longest wait between registry retries.
    registry_max_backoff: Duration,
    /// When deleted keys past `tombstone_retention` were last collected.
    last_sweep: Instant,
    /// Largest merged record (key plus output or changelog value) written.
    record_limit: usize,
    /// Reads changelog partitions into the store (`read_committed`).
    restorer: BaseConsumer<QuietContext>,
    /// Reads the changelog's high watermarks: a `read_committed` client is
    /// told the last stable offset instead, which an open transaction pins.
    watermarks: BaseConsumer<QuietContext>,
    /// The changelog's identity (`cluster/topic-id`), recorded with every
    /// checkpoint.
    changelog_id: String,
    /// The changelog's `delete.retention.ms`: how long a null record
    /// written after a checkpoint is sure to be still there.
    changelog_delete_retention_ms: i64,
    /// Set by SIGINT/SIGTERM.
    shutdown: Arc<AtomicBool>,
    /// Bytes of state and output the open cycle wrote.
    cycle_bytes: usize,
    /// Cycles that failed in a row (the wait before the next grows).
    failed_cycles: u32,
    /// Source topics whose keys are checked against murmur2 partitioning
    /// (until the first mismatch, which is logged once).
    partitioner_unchecked: BTreeSet<String>,
}

/// Schema ids of Tributary's own Avro records (Avro output).
#[derive(Debug, Clone, Copy)]
struct AvroRecordIds {
    audit: u32,
    dead_letter: u32,
}

struct GroupContext {
    worker: Arc<Mutex<Worker>>,
    metrics: Arc<Metrics>,
    source_of: HashMap<String, String>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        quiet::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        quiet::error(&error, reason);
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            let Some(source) = self.source_of.get(topic) else { continue };
            for (p, part) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                if !part.desired {
                    self.metrics.forget_lag(source, *p);
                    continue;
                }
                if let Some(lag) = partition_lag(part) {
                    self.metrics.lag(source, *p, lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.metrics.rebalance("revoke");
            self.metrics.set_ready(false);
            let mut w = self.worker.lock().expect("worker");
            if let Err(e) = w.on_revoke(consumer, tpl) {
                w.fatal.get_or_insert(e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.metrics.rebalance("assign");
            let mut w = self.worker.lock().expect("worker");
            match w.on_assign(consumer, tpl) {
                Ok(()) => self.metrics.set_ready(true),
                Err(e) => {
                    w.fatal.get_or_insert(e);
                }
            }
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

impl Worker {
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), RunError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, r)) => return Err(RunError::kafka(format!("produce to {}", r.topic), e)),
            }
        }
    }

    fn begin(&mut self) -> Result<(), RunError> {
        if self.exactly_once && !self.txn_open {
            self.producer.begin_transaction().map_err(|e| RunError::kafka("begin transaction", e))?;
        }
        self.txn_open = true;
        Ok(())
    }

    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), RunError> {
        self.begin()?;
        self.counters.consumed += 1;
        self.cycle_events += 1;
        let partition = msg.partition();
        let source_label = self.source_of.get(msg.topic()).map_or("unknown", String::as_str);
        self.metrics.consumed(source_label);
        let record = InputRecord {
            topic: msg.topic(),
            partition,
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key(),
            value: msg.payload(),
        };
        if let Some(e) = self.set_aside.remove(&(msg.topic().to_string(), partition, msg.offset())) {
            self.dead_letter(msg, &e)?;
            self.positions.insert((msg.topic().to_string(), partition), msg.offset() + 1);
            return Ok(());
        }
        if self.partitioner_unchecked.contains(msg.topic()) {
            self.check_partitioner(msg);
        }
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Err(RunError::Assignment(format!(
                "received {} partition {partition} but task {partition} is not open",
                msg.topic()
            )));
        };
        match self.pipeline.process(&record, task) {
            Ok(Step::Emitted { record: out, siblings, source, event_ts }) => {
                task.observe_event_time(msg.topic(), event_ts);
                let key_state = task.cached(&out.key).expect("an emitting update leaves a state");
                let state = encode_state(key_state);
                let header_bytes: usize = out.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
                let bytes = out.key_bytes().len() + header_bytes + state.len().max(out.value.as_ref().map_or(0, Vec::len));
                if bytes > self.record_limit {
                    // The cache already holds the merged state: only an abort
                    // undoes it. The rewind then brings this record back, and
                    // it goes to the dead letters instead.
                    return Err(RunError::SetAside(NormalizeError {
                        position: (&record).into(),
                        source_name: Some(source),
                        kind: crate::normalize::NormalizeErrorKind::TooLarge { key: out.key, bytes, limit: self.record_limit },
                    }));
                }
                let audit = match &self.audit {
                    Some(topic) if siblings > 1 => {
                        let columns = self.pipeline.engine().explain(key_state);
                        let body = audit_record(&self.config, &self.source_of, &out, key_state, msg, self.avro_records, &columns);
                        if out.key.len() + body.len() > self.record_limit {
                            // The audit topic would refuse it and fail the
                            // cycle on every retry: the output goes on without it.
                            tracing::warn!(
                                topic = msg.topic(),
                                partition,
                                offset = msg.offset(),
                                bytes = body.len(),
                                limit = self.record_limit,
                                "conflict audit record too large for the record limit; not written"
                            );
                            self.metrics.dropped(&source, "audit_too_large");
                            None
                        } else {
                            Some((topic, body))
                        }
                    }
                    _ => None,
                };
                let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
                for (k, v) in &out.headers {
                    headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
                }
                self.cycle_bytes += bytes;
                let output = BaseRecord::to(&self.config.output.topic)
                    .partition(out.partition)
                    .key(out.key_bytes())
                    .timestamp(out.timestamp)
                    .headers(headers);
                let output = match &out.value {
                    Some(v) => output.payload(v.as_slice()),
                    None => output,
                };
                self.send(output)?;
                // At-least-once: the changelog goes out at the commit, after
                // every output record of the cycle is acknowledged (see
                // `commit_at_least_once`), so a crash can repeat outputs but
                // never store a state whose output was lost.
                if self.exactly_once {
                    self.send(BaseRecord::to(&self.changelog).partition(partition).key(out.key.as_bytes()).payload(&state))?;
                }
                if let Some(task) = self.tasks.get_mut(&partition) {
                    task.remember_encoded(&out.key, state);
                }
                if let Some((topic, body)) = audit {
                    self.send(
                        BaseRecord::to(topic.as_str()).partition(partition).key(out.key.as_bytes()).payload(body.as_slice()),
                    )?;
                }
                self.counters.emitted += 1;
                let now = now_ms();
                let skew = msg.timestamp().to_millis().map(|t| t - event_ts);
                self.metrics.emitted(&source, siblings, now - event_ts, skew);
                if siblings > 1 {
                    let winner =
                        out.headers.iter().find(|(k, _)| *k == crate::output::HEADER_WINNER).map_or("-", |(_, v)| v.as_str());
                    self.metrics.conflict(self.config.merge.policy.as_str(), winner);
                    tracing::debug!(source, topic = msg.topic(), partition, offset = msg.offset(), siblings, "conflict");
                }
            }
            Ok(Step::Stale { source }) => {
                self.counters.dropped += 1;
                self.metrics.dropped(&source, "stale");
            }
            Ok(Step::Duplicate { source }) => {
                self.counters.dropped += 1;
                self.metrics.dropped(&source, "duplicate");
            }
            Ok(Step::Ignored { source }) => {
                self.counters.ignored += 1;
                self.metrics.dropped(&source, "ignored");
            }
            Err(ProcessError::Normalize(e)) if e.kind.is_retriable() => {
                self.metrics.registry_error("decode");
                return Err(RunError::RegistryUnavailable(e.to_string()));
            }
            Err(ProcessError::Normalize(e)) => self.dead_letter(msg, &e)?,
            Err(ProcessError::Store(e)) => return Err(e.into()),
            Err(ProcessError::Output { error, .. }) if error.is_retriable() => {
                self.metrics.registry_error("register");
                return Err(RunError::RegistryUnavailable(error.to_string()));
            }
            Err(ProcessError::Output { position, source_name, error }) => {
                // The key's state changed already; only an abort undoes it.
                return Err(RunError::SetAside(NormalizeError {
                    position,
                    source_name: Some(source_name),
                    kind: crate::normalize::NormalizeErrorKind::OutputSchema {
                        reason: error.reason(),
                        detail: error.to_string(),
                    },
                }));
            }
        }
        self.positions.insert((msg.topic().to_string(), partition), msg.offset() + 1);
        Ok(())
    }

    /// Co-partitioning needs every source to place a key in the same
    /// partition. Debezium (a Java producer) hashes with murmur2; a key
    /// elsewhere means a producer with another partitioner (librdkafka's
    /// default, kcat, the Python and Go clients), which breaks it: say so once.
    fn check_partitioner(&mut self, msg: &BorrowedMessage<'_>) {
        let Some(key) = msg.key() else { return };
        let expected = crate::admin::murmur2_partition(key, self.partitions);
        if expected != msg.partition() {
            tracing::warn!(
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                murmur2_partition = expected,
                "a key is not in the partition murmur2 gives it: the topic's producer uses another partitioner (librdkafka's default consistent_random: kcat, Python, Go); co-partitioning with murmur2 sources (Debezium, Java) breaks unless every source uses the same partitioner (librdkafka: partitioner=murmur2_random). Logged once per topic"
            );
            self.partitioner_unchecked.remove(msg.topic());
        }
    }

    fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, e: &NormalizeError) -> Result<(), RunError> {
        tracing::warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            reason = e.kind.reason(),
            "dead letter: {e}"
        );
        let (partition, offset, mut error) = (msg.partition().to_string(), msg.offset().to_string(), e.to_string());
        // A value too large to go out again (a record near the size limit,
        // plus the error and headers) is left out rather than failing the
        // cycle on every retry; the source offset still finds it.
        let key_len = msg.key().map_or(0, <[u8]>::len);
        let value = msg.payload().filter(|v| key_len + v.len() + error.len() + 1024 <= self.record_limit);
        let omitted = msg.payload().filter(|_| value.is_none()).map(|v| v.len().to_string());
        if let Some(n) = &omitted {
            error.push_str(&format!(
                " (the {n}-byte value is too large for the dead-letter topic and is left out; read it at the source offset)"
            ));
        }
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: "tributary.error", value: Some(error.as_bytes()) })
            .insert(Header { key: "tributary.error.reason", value: Some(e.kind.reason().as_bytes()) })
            .insert(Header { key: "tributary.source.topic", value: Some(msg.topic().as_bytes()) })
            .insert(Header { key: "tributary.source.partition", value: Some(partition.as_bytes()) })
            .insert(Header { key: "tributary.source.offset", value: Some(offset.as_bytes()) });
        if let Some(n) = &omitted {
            headers = headers.insert(Header { key: "tributary.value.omitted.bytes", value: Some(n.as_bytes()) });
        }
        let mut record = BaseRecord::to(&self.dlq).partition(msg.partition()).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        // Avro output: the dead letter is a `schemas/dead-letter.avsc`
        // envelope holding the raw bytes, so every topic Tributary writes
        // has a registered schema.
        let envelope = self.avro_records.map(|ids| {
            let body = crate::avro::records::encode_dead_letter(&crate::avro::records::DeadLetter {
                error: &error,
                reason: e.kind.reason(),
                source: e.source_name.as_deref(),
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp: msg.timestamp().to_millis(),
                key: msg.key(),
                value,
            });
            crate::avro::registry::frame(ids.dead_letter, &body)
        });
        match (&envelope, value) {
            (Some(env), _) => record = record.payload(env.as_slice()),
            (None, Some(v)) => record = record.payload(v),
            (None, None) => {}
        }
        self.send(record)?;
        self.counters.dead_letters += 1;
        let source = e.source_name.as_deref().unwrap_or("unknown");
        self.metrics.dead_letter(source, e.kind.reason());
        Ok(())
    }

    /// Answers `GET /state/{key}` for the admin port.
    fn query(&mut self, key: &str) -> (u16, String) {
        let owned: Vec<i32> = self.tasks.keys().copied().collect();
        // Avro source keys are Confluent-framed bytes whose murmur2 hash
        // cannot be computed from the key's text: look in every owned task.
        if self.config.sources.iter().any(|s| s.format == crate::config::SourceFormat::DebeziumAvro) {
            let found = owned.iter().find(|p| self.tasks.get(p).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))));
            let Some(&partition) = found else {
                let body = serde_json::json!({
                    "error": format!("no state for key {key} in the partitions this instance owns; with Avro sources the owning partition cannot be computed from the key text, so ask the other instances"),
                    "owned_partitions": owned,
                });
                return (404, body.to_string());
            };
            return self.answer(key, partition);
        }
        // Debezium's JSON converter (schemas off) writes the key as this
        // canonical JSON, and Java producers partition with murmur2. Other
        // producers (librdkafka's default: kcat, the Python and Go clients)
        // put keys elsewhere: when the murmur2 partition does not hold the
        // key, every owned partition is searched.
        let partition = crate::admin::murmur2_partition(key.as_bytes(), self.partitions);
        if self.tasks.get(&partition).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))) {
            return self.answer(key, partition);
        }
        if let Some(&found) =
            owned.iter().find(|p| self.tasks.get(p).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))))
        {
            return self.answer(key, found);
        }
        let error = if self.tasks.contains_key(&partition) {
            format!("no state for key {key} in the partitions this instance owns (murmur2, as Java producers and Debezium partition, puts it in partition {partition})")
        } else {
            format!("no state for key {key} in the partitions this instance owns; murmur2 (Java producers, Debezium) puts it in partition {partition}, which another instance owns")
        };
        let body = serde_json::json!({
            "error": error,
            "partitioner": "murmur2",
            "partition": partition,
            "owned_partitions": owned,
        });
        (404, body.to_string())
    }

    /// The state query's answer for a key of an owned `partition`.
    fn answer(&mut self, key: &str, partition: i32) -> (u16, String) {
        let Some(task) = self.tasks.get(&partition) else {
            return (500, serde_json::json!({"error": format!("task {partition} is not open")}).to_string());
        };
        // Committed state only: what the output topic shows, not the open cycle.
        match task.get_committed(key) {
            Ok(Some(state)) => {
                let r = self.pipeline.engine().resolve(&state);
                let body = serde_json::json!({
                    "key": key,
                    "partition": partition,
                    "row": r.row.as_deref(),
                    "deleted": r.row.is_none(),
                    "winner": r.winner,
                    "vv": r.vv,
                    "conflict": r.conflict(),
                    "siblings": r.siblings,
                    "versions": state.versions,
                    // field-lww: per column, its rule, the write that decided it, and why.
                    "columns": self.pipeline.engine().explain(&state),
                });
                (200, body.to_string())
            }
            Ok(None) => {
                (404, serde_json::json!({"error": format!("no state for key {key}"), "partition": partition}).to_string())
            }
            Err(e) => (500, serde_json::json!({"error": e.to_string()}).to_string()),
        }
    }

    /// Ends the open cycle: commit (output, changelog, offsets), then write
    /// the local store. On an abortable failure, abort and rewind.
    fn commit(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
        let result = self.commit_cycle(consumer);
        self.cycle_events = 0;
        self.cycle_bytes = 0;
        // The interval runs from the end of a commit: a commit slower than the
        // interval must not make the next cycle a single record.
        self.last_commit = Instant::now();
        result
    }

    fn commit_cycle(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
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
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "cycle committed");
        match result {
            Ok(()) => {
                let delivered = std::mem::take(&mut self.producer.context().state.lock().expect("deliveries").changelog);
                // Only this task's owner writes its changelog partition, so in
                // exactly-once mode the transaction's commit marker directly
                // follows its last record: the next offset is one further on.
                let marker = i64::from(self.exactly_once);
                for (p, task) in self.tasks.iter_mut() {
                    let checkpoint = delivered.get(p).map_or(task.checkpoint(), |o| o + 1 + marker);
                    task.commit(checkpoint)?;
                }
                self.positions.clear();
                self.txn_open = false;
                self.failed_cycles = 0;
                self.counters.commits += 1;
                self.metrics.cycle(true, started.elapsed().as_secs_f64());
                if self.registry_failures > 0 {
                    tracing::info!(after = self.registry_failures, "schema registry available again; processing resumed");
                    self.registry_failures = 0;
                    self.metrics.set_ready(true);
                }
                for (p, task) in &self.tasks {
                    self.metrics.state_keys(*p, task.approximate_keys());
                }
                for (source, n) in self.pipeline.take_foreign_owner_writes() {
                    self.metrics.foreign_owner_writes(source, n);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.cycle(false, 0.0);
                self.abort(consumer, e)
            }
        }
    }

    fn take_delivery_failures(&self) -> Vec<String> {
        std::mem::take(&mut self.producer.context().state.lock().expect("deliveries").failures)
    }

    /// Aborts the open transaction. librdkafka purges the queued records and
    /// then waits for their delivery reports, which only `poll` serves on
    /// this producer: so abort in short steps, polling in between.
    fn abort_transaction(&self, within: Duration) -> Result<(), KafkaError> {
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
    fn drain_deliveries(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
    }

    fn commit_transaction(&mut self, consumer: &GroupConsumer, offsets: &TopicPartitionList) -> Result<(), KafkaError> {
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
    fn commit_at_least_once(&mut self, consumer: &GroupConsumer, offsets: &TopicPartitionList) -> Result<(), KafkaError> {
        self.drain_deliveries();
        self.producer.flush(TIMEOUT)?;
        self.check_deliveries()?;
        let changes: Vec<(i32, Vec<ChangelogEntry>)> =
            self.tasks.iter_mut().map(|(p, t)| (*p, t.pending_changes())).filter(|(_, c)| !c.is_empty()).collect();
        for (p, keyed) in &changes {
            for (key, state) in keyed {
                let record = BaseRecord::to(&self.changelog).partition(*p).key(key.as_bytes());
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

    fn check_deliveries(&self) -> Result<(), KafkaError> {
        let failures = self.take_delivery_failures();
        if let Some(f) = failures.first() {
            tracing::warn!(failures = failures.len(), "delivery failed: {f}");
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        }
        Ok(())
    }

    /// Classifies a failed commit the way librdkafka says: fatal → stop;
    /// otherwise abort, drop the cache and rewind to the committed offsets.
    fn abort(&mut self, consumer: &GroupConsumer, error: KafkaError) -> Result<(), RunError> {
        if let KafkaError::Transaction(rd) = &error {
            if rd.is_fatal() {
                return Err(RunError::Fatal(error.to_string()));
            }
        }
        tracing::warn!(error = %error, "cycle failed; aborting and rewinding to the committed offsets");
        self.abort_cycle(consumer, &error.to_string())
    }

    /// Aborts the open cycle for `why` and rewinds to the committed offsets.
    fn abort_cycle(&mut self, consumer: &GroupConsumer, why: &str) -> Result<(), RunError> {
        self.counters.aborts += 1;
        self.failed_cycles = self.failed_cycles.saturating_add(1);
        self.cycle_bytes = 0;
        if self.exactly_once && self.txn_open {
            if let Err(e) = self.abort_transaction(TIMEOUT) {
                return Err(RunError::Fatal(format!("abort after `{why}` failed: {e}")));
            }
        }
        self.take_delivery_failures();
        self.producer.context().state.lock().expect("deliveries").changelog.clear();
        for task in self.tasks.values_mut() {
            task.abort();
        }
        self.positions.clear();
        self.txn_open = false;
        self.rewind(consumer)
    }

    /// How often deleted keys are collected: a quarter of the retention,
    /// between 100 ms and a minute.
    fn sweep_interval(&self) -> Duration {
        (self.config.merge.tombstone_retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Drops the states of keys that resolve to deleted and whose newest
    /// version is older than `tombstone_retention` (design §1, "Deleted
    /// keys"), a bounded batch per task: removed from the local store at the
    /// commit, and a null record on the changelog so compaction forgets them
    /// too. The output topic already holds the key's tombstone.
    fn sweep_tombstones(&mut self) -> Result<(), RunError> {
        self.last_sweep = Instant::now();
        let engine = self.pipeline.engine();
        let mut expired: Vec<(i32, Vec<String>)> = Vec::new();
        for (p, task) in self.tasks.iter_mut() {
            // Stream time, not the wall clock: catching up on an old backlog
            // must not collect a delete while an older concurrent update may
            // still wait in another source's partition.
            let Some(stream_time) = task.stream_time(&self.sources) else { continue };
            let keys = task.sweep(SWEEP_BATCH, |s| engine.tombstone_expired(s, stream_time))?;
            if !keys.is_empty() {
                expired.push((*p, keys));
            }
        }
        if expired.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for (p, keys) in expired {
            for key in &keys {
                if self.exactly_once {
                    // (At-least-once writes the null record at the commit.)
                    self.send(BaseRecord::to(&self.changelog).partition(p).key(key.as_bytes()))?;
                }
                if let Some(task) = self.tasks.get_mut(&p) {
                    task.remove(key);
                }
            }
            self.counters.tombstones_dropped += keys.len() as u64;
            tracing::info!(partition = p, keys = keys.len(), "dropped deleted keys past tombstone_retention");
        }
        Ok(())
    }

    /// The schema registry is unavailable: abort the cycle (nothing is
    /// dead-lettered for it), report not ready, wait with a growing backoff
    /// and let the rewind bring the records back.
    fn registry_wait(&mut self, consumer: &GroupConsumer, why: &str, shutdown: &AtomicBool) -> Result<(), RunError> {
        let wait = crate::avro::registry::backoff(self.registry_failures, self.registry_max_backoff);
        self.registry_failures = self.registry_failures.saturating_add(1);
        tracing::warn!(attempt = self.registry_failures, wait_ms = wait.as_millis() as u64, "{why}; pausing, then retrying");
        self.metrics.set_ready(false);
        self.abort_cycle(consumer, why)?;
        let until = Instant::now() + wait;
        while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// Drops the open cycle without rewinding (the process is stopping):
    /// the transaction is aborted, nothing reaches the local store.
    fn discard(&mut self) {
        if self.txn_open && self.exactly_once {
            let _ = self.abort_transaction(Duration::from_secs(5));
        }
        for task in self.tasks.values_mut() {
            task.abort();
        }
        self.positions.clear();
        self.txn_open = false;
    }

    /// Seeks every assigned partition back to its committed offset; reading
    /// the committed offsets is retried for a while before giving up.
    fn rewind(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
        let mut attempt = 0u32;
        loop {
            match self.rewind_once(consumer) {
                Err(RunError::Kafka { context, source }) if attempt < 6 && !self.shutdown.load(Ordering::Relaxed) => {
                    attempt += 1;
                    tracing::warn!(attempt, "{context}: {source}; retrying the rewind");
                    std::thread::sleep(Duration::from_millis(250 << attempt.min(5)));
                }
                other => return other,
            }
        }
    }

    fn rewind_once(&mut self, consumer: &GroupConsumer) -> Result<(), RunError> {
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
                other => {
                    return Err(RunError::Topics(format!(
                        "unexpected committed offset {other:?} for {} partition {}",
                        el.topic(),
                        el.partition()
                    )))
                }
            };
            consumer
                .seek(el.topic(), el.partition(), offset, TIMEOUT)
                .map_err(|e| RunError::kafka(format!("seek {} partition {}", el.topic(), el.partition()), e))?;
        }
        Ok(())
    }

    fn on_revoke(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        self.commit(consumer)?;
        let revoked: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        for p in &revoked {
            if self.tasks.remove(p).is_some() {
                tracing::info!(partition = p, "task closed (revoked)");
            }
        }
        Ok(())
    }

    fn on_assign(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
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
    fn discontinuity(&self, task: &TaskStore, low: i64, high: i64) -> Option<String> {
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
    fn restore(&self, task: &mut TaskStore) -> Result<u64, RunError> {
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

    fn restore_from(&self, task: &mut TaskStore, start: i64, high: i64, began: Instant) -> Result<u64, RunError> {
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
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    let state = match m.payload() {
                        Some(v) => Some(decode_state(v).map_err(|source| StoreError::Decode {
                            partition: p,
                            key: key.clone(),
                            source,
                        })?),
                        None => None,
                    };
                    task.put_restored(key, state);
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

/// The consumer's current positions of its assigned partitions (those it
/// has one for), else the group's committed offsets.
fn current_positions(consumer: &GroupConsumer) -> Result<TopicPartitionList, KafkaError> {
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

/// Connects to the schema registry and reads what is registered already:
/// each Avro source's latest key and value schemas and the output's previous
/// value schema (the output schema never drops a column), and registers the
/// audit and dead-letter schemas when the output is Avro. An unavailable
/// registry is waited for (with backoff), not a reason to exit.
fn avro_startup(config: &Config, shutdown: &AtomicBool) -> Result<(crate::avro::AvroContext, Option<AvroRecordIds>), RunError> {
    use crate::avro::registry::{backoff, Registry, RegistryError};
    let settings =
        config.schema_registry.as_ref().ok_or_else(|| RunError::Topics("[schema_registry] is required for Avro".into()))?;
    let registry = Registry::new(settings).map_err(RunError::Topics)?;
    let ctx = crate::avro::AvroContext { registry: registry.clone(), catalog: Default::default() };
    let mut attempt = 0;
    loop {
        let result = (|| -> Result<Option<AvroRecordIds>, RegistryError> {
            for s in config.sources.iter().filter(|s| s.format == crate::config::SourceFormat::DebeziumAvro) {
                if let Some(v) = registry.latest(&format!("{}-value", s.topic))? {
                    ctx.catalog.observe_value(&s.name, v.id, &v.schema);
                }
                if let Some(k) = registry.latest(&format!("{}-key", s.topic))? {
                    ctx.catalog.observe_key(&s.name, k.id, &k.schema);
                }
            }
            if config.output.format != crate::config::OutputFormat::Avro {
                return Ok(None);
            }
            if let Some(prev) = registry.latest(&format!("{}-value", config.output.topic))? {
                ctx.catalog.seed_previous_output(&prev.schema);
            }
            if let Some(prev) = registry.latest(&format!("{}-key", config.output.topic))? {
                ctx.catalog.seed_previous_key(&prev.schema);
            }
            let group = &config.kafka.group_id;
            let audit =
                registry.register(&format!("{}-value", conflicts_topic(group)), crate::avro::records::AUDIT_SCHEMA_JSON)?;
            let dead_letter =
                registry.register(&format!("{}-value", dlq_topic(group)), crate::avro::records::DEAD_LETTER_SCHEMA_JSON)?;
            Ok(Some(AvroRecordIds { audit, dead_letter }))
        })();
        match result {
            Ok(ids) => {
                tracing::info!(urls = ?registry.urls(), "schema registry connected");
                return Ok((ctx, ids));
            }
            Err(e) if e.is_retriable() && !shutdown.load(Ordering::Relaxed) => {
                let wait = backoff(attempt, settings.max_backoff);
                attempt += 1;
                tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, "start-up: {e}; retrying");
                std::thread::sleep(wait);
            }
            Err(e) => return Err(RunError::Topics(format!("schema registry at start-up: {e}"))),
        }
    }
}

/// How to run the processor beyond its configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Create and validate the output, changelog, DLQ and audit topics.
    /// Off only for brokers without the admin API (librdkafka's mock
    /// cluster in `tributary demo`), where the caller creates them.
    pub manage_topics: bool,
    /// Set once start-up is over and processing begins: until then there
    /// is nothing to finish, and a signal may end the process at once.
    pub started: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { manage_topics: true, started: None }
    }
}

/// Runs the processor until `shutdown` is set (SIGINT/SIGTERM) or a fatal error.
pub async fn run(config: Config, shutdown: Arc<AtomicBool>) -> Result<Counters, RunError> {
    run_with(config, shutdown, RunOptions::default()).await
}

/// [`run`] with options. A start-up error that comes from Kafka names the
/// bootstrap servers it tried.
pub async fn run_with(config: Config, shutdown: Arc<AtomicBool>, options: RunOptions) -> Result<Counters, RunError> {
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let started = options.started.clone();
    let result = run_inner(config, shutdown, options).await;
    let at_startup = started.is_none_or(|s| !s.load(Ordering::Relaxed));
    match result {
        Err(RunError::Kafka { context, source }) if at_startup => {
            Err(RunError::Kafka { context: format!("{context} (bootstrap servers {bootstrap})"), source })
        }
        Err(RunError::Topics(m)) if at_startup && m.contains("do not exist") => {
            Err(RunError::Topics(format!("{m} (bootstrap servers {bootstrap})")))
        }
        other => other,
    }
}

async fn run_inner(config: Config, shutdown: Arc<AtomicBool>, options: RunOptions) -> Result<Counters, RunError> {
    let group = config.kafka.group_id.clone();
    let instance = instance_id(&config);
    let exactly_once = config.runtime.processing == Processing::ExactlyOnce;
    let source_topics: Vec<String> = config.sources.iter().map(|s| s.topic.clone()).collect();
    // One line an operator can read; the whole resolved configuration at DEBUG.
    let sources: Vec<String> = config.sources.iter().map(|s| format!("{}={}", s.name, s.topic)).collect();
    tracing::info!(
        sources = %sources.join(","),
        output = %config.output.topic,
        policy = config.merge.policy.as_str(),
        deletes = config.merge.deletes.as_str(),
        group = %group,
        instance = %instance,
        state_dir = %config.runtime.state_dir.display(),
        admin = if config.admin.enabled { config.admin.listen.as_str() } else { "off" },
        processing = ?config.runtime.processing,
        "starting"
    );
    tracing::debug!("resolved configuration:\n{}", config.to_redacted_toml());

    // Start-up checks and topics.
    let probe: BaseConsumer<QuietContext> =
        client_config(&config, &[]).create_with_context(QuietContext).map_err(|e| RunError::kafka("create client", e))?;
    let partitions = topics::check_co_partitioning(&probe, &source_topics, TIMEOUT)?;
    let admin: AdminClient<QuietContext> =
        client_config(&config, &[]).create_with_context(QuietContext).map_err(|e| RunError::kafka("create admin client", e))?;
    let changelog = changelog_topic(&group);
    let dlq = dlq_topic(&group);
    let specs = [
        topics::TopicSpec {
            name: config.output.topic.clone(),
            role: "output",
            cleanup_policy: "compact",
            // How long readers (sinks) still see a deleted key's tombstone;
            // a sink away for longer resynchronises.
            configs: vec![("delete.retention.ms", config.output_delete_retention().as_millis().to_string())],
        },
        topics::TopicSpec { name: changelog.clone(), role: "changelog", cleanup_policy: "compact", configs: vec![] },
        topics::TopicSpec { name: dlq.clone(), role: "dead-letter", cleanup_policy: "delete", configs: vec![] },
    ];
    let audit = config.audit.enabled.then(|| conflicts_topic(&group));
    let specs: Vec<topics::TopicSpec> = specs
        .into_iter()
        .chain(audit.iter().map(|t| topics::TopicSpec {
            name: t.clone(),
            role: "conflict audit",
            cleanup_policy: "delete",
            configs: vec![],
        }))
        .collect();
    let record_limit = if options.manage_topics {
        topics::ensure_topics(&admin, &probe, &specs, partitions, config.kafka.replication_factor.unwrap_or(-1), TIMEOUT).await?;
        // The largest record the output and changelog topics take, and the
        // producer: a larger merged record is set aside before the broker
        // would refuse it (which would fail the cycle again on every retry).
        // Every topic a cycle writes to: output, changelog, dead letters, audit.
        let mut written = vec![config.output.topic.as_str(), changelog.as_str(), dlq.as_str()];
        written.extend(audit.as_deref());
        let topic_limit = topics::max_message_bytes(&admin, &written, TIMEOUT).await?;
        let producer_limit = config
            .kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES);
        topic_limit.map_or(producer_limit, |t| t.min(producer_limit)).saturating_sub(RECORD_OVERHEAD)
    } else {
        MAX_RECORD_BYTES
    };
    tracing::info!(record_limit, "largest merged record accepted (bytes)");
    // What a task's checkpoint belongs to, and how long the changelog keeps
    // null records: together they decide whether local state is trusted.
    let (changelog_id, changelog_delete_retention_ms) = if options.manage_topics {
        let (retention, _) = topics::retention_settings(&admin, &changelog, TIMEOUT).await?;
        (topics::topic_identity(admin.inner(), &changelog, TIMEOUT)?, retention.unwrap_or(86_400_000))
    } else {
        // librdkafka's mock cluster (the demo) has no DescribeTopics: the
        // bootstrap address stands in, as the mock lives as long as the demo.
        (format!("mock/{}", config.kafka.bootstrap_servers), 86_400_000)
    };
    tracing::debug!(changelog = %changelog, identity = %changelog_id, delete_retention_ms = changelog_delete_retention_ms, "changelog");
    drop(probe);
    tracing::info!(partitions, "source topics are co-partitioned");

    // The admin port comes up before anything that can wait (the schema
    // registry at start-up): /healthz answers, /readyz says 503 meanwhile.
    let metrics = Arc::new(Metrics::new());
    let worker_slot: Arc<std::sync::OnceLock<Arc<Mutex<Worker>>>> = Arc::default();
    if config.admin.enabled {
        let slot = worker_slot.clone();
        // The processing thread holds the worker for each step of a cycle and
        // lets go between polls: a query waits for such a gap, up to
        // QUERY_WAIT, and only a restore or a stuck commit makes it answer 503.
        let query: crate::admin::StateQuery = Arc::new(move |key: &str| {
            let Some(worker) = slot.get() else {
                return (503, serde_json::json!({"error": "starting; try again"}).to_string());
            };
            let deadline = Instant::now() + QUERY_WAIT;
            loop {
                match worker.try_lock() {
                    Ok(mut w) => return w.query(key),
                    Err(std::sync::TryLockError::Poisoned(_)) => {
                        return (503, serde_json::json!({"error": "the processing thread failed"}).to_string());
                    }
                    Err(std::sync::TryLockError::WouldBlock) if Instant::now() >= deadline => {
                        return (503, serde_json::json!({"error": "busy (restoring or committing); try again"}).to_string());
                    }
                    Err(std::sync::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        crate::admin::serve(&config.admin.listen, metrics.clone(), query)
            .await
            .map_err(|e| RunError::Topics(format!("admin.listen {}: {e}", config.admin.listen)))?;
    }

    let avro = if config.uses_avro() {
        // The registry client blocks on its own runtime: not on this one's threads.
        let (c, s) = (config.clone(), shutdown.clone());
        Some(tokio::task::spawn_blocking(move || avro_startup(&c, &s)).await.expect("start-up does not panic")?)
    } else {
        None
    };

    let db = StateDb::open_with_cache(&config.runtime.state_dir, config.runtime.state_cache_bytes)?;
    let restorer: BaseConsumer<QuietContext> = client_config(
        &config,
        &[
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "error"),
            ("group.id", "tributary-restore"),
        ],
    )
    .create_with_context(QuietContext)
    .map_err(|e| RunError::kafka("create restore consumer", e))?;
    let watermarks: BaseConsumer<QuietContext> =
        client_config(&config, &[("isolation.level", "read_uncommitted"), ("group.id", "tributary-restore")])
            .create_with_context(QuietContext)
            .map_err(|e| RunError::kafka("create watermark client", e))?;
    let transactional_id = format!("{group}-{instance}");
    let mut producer_defaults = vec![("enable.idempotence", "true"), ("linger.ms", "5"), ("compression.type", "lz4")];
    if exactly_once {
        producer_defaults.extend([
            ("transactional.id", transactional_id.as_str()),
            ("transaction.timeout.ms", "10000"),
            ("message.timeout.ms", "10000"),
        ]);
    }
    let producer: Producer_ = client_config(&config, &producer_defaults)
        .create_with_context(DeliveryTracker { changelog_topic: changelog.clone(), state: Mutex::default() })
        .map_err(|e| RunError::kafka("create producer", e))?;
    if exactly_once {
        // Fences an older incarnation with the same transactional.id and
        // aborts whatever transaction it left open (e.g. after kill -9).
        producer
            .init_transactions(TIMEOUT)
            .map_err(|e| RunError::kafka(format!("init transactions (transactional.id {transactional_id})"), e))?;
    }

    let source_of: HashMap<String, String> = config.sources.iter().map(|s| (s.topic.clone(), s.name.clone())).collect();
    let worker = Arc::new(Mutex::new(Worker {
        metrics: metrics.clone(),
        source_of: source_of.clone(),
        audit,
        partitions,
        pipeline: Pipeline::with_avro(&config, avro.as_ref().map(|(ctx, _)| ctx)),
        config: config.clone(),
        producer,
        db: db.clone(),
        tasks: BTreeMap::new(),
        positions: HashMap::new(),
        txn_open: false,
        exactly_once,
        changelog,
        dlq,
        sources: source_topics.iter().cloned().collect(),
        last_commit: Instant::now(),
        set_aside: HashMap::new(),
        cycle_events: 0,
        fatal: None,
        counters: Counters::default(),
        avro_records: avro.as_ref().and_then(|(_, ids)| *ids),
        registry_failures: 0,
        registry_max_backoff: config.schema_registry.as_ref().map_or(Duration::from_secs(30), |r| r.max_backoff),
        last_sweep: Instant::now(),
        record_limit,
        restorer,
        watermarks,
        changelog_id,
        changelog_delete_retention_ms,
        shutdown: shutdown.clone(),
        cycle_bytes: 0,
        failed_cycles: 0,
        // Avro keys are framed bytes whose hash says nothing of the key.
        partitioner_unchecked: config
            .sources
            .iter()
            .filter(|s| s.format != crate::config::SourceFormat::DebeziumAvro)
            .map(|s| s.topic.clone())
            .collect(),
    }));
    let _ = worker_slot.set(worker.clone());
    let mut consumer_defaults = vec![
        ("group.id", group.as_str()),
        ("partition.assignment.strategy", "range"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("isolation.level", "read_committed"),
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
    ];
    if let Some(id) = &config.kafka.instance_id {
        consumer_defaults.push(("group.instance.id", id.as_str()));
    }
    let consumer: GroupConsumer = client_config(&config, &consumer_defaults)
        .create_with_context(GroupContext { worker: worker.clone(), metrics: metrics.clone(), source_of })
        .map_err(|e| RunError::kafka("create consumer", e))?;
    let topic_refs: Vec<&str> = source_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs).map_err(|e| RunError::kafka("subscribe", e))?;
    let interval = config.runtime.commit_interval;
    let down = metrics.clone();
    if let Some(started) = &options.started {
        started.store(true, Ordering::Relaxed);
    }

    tokio::task::spawn_blocking(move || {
        let result = main_loop(&consumer, &worker, interval, &shutdown);
        if result.is_err() {
            down.set_down();
        }
        // Leave the group (the revocation callback commits what is open).
        consumer.unsubscribe();
        drop(consumer);
        let counters = worker.lock().expect("worker").counters.clone();
        if let Err(e) = db.persist() {
            tracing::warn!("persisting the state store on exit: {e}");
        }
        result.map(|()| counters)
    })
    .await
    .expect("the processing thread does not panic")
}

/// How long `/state/{key}` waits for the processing thread to let go of the
/// worker between two steps of a cycle.
const QUERY_WAIT: Duration = Duration::from_secs(3);

fn main_loop(
    consumer: &GroupConsumer,
    worker: &Mutex<Worker>,
    interval: Duration,
    shutdown: &AtomicBool,
) -> Result<(), RunError> {
    while !shutdown.load(Ordering::Relaxed) {
        let msg = consumer.poll(Duration::from_millis(20));
        let mut w = worker.lock().expect("worker");
        match w.fatal.take() {
            Some(RunError::Interrupted) => break,
            Some(e) => return Err(e),
            None => {}
        }
        let step = match msg {
            Some(Ok(m)) => match w.process(&m) {
                // A produce failure (e.g. the transaction entered an abortable
                // state): abort, rewind and go on; `abort` stops on fatal ones.
                Err(RunError::Kafka { source, .. }) => w.abort(consumer, source),
                Err(RunError::RegistryUnavailable(why)) => w.registry_wait(consumer, &why, shutdown),
                Err(RunError::SetAside(e)) => {
                    tracing::warn!("{e}");
                    let p = &e.position;
                    w.set_aside.insert((p.topic.clone(), p.partition, p.offset), e);
                    w.abort(consumer, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                }
                other => other,
            },
            Some(Err(e)) if is_fatal_consumer_error(&e) => Err(RunError::Fatal(format!("consumer: {e}"))),
            Some(Err(e)) => {
                tracing::warn!("consumer: {e}");
                Ok(())
            }
            None => Ok(()),
        };
        let step = step.and_then(|()| if w.last_sweep.elapsed() >= w.sweep_interval() { w.sweep_tombstones() } else { Ok(()) });
        // A cycle ends on the interval, or when it holds enough events or
        // bytes that a longer transaction would only grow the producer's
        // queue and the memory held for it.
        let due = w.last_commit.elapsed() >= interval
            || w.cycle_events >= MAX_CYCLE_EVENTS
            || w.cycle_bytes >= w.config.runtime.max_cycle_bytes;
        let step = step.and_then(|()| if due { w.commit(consumer) } else { Ok(()) });
        if matches!(step, Err(RunError::Interrupted)) {
            w.discard();
            break;
        }
        // Cycles failing in a row (a produce error that repeats, the broker
        // away): wait before the next attempt instead of spinning.
        if step.is_ok() && w.failed_cycles > 0 && !w.txn_open {
            let wait = Duration::from_millis(100u64 << w.failed_cycles.min(7)).min(Duration::from_secs(10));
            tracing::debug!(failed = w.failed_cycles, wait_ms = wait.as_millis() as u64, "waiting before the next cycle");
            drop(w);
            let until = Instant::now() + wait;
            while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
                // Keep serving the group (heartbeats are librdkafka's; the
                // poll keeps max.poll.interval.ms satisfied) without taking records.
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        if let Err(e) = step {
            // Whatever the open cycle holds must not be committed by the
            // revocation that leaving the group triggers.
            w.discard();
            return Err(e);
        }
    }
    let mut w = worker.lock().expect("worker");
    if let Err(e) = w.commit(consumer) {
        w.discard();
        return Err(e);
    }
    let c = &w.counters;
    tracing::info!(
        consumed = c.consumed,
        emitted = c.emitted,
        stale_or_duplicate = c.dropped,
        ignored_tombstones = c.ignored,
        dead_letters = c.dead_letters,
        commits = c.commits,
        aborts = c.aborts,
        "stopped"
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The conflict audit record: every version in the set, the policy and
/// the winner, so an operator can see why a row looks the way it does.
/// Serialized from borrowed data: no copy of the version set.
fn audit_record(
    config: &Config,
    source_of: &HashMap<String, String>,
    out: &crate::output::OutputRecord,
    state: &crate::merge::KeyState,
    msg: &BorrowedMessage<'_>,
    avro: Option<AvroRecordIds>,
    columns: &[crate::merge::ColumnWinner],
) -> Vec<u8> {
    let winner = out.headers.iter().find(|(k, _)| *k == crate::output::HEADER_WINNER).map(|(_, v)| v.as_str());
    let merged_vv = state.merged_clock();
    let record = crate::avro::records::AuditRecord {
        key: &out.key,
        partition: out.partition,
        policy: config.merge.policy.as_str(),
        deletes: config.merge.deletes.as_str(),
        winner,
        merged_vv: &merged_vv,
        deleted: out.value.is_none(),
        versions: &state.versions,
        event: crate::avro::records::AuditEvent {
            source: source_of.get(msg.topic()).map(String::as_str),
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
        },
    };
    match avro {
        Some(ids) => crate::avro::registry::frame(ids.audit, &crate::avro::records::encode_audit(&record)),
        None => audit_json(&record, columns),
    }
}

/// The JSON audit record (README "Conflict audit"): the Avro record's
/// fields, with rows as JSON objects.
fn audit_json(r: &crate::avro::records::AuditRecord<'_>, columns: &[crate::merge::ColumnWinner]) -> Vec<u8> {
    let mut record = serde_json::json!({
        "key": r.key,
        "partition": r.partition,
        "policy": r.policy,
        "deletes": r.deletes,
        "winner": r.winner,
        "merged_vv": r.merged_vv,
        "deleted": r.deleted,
        "versions": r.versions,
        "event": {"source": r.event.source, "topic": r.event.topic, "partition": r.event.partition, "offset": r.event.offset},
    });
    // field-lww: which write decided each column, and why.
    if !columns.is_empty() {
        record["columns"] = serde_json::to_value(columns).expect("column winners serialize");
    }
    serde_json::to_vec(&record).expect("audit records serialize")
}

/// Calls `f` again while librdkafka says its error is retriable (a timeout:
/// the outcome is not known yet, and calling again is how to learn it).
fn retrying(mut f: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let mut attempts = 0;
    loop {
        match f() {
            Err(KafkaError::Transaction(rd)) if rd.is_retriable() && !rd.txn_requires_abort() && attempts < 5 => {
                attempts += 1;
                tracing::warn!(attempt = attempts, "retriable transaction error: {rd}");
                std::thread::sleep(Duration::from_millis(200 * attempts));
            }
            other => return other,
        }
    }
}

/// A partition's consumer lag: from the consumer's position to the
/// partition's end, which for a `read_committed` consumer is the last stable
/// offset. librdkafka's own `consumer_lag` counts from the committed offset
/// it knows, which offsets committed through transactions never update, and
/// is absent until the group has committed once.
fn partition_lag(part: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
    let position = [part.app_offset, part.committed_offset, part.next_offset, part.lo_offset].into_iter().find(|o| *o >= 0)?;
    (end >= 0).then(|| (end - position).max(0))
}

/// Consumer errors after which the member cannot go on (fenced static member,
/// librdkafka's fatal state).
fn is_fatal_consumer_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::FencedInstanceId | RDKafkaErrorCode::InvalidGroupId)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_reach_librdkafka_and_sasl_ssl_is_built_in() {
        let text = r#"
[kafka]
bootstrap_servers = "127.0.0.1:1"
[kafka.properties]
"security.protocol" = "sasl_ssl"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "tributary"
"sasl.password" = "secret"
[output]
topic = "o"
[[sources]]
name = "a"
topic = "t"
"#;
        let config = Config::parse(text, "test", std::iter::empty()).unwrap();
        let c = client_config(&config, &[("linger.ms", "5")]);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        // Creating the client validates every property: an unknown one, or
        // SSL in a build without it, fails here.
        let consumer: Result<BaseConsumer, _> = c.create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        // Kerberos (GSSAPI) needs librdkafka built with Cyrus SASL.
        let mut kerberos = client_config(&config, &[]);
        kerberos
            .set("sasl.mechanisms", "GSSAPI")
            .set("sasl.kerberos.service.name", "kafka")
            .set("sasl.kerberos.keytab", "/etc/tributary/tributary.keytab")
            .set("sasl.kerberos.principal", "tributary@EXAMPLE.COM");
        let k = kerberos.create::<BaseConsumer>();
        assert!(k.is_ok(), "GSSAPI is built in: {:?}", k.err());
        let mut bad = client_config(&config, &[]);
        bad.set("no.such.property", "1");
        assert!(bad.create::<BaseConsumer>().is_err());
    }

    #[test]
    fn instance_ids_are_stable_and_distinct_per_state_dir() {
        let text = "[output]\ntopic = \"o\"\n[[sources]]\nname = \"a\"\ntopic = \"t\"\n";
        let mut a = Config::parse(text, "test", std::iter::empty()).unwrap();
        a.runtime.state_dir = "/var/lib/tributary/a".into();
        let mut b = a.clone();
        b.runtime.state_dir = "/var/lib/tributary/b".into();
        assert_eq!(instance_id(&a), instance_id(&a.clone()));
        assert_ne!(instance_id(&a), instance_id(&b));
        a.kafka.instance_id = Some("merge-0".into());
        assert_eq!(instance_id(&a), "merge-0");
    }
}
