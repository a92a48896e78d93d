//! The whole pipeline with real components: two regional PostgreSQL
//! clusters (logical decoding) → Debezium 3.6.1 under Kafka Connect
//! standalone → Kafka 4.4 → `tributary run` → `tributary sink` → a target
//! PostgreSQL table. Concurrent edits in the regions must converge in the
//! target to what the merge semantics say (`tributary replay` over the very
//! records Debezium produced), and the conflicts must show in the metrics and
//! the audit topic.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::{self, create_topic, read_topic, unique, Processor};
use serde_json::Value;
use tributary::config::Config;

fn script(path: &str) -> Command {
    Command::new(common::root().join(path))
}

/// Runs a script, returns (first line, last line) of its stdout.
fn run_script(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("script runs");
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (lines.first().unwrap().to_string(), lines.last().unwrap().to_string())
}

/// A throw-away PostgreSQL cluster, stopped on drop.
struct Pg {
    dir: String,
    url: String,
}

impl Pg {
    fn start(logical: bool) -> Pg {
        let mut cmd = script("scripts/postgres/pg");
        cmd.arg("start");
        if logical {
            cmd.arg("--logical");
        }
        let (dir, url) = run_script(&mut cmd);
        Pg { dir, url }
    }

    fn sql(&self, sql: &str) -> String {
        let out =
            script("scripts/postgres/pg").args(["psql", &self.dir, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]).output().unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = script("scripts/postgres/pg").args(["stop", &self.dir, "--rm"]).output();
    }
}

struct Connect {
    dir: String,
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = script("scripts/connect/connect").args(["stop", &self.dir, "--rm"]).output();
    }
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn regions_through_debezium_tributary_and_sink_converge_in_postgres() {
    let run_id = unique("cdc").replace('-', "_");
    let regions = ["eu", "us"];
    let eu = Pg::start(true);
    let us = Pg::start(true);
    let target = Pg::start(false);
    let dbs = [&eu, &us];
    for db in dbs {
        db.sql("CREATE TABLE customers (id int PRIMARY KEY, name text, email text, city text); ALTER TABLE customers REPLICA IDENTITY FULL;");
    }
    let work = tempfile::tempdir().unwrap();
    let mut connectors = Vec::new();
    let mut topics = Vec::new();
    for (region, db) in regions.iter().zip(dbs) {
        let prefix = format!("{run_id}_{region}");
        let topic = format!("{prefix}.public.customers");
        create_topic(&topic, 3, &[]);
        topics.push(topic);
        let out = script("scripts/connect/connect")
            .args(["pg-connector", &format!("{run_id}_{region}"), &db.url, &prefix, "public.customers"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let file = work.path().join(format!("{region}.properties"));
        std::fs::write(&file, &out.stdout).unwrap();
        connectors.push(format!("{region}={}", file.display()));
    }
    let connect_dir = format!("/tmp/{run_id}-connect");
    let mut cmd = script("scripts/connect/connect");
    cmd.args(["start", &connect_dir, "--bootstrap", &kafka::bootstrap()]);
    for c in &connectors {
        cmd.args(["--connector", c]);
    }
    run_script(&mut cmd);
    let _connect = Connect { dir: connect_dir };

    // Tributary: merge the two regions, sink into the target database.
    let group = format!("{run_id}-merge");
    let output = format!("{run_id}.merged");
    let config_text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
[output]
topic = "{output}"
[merge]
policy = "field-lww"
deletes = "lww"
[runtime]
state_dir = "{state}"
[admin]
listen = "127.0.0.1:0"
[[sources]]
name = "eu"
topic = "{eu_topic}"
[[sources]]
name = "us"
topic = "{us_topic}"
[sink]
target = "postgres"
url = "{target_url}"
table = "customers"
columns = ["id integer", "name text", "email text", "city text"]
key_columns = ["id"]
vv_column = "merged_vv"
batch_size = 100
"#,
        bootstrap = kafka::bootstrap(),
        state = work.path().join("state").display(),
        eu_topic = topics[0],
        us_topic = topics[1],
        target_url = target.url,
    );
    let config_path: PathBuf = work.path().join("tributary.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let processor = Processor::start_with(&config_path, &work.path().join("run.log"), "run");
    wait_until("the output topic", Duration::from_secs(60), || topic_exists(&output));
    let sink = Processor::start_with(&config_path, &work.path().join("sink.log"), "sink");

    // Both regions start with the same customers (as replication would
    // leave them), then edit them concurrently.
    for db in dbs {
        db.sql("INSERT INTO customers SELECT g, 'name' || g, 'user' || g || '@old', 'Oslo' FROM generate_series(1, 30) g;");
    }
    eu.sql("UPDATE customers SET email = 'user' || id || '@eu' WHERE id <= 15;");
    us.sql("UPDATE customers SET city = 'Rome' WHERE id BETWEEN 10 AND 25;");
    us.sql("DELETE FROM customers WHERE id IN (28, 29);");
    eu.sql("UPDATE customers SET name = 'renamed' WHERE id = 29;");
    eu.sql("INSERT INTO customers VALUES (100, 'eu only', 'x@eu', 'Paris');");
    us.sql("UPDATE customers SET email = 'user12@us' WHERE id = 12;");
    // Primary-key changes: Debezium sends each as a delete of the old key, a
    // tombstone and a create of the new key (headers __debezium.newkey and
    // __debezium.oldkey). Id 100 exists in eu only; id 5 is also updated in
    // us afterwards, concurrently (us never saw the key change).
    eu.sql("UPDATE customers SET id = 300 WHERE id = 100;");
    eu.sql("UPDATE customers SET id = 200 WHERE id = 5;");
    us.sql("UPDATE customers SET city = 'Lima' WHERE id = 5;");

    // Every change reached Kafka: 30+30 snapshot-free inserts, 15+16 updates,
    // 2 deletes (+2 tombstones), 1 update, 1 insert, 1 update, two key
    // changes of 3 records each, 1 update.
    let expected_source_records = 30 + 30 + 15 + 16 + 2 + 2 + 1 + 1 + 1 + 3 + 3 + 1;
    wait_until("Debezium to publish every change", Duration::from_secs(90), || {
        topics.iter().map(|t| read_topic(t, false).len()).sum::<usize>() >= expected_source_records
    });

    // What the merge semantics say: replay over the very records Debezium wrote.
    let mut dump = String::new();
    for t in &topics {
        for r in read_topic(t, false) {
            dump += &r.to_string();
            dump.push('\n');
        }
    }
    let config = Config::parse(&config_text, "test", std::iter::empty()).unwrap();
    let (mut out, mut log) = (Vec::new(), Vec::new());
    let summary = tributary::replay::replay(&config, dump.as_bytes(), "dump", &mut out, None, &mut log).unwrap();
    assert_eq!(summary.dead_lettered, 0, "{}", String::from_utf8_lossy(&log));
    let mut expected: BTreeMap<i64, Vec<Option<String>>> = BTreeMap::new();
    let replayed = common::json_lines(&String::from_utf8(out).unwrap());
    for r in &replayed {
        let key: Value = serde_json::from_str(r["key"].as_str().unwrap()).unwrap();
        let id = key["id"].as_i64().unwrap();
        match r["payload"].as_str() {
            None => {
                expected.remove(&id);
            }
            Some(p) => {
                let row: Value = serde_json::from_str(p).unwrap();
                let col = |c: &str| row[c].as_str().map(String::from);
                expected.insert(id, vec![col("name"), col("email"), col("city")]);
            }
        }
    }
    // Spot checks of the semantics themselves (field-lww): disjoint column
    // edits from both regions are merged; id 12's email: the later write (us).
    assert_eq!(expected[&11], vec![Some("name11".into()), Some("user11@eu".into()), Some("Rome".into())]);
    assert_eq!(expected[&12][1].as_deref(), Some("user12@us"));
    // Key changes (field-lww, deletes = lww): the old key is deleted and the
    // new key holds the row as eu had it. Id 5 comes back as us's row: us's
    // update is concurrent with eu's key change and committed later, so under
    // `lww` deletes it outlives the delete half.
    assert!(!expected.contains_key(&100), "old key 100 deleted: {expected:?}");
    assert_eq!(expected[&300], vec![Some("eu only".into()), Some("x@eu".into()), Some("Paris".into())]);
    assert_eq!(expected[&200], vec![Some("name5".into()), Some("user5@eu".into()), Some("Oslo".into())]);
    assert_eq!(expected[&5], vec![Some("name5".into()), Some("user5@old".into()), Some("Lima".into())]);

    // The target table converges to exactly that.
    let table = || -> BTreeMap<i64, Vec<Option<String>>> {
        target
            .sql("SELECT id, coalesce(name, '\\N'), coalesce(email, '\\N'), coalesce(city, '\\N') FROM customers ORDER BY id")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                let opt = |s: &str| if s == "\\N" { None } else { Some(s.to_string()) };
                (f[0].parse().unwrap(), vec![opt(f[1]), opt(f[2]), opt(f[3])])
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while table() != expected {
        assert!(
            Instant::now() < deadline,
            "target table never converged\nexpected {expected:?}\nactual   {:?}\nrun log:\n{}\nsink log:\n{}",
            table(),
            processor.log_text(),
            sink.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The output topic ends, key by key, on exactly what replay wrote last:
    // for the key changes, a tombstone for {"id":100} and eu's row under
    // {"id":300} and {"id":200}.
    let last_per_key = |records: &[Value]| -> BTreeMap<String, Option<String>> {
        records.iter().map(|r| (r["key"].as_str().unwrap().to_string(), r["payload"].as_str().map(String::from))).collect()
    };
    let outputs = last_per_key(&read_topic(&output, true));
    assert_eq!(outputs, last_per_key(&replayed), "output topic vs replay");
    assert_eq!(outputs[r#"{"id":100}"#], None, "old key ends on a tombstone");
    assert!(outputs[r#"{"id":300}"#].as_deref().is_some_and(|p| p.contains(r#""id":300"#)), "{outputs:?}");
    let vv = target.sql("SELECT merged_vv FROM customers WHERE id = 11");
    assert!(vv.contains("\"eu\"") && vv.contains("\"us\""), "merged clock stored: {vv}");

    // Conflicts show in the audit topic and the metrics.
    let audit = read_topic(&format!("{group}-conflicts"), true);
    assert!(!audit.is_empty(), "concurrent edits produce conflict audit records");
    let log = processor.log_text();
    let addr_line = log.lines().find(|l| l.contains("admin HTTP listening")).expect("admin address logged");
    let addr: String = addr_line[addr_line.find("addr=").unwrap() + 5..].chars().take_while(|c| !c.is_whitespace()).collect();
    let metrics = http_get(&addr, "/metrics");
    let conflicts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tributary_conflicts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(conflicts > 0.0, "{metrics}");
    // Each key change counts once, on its create half, for the source that made it.
    assert!(metrics.lines().any(|l| l == r#"tributary_primary_key_changes_total{source="eu",table="default"} 2"#), "{metrics}");
    assert!(!metrics.contains(r#"tributary_primary_key_changes_total{source="us","#), "{metrics}");
    assert!(sink.stop().success());
    assert!(processor.stop().success());
}

fn topic_exists(topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().unwrap();
    c.fetch_metadata(Some(topic), Duration::from_secs(5))
        .map(|md| md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
        .unwrap_or(false)
}

fn http_get(addr: &str, path: &str) -> String {
    kafka::http_get(addr, path).1
}
