//! Configuration: the TOML file of design §5, environment overrides, and
//! validation that names the offending key.
//!
//! Loading goes file → TOML table → environment overrides → typed structs
//! (`deny_unknown_fields` everywhere) → semantic checks. Every problem found
//! by the checks is reported at once, each with the key it is about.
//!
//! Here: the whole configuration and how it is loaded. The sections are in
//! `sections.rs` (the sink's in `sink.rs`), `[[tables]]` and
//! `[tables_pattern]` in `tables.rs`, the semantic checks in `validate.rs`,
//! the environment overrides in `env.rs`, and the line a problem's key is on
//! in `lines.rs`.

mod env;
mod lines;
mod sections;
mod serde_text;
mod sink;
mod tables;
#[cfg(test)]
mod tables_tests;
#[cfg(test)]
mod tests;
mod validate;

pub use sections::{
    AdminConfig, AuditConfig, KafkaConfig, MergeConfig, OutputConfig, OutputFormat, Processing, Repartition, RuntimeConfig,
    SchemaRegistryConfig, SourceConfig, SourceFormat,
};
pub(crate) use serde_text::duration_text;
pub use serde_text::is_secret_property;
pub use sink::{EpochUnit, SinkConfig, SinkTableConfig, TargetKind};
pub use tables::{glob_matches, is_pattern_table_name, TableConfig, TablesPattern, DEFAULT_TABLE, MAX_TABLES};

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::merge::MergeSettings;
use env::apply_override;
use lines::with_lines;
use validate::validate_source;

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
