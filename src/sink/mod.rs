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

mod batch;
mod consume;
mod metrics;
mod postgres;
mod resync;
mod sql;
mod sqlite;
mod types;

pub use crate::config::{EpochUnit, SinkConfig, TargetKind};
pub use batch::{build_batch, build_resync_batch, to_sql, RawRecord};
pub use consume::{run, run_with, SinkOptions, SinkStats};

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

/// Opens the configured target.
pub fn open_target(sink: &SinkConfig) -> Result<Box<dyn Target>, SinkError> {
    Ok(match sink.target {
        TargetKind::Sqlite => Box::new(sqlite::Sqlite::open(&sink.url)?),
        TargetKind::Postgres => Box::new(postgres::Postgres::open(&sink.url)?),
    })
}

#[cfg(test)]
mod tests;
