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
//! see the ones the cleaner removed meanwhile; `resync` detects that at
//! start-up and re-reads the topic from the beginning.

mod batch;
mod consume;
mod metrics;
mod postgres;
mod resync;
mod sql;
mod sqlite;
mod types;

use crate::config::Config;
pub use crate::config::{EpochUnit, SinkConfig, SinkTableConfig, TargetKind};
pub use batch::{build_batch, build_resync_batch, to_sql, ColumnError, RawRecord, RowError};
pub use consume::{run, run_with, SinkOptions, SinkStats};
pub use types::Misfit;

// The submodules share their crate-private helpers through this module.
use consume::*;
use sql::*;

use std::collections::HashMap;

use rdkafka::error::KafkaError;
use serde_json::Value;

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
    /// The schema registry client could not be built from `[schema_registry]`.
    #[error("sink configuration: {0}")]
    Registry(#[source] crate::avro::registry::ClientError),
    /// The admin port could not listen on `sink.admin_listen`.
    #[error("sink configuration: sink.admin_listen: cannot listen on {listen}: {source}")]
    AdminListen {
        /// The configured address.
        listen: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The admin port's runtime or thread could not start.
    #[error("sink configuration: sink.admin_listen: {0}")]
    AdminStart(#[source] std::io::Error),
    /// The database failed.
    #[error("{target} {url}: {doing}: {source}")]
    Db {
        /// Target kind.
        target: &'static str,
        /// The URL or path (no password).
        url: String,
        /// What was being done ("connect", "apply a batch", ...).
        doing: &'static str,
        /// What the database said.
        #[source]
        source: DbError,
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
    /// A topic's metadata could not be read (the topic is missing, or the
    /// cluster did not answer).
    #[error("kafka: metadata of {topic} (bootstrap servers {bootstrap}): {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        bootstrap: String,
        /// Why.
        #[source]
        source: Box<MetadataError>,
    },
    /// A topic's metadata could not be read within the start-up timeout.
    #[error("kafka: cannot read the metadata of topic {topic} from the bootstrap servers {bootstrap} within {}s: {source}", .waited.as_secs())]
    MetadataTimeout {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        bootstrap: String,
        /// How long it was tried.
        waited: std::time::Duration,
        /// The last failure.
        #[source]
        source: Box<MetadataError>,
    },
}

/// What the database said, by target.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL's error (shown with its causes: `postgres::Error` alone
    /// says only "db error" or "error connecting to server").
    #[error("{}", postgres::describe(.0))]
    Postgres(#[source] ::postgres::Error),
    /// SQLite's error.
    #[error("{0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The SQLite file's lock file could not be opened.
    #[error("cannot open the lock file {}: {source}", path.display())]
    LockFile {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite file's lock file could not be locked.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another sink writes the SQLite file.
    #[error("another tributary sink holds this database (lock file {}); only one sink may write an SQLite file at a time", lock_file.display())]
    SqliteBusy {
        /// The lock file it holds.
        lock_file: std::path::PathBuf,
    },
    /// Another sink of the group writes the topic into this PostgreSQL database.
    #[error("another sink of group {group} is already writing topic {topic} here")]
    PostgresBusy {
        /// The sink's consumer group.
        group: String,
        /// The topic.
        topic: String,
    },
}

/// Why a topic's partition count could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The metadata request failed.
    #[error("{0}")]
    Kafka(#[source] KafkaError),
    /// The cluster does not have the topic (or it has no partitions).
    #[error("topic {topic} does not exist")]
    NoTopic {
        /// The topic.
        topic: String,
    },
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

/// One topic and the table it is materialized into, resolved from `[sink]`.
#[derive(Debug, Clone)]
pub struct SinkTable {
    /// The topic to read.
    pub topic: String,
    /// The table's layout.
    pub spec: TableSpec,
}

impl SinkTableConfig {
    /// Validates the column list and builds the table layout; problems name
    /// their key under `at` (`sink`, `sink.tables[1]`).
    pub fn spec(&self, at: &str) -> Result<TableSpec, String> {
        if !is_identifier(&self.table) {
            return Err(format!("{at}.table: \"{}\" is not a plain SQL identifier", self.table));
        }
        let mut columns = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            let (name, ty) = c.trim().split_once(char::is_whitespace).unwrap_or((c.trim(), ""));
            if ty.trim().is_empty() {
                return Err(format!("{at}.columns[{i}]: \"{c}\" must be \"name type\""));
            }
            if !is_identifier(name) {
                return Err(format!("{at}.columns[{i}]: \"{name}\" is not a plain SQL identifier"));
            }
            let Some(ty) = types::parse_type(ty) else {
                return Err(format!(
                    "{at}.columns[{i}]: unknown type \"{}\" (text, bigint, integer, double precision, boolean, json, numeric(p,s), date, timestamp, timestamptz, uuid, bytea)",
                    ty.trim()
                ));
            };
            if columns.iter().any(|c: &Column| c.name == name) {
                return Err(format!("{at}.columns[{i}]: column \"{name}\" listed twice"));
            }
            let unit = self.time_units.get(name).copied();
            columns.push(Column { name: name.to_string(), ty, unit });
        }
        let mut key = Vec::new();
        for k in &self.key_columns {
            let i = columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| format!("{at}.key_columns: \"{k}\" is not in {at}.columns"))?;
            key.push(i);
        }
        if key.is_empty() {
            return Err(format!("{at}.key_columns: at least one key column is required"));
        }
        let vv = match &self.vv_column {
            Some(v) if columns.iter().any(|c| &c.name == v) => {
                return Err(format!("{at}.vv_column: \"{v}\" is also in {at}.columns"))
            }
            Some(v) if !is_identifier(v) => return Err(format!("{at}.vv_column: \"{v}\" is not a plain SQL identifier")),
            Some(v) => {
                columns.push(Column { name: v.clone(), ty: ColumnType::Text, unit: None });
                Some(columns.len() - 1)
            }
            None => None,
        };
        for name in self.time_units.keys() {
            if !columns.iter().any(|c| &c.name == name && matches!(c.ty, ColumnType::Timestamp | ColumnType::TimestampTz)) {
                return Err(format!("{at}.time_units.{name}: not a timestamp or timestamptz column of {at}.columns"));
            }
        }
        Ok(TableSpec { table: self.table.clone(), columns, key, vv })
    }
}

impl SinkConfig {
    /// Validates `[sink]` without its topics and builds the first table's
    /// layout (every table's, see [`SinkConfig::table_specs`]); the error
    /// names the first problem's key.
    pub fn table_spec(&self) -> Result<TableSpec, SinkError> {
        Ok(self.table_specs()?.swap_remove(0))
    }

    /// Validates `[sink]` without its topics and builds every table's layout.
    pub fn table_specs(&self) -> Result<Vec<TableSpec>, SinkError> {
        let mut problems = Vec::new();
        let specs = self.specs(&mut problems);
        match problems.into_iter().next() {
            Some(p) => Err(SinkError::Config(p)),
            None => Ok(specs.into_iter().map(|(_, s)| s).collect()),
        }
    }

    /// Every problem of `[sink]` in `config`, each naming its key.
    pub fn problems(&self, config: &Config) -> Vec<String> {
        self.resolve(config).err().unwrap_or_default()
    }

    /// The tables to materialize with their topics, or every problem.
    ///
    /// A table's topic is its `topic`, else (single-table form only)
    /// `[output] topic`.
    pub fn resolve(&self, config: &Config) -> Result<Vec<SinkTable>, Vec<String>> {
        let mut problems = Vec::new();
        let specs = self.specs(&mut problems);
        let mut tables: Vec<(String, SinkTable)> = Vec::new();
        for (at, entry) in self.entries() {
            let Some((_, spec)) = specs.iter().find(|(a, _)| *a == at) else { continue };
            let topic = entry.topic.clone().filter(|t| !t.trim().is_empty()).or_else(|| {
                (self.tables.is_empty() && !config.output.topic.trim().is_empty()).then(|| config.output.topic.clone())
            });
            let Some(topic) = topic else {
                problems.push(match self.tables.is_empty() {
                    true => "sink.topic: name the topic to read here or in [output] topic".to_string(),
                    false => format!("{at}.topic: name the topic to read"),
                });
                continue;
            };
            if let Some((first, _)) = tables.iter().find(|(_, t)| t.topic == topic) {
                problems.push(format!("{at}.topic: \"{topic}\" is already materialized by {first}"));
                continue;
            }
            tables.push((at, SinkTable { topic, spec: spec.clone() }));
        }
        match problems.is_empty() {
            true => Ok(tables.into_iter().map(|(_, t)| t).collect()),
            false => Err(problems),
        }
    }

    /// The layouts of the tables that are valid, by key prefix; the
    /// problems of the others and of the shared keys go to `problems`.
    fn specs(&self, problems: &mut Vec<String>) -> Vec<(String, TableSpec)> {
        let misplaced = self.misplaced_keys();
        if !misplaced.is_empty() {
            problems.push(format!(
                "sink.{}: with [[sink.tables]] every table has its own; move {} into the [[sink.tables]] entries",
                misplaced[0],
                misplaced.join(", ")
            ));
        }
        let mut specs: Vec<(String, TableSpec)> = Vec::new();
        for (at, entry) in self.entries() {
            match entry.spec(&at) {
                Ok(spec) => {
                    // SQLite compares names without case, even quoted ones.
                    if let Some((first, _)) = specs.iter().find(|(_, s)| s.table.eq_ignore_ascii_case(&spec.table)) {
                        problems.push(format!("{at}.table: \"{}\" is also {first}.table", spec.table));
                    } else {
                        specs.push((at, spec));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if let Some(a) = &self.admin_listen {
            if a.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!("sink.admin_listen: \"{a}\" is not an address such as \"127.0.0.1:9465\""));
            }
        }
        if self.batch_size == 0 {
            problems.push("sink.batch_size: must be at least 1".into());
        }
        specs
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Opens the configured target.
pub fn open_target(sink: &SinkConfig) -> Result<Box<dyn Target>, SinkError> {
    Ok(match sink.target {
        TargetKind::Sqlite => Box::new(sqlite::Sqlite::open(&sink.url)?),
        TargetKind::Postgres => Box::new(postgres::Postgres::open(&sink.url)?),
    })
}

#[cfg(test)]
mod tests;
