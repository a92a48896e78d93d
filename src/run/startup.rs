//! Start-up: topics checked or created, schema registry, state store,
//! clients, admin port; then the processing thread.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::quiet::QuietContext;
use crate::config::{Config, Processing, TableConfig};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::store::StateDb;
use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::clients::{create_clients, Clients, FETCH_QUEUE_BACKOFF_MS, GROUP_FETCH_MAX_BYTES, GROUP_QUEUE_KBYTES};
use super::discovery::Discovery;
use super::group::{GroupConsumer, GroupContext};
use super::layout::{prepare_shared, prepare_table, SharedLayout, TableLayout};
use super::main_loop::{main_loop, QUERY_WAIT};
use super::pause::SourceControl;
use super::table::Rekey;
use super::{
    client_config, conflicts_topic, dlq_topic, instance_id, AvroRecordIds, Counters, Labels, Route, RunError, RunOptions, Table,
    Worker,
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
    use crate::avro::registry::{unavailable_backoff, Registry, RegistryError};
    let settings = config.schema_registry.as_ref().ok_or(RunError::NoRegistry)?;
    let registry = Registry::new(settings).map_err(RunError::RegistryClient)?;
    let ctx = crate::avro::AvroContext { registry: registry.clone(), catalog: Default::default() };
    let mut backoff = unavailable_backoff(settings.max_backoff);
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
                let wait = backoff.next_delay();
                tracing::warn!(attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64, "start-up: {e}; retrying");
                crate::retry::sleep(wait, shutdown);
            }
            Err(source) => return Err(RunError::Registry { source }),
        }
    }
}

/// Start-up as a sequence of steps, then the processing thread until
/// shutdown or a fatal error.
pub(super) async fn run_inner(config: Config, shutdown: Arc<AtomicBool>, options: RunOptions) -> Result<Counters, RunError> {
    log_start(&config);
    let kafka = Probe::new(&config)?;
    let tables = resolve_tables(&config, &kafka.consumer)?;
    let mut layouts = Vec::with_capacity(tables.len());
    for table in &tables {
        layouts.push(prepare_table(&config, table, &kafka, options.manage_topics).await?);
    }
    let shared = prepare_shared(&config, &layouts, &kafka, options.manage_topics).await?;
    // The admin port comes up before anything that can wait (the schema
    // registry at start-up): /healthz answers, /readyz says 503 meanwhile.
    let metrics = options.metrics.clone().unwrap_or_else(|| Arc::new(Metrics::new()));
    let worker_slot: WorkerSlot = Arc::default();
    let control = Arc::new(SourceControl::with_sources(
        layouts.iter().flat_map(TableLayout::switches).collect(),
        &config.admin.start_paused,
        metrics.clone(),
    ));
    if config.admin.enabled {
        serve_admin(&config, &metrics, worker_slot.clone(), control.clone()).await?;
    }
    let mut avro = Vec::with_capacity(layouts.len());
    for layout in &layouts {
        avro.push(if layout.config.uses_avro() {
            // The registry client blocks on its own runtime: not on this one's threads.
            // Subjects are named after the sources' own topics.
            let (c, s) = (layout.original.clone(), shutdown.clone());
            Some(tokio::task::spawn_blocking(move || avro_startup(&c, &s)).await.expect("start-up does not panic")?)
        } else {
            None
        });
    }
    let db = StateDb::open_with_cache(&config.runtime.state_dir, config.runtime.state_cache_bytes)?;
    let clients = create_clients(&config)?;
    let purge = super::repartition::Purge::new(Some(Arc::new(kafka.admin)), purge_interval(&config));
    let mut worker = new_worker(&config, shared, clients, db.clone(), &metrics, &shutdown, purge);
    worker.standby = super::standby::Standbys::start(&config, db.clone(), metrics.clone(), shutdown.clone())?;
    for (layout, avro) in layouts.into_iter().zip(avro) {
        worker.add_table(layout, avro)?;
    }
    metrics.tables(worker.tables.len());
    worker.discovery = Discovery::new(&config, &tables);
    let labels = worker.labels.clone();
    let worker = Arc::new(Mutex::new(worker));
    let _ = worker_slot.set(worker.clone());
    let consumer = subscribe(&config, worker.clone(), metrics.clone(), control.clone(), labels)?;
    if let Some(started) = &options.started {
        started.store(true, Ordering::Relaxed);
    }
    process(config.runtime.commit_interval, consumer, worker, control, db, metrics, shutdown).await
}

/// How often consumed repartition records are deleted: ten commit
/// intervals, between 1 s and Kafka Streams' 30 s.
fn purge_interval(config: &Config) -> Duration {
    (config.runtime.commit_interval * 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The start-up clients: metadata and topic administration.
pub(super) struct Probe {
    pub(super) consumer: BaseConsumer<QuietContext>,
    pub(super) admin: AdminClient<QuietContext>,
}

impl Probe {
    pub(super) fn new(config: &Config) -> Result<Self, RunError> {
        Ok(Self {
            consumer: client_config(config, &[])
                .create_with_context(QuietContext)
                .map_err(|e| RunError::kafka("create client", e))?,
            admin: client_config(config, &[])
                .create_with_context(QuietContext)
                .map_err(|e| RunError::kafka("create admin client", e))?,
        })
    }
}

/// The tables to merge: those configured (or the single table of the
/// classic configuration) and those `[tables_pattern]` finds now.
fn resolve_tables(config: &Config, consumer: &BaseConsumer<QuietContext>) -> Result<Vec<TableConfig>, RunError> {
    let mut tables = config.tables();
    if let Some(pattern) = &config.tables_pattern {
        let names = super::discovery::topic_names(consumer)?;
        let found = pattern.discover(&names.iter().map(String::as_str).collect::<Vec<_>>(), &config.merge);
        tracing::info!(tables = %found.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(","), pattern = %pattern.sources, "tables found by pattern");
        for t in found {
            if tables.len() >= crate::config::MAX_TABLES {
                tracing::warn!(table = %t.name, limit = crate::config::MAX_TABLES, "more tables match the pattern than one process merges; not merging this one (narrow tables_pattern.allow or run another group)");
                continue;
            }
            if !tables.iter().any(|e| e.name == t.name) {
                tables.push(t);
            }
        }
    }
    if tables.is_empty() {
        return Err(RunError::NoTables);
    }
    Ok(tables)
}

/// One line an operator can read; the whole resolved configuration at DEBUG.
fn log_start(config: &Config) {
    let sources: Vec<String> = config.sources.iter().map(|s| format!("{}={}", s.name, s.topic)).collect();
    tracing::info!(
        sources = %sources.join(","),
        tables = config.tables.len(),
        pattern = config.tables_pattern.as_ref().map_or("-", |p| p.sources.as_str()),
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
    let token = config.admin.resolve_token().map_err(RunError::AdminToken)?;
    match (&token, &config.admin.token_file) {
        (Some(_), Some(file)) => tracing::info!(
            token_file = %file.display(),
            "admin: /state/{{table}}/{{key}} and POST /sources/{{name}}/pause|resume require the bearer token from the token file"
        ),
        (Some(_), None) => {
            tracing::info!("admin: /state/{{table}}/{{key}} and POST /sources/{{name}}/pause|resume require the bearer token (admin.token)")
        }
        (None, _) => tracing::info!(
            "admin: no token configured, so /state/{{table}}/{{key}} and POST /sources/{{name}}/pause|resume are off; set admin.token_file (a mounted secret) or TRIBUTARY_ADMIN__TOKEN to turn them on"
        ),
    }
    // The processing thread holds the worker for each step of a cycle and
    // lets go between polls: a query waits for such a gap, up to
    // QUERY_WAIT, and only a restore or a stuck commit makes it answer 503.
    let query: crate::admin::StateQuery = Arc::new(move |table: Option<&str>, key: &str| {
        let Some(worker) = slot.get() else {
            return (503, serde_json::json!({"error": "starting; try again"}).to_string());
        };
        let deadline = Instant::now() + QUERY_WAIT;
        loop {
            match worker.try_lock() {
                Ok(mut w) => return w.query(table, key),
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

fn new_worker(
    config: &Config,
    shared: SharedLayout,
    clients: Clients,
    db: StateDb,
    metrics: &Arc<Metrics>,
    shutdown: &Arc<AtomicBool>,
    purge: super::repartition::Purge,
) -> Worker {
    Worker {
        config: config.clone(),
        tables: Vec::new(),
        routes: HashMap::new(),
        labels: Labels::default(),
        metrics: metrics.clone(),
        audit: shared.audit,
        shared_partitions: shared.partitions,
        producer: clients.producer,
        db,
        positions: HashMap::new(),
        txn_open: false,
        exactly_once: config.runtime.processing == Processing::ExactlyOnce,
        dlq: shared.dlq,
        last_commit: Instant::now(),
        cycle_events: 0,
        fatal: None,
        counters: Counters::default(),
        avro_records: None,
        registry_backoff: crate::avro::registry::unavailable_backoff(
            config.schema_registry.as_ref().map_or(Duration::from_secs(30), |r| r.max_backoff),
        ),
        last_sweep: Instant::now(),
        record_limit: shared.record_limit,
        restorer: clients.restorer,
        watermarks: clients.watermarks,
        shutdown: shutdown.clone(),
        standby: None,
        cycle_bytes: 0,
        failed_cycles: 0,
        purge,
        discovery: None,
    }
}

impl Worker {
    /// Adds a table: its pipeline, routes for its topics and labels.
    pub(super) fn add_table(
        &mut self,
        layout: TableLayout,
        avro: Option<(crate::avro::AvroContext, Option<AvroRecordIds>)>,
    ) -> Result<(), RunError> {
        let index = self.tables.len();
        if let Some((_, Some(ids))) = &avro {
            self.avro_records = Some(*ids);
        }
        let ctx = avro.as_ref().map(|(ctx, _)| ctx);
        let mut labels = self.labels.write().expect("labels");
        for s in &layout.config.sources {
            self.routes.insert(s.topic.clone(), Route { table: index, source: Arc::from(s.name.as_str()), rekey: None });
            labels.insert(s.topic.clone(), (layout.name.clone(), s.name.clone()));
        }
        for (source, topic, repartition) in &layout.rekeyed {
            let rekeyer = crate::repartition::Rekeyer::new(&layout.original, source, layout.partitions, ctx)
                .map_err(|e| RunError::Rekeyer { table: layout.name.clone(), source_name: source.clone(), source: e })?;
            self.routes.insert(
                topic.clone(),
                Route {
                    table: index,
                    source: Arc::from(source.as_str()),
                    rekey: Some(Rekey { topic: repartition.clone(), rekeyer }),
                },
            );
            labels.insert(topic.clone(), (layout.name.clone(), source.clone()));
            self.purge.watch(repartition);
            self.metrics.repartitioned(&layout.name, source);
        }
        drop(labels);
        if let Some(standby) = &self.standby {
            standby.add_table(super::standby::StandbyTable {
                name: layout.name.clone(),
                store_name: layout.store_name.clone(),
                changelog: layout.changelog.clone(),
                changelog_id: layout.changelog_id.clone(),
                changelog_delete_retention_ms: layout.changelog_delete_retention_ms,
                topics: layout.config.sources.iter().map(|s| s.topic.clone()).collect(),
            });
        }
        let repartitioned: BTreeSet<&str> = layout.rekeyed.iter().map(|(_, _, t)| t.as_str()).collect();
        let pipeline = Pipeline::with_avro(&layout.config, ctx)
            .with_record_limit(self.record_limit)
            .with_repartitioned(repartitioned.iter().copied());
        self.tables.push(Table {
            name: layout.name.clone(),
            store_name: layout.store_name.clone(),
            pipeline,
            tasks: BTreeMap::new(),
            changelog: layout.changelog.clone(),
            changelog_id: layout.changelog_id.clone(),
            changelog_delete_retention_ms: layout.changelog_delete_retention_ms,
            partitions: layout.partitions,
            topics: layout.config.sources.iter().map(|s| s.topic.clone()).collect(),
            // Avro keys are framed bytes whose hash says nothing of the key;
            // repartition topics are written by Tributary with murmur2.
            partitioner_unchecked: layout
                .config
                .sources
                .iter()
                .filter(|s| s.format != crate::config::SourceFormat::DebeziumAvro && !repartitioned.contains(s.topic.as_str()))
                .map(|s| s.topic.clone())
                .collect(),
            config: layout.config,
        });
        Ok(())
    }

    /// Every topic the group consumer subscribes to.
    pub(super) fn subscribed_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.routes.keys().cloned().collect();
        topics.sort();
        topics
    }
}

/// The group consumer (`range` assignor: partition p of every topic of a
/// table on one member), subscribed to every topic of every table.
fn subscribe(
    config: &Config,
    worker: Arc<Mutex<Worker>>,
    metrics: Arc<Metrics>,
    control: Arc<SourceControl>,
    labels: Labels,
) -> Result<GroupConsumer, RunError> {
    let mut consumer_defaults = vec![
        ("group.id", config.kafka.group_id.as_str()),
        ("partition.assignment.strategy", "range"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("isolation.level", "read_committed"),
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
        ("queued.max.messages.kbytes", GROUP_QUEUE_KBYTES),
        ("fetch.max.bytes", GROUP_FETCH_MAX_BYTES),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ];
    if let Some(id) = &config.kafka.instance_id {
        consumer_defaults.push(("group.instance.id", id.as_str()));
    }
    let topics = worker.lock().expect("worker").subscribed_topics();
    let consumer: GroupConsumer = client_config(config, &consumer_defaults)
        .create_with_context(GroupContext { worker, metrics, labels, control })
        .map_err(|e| RunError::kafka("create consumer", e))?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
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
