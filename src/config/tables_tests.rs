//! `[[tables]]`, `[tables_pattern]` and `repartition`.

use super::*;
use crate::merge::{ColumnRule, Policy};

const TABLES: &str = r#"
[kafka]
group_id = "g"

[merge]
policy = "lww"

[[tables]]
name = "customers"
[tables.output]
topic = "customers.merged"
[tables.merge]
policy = "field-lww"
[tables.merge.columns]
email = { rule = "owner", source = "eu" }
[[tables.sources]]
name = "eu"
topic = "eu.public.customers"
priority = 2
[[tables.sources]]
name = "us"
topic = "us.public.customers"
repartition = "always"
key_fields = ["id"]

[[tables]]
name = "orders"
[tables.output]
topic = "orders.merged"
[[tables.sources]]
name = "eu"
topic = "eu.public.orders"
repartition = "never"
"#;

const PATTERN: &str = r#"
[kafka]
group_id = "g"

[merge]
policy = "field-lww"

[tables_pattern]
sources = "{region}.public.{table}"
regions = ["eu", "us", "ap"]
output = "{table}.merged"
allow = ["customers", "orders", "inv*"]
deny = ["invoice_lines"]
min_regions = 2
[tables_pattern.source]
format = "json"
repartition = "always"
[tables_pattern.priority]
eu = 2
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", std::iter::empty())
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

/// The problems of an invalid configuration.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// The one problem that starts with `key`, which must name `line`.
fn problem_at(text: &str, key: &str, line: usize) -> String {
    let all = problems(text);
    let found: Vec<&String> = all.iter().filter(|p| p.starts_with(key)).collect();
    assert_eq!(found.len(), 1, "one problem for {key} in {all:?}");
    assert!(found[0].ends_with(&format!("(line {line})")), "line {line} in {found:?}");
    found[0].clone()
}

/// The 1-based line of the `n`th (0-based) line of `text` that starts with `needle`.
fn line_of(text: &str, needle: &str, n: usize) -> usize {
    text.lines().enumerate().filter(|(_, l)| l.starts_with(needle)).nth(n).expect(needle).0 + 1
}

#[test]
fn explicit_tables_parse_and_a_table_without_merge_takes_the_top_level_one() {
    let c = parse(TABLES).unwrap();
    let tables = c.tables();
    assert_eq!(tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["customers", "orders"]);
    assert_eq!(tables[0].merge.policy, Policy::FieldLww);
    assert_eq!(tables[0].merge.columns["email"], ColumnRule::Owner { source: "eu".into() });
    assert_eq!(tables[1].merge.policy, Policy::Lww, "orders has no [tables.merge]");
    assert_eq!(tables[0].sources[1].key_fields.as_deref(), Some(&["id".to_string()][..]));
    assert_eq!(tables[0].sources[0].repartition, Repartition::Auto, "the default");
    assert_eq!(tables[0].sources[1].repartition, Repartition::Always);
    assert_eq!(tables[1].sources[0].repartition, Repartition::Never);
    assert!(tables.iter().all(|t| !t.is_default()));
    assert!(c.sources.is_empty() && c.output.topic.is_empty() && c.tables_pattern.is_none());
}

#[test]
fn the_legacy_form_is_the_single_table_default() {
    let text = "[output]\ntopic = \"o\"\n[[sources]]\nname = \"eu\"\ntopic = \"t-eu\"\nrepartition = \"never\"\n";
    let c = parse(text).unwrap();
    let tables = c.tables();
    assert_eq!(tables.len(), 1);
    assert!(tables[0].is_default());
    assert_eq!(tables[0].name, "default");
    assert_eq!(tables[0].output.topic, "o");
    assert_eq!(tables[0].sources[0].repartition, Repartition::Never);
    // A configuration that only has a pattern has no configured table.
    assert!(parse(PATTERN).unwrap().tables().is_empty());
}

#[test]
fn an_unknown_repartition_value_is_named() {
    let e = parse(&TABLES.replace("\"never\"", "\"sometimes\"")).unwrap_err().to_string();
    assert!(e.contains("sometimes") && e.contains("`auto`, `always`"), "{e}");
}

#[test]
fn for_table_is_a_single_table_configuration_of_that_table() {
    let c = parse(TABLES).unwrap();
    let orders = &c.tables()[1];
    let one = c.for_table(orders);
    assert_eq!(one.output.topic, "orders.merged");
    assert_eq!(one.merge.policy, Policy::Lww);
    assert_eq!(one.sources.len(), 1);
    assert_eq!(one.source_for_topic("eu.public.orders").map(|s| s.name.as_str()), Some("eu"));
    assert_eq!(one.kafka.group_id, "g");
    assert!(one.tables.is_empty() && one.tables_pattern.is_none());
    one.validate("copy").unwrap();
    let customers = c.for_table(&c.tables()[0]);
    assert_eq!(customers.merge_settings().priorities["eu"], 2);
    assert_eq!(customers.merge_settings().policy, Policy::FieldLww);
}

#[test]
fn the_pattern_parses_with_its_defaults() {
    let c = parse(PATTERN).unwrap();
    let p = c.tables_pattern.as_ref().unwrap();
    assert_eq!(p.regions, ["eu", "us", "ap"]);
    assert_eq!(p.discovery_interval, Duration::from_secs(30));
    assert_eq!(p.min_regions, 2);
    assert_eq!(p.source.format, SourceFormat::Json);
    assert_eq!(p.priority["eu"], 2);
    let minimal = "[tables_pattern]\nsources = \"{region}.{table}\"\nregions = [\"eu\"]\noutput = \"{table}.m\"\n";
    let p = parse(minimal).unwrap().tables_pattern.unwrap();
    assert_eq!((p.min_regions, p.discovery_interval), (1, Duration::from_secs(30)));
    assert_eq!((p.source.format, p.source.repartition), (SourceFormat::DebeziumJson, Repartition::Auto));
    assert!(p.allow.is_empty() && p.deny.is_empty());
}

#[test]
fn the_template_may_not_name_a_source_or_its_topic() {
    let e = parse(&PATTERN.replace("format = \"json\"", "name = \"x\"")).unwrap_err().to_string();
    assert!(e.contains("`name` is not a template key"), "{e}");
    let e = parse(&PATTERN.replace("format = \"json\"", "topic = \"x\"")).unwrap_err().to_string();
    assert!(e.contains("`topic` is not a template key"), "{e}");
    let e = parse(&PATTERN.replace("format = \"json\"", "fromat = \"json\"")).unwrap_err().to_string();
    assert!(e.contains("fromat"), "{e}");
}

#[test]
fn discover_applies_regions_allow_deny_and_min_regions() {
    let c = parse(PATTERN).unwrap();
    let p = c.tables_pattern.as_ref().unwrap();
    let topics = [
        "us.public.orders",
        "eu.public.orders",
        "eu.public.customers",
        "ap.public.customers",
        "us.public.customers",
        "eu.public.invoices",
        "ap.public.invoices",
        "eu.public.invoice_lines", // denied
        "us.public.invoice_lines",
        "eu.public.products", // not allowed
        "us.public.products",
        "eu.public.inventory", // one region only
        "customers.merged",
        "xx.public.customers", // not a region
    ];
    let found = p.discover(&topics, &c.merge);
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["customers", "invoices", "orders"], "sorted by name");
    let customers = &found[0];
    assert!(!customers.is_default());
    assert_eq!(customers.output.topic, "customers.merged");
    assert_eq!(customers.merge.policy, Policy::FieldLww);
    let sources: Vec<(&str, &str, i64)> =
        customers.sources.iter().map(|s| (s.name.as_str(), s.topic.as_str(), s.priority)).collect();
    assert_eq!(
        sources,
        [("eu", "eu.public.customers", 2), ("us", "us.public.customers", 0), ("ap", "ap.public.customers", 0)],
        "in the order of regions"
    );
    assert!(customers.sources.iter().all(|s| s.format == SourceFormat::Json && s.repartition == Repartition::Always));
    let invoices: Vec<&str> = found[1].sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(invoices, ["eu", "ap"], "only the regions whose topic exists");
    // Discovered tables validate as single tables.
    for t in &found {
        c.for_table(t).validate("discovered").unwrap();
    }
}

#[test]
fn discover_ignores_odd_topic_names() {
    let p = parse("[tables_pattern]\nsources = \"{region}.public.{table}\"\nregions = [\"eu\"]\noutput = \"{table}.merged\"\n")
        .unwrap()
        .tables_pattern
        .unwrap();
    let merge = MergeConfig::default();
    let names = |topics: &[&str]| p.discover(topics, &merge).into_iter().map(|t| t.name).collect::<Vec<_>>();
    // A dot in the table part: not a table (`customers.dlq` would be one otherwise).
    assert!(names(&["eu.public.a.b", "eu.public.customers.dlq"]).is_empty());
    assert!(names(&["eu.public.", "eu.public", "eu.publicx", "eu-public-x", "ueu.public.x"]).is_empty());
    // "default" names the single table of the legacy form.
    assert!(names(&["eu.public.default"]).is_empty());
    assert_eq!(names(&["eu.public.a-b_C9", "eu.public.a"]), ["a", "a-b_C9"]);
    assert!(p.discover(&[], &merge).is_empty());
}

#[test]
fn discover_handles_region_after_table_and_outputs_that_look_like_sources() {
    let p = parse(
        "[tables_pattern]\nsources = \"cdc.{table}.{region}\"\nregions = [\"eu\", \"us\"]\noutput = \"cdc.{table}_all.eu\"\n",
    )
    .unwrap()
    .tables_pattern
    .unwrap();
    let merge = MergeConfig::default();
    let found = p.discover(&["cdc.orders.us", "cdc.orders.eu", "cdc.orders_all.eu"], &merge);
    // cdc.orders_all.eu is the output of orders, not the source of a table orders_all.
    assert_eq!(found.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["orders"]);
    assert_eq!(found[0].sources.iter().map(|s| s.topic.as_str()).collect::<Vec<_>>(), ["cdc.orders.eu", "cdc.orders.us"]);
    assert_eq!(found[0].output.topic, "cdc.orders_all.eu");
}

#[test]
fn globs_match_with_star_only() {
    for (glob, name, matches) in [
        ("inv*", "invoices", true),
        ("inv*", "inv", true),
        ("inv*", "xinv", false),
        ("*_log", "audit_log", true),
        ("*_log", "audit_logs", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "acb", false),
        ("*", "anything", true),
        ("orders", "orders", true),
        ("orders", "orders2", false),
        ("ab*ba", "aba", false),
    ] {
        assert_eq!(glob_matches(glob, name), matches, "{glob} ~ {name}");
    }
}

#[test]
fn legacy_sections_must_be_absent_with_tables() {
    let text = format!("{TABLES}\n[output]\ntopic = \"o\"\n[[sources]]\nname = \"x\"\ntopic = \"x\"\n");
    let p = problem_at(&text, "sources:", line_of(&text, "[[sources]]", 0));
    assert!(p.contains("must be absent with [[tables]]"), "{p}");
    let p = problem_at(&text, "output:", line_of(&text, "[output]", 0));
    assert!(p.contains("[output] must be absent"), "{p}");
    let text = format!("{PATTERN}\n[output]\ntopic = \"o\"\n");
    let p = problem_at(&text, "output:", line_of(&text, "[output]", 0));
    assert!(p.contains("must be absent with [tables_pattern]"), "{p}");
}

#[test]
fn table_names_must_be_valid_unique_and_not_default() {
    let text = TABLES.replace("name = \"orders\"", "name = \"customers\"");
    let p = problem_at(&text, "tables[1].name:", line_of(&text, "name = \"customers\"", 1));
    assert!(p.contains("duplicate table name \"customers\" (also tables[0])"), "{p}");
    let text = TABLES.replace("name = \"orders\"", "name = \"or ders\"");
    let p = problem_at(&text, "tables[1].name:", line_of(&text, "name = \"or ders\"", 0));
    assert!(p.contains("letters, digits"), "{p}");
    let text = TABLES.replace("name = \"orders\"", "name = \"default\"");
    let p = problem_at(&text, "tables[1].name:", line_of(&text, "name = \"default\"", 0));
    assert!(p.contains("reserved"), "{p}");
    let text = TABLES.replace("name = \"orders\"", "name = \"\"");
    problem_at(&text, "tables[1].name:", line_of(&text, "name = \"\"", 0));
    // Dots are allowed in explicit names.
    parse(&TABLES.replace("name = \"orders\"", "name = \"sales.orders\"")).unwrap();
}

#[test]
fn topics_are_unique_across_tables() {
    let text = TABLES.replace("topic = \"orders.merged\"", "topic = \"customers.merged\"");
    let p = problem_at(&text, "tables[1].output.topic:", line_of(&text, "topic = \"customers.merged\"", 1));
    assert!(p.contains("is also the output of table \"customers\""), "{p}");
    let text = TABLES.replace("topic = \"eu.public.orders\"", "topic = \"eu.public.customers\"");
    let p = problem_at(&text, "tables[1].sources[0].topic:", line_of(&text, "topic = \"eu.public.customers\"", 1));
    assert!(p.contains("already read by tables[0].sources[0]"), "{p}");
    let text = TABLES.replace("topic = \"eu.public.orders\"", "topic = \"customers.merged\"");
    let p = problem_at(&text, "tables[1].sources[0].topic:", line_of(&text, "topic = \"customers.merged\"", 1));
    assert!(p.contains("is also the output topic of table \"customers\""), "{p}");
}

#[test]
fn the_checks_of_a_single_table_run_for_every_table() {
    let text = TABLES.replace("topic = \"eu.public.orders\"", "topic = \"eu.public.orders\"\nsequence = \"after.v\"");
    let p = problem_at(&text, "tables[1].sources[0].sequence:", line_of(&text, "sequence = ", 0));
    assert!(p.contains("`source` block"), "{p}");
    let text = TABLES.replace("name = \"us\"", "name = \"eu\"");
    let p = problem_at(&text, "tables[0].sources[1].name:", line_of(&text, "name = \"eu\"", 1));
    assert!(p.contains("duplicate source name \"eu\" (also tables[0].sources[0])"), "{p}");
    let text = TABLES.replace("topic = \"orders.merged\"", "topic = \"\"");
    problem_at(&text, "tables[1].output.topic:", line_of(&text, "topic = \"\"", 0));
    let text = TABLES.replace("key_fields = [\"id\"]", "key_fields = [\"id\", \"id\"]");
    problem_at(&text, "tables[0].sources[1].key_fields:", line_of(&text, "key_fields", 0));
    let text = TABLES
        .replace("priority = 2", "priority = 2\nclock_field = \"a\"")
        .replace("key_fields = [\"id\"]", "clock_field = \"b\"");
    let p = problem_at(&text, "tables[0].output.clock_field:", line_of(&text, "[tables.output]", 0));
    assert!(p.contains("different columns (a, b)"), "{p}");
    let text = TABLES.replace("key_fields = [\"id\"]", "[tables.sources.transform]\ncast = { balance = \"centz\" }");
    let p = problem_at(&text, "tables[0].sources[1].transform.cast.balance", line_of(&text, "cast = ", 0));
    assert!(p.contains("(source \"us\")"), "{p}");
    let text = TABLES.replace("[[tables.sources]]\nname = \"eu\"\ntopic = \"eu.public.orders\"\nrepartition = \"never\"\n", "");
    let p = problem_at(&text, "tables[1].sources:", line_of(&text, "[[tables]]", 1));
    assert!(p.contains("at least one [[tables.sources]]"), "{p}");
}

#[test]
fn merge_problems_name_the_section_the_table_takes() {
    // The table's own [tables.merge].
    let text = TABLES.replace("source = \"eu\" }", "source = \"crm\" }");
    let p = problem_at(&text, "tables[0].merge.columns.email.source:", line_of(&text, "email = ", 0));
    assert!(p.contains("\"crm\" is not a configured source (eu, us)"), "{p}");
    let text = TABLES.replace("policy = \"field-lww\"", "policy = \"lww\"");
    problem_at(&text, "tables[0].merge.columns:", line_of(&text, "[tables.merge.columns]", 0));
    // The top-level [merge], taken by orders, names the table.
    let text = TABLES.replace(
        "[merge]\npolicy = \"lww\"\n",
        "[merge]\npolicy = \"field-lww\"\n[merge.columns]\nemail = { rule = \"owner\", source = \"us\" }\n",
    );
    let p = problem_at(&text, "merge.columns.email.source (table \"orders\"):", line_of(&text, "email = ", 0));
    assert!(p.contains("\"us\" is not a configured source (eu)"), "{p}");
    let text = TABLES.replace("[merge]\npolicy = \"lww\"\n", "[merge]\ntombstone_retention = \"0s\"\n");
    problem_at(&text, "merge.tombstone_retention:", line_of(&text, "tombstone_retention", 0));
}

#[test]
fn pattern_problems_name_their_key_and_line() {
    let cases = [
        (
            "sources = \"{region}.public.{table}\"",
            "sources = \"{region}.{region}.{table}\"",
            "tables_pattern.sources:",
            "{region} 2 times",
        ),
        ("sources = \"{region}.public.{table}\"", "sources = \"{region}.public\"", "tables_pattern.sources:", "{table} 0 times"),
        (
            "sources = \"{region}.public.{table}\"",
            "sources = \"{region}.{schema}.{table}\"",
            "tables_pattern.sources:",
            "other than",
        ),
        ("output = \"{table}.merged\"", "output = \"merged\"", "tables_pattern.output:", "{table} 0 times"),
        ("output = \"{table}.merged\"", "output = \"{region}.{table}\"", "tables_pattern.output:", "holds {region}"),
        ("regions = [\"eu\", \"us\", \"ap\"]", "regions = [\"eu\", \"us\", \"eu\"]", "tables_pattern.regions:", "listed twice"),
        (
            "regions = [\"eu\", \"us\", \"ap\"]",
            "regions = [\"eu\", \"u s\", \"ap\"]",
            "tables_pattern.regions:",
            "not a region name",
        ),
        ("min_regions = 2", "min_regions = 4", "tables_pattern.min_regions:", "between 1 and the number of regions (3)"),
        ("min_regions = 2", "min_regions = 0", "tables_pattern.min_regions:", "between 1"),
        ("deny = [\"invoice_lines\"]", "deny = [\"public.x\"]", "tables_pattern.deny:", "can never match"),
        ("allow = [\"customers\", \"orders\", \"inv*\"]", "allow = [\"inv?\"]", "tables_pattern.allow:", "can never match"),
        ("eu = 2", "eu = 2\nmars = 1", "tables_pattern.priority.mars:", "not one of the regions"),
        (
            "min_regions = 2",
            "min_regions = 2\ndiscovery_interval = \"0s\"",
            "tables_pattern.discovery_interval:",
            "greater than zero",
        ),
        (
            "format = \"json\"",
            "clock_field = \"v\"\nsequence = \"source.lsn\"",
            "tables_pattern.source.sequence:",
            "either derived or carried",
        ),
    ];
    for (from, to, key, says) in cases {
        let text = PATTERN.replace(from, to);
        let at = to.lines().last().unwrap();
        let p = problem_at(&text, key, line_of(&text, at, 0));
        assert!(p.contains(says), "{key}: {p}");
    }
    let e = parse(&PATTERN.replace("regions = [\"eu\", \"us\", \"ap\"]", "regions = []")).unwrap_err().to_string();
    assert!(e.contains("tables_pattern.regions: must list at least one region"), "{e}");
    // [merge] is checked against the regions, the sources of every pattern table.
    let text = PATTERN.replace(
        "policy = \"field-lww\"\n",
        "policy = \"field-lww\"\n[merge.columns]\nx = { rule = \"owner\", source = \"mars\" }\n",
    );
    let p = problem_at(&text, "merge.columns.x.source (tables_pattern):", line_of(&text, "x = ", 0));
    assert!(p.contains("(eu, us, ap)"), "{p}");
}

#[test]
fn an_explicit_table_may_not_share_a_topic_with_a_pattern_table() {
    let both = format!(
        "{TABLES}\n[tables_pattern]\nsources = \"{{region}}.public.{{table}}\"\nregions = [\"eu\"]\noutput = \"{{table}}.all\"\n"
    );
    // The explicit tables have the names the pattern gives their topics: they win.
    let c = parse(&both).unwrap();
    assert_eq!(c.tables().len(), 2, "the pattern's tables are not configured tables");
    let text = both.replace("name = \"orders\"", "name = \"sales\"");
    let p = problem_at(&text, "tables[1].sources[0].topic:", line_of(&text, "topic = \"eu.public.orders\"", 0));
    assert!(p.contains("also a source of table \"orders\" found by [tables_pattern]"), "{p}");
    // Denied in the pattern: no overlap.
    parse(
        &both
            .replace("name = \"orders\"", "name = \"sales\"")
            .replace("output = \"{table}.all\"", "output = \"{table}.all\"\ndeny = [\"orders\"]"),
    )
    .unwrap();
}

#[test]
fn at_most_200_tables() {
    let table = |i: usize| {
        format!("[[tables]]\nname = \"t{i}\"\n[tables.output]\ntopic = \"o{i}\"\n[[tables.sources]]\nname = \"eu\"\ntopic = \"s{i}\"\n")
    };
    let many = |n: usize| (0..n).map(table).collect::<String>();
    parse(&many(MAX_TABLES)).unwrap();
    let e = parse(&many(MAX_TABLES + 1)).unwrap_err().to_string();
    assert!(e.contains("tables: 201 tables; one process merges at most 200"), "{e}");
}

#[test]
fn environment_overrides_keep_working_and_tables_are_refused() {
    let c = parse_env(TABLES, &[("TRIBUTARY_MERGE__POLICY", "source-priority"), ("TRIBUTARY_KAFKA__GROUP_ID", "h")]).unwrap();
    assert_eq!(c.kafka.group_id, "h");
    assert_eq!(c.tables()[1].merge.policy, Policy::SourcePriority, "orders takes [merge]");
    assert_eq!(c.tables()[0].merge.policy, Policy::FieldLww, "customers has its own");
    let c = parse_env(PATTERN, &[("TRIBUTARY_TABLES_PATTERN__MIN_REGIONS", "3")]).unwrap();
    assert_eq!(c.tables_pattern.unwrap().min_regions, 3);
    let e = parse_env(TABLES, &[("TRIBUTARY_TABLES__ORDERS__NAME", "x")]).unwrap_err().to_string();
    assert!(e.contains("TRIBUTARY_TABLES__ORDERS__NAME") && e.contains("cannot be set from the environment"), "{e}");
}

#[test]
fn the_resolved_configuration_reads_back_the_same() {
    for text in [TABLES, PATTERN] {
        let c = parse(text).unwrap();
        let printed = c.to_redacted_toml();
        let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again.to_redacted_toml(), printed);
        assert!(!printed.contains("deleted_field") || text == PATTERN, "{printed}");
    }
    let printed = parse(PATTERN).unwrap().to_redacted_toml();
    assert!(printed.contains("[tables_pattern.source]") && !printed.contains("name = \"\""), "{printed}");
}
