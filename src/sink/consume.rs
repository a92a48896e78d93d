//! The sink's loop: assign from the offsets the database holds, read,
//! apply batches, report lag, pick up added partitions, resync when needed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

use super::metrics::SinkMetrics;
use super::*;

/// Counters of a sink run.
#[derive(Debug, Default, Clone)]
pub struct SinkStats {
    /// Records applied (rows changed or dead-lettered).
    pub records: u64,
    /// Database transactions.
    pub batches: u64,
    /// Dead rows.
    pub dead: u64,
}

/// How `tributary sink` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkOptions {
    /// Resynchronise the table with the topic before going on (`--resync`).
    pub resync: bool,
}

/// Runs the sink until `shutdown` is set.
pub fn run(config: &Config, shutdown: &AtomicBool) -> Result<SinkStats, SinkError> {
    run_with(config, shutdown, SinkOptions::default())
}

/// Avro output: keys and values are decoded through the registry into the
/// same JSON the JSON output carries.
pub(super) type AvroReader = Option<(crate::avro::registry::JsonReader, Duration)>;

/// [`run`] with options.
pub fn run_with(config: &Config, shutdown: &AtomicBool, options: SinkOptions) -> Result<SinkStats, SinkError> {
    let sink = config.sink.as_ref().ok_or_else(|| SinkError::Config("the configuration has no [sink] section".into()))?;
    let tables = sink.resolve(config).map_err(|problems| SinkError::Config(problems.join("; ")))?;
    let group = sink.group_id.clone().unwrap_or_else(|| format!("{}-sink", config.kafka.group_id));
    let metrics = SinkMetrics::new();
    if let Some(listen) = &sink.admin_listen {
        serve_admin(listen, metrics.base.clone())?;
    }
    let mut target = open_target(sink)?;
    for t in &tables {
        target.prepare(&t.spec)?;
    }
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", &group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &config.kafka.properties {
        client.set(k, v);
    }
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let consumer: BaseConsumer<SinkContext> = client
        .create_with_context(SinkContext { bootstrap: bootstrap.clone(), unreachable: AtomicBool::new(false) })
        .map_err(|source| SinkError::Kafka { context: "create consumer".into(), source })?;
    let Some(mut partitions) = wait_for_topics(&consumer, &tables, &bootstrap, shutdown)? else {
        tracing::info!("sink stopped while waiting for Kafka");
        return Ok(SinkStats::default());
    };
    let mut avro: AvroReader = match (config.output.format, &config.schema_registry) {
        (crate::config::OutputFormat::Avro, Some(r)) => Some((
            crate::avro::registry::JsonReader::new(crate::avro::registry::Registry::new(r).map_err(SinkError::Registry)?),
            r.max_backoff,
        )),
        _ => None,
    };
    let mut stats = SinkStats::default();
    // One table at a time: the resync's live-key set is one temporary table.
    for (t, &n) in tables.iter().zip(&partitions) {
        let source = resync::Source { client: &client, kafka: &config.kafka, topic: &t.topic, group: &group, partitions: n };
        if let Some(plan) = resync::check(&consumer, &mut *target, &source, options.resync)? {
            let before = stats.clone();
            let done = resync::resync(&source, &mut *target, &t.spec, plan, &mut avro, shutdown, sink.batch_size, &mut stats)?;
            metrics.resynced(&t.spec.table, stats.records - before.records, stats.dead - before.dead);
            if !done {
                tracing::info!(
                    records = stats.records,
                    batches = stats.batches,
                    table = %t.spec.table,
                    "sink stopped during the resync; it starts over on the next start"
                );
                return Ok(stats);
            }
        }
    }
    let resumed = assign_from_database(&consumer, &mut *target, &group, &assignment(&tables, &partitions))?;
    for (t, &n) in tables.iter().zip(&partitions) {
        tracing::info!(topic = %t.topic, table = %t.spec.table, partitions = n, "sink table assigned");
    }
    let names: Vec<&str> = tables.iter().map(|t| t.spec.table.as_str()).collect();
    tracing::info!(group = %group, tables = %names.join(","), resumed, "sink started");
    metrics.base.set_ready(true);
    let by_topic: HashMap<&str, usize> = tables.iter().enumerate().map(|(i, t)| (t.topic.as_str(), i)).collect();
    // Batches are per table: one table's records, one database transaction.
    let mut pending: Vec<Pending> = tables.iter().map(|_| Pending::default()).collect();
    let mut last_metadata = Instant::now();
    let mut last_lag = Instant::now();
    let mut last_progress = (Instant::now(), stats.records);
    let mut sink_batch = SinkBatch { consumer: &consumer, target: &mut *target, group: &group, metrics: &metrics };
    while !shutdown.load(Ordering::Relaxed) {
        if last_lag.elapsed() >= LAG_INTERVAL {
            last_lag = Instant::now();
            for ((t, &n), p) in tables.iter().zip(&partitions).zip(&pending) {
                report_lag(&consumer, t, n, &p.records, &metrics);
            }
            if last_progress.0.elapsed() >= PROGRESS_INTERVAL && stats.records > last_progress.1 {
                tracing::info!(records = stats.records, batches = stats.batches, dead = stats.dead, "sink progress");
                last_progress = (Instant::now(), stats.records);
            }
        }
        if last_metadata.elapsed() >= sink.metadata_interval {
            // Partitions added to a topic later are picked up too.
            last_metadata = Instant::now();
            let mut now = Vec::with_capacity(tables.len());
            for t in &tables {
                let topic = &t.topic;
                now.push(partition_count(&consumer, topic, Duration::from_secs(30)).map_err(|source| SinkError::Metadata {
                    topic: topic.clone(),
                    bootstrap: bootstrap.clone(),
                    source: Box::new(source),
                })?);
            }
            if now.iter().zip(&partitions).any(|(now, before)| now > before) {
                for (t, p) in tables.iter().zip(&mut pending) {
                    sink_batch.flush(t, p, &mut stats)?;
                }
                // An assignment replaces the whole previous one.
                let grown: Vec<i32> = now.iter().zip(&partitions).map(|(now, before)| *now.max(before)).collect();
                assign_from_database(&consumer, &mut *sink_batch.target, &group, &assignment(&tables, &grown))?;
                for ((t, from), to) in tables.iter().zip(&partitions).zip(&grown).filter(|((_, from), to)| to > from) {
                    tracing::info!(topic = %t.topic, table = %t.spec.table, from, to, "the topic grew; assigned the new partitions");
                }
                partitions = grown;
            }
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                // Reachable again: the next outage is reported too.
                consumer.context().unreachable.store(false, Ordering::Relaxed);
                let Some(record) = read_message(&m, &mut avro, shutdown) else {
                    break;
                };
                // Only assigned topics deliver records.
                if let Some(&i) = by_topic.get(record.topic.as_str()) {
                    pending[i].push(record);
                }
            }
            // Broker trouble reaches the context's error callback too,
            // which reports it once.
            Some(Err(e)) => tracing::debug!("sink consumer: {e}"),
            None => {}
        }
        for (t, p) in tables.iter().zip(&mut pending) {
            if p.due(sink.batch_size) {
                sink_batch.flush(t, p, &mut stats)?;
            }
        }
    }
    for (t, p) in tables.iter().zip(&mut pending) {
        sink_batch.flush(t, p, &mut stats)?;
    }
    tracing::info!(records = stats.records, batches = stats.batches, dead = stats.dead, "sink stopped");
    Ok(stats)
}

/// One table's records read but not yet applied.
#[derive(Default)]
pub(super) struct Pending {
    records: Vec<RawRecord>,
    /// When the first of them arrived.
    first: Option<Instant>,
}

impl Pending {
    fn push(&mut self, record: RawRecord) {
        self.first.get_or_insert_with(Instant::now);
        self.records.push(record);
    }

    /// A full batch, or records that waited long enough.
    fn due(&self, batch_size: usize) -> bool {
        self.records.len() >= batch_size || self.first.is_some_and(|f| f.elapsed() >= Duration::from_millis(100))
    }
}

/// Every table's topic with its partition count, for [`assign_from_database`].
fn assignment<'a>(tables: &'a [SinkTable], partitions: &[i32]) -> Vec<(&'a str, i32)> {
    tables.iter().zip(partitions).map(|(t, &n)| (t.topic.as_str(), n)).collect()
}

/// The partition count of every table's topic, waiting (in short steps, so
/// a stop request is honoured) up to [`STARTUP_TIMEOUT`] for Kafka; `None`
/// when stopped meanwhile.
fn wait_for_topics(
    consumer: &BaseConsumer<SinkContext>,
    tables: &[SinkTable],
    bootstrap: &str,
    shutdown: &AtomicBool,
) -> Result<Option<Vec<i32>>, SinkError> {
    let waiting = Instant::now();
    let mut partitions = Vec::with_capacity(tables.len());
    for t in tables {
        let topic = &t.topic;
        let n = loop {
            match partition_count(consumer, topic, Duration::from_secs(1)) {
                Ok(n) => break n,
                Err(_) if shutdown.load(Ordering::Relaxed) => return Ok(None),
                Err(e) if waiting.elapsed() < STARTUP_TIMEOUT => {
                    tracing::debug!(bootstrap_servers = %bootstrap, "waiting for the metadata of {topic}: {e}");
                }
                Err(source) => {
                    return Err(SinkError::MetadataTimeout {
                        topic: topic.clone(),
                        bootstrap: bootstrap.to_string(),
                        waited: STARTUP_TIMEOUT,
                        source: Box::new(source),
                    })
                }
            }
        };
        partitions.push(n);
    }
    Ok(Some(partitions))
}

/// The record as the sink applies it; `None` when the sink is stopping
/// while the schema registry is unreachable: the record is not the problem,
/// so it is neither applied nor passed, and the next run reads it again.
pub(super) fn read_message<M: Message>(m: &M, avro: &mut AvroReader, shutdown: &AtomicBool) -> Option<RawRecord> {
    let vv = m.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == crate::output::HEADER_VV)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    let mut record = RawRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: None,
        value: None,
        vv,
        timestamp: m.timestamp().to_millis(),
        error: None,
    };
    match avro {
        None => {
            record.key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            record.value = m.payload().map(|v| String::from_utf8_lossy(v).into_owned());
        }
        Some((reader, max_backoff)) => {
            let mut unavailable = false;
            let mut read = |bytes: &[u8], what: &str| match reader.read_patiently(bytes, *max_backoff, shutdown) {
                Ok(json) => Some(json.to_string()),
                Err(e) if e.is_retriable() => {
                    unavailable = true;
                    None
                }
                Err(e) => {
                    record.error.get_or_insert(format!("{what}: {e}"));
                    None
                }
            };
            let key = m.key().and_then(|k| read(k, "key"));
            let value = m.payload().and_then(|v| read(v, "value"));
            if unavailable {
                return None;
            }
            record.key = key;
            record.value = value;
        }
    }
    Some(record)
}

/// How long the first contact with Kafka may take before the sink gives up
/// with a message naming the bootstrap servers.
pub(super) const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the lag gauges are updated.
pub(super) const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// How often, at most, a progress line is logged while records arrive.
pub(super) const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

pub(super) fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, MetadataError> {
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(MetadataError::Kafka)?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| MetadataError::NoTopic { topic: topic.to_string() })
}

/// The sink consumer's context: an unreachable broker is reported once with
/// the bootstrap servers (librdkafka raises it on every retry), and
/// librdkafka's own connection-failure log lines are kept at DEBUG; the
/// rest as `run` logs it (`kafka::quiet`: expected conditions at DEBUG).
pub(super) struct SinkContext {
    bootstrap: String,
    /// Reported since the last record arrived.
    unreachable: AtomicBool,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::quiet::log_connection_failures_quietly(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !crate::kafka::quiet::is_unreachable(&error) {
            crate::kafka::quiet::error(&error, reason);
        } else if self.unreachable.swap(true, Ordering::Relaxed) {
            tracing::debug!("kafka: {reason}");
        } else {
            tracing::warn!(bootstrap_servers = %self.bootstrap, "cannot reach Kafka ({reason}); retrying");
        }
    }
}

impl ConsumerContext for SinkContext {}

/// Serves `/metrics`, `/healthz` and `/readyz` on its own thread.
pub(super) fn serve_admin(listen: &str, metrics: Arc<crate::metrics::Metrics>) -> Result<(), SinkError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SinkError::AdminStart)?;
    let addr = runtime
        .block_on(crate::admin::serve(listen, metrics, crate::admin::Endpoints::default()))
        .map_err(|source| SinkError::AdminListen { listen: listen.to_string(), source })?;
    tracing::debug!(%addr, "sink admin port");
    std::thread::Builder::new()
        .name("sink-admin".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(SinkError::AdminStart)?;
    Ok(())
}

/// The low and high watermarks librdkafka keeps from its fetch answers (no
/// round trip, unlike `fetch_watermarks`). rust-rdkafka does not wrap this
/// call. The high watermark counts records of transactions still open;
/// transaction markers do not count, since the consumer's position moves
/// past them.
pub(super) fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; the out
    // pointers are valid locals and the topic a NUL-terminated string.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some((low, high))
}

/// Per partition: what the topic holds (up to its high watermark) and the
/// sink has not yet committed to the database.
pub(super) fn report_lag<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    table: &SinkTable,
    partitions: i32,
    pending: &[RawRecord],
    metrics: &SinkMetrics,
) {
    let topic = table.topic.as_str();
    let Ok(positions) = consumer.position() else { return };
    for p in 0..partitions {
        let Some((low, high)) = cached_watermarks(consumer, topic, p) else { continue };
        let position = match positions.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low.max(0),
        };
        let unapplied = pending.iter().filter(|r| r.partition == p).count() as i64;
        metrics.lag(&table.spec.table, p, (high - position).max(0) + unapplied);
    }
}

/// Offsets live in the database, next to the rows: assigns every partition
/// of every topic from there (from the beginning when it has none). Call
/// with nothing pending, so the database offsets are the consumer's
/// positions. Returns how many partitions had stored offsets.
pub(super) fn assign_from_database<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    target: &mut dyn Target,
    group: &str,
    topics: &[(&str, i32)],
) -> Result<usize, SinkError> {
    let mut tpl = TopicPartitionList::new();
    let mut resumed = 0;
    for &(topic, partitions) in topics {
        let stored = target.offsets(group, topic)?;
        resumed += stored.len();
        for p in 0..partitions {
            let offset = stored.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(o.next));
            tpl.add_partition_offset(topic, p, offset)
                .map_err(|source| SinkError::Kafka { context: format!("assign {topic} partition {p}"), source })?;
        }
    }
    consumer.assign(&tpl).map_err(|source| SinkError::Kafka { context: "assign the topics".into(), source })?;
    Ok(resumed)
}

/// What applying a batch in the main loop needs.
pub(super) struct SinkBatch<'a, C: ConsumerContext> {
    consumer: &'a BaseConsumer<C>,
    target: &'a mut dyn Target,
    group: &'a str,
    metrics: &'a SinkMetrics,
}

impl<C: ConsumerContext> SinkBatch<'_, C> {
    /// Applies a table's pending records in one transaction, then tells Kafka.
    fn flush(&mut self, table: &SinkTable, pending: &mut Pending, stats: &mut SinkStats) -> Result<(), SinkError> {
        pending.first = None;
        if pending.records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let batch = build_batch(&table.spec, &pending.records);
        let (records, dead) = (pending.records.len(), batch.dead.len());
        let offsets = batch.offsets.clone();
        apply_batch(self.target, &table.spec, self.group, batch, &mut pending.records, stats)?;
        self.metrics.batch(&table.spec.table, records, dead, started.elapsed().as_secs_f64());
        commit_to_kafka(self.consumer, &offsets);
        Ok(())
    }
}

/// After the database commit, the same offsets go to the consumer group in
/// Kafka, as information: lag tools (`kafka-consumer-groups --describe`)
/// then see the sink. The sink never reads them; the database stays the
/// source of truth, so a failed commit here only delays what the tools show.
pub(super) fn commit_to_kafka<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &[OffsetUpdate]) {
    let mut tpl = TopicPartitionList::new();
    for o in offsets {
        if tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.next)).is_err() {
            return;
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!("informational offset commit to Kafka: {e}");
        }
    }
}

pub(super) fn apply_batch(
    target: &mut dyn Target,
    spec: &TableSpec,
    group: &str,
    batch: Batch,
    pending: &mut Vec<RawRecord>,
    stats: &mut SinkStats,
) -> Result<(), SinkError> {
    for d in &batch.dead {
        tracing::warn!(topic = %d.topic, partition = d.partition, offset = d.offset, "sink dead letter: {}", d.error);
    }
    target.apply(spec, group, &batch)?;
    stats.records += pending.len() as u64;
    stats.batches += 1;
    stats.dead += batch.dead.len() as u64;
    pending.clear();
    Ok(())
}
