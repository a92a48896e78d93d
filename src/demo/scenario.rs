//! What differs between the demo's scenarios: the sources, the
//! configuration (as a user would write it) and the simulator.

use std::fmt::Write as _;
use std::path::Path;

use super::sources::Simulation;
use super::{aggregation, regions, DemoError, DemoPolicy, COMMIT_INTERVAL, GROUP, OUTPUT, TABLE};
use crate::config::Config;

/// Which demo `tributary demo` runs (`--scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Three regions replicating each other's writes edit the same customers;
    /// conflicts are resolved by `--policy`.
    Regions,
    /// A CRM, billing and two regions' login services each own part of a
    /// customer; every column resolves by its own rule.
    Aggregation,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Regions => "regions",
            Scenario::Aggregation => "aggregation",
        }
    }

    /// The merge policy: `--policy` (or TRIBUTARY_MERGE__POLICY) for the
    /// regions; the aggregation's column rules need `field-lww`.
    pub(super) fn policy(self, asked: Option<DemoPolicy>) -> Result<DemoPolicy, DemoError> {
        match (self, asked) {
            (Scenario::Regions, p) => Ok(p.unwrap_or(DemoPolicy::Lww)),
            (Scenario::Aggregation, None | Some(DemoPolicy::FieldLww)) => Ok(DemoPolicy::FieldLww),
            (Scenario::Aggregation, Some(p)) => Err(DemoError(format!(
                "--scenario aggregation runs policy field-lww (its column rules apply only under it), not {p} (from --policy or TRIBUTARY_MERGE__POLICY); --policy chooses among the policies in --scenario regions"
            ))),
        }
    }

    pub(super) fn sources(self) -> &'static [SourceSpec] {
        match self {
            Scenario::Regions => &regions::SOURCES,
            Scenario::Aggregation => &aggregation::SOURCES,
        }
    }

    pub(super) fn simulation(self) -> Box<dyn Simulation> {
        match self {
            Scenario::Regions => Box::new(regions::Sim::new()),
            Scenario::Aggregation => Box::new(aggregation::Sim::new()),
        }
    }

    /// Whether the demo replays the source topics offline and compares.
    pub(super) fn checks_replay(self) -> bool {
        self == Scenario::Aggregation
    }

    /// What the demo says on stderr before it starts.
    pub(super) fn introduction(self, config: &Config) -> Vec<String> {
        let topics = self.sources().iter().map(|s| s.topic).collect::<Vec<_>>().join(", ");
        let (policy, deletes) = (config.merge.policy.as_str(), config.merge.deletes.as_str());
        match self {
            Scenario::Regions => vec![
                format!("regions eu, us, ap -> topics {topics} (3 partitions each)"),
                format!("policy {policy}, deletes {deletes}; processing at-least-once (the mock's transactions write no commit markers, so exactly-once cannot be shown here)"),
            ],
            Scenario::Aggregation => vec![
                format!("systems crm, billing, eu, us -> topics {topics} (3 partitions each)"),
                format!("policy {policy} with column rules ({}), deletes {deletes}; processing at-least-once", aggregation::rules_in_brief()),
            ],
        }
    }

    /// The `[merge]` section and the sink's columns.
    fn merge_and_columns(self, policy: DemoPolicy) -> (String, &'static [&'static str]) {
        match self {
            Scenario::Regions => (
                format!("[merge]\npolicy = {}\n", toml_str(policy.as_str())),
                &["id bigint", "name text", "email text", "city text", "tier text"],
            ),
            Scenario::Aggregation => (aggregation::merge_section(), &aggregation::COLUMNS),
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One simulated source database and its topic.
pub(super) struct SourceSpec {
    pub name: &'static str,
    pub topic: &'static str,
    pub priority: i64,
    /// The column carrying the row's version vector (carried clocks), or
    /// none: the Kafka offset orders the source's writes (derived clocks).
    pub clock_field: Option<&'static str>,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The demo's configuration, as a user would write it.
pub(super) fn demo_config(
    scenario: Scenario,
    bootstrap: &str,
    policy: DemoPolicy,
    state_dir: &Path,
    sqlite: &Path,
    port: u16,
) -> Result<Config, DemoError> {
    let (merge, columns) = scenario.merge_and_columns(policy);
    let columns: Vec<String> = columns.iter().map(|c| toml_str(c)).collect();
    let vv_column = scenario.sources().iter().find_map(|s| s.clock_field).unwrap_or("_tributary_vv");
    let mut text = format!(
        r#"[kafka]
bootstrap_servers = {bootstrap}
group_id = "{GROUP}"

[output]
topic = "{OUTPUT}"

{merge}
[runtime]
processing = "at-least-once"
commit_interval = "{COMMIT_INTERVAL}"
state_dir = {state}

[admin]
listen = "127.0.0.1:{port}"

[sink]
target = "sqlite"
url = {url}
table = "{TABLE}"
columns = [{columns}]
key_columns = ["id"]
vv_column = "{vv_column}"
"#,
        bootstrap = toml_str(bootstrap),
        state = toml_str(&state_dir.to_string_lossy()),
        url = toml_str(&sqlite.to_string_lossy()),
        columns = columns.join(", "),
    );
    for s in scenario.sources() {
        let _ = write!(text, "\n[[sources]]\nname = \"{}\"\ntopic = \"{}\"\npriority = {}\n", s.name, s.topic, s.priority);
        if let Some(c) = s.clock_field {
            let _ = writeln!(text, "clock_field = \"{c}\"");
        }
    }
    // `[merge]` overrides from the environment (TRIBUTARY_MERGE__DELETES=…)
    // apply; the policy is already in the text (--policy, else
    // TRIBUTARY_MERGE__POLICY, else the scenario's); nothing else may point
    // the demo elsewhere. Errors name the variable.
    let env = std::env::vars().filter(|(k, _)| k.starts_with("TRIBUTARY_MERGE__") && k != "TRIBUTARY_MERGE__POLICY");
    Config::parse(&text, &format!("tributary demo --scenario {scenario}"), env).map_err(|e| DemoError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scenario: Scenario, policy: DemoPolicy) -> Config {
        demo_config(scenario, "127.0.0.1:1", policy, Path::new("/tmp/s"), Path::new("/tmp/x.sqlite"), 1234).unwrap()
    }

    #[test]
    fn the_regions_configuration_is_valid_for_every_policy() {
        for p in DemoPolicy::ALL {
            let c = config(Scenario::Regions, p);
            assert_eq!(c.merge.policy.as_str(), p.as_str());
            assert_eq!(c.sources.len(), 3);
            assert_eq!(c.output_clock_field().as_deref(), Some("_vv"));
        }
    }

    #[test]
    fn the_aggregation_configuration_has_column_rules_and_derived_clocks() {
        let c = config(Scenario::Aggregation, DemoPolicy::FieldLww);
        assert_eq!(c.merge.policy.as_str(), "field-lww");
        assert_eq!(c.merge.deletes.as_str(), "update-wins");
        assert_eq!(c.sources.len(), 4);
        assert_eq!(c.output_clock_field(), None);
        let rules = c.to_redacted_toml();
        for column in ["email", "balance", "last_login", "first_seen", "tags"] {
            assert!(rules.contains(column), "{column} in {rules}");
        }
    }

    #[test]
    fn the_aggregation_scenario_refuses_another_policy() {
        assert_eq!(Scenario::Aggregation.policy(None).unwrap(), DemoPolicy::FieldLww);
        let e = Scenario::Aggregation.policy(Some(DemoPolicy::Lww)).unwrap_err().to_string();
        assert!(e.contains("field-lww") && e.contains("lww") && e.contains("--scenario regions"), "{e}");
        assert_eq!(Scenario::Regions.policy(None).unwrap(), DemoPolicy::Lww);
    }
}
