//! Many tables in one processor: `[[tables]]` (explicit) and
//! `[tables_pattern]` (tables found from topic names).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::serde_text::duration_text;
use super::{MergeConfig, OutputConfig, SourceConfig};

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
