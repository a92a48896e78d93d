//! Configuration: the TOML file of design §5, environment overrides, and
//! validation that names the offending key.
//!
//! Loading goes file → TOML table → environment overrides → typed structs
//! (`deny_unknown_fields` everywhere) → semantic checks. Every problem found
//! by the checks is reported at once, each with the key it is about.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::merge::{ColumnRule, DeletePolicy, MergeSettings, Policy};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "TRIBUTARY_";

/// A configuration problem. Each variant names where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or a key/type problem found while parsing the file.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or other origin) of the text.
        origin: String,
        /// The parser's message, with line and column where it has them.
        message: String,
    },
    /// An environment override is malformed or names no known key.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// Semantic checks failed; every problem is listed with its key.
    #[error("{origin}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        origin: String,
        /// One line per problem, each starting with the key.
        problems: Vec<String>,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and consumer group.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The merged output topic (`tributary sink` may name its topic in `[sink]` instead).
    #[serde(default)]
    pub output: OutputConfig,
    /// Merge policy.
    #[serde(default)]
    pub merge: MergeConfig,
    /// Processing guarantees and local state (used by `tributary run`).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The admin HTTP port (`tributary run`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The conflict audit topic (`tributary run`).
    #[serde(default)]
    pub audit: AuditConfig,
    /// The table sink (`tributary sink`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<crate::sink::SinkConfig>,
    /// The Confluent Schema Registry (Avro input or output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// The source topics, one per source database.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP port (`/metrics`, `/healthz`, `/readyz`, `/state/{key}`).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Serve it at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), enabled: true }
    }
}

fn default_admin_listen() -> String {
    "0.0.0.0:9464".into()
}

fn default_true() -> bool {
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

fn default_bootstrap() -> String {
    "localhost:9092".into()
}

fn default_group_id() -> String {
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

fn default_registry_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_registry_backoff() -> Duration {
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

fn serialize_secret<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    value.as_ref().map(|_| "<redacted>").serialize(s)
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
    /// Checks `[merge.columns]` against the policy, the source names and the
    /// clock columns.
    fn validate_columns(&self, sources: &[SourceConfig], problems: &mut Vec<String>) {
        if !self.columns.is_empty() && self.policy != Policy::FieldLww {
            problems.push(format!(
                "merge.columns: column rules need policy = \"field-lww\" (policy is \"{}\")",
                self.policy.as_str()
            ));
        }
        for (column, rule) in &self.columns {
            if sources.iter().any(|s| s.clock_field.as_deref() == Some(column.as_str())) {
                problems.push(format!("merge.columns.{column}: \"{column}\" is a clock column, which takes no rule"));
            }
            if let ColumnRule::Owner { source } = rule {
                if !sources.iter().any(|s| s.name == *source) {
                    let known: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                    problems.push(format!(
                        "merge.columns.{column}.source: \"{source}\" is not a configured source ({})",
                        known.join(", ")
                    ));
                }
            }
        }
    }
}

fn default_retention() -> Duration {
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
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            processing: Processing::default(),
            commit_interval: default_commit_interval(),
            state_dir: default_state_dir(),
            state_cache_bytes: default_state_cache_bytes(),
            max_cycle_bytes: default_max_cycle_bytes(),
        }
    }
}

fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_state_cache_bytes() -> usize {
    64 << 20
}

fn default_max_cycle_bytes() -> usize {
    32 << 20
}

fn default_state_dir() -> PathBuf {
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
}

fn default_deleted_field() -> String {
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

impl Config {
    /// Loads a file and applies `TRIBUTARY_…` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses configuration text, applies overrides from `env` (name, value
    /// pairs; only `TRIBUTARY_<SECTION>__<KEY>` names are considered) and
    /// validates the result.
    pub fn parse(text: &str, origin: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let config = Self::parse_unvalidated(text, origin, env)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// [`Config::load`] for `tributary sink`: `[[sources]]` and the
    /// processor's sections are not needed, only `[kafka]`, `[sink]` and a
    /// topic (`[sink] topic` or `[output] topic`).
    pub fn load_for_sink(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse_for_sink(&text, &path.display().to_string(), std::env::vars())
    }

    /// [`Config::parse`] for `tributary sink` (see [`Config::load_for_sink`]).
    pub fn parse_for_sink(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = Self::parse_unvalidated(text, origin, env)?;
        config.validate_for_sink(origin)?;
        Ok(config)
    }

    fn parse_unvalidated(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // First the file alone, so key and type errors point at a line.
        let parsed: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.into(), message: e.to_string() })?;
        let overrides: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__")).collect();
        let config = if overrides.is_empty() {
            parsed
        } else {
            let mut table: toml::Table = toml::from_str(text).expect("parsed above");
            let mut set = Vec::new();
            for (var, value) in &overrides {
                set.push((var, apply_override(&mut table, var, value)?));
            }
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                // The value came from the environment: name the variable.
                match set.iter().find(|(_, key)| path == *key || path.starts_with(&format!("{key}."))) {
                    Some((var, _)) => ConfigError::Env { var: var.to_string(), message: format!("{path}: {}", e.inner()) },
                    None => ConfigError::Parse {
                        origin: format!("{origin} with environment overrides"),
                        message: format!("{path}: {}", e.inner()),
                    },
                }
            })?
        };
        Ok(config)
    }

    /// The checks `tributary sink` needs: the Kafka connection, the topic and `[sink]`.
    pub fn validate_for_sink(&self, origin: &str) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.kafka.group_id.trim().is_empty() {
            problems.push("kafka.group_id: must not be empty".into());
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            problems.push("kafka.bootstrap_servers: must not be empty".into());
        }
        for name in ["isolation.level", "enable.auto.commit", "group.id"] {
            if self.kafka.properties.contains_key(name) {
                problems.push(format!("kafka.properties.\"{name}\": Tributary sets it"));
            }
        }
        match &self.sink {
            None => problems.push("sink: the configuration has no [sink] section".into()),
            Some(sink) => {
                if let Err(e) = sink.table_spec() {
                    problems.push(e.to_string().trim_start_matches("sink configuration: ").to_string());
                }
                if sink.topic.as_deref().unwrap_or(&self.output.topic).trim().is_empty() {
                    problems.push("sink.topic: name the topic to read here or in [output] topic".into());
                }
            }
        }
        if self.output.format == OutputFormat::Avro && self.schema_registry.is_none() {
            problems.push("schema_registry: output.format = \"avro\" needs [schema_registry] to decode".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { origin: origin.into(), problems })
        }
    }

    /// Semantic checks. Reports every problem, each naming its key.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.sources.is_empty() {
            problems.push("sources: at least one [[sources]] entry is required".to_string());
        }
        if self.kafka.group_id.trim().is_empty() {
            problems.push("kafka.group_id: must not be empty".into());
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            problems.push("kafka.bootstrap_servers: must not be empty".into());
        }
        for (name, why) in [
            ("isolation.level", "the processor and the sink must read committed data only"),
            ("partition.assignment.strategy", "co-partitioning needs the range assignor"),
            ("enable.auto.commit", "offsets are committed with the output"),
            ("transactional.id", "derived from group_id and instance_id"),
            ("group.id", "set kafka.group_id"),
            ("group.instance.id", "set kafka.instance_id"),
        ] {
            if self.kafka.properties.contains_key(name) {
                problems.push(format!("kafka.properties.\"{name}\": Tributary sets it ({why})"));
            }
        }
        if let Some(id) = &self.kafka.instance_id {
            if id.trim().is_empty() {
                problems.push("kafka.instance_id: must not be empty when set".into());
            }
        }
        if matches!(self.kafka.replication_factor, Some(n) if n < 1) {
            problems.push("kafka.replication_factor: must be at least 1".into());
        }
        if self.output.topic.trim().is_empty() {
            problems.push("output.topic: must not be empty".into());
        }
        if self.admin.enabled && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("admin.listen: \"{}\" is not an address such as \"0.0.0.0:9464\"", self.admin.listen));
        }
        if self.merge.tombstone_retention.is_zero() {
            problems.push(
                "merge.tombstone_retention: must be greater than zero (deleted keys must hold off late concurrent updates for a while)"
                    .into(),
            );
        }
        if self.runtime.commit_interval.is_zero() {
            problems.push("runtime.commit_interval: must be greater than zero".into());
        }
        if self.runtime.max_cycle_bytes < 1 << 16 {
            problems.push(format!("runtime.max_cycle_bytes: {} is too small (at least 65536)", self.runtime.max_cycle_bytes));
        }
        if self.output.delete_retention.is_some_and(|d| d.is_zero()) {
            problems.push("output.delete_retention: must be greater than zero".into());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut topics: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            if s.name.trim().is_empty() {
                problems.push(format!("{at}.name: must not be empty"));
            } else if let Some(j) = names.insert(&s.name, i) {
                problems.push(format!("{at}.name: duplicate source name \"{}\" (also sources[{j}])", s.name));
            }
            if s.topic.trim().is_empty() {
                problems.push(format!("{at}.topic: must not be empty"));
            } else if let Some(j) = topics.insert(&s.topic, i) {
                problems.push(format!("{at}.topic: topic \"{}\" is already read by sources[{j}]", s.topic));
            }
            if s.topic == self.output.topic {
                problems.push(format!("{at}.topic: \"{}\" is also the output topic", s.topic));
            }
            if let Some(seq) = &s.sequence {
                if seq.split('.').any(str::is_empty) {
                    problems.push(format!("{at}.sequence: \"{seq}\" is not a dotted path such as \"source.lsn\""));
                }
                if s.format == SourceFormat::Json {
                    problems.push(format!(
                        "{at}.sequence: not supported with format = \"json\": a delete (tombstone) carries no sequence; use the Kafka offset (the default) or clock_field"
                    ));
                } else if !seq.starts_with("source.") {
                    problems.push(format!(
                        "{at}.sequence: \"{seq}\" must be a field of the Debezium `source` block, e.g. \"source.lsn\" (row fields are absent from deletes)"
                    ));
                }
                if s.clock_field.is_some() {
                    problems.push(format!(
                        "{at}.sequence: set together with clock_field; a source's clock is either derived or carried"
                    ));
                }
            }
            if let Some(f) = &s.clock_field {
                if f.is_empty() {
                    problems.push(format!("{at}.clock_field: must not be empty"));
                }
            }
            if let Some(k) = &s.key_fields {
                if k.is_empty() || k.iter().any(String::is_empty) {
                    problems.push(format!("{at}.key_fields: must list at least one non-empty field name"));
                }
                if k.iter().collect::<HashSet<_>>().len() != k.len() {
                    problems.push(format!("{at}.key_fields: lists a field twice"));
                }
            }
            if s.ts_field.is_some() && s.format != SourceFormat::Json {
                problems.push(format!("{at}.ts_field: only applies to format = \"json\" (Debezium events carry source.ts_ms)"));
            }
        }
        let carried: Vec<&str> = self.sources.iter().filter_map(|s| s.clock_field.as_deref()).collect();
        if self.output.clock_field.is_none() && carried.iter().collect::<HashSet<_>>().len() > 1 {
            problems.push(format!(
                "output.clock_field: sources carry clocks in different columns ({}); name the output column",
                carried.join(", ")
            ));
        }
        self.merge.validate_columns(&self.sources, &mut problems);
        self.validate_registry(&mut problems);
        if let Some(sink) = &self.sink {
            if let Err(e) = sink.table_spec() {
                problems.push(e.to_string().trim_start_matches("sink configuration: ").to_string());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { origin: origin.into(), problems })
        }
    }

    /// True when some source or the output is Avro (a registry is needed).
    pub fn uses_avro(&self) -> bool {
        self.output.format == OutputFormat::Avro || self.sources.iter().any(|s| s.format == SourceFormat::DebeziumAvro)
    }

    fn validate_registry(&self, problems: &mut Vec<String>) {
        let Some(registry) = &self.schema_registry else {
            if self.uses_avro() {
                let who: Vec<String> = self
                    .sources
                    .iter()
                    .filter(|s| s.format == SourceFormat::DebeziumAvro)
                    .map(|s| format!("sources.{}.format", s.name))
                    .chain((self.output.format == OutputFormat::Avro).then(|| "output.format".to_string()))
                    .collect();
                problems.push(format!(
                    "schema_registry: required by {} (Avro); add [schema_registry] url = \"http://…\"",
                    who.join(", ")
                ));
            }
            return;
        };
        if self.output.format == OutputFormat::Avro && !self.sources.iter().any(|s| s.format == SourceFormat::DebeziumAvro) {
            problems.push(
                "output.format: \"avro\" derives the output schema from the sources' Avro schemas; at least one source needs format = \"debezium-avro\"".into(),
            );
        }
        let urls = registry.urls();
        if urls.is_empty() {
            problems.push("schema_registry.url: must not be empty".into());
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                problems.push(format!("schema_registry.url: \"{u}\" must start with http:// or https://"));
            }
        }
        if registry.basic_auth_password.is_some() && registry.basic_auth_user.is_none() {
            problems.push("schema_registry.basic_auth_password: set without basic_auth_user".into());
        }
        if registry.certificate_location.is_some() != registry.key_location.is_some() {
            problems.push("schema_registry.certificate_location/key_location: mutual TLS needs both".into());
        }
        for (key, path) in [
            ("ca_location", &registry.ca_location),
            ("certificate_location", &registry.certificate_location),
            ("key_location", &registry.key_location),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    problems.push(format!("schema_registry.{key}: {} is not a readable file", p.display()));
                }
            }
        }
        if registry.timeout.is_zero() {
            problems.push("schema_registry.timeout: must be positive".into());
        }
    }

    /// The source configured for `topic`.
    pub fn source_for_topic(&self, topic: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.topic == topic)
    }

    /// The output column that receives the merged clock in carried mode.
    pub fn output_clock_field(&self) -> Option<String> {
        self.output.clock_field.clone().or_else(|| self.sources.iter().find_map(|s| s.clock_field.clone()))
    }

    /// The merge engine's settings.
    pub fn merge_settings(&self) -> MergeSettings {
        MergeSettings {
            policy: self.merge.policy,
            deletes: self.merge.deletes,
            priorities: self.sources.iter().map(|s| (s.name.clone(), s.priority)).collect(),
            clock_field: self.output_clock_field(),
            tombstone_retention_ms: i64::try_from(self.merge.tombstone_retention.as_millis()).unwrap_or(i64::MAX),
            columns: self.merge.columns.clone(),
        }
    }

    /// The output topic's `delete.retention.ms`: configured, or
    /// `tombstone_retention` but at least a day (Kafka's default).
    pub fn output_delete_retention(&self) -> Duration {
        self.output.delete_retention.unwrap_or_else(|| self.merge.tombstone_retention.max(Duration::from_secs(86_400)))
    }

    /// The resolved configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("the configuration serializes");
        // `deleted_field` means something for format = "json" only.
        if let Some(sources) = value.get_mut("sources").and_then(toml::Value::as_array_mut) {
            for source in sources.iter_mut().filter_map(toml::Value::as_table_mut) {
                if source.get("format").and_then(toml::Value::as_str) != Some("json") {
                    source.remove("deleted_field");
                }
            }
        }
        toml::to_string_pretty(&value).expect("the configuration serializes")
    }
}

/// Applies one `TRIBUTARY_<SECTION>__<KEY>` override to the parsed table.
///
/// `TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS`, `TRIBUTARY_MERGE__POLICY`,
/// `TRIBUTARY_KAFKA__PROPERTIES__SASL_PASSWORD` (→ `sasl.password`),
/// `TRIBUTARY_SOURCES__EU__PRIORITY` (source by name; `_` matches `-`).
/// Returns the key path it set (`merge.deletes`, `sources[0].priority`).
fn apply_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Env { var: var.into(), message };
    let parts: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
    let value = parse_env_value(raw);
    match parts.as_slice() {
        [section, props, name] if section == "kafka" && props == "properties" => {
            let kafka = table_mut(table, "kafka").map_err(&err)?;
            let properties = table_mut(kafka, "properties").map_err(&err)?;
            properties.insert(name.replace('_', "."), toml::Value::String(raw.to_string()));
            Ok(format!("kafka.properties.{}", name.replace('_', ".")))
        }
        [section, name, key] if section == "sources" => {
            let sources = table
                .get_mut("sources")
                .and_then(toml::Value::as_array_mut)
                .ok_or_else(|| err("the file has no [[sources]]".into()))?;
            let wanted = name.replace('_', "-");
            let (index, source) = sources
                .iter_mut()
                .filter_map(toml::Value::as_table_mut)
                .enumerate()
                .find(|(_, t)| {
                    t.get("name")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|n| n.to_ascii_lowercase().replace('_', "-") == wanted)
                })
                .ok_or_else(|| err(format!("no source named \"{name}\" in the file")))?;
            source.insert(key.clone(), value);
            Ok(format!("sources[{index}].{key}"))
        }
        [section, key] if section != "sources" => {
            table_mut(table, section).map_err(&err)?.insert(key.clone(), value);
            Ok(format!("{section}.{key}"))
        }
        _ => Err(err(
            "expected TRIBUTARY_<SECTION>__<KEY>, TRIBUTARY_KAFKA__PROPERTIES__<NAME> or TRIBUTARY_SOURCES__<NAME>__<KEY>".into(),
        )),
    }
}

fn table_mut<'a>(table: &'a mut toml::Table, key: &str) -> Result<&'a mut toml::Table, String> {
    table
        .entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("`{key}` is not a table"))
}

/// An override value: a TOML literal when it parses as one (numbers,
/// booleans, arrays, quoted strings), otherwise the raw text as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Holder {
        v: toml::Value,
    }
    match toml::from_str::<Holder>(&format!("v = {raw}")) {
        Ok(h) if !matches!(h.v, toml::Value::Datetime(_)) => h.v,
        _ => toml::Value::String(raw.to_string()),
    }
}

/// True for librdkafka property names that hold secrets.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "key.pem", "private"].iter().any(|s| n.contains(s))
}

fn serialize_redacted<S: Serializer>(props: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&str, &str> =
        props.iter().map(|(k, v)| (k.as_str(), if is_secret_property(k) { "<redacted>" } else { v.as_str() })).collect();
    redacted.serialize(s)
}

/// Durations written as text: `"100ms"`, `"30s"`, `"7d"`.
pub(crate) mod duration_text {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"100ms\", \"30s\" or \"7d\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v).map_err(|e| E::custom(format!("invalid duration \"{v}\": {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// [`duration_text`] for an optional duration.
pub(crate) mod duration_text_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration_text::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "customers-merge"
[kafka.properties]
"security.protocol" = "sasl_ssl"
"sasl.password" = "hunter2"

[output]
topic = "customers.merged"

[merge]
policy = "field-lww"
deletes = "delete-wins"
tombstone_retention = "2d"

[[sources]]
name = "eu"
topic = "eu.public.customers"
priority = 2

[[sources]]
name = "us-east"
topic = "us.public.customers"
sequence = "source.lsn"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn parses_the_design_sketch() {
        let c = parse(BASE, &[]).unwrap();
        assert_eq!(c.merge.policy, Policy::FieldLww);
        assert_eq!(c.merge.deletes, DeletePolicy::DeleteWins);
        assert_eq!(c.merge.tombstone_retention, Duration::from_secs(2 * 86400));
        assert_eq!(c.runtime.commit_interval, Duration::from_millis(100));
        assert_eq!(c.sources[1].sequence.as_deref(), Some("source.lsn"));
        assert_eq!(c.merge_settings().priorities["eu"], 2);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name_and_line() {
        let text = BASE.replace("priority = 2", "prority = 2");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("prority") && e.contains("line 20"), "{e}");
        let e = parse(&format!("{BASE}\n[bogus]\nx = 1\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_policy_and_bad_duration_are_named() {
        let e = parse(&BASE.replace("\"field-lww\"", "\"newest\""), &[]).unwrap_err().to_string();
        assert!(e.contains("newest") && e.contains("source-priority"), "{e}");
        let e = parse(&BASE.replace("\"2d\"", "\"two days\""), &[]).unwrap_err().to_string();
        assert!(e.contains("invalid duration \"two days\""), "{e}");
    }

    #[test]
    fn column_rules_parse_and_bad_ones_are_named() {
        let rules = "tombstone_retention = \"2d\"\n[merge.columns]\nemail = { rule = \"owner\", source = \"eu\" }\nlast_login = { rule = \"max\" }\nfirst = { rule = \"min\" }\n";
        let c = parse(&BASE.replace("tombstone_retention = \"2d\"\n", rules), &[]).unwrap();
        assert_eq!(c.merge.columns["email"], ColumnRule::Owner { source: "eu".into() });
        assert_eq!(c.merge_settings().columns["last_login"], ColumnRule::Max);
        assert!(c.to_redacted_toml().contains("[merge.columns.email]"), "{}", c.to_redacted_toml());
        let bad = |from: &str, to: &str| parse(&BASE.replace("tombstone_retention = \"2d\"\n", &rules.replace(from, to)), &[]);
        let e = bad("source = \"eu\"", "source = \"crm\"").unwrap_err().to_string();
        assert!(e.contains("merge.columns.email.source: \"crm\" is not a configured source (eu, us-east)"), "{e}");
        let e = bad("\"max\"", "\"maximum\"").unwrap_err().to_string();
        assert!(e.contains("last_login = { rule = \"maximum\" }") && e.contains("expected one of `owner`"), "{e}");
        let e = bad("rule = \"max\"", "rule = \"max\", source = \"eu\"").unwrap_err().to_string();
        assert!(e.contains("last_login = ") && e.contains("`source` applies to rule \"owner\" only"), "{e}");
        let e = bad("rule = \"owner\", source = \"eu\"", "rule = \"owner\"").unwrap_err().to_string();
        assert!(e.contains("email = ") && e.contains("rule \"owner\" needs `source`"), "{e}");
        let lww = parse(&BASE.replace("tombstone_retention = \"2d\"\n", rules).replace("\"field-lww\"", "\"lww\""), &[]);
        let e = lww.unwrap_err().to_string();
        assert!(e.contains("merge.columns: column rules need policy = \"field-lww\""), "{e}");
    }

    #[test]
    fn duplicate_names_topics_and_empty_sources_are_reported_together() {
        let text = format!("{BASE}\n[[sources]]\nname = \"eu\"\ntopic = \"eu.public.customers\"\n");
        match parse(&text, &[]).unwrap_err() {
            ConfigError::Invalid { problems, .. } => {
                assert!(problems.iter().any(|p| p.starts_with("sources[2].name: duplicate source name \"eu\"")), "{problems:?}");
                assert!(problems.iter().any(|p| p.starts_with("sources[2].topic:")), "{problems:?}");
            }
            other => panic!("{other}"),
        }
        let e = parse("[output]\ntopic = \"o\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("sources: at least one"), "{e}");
    }

    #[test]
    fn environment_overrides_apply_by_section_source_and_property() {
        let c = parse(
            BASE,
            &[
                ("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", "broker:9093"),
                ("TRIBUTARY_MERGE__POLICY", "lww"),
                ("TRIBUTARY_RUNTIME__COMMIT_INTERVAL", "250ms"),
                ("TRIBUTARY_SOURCES__US_EAST__PRIORITY", "7"),
                ("TRIBUTARY_KAFKA__PROPERTIES__SASL_USERNAME", "svc"),
                ("TRIBUTARY_TEST_BOOTSTRAP", "ignored: not an override"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "broker:9093");
        assert_eq!(c.merge.policy, Policy::Lww);
        assert_eq!(c.runtime.commit_interval, Duration::from_millis(250));
        assert_eq!(c.sources[1].priority, 7);
        assert_eq!(c.kafka.properties["sasl.username"], "svc");
    }

    #[test]
    fn zero_retention_is_refused_and_deleted_field_shows_for_json_sources_only() {
        let e =
            parse(&BASE.replace("tombstone_retention = \"2d\"", "tombstone_retention = \"0s\""), &[]).unwrap_err().to_string();
        assert!(e.contains("merge.tombstone_retention: must be greater than zero"), "{e}");
        let text = parse(BASE, &[]).unwrap().to_redacted_toml();
        assert!(!text.contains("deleted_field"), "{text}");
        let json = BASE.replace("sequence = \"source.lsn\"", "format = \"json\"");
        let text = parse(&json, &[]).unwrap().to_redacted_toml();
        assert_eq!(text.matches("deleted_field").count(), 1, "{text}");
    }

    #[test]
    fn bad_environment_overrides_name_the_variable() {
        let e = parse(BASE, &[("TRIBUTARY_SOURCES__APAC__PRIORITY", "1")]).unwrap_err().to_string();
        assert!(e.contains("TRIBUTARY_SOURCES__APAC__PRIORITY") && e.contains("apac"), "{e}");
        let e = parse(BASE, &[("TRIBUTARY_MERGE__POLCY", "lww")]).unwrap_err().to_string();
        assert!(e.contains("TRIBUTARY_MERGE__POLCY") && e.contains("polcy"), "{e}");
        // A bad value names the variable it came from, and the key.
        let e = parse(BASE, &[("TRIBUTARY_MERGE__DELETES", "delete-win")]).unwrap_err().to_string();
        assert!(e.starts_with("environment variable TRIBUTARY_MERGE__DELETES: merge.deletes: unknown variant"), "{e}");
        let e = parse(BASE, &[("TRIBUTARY_SOURCES__US_EAST__PRIORITY", "high")]).unwrap_err().to_string();
        assert!(e.contains("TRIBUTARY_SOURCES__US_EAST__PRIORITY") && e.contains("sources[1].priority"), "{e}");
    }

    #[test]
    fn sequence_must_come_from_the_source_block_of_debezium_envelopes() {
        let e = parse(&BASE.replace("source.lsn", "after.version"), &[]).unwrap_err().to_string();
        assert!(e.contains("sources[1].sequence") && e.contains("`source` block"), "{e}");
        let text = BASE.replace("sequence = \"source.lsn\"", "sequence = \"version\"\nformat = \"json\"");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("not supported with format = \"json\""), "{e}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let c = parse(BASE, &[]).unwrap();
        let text = c.to_redacted_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>") && text.contains("sasl_ssl"));
    }

    #[test]
    fn carried_clock_columns_must_agree_or_be_named() {
        let text = BASE
            .replace("priority = 2", "clock_field = \"_vv\"")
            .replace("sequence = \"source.lsn\"", "clock_field = \"vclock\"");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("output.clock_field"), "{e}");
        let text = text.replace("topic = \"customers.merged\"", "topic = \"customers.merged\"\nclock_field = \"_vv\"");
        assert_eq!(parse(&text, &[]).unwrap().output_clock_field().as_deref(), Some("_vv"));
    }
}
