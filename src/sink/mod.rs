//! `tributary sink`: materializes the compacted output topic into a table.
//!
//! Records are read with `read_committed` and applied in batches; each batch
//! is one database transaction that upserts or deletes the rows *and* stores
//! the next offset of every partition it covers, so a crash or restart
//! neither loses nor repeats anything: on start the sink seeks to the offsets
//! the database holds. A record whose value does not fit the table (a type
//! mismatch) is written to a dead-letter table in the same transaction, and
//! the stream goes on.
//!
//! Targets sit behind [`Target`]: SQLite (embedded default) and PostgreSQL.
//!
//! A sink that was stopped longer than the topic keeps tombstones would never
//! see the ones the cleaner removed meanwhile; [`resync`] detects that at
//! start-up and re-reads the topic from the beginning.

mod metrics;
mod postgres;
mod resync;
mod sqlite;
mod types;

pub use crate::config::{EpochUnit, SinkConfig, TargetKind};

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
use serde_json::Value;

use crate::config::Config;
use metrics::SinkMetrics;

/// A column's SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `text`
    Text,
    /// `bigint` (64-bit)
    BigInt,
    /// `integer` (32-bit)
    Integer,
    /// `double precision`
    Double,
    /// `boolean`
    Boolean,
    /// `json` / `jsonb`
    Json,
    /// `numeric(p,s)` (`precision: None`: unconstrained `numeric`).
    Numeric {
        /// Total digits.
        precision: Option<u32>,
        /// Digits after the point.
        scale: u32,
    },
    /// `date`
    Date,
    /// `timestamp` (without time zone; values in UTC)
    Timestamp,
    /// `timestamptz`
    TimestampTz,
    /// `uuid`
    Uuid,
    /// `bytea` (BLOB on SQLite), from base64
    Bytes,
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnType::Text => f.write_str("text"),
            ColumnType::BigInt => f.write_str("bigint"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::Double => f.write_str("double"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Json => f.write_str("json"),
            ColumnType::Numeric { precision: Some(p), scale } => write!(f, "numeric({p},{scale})"),
            ColumnType::Numeric { precision: None, .. } => f.write_str("numeric"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::TimestampTz => f.write_str("timestamptz"),
            ColumnType::Uuid => f.write_str("uuid"),
            ColumnType::Bytes => f.write_str("bytea"),
        }
    }
}

/// A column of the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type.
    pub ty: ColumnType,
    /// `[sink.time_units]` of a timestamp column.
    pub unit: Option<EpochUnit>,
}

/// The table layout, validated from `[sink]`.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Table name.
    pub table: String,
    /// Every column, key columns included, vv column last when configured.
    pub columns: Vec<Column>,
    /// Indexes of the key columns in `columns`.
    pub key: Vec<usize>,
    /// Index of the vv column.
    pub vv: Option<usize>,
}

/// A value bound to a column.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// Integers.
    Int(i64),
    /// Floats.
    Float(f64),
    /// Text.
    Text(String),
    /// Booleans.
    Bool(bool),
    /// JSON (as text).
    Json(Value),
    /// Bytes (`bytea`, BLOB).
    Bytes(Vec<u8>),
}

/// One change to apply, after de-duplication per key within the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or update the row (values in column order).
    Upsert(Vec<SqlValue>),
    /// Delete the row with this key (values in key order).
    Delete(Vec<SqlValue>),
}

/// A record that does not fit the table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key text.
    pub key: Option<String>,
    /// Value text.
    pub value: Option<String>,
    /// What was wrong.
    pub error: String,
}

/// A partition's position as the database stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    /// The next offset to read.
    pub next: i64,
    /// The timestamp (ms) of the last record applied, which bounds from
    /// below when every later record was written; `None` in databases from
    /// before it was stored.
    pub record_ts: Option<i64>,
}

/// A partition's new position, stored with the batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OffsetUpdate {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset to read.
    pub next: i64,
    /// The timestamp (ms) of the batch's last record of this partition.
    pub record_ts: Option<i64>,
}

/// One database transaction's worth of work.
#[derive(Debug, Default)]
pub struct Batch {
    /// Row changes.
    pub changes: Vec<Change>,
    /// Dead letters.
    pub dead: Vec<DeadRow>,
    /// Positions to store.
    pub offsets: Vec<OffsetUpdate>,
    /// During a resync: keys (in key order) the topic holds a live record
    /// for, as of this batch.
    pub live: Vec<Vec<SqlValue>>,
    /// During a resync: keys whose last record so far is a tombstone.
    pub gone: Vec<Vec<SqlValue>>,
}

/// What one sweep step did.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// Rows examined (fewer than asked for: the table's end was reached).
    pub examined: usize,
    /// Rows deleted.
    pub deleted: usize,
    /// The last key examined, where the next step goes on.
    pub last: Option<Vec<SqlValue>>,
}

/// Sink failures. Conversion problems are not errors: they become dead rows.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The `[sink]` section is missing or invalid.
    #[error("sink configuration: {0}")]
    Config(String),
    /// The database failed.
    #[error("{target} {url}: {message}")]
    Db {
        /// Target kind.
        target: &'static str,
        /// The URL or path (no password).
        url: String,
        /// What failed.
        message: String,
    },
    /// A Kafka call failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The topic's metadata could not be read (the topic is missing, or
    /// the cluster did not answer).
    #[error("kafka: {0}")]
    Metadata(String),
}

/// A database the sink writes to.
pub trait Target {
    /// Creates the table, the offsets, dead-letter and resync tables when
    /// missing, and migrates older offsets tables in place.
    fn prepare(&mut self, spec: &TableSpec) -> Result<(), SinkError>;
    /// The stored positions of `group` for `topic`, per partition.
    fn offsets(&mut self, group: &str, topic: &str) -> Result<HashMap<i32, StoredOffset>, SinkError>;
    /// Applies a batch in one transaction (rows, dead letters, offsets, and
    /// during a resync the live-key marks).
    fn apply(&mut self, spec: &TableSpec, group: &str, batch: &Batch) -> Result<(), SinkError>;
    /// When a resync of `group`/`topic` started (ms since the epoch) and has
    /// not finished: a crash or stop in the middle leaves this set.
    fn resync_started(&mut self, group: &str, topic: &str) -> Result<Option<i64>, SinkError>;
    /// Starts a resync in one transaction: records it as in progress, forgets
    /// the offsets of the `reset` partitions (their stored offsets belong to
    /// a topic that no longer exists) and starts an empty live-key set.
    fn begin_resync(&mut self, spec: &TableSpec, group: &str, topic: &str, reset: &[i32]) -> Result<(), SinkError>;
    /// Examines the next `limit` rows in key order after the key `after`
    /// (from the first row when `None`) and deletes those whose key is not in
    /// the live-key set, in one transaction.
    fn sweep(&mut self, spec: &TableSpec, after: Option<&[SqlValue]>, limit: usize) -> Result<Sweep, SinkError>;
    /// Marks the resync finished and drops the live-key set.
    fn finish_resync(&mut self, group: &str, topic: &str) -> Result<(), SinkError>;
}

impl SinkConfig {
    /// Validates the column list and builds the table layout.
    pub fn table_spec(&self) -> Result<TableSpec, SinkError> {
        let bad = |m: String| SinkError::Config(m);
        if !is_identifier(&self.table) {
            return Err(bad(format!("sink.table: \"{}\" is not a plain SQL identifier", self.table)));
        }
        let mut columns = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            let (name, ty) = c.trim().split_once(char::is_whitespace).unwrap_or((c.trim(), ""));
            if ty.trim().is_empty() {
                return Err(bad(format!("sink.columns[{i}]: \"{c}\" must be \"name type\"")));
            }
            if !is_identifier(name) {
                return Err(bad(format!("sink.columns[{i}]: \"{name}\" is not a plain SQL identifier")));
            }
            let Some(ty) = types::parse_type(ty) else {
                return Err(bad(format!(
                    "sink.columns[{i}]: unknown type \"{}\" (text, bigint, integer, double precision, boolean, json, numeric(p,s), date, timestamp, timestamptz, uuid, bytea)",
                    ty.trim()
                )));
            };
            if columns.iter().any(|c: &Column| c.name == name) {
                return Err(bad(format!("sink.columns[{i}]: column \"{name}\" listed twice")));
            }
            let unit = self.time_units.get(name).copied();
            columns.push(Column { name: name.to_string(), ty, unit });
        }
        let mut key = Vec::new();
        for k in &self.key_columns {
            let i = columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| bad(format!("sink.key_columns: \"{k}\" is not in sink.columns")))?;
            key.push(i);
        }
        if key.is_empty() {
            return Err(bad("sink.key_columns: at least one key column is required".into()));
        }
        let vv = match &self.vv_column {
            Some(v) if columns.iter().any(|c| &c.name == v) => {
                return Err(bad(format!("sink.vv_column: \"{v}\" is also in sink.columns")))
            }
            Some(v) if !is_identifier(v) => return Err(bad(format!("sink.vv_column: \"{v}\" is not a plain SQL identifier"))),
            Some(v) => {
                columns.push(Column { name: v.clone(), ty: ColumnType::Text, unit: None });
                Some(columns.len() - 1)
            }
            None => None,
        };
        for name in self.time_units.keys() {
            if !columns.iter().any(|c| &c.name == name && matches!(c.ty, ColumnType::Timestamp | ColumnType::TimestampTz)) {
                return Err(bad(format!("sink.time_units.{name}: not a timestamp or timestamptz column of sink.columns")));
            }
        }
        if let Some(a) = &self.admin_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(format!("sink.admin_listen: \"{a}\" is not an address such as \"127.0.0.1:9465\"")));
            }
        }
        if self.batch_size == 0 {
            return Err(bad("sink.batch_size: must be at least 1".into()));
        }
        Ok(TableSpec { table: self.table.clone(), columns, key, vv })
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Converts a JSON value to a column value, or says why it does not fit.
pub fn to_sql(column: &Column, value: Option<&Value>) -> Result<SqlValue, String> {
    let v = match value {
        None | Some(Value::Null) => return Ok(SqlValue::Null),
        Some(v) => v,
    };
    let mismatch = |what: &str| format!("column `{}` ({}): {v} is not {what}", column.name, column.ty);
    let misfit = |why: String| format!("column `{}` ({}): {v} {why}", column.name, column.ty);
    Ok(match column.ty {
        ColumnType::Text => {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.contains('\0') {
                return Err(format!(
                    "column `{}` (text): the value contains a NUL character, which databases reject",
                    column.name
                ));
            }
            SqlValue::Text(text)
        }
        ColumnType::BigInt | ColumnType::Integer => {
            let n = match v {
                Value::Number(n) => n.as_i64().ok_or_else(|| mismatch("an integer"))?,
                Value::String(s) => s.trim().parse::<i64>().map_err(|_| mismatch("an integer"))?,
                _ => return Err(mismatch("an integer")),
            };
            if column.ty == ColumnType::Integer && i32::try_from(n).is_err() {
                return Err(mismatch("a 32-bit integer"));
            }
            SqlValue::Int(n)
        }
        ColumnType::Double => match v {
            Value::Number(n) => SqlValue::Float(n.as_f64().ok_or_else(|| mismatch("a number"))?),
            Value::String(s) => SqlValue::Float(s.trim().parse::<f64>().map_err(|_| mismatch("a number"))?),
            _ => return Err(mismatch("a number")),
        },
        ColumnType::Boolean => match v {
            Value::Bool(b) => SqlValue::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => SqlValue::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => SqlValue::Bool(false),
            _ => return Err(mismatch("a boolean")),
        },
        ColumnType::Json => {
            if v.to_string().contains("\\u0000") {
                return Err(format!(
                    "column `{}` (json): the value contains a NUL character, which databases reject",
                    column.name
                ));
            }
            SqlValue::Json(v.clone())
        }
        ColumnType::Numeric { precision, scale } => SqlValue::Text(types::decimal(v, precision, scale).map_err(misfit)?),
        ColumnType::Date => SqlValue::Text(types::date(v).map_err(misfit)?),
        ColumnType::Timestamp => SqlValue::Text(types::timestamp(v, column.unit, false).map_err(misfit)?),
        ColumnType::TimestampTz => SqlValue::Text(types::timestamp(v, column.unit, true).map_err(misfit)?),
        ColumnType::Uuid => SqlValue::Text(types::uuid(v).map_err(misfit)?),
        ColumnType::Bytes => SqlValue::Bytes(types::bytes(v).map_err(misfit)?),
    })
}

/// Builds the batch for a run of records (already in offset order per
/// partition): the last change per key wins, as on the compacted topic.
pub fn build_batch(spec: &TableSpec, records: &[RawRecord]) -> Batch {
    batch_of(spec, records, None)
}

/// [`build_batch`] during a resync: every record marks its key live or gone
/// (a tombstone), and only records at or past `applied[partition]` (what the
/// table already reflects) change rows and offsets. Re-applying the older
/// ones would move rows back to older versions for a while.
pub fn build_resync_batch(spec: &TableSpec, records: &[RawRecord], applied: &HashMap<i32, i64>) -> Batch {
    batch_of(spec, records, Some(applied))
}

fn batch_of(spec: &TableSpec, records: &[RawRecord], resync: Option<&HashMap<i32, i64>>) -> Batch {
    let mut batch = Batch::default();
    // By the converted key values, not the key text: `{"id":1}` and
    // `{"id":"1"}` are one row, and one statement must not touch it twice.
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut marks: Vec<(Vec<SqlValue>, bool)> = Vec::new();
    let mut mark_of: HashMap<String, usize> = HashMap::new();
    let mut next: HashMap<(&str, i32), (i64, Option<i64>)> = HashMap::new();
    for r in records {
        if let Some(applied) = resync {
            if let Ok(key) = key_values(spec, r) {
                // Only a real tombstone proves the key gone; a record that
                // could not be decoded keeps it.
                let live = r.value.is_some() || r.error.is_some();
                let id = format!("{:?}", key.iter().collect::<Vec<_>>());
                match mark_of.get(&id) {
                    Some(&i) => marks[i] = (key, live),
                    None => {
                        mark_of.insert(id, marks.len());
                        marks.push((key, live));
                    }
                }
            }
            if r.offset < applied.get(&r.partition).copied().unwrap_or(0) {
                continue;
            }
        }
        next.insert((&r.topic, r.partition), (r.offset + 1, r.timestamp));
        match convert(spec, r) {
            Ok(change) => {
                let key = match &change {
                    Change::Upsert(values) => format!("{:?}", spec.key.iter().map(|&i| &values[i]).collect::<Vec<_>>()),
                    Change::Delete(key) => format!("{:?}", key.iter().collect::<Vec<_>>()),
                };
                match by_key.get(&key) {
                    Some(&i) => batch.changes[i] = change,
                    None => {
                        by_key.insert(key, batch.changes.len());
                        batch.changes.push(change);
                    }
                }
            }
            Err(error) => batch.dead.push(DeadRow {
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
                key: r.key.clone(),
                value: r.value.clone(),
                error,
            }),
        }
    }
    batch.offsets = next
        .into_iter()
        .map(|((t, p), (next, record_ts))| OffsetUpdate { topic: t.to_string(), partition: p, next, record_ts })
        .collect();
    batch.offsets.sort();
    for (key, live) in marks {
        if live {
            batch.live.push(key);
        } else {
            batch.gone.push(key);
        }
    }
    batch
}

/// A consumed output record.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (canonical key JSON).
    pub key: Option<String>,
    /// Value (merged row JSON, or None for a tombstone).
    pub value: Option<String>,
    /// The `tributary.vv` header.
    pub vv: Option<String>,
    /// The record's timestamp (ms).
    pub timestamp: Option<i64>,
    /// Why the record could not be read (an undecodable Avro payload): it
    /// becomes a dead row.
    pub error: Option<String>,
}

/// The record's key as column values, in key order.
fn key_values(spec: &TableSpec, r: &RawRecord) -> Result<Vec<SqlValue>, String> {
    let key_text = r.key.as_deref().ok_or("the record has no key")?;
    let key: serde_json::Map<String, Value> =
        serde_json::from_str(key_text).map_err(|e| format!("the key is not a JSON object: {e}"))?;
    spec.key
        .iter()
        .map(|&i| {
            let c = &spec.columns[i];
            match key.get(&c.name) {
                Some(Value::Null) | None => Err(format!("key column `{}` is missing or null in the key {key_text}", c.name)),
                Some(v) => to_sql(c, Some(v)),
            }
        })
        .collect()
}

fn convert(spec: &TableSpec, r: &RawRecord) -> Result<Change, String> {
    if let Some(e) = &r.error {
        return Err(e.clone());
    }
    let key_values = key_values(spec, r)?;
    let Some(value) = r.value.as_deref() else {
        return Ok(Change::Delete(key_values));
    };
    let row: serde_json::Map<String, Value> =
        serde_json::from_str(value).map_err(|e| format!("the value is not a JSON object: {e}"))?;
    let mut values = Vec::with_capacity(spec.columns.len());
    for (i, c) in spec.columns.iter().enumerate() {
        if let Some(k) = spec.key.iter().position(|&ki| ki == i) {
            values.push(key_values[k].clone());
        } else if Some(i) == spec.vv {
            values.push(r.vv.clone().map_or(SqlValue::Null, SqlValue::Text));
        } else {
            values.push(to_sql(c, row.get(&c.name))?);
        }
    }
    Ok(Change::Upsert(values))
}

/// Opens the configured target.
pub fn open_target(sink: &SinkConfig) -> Result<Box<dyn Target>, SinkError> {
    Ok(match sink.target {
        TargetKind::Sqlite => Box::new(sqlite::Sqlite::open(&sink.url)?),
        TargetKind::Postgres => Box::new(postgres::Postgres::open(&sink.url)?),
    })
}

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
type AvroReader = Option<(crate::avro::registry::JsonReader, Duration)>;

/// [`run`] with options.
pub fn run_with(config: &Config, shutdown: &AtomicBool, options: SinkOptions) -> Result<SinkStats, SinkError> {
    let sink = config.sink.as_ref().ok_or_else(|| SinkError::Config("the configuration has no [sink] section".into()))?;
    let spec = sink.table_spec()?;
    let topic = sink.topic.clone().unwrap_or_else(|| config.output.topic.clone());
    let group = sink.group_id.clone().unwrap_or_else(|| format!("{}-sink", config.kafka.group_id));
    let metrics = SinkMetrics::new();
    if let Some(listen) = &sink.admin_listen {
        serve_admin(listen, metrics.base.clone())?;
    }
    let mut target = open_target(sink)?;
    target.prepare(&spec)?;
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
    // In short steps, so a stop request during the wait is honoured.
    let waiting = Instant::now();
    let mut partitions = loop {
        match partition_count(&consumer, &topic, Duration::from_secs(1)) {
            Ok(n) => break n,
            Err(_) if shutdown.load(Ordering::Relaxed) => {
                tracing::info!("sink stopped while waiting for Kafka");
                return Ok(SinkStats::default());
            }
            Err(e) if waiting.elapsed() < STARTUP_TIMEOUT => {
                tracing::debug!(bootstrap_servers = %bootstrap, "waiting for the metadata of {topic}: {e}");
            }
            Err(e) => {
                return Err(SinkError::Metadata(format!(
                    "cannot read the metadata of topic {topic} from the bootstrap servers {bootstrap} within {}s: {e}",
                    STARTUP_TIMEOUT.as_secs()
                )))
            }
        }
    };
    let mut avro: AvroReader = match (config.output.format, &config.schema_registry) {
        (crate::config::OutputFormat::Avro, Some(r)) => Some((
            crate::avro::registry::JsonReader::new(crate::avro::registry::Registry::new(r).map_err(SinkError::Config)?),
            r.max_backoff,
        )),
        _ => None,
    };
    let mut stats = SinkStats::default();
    let source = resync::Source { client: &client, kafka: &config.kafka, topic: &topic, group: &group, partitions };
    if let Some(plan) = resync::check(&consumer, &mut *target, &source, options.resync)? {
        let done = resync::resync(&source, &mut *target, &spec, plan, &mut avro, shutdown, sink.batch_size, &mut stats)?;
        metrics.resynced(stats.records, stats.dead);
        if !done {
            tracing::info!(
                records = stats.records,
                batches = stats.batches,
                "sink stopped during the resync; it starts over on the next start"
            );
            return Ok(stats);
        }
    }
    let resumed = assign_from_database(&consumer, &mut *target, &group, &topic, partitions)?;
    tracing::info!(topic = %topic, group = %group, table = %spec.table, partitions, resumed, "sink started");
    metrics.base.set_ready(true);
    let mut pending: Vec<RawRecord> = Vec::new();
    let mut first = Instant::now();
    let mut last_metadata = Instant::now();
    let mut last_lag = Instant::now();
    let mut last_progress = (Instant::now(), stats.records);
    let mut sink_batch = SinkBatch { consumer: &consumer, target: &mut *target, spec: &spec, group: &group, metrics: &metrics };
    while !shutdown.load(Ordering::Relaxed) {
        if last_lag.elapsed() >= LAG_INTERVAL {
            last_lag = Instant::now();
            report_lag(&consumer, &topic, partitions, &pending, &metrics);
            if last_progress.0.elapsed() >= PROGRESS_INTERVAL && stats.records > last_progress.1 {
                tracing::info!(records = stats.records, batches = stats.batches, dead = stats.dead, "sink progress");
                last_progress = (Instant::now(), stats.records);
            }
        }
        if last_metadata.elapsed() >= sink.metadata_interval {
            // Partitions added to the topic later are picked up too.
            last_metadata = Instant::now();
            let now = partition_count(&consumer, &topic, Duration::from_secs(30))
                .map_err(|e| SinkError::Metadata(format!("metadata of {topic} (bootstrap servers {bootstrap}): {e}")))?;
            if now > partitions {
                sink_batch.flush(&mut pending, &mut stats)?;
                assign_from_database(&consumer, &mut *sink_batch.target, &group, &topic, now)?;
                tracing::info!(topic = %topic, from = partitions, to = now, "the topic grew; assigned the new partitions");
                partitions = now;
            }
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                // Reachable again: the next outage is reported too.
                consumer.context().unreachable.store(false, Ordering::Relaxed);
                let Some(record) = read_message(&m, &mut avro, shutdown) else {
                    break;
                };
                if pending.is_empty() {
                    first = Instant::now();
                }
                pending.push(record);
            }
            // Broker trouble reaches the context's error callback too,
            // which reports it once.
            Some(Err(e)) => tracing::debug!("sink consumer: {e}"),
            None => {}
        }
        if !pending.is_empty() && (pending.len() >= sink.batch_size || first.elapsed() >= Duration::from_millis(100)) {
            sink_batch.flush(&mut pending, &mut stats)?;
        }
    }
    sink_batch.flush(&mut pending, &mut stats)?;
    tracing::info!(records = stats.records, batches = stats.batches, dead = stats.dead, "sink stopped");
    Ok(stats)
}

/// The record as the sink applies it; `None` when the sink is stopping
/// while the schema registry is unreachable: the record is not the problem,
/// so it is neither applied nor passed, and the next run reads it again.
fn read_message<M: Message>(m: &M, avro: &mut AvroReader, shutdown: &AtomicBool) -> Option<RawRecord> {
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
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the lag gauges are updated.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// How often, at most, a progress line is logged while records arrive.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

fn partition_count<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, timeout: Duration) -> Result<i32, String> {
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| e.to_string())?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("topic {topic} does not exist"))
}

/// The sink consumer's context: an unreachable broker is reported once with
/// the bootstrap servers (librdkafka raises it on every retry), and
/// librdkafka's own connection-failure log lines are kept at DEBUG; the
/// rest as `run` logs it (`run::quiet`: expected conditions at DEBUG).
struct SinkContext {
    bootstrap: String,
    /// Reported since the last record arrived.
    unreachable: AtomicBool,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::run::quiet::log_connection_failures_quietly(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !crate::run::quiet::is_unreachable(&error) {
            crate::run::quiet::error(&error, reason);
        } else if self.unreachable.swap(true, Ordering::Relaxed) {
            tracing::debug!("kafka: {reason}");
        } else {
            tracing::warn!(bootstrap_servers = %self.bootstrap, "cannot reach Kafka ({reason}); retrying");
        }
    }
}

impl ConsumerContext for SinkContext {}

/// Serves `/metrics`, `/healthz` and `/readyz` on its own thread.
fn serve_admin(listen: &str, metrics: Arc<crate::metrics::Metrics>) -> Result<(), SinkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SinkError::Config(format!("sink.admin_listen: {e}")))?;
    let no_state: crate::admin::StateQuery =
        Arc::new(|_: &str| (404, "{\"error\":\"tributary sink has no state to query; see tributary run\"}".to_string()));
    let addr = runtime
        .block_on(crate::admin::serve(listen, metrics, no_state))
        .map_err(|e| SinkError::Config(format!("sink.admin_listen: cannot listen on {listen}: {e}")))?;
    tracing::debug!(%addr, "sink admin port");
    std::thread::Builder::new()
        .name("sink-admin".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| SinkError::Config(format!("sink.admin_listen: {e}")))?;
    Ok(())
}

/// The low and high watermarks librdkafka keeps from its fetch answers (no
/// round trip, unlike `fetch_watermarks`). rust-rdkafka does not wrap this
/// call. The high watermark counts records of transactions still open;
/// transaction markers do not count, since the consumer's position moves
/// past them.
fn cached_watermarks<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Option<(i64, i64)> {
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
fn report_lag<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    pending: &[RawRecord],
    metrics: &SinkMetrics,
) {
    let Ok(positions) = consumer.position() else { return };
    for p in 0..partitions {
        let Some((low, high)) = cached_watermarks(consumer, topic, p) else { continue };
        let position = match positions.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low.max(0),
        };
        let unapplied = pending.iter().filter(|r| r.partition == p).count() as i64;
        metrics.lag(p, (high - position).max(0) + unapplied);
    }
}

/// Offsets live in the database, next to the rows: assigns every partition
/// from there (from the beginning when it has none). Call with nothing
/// pending, so the database offsets are the consumer's positions.
fn assign_from_database<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    target: &mut dyn Target,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<usize, SinkError> {
    let stored = target.offsets(group, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let offset = stored.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(o.next));
        tpl.add_partition_offset(topic, p, offset)
            .map_err(|source| SinkError::Kafka { context: format!("assign {topic} partition {p}"), source })?;
    }
    consumer.assign(&tpl).map_err(|source| SinkError::Kafka { context: format!("assign {topic}"), source })?;
    Ok(stored.len())
}

/// What applying a batch in the main loop needs.
struct SinkBatch<'a, C: ConsumerContext> {
    consumer: &'a BaseConsumer<C>,
    target: &'a mut dyn Target,
    spec: &'a TableSpec,
    group: &'a str,
    metrics: &'a SinkMetrics,
}

impl<C: ConsumerContext> SinkBatch<'_, C> {
    /// Applies the pending records in one transaction, then tells Kafka.
    fn flush(&mut self, pending: &mut Vec<RawRecord>, stats: &mut SinkStats) -> Result<(), SinkError> {
        if pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let batch = build_batch(self.spec, pending);
        let (records, dead) = (pending.len(), batch.dead.len());
        let offsets = batch.offsets.clone();
        apply_batch(self.target, self.spec, self.group, batch, pending, stats)?;
        self.metrics.batch(records, dead, started.elapsed().as_secs_f64());
        commit_to_kafka(self.consumer, &offsets);
        Ok(())
    }
}

/// After the database commit, the same offsets go to the consumer group in
/// Kafka, as information: lag tools (`kafka-consumer-groups --describe`)
/// then see the sink. The sink never reads them; the database stays the
/// source of truth, so a failed commit here only delays what the tools show.
fn commit_to_kafka<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &[OffsetUpdate]) {
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

fn apply_batch(
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

/// SQL text of a value list for `columns`: `$1, $2…` (PostgreSQL) or
/// `?1, ?2…` (SQLite). PostgreSQL gets the exact types (numeric, date,
/// timestamps, uuid) as text and casts them: `$3::text::NUMERIC(12,2)`.
fn placeholders(prefix: char, start: usize, columns: &[&Column]) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| match prefix == '$' && types::bound_as_text(c.ty) {
            true => format!("${}::text::{}", start + i, sql_type(c.ty, true)),
            false => format!("{prefix}{}", start + i),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_columns(spec: &TableSpec) -> Vec<&Column> {
    spec.key.iter().map(|&i| &spec.columns[i]).collect()
}

/// Splits `n` rows into statement sizes: `max` as often as it fits, then
/// powers of two, so a handful of prepared statements serve every batch.
fn chunk_sizes(mut n: usize, max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while n >= max {
        sizes.push(max);
        n -= max;
    }
    let mut bit = max.next_power_of_two();
    while n > 0 {
        if n >= bit {
            sizes.push(bit);
            n -= bit;
        }
        bit /= 2;
    }
    sizes
}

/// Rows per multi-row statement: the largest power of two (at most 512)
/// whose parameters stay within `limit`.
fn rows_per_statement(columns: usize, limit: usize) -> usize {
    let mut rows = 512;
    while rows > 1 && rows * columns.max(1) > limit {
        rows /= 2;
    }
    rows
}

/// `INSERT … ON CONFLICT (key) DO UPDATE …` for `rows` rows; both targets speak it.
fn upsert_sql(spec: &TableSpec, rows: usize, prefix: char) -> String {
    let cols: Vec<String> = spec.columns.iter().map(|c| quote(&c.name)).collect();
    let n = cols.len();
    let all: Vec<&Column> = spec.columns.iter().collect();
    let values: Vec<String> = (0..rows).map(|r| format!("({})", placeholders(prefix, r * n + 1, &all))).collect();
    let keys: Vec<&str> = spec.key.iter().map(|&i| cols[i].as_str()).collect();
    let updates: Vec<String> =
        cols.iter().enumerate().filter(|(i, _)| !spec.key.contains(i)).map(|(_, c)| format!("{c} = excluded.{c}")).collect();
    let action = if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
    format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO {action}",
        quote(&spec.table),
        cols.join(", "),
        values.join(", "),
        keys.join(", ")
    )
}

/// One `DELETE` for `rows` keys: `WHERE (k1, k2) IN ((…), (…))`.
fn delete_sql(spec: &TableSpec, rows: usize, prefix: char) -> String {
    delete_from_sql(&quote(&spec.table), spec, rows, prefix)
}

fn delete_from_sql(table: &str, spec: &TableSpec, rows: usize, prefix: char) -> String {
    let keys = key_columns(spec);
    let names: Vec<String> = keys.iter().map(|c| quote(&c.name)).collect();
    let values: Vec<String> = (0..rows).map(|r| format!("({})", placeholders(prefix, r * keys.len() + 1, &keys))).collect();
    format!("DELETE FROM {table} WHERE ({}) IN ({})", names.join(", "), values.join(", "))
}

fn create_sql(spec: &TableSpec, pg: bool) -> String {
    let cols: Vec<String> = spec.columns.iter().map(|c| format!("{} {}", quote(&c.name), sql_type(c.ty, pg))).collect();
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))", quote(&spec.table), cols.join(", "), keys.join(", "))
}

/// A quoted identifier (names are validated as plain identifiers; quoting
/// lets reserved words such as `user` or `order` be column names).
fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

fn sql_type(ty: ColumnType, pg: bool) -> String {
    types::sql_type(ty, pg)
}

/// The set of keys a resync found live records for. A temporary table: it
/// lives on disk rather than in the sink's memory (a table can have more
/// keys than fit), and it is gone after a crash, which is right since an
/// unfinished resync starts over.
const LIVE_KEYS: &str = "tributary_live_keys";

fn live_keys_ddl(spec: &TableSpec, pg: bool) -> String {
    let cols: Vec<String> =
        spec.key.iter().map(|&i| format!("{} {}", quote(&spec.columns[i].name), sql_type(spec.columns[i].ty, pg))).collect();
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    format!("CREATE TEMP TABLE IF NOT EXISTS {LIVE_KEYS} ({}, PRIMARY KEY ({}))", cols.join(", "), keys.join(", "))
}

fn live_insert_sql(spec: &TableSpec, prefix: char) -> String {
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    format!(
        "INSERT INTO {LIVE_KEYS} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        keys.join(", "),
        placeholders(prefix, 1, &key_columns(spec))
    )
}

fn live_delete_sql(spec: &TableSpec, prefix: char) -> String {
    delete_from_sql(LIVE_KEYS, spec, 1, prefix)
}

/// The next `limit` keys of the table in key order after a key (`after`:
/// the placeholders hold it), each with whether it is in the live-key set.
/// Key order walks the primary key's index, so every step costs `limit`
/// rows however large the table is.
fn sweep_select_sql(spec: &TableSpec, after: bool, limit: usize, prefix: char) -> String {
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    let of = |alias: &str| keys.iter().map(|k| format!("{alias}.{k}")).collect::<Vec<_>>().join(", ");
    let join: Vec<String> = keys.iter().map(|k| format!("l.{k} = t.{k}")).collect();
    let from =
        if after { format!(" WHERE ({}) > ({})", of("t"), placeholders(prefix, 1, &key_columns(spec))) } else { String::new() };
    // PostgreSQL hands the exact types back as text, to bind again as text.
    let selected: Vec<String> = key_columns(spec)
        .iter()
        .zip(&keys)
        .map(|(c, k)| match prefix == '$' && types::bound_as_text(c.ty) {
            true => format!("t.{k}::text"),
            false => format!("t.{k}"),
        })
        .collect();
    format!(
        "SELECT {selected}, l.{first} IS NOT NULL FROM {table} AS t LEFT JOIN {LIVE_KEYS} AS l ON {join}{from} ORDER BY {tcols} LIMIT {limit}",
        selected = selected.join(", "),
        tcols = of("t"),
        first = keys[0],
        table = quote(&spec.table),
        join = join.join(" AND "),
    )
}

const OFFSETS_DDL: &str = "CREATE TABLE IF NOT EXISTS tributary_sink_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL, next_offset BIGINT NOT NULL, last_record_ts BIGINT, PRIMARY KEY (consumer_group, topic, partition_id))";
/// `last_record_ts` came later: databases from before get it in place
/// (NULL: unknown, and the start-up check then reads the record at the
/// stored offset instead).
const OFFSETS_TS_COLUMN: &str = "last_record_ts";
/// A row here means a resync of (group, topic) started and has not finished.
const RESYNC_DDL: &str = "CREATE TABLE IF NOT EXISTS tributary_sink_resync (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, started_at_ms BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic))";
const OFFSET_UPSERT: &str = "INSERT INTO tributary_sink_offsets (consumer_group, topic, partition_id, next_offset, last_record_ts) VALUES ({1}, {2}, {3}, {4}, {5}) ON CONFLICT (consumer_group, topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset, last_record_ts = excluded.last_record_ts WHERE tributary_sink_offsets.next_offset < excluded.next_offset";

/// [`OFFSET_UPSERT`] with `$n` or `?n` placeholders.
fn offset_upsert_sql(prefix: char) -> String {
    (1..=5).fold(OFFSET_UPSERT.to_string(), |sql, i| sql.replace(&format!("{{{i}}}"), &format!("{prefix}{i}")))
}
const DEAD_DDL: &str = "CREATE TABLE IF NOT EXISTS tributary_sink_dead_letters (topic TEXT NOT NULL, partition_id INTEGER NOT NULL, record_offset BIGINT NOT NULL, record_key TEXT, record_value TEXT, error TEXT NOT NULL, PRIMARY KEY (topic, partition_id, record_offset))";

#[cfg(test)]
mod tests;
