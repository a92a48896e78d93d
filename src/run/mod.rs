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

mod audit;
mod clients;
mod cycle;
mod dead_letter;
mod deliveries;
mod discovery;
mod emit;
mod group;
mod layout;
mod main_loop;
mod pause;
mod query;
mod repartition;
mod standby;
mod startup;
mod sweep;
mod table;
mod tasks;
pub mod topics;

/// librdkafka's expected conditions at DEBUG (shared with sink and load).
pub use crate::kafka::quiet;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiet::QuietContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{StateDb, StoreError};
use crate::time::now_ms;

use deliveries::Producer_;
use startup::run_inner;
use table::{Labels, Route, Table};

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
/// The header naming the table on Tributary's shared topics (dead letters,
/// conflict audit).
pub const TABLE_HEADER: &str = "tributary.table";
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
    /// Sources that must not be repartitioned have different partition counts.
    #[error(
        "co-partitioning violated: sources with repartition = \"never\" must all have the table's partition count so that key k lives in partition p of every source; let Tributary re-key the others (repartition = \"auto\") ({})",
        topics::partition_listing(.counts)
    )]
    CoPartitioning {
        /// Each source topic and its partition count.
        counts: Vec<(String, i32)>,
    },
    /// An existing output, changelog, dead-letter or audit topic has another
    /// partition count than the source topics.
    #[error("{role} topic {topic} has {partitions} partitions, the source topics have {expected}: partition p of the output must belong to task p")]
    TopicPartitions {
        /// "output", "changelog", "dead-letter", ...
        role: &'static str,
        /// The topic.
        topic: String,
        /// Its partition count.
        partitions: i32,
        /// The source topics' partition count.
        expected: i32,
    },
    /// A topic that must be compacted is not.
    #[error("{role} topic {topic} has cleanup.policy={policy}; it must be compacted (cleanup.policy=compact)")]
    NotCompacted {
        /// "output", "changelog", ...
        role: &'static str,
        /// The topic.
        topic: String,
        /// Its `cleanup.policy`.
        policy: String,
    },
    /// The changelog topic also deletes by time.
    #[error("changelog topic {topic} has cleanup.policy={policy}; it must be compact only (with delete, retention removes states that were never superseded)")]
    ChangelogDeletes {
        /// The changelog topic.
        topic: String,
        /// Its `cleanup.policy`.
        policy: String,
    },
    /// The broker refused to create a topic.
    #[error("cannot create {role} topic {topic}: {code}")]
    CreateTopic {
        /// "output", "changelog", ...
        role: &'static str,
        /// The topic.
        topic: String,
        /// The broker's answer.
        #[source]
        code: RDKafkaErrorCode,
    },
    /// A topic Tributary created does not show in the broker's metadata.
    #[error("topic {topic} was created but is not in the broker's metadata after {} s", .waited.as_secs())]
    NotInMetadata {
        /// The topic.
        topic: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The cluster id, part of a changelog's identity, could not be read.
    #[error("could not read the cluster id while checking topic {topic}")]
    ClusterId {
        /// The topic being checked.
        topic: String,
    },
    /// The topic id, part of a changelog's identity, could not be read.
    #[error("describe topic {topic}: {source}")]
    DescribeTopic {
        /// The topic.
        topic: String,
        /// Why DescribeTopics gave no id.
        #[source]
        source: topics::DescribeError,
    },
    /// The group's committed offset of a partition is neither an offset nor unset.
    #[error("unexpected committed offset {offset:?} for {topic} partition {partition}")]
    CommittedOffset {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What the group holds.
        offset: rdkafka::Offset,
    },
    /// Source topics that do not exist (yet).
    #[error("source topic(s) do not exist: {}{}", topics.join(", "), bootstrap.as_ref().map(|b| format!(" (bootstrap servers {b})")).unwrap_or_default())]
    SourcesMissing {
        /// The missing topics.
        topics: Vec<String>,
        /// The bootstrap servers asked, once known to the caller.
        bootstrap: Option<String>,
    },
    /// The schema registry failed at start-up for a reason that waiting
    /// does not cure (or the process was stopped while waiting).
    #[error("schema registry at start-up: {source}")]
    Registry {
        /// The registry's error.
        #[source]
        source: crate::avro::registry::RegistryError,
    },
    /// The schema registry client could not be built from `[schema_registry]`.
    #[error("{0}")]
    RegistryClient(#[source] crate::avro::registry::ClientError),
    /// An Avro source or output without `[schema_registry]` (caught here
    /// when the configuration was built in code rather than loaded and validated).
    #[error("[schema_registry] is required for Avro")]
    NoRegistry,
    /// The admin port could not listen.
    #[error("admin.listen {listen}: {source}")]
    Admin {
        /// The configured address.
        listen: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// `admin.token` / `admin.token_file` cannot be used (the message names the key).
    #[error("{0}")]
    AdminToken(String),
    /// `[tables_pattern]` matched no topic yet.
    #[error("no table to merge: [tables_pattern] matched no topic yet (the processor needs one to start)")]
    NoTables,
    /// A source that is not co-partitioned cannot be re-keyed.
    #[error("table {table} source {source_name}: {source}")]
    Rekeyer {
        /// The table.
        table: String,
        /// The source.
        source_name: String,
        /// Why.
        #[source]
        source: crate::repartition::RekeyerError,
    },
    /// New tables were found outside the tokio runtime, which creating their
    /// topics needs.
    #[error("table discovery needs the tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The group handed this member a partition of a topic no table consumes.
    #[error("assignment violates co-partitioning: received {topic} partition {partition}, a topic of no table")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// A record of a task that is not open (its partition was not assigned
    /// for every topic of the table).
    #[error("assignment violates co-partitioning: received {topic} partition {partition} but task {partition} of table {table} is not open")]
    TaskNotOpen {
        /// The record's topic.
        topic: String,
        /// The record's partition (the task).
        partition: i32,
        /// The table.
        table: String,
    },
    /// The group handed this member an assignment that splits a task.
    #[error("assignment violates co-partitioning: partition {partition} of table {table} was assigned for {assigned:?} but not for {missing:?}; use partition.assignment.strategy=range and equal partition counts")]
    SplitTask {
        /// The table.
        table: String,
        /// The partition (task).
        partition: i32,
        /// The table's topics assigned with that partition.
        assigned: BTreeSet<String>,
        /// The table's topics not assigned with it.
        missing: Vec<String>,
    },
    /// The local state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The schema registry is unavailable while a record is processed:
    /// abort the cycle, wait, retry.
    #[error("{source}")]
    RegistryUnavailable {
        /// The record's topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What could not be done.
        source: RegistryBlocked,
    },
    /// Fenced by a newer instance, or a fatal producer error: stop.
    #[error("fatal producer error (fenced by another instance with the same transactional.id, or unrecoverable): {source}")]
    Fatal {
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The transaction of a failed cycle could not be aborted: stop.
    #[error("fatal producer error (fenced by another instance with the same transactional.id, or unrecoverable): abort after `{why}` failed: {source}")]
    AbortFailed {
        /// Why the cycle was aborted.
        why: String,
        /// Why the abort failed.
        #[source]
        source: KafkaError,
    },
    /// The consumer failed for good (fenced by a member with the same
    /// `group.instance.id`, an invalid group id, a fatal librdkafka error).
    #[error("fatal consumer error (fenced by another member with the same group.instance.id, or unrecoverable): {source}")]
    FatalConsumer {
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// SIGINT or SIGTERM arrived while a task was waiting to restore: not an
    /// error, the process stops.
    #[error("stopped while restoring")]
    Interrupted,
}

/// What a record could not get for want of the schema registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryBlocked {
    /// The writer schema to decode it.
    #[error(transparent)]
    Decode(Box<crate::pipeline::DeadLetter>),
    /// The writer schema to re-key it (a source that is not co-partitioned).
    #[error(transparent)]
    Rekey(Box<crate::repartition::RekeyError>),
    /// The registration of the output schema its merged row needs.
    #[error(transparent)]
    Register(Box<crate::avro::output::OutputError>),
}

impl RunError {
    fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        RunError::Kafka { context: context.into(), source }
    }
}

/// The changelog topic of a group's single (default) table.
pub fn changelog_topic(group_id: &str) -> String {
    format!("{group_id}-state-changelog")
}

/// The changelog topic of one of a group's tables (`None`: the default
/// table of a single-table configuration, which keeps its old name).
pub fn table_changelog_topic(group_id: &str, table: Option<&str>) -> String {
    match table {
        None => changelog_topic(group_id),
        Some(t) => format!("{group_id}-{t}-state-changelog"),
    }
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

/// A key and its encoded state (`None`: removed) for the changelog.
type ChangelogEntry = (String, Option<Vec<u8>>);

pub use crate::events::Counters;

struct Worker {
    /// The process-wide configuration (kafka, runtime, admin, audit); each
    /// table has its own in [`Table::config`].
    config: Config,
    /// The tables merged: a task is a (table, partition).
    tables: Vec<Table>,
    /// What to do with a record of each consumed topic.
    routes: HashMap<String, Route>,
    /// Topic → (table, source) for metric labels, shared with the group's
    /// statistics callback.
    labels: Labels,
    producer: Producer_,
    db: StateDb,
    /// Next offset per consumed topic-partition in the open cycle.
    positions: HashMap<(String, i32), i64>,
    txn_open: bool,
    exactly_once: bool,
    dlq: String,
    last_commit: Instant,
    /// Events in the open cycle.
    cycle_events: usize,
    fatal: Option<RunError>,
    counters: Counters,
    metrics: Arc<Metrics>,
    /// The audit topic, when enabled.
    audit: Option<String>,
    /// Avro output: the registered ids of the audit and dead-letter schemas.
    avro_records: Option<AvroRecordIds>,
    /// The wait after cycles lost to an unavailable schema registry (its
    /// attempts count them).
    registry_backoff: crate::retry::Backoff,
    /// When deleted keys past `tombstone_retention` were last collected.
    last_sweep: Instant,
    /// Largest merged record (key plus output or changelog value) written.
    record_limit: usize,
    /// Reads changelog partitions into the store (`read_committed`).
    restorer: BaseConsumer<QuietContext>,
    /// Reads the changelog's high watermarks: a `read_committed` client is
    /// told the last stable offset instead, which an open transaction pins.
    watermarks: BaseConsumer<QuietContext>,
    /// Set by SIGINT/SIGTERM.
    shutdown: Arc<AtomicBool>,
    /// Warm copies of tasks other members own (`[runtime] standby_replicas`).
    standby: Option<standby::Standbys>,
    /// Bytes of state and output the open cycle wrote.
    cycle_bytes: usize,
    /// Cycles that failed in a row (the wait before the next grows).
    failed_cycles: u32,
    /// Repartition topics' records consumed and committed, deleted from
    /// time to time (see `repartition::Purge`).
    purge: repartition::Purge,
    /// Partitions of the dead-letter and audit topics: a record of source
    /// partition p goes to p mod this (p itself with one table).
    shared_partitions: i32,
    /// The periodic check for new tables (`[tables_pattern]`).
    discovery: Option<discovery::Discovery>,
}

/// Schema ids of Tributary's own Avro records (Avro output).
#[derive(Debug, Clone, Copy)]
struct AvroRecordIds {
    audit: u32,
    dead_letter: u32,
}

/// How to run the processor beyond its configuration.
#[derive(Clone)]
pub struct RunOptions {
    /// Create and validate the output, changelog, DLQ and audit topics.
    /// Off only for brokers without the admin API (librdkafka's mock
    /// cluster in `tributary demo`), where the caller creates them.
    pub manage_topics: bool,
    /// Set once start-up is over and processing begins: until then there
    /// is nothing to finish, and a signal may end the process at once.
    pub started: Option<Arc<AtomicBool>>,
    /// The metrics to count into (default: a new set), for a caller that
    /// reads them in process (`tributary demo`).
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { manage_topics: true, started: None, metrics: None }
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
        Err(RunError::SourcesMissing { topics, .. }) if at_startup => {
            Err(RunError::SourcesMissing { topics, bootstrap: Some(bootstrap) })
        }
        other => other,
    }
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
    fn errors_name_what_failed_in_the_words_of_before() {
        let e = RunError::CoPartitioning { counts: vec![("a".into(), 3), ("b".into(), 4)] };
        assert!(e.to_string().starts_with("co-partitioning violated: "), "{e}");
        assert!(e.to_string().ends_with("(a: 3 partitions, b: 4 partitions)"), "{e}");
        let e = RunError::SplitTask {
            table: "t".into(),
            partition: 2,
            assigned: BTreeSet::from(["a".to_string()]),
            missing: vec!["b".into()],
        };
        assert_eq!(
            e.to_string(),
            "assignment violates co-partitioning: partition 2 of table t was assigned for {\"a\"} but not for [\"b\"]; use partition.assignment.strategy=range and equal partition counts"
        );
        let e = RunError::TopicPartitions { role: "output", topic: "o".into(), partitions: 2, expected: 3 };
        assert_eq!(
            e.to_string(),
            "output topic o has 2 partitions, the source topics have 3: partition p of the output must belong to task p"
        );
        let e = RunError::CreateTopic { role: "changelog", topic: "c".into(), code: RDKafkaErrorCode::TopicAuthorizationFailed };
        assert!(std::error::Error::source(&e).is_some_and(|s| s.downcast_ref::<RDKafkaErrorCode>().is_some()));
        let e = RunError::NotInMetadata { topic: "o".into(), waited: Duration::from_secs(10) };
        assert_eq!(e.to_string(), "topic o was created but is not in the broker's metadata after 10 s");
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
