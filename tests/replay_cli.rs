//! `tributary replay` and `check-config`, run as a user runs them.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

fn example(file: &str) -> std::path::PathBuf {
    root().join("examples/two-regions").join(file)
}

/// Replays the README's two-region example with env overrides; returns the
/// compacted view (last record per key), all output records and stderr.
fn replay_example(env: &[(&str, &str)]) -> (std::collections::BTreeMap<String, Value>, Vec<Value>, String) {
    let mut cmd = tributary();
    cmd.args(["replay", "--config"]).arg(example("tributary.toml")).arg("--input").arg(example("dump.jsonl"));
    cmd.args(["--output", "-"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "replay failed: {stderr}");
    let records = json_lines(&String::from_utf8(out.stdout).unwrap());
    (last_per_key(&records), records, stderr)
}

fn payload(r: &Value) -> Value {
    match r["payload"].as_str() {
        Some(s) => serde_json::from_str(s).unwrap(),
        None => Value::Null,
    }
}

#[test]
fn readme_worked_example_under_each_policy() {
    let ada = r#"{"id":1}"#;
    let bob = r#"{"id":2}"#;

    let (view, records, stderr) = replay_example(&[]);
    assert_eq!(payload(&view[ada]), json!({"id":1,"name":"Ada","email":"ada@old.example","city":"London"}));
    assert_eq!(header(&view[ada], "tributary.winner").as_deref(), Some("us"));
    assert_eq!(header(&view[ada], "tributary.conflict").as_deref(), Some("true"));
    assert_eq!(header(&view[ada], "tributary.siblings").as_deref(), Some("2"));
    assert_eq!(header(&view[ada], "tributary.vv").as_deref(), Some(r#"{"eu":3,"us":3}"#));
    assert_eq!(payload(&view[bob]), json!({"id":2,"name":"Bob","email":"bob@example","tier":"gold"}));
    assert_eq!(header(&view[bob], "tributary.winner").as_deref(), Some("eu"));
    // Every state-changing event emitted exactly one record, in file order,
    // on the input partition with consecutive offsets.
    assert_eq!(records.len(), 8);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["topic"], "customers.merged");
        assert_eq!(r["partition"], 0);
        assert_eq!(r["offset"], i as i64);
    }
    // The first record: only eu has written, no conflict.
    assert_eq!(header(&records[0], "tributary.conflict").as_deref(), Some("false"));
    assert_eq!(header(&records[0], "tributary.vv").as_deref(), Some(r#"{"eu":1}"#));
    assert!(
        stderr.contains("replay: read=10 accepted=8 stale=0 duplicates=0 ignored=1 conflicts=6 dead_lettered=1 output=8 keys=2"),
        "{stderr}"
    );
    assert!(stderr.contains("dump.jsonl:10: dead letter: topic eu.public.customers partition 0 offset 4"), "{stderr}");

    let (view, _, _) = replay_example(&[("TRIBUTARY_MERGE__POLICY", "source-priority")]);
    assert_eq!(payload(&view[ada]), json!({"id":1,"name":"Ada","email":"ada@new.example","city":"Paris"}));
    assert_eq!(header(&view[ada], "tributary.winner").as_deref(), Some("eu"));

    let (view, _, _) = replay_example(&[("TRIBUTARY_MERGE__POLICY", "field-lww")]);
    assert_eq!(payload(&view[ada]), json!({"id":1,"name":"Ada","email":"ada@new.example","city":"London"}));
    assert_eq!(header(&view[ada], "tributary.winner"), None);

    let (view, _, _) = replay_example(&[("TRIBUTARY_MERGE__DELETES", "delete-wins")]);
    assert_eq!(view[bob]["payload"], Value::Null, "a tombstone");
    assert_eq!(header(&view[bob], "tributary.winner").as_deref(), Some("us"));

    let (view, _, _) = replay_example(&[("TRIBUTARY_MERGE__DELETES", "update-wins")]);
    assert_eq!(payload(&view[bob])["tier"], "gold");
}

#[test]
fn bad_records_and_malformed_lines_go_to_dead_letters_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(example("dump.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(2, "this is not json");
    lines.insert(4, r#"{"topic":"unknown.topic","partition":0,"offset":0,"key":"{\"id\":1}","payload":"{}"}"#);
    let dump = write(dir.path(), "dump.jsonl", &(lines.join("\n") + "\n"));
    let dl = dir.path().join("dead.jsonl");
    let out_file = dir.path().join("out.jsonl");
    let out = run(tributary()
        .args(["replay", "-c"])
        .arg(example("tributary.toml"))
        .arg("-i")
        .arg(&dump)
        .arg("-o")
        .arg(&out_file)
        .arg("--dead-letters")
        .arg(&dl));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("dump.jsonl:3: not a kcat -J record"), "{stderr}");
    assert!(stderr.contains("dead_lettered=3"), "{stderr}");
    let dead = json_lines(&std::fs::read_to_string(&dl).unwrap());
    assert_eq!(dead.len(), 3);
    assert_eq!(dead[0]["line"], 3);
    assert_eq!(dead[0]["raw"], "this is not json");
    assert_eq!(dead[1]["topic"], "unknown.topic");
    assert_eq!(dead[1]["reason"], "unknown_topic");
    assert_eq!(dead[2]["offset"], 4);
    assert_eq!(dead[2]["reason"], "bad_value");
    assert!(dead[2]["error"].as_str().unwrap().contains("partition 0 offset 4"));
    // Nothing else was lost: the same output as the clean dump.
    let records = json_lines(&std::fs::read_to_string(&out_file).unwrap());
    assert_eq!(records.len(), 8);
}

#[test]
fn replay_streams_stdin_to_stdout() {
    let dump = std::fs::read(example("dump.jsonl")).unwrap();
    let mut child = tributary()
        .args(["replay", "-c"])
        .arg(example("tributary.toml"))
        .args(["-i", "-", "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&dump).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(json_lines(&String::from_utf8(out.stdout).unwrap()).len(), 8);
    assert!(String::from_utf8_lossy(&out.stderr).contains("<stdin>:10: dead letter"));
}

#[test]
fn replay_output_is_a_valid_replay_input_shape() {
    // kcat -J field names and types, so the output can be diffed with a
    // dump of the live topic (and fed to tools that read kcat dumps).
    let (_, records, _) = replay_example(&[]);
    for r in &records {
        let o = r.as_object().unwrap();
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        for k in ["topic", "partition", "offset", "tstype", "ts", "broker", "headers", "key", "payload"] {
            assert!(keys.contains(&k), "missing {k} in {r}");
        }
        assert!(r["headers"].as_array().unwrap().len() % 2 == 0);
    }
}

#[test]
fn check_config_prints_resolved_config_or_every_problem() {
    let out =
        run(tributary().args(["check-config", "-c"]).arg(example("tributary.toml")).env("TRIBUTARY_MERGE__POLICY", "field-lww"));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("policy = \"field-lww\""), "{text}");
    assert!(text.contains("commit_interval = \"100ms\""), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "[output]\ntopic = \"o\"\n[[sources]]\nname = \"a\"\ntopic = \"t\"\n[[sources]]\nname = \"a\"\ntopic = \"t\"\n",
    );
    let out = run(tributary().args(["check-config", "-c"]).arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("sources[1].name: duplicate source name \"a\""), "{err}");
    assert!(err.contains("sources[1].topic"), "{err}");

    let typo = write(dir.path(), "typo.toml", "[output]\ntopic = \"o\"\n[merge]\npolicy = \"lww\"\nretention = \"1d\"\n");
    let out = run(tributary().args(["check-config", "-c"]).arg(&typo));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown field `retention`") && err.contains("line 5"), "{err}");

    // A file for `tributary sink` alone (no [[sources]]) checks as that.
    let sink = write(
        dir.path(),
        "sink.toml",
        "[sink]\ntopic = \"customers.merged\"\nurl = \"/tmp/c.sqlite\"\ntable = \"customers\"\ncolumns = [\"id bigint\", \"name text\"]\nkey_columns = [\"id\"]\n",
    );
    let out = run(tributary().args(["check-config", "-c"]).arg(&sink));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("a sink-only configuration"), "{err}");
    assert!(String::from_utf8(out.stdout).unwrap().contains("table = \"customers\""));
    // Without [sink] it is still a processor config missing its sources.
    let neither = write(dir.path(), "neither.toml", "[output]\ntopic = \"o\"\n");
    let out = run(tributary().args(["check-config", "-c"]).arg(&neither));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("at least one [[sources]] entry is required"));
}

/// The text between the first pair of backticks in a README table cell.
fn code_span(cell: &str) -> Option<&str> {
    let (_, rest) = cell.split_once('`')?;
    rest.split_once('`').map(|(code, _)| code)
}

/// Replays `examples/aggregation/` with env overrides; returns the
/// compacted view, all output records and stderr.
fn replay_aggregation(env: &[(&str, &str)]) -> (std::collections::BTreeMap<String, Value>, Vec<Value>, String) {
    let dir = root().join("examples/aggregation");
    let mut cmd = tributary();
    cmd.args(["replay", "--config"]).arg(dir.join("tributary.toml")).arg("--input").arg(dir.join("dump.jsonl"));
    cmd.args(["--output", "-"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "replay failed: {stderr}");
    let records = json_lines(&String::from_utf8(out.stdout).unwrap());
    (last_per_key(&records), records, stderr)
}

#[test]
fn aggregation_example_readme_figures() {
    // The figures are read from the example's README, so the test follows the text.
    let readme = std::fs::read_to_string(root().join("examples/aggregation/README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let cells = |line: &str| -> Vec<String> { line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect() };

    // "What the compacted output holds": one row per column (or header), one
    // column per key; `—` is a column the row does not have.
    let start = lines.iter().position(|l| l.starts_with("| column | rule | Ada")).expect("the output table");
    let keys: Vec<String> =
        cells(lines[start])[2..].iter().map(|c| code_span(c).expect("a key in the header").to_string()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let mut rows: Vec<serde_json::Map<String, Value>> = vec![Default::default(); keys.len()];
    let mut headers: Vec<Vec<(String, String)>> = vec![Vec::new(); keys.len()];
    for line in lines[start + 2..].iter().take_while(|l| l.starts_with('|')) {
        let cells = cells(line);
        let name = code_span(&cells[0]).expect("a column name").to_string();
        for (i, cell) in cells[2..].iter().enumerate() {
            let Some(value) = code_span(cell) else {
                assert_eq!(cell, "—", "{line}");
                continue;
            };
            if cells[1] == "header" {
                headers[i].push((name.clone(), value.to_string()));
            } else {
                rows[i].insert(name.clone(), serde_json::from_str(value).unwrap_or_else(|e| panic!("{value}: {e}")));
            }
        }
    }

    let (view, records, stderr) = replay_aggregation(&[]);
    assert_eq!(view.keys().collect::<Vec<_>>(), keys.iter().collect::<Vec<_>>());
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(payload(&view[key]), Value::Object(rows[i].clone()), "the row of {key}");
        assert_eq!(headers[i].len(), 3, "vv, conflict and siblings of {key}");
        for (name, value) in &headers[i] {
            assert_eq!(header(&view[key], name).as_deref(), Some(value.as_str()), "{name} of {key}");
        }
    }

    // The summary line, and the counts it states against the records.
    let summary = lines.iter().map(|l| l.trim()).find(|l| l.starts_with("replay: read=")).expect("the summary line");
    assert!(stderr.contains(summary), "README: {summary}\nstderr: {stderr}");
    let count = |field: &str| -> usize {
        let prefix = format!("{field}=");
        let figure = summary.split(' ').find_map(|w| w.strip_prefix(prefix.as_str())).expect("a summary field");
        figure.parse().unwrap()
    };
    assert_eq!(records.len(), count("output"));
    assert_eq!(view.len(), count("keys"));
    let dump = std::fs::read_to_string(root().join("examples/aggregation/dump.jsonl")).unwrap();
    assert_eq!(dump.lines().count(), count("read"));
    assert!(readme.contains(&format!("({} records", count("read"))), "the file table's record count");
    // Conflicts: every record except each key's first.
    let mut seen = std::collections::BTreeSet::new();
    for r in &records {
        let first = seen.insert(r["key"].as_str().unwrap().to_string());
        let expected = if first { "false" } else { "true" };
        assert_eq!(header(r, "tributary.conflict").as_deref(), Some(expected), "{r}");
    }
    assert_eq!(records.len() - seen.len(), count("conflicts"));
    // Each event but the ignored tombstone (event 17) and the dead letter
    // (event 23) emitted one record, so record i is event i + 1 up to event 16.
    assert_eq!(records.len(), count("accepted"));
    let tombstones = json_lines(&dump).iter().filter(|r| r["payload"].is_null()).count();
    assert_eq!(tombstones, count("ignored"));
    assert_eq!(count("read"), count("accepted") + count("ignored") + count("dead_lettered"));
    // The dead letter: the line the README shows, up to its first elision.
    let dead = lines.iter().map(|l| l.trim()).find(|l| l.contains(": dead letter: ")).expect("the dead-letter line");
    let shown = dead.split(" (…)").next().unwrap();
    assert!(stderr.contains(shown), "README: {shown}\nstderr: {stderr}");
    assert!(stderr.contains("REPLICA IDENTITY FULL"), "{stderr}");
    assert_eq!(count("dead_lettered"), 1);
    let mut firsts: Vec<usize> = keys.iter().map(|k| records.iter().position(|r| r["key"] == k.as_str()).unwrap() + 1).collect();
    firsts.sort();
    assert!(firsts.iter().all(|&e| e < 17), "{firsts:?}");
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let events = flat.split("except each key's first (events ").nth(1).expect("the first events").split(')').next();
    assert_eq!(events, Some(format!("{}, {} and {}", firsts[0], firsts[1], firsts[2]).as_str()));

    // Cleo is a tombstone under each delete policy the README names for it.
    let cleo = &keys[2];
    let overrides: Vec<&str> =
        readme.split("`TRIBUTARY_MERGE__DELETES=").skip(1).map(|rest| rest.split('`').next().unwrap()).collect();
    assert_eq!(overrides, ["lww", "delete-wins"]);
    for deletes in overrides {
        let (view, _, _) = replay_aggregation(&[("TRIBUTARY_MERGE__DELETES", deletes)]);
        assert_eq!(view[cleo]["payload"], Value::Null, "Cleo under deletes = {deletes}");
    }
}

fn legacy(file: &str) -> std::path::PathBuf {
    root().join("examples/legacy-erp").join(file)
}

/// The indented blocks (4 spaces) of the legacy-erp walk-through, de-indented.
fn legacy_readme_blocks() -> Vec<String> {
    let text = std::fs::read_to_string(legacy("README.md")).unwrap();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().chain([""]) {
        match line.strip_prefix("    ") {
            Some(code) => current.push(code),
            None if line.is_empty() && !current.is_empty() => {
                blocks.push(current.join("\n"));
                current.clear();
            }
            None => current.clear(),
        }
    }
    blocks
}

#[test]
fn legacy_erp_replay_figures() {
    let dir = tempfile::tempdir().unwrap();
    let dl = dir.path().join("dead.jsonl");
    let out = run(tributary()
        .args(["replay", "-c"])
        .arg(legacy("tributary.toml"))
        .arg("-i")
        .arg(legacy("dump.jsonl"))
        .args(["-o", "-", "--dead-letters"])
        .arg(&dl));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let blocks = legacy_readme_blocks();
    let summary = "replay: read=11 accepted=7 stale=0 duplicates=0 ignored=0 conflicts=2 dead_lettered=2 output=7 keys=3\nreplay: source erp where: matched=5 dropped=2";
    assert!(blocks.iter().any(|b| b == summary), "the README shows the summary");
    assert!(stderr.contains(summary), "{stderr}");
    let records = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(records.len(), 7);
    let row = |i: usize| payload(&records[i]);
    let h = |i: usize, name: &str| header(&records[i], name).unwrap();
    // 1. eu creates Ada.
    assert_eq!((records[0]["key"].as_str(), h(0, "tributary.winner").as_str()), (Some(r#"{"id":1}"#), "eu"));
    // 2. us creates Bob: the timestamp in the one form, credit_score dropped.
    assert_eq!(
        row(1),
        json!({"id":2,"name":"Bob Stone","email":"bob@us.example","status":"active","balance":10.5,
               "updated_at":"2024-03-01T10:00:00.000000Z","region":"us"})
    );
    // 3. The ERP's Ada: a conflict erp wins under lww.
    assert_eq!(
        row(2),
        json!({"id":1,"name":"Ada Lovelace","email":"ada@erp.example","status":"inactive","balance":2500.75,
               "updated_at":"2024-03-01T11:00:00.000000Z","region":"erp"})
    );
    assert_eq!(
        (h(2, "tributary.siblings"), h(2, "tributary.vv"), h(2, "tributary.winner")),
        ("2".into(), r#"{"erp":1,"eu":1}"#.into(), "erp".into())
    );
    // 4. Cleo, only in the ERP.
    assert_eq!(records[3]["key"], r#"{"id":3}"#);
    assert_eq!(row(3)["name"], "Cleo Park");
    // 9. Bob's new e-mail.
    assert_eq!(row(4)["email"], "bob@new.example");
    // 10. eu's Ada wins the conflict again.
    assert_eq!((h(5, "tributary.vv"), h(5, "tributary.winner")), (r#"{"erp":1,"eu":2}"#.into(), "eu".into()));
    assert_eq!(
        (row(5)["email"].as_str(), row(5)["status"].as_str(), row(5)["region"].as_str()),
        (Some("ada@lovelace.example"), Some("active"), Some("eu"))
    );
    // 11. The ERP's tombstone deletes Cleo under the transformed key.
    assert_eq!((records[6]["key"].as_str(), &records[6]["payload"]), (Some(r#"{"id":3}"#), &Value::Null));
    // The final table: Ada from eu, Bob from us, Cleo deleted.
    let view = last_per_key(&records);
    assert_eq!(view.len(), 3);
    // 7. and 8.: dead letters with reason transform, naming source, column and value.
    let dead = json_lines(&std::fs::read_to_string(&dl).unwrap());
    let errors: Vec<(&str, &str)> = dead.iter().map(|d| (d["reason"].as_str().unwrap(), d["error"].as_str().unwrap())).collect();
    assert_eq!(
        errors,
        [
            ("transform", "topic erp.customers partition 0 offset 4: transform of source `erp`: column `balance` value \"12,50\": cannot cast to cents: not a whole number"),
            ("transform", "topic erp.customers partition 0 offset 5: transform of source `erp`: column `status` value \"X\": no entry in the code table (known: A, I)"),
        ]
    );
}

#[test]
fn transform_test_prints_columns_side_by_side_and_dead_letter_reasons() {
    let out = run(tributary()
        .args(["transform-test", "-c"])
        .arg(legacy("tributary.toml"))
        .args(["--source", "erp", "-i"])
        .arg(legacy("dump.jsonl")));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "a record would be a dead letter: {stderr}");
    let blocks = legacy_readme_blocks();
    // Every printed block of the walk-through appears as shown.
    let shown: Vec<&String> = blocks.iter().filter(|b| b.starts_with("record ")).collect();
    assert_eq!(shown.len(), 2, "{blocks:#?}");
    for block in shown {
        assert!(stdout.contains(block.as_str()), "missing from the output:\n{block}\n--- output:\n{stdout}");
    }
    let summary = "transform-test: source=erp records=7 transformed=3 filtered=2 tombstones=0 dead_letters=2 other_topics=4";
    assert!(blocks.iter().any(|b| b == summary));
    assert!(stderr.contains(summary), "{stderr}");
    assert_eq!(stdout.matches("  dropped by where\n").count(), 2, "{stdout}");
    assert!(stdout.contains("record 7 (line 11, topic erp.customers partition 0 offset 6):\n  delete, key {\"CUST_NO\":\"000003\"} -> {\"id\":3}\n"), "{stdout}");

    // A source whose records all map: exit 0; its before images are shown too.
    let out = run(tributary()
        .args(["transform-test", "-c"])
        .arg(legacy("tributary.toml"))
        .args(["--source", "us", "-i"])
        .arg(legacy("dump.jsonl")));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("  before:\n"), "{stdout}");
    assert_eq!(stdout.matches("credit_score = 710").count(), 2, "after of record 1 and before of record 2: {stdout}");
    assert!(stdout.contains("|  (dropped)"), "{stdout}");

    // An unknown source is an error naming the configured ones.
    let out = run(tributary()
        .args(["transform-test", "-c"])
        .arg(legacy("tributary.toml"))
        .args(["--source", "nope", "-i"])
        .arg(legacy("dump.jsonl")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--source nope: no such source (configured: eu, us, erp)"));
}

#[test]
fn check_config_names_the_source_and_key_of_a_bad_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(legacy("tributary.toml")).unwrap().replace("balance = \"cents\"", "balance = \"money\"");
    let cfg = write(dir.path(), "bad.toml", &text);
    let out = run(tributary().args(["check-config", "-c"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sources[2].transform.cast.balance (source \"erp\"): unknown cast \"money\""), "{stderr}");
    // The valid file prints back with its mappings.
    let out = run(tributary().args(["check-config", "-c"]).arg(legacy("tributary.toml")));
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("[sources.transform.map.status]") && printed.contains("[sources.where]"), "{printed}");
}
