//! The semantic checks of a parsed configuration: every problem is listed
//! at once, each starting with the key it is about. Apart from loading
//! (`mod.rs`) because the checks are most of the rules a user meets, and
//! read best together.

use std::collections::HashSet;

use super::{Config, ConfigError, OutputFormat, SourceConfig, SourceFormat};

/// Most warm copies of a task `[runtime] standby_replicas` may ask for.
pub const MAX_STANDBY_REPLICAS: u32 = 8;

impl Config {
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
        if self.runtime.standby_replicas > MAX_STANDBY_REPLICAS {
            problems.push(format!(
                "runtime.standby_replicas: {} is more than {MAX_STANDBY_REPLICAS} (each copy reads the whole changelog of its tasks)",
                self.runtime.standby_replicas
            ));
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
}

/// The checks of one source (or of the pattern's template) whose keys start with `at`.
pub(super) fn validate_source(s: &SourceConfig, at: &str, problems: &mut Vec<String>) {
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
