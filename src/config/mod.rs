//! Configuration: the TOML file of design §5, environment overrides, and
//! validation that names the offending key.
//!
//! Loading goes file → TOML table → environment overrides → typed structs
//! (`deny_unknown_fields` everywhere) → semantic checks. Every problem found
//! by the checks is reported at once, each with the key it is about.

mod sections;
mod serde_text;
mod sink;
mod tables;
#[cfg(test)]
mod tables_tests;
#[cfg(test)]
mod tests;

pub use sections::{
    AdminConfig, AuditConfig, KafkaConfig, MergeConfig, OutputConfig, OutputFormat, Processing, Repartition, RuntimeConfig,
    SchemaRegistryConfig, SourceConfig, SourceFormat,
};
pub(crate) use serde_text::duration_text;
pub use serde_text::is_secret_property;
pub use sink::{EpochUnit, SinkConfig, SinkTableConfig, TargetKind};
pub use tables::{glob_matches, is_pattern_table_name, TableConfig, TablesPattern, DEFAULT_TABLE, MAX_TABLES};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::merge::MergeSettings;

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
#[serde(from = "ConfigFile")]
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
    pub sink: Option<SinkConfig>,
    /// The Confluent Schema Registry (Avro input or output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// The source topics, one per source database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
    /// `[[tables]]`: several tables, each with its output, merge settings
    /// and sources (instead of `[output]` and `[[sources]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableConfig>,
    /// `[tables_pattern]`: tables found from topic names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables_pattern: Option<TablesPattern>,
}

/// [`Config`] as written in the file: a `[[tables]]` entry without
/// `[tables.merge]` takes the top-level `[merge]` once the file is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    kafka: KafkaConfig,
    #[serde(default)]
    output: OutputConfig,
    #[serde(default)]
    merge: MergeConfig,
    #[serde(default)]
    runtime: RuntimeConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    audit: AuditConfig,
    #[serde(default)]
    sink: Option<SinkConfig>,
    #[serde(default)]
    schema_registry: Option<SchemaRegistryConfig>,
    #[serde(default)]
    sources: Vec<SourceConfig>,
    #[serde(default)]
    tables: Vec<tables::TableEntry>,
    #[serde(default)]
    tables_pattern: Option<TablesPattern>,
}

impl From<ConfigFile> for Config {
    fn from(f: ConfigFile) -> Self {
        let tables = f.tables.into_iter().map(|t| t.resolve(&f.merge)).collect();
        Config {
            kafka: f.kafka,
            output: f.output,
            merge: f.merge,
            runtime: f.runtime,
            admin: f.admin,
            audit: f.audit,
            sink: f.sink,
            schema_registry: f.schema_registry,
            sources: f.sources,
            tables,
            tables_pattern: f.tables_pattern,
        }
    }
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
        let (config, overridden) = Self::parse_unvalidated(text, origin, env)?;
        config.validate(origin).map_err(|e| with_lines(e, text, &overridden))?;
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
        let (config, overridden) = Self::parse_unvalidated(text, origin, env)?;
        config.validate_for_sink(origin).map_err(|e| with_lines(e, text, &overridden))?;
        Ok(config)
    }

    fn parse_unvalidated(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        // First the file alone, so key and type errors point at a line.
        let parsed: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.into(), message: e.to_string() })?;
        let overrides: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__")).collect();
        let mut overridden = Vec::new();
        let config = if overrides.is_empty() {
            parsed
        } else {
            let mut table: toml::Table = toml::from_str(text).expect("parsed above");
            let mut set = Vec::new();
            for (var, value) in &overrides {
                set.push((var, apply_override(&mut table, var, value)?));
            }
            let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                // The value came from the environment: name the variable.
                match set.iter().find(|(_, key)| path == *key || path.starts_with(&format!("{key}."))) {
                    Some((var, _)) => ConfigError::Env { var: var.to_string(), message: format!("{path}: {}", e.inner()) },
                    None => ConfigError::Parse {
                        origin: format!("{origin} with environment overrides"),
                        message: format!("{path}: {}", e.inner()),
                    },
                }
            })?;
            overridden = set.into_iter().map(|(_, key)| key).collect();
            config
        };
        Ok((config, overridden))
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
            Some(sink) => problems.extend(sink.problems(self)),
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
        if self.admin.enabled && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("admin.listen: \"{}\" is not an address such as \"0.0.0.0:9464\"", self.admin.listen));
        }
        // An inline token (or both keys) is checked here; a token file is
        // read at start-up, where the mounted secret is.
        if self.admin.token.is_some() {
            if let Err(problem) = self.admin.resolve_token() {
                problems.push(problem);
            }
        }
        let known = self.source_names();
        for name in self.admin.start_paused.iter().filter(|n| !known.contains(n)) {
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            problems.push(format!("admin.start_paused: no source named \"{name}\" (the sources are {})", known.join(", ")));
        }
        if self.runtime.commit_interval.is_zero() {
            problems.push("runtime.commit_interval: must be greater than zero".into());
        }
        if self.runtime.max_cycle_bytes < 1 << 16 {
            problems.push(format!("runtime.max_cycle_bytes: {} is too small (at least 65536)", self.runtime.max_cycle_bytes));
        }
        self.validate_tables(&mut problems);
        self.validate_registry(&mut problems);
        if let Some(sink) = &self.sink {
            problems.extend(sink.problems(self));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { origin: origin.into(), problems })
        }
    }

    /// The tables configured: the `[[tables]]` entries, or the single table
    /// "default" of the legacy form (`[output]`, `[[sources]]`). Tables
    /// found by `[tables_pattern]` are not among them (see
    /// [`TablesPattern::discover`]); with a pattern and no `[[tables]]` the
    /// list is empty.
    pub fn tables(&self) -> Vec<TableConfig> {
        if !self.tables.is_empty() || self.tables_pattern.is_some() {
            return self.tables.clone();
        }
        vec![TableConfig {
            name: DEFAULT_TABLE.to_string(),
            output: self.output.clone(),
            merge: self.merge.clone(),
            sources: self.sources.clone(),
        }]
    }

    /// A copy of this configuration for one table, in the legacy form: its
    /// `output`, `merge` and `sources` are the table's, and it has no
    /// `[[tables]]` or `[tables_pattern]` (so everything that reads a
    /// single-table configuration, `Pipeline::new` for one, works per table).
    pub fn for_table(&self, t: &TableConfig) -> Config {
        Config {
            output: t.output.clone(),
            merge: t.merge.clone(),
            sources: t.sources.clone(),
            tables: Vec::new(),
            tables_pattern: None,
            ..self.clone()
        }
    }

    /// True when some source or output is Avro (a registry is needed).
    pub fn uses_avro(&self) -> bool {
        !self.avro_users().is_empty()
    }

    /// The keys that make Avro of a source or an output.
    fn avro_users(&self) -> Vec<String> {
        let mut who = Vec::new();
        for (prefix, t) in self.checked_tables() {
            for (j, s) in t.sources.iter().enumerate().filter(|(_, s)| s.format == SourceFormat::DebeziumAvro) {
                // The legacy form names the source, as before.
                who.push(if prefix.is_empty() {
                    format!("sources.{}.format", s.name)
                } else {
                    format!("{prefix}sources[{j}].format")
                });
            }
            if t.output.format == OutputFormat::Avro {
                who.push(format!("{prefix}output.format"));
            }
        }
        if self.tables_pattern.as_ref().is_some_and(|p| p.source.format == SourceFormat::DebeziumAvro) {
            who.push("tables_pattern.source.format".into());
        }
        who
    }

    fn validate_registry(&self, problems: &mut Vec<String>) {
        let Some(registry) = &self.schema_registry else {
            let who = self.avro_users();
            if !who.is_empty() {
                problems.push(format!(
                    "schema_registry: required by {} (Avro); add [schema_registry] url = \"http://…\"",
                    who.join(", ")
                ));
            }
            return;
        };
        for (prefix, t) in self.checked_tables() {
            if t.output.format == OutputFormat::Avro && !t.sources.iter().any(|s| s.format == SourceFormat::DebeziumAvro) {
                problems.push(format!(
                    "{prefix}output.format: \"avro\" derives the output schema from the sources' Avro schemas; at least one source needs format = \"debezium-avro\""
                ));
            }
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
        let not_json = |source: &mut toml::Table| {
            if source.get("format").and_then(toml::Value::as_str) != Some("json") {
                source.remove("deleted_field");
            }
        };
        let each = |sources: Option<&mut toml::Value>| {
            sources
                .and_then(toml::Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(toml::Value::as_table_mut)
                .for_each(not_json)
        };
        for (key, item) in value.as_table_mut().expect("a table").iter_mut() {
            match key.as_str() {
                "sources" => each(Some(item)),
                "tables" => item.as_array_mut().into_iter().flatten().for_each(|t| each(t.get_mut("sources"))),
                "tables_pattern" => item.get_mut("source").and_then(toml::Value::as_table_mut).into_iter().for_each(not_json),
                _ => {}
            }
        }
        toml::to_string_pretty(&value).expect("the configuration serializes")
    }
}

/// The checks of one source (or of the pattern's template) whose keys start with `at`.
fn validate_source(s: &SourceConfig, at: &str, problems: &mut Vec<String>) {
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
            problems.push(format!("{at}.sequence: set together with clock_field; a source's clock is either derived or carried"));
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
    validate_transform(s, at, problems);
}

/// Compiles a source's `transform` and `where` as start-up will, listing
/// each problem with its key and the source's name; key and clock columns
/// must survive the mapping.
fn validate_transform(s: &SourceConfig, at: &str, problems: &mut Vec<String>) {
    // The pattern's template has no name (it is every region's source).
    let label = if s.name.is_empty() { String::new() } else { format!(" (source \"{}\")", s.name) };
    let named = |p: crate::transform::SpecProblem| format!("{at}.{}{label}: {}", p.key, p.message);
    if let Some(spec) = &s.transform {
        match crate::transform::Transform::compile(spec) {
            Ok(t) => {
                for f in s.key_fields.iter().flatten().filter(|f| !t.keeps(f)) {
                    problems
                        .push(format!("{at}.key_fields: \"{f}\" is dropped by the transform (key fields name columns after it)"));
                }
                if let Some(f) = s.clock_field.as_ref().filter(|f| !t.keeps(f)) {
                    problems.push(format!("{at}.clock_field: \"{f}\" is dropped by the transform"));
                }
            }
            Err(found) => problems.extend(found.into_iter().map(named)),
        }
    }
    if let Some(spec) = &s.filter {
        if let Err(found) = crate::transform::Filter::compile(spec) {
            problems.extend(found.into_iter().map(named));
        }
    }
}

/// Applies one `TRIBUTARY_<SECTION>__<KEY>` override to the parsed table.
///
/// `TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS`, `TRIBUTARY_MERGE__POLICY`,
/// `TRIBUTARY_KAFKA__PROPERTIES__SASL_PASSWORD` (→ `sasl.password`),
/// `TRIBUTARY_SOURCES__EU__PRIORITY` (source by name; `_` matches `-`).
/// Returns the key path it set (`merge.deletes`, `sources[0].priority`).
/// Adds the line of the key each problem names (`sources[2].transform.cast.balance
/// ...: unknown cast "centz" (line 53)`), where the key is in the file (not
/// for keys set by environment overrides, or missing ones).
fn with_lines(e: ConfigError, text: &str, overridden: &[String]) -> ConfigError {
    let ConfigError::Invalid { origin, problems } = e else { return e };
    let Ok(doc) = toml_edit::ImDocument::parse(text) else { return ConfigError::Invalid { origin, problems } };
    let problems = problems
        .into_iter()
        .map(|p| {
            let path = p.split([' ', ':']).next().unwrap_or_default();
            let from_env =
                overridden.iter().any(|k| path == k || path.starts_with(&format!("{k}.")) || k.starts_with(&format!("{path}.")));
            match key_line(&doc, text, path).filter(|_| !from_env) {
                Some(line) => format!("{p} (line {line})"),
                None => p,
            }
        })
        .collect();
    ConfigError::Invalid { origin, problems }
}

/// The line (1-based) of the key at `path` (`a.b[2].c`) in `doc`, parsed
/// from `text`, or of its closest enclosing key that is there.
fn key_line(doc: &toml_edit::ImDocument<&str>, text: &str, path: &str) -> Option<usize> {
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        // A key that is missing (`tables[1].sources` of a table without
        // sources) is named by the line of the section that lacks it.
        let Some((key, item)) = table.get_key_value(name) else { break };
        span = key.span().or(span);
        let item = match index {
            None => item,
            Some(i) => {
                let Some(t) = item.as_array_of_tables().and_then(|a| a.get(i)) else { break };
                span = t.span().or(span);
                if segments.peek().is_none() {
                    break;
                }
                table = t;
                continue;
            }
        };
        if segments.peek().is_some() {
            table = item.as_table_like()?;
        }
    }
    let start = span?.start;
    Some(text[..start.min(text.len())].matches('\n').count() + 1)
}

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
        [section, ..] if section == "tables" => Err(err(
            "[[tables]] cannot be set from the environment; write the tables in the file (TRIBUTARY_TABLES_PATTERN__<KEY> sets a key of [tables_pattern])".into(),
        )),
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
