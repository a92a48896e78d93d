//! `[sink]`: the settings of `tributary sink`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[sink]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub target: TargetKind,
    /// SQLite file path, or a PostgreSQL URL (`postgres://user@host:port/db`).
    pub url: String,
    /// The table to materialize into (created when missing).
    pub table: String,
    /// Columns as `"name type"`: text, bigint, integer, double, boolean, json,
    /// numeric(p,s), date, timestamp, timestamptz, uuid, bytea (PostgreSQL's
    /// spellings such as `double precision` too).
    pub columns: Vec<String>,
    /// The primary key: the fields of the canonical key.
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
