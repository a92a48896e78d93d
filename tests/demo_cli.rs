//! `tributary demo`, run as a newcomer runs it: no broker, no database.

use std::process::Command;
use std::time::{Duration, Instant};

/// The number in front of `label` on the report line that starts with `line`.
fn number_before(report: &str, line: &str, label: &str) -> u64 {
    let l = report.lines().find(|l| l.trim_start().starts_with(line)).unwrap_or_else(|| panic!("no line {line:?} in:\n{report}"));
    let head = l.split(label).next().unwrap();
    head.split(|c: char| !c.is_ascii_digit())
        .rfind(|w| !w.is_empty())
        .unwrap_or_else(|| panic!("no number before {label:?} in {l:?}"))
        .parse()
        .unwrap()
}

#[test]
fn demo_runs_end_to_end_and_the_table_matches_the_merged_view() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["--log-level", "warn", "demo", "--duration", "6", "--rate", "200", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "demo failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(took < Duration::from_secs(30), "the demo took {took:?}");

    // The report: events per region, conflicts and their resolution, the file.
    for region in ["eu", "us", "ap"] {
        assert!(number_before(&stdout, region, "events") > 0, "{stdout}");
    }
    assert!(stdout.contains("exactly-once cannot be shown"), "{stdout}");
    let conflicts = number_before(&stdout, "conflicts:", "events left concurrent");
    assert!(conflicts > 0, "concurrent edits should conflict:\n{stdout}");
    assert!(stdout.contains("resolved by lww: winners "), "{stdout}");
    let sqlite = std::fs::canonicalize(dir.path()).unwrap().join("tributary-demo.sqlite");
    assert!(stdout.contains(&format!("SQLite file: {}", sqlite.display())), "{stdout}");
    assert!(stdout.contains("/metrics"), "{stdout}");
    assert!(stdout.contains("--policy field-lww"), "{stdout}");
    assert!(!stdout.contains("warning:"), "{stdout}");

    // The table holds exactly the live keys of the merged view, each with its clock.
    let live = number_before(&stdout, "Merged view", "live keys");
    assert!(live > 0, "{stdout}");
    let conn = rusqlite::Connection::open(&sqlite).unwrap();
    let rows: u64 = conn.query_row("SELECT count(*) FROM customers", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, live, "rows in {} vs live keys in the report:\n{stdout}", sqlite.display());
    let mut stmt = conn.prepare("SELECT id, _vv FROM customers").unwrap();
    let vvs: Vec<(i64, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    for (id, vv) in &vvs {
        let vv = vv.as_deref().unwrap_or_else(|| panic!("row {id} has no _vv"));
        let clock: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(vv).unwrap_or_else(|e| panic!("row {id}: _vv {vv:?}: {e}"));
        assert!(!clock.is_empty(), "row {id} has an empty _vv");
    }
}

#[test]
fn demo_aggregation_explains_every_column_and_matches_replay() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["--log-level", "warn", "demo", "--scenario", "aggregation", "--duration", "4", "--rate", "200", "--dir"])
        .arg(dir.path())
        .env_remove("TRIBUTARY_MERGE__POLICY")
        .env_remove("TRIBUTARY_MERGE__DELETES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "demo failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("warning:"), "{stdout}");

    // Every system wrote; the processor consumed every record (events plus the CRM's tombstones).
    let mut records = 0;
    for system in ["crm", "billing", "eu", "us"] {
        let events = number_before(&stdout, &format!("{system} "), "events");
        assert!(events > 0, "{system}:\n{stdout}");
        records += events + number_before(&stdout, &format!("{system} "), "deletes (");
    }
    assert_eq!(number_before(&stdout, "consumed", "records"), records, "{stdout}");
    assert!(number_before(&stdout, "conflicts:", "events left concurrent") > 0, "{stdout}");

    // Each rule's reason, in words, for the columns it decided.
    for why in [
        "the owner's latest write",
        "largest value written",
        "smallest value written",
        "union of the additions no removal had seen",
        "latest write (lww order)",
    ] {
        assert!(stdout.contains(why), "{why:?} missing:\n{stdout}");
    }
    // Billing's own customers (101-120) have no CRM email: billing's stands in.
    assert!(stdout.contains("latest write of any source: the owner has written none"), "{stdout}");

    // The table holds the live keys, and replay of the sources agrees with the output and the table.
    let keys = number_before(&stdout, "Merged view", "keys,");
    let live = number_before(&stdout, "Merged view", "live keys");
    let sqlite = std::fs::canonicalize(dir.path()).unwrap().join("tributary-demo.sqlite");
    let conn = rusqlite::Connection::open(&sqlite).unwrap();
    let rows: u64 = conn.query_row("SELECT count(*) FROM customers", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, live, "{stdout}");
    let check = stdout.lines().find(|l| l.starts_with("Replay check:")).unwrap_or_else(|| panic!("no replay check:\n{stdout}"));
    assert!(check.ends_with(&format!("match replay for all {keys} keys")), "{check}");
    assert_eq!(number_before(&stdout, "Replay check:", "source records"), records, "{stdout}");
    // loyalty_points (rule counter): every system's own points add up, in every row.
    let counted =
        stdout.lines().find(|l| l.starts_with("Counter check:")).unwrap_or_else(|| panic!("no counter check:\n{stdout}"));
    assert!(counted.ends_with("the sum of what each system's own database holds"), "{counted}");
    let with_points: u64 =
        conn.query_row("SELECT count(*) FROM customers WHERE loyalty_points IS NOT NULL", [], |r| r.get(0)).unwrap();
    assert!(with_points > 0);
    assert_eq!(number_before(&stdout, "Counter check:", "rows equals"), with_points, "{stdout}");

    // What the rules promise, row by row: the owners' emails, sorted unions.
    let mut stmt = conn.prepare("SELECT id, email, tags FROM customers").unwrap();
    let table: Vec<(i64, Option<String>, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    for (id, email, tags) in &table {
        if *id > 100 {
            assert!(email.as_deref().is_none_or(|e| e.ends_with("@billing.example")), "customer {id}: {email:?}");
        }
        if let Some(tags) = tags {
            let tags: Vec<String> = serde_json::from_str(tags).unwrap_or_else(|e| panic!("customer {id}: tags {tags}: {e}"));
            assert!(tags.windows(2).all(|w| w[0] < w[1]), "customer {id}: tags {tags:?} not a sorted set");
        }
    }
    assert!(table.iter().any(|(id, e, _)| *id <= 100 && e.as_deref().is_some_and(|e| e.ends_with("@crm.example"))));
}

#[test]
fn demo_aggregation_refuses_another_policy() {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["demo", "--scenario", "aggregation", "--policy", "lww", "--duration", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("field-lww") && stderr.contains("--scenario regions"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["demo", "--duration", "1"])
        .env("TRIBUTARY_MERGE__POLICY", "newest")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TRIBUTARY_MERGE__POLICY=\"newest\""), "{stderr}");
}
