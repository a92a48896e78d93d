//! `[sink]`: the settings of `tributary sink`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[sink]`: the connection and group keys, and either one table (the
/// per-table keys right here) or several (`[[sink.tables]]`, each with its
/// own per-table keys).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub target: TargetKind,
    /// SQLite file path, or a PostgreSQL URL (`postgres://user@host:port/db`).
    pub url: String,
    /// The table to materialize into (created when missing); empty with
    /// `[[sink.tables]]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table: String,
    /// Columns as `"name type"`: text, bigint, integer, double, boolean, json,
    /// numeric(p,s), date, timestamp, timestamptz, uuid, bytea (PostgreSQL's
    /// spellings such as `double precision` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// The primary key: the fields of the canonical key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_columns: Vec<String>,
    /// Optional column that receives the merged version vector (`tributary.vv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vv_column: Option<String>,
    /// The topic to read (default: `[output] topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Names this sink's offsets in the database (default `<group_id>-sink`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Records per batch (one database transaction).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often to look for partitions added to the topic.
    #[serde(default = "default_metadata_interval", with = "super::duration_text")]
    pub metadata_interval: Duration,
    /// The unit of epoch numbers per `timestamp`/`timestamptz` column
    /// (`millis`, `micros`, `nanos`); unnamed columns go by magnitude.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub time_units: BTreeMap<String, EpochUnit>,
    /// The sink's admin HTTP port (`/metrics`, `/healthz`, `/readyz`), e.g.
    /// `127.0.0.1:9465`; off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// `[[sink.tables]]`: several output topics, each into its table, from
    /// one process (one consumer group, one database).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<SinkTableConfig>,
}

/// `[[sink.tables]]`: one output topic and the table it is materialized into.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTableConfig {
    /// The table to materialize into (created when missing).
    pub table: String,
    /// The topic to read (required; `None` only so that a missing one is
    /// reported with the entry's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Columns as `"name type"`, as `[sink] columns`.
    pub columns: Vec<String>,
    /// The primary key: the fields of the canonical key.
    pub key_columns: Vec<String>,
    /// Optional column that receives the merged version vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vv_column: Option<String>,
    /// The unit of epoch numbers per timestamp column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub time_units: BTreeMap<String, EpochUnit>,
}

impl SinkConfig {
    /// The tables to materialize, each with the key prefix its problems are
    /// reported under (`sink` for the single-table form, `sink.tables[i]`).
    /// Per-table keys set in `[sink]` next to `[[sink.tables]]` are a
    /// problem of their own, see [`SinkConfig::misplaced_keys`].
    pub fn entries(&self) -> Vec<(String, SinkTableConfig)> {
        if !self.tables.is_empty() {
            return self.tables.iter().enumerate().map(|(i, t)| (format!("sink.tables[{i}]"), t.clone())).collect();
        }
        vec![(
            "sink".to_string(),
            SinkTableConfig {
                table: self.table.clone(),
                topic: self.topic.clone(),
                columns: self.columns.clone(),
                key_columns: self.key_columns.clone(),
                vv_column: self.vv_column.clone(),
                time_units: self.time_units.clone(),
            },
        )]
    }

    /// The per-table keys set in `[sink]` although `[[sink.tables]]` is
    /// used: they would be silently ignored otherwise.
    pub fn misplaced_keys(&self) -> Vec<&'static str> {
        if self.tables.is_empty() {
            return Vec::new();
        }
        [
            ("table", !self.table.is_empty()),
            ("topic", self.topic.is_some()),
            ("columns", !self.columns.is_empty()),
            ("key_columns", !self.key_columns.is_empty()),
            ("vv_column", self.vv_column.is_some()),
            ("time_units", !self.time_units.is_empty()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

fn default_metadata_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_batch_size() -> usize {
    500
}

/// Sink targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// An SQLite file (embedded).
    #[default]
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The unit of an epoch number in a `timestamp`/`timestamptz` column
/// (`[sink.time_units]`). Without one the magnitude decides, see `sink::types::to_micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpochUnit {
    /// Debezium `io.debezium.time.Timestamp`, `connect.Timestamp`.
    Millis,
    /// Debezium `io.debezium.time.MicroTimestamp`.
    Micros,
    /// Debezium `io.debezium.time.NanoTimestamp`.
    Nanos,
}
