//! The sections of the configuration file and their defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::merge::{ColumnRule, DeletePolicy, Policy};

use super::serde_text::{duration_text, duration_text_opt, serialize_redacted, serialize_secret};

/// `[admin]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP port (`/metrics`, `/healthz`, `/readyz`, `/state/{key}`).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Serve it at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The bearer token that `/state/{key}` and the mutating endpoints
    /// (pause, resume) require, usually set through the environment
    /// (`TRIBUTARY_ADMIN__TOKEN`). Never logged.
    #[serde(default, serialize_with = "serialize_secret", skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding that token (a mounted Kubernetes secret), read at
    /// start-up; surrounding whitespace is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Sources paused from start-up, until resumed through the admin port:
    /// pauses made through the port live in memory, so a restarted or an
    /// added instance pauses only these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_paused: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), enabled: true, token: None, token_file: None, start_paused: vec![] }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("enabled", &self.enabled)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("start_paused", &self.start_paused)
            .finish()
    }
}

impl AdminConfig {
    /// The configured token, read from `token_file` when that is set; `None`
    /// when neither is set (the protected endpoints are then off). The
    /// error names the key and, for the file, the path and why.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        let text = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => return Err("admin.token and admin.token_file: set one, not both".into()),
            (Some(token), None) => token.clone(),
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|e| format!("admin.token_file: cannot read {}: {e}", path.display()))?
            }
            (None, None) => return Ok(None),
        };
        let key = if self.token.is_some() { "admin.token" } else { "admin.token_file" };
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{key}: the token is empty"));
        }
        // What an Authorization header can carry (RFC 6750 b64token).
        if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(*c))) {
            return Err(format!(
                "{key}: the token holds {c:?}; use letters, digits and - . _ ~ + / = only (e.g. `openssl rand -hex 32`)"
            ));
        }
        if token.len() < 16 {
            return Err(format!(
                "{key}: the token has {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        Ok(Some(token.to_string()))
    }
}

pub(super) fn default_admin_listen() -> String {
    "0.0.0.0:9464".into()
}

pub(super) fn default_true() -> bool {
    true
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Write a record to `<group_id>-conflicts` for every accepted event that
    /// leaves more than one version.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Consumer group id; also names the changelog, DLQ and audit topics.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// This instance's stable id: static group membership
    /// (`group.instance.id`) and the transactional id. Default: derived from
    /// the host name and the state directory, with dynamic membership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Replication factor of the topics Tributary creates (default: the broker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Passed to librdkafka unchanged (SASL, SSL, tuning).
    #[serde(default, serialize_with = "serialize_redacted")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: default_bootstrap(),
            group_id: default_group_id(),
            instance_id: None,
            replication_factor: None,
            properties: BTreeMap::new(),
        }
    }
}

pub(super) fn default_bootstrap() -> String {
    "localhost:9092".into()
}

pub(super) fn default_group_id() -> String {
    "tributary".into()
}

/// `[output]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The compacted output topic.
    pub topic: String,
    /// Value encoding of the merged records.
    #[serde(default)]
    pub format: OutputFormat,
    /// Carried mode: the output column that receives the merged clock.
    /// Defaults to the sources' common `clock_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_field: Option<String>,
    /// How long the output topic keeps tombstones for readers (its
    /// `delete.retention.ms`, set when Tributary creates the topic). Default:
    /// `[merge] tombstone_retention`, and at least a day. A sink that was
    /// down longer than this resynchronises (see `tributary sink`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "duration_text_opt")]
    pub delete_retention: Option<Duration>,
}

/// Output value encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// A flat JSON object per record, null for tombstones.
    #[default]
    Json,
    /// Confluent-framed Avro, the schema derived from the sources' schemas
    /// and registered under `<topic>-value` (key: `<topic>-key`).
    Avro,
}

/// `[schema_registry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `https://registry:8081`; several, comma-separated, are
    /// tried in order.
    pub url: String,
    /// Basic authentication user (Confluent Cloud: the API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_user: Option<String>,
    /// Basic authentication password (Confluent Cloud: the API secret).
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "serialize_secret")]
    pub basic_auth_password: Option<String>,
    /// PEM file of the CA certificates that sign the registry's TLS certificate
    /// (default: the system's trust store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_location: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `key_location`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_location: Option<PathBuf>,
    /// PEM PKCS#8 private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_location: Option<PathBuf>,
    /// Timeout of one HTTP request (connect and read).
    #[serde(default = "default_registry_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Longest wait between retries while the registry is unavailable
    /// (processing pauses; nothing is dead-lettered for it).
    #[serde(default = "default_registry_backoff", with = "duration_text")]
    pub max_backoff: Duration,
}

pub(super) fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

pub(super) fn default_registry_backoff() -> Duration {
    Duration::from_secs(30)
}

impl SchemaRegistryConfig {
    /// Settings for `url` with the defaults for everything else.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            basic_auth_user: None,
            basic_auth_password: None,
            ca_location: None,
            certificate_location: None,
            key_location: None,
            timeout: default_registry_timeout(),
            max_backoff: default_registry_backoff(),
        }
    }

    /// The configured URLs, in order.
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect()
    }
}

/// `[merge]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// Resolution policy.
    #[serde(default)]
    pub policy: Policy,
    /// Delete policy.
    #[serde(default)]
    pub deletes: DeletePolicy,
    /// How long deleted keys keep their tombstone versions (like gc_grace).
    #[serde(default = "default_retention", with = "duration_text")]
    pub tombstone_retention: Duration,
    /// `[merge.columns]`: per-column rules under `field-lww`, e.g.
    /// `email = { rule = "owner", source = "crm" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, ColumnRule>,
}

impl Default for MergeConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            deletes: DeletePolicy::default(),
            tombstone_retention: default_retention(),
            columns: BTreeMap::new(),
        }
    }
}

impl MergeConfig {
    /// The checks that need no sources, for the section at `at` (`merge`,
    /// `tables[1].merge`).
    pub(super) fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.tombstone_retention.is_zero() {
            problems.push(format!(
                "{at}.tombstone_retention: must be greater than zero (deleted keys must hold off late concurrent updates for a while)"
            ));
        }
        if !self.columns.is_empty() && self.policy != Policy::FieldLww {
            problems
                .push(format!("{at}.columns: column rules need policy = \"field-lww\" (policy is \"{}\")", self.policy.as_str()));
        }
    }

    /// Checks `[merge.columns]` against the source names and the clock
    /// columns of the table that uses the section at `at`; `label` names
    /// that table when the section is shared (` (table "orders")`).
    pub(super) fn validate_columns(&self, at: &str, label: &str, sources: &[SourceConfig], problems: &mut Vec<String>) {
        for (column, rule) in &self.columns {
            if sources.iter().any(|s| s.clock_field.as_deref() == Some(column.as_str())) {
                problems.push(format!("{at}.columns.{column}{label}: \"{column}\" is a clock column, which takes no rule"));
            }
            if let ColumnRule::Owner { source } = rule {
                if !sources.iter().any(|s| s.name == *source) {
                    let known: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                    problems.push(format!(
                        "{at}.columns.{column}.source{label}: \"{source}\" is not a configured source ({})",
                        known.join(", ")
                    ));
                }
            }
        }
    }
}

pub(super) fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// `[runtime]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `exactly-once` (transactions) or `at-least-once`.
    #[serde(default)]
    pub processing: Processing,
    /// How often the open transaction is committed.
    #[serde(default = "default_commit_interval", with = "duration_text")]
    pub commit_interval: Duration,
    /// Where the local state store lives.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Bytes of committed states kept decoded in memory (all tasks of the
    /// process together), so hot keys skip the disk read and the decode.
    #[serde(default = "default_state_cache_bytes")]
    pub state_cache_bytes: usize,
    /// A cycle (one transaction) ends once the states it changed reach this
    /// many bytes, even before `commit_interval`: it bounds the memory held
    /// for the open transaction and the size of the local write at commit.
    #[serde(default = "default_max_cycle_bytes")]
    pub max_cycle_bytes: usize,
    /// Warm copies kept of every task, each by another member of the group
    /// than its owner (tailing the task's changelog into its local store),
    /// so that a takeover restores only the tail; 0: none.
    #[serde(default)]
    pub standby_replicas: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            processing: Processing::default(),
            commit_interval: default_commit_interval(),
            state_dir: default_state_dir(),
            state_cache_bytes: default_state_cache_bytes(),
            max_cycle_bytes: default_max_cycle_bytes(),
            standby_replicas: 0,
        }
    }
}

pub(super) fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}

/// A few thousand decoded `lww` states (~1.6 kB each in the end-to-end
/// bench). 64 MiB, the default before 2026-12-02, raised a 50 000-key run's
/// peak by ~30 MB; 16 MiB, the default until the cache let go of its oldest
/// states first (2026-12-03), served fewer reads than 8 MiB does now, at a
/// ~9 MB higher peak (doc/benchmarks.md, "The decoded-state cache lets go
/// of the oldest states first").
pub(super) fn default_state_cache_bytes() -> usize {
    8 << 20
}

/// Encoded bytes; the open cycle holds its states decoded, several times
/// that, until the commit. With 100 ms cycles and ~1 kB states the interval
/// ends a cycle first below about 80 k events/s.
pub(super) fn default_max_cycle_bytes() -> usize {
    8 << 20
}

pub(super) fn default_state_dir() -> PathBuf {
    PathBuf::from("tributary-state")
}

/// Processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Processing {
    /// Kafka transactions: output, changelog and offsets commit together.
    #[default]
    ExactlyOnce,
    /// Idempotent producer, offsets committed after delivery.
    AtLeastOnce,
}

/// `[[sources]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name: the version-vector entry and the `tributary.winner` value.
    pub name: String,
    /// The Kafka topic the source publishes to.
    pub topic: String,
    /// Input format.
    #[serde(default)]
    pub format: SourceFormat,
    /// Tie-break and `source-priority` rank (larger wins).
    #[serde(default)]
    pub priority: i64,
    /// Derived clocks: dotted path of the sequence field (default: Kafka offset + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    /// Carried clocks: the column that holds the row's version vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_field: Option<String>,
    /// Build the canonical key from these row fields instead of the record key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fields: Option<Vec<String>>,
    /// `json` format: dotted path of the commit-time field (ms); default: Kafka timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_field: Option<String>,
    /// `json` format: the field that marks a rewritten delete (`"true"`).
    #[serde(default = "default_deleted_field")]
    pub deleted_field: String,
    /// `[sources.transform]`: the mapping of this source's rows to the
    /// target shape, applied before `key_fields` and `clock_field` are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<crate::transform::TransformSpec>,
    /// `[sources.where]`: the records to keep, tested on the source row.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<crate::transform::FilterSpec>,
    /// When this source's records detour through a repartition topic
    /// (`<group_id>-<table>-<source>-repartition`) before they are merged.
    #[serde(default, skip_serializing_if = "Repartition::is_auto")]
    pub repartition: Repartition,
}

/// `repartition` of a source: when its records are re-keyed by the
/// canonical key into the table's partition count before the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Repartition {
    /// When the source topic's partition count differs from the table's.
    #[default]
    Auto,
    /// Always, also when the counts agree: for records keyed by something
    /// other than the canonical key (e.g. `key_fields` picks other fields).
    Always,
    /// Never: a partition-count mismatch stops start-up.
    Never,
}

impl Repartition {
    /// The default, which the resolved configuration leaves out.
    pub fn is_auto(&self) -> bool {
        *self == Repartition::Auto
    }

    /// The configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Repartition::Auto => "auto",
            Repartition::Always => "always",
            Repartition::Never => "never",
        }
    }
}

pub(super) fn default_deleted_field() -> String {
    "__deleted".into()
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// Debezium JSON envelope, with or without the `schema`/`payload` wrapper.
    #[default]
    DebeziumJson,
    /// A flat row (e.g. after `ExtractNewRecordState`); deletes as tombstones
    /// or a `__deleted: "true"` field.
    Json,
    /// Debezium's envelope in Avro, Confluent wire format (magic byte, schema
    /// id, body) for key and value; schemas from `[schema_registry]`.
    DebeziumAvro,
}
