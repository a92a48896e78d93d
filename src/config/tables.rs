//! Many tables in one processor: `[[tables]]` (explicit) and
//! `[tables_pattern]` (tables found from topic names).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use std::collections::{HashMap, HashSet};

use super::serde_text::duration_text;
use super::{validate_source, Config, MergeConfig, OutputConfig, SourceConfig};

/// The name of the single table of the legacy form (`[output]`, `[[sources]]`).
pub const DEFAULT_TABLE: &str = "default";

/// The most tables one process merges: metric labels carry the table name,
/// and this bounds their cardinality (documented in doc/configuration.md).
pub const MAX_TABLES: usize = 200;

/// `[[tables]]`: one merged table, its sources, output and merge settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `[A-Za-z0-9_.-]+`, unique; names the changelog and repartition topics,
    /// the metric label and `/state/{table}/{key}`.
    pub name: String,
    /// `[tables.output]`, the same keys as `[output]`.
    pub output: OutputConfig,
    /// `[tables.merge]`; in a configuration file a table without it takes
    /// the top-level `[merge]`.
    #[serde(default)]
    pub merge: MergeConfig,
    /// `[[tables.sources]]`, the same keys as `[[sources]]`.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

impl TableConfig {
    /// True for the single table of the legacy form: the name "default" is
    /// reserved for it (an explicit table may not take it, and the pattern
    /// never finds a table of that name), so its topics keep their
    /// single-table names.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_TABLE
    }
}

/// `[[tables]]` as written in the file: `merge` stays unset when absent, so
/// the table can take the top-level `[merge]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TableEntry {
    pub(super) name: String,
    pub(super) output: OutputConfig,
    #[serde(default)]
    pub(super) merge: Option<MergeConfig>,
    #[serde(default)]
    pub(super) sources: Vec<SourceConfig>,
}

impl TableEntry {
    pub(super) fn resolve(self, merge: &MergeConfig) -> TableConfig {
        TableConfig {
            name: self.name,
            output: self.output,
            merge: self.merge.unwrap_or_else(|| merge.clone()),
            sources: self.sources,
        }
    }
}

/// `[tables_pattern]`: tables found from topic names, at start-up and by a
/// periodic metadata check.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TablesPattern {
    /// The source topics, with exactly one `{region}` and one `{table}`,
    /// e.g. `"{region}.public.{table}"`.
    pub sources: String,
    /// The regions; each is a source of every table, named after the region.
    pub regions: Vec<String>,
    /// The output topic, with exactly one `{table}`, e.g. `"{table}.merged"`.
    pub output: String,
    /// Tables to merge: names or globs (`*` only); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Tables not to merge (names or globs), applied after `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// How often the metadata is checked for new tables.
    #[serde(default = "default_discovery_interval", with = "duration_text")]
    pub discovery_interval: Duration,
    /// A table is merged once the topics of at least this many regions exist.
    #[serde(default = "default_min_regions")]
    pub min_regions: usize,
    /// `[tables_pattern.source]`: the settings of every generated source
    /// (any `[[sources]]` key but `name` and `topic`; those two are empty here).
    #[serde(default = "empty_source", deserialize_with = "de_template", serialize_with = "ser_template")]
    pub source: SourceConfig,
    /// `[tables_pattern.priority]`: the `priority` of a region's sources
    /// (default: the template's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priority: BTreeMap<String, i64>,
}

fn default_discovery_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_min_regions() -> usize {
    1
}

fn empty_source() -> SourceConfig {
    toml::from_str("name = \"\"\ntopic = \"\"").expect("name and topic are the only required keys")
}

fn de_template<'de, D: Deserializer<'de>>(d: D) -> Result<SourceConfig, D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    for key in ["name", "topic"] {
        if table.contains_key(key) {
            return Err(D::Error::custom(format!(
                "`{key}` is not a template key: every generated source is named after its region and reads the topic of the pattern"
            )));
        }
        table.insert(key.into(), toml::Value::String(String::new()));
    }
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| D::Error::custom(e.message()))
}

fn ser_template<S: Serializer>(source: &SourceConfig, s: S) -> Result<S::Ok, S::Error> {
    let mut value = toml::Value::try_from(source).map_err(S::Error::custom)?;
    if let Some(t) = value.as_table_mut() {
        t.remove("name");
        t.remove("topic");
    }
    value.serialize(s)
}

/// A template split at its one `{placeholder}`: what comes before and after.
fn split_once<'a>(template: &'a str, placeholder: &str) -> Option<(&'a str, &'a str)> {
    let (before, after) = template.split_once(placeholder)?;
    (!after.contains(placeholder)).then_some((before, after))
}

/// Whether `name` may be a table found by the pattern: Kafka's topic
/// characters without the dot. A dot is refused so that a topic such as
/// `eu.public.customers.dlq` (or an output topic that looks like a source)
/// is not taken for a table `customers.dlq`.
pub fn is_pattern_table_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `name` matches `glob`, where `*` matches any run of characters.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

impl TablesPattern {
    /// The tables the pattern matches in `topics`, each with the indexes (in
    /// `regions`) of the regions whose topic exists.
    fn regions_by_table<'t>(&self, topics: impl Iterator<Item = &'t str>) -> BTreeMap<&'t str, Vec<usize>> {
        let mut found: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for topic in topics {
            for (r, region) in self.regions.iter().enumerate() {
                if let Some(name) = self.table_of(region, topic) {
                    let regions = found.entry(name).or_default();
                    if !regions.contains(&r) {
                        regions.push(r);
                    }
                }
            }
        }
        found
    }

    /// The table a topic of `region` belongs to, if it matches the pattern.
    fn table_of<'t>(&self, region: &str, topic: &'t str) -> Option<&'t str> {
        let template = self.sources.replacen("{region}", region, 1);
        let (before, after) = split_once(&template, "{table}")?;
        let name = topic.strip_prefix(before)?.strip_suffix(after)?;
        is_pattern_table_name(name).then_some(name)
    }

    /// Whether the pattern selects the table `name` (allow, then deny).
    pub fn selects(&self, name: &str) -> bool {
        name != DEFAULT_TABLE
            && (self.allow.is_empty() || self.allow.iter().any(|g| glob_matches(g, name)))
            && !self.deny.iter().any(|g| glob_matches(g, name))
    }

    /// The output topic of table `name`.
    pub fn output_topic(&self, name: &str) -> String {
        self.output.replacen("{table}", name, 1)
    }

    /// The source topic of table `name` in `region`.
    pub fn source_topic(&self, region: &str, name: &str) -> String {
        self.sources.replacen("{region}", region, 1).replacen("{table}", name, 1)
    }

    /// The tables whose topics exist in `topics` for at least `min_regions`
    /// regions, selected by `allow` and `deny`, sorted by name. Each has a
    /// source per region whose topic exists (in the order of `regions`),
    /// named after the region, and the merge settings `merge`. A topic that
    /// is the output of a table found is not taken for a source (an output
    /// template that also matches `sources` would otherwise feed on itself).
    pub fn discover(&self, topics: &[&str], merge: &MergeConfig) -> Vec<TableConfig> {
        let first = self.regions_by_table(topics.iter().copied());
        let outputs: std::collections::HashSet<String> = first.keys().map(|name| self.output_topic(name)).collect();
        let found = self.regions_by_table(topics.iter().copied().filter(|t| !outputs.contains(*t)));
        found
            .into_iter()
            .filter(|(name, regions)| regions.len() >= self.min_regions.max(1) && self.selects(name))
            .map(|(name, mut regions)| {
                regions.sort_unstable();
                let sources = regions
                    .into_iter()
                    .map(|r| {
                        let region = &self.regions[r];
                        let mut s = self.source.clone();
                        s.name = region.clone();
                        s.topic = self.source_topic(region, name);
                        if let Some(p) = self.priority.get(region) {
                            s.priority = *p;
                        }
                        s
                    })
                    .collect();
                TableConfig {
                    name: name.to_string(),
                    output: OutputConfig { topic: self.output_topic(name), ..OutputConfig::default() },
                    merge: merge.clone(),
                    sources,
                }
            })
            .collect()
    }
}

/// Whether `name` may name an explicit table: `[A-Za-z0-9_.-]+`.
fn is_table_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The same settings, compared as written (MergeConfig has no `PartialEq`).
fn same_merge(a: &MergeConfig, b: &MergeConfig) -> bool {
    toml::Value::try_from(a).ok() == toml::Value::try_from(b).ok()
}

impl Config {
    /// Every source name: of the tables configured and the pattern's regions.
    pub(super) fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables().into_iter().flat_map(|t| t.sources).map(|s| s.name).collect();
        names.extend(self.tables_pattern.iter().flat_map(|p| p.regions.iter().cloned()));
        names.sort();
        names.dedup();
        names
    }

    /// The tables checked by [`Config::validate`], each with the prefix of
    /// its keys (`""` for the legacy form, `tables[1].`).
    pub(super) fn checked_tables(&self) -> Vec<(String, TableConfig)> {
        if self.tables.is_empty() && self.tables_pattern.is_none() {
            self.tables().into_iter().map(|t| (String::new(), t)).collect()
        } else {
            self.tables.iter().enumerate().map(|(i, t)| (format!("tables[{i}]."), t.clone())).collect()
        }
    }

    /// The checks of the tables: the legacy form's `[output]`, `[merge]` and
    /// `[[sources]]`, or every `[[tables]]` entry and `[tables_pattern]`.
    pub(super) fn validate_tables(&self, problems: &mut Vec<String>) {
        let many = !self.tables.is_empty() || self.tables_pattern.is_some();
        if many {
            let with = match (self.tables.is_empty(), self.tables_pattern.is_none()) {
                (false, true) => "[[tables]]",
                (true, false) => "[tables_pattern]",
                _ => "[[tables]] and [tables_pattern]",
            };
            if !self.sources.is_empty() {
                problems.push(format!(
                    "sources: [[sources]] must be absent with {with}; list a table's sources under [[tables.sources]]"
                ));
            }
            if !self.output.topic.is_empty() {
                problems.push(format!("output: [output] must be absent with {with}; name a table's output in [tables.output]"));
            }
        } else if self.sources.is_empty() {
            problems.push("sources: at least one [[sources]] entry is required".into());
        }
        if self.tables.len() > MAX_TABLES {
            problems.push(format!(
                "tables: {} tables; one process merges at most {MAX_TABLES} (metric labels name the table)",
                self.tables.len()
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("tables[{i}].name");
            if t.name.is_empty() {
                problems.push(format!("{at}: must not be empty"));
            } else if !is_table_name(&t.name) {
                problems.push(format!("{at}: \"{}\" may hold letters, digits, '_', '.' and '-' only", t.name));
            } else if t.name == DEFAULT_TABLE {
                problems.push(format!(
                    "{at}: \"{DEFAULT_TABLE}\" is reserved for the single table of [output] and [[sources]]; choose another name"
                ));
            } else if let Some(j) = names.insert(&t.name, i) {
                problems.push(format!("{at}: duplicate table name \"{}\" (also tables[{j}])", t.name));
            }
        }
        // The top-level [merge]: checked once, with the pattern's regions
        // when the pattern uses it.
        self.merge.validate("merge", problems);
        let checked = self.checked_tables();
        let mut outputs: HashMap<String, String> = HashMap::new();
        let mut read: HashMap<String, String> = HashMap::new();
        for (prefix, t) in &checked {
            if t.output.topic.trim().is_empty() {
                problems.push(format!("{prefix}output.topic: must not be empty"));
            } else if let Some(other) = outputs.insert(t.output.topic.clone(), t.name.clone()) {
                problems.push(format!("{prefix}output.topic: \"{}\" is also the output of table \"{other}\"", t.output.topic));
            }
            if t.output.delete_retention.is_some_and(|d| d.is_zero()) {
                problems.push(format!("{prefix}output.delete_retention: must be greater than zero"));
            }
            if !prefix.is_empty() && t.sources.is_empty() {
                problems.push(format!("{prefix}sources: at least one [[tables.sources]] entry is required"));
            }
            let mut source_names: HashMap<&str, usize> = HashMap::new();
            for (j, s) in t.sources.iter().enumerate() {
                let at = format!("{prefix}sources[{j}]");
                if s.name.trim().is_empty() {
                    problems.push(format!("{at}.name: must not be empty"));
                } else if let Some(k) = source_names.insert(&s.name, j) {
                    problems.push(format!("{at}.name: duplicate source name \"{}\" (also {prefix}sources[{k}])", s.name));
                }
                if s.topic.trim().is_empty() {
                    problems.push(format!("{at}.topic: must not be empty"));
                } else if let Some(other) = read.get(&s.topic) {
                    problems.push(format!("{at}.topic: topic \"{}\" is already read by {other}", s.topic));
                } else {
                    read.insert(s.topic.clone(), at.clone());
                }
                validate_source(s, &at, problems);
            }
            let carried: Vec<&str> = t.sources.iter().filter_map(|s| s.clock_field.as_deref()).collect();
            if t.output.clock_field.is_none() && carried.iter().collect::<HashSet<_>>().len() > 1 {
                problems.push(format!(
                    "{prefix}output.clock_field: sources carry clocks in different columns ({}); name the output column",
                    carried.join(", ")
                ));
            }
            if prefix.is_empty() {
                t.merge.validate_columns("merge", "", &t.sources, problems);
            } else if same_merge(&t.merge, &self.merge) {
                t.merge.validate_columns("merge", &format!(" (table \"{}\")", t.name), &t.sources, problems);
            } else {
                let at = format!("{prefix}merge");
                t.merge.validate(&at, problems);
                t.merge.validate_columns(&at, "", &t.sources, problems);
            }
        }
        for (prefix, t) in &checked {
            for (j, s) in t.sources.iter().enumerate() {
                if let Some(owner) = outputs.get(&s.topic) {
                    let of = if prefix.is_empty() { String::new() } else { format!(" of table \"{owner}\"") };
                    problems.push(format!("{prefix}sources[{j}].topic: \"{}\" is also the output topic{of}", s.topic));
                }
            }
        }
        if let Some(p) = &self.tables_pattern {
            p.validate(&self.merge, &checked, problems);
        }
    }
}

impl TablesPattern {
    /// The checks of `[tables_pattern]`; `explicit` are the `[[tables]]`
    /// entries with the prefixes of their keys.
    fn validate(&self, merge: &MergeConfig, explicit: &[(String, TableConfig)], problems: &mut Vec<String>) {
        let at = "tables_pattern";
        for (key, template, needs) in
            [("sources", &self.sources, &["{region}", "{table}"][..]), ("output", &self.output, &["{table}"][..])]
        {
            for placeholder in needs {
                let n = template.matches(placeholder).count();
                if n != 1 {
                    problems.push(format!("{at}.{key}: \"{template}\" holds {placeholder} {n} times; it needs it exactly once"));
                }
            }
            let rest = template.replace("{region}", "").replace("{table}", "");
            if key == "output" && template.contains("{region}") {
                problems.push(format!(
                    "{at}.output: \"{template}\" holds {{region}}; a table has one output for all regions, use {{table}} only"
                ));
            } else if rest.contains(['{', '}']) {
                problems.push(format!("{at}.{key}: \"{template}\" holds a placeholder other than {}", needs.join(" and ")));
            }
        }
        if self.regions.is_empty() {
            problems.push(format!("{at}.regions: must list at least one region"));
        }
        let mut seen = HashSet::new();
        for r in &self.regions {
            if !is_table_name(r) {
                problems.push(format!(
                    "{at}.regions: \"{r}\" is not a region name (letters, digits, '_', '.' and '-'; it names the source)"
                ));
            } else if !seen.insert(r) {
                problems.push(format!("{at}.regions: \"{r}\" is listed twice"));
            }
        }
        if self.min_regions < 1 || self.min_regions > self.regions.len().max(1) {
            problems.push(format!(
                "{at}.min_regions: {} must be between 1 and the number of regions ({})",
                self.min_regions,
                self.regions.len()
            ));
        }
        if self.discovery_interval.is_zero() {
            problems.push(format!("{at}.discovery_interval: must be greater than zero"));
        }
        for (key, globs) in [("allow", &self.allow), ("deny", &self.deny)] {
            for g in globs {
                if g.is_empty() || !g.chars().all(|c| c == '*' || is_pattern_table_name(&c.to_string())) {
                    problems.push(format!(
                        "{at}.{key}: \"{g}\" can never match: tables found by the pattern are named with letters, digits, '_' and '-' (globs: '*' only)"
                    ));
                }
            }
        }
        for region in self.priority.keys().filter(|r| !self.regions.contains(r)) {
            problems
                .push(format!("{at}.priority.{region}: \"{region}\" is not one of the regions ({})", self.regions.join(", ")));
        }
        validate_source(&self.source, &format!("{at}.source"), problems);
        let sources: Vec<SourceConfig> =
            self.regions.iter().map(|r| SourceConfig { name: r.clone(), ..self.source.clone() }).collect();
        merge.validate_columns("merge", &format!(" ({at})"), &sources, problems);
        // A topic of an explicit table that the pattern matches would be
        // read twice (or, an output, fed back), unless the explicit table has
        // the name the pattern gives it (explicit tables win).
        for (prefix, t) in explicit {
            let topics = t.sources.iter().enumerate().map(|(j, s)| (format!("{prefix}sources[{j}].topic"), &s.topic));
            for (key, topic) in topics.chain([(format!("{prefix}output.topic"), &t.output.topic)]) {
                let found = self.regions.iter().find_map(|r| self.table_of(r, topic)).filter(|n| self.selects(n));
                if let Some(name) = found.filter(|n| !explicit.iter().any(|(_, e)| e.name == *n)) {
                    problems.push(format!(
                        "{key}: \"{topic}\" is also a source of table \"{name}\" found by [tables_pattern]; deny \"{name}\" there or name this table \"{name}\""
                    ));
                }
            }
        }
    }
}
