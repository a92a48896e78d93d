use super::*;
use crate::merge::{ColumnRule, DeletePolicy, Policy};

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
fn problems_name_the_line_of_their_key() {
    let text =
        format!("{BASE}\n[[sources]]\nname = \"eu\"\ntopic = \"x\"\n[sources.transform]\ncast = {{ balance = \"centz\" }}\n");
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let name_line = text.lines().enumerate().filter(|(_, l)| l.starts_with("name = \"eu\"")).last().unwrap().0 + 1;
    match parse(&text, &[]).unwrap_err() {
        ConfigError::Invalid { problems, .. } => {
            let name = problems.iter().find(|p| p.starts_with("sources[2].name:")).expect("the duplicate name");
            assert!(name.ends_with(&format!("(line {name_line})")), "{problems:?}");
            let cast = problems.iter().find(|p| p.starts_with("sources[2].transform.cast.balance")).expect("the cast");
            assert!(cast.ends_with(&format!("(line {})", line_of("cast = "))), "{problems:?}");
        }
        other => panic!("{other}"),
    }
    // A key set by an environment override has no line.
    let e = parse(BASE, &[("TRIBUTARY_OUTPUT__TOPIC", "")]).unwrap_err().to_string();
    assert!(e.contains("output.topic: must not be empty") && !e.contains("must not be empty (line"), "{e}");
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
    let e = parse(&BASE.replace("tombstone_retention = \"2d\"", "tombstone_retention = \"0s\""), &[]).unwrap_err().to_string();
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
    let text =
        BASE.replace("priority = 2", "clock_field = \"_vv\"").replace("sequence = \"source.lsn\"", "clock_field = \"vclock\"");
    let e = parse(&text, &[]).unwrap_err().to_string();
    assert!(e.contains("output.clock_field"), "{e}");
    let text = text.replace("topic = \"customers.merged\"", "topic = \"customers.merged\"\nclock_field = \"_vv\"");
    assert_eq!(parse(&text, &[]).unwrap().output_clock_field().as_deref(), Some("_vv"));
}

#[test]
fn standby_replicas_default_to_none_and_are_bounded() {
    assert_eq!(parse(BASE, &[]).unwrap().runtime.standby_replicas, 0);
    let c = parse(&format!("{BASE}\n[runtime]\nstandby_replicas = 2\n"), &[]).unwrap();
    assert_eq!(c.runtime.standby_replicas, 2);
    let c = parse(BASE, &[("TRIBUTARY_RUNTIME__STANDBY_REPLICAS", "1")]).unwrap();
    assert_eq!(c.runtime.standby_replicas, 1);
    let e = parse(&format!("{BASE}\n[runtime]\nstandby_replicas = 9\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("runtime.standby_replicas: 9 is more than 8"), "{e}");
}
