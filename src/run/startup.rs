//! Start-up: topics checked or created, schema registry, state store,
//! clients, admin port; then the processing thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::quiet::QuietContext;
use crate::config::{Config, Processing};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::store::StateDb;
use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;

use super::deliveries::{DeliveryTracker, Producer_};
use super::group::{GroupConsumer, GroupContext};
use super::main_loop::{main_loop, QUERY_WAIT};
use super::pause::SourceControl;
use super::{
    changelog_topic, client_config, conflicts_topic, dlq_topic, instance_id, topics, AvroRecordIds, Counters, RunError,
    RunOptions, Worker, LIBRDKAFKA_MESSAGE_MAX_BYTES, MAX_RECORD_BYTES, RECORD_OVERHEAD, TIMEOUT,
};

/// Connects to the schema registry and reads what is registered already:
/// each Avro source's latest key and value schemas and the output's previous
/// value schema (the output schema never drops a column), and registers the
/// audit and dead-letter schemas when the output is Avro. An unavailable
/// registry is waited for (with backoff), not a reason to exit.
pub(super) fn avro_startup(
    config: &Config,
    shutdown: &AtomicBool,
) -> Result<(crate::avro::AvroContext, Option<AvroRecordIds>), RunError> {
    use crate::avro::registry::{backoff, Registry, RegistryError};
    let settings =
        config.schema_registry.as_ref().ok_or_else(|| RunError::Config("[schema_registry] is required for Avro".into()))?;
    let registry = Registry::new(settings).map_err(RunError::Config)?;
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
            Err(source) => return Err(RunError::Registry { source }),
        }
    }
}

/// Start-up as a sequence of steps, then the processing thread until
/// shutdown or a fatal error.
pub(super) async fn run_inner(config: Config, shutdown: Arc<AtomicBool>, options: RunOptions) -> Result<Counters, RunError> {
    log_start(&config);
    let layout = prepare_topics(&config, options.manage_topics).await?;
    // The admin port comes up before anything that can wait (the schema
    // registry at start-up): /healthz answers, /readyz says 503 meanwhile.
    let metrics = options.metrics.clone().unwrap_or_else(|| Arc::new(Metrics::new()));
    let worker_slot: WorkerSlot = Arc::default();
    let control = Arc::new(SourceControl::new(&config, metrics.clone()));
    if config.admin.enabled {
        serve_admin(&config, &metrics, worker_slot.clone(), control.clone()).await?;
    }
    let avro = if config.uses_avro() {
        // The registry client blocks on its own runtime: not on this one's threads.
        let (c, s) = (config.clone(), shutdown.clone());
        Some(tokio::task::spawn_blocking(move || avro_startup(&c, &s)).await.expect("start-up does not panic")?)
    } else {
        None
    };
    let db = StateDb::open_with_cache(&config.runtime.state_dir, config.runtime.state_cache_bytes)?;
    let clients = create_clients(&config, &layout.changelog)?;
    let worker = Arc::new(Mutex::new(new_worker(&config, layout, clients, avro, db.clone(), &metrics, &shutdown)));
    let _ = worker_slot.set(worker.clone());
    let consumer = subscribe(&config, worker.clone(), metrics.clone(), control.clone())?;
    if let Some(started) = &options.started {
        started.store(true, Ordering::Relaxed);
    }
    process(config.runtime.commit_interval, consumer, worker, control, db, metrics, shutdown).await
}

/// One line an operator can read; the whole resolved configuration at DEBUG.
fn log_start(config: &Config) {
    let sources: Vec<String> = config.sources.iter().map(|s| format!("{}={}", s.name, s.topic)).collect();
    tracing::info!(
        sources = %sources.join(","),
        output = %config.output.topic,
        policy = config.merge.policy.as_str(),
        deletes = config.merge.deletes.as_str(),
        group = %config.kafka.group_id,
        instance = %instance_id(config),
        state_dir = %config.runtime.state_dir.display(),
        admin = if config.admin.enabled { config.admin.listen.as_str() } else { "off" },
        processing = ?config.runtime.processing,
        "starting"
    );
    tracing::debug!("resolved configuration:\n{}", config.to_redacted_toml());
}

/// What start-up learned about the topics.
struct TopicLayout {
    /// The source partition count (every source has it: co-partitioning).
    partitions: i32,
    changelog: String,
    dlq: String,
    audit: Option<String>,
    /// Largest merged record accepted (key plus value).
    record_limit: usize,
    /// The changelog's identity (`cluster/topic-id`) for checkpoints.
    changelog_id: String,
    changelog_delete_retention_ms: i64,
}

/// Checks that the sources are co-partitioned, creates or validates the
/// output, changelog, dead-letter and audit topics (unless the caller manages
/// them), and reads the limits and identity that later steps need.
async fn prepare_topics(config: &Config, manage_topics: bool) -> Result<TopicLayout, RunError> {
    let source_topics: Vec<String> = config.sources.iter().map(|s| s.topic.clone()).collect();
    let probe: BaseConsumer<QuietContext> =
        client_config(config, &[]).create_with_context(QuietContext).map_err(|e| RunError::kafka("create client", e))?;
    let partitions = topics::check_co_partitioning(&probe, &source_topics, TIMEOUT)?;
    let admin: AdminClient<QuietContext> =
        client_config(config, &[]).create_with_context(QuietContext).map_err(|e| RunError::kafka("create admin client", e))?;
    let group = &config.kafka.group_id;
    let changelog = changelog_topic(group);
    let dlq = dlq_topic(group);
    let audit = config.audit.enabled.then(|| conflicts_topic(group));
    let mut specs = vec![
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
    specs.extend(audit.iter().map(|t| topics::TopicSpec {
        name: t.clone(),
        role: "conflict audit",
        cleanup_policy: "delete",
        configs: vec![],
    }));
    let record_limit = if manage_topics {
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
    let (changelog_id, changelog_delete_retention_ms) = if manage_topics {
        let (retention, _) = topics::retention_settings(&admin, &changelog, TIMEOUT).await?;
        (topics::topic_identity(admin.inner(), &changelog, TIMEOUT)?, retention.unwrap_or(86_400_000))
    } else {
        // librdkafka's mock cluster (the demo) has no DescribeTopics: the
        // bootstrap address stands in, as the mock lives as long as the demo.
        (format!("mock/{}", config.kafka.bootstrap_servers), 86_400_000)
    };
    tracing::debug!(changelog = %changelog, identity = %changelog_id, delete_retention_ms = changelog_delete_retention_ms, "changelog");
    tracing::info!(partitions, "source topics are co-partitioned");
    Ok(TopicLayout { partitions, changelog, dlq, audit, record_limit, changelog_id, changelog_delete_retention_ms })
}

/// Where the admin port finds the worker once it exists.
type WorkerSlot = Arc<std::sync::OnceLock<Arc<Mutex<Worker>>>>;

/// Serves the admin port; `/state/{key}` asks the worker once there is one,
/// pause and resume go to `control`. Both need the admin token: without one
/// they are off, and the log says so.
async fn serve_admin(
    config: &Config,
    metrics: &Arc<Metrics>,
    slot: WorkerSlot,
    control: Arc<SourceControl>,
) -> Result<(), RunError> {
    let token = config.admin.resolve_token().map_err(RunError::Config)?;
    match (&token, &config.admin.token_file) {
        (Some(_), Some(file)) => tracing::info!(
            token_file = %file.display(),
            "admin: /state/{{key}} and POST /sources/{{name}}/pause|resume require the bearer token from the token file"
        ),
        (Some(_), None) => {
            tracing::info!("admin: /state/{{key}} and POST /sources/{{name}}/pause|resume require the bearer token (admin.token)")
        }
        (None, _) => tracing::info!(
            "admin: no token configured, so /state/{{key}} and POST /sources/{{name}}/pause|resume are off; set admin.token_file (a mounted secret) or TRIBUTARY_ADMIN__TOKEN to turn them on"
        ),
    }
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
    let endpoints = crate::admin::Endpoints {
        state: Some(query),
        sources: Some(control),
        token: token.as_deref().map(crate::admin::AdminToken::new),
    };
    crate::admin::serve(&config.admin.listen, metrics.clone(), endpoints)
        .await
        .map_err(|source| RunError::Admin { listen: config.admin.listen.clone(), source })?;
    Ok(())
}

/// Memory bounds of the Kafka clients, chosen on purpose (librdkafka's
/// defaults suit a process that does nothing else; `[kafka.properties]`
/// overrides each). The group consumer keeps at most this much prefetched
/// (librdkafka: 64 MiB): a cycle takes at most `max_cycle_bytes` (32 MiB) of
/// state anyway, and 16 MiB still holds several fetches of every partition.
/// The restore consumer keeps librdkafka's defaults: it reads one partition
/// at a time, only while a task opens, and with a 16 MiB queue it restored at
/// half the speed (`scripts/bench/restore`).
const CONSUMER_QUEUE_KBYTES: &str = "16384";
/// Largest fetch response (librdkafka: 50 MiB), in line with the queue.
const FETCH_MAX_BYTES: &str = "16777216";
/// The producer's queue (librdkafka: 1 GiB). A cycle's output, changelog and
/// audit records wait here until the commit flushes them; a full queue makes
/// `send` serve delivery reports and retry, so this bounds memory, not records.
const PRODUCER_QUEUE_KBYTES: &str = "65536";

/// The clients a worker owns besides the group consumer.
struct Clients {
    /// Reads changelog partitions into the store (`read_committed`).
    restorer: BaseConsumer<QuietContext>,
    /// Reads the changelog's high watermarks (`read_uncommitted`).
    watermarks: BaseConsumer<QuietContext>,
    /// The (transactional, under exactly-once) producer.
    producer: Producer_,
}

fn create_clients(config: &Config, changelog: &str) -> Result<Clients, RunError> {
    let restorer: BaseConsumer<QuietContext> = client_config(
        config,
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
        client_config(config, &[("isolation.level", "read_uncommitted"), ("group.id", "tributary-restore")])
            .create_with_context(QuietContext)
            .map_err(|e| RunError::kafka("create watermark client", e))?;
    let exactly_once = config.runtime.processing == Processing::ExactlyOnce;
    let transactional_id = format!("{}-{}", config.kafka.group_id, instance_id(config));
    let mut producer_defaults = vec![
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES),
    ];
    if exactly_once {
        producer_defaults.extend([
            ("transactional.id", transactional_id.as_str()),
            ("transaction.timeout.ms", "10000"),
            ("message.timeout.ms", "10000"),
        ]);
    }
    let producer: Producer_ = client_config(config, &producer_defaults)
        .create_with_context(DeliveryTracker { changelog_topic: changelog.to_string(), state: Mutex::default() })
        .map_err(|e| RunError::kafka("create producer", e))?;
    if exactly_once {
        // Fences an older incarnation with the same transactional.id and
        // aborts whatever transaction it left open (e.g. after kill -9).
        producer
            .init_transactions(TIMEOUT)
            .map_err(|e| RunError::kafka(format!("init transactions (transactional.id {transactional_id})"), e))?;
    }
    Ok(Clients { restorer, watermarks, producer })
}

fn new_worker(
    config: &Config,
    layout: TopicLayout,
    clients: Clients,
    avro: Option<(crate::avro::AvroContext, Option<AvroRecordIds>)>,
    db: StateDb,
    metrics: &Arc<Metrics>,
    shutdown: &Arc<AtomicBool>,
) -> Worker {
    Worker {
        metrics: metrics.clone(),
        source_of: source_names(config),
        audit: layout.audit,
        partitions: layout.partitions,
        pipeline: Pipeline::with_avro(config, avro.as_ref().map(|(ctx, _)| ctx)).with_record_limit(layout.record_limit),
        config: config.clone(),
        producer: clients.producer,
        db,
        tasks: BTreeMap::new(),
        positions: HashMap::new(),
        txn_open: false,
        exactly_once: config.runtime.processing == Processing::ExactlyOnce,
        changelog: layout.changelog,
        dlq: layout.dlq,
        sources: config.sources.iter().map(|s| s.topic.clone()).collect(),
        last_commit: Instant::now(),
        cycle_events: 0,
        fatal: None,
        counters: Counters::default(),
        avro_records: avro.as_ref().and_then(|(_, ids)| *ids),
        registry_failures: 0,
        registry_max_backoff: config.schema_registry.as_ref().map_or(Duration::from_secs(30), |r| r.max_backoff),
        last_sweep: Instant::now(),
        record_limit: layout.record_limit,
        restorer: clients.restorer,
        watermarks: clients.watermarks,
        changelog_id: layout.changelog_id,
        changelog_delete_retention_ms: layout.changelog_delete_retention_ms,
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
    }
}

/// Topic → source name, for metric labels.
fn source_names(config: &Config) -> HashMap<String, String> {
    config.sources.iter().map(|s| (s.topic.clone(), s.name.clone())).collect()
}

/// The group consumer (`range` assignor: partition p of every source on
/// one member), subscribed to every source topic.
fn subscribe(
    config: &Config,
    worker: Arc<Mutex<Worker>>,
    metrics: Arc<Metrics>,
    control: Arc<SourceControl>,
) -> Result<GroupConsumer, RunError> {
    let mut consumer_defaults = vec![
        ("group.id", config.kafka.group_id.as_str()),
        ("partition.assignment.strategy", "range"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("isolation.level", "read_committed"),
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
        ("queued.max.messages.kbytes", CONSUMER_QUEUE_KBYTES),
        ("fetch.max.bytes", FETCH_MAX_BYTES),
    ];
    if let Some(id) = &config.kafka.instance_id {
        consumer_defaults.push(("group.instance.id", id.as_str()));
    }
    let consumer: GroupConsumer = client_config(config, &consumer_defaults)
        .create_with_context(GroupContext { worker, metrics, source_of: source_names(config), control })
        .map_err(|e| RunError::kafka("create consumer", e))?;
    let topics: Vec<&str> = config.sources.iter().map(|s| s.topic.as_str()).collect();
    consumer.subscribe(&topics).map_err(|e| RunError::kafka("subscribe", e))?;
    Ok(consumer)
}

/// Runs the processing loop on a blocking thread; on the way out, leaves the
/// group (the revocation callback commits what is open) and persists the store.
async fn process(
    interval: Duration,
    consumer: GroupConsumer,
    worker: Arc<Mutex<Worker>>,
    control: Arc<SourceControl>,
    db: StateDb,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
) -> Result<Counters, RunError> {
    tokio::task::spawn_blocking(move || {
        let result = main_loop(&consumer, &worker, &control, interval, &shutdown);
        if result.is_err() {
            metrics.set_down();
        }
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
