//! `tributary sink` as a user meets it, on the real broker: a sink-only
//! configuration, the warehouse column types on SQLite and PostgreSQL with a
//! dead row for each kind of misfit, the admin port, the offsets committed to
//! Kafka for lag tools, and the messages when PostgreSQL or Kafka is unreachable.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{self, admin_addr, create_topic, http_get, produce, unique, Processor, Rec};
use serde_json::json;

const COLUMNS: &str = r#"columns = ["id bigint", "amount numeric(12, 2)", "born date", "seen timestamp without time zone", "at timestamp with time zone", "micro timestamp", "uid uuid", "data bytea", "balance double precision", "note character varying"]"#;

/// A configuration with no `[[sources]]` and no `[output]`: what a sink needs only.
fn sink_only_config(dir: &Path, topic: &str, target: &str, url: &str, bootstrap: &str) -> PathBuf {
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"{group}\"\n\n[sink]\ntopic = \"{topic}\"\ntarget = \"{target}\"\nurl = \"{url}\"\ntable = \"facts\"\n{COLUMNS}\nkey_columns = [\"id\"]\nbatch_size = 7\nadmin_listen = \"127.0.0.1:0\"\n[sink.time_units]\nmicro = \"micros\"\n",
        group = unique("typesgroup"),
    );
    let p = dir.join("sink.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn rec(topic: &str, id: i64, value: Option<serde_json::Value>) -> Rec {
    Rec {
        topic: topic.into(),
        partition: (id % 2) as i32,
        key: Some(json!({ "id": id }).to_string()),
        value: value.map(|v| v.to_string()),
    }
}

/// A good row, whose fields each misfit below replaces.
fn good(id: i64) -> serde_json::Value {
    json!({
        "id": id,
        "amount": "1234.5",
        "born": 19723,                          // io.debezium.time.Date: 2024-01-01
        "seen": 1_714_566_600_123i64,           // io.debezium.time.Timestamp (ms)
        "at": "2024-05-01T14:30:00.5+02:00",    // io.debezium.time.ZonedTimestamp
        "micro": 1_000_000,                     // MicroTimestamp, unit named: 1 s
        "uid": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "data": "AAEC/w==",
        "balance": 0.25,
        "note": "ok"
    })
}

/// One record per kind of misfit: (id, column, value, what the error says).
fn misfits() -> Vec<(i64, &'static str, serde_json::Value, &'static str)> {
    vec![
        (101, "amount", json!("12345678901.5"), "does not fit numeric(12,2)"),
        (102, "amount", json!("1.234"), "more than 2 decimal places"),
        (103, "amount", json!("twelve"), "is not a decimal number"),
        (104, "born", json!("2023-02-29"), "is not a date"),
        (105, "seen", json!("yesterday"), "is not an ISO-8601 date-time"),
        (106, "born", json!(3_000_000), "outside the years"),
        (107, "uid", json!("not-a-uuid"), "is not a UUID"),
        (108, "data", json!("%%%"), "is not base64"),
    ]
}

/// Produces the good rows 1..=4, a tombstone for 4, and the misfits; returns the record count.
fn produce_all(topic: &str) -> usize {
    let mut recs: Vec<Rec> = (1..=4).map(|id| rec(topic, id, Some(good(id)))).collect();
    let mut nulls = good(3);
    for field in ["amount", "born", "seen", "at", "micro", "uid", "data", "balance", "note"] {
        nulls[field] = serde_json::Value::Null;
    }
    recs[2] = rec(topic, 3, Some(nulls));
    recs.push(rec(topic, 4, None));
    for (id, column, value, _) in misfits() {
        let mut row = good(id);
        row[column] = value;
        recs.push(rec(topic, id, Some(row)));
    }
    produce(&recs);
    recs.len()
}

/// The value of a sample (`name` with its labels, e.g. `x{partition="0"}`) in a scrape.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Waits until `/metrics` shows every record applied and no lag, and checks the admin port.
fn check_admin_port(sink: &Processor, records: usize) {
    let addr = admin_addr(sink);
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        let lag: Option<f64> = ["0", "1"]
            .iter()
            .map(|p| sample(&body, &format!("tributary_sink_lag_records{{partition=\"{p}\",table=\"facts\"}}")))
            .sum();
        if sample(&body, "tributary_sink_records_applied_total{table=\"facts\"}") == Some(records as f64) && lag == Some(0.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "metrics never showed {records} records applied and no lag:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sample(&metrics, "tributary_sink_dead_rows_total{table=\"facts\"}"), Some(misfits().len() as f64), "{metrics}");
    assert!(sample(&metrics, "tributary_sink_batch_records_count{table=\"facts\"}").unwrap() >= 1.0, "{metrics}");
    assert!(sample(&metrics, "tributary_sink_batch_duration_seconds_count{table=\"facts\"}").unwrap() >= 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "tributary_up"), Some(1.0), "{metrics}");
    // The sink's port serves the sink's series, not the processor's at zero.
    assert!(!metrics.contains("tributary_siblings") && !metrics.contains("tributary_records_consumed_total"), "{metrics}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
}

/// The offsets the sink's group committed to Kafka, summed over partitions.
fn kafka_committed(group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).set("group.id", group).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    tpl.add_partition(topic, 1);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o >= 0).sum()
}

fn group_of(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("group_id")).unwrap();
    format!("{}-sink", line.split('"').nth(1).unwrap())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

type Row = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>, Option<Vec<u8>>);

/// The row of id 1 and id 3 as the user reads them, and the dead letters
/// (record key → error), the same on both databases.
fn check_table(rows: BTreeMap<i64, Row>, dead: BTreeMap<i64, String>, zone: &str) {
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "4 was deleted; misfits are not rows");
    assert_eq!(
        rows[&1],
        (
            Some("1234.50".into()),
            Some("2024-01-01".into()),
            Some("2024-05-01 12:30:00.123".into()),
            Some(format!("2024-05-01 12:30:00.5{zone}")),
            Some("1970-01-01 00:00:01".into()),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Some(vec![0, 1, 2, 255]),
        )
    );
    assert_eq!(rows[&3], (None, None, None, None, None, None, None), "nulls stay null");
    let expected: BTreeMap<i64, String> = misfits().into_iter().map(|(id, c, _, _)| (id, c.to_string())).collect();
    assert_eq!(dead.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "one dead row per misfit: {dead:?}");
    for (id, column, _, why) in misfits() {
        let error = &dead[&id];
        assert!(error.contains(&format!("column `{column}`")) && error.contains(why), "{id}: {error}");
    }
}

#[test]
fn sink_only_config_writes_every_type_to_sqlite_dead_letters_each_misfit_and_serves_metrics() {
    let topic = unique("sink-types");
    create_topic(&topic, 2, &[("cleanup.policy", "compact")]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("facts.sqlite");
    let config = sink_only_config(dir.path(), &topic, "sqlite", db.to_str().unwrap(), &kafka::bootstrap());
    let records = produce_all(&topic);
    let sink = Processor::start_with(&config, &dir.path().join("sink.log"), "sink");
    check_admin_port(&sink, records);
    let group = group_of(&config);
    wait_until("the sink's offsets in Kafka", || kafka_committed(&group, &topic) == records as i64);
    assert!(sink.stop().success());

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT id, amount, born, seen, at, micro, uid, data FROM facts").unwrap();
    let rows: BTreeMap<i64, Row> = stmt
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let amount_type: String = conn.query_row("SELECT typeof(amount) FROM facts WHERE id = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(amount_type, "text", "exact: SQLite keeps numeric as text, never as a float");
    let mut stmt = conn.prepare("SELECT record_key, error FROM tributary_sink_dead_letters").unwrap();
    let dead: BTreeMap<i64, String> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .map(|(k, e)| (serde_json::from_str::<serde_json::Value>(&k).unwrap()["id"].as_i64().unwrap(), e))
        .collect();
    check_table(rows, dead, "+00:00");
}

/// A throw-away PostgreSQL cluster (`scripts/postgres/pg`), stopped on drop.
struct Pg {
    dir: String,
    url: String,
}

impl Pg {
    fn start() -> Pg {
        let out = std::process::Command::new(common::root().join("scripts/postgres/pg")).arg("start").output().unwrap();
        assert!(out.status.success(), "pg start: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        Pg { dir: lines[0].to_string(), url: lines[lines.len() - 1].to_string() }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::root().join("scripts/postgres/pg")).args(["stop", &self.dir, "--rm"]).output();
    }
}

#[test]
fn every_type_on_postgres_with_dead_rows_and_no_notice_on_restart() {
    let pg = Pg::start();
    let topic = unique("sink-types-pg");
    create_topic(&topic, 2, &[("cleanup.policy", "compact")]);
    let dir = tempfile::tempdir().unwrap();
    let config = sink_only_config(dir.path(), &topic, "postgres", &pg.url, &kafka::bootstrap());
    let records = produce_all(&topic);
    let log = dir.path().join("sink.log");
    let sink = Processor::start_with(&config, &log, "sink");
    check_admin_port(&sink, records);
    assert!(sink.stop().success());
    // A second start finds every table in place and says nothing about it.
    let again = Processor::start_with(&config, &dir.path().join("again.log"), "sink");
    admin_addr(&again);
    std::thread::sleep(Duration::from_secs(1));
    assert!(again.stop().success());
    let text = std::fs::read_to_string(dir.path().join("again.log")).unwrap();
    assert!(!text.contains("NOTICE") && !text.contains("already exists"), "{text}");

    let mut db = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    let types: Vec<String> = db
        .query("SELECT data_type FROM information_schema.columns WHERE table_name = 'facts' ORDER BY ordinal_position", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "numeric",
            "date",
            "timestamp without time zone",
            "timestamp with time zone",
            "timestamp without time zone",
            "uuid",
            "bytea",
            "double precision",
            "text"
        ]
    );
    db.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let rows: BTreeMap<i64, Row> = db
        .query("SELECT id, amount::text, born::text, seen::text, at::text, micro::text, uid::text, data FROM facts", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7))))
        .collect();
    let dead: BTreeMap<i64, String> = db
        .query("SELECT record_key, error FROM tributary_sink_dead_letters", &[])
        .unwrap()
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            (serde_json::from_str::<serde_json::Value>(&key).unwrap()["id"].as_i64().unwrap(), r.get(1))
        })
        .collect();
    check_table(rows, dead, "+00");
}

/// Runs `tributary sink` to its exit; returns (exit code, stderr, seconds).
fn sink_exit(config: &Path) -> (Option<i32>, String, f64) {
    let started = Instant::now();
    let out = common::tributary().args(["sink", "-c"]).arg(config).env("RUST_LOG", "info").output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), started.elapsed().as_secs_f64())
}

#[test]
fn an_unreachable_postgres_names_the_host_and_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = sink_only_config(dir.path(), "t", "postgres", "postgres://app:s3cret@127.0.0.1:1/app", &kafka::bootstrap());
    let (code, stderr, _) = sink_exit(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1") && stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "printed once: {stderr}");
}

#[test]
fn an_unreachable_kafka_names_the_bootstrap_servers_quickly_and_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.sqlite");
    let config = sink_only_config(dir.path(), "t", "sqlite", db.to_str().unwrap(), "127.0.0.1:1");
    let (code, stderr, seconds) = sink_exit(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(seconds < 20.0, "{seconds} s");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("bootstrap servers 127.0.0.1:1"), "{stderr}");
    assert!(stderr.lines().count() <= 6, "a few lines, not one per retry: {stderr}");
}

/// Throughput: `records` records (1 in 10 a tombstone, 50 000 keys, 3
/// partitions) into a fresh table, per binary, on the same topic, timed from
/// the sink's start until the database holds every offset. The README's
/// figures come from (the test only orchestrates; the binaries are release builds):
///
/// ```sh
/// SINK_BENCH_BINS=/path/to/old/tributary,target/release/tributary \
///   cargo test --test sink_types sink_throughput -- --ignored --nocapture
/// ```
///
/// (`SINK_BENCH_TARGET=postgres` for PostgreSQL, `SINK_BENCH_RECORDS` for
/// another count, `SINK_BENCH_TOMBSTONE_EVERY=2` for one tombstone in two.)
#[test]
#[ignore = "benchmark; run by hand"]
fn sink_throughput() {
    let records: i64 = std::env::var("SINK_BENCH_RECORDS").map_or(200_000, |v| v.parse().unwrap());
    let bins: Vec<String> = std::env::var("SINK_BENCH_BINS")
        .map_or_else(|_| vec![env!("CARGO_BIN_EXE_tributary").to_string()], |v| v.split(',').map(String::from).collect());
    let postgres = std::env::var("SINK_BENCH_TARGET").is_ok_and(|t| t == "postgres");
    let every: i64 = std::env::var("SINK_BENCH_TOMBSTONE_EVERY").map_or(10, |v| v.parse().unwrap());
    let topic = unique("sink-bench");
    create_topic(&topic, 3, &[("cleanup.policy", "compact")]);
    let recs: Vec<Rec> = (0..records)
        .map(|i| {
            let id = (i * 7919) % 50_000;
            let key = json!({ "id": id }).to_string();
            let partition = tributary::kafka::murmur2_partition(key.as_bytes(), 3);
            let value = (i % every != every - 1).then(|| json!({"id": id, "name": format!("name {i}"), "seq": i}).to_string());
            Rec { topic: topic.clone(), partition, key: Some(key), value }
        })
        .collect();
    produce(&recs);
    for bin in bins {
        let dir = tempfile::tempdir().unwrap();
        let pg = postgres.then(Pg::start);
        let db = dir.path().join("bench.sqlite");
        let (target, url) = match &pg {
            Some(pg) => ("postgres", pg.url.clone()),
            None => ("sqlite", db.to_str().unwrap().to_string()),
        };
        // [output] and a [[sources]] entry, which older versions require.
        let config = dir.path().join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n[output]\ntopic = \"{topic}\"\n[[sources]]\nname = \"eu\"\ntopic = \"unused\"\n[sink]\ntarget = \"{target}\"\nurl = \"{url}\"\ntable = \"bench\"\ncolumns = [\"id bigint\", \"name text\", \"seq bigint\"]\nkey_columns = [\"id\"]\n",
                kafka::bootstrap(),
                unique("benchgroup"),
            ),
        )
        .unwrap();
        let applied = || -> i64 {
            let sql = "SELECT coalesce(sum(next_offset), 0)::bigint FROM tributary_sink_offsets";
            match &pg {
                Some(pg) => postgres::Client::connect(&pg.url, postgres::NoTls)
                    .and_then(|mut c| c.query_one(sql, &[]))
                    .map_or(0, |r| r.get(0)),
                None => rusqlite::Connection::open(&db)
                    .and_then(|c| c.query_row(&sql.replace("::bigint", ""), [], |r| r.get(0)))
                    .unwrap_or(0),
            }
        };
        let started = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .args(["sink", "-c"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        while applied() < records {
            assert!(started.elapsed() < Duration::from_secs(600), "{bin} did not finish");
            assert!(child.try_wait().unwrap().is_none(), "{bin} exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        let seconds = started.elapsed().as_secs_f64();
        let _ = child.kill();
        let _ = child.wait();
        println!("{bin} ({target}): {records} records in {seconds:.2} s = {:.0} records/s", records as f64 / seconds);
    }
}

/// A resync walks the table by its key and compares keys with the topic's:
/// with `uuid` and `timestamptz` key columns too (PostgreSQL reads them
/// back as text and binds them again with casts).
fn resync_with_typed_keys(target: &str, url: &str, count_rows: impl Fn() -> Vec<String>, stray: impl FnOnce()) {
    let topic = unique("sink-typed-keys");
    create_topic(&topic, 2, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
    let key =
        |n: u32| json!({"uid": format!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1{n}"), "at": 1_714_566_600_000i64 + i64::from(n)});
    let mut recs: Vec<Rec> = (1..=3)
        .map(|n| {
            let mut row = key(n);
            row["amount"] = json!(format!("{n}.5"));
            Rec { topic: topic.clone(), partition: (n % 2) as i32, key: Some(key(n).to_string()), value: Some(row.to_string()) }
        })
        .collect();
    recs.push(Rec { topic: topic.clone(), partition: 0, key: Some(key(2).to_string()), value: None });
    produce(&recs);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n[sink]\ntopic = \"{topic}\"\ntarget = \"{target}\"\nurl = \"{url}\"\ntable = \"typed\"\ncolumns = [\"uid uuid\", \"at timestamptz\", \"amount numeric(12,2)\"]\nkey_columns = [\"uid\", \"at\"]\n",
            kafka::bootstrap(),
            unique("typedgroup")
        ),
    )
    .unwrap();
    let expected = vec!["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13".to_string()];
    let sink = Processor::start_with(&config, &dir.path().join("first.log"), "sink");
    wait_until("the rows", || count_rows() == expected);
    assert!(sink.stop().success());
    stray();
    assert_eq!(count_rows().len(), 3);
    let log = dir.path().join("resync.log");
    let file = std::fs::File::create(&log).unwrap();
    let child =
        common::tributary().args(["sink", "--resync", "-c"]).arg(&config).env("RUST_LOG", "info").stderr(file).spawn().unwrap();
    let resync = Processor { child, log: log.clone() };
    wait_until("the resync", || resync.log_text().contains("resync finished"));
    assert!(resync.stop().success());
    assert_eq!(count_rows(), expected, "the stray row is gone, the others stay");
}

#[test]
fn resync_with_uuid_and_timestamptz_keys_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("typed.sqlite");
    let rows = |db: &Path| -> Vec<String> {
        let Ok(conn) = rusqlite::Connection::open(db) else { return vec![] };
        let Ok(mut stmt) = conn.prepare("SELECT uid FROM typed ORDER BY uid") else { return vec![] };
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    resync_with_typed_keys(
        "sqlite",
        db.to_str().unwrap(),
        || rows(&db),
        || {
            rusqlite::Connection::open(&db)
                .unwrap()
                .execute(
                    "INSERT INTO typed VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a19', '2024-05-01 12:30:00+00:00', '1.00')",
                    [],
                )
                .unwrap();
        },
    );

    let pg = Pg::start();
    let url = pg.url.clone();
    let pg_rows = || -> Vec<String> {
        let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) else { return vec![] };
        c.query("SELECT uid::text FROM typed ORDER BY uid", &[]).map_or(vec![], |rows| rows.iter().map(|r| r.get(0)).collect())
    };
    resync_with_typed_keys("postgres", &pg.url, pg_rows, || {
        postgres::Client::connect(&pg.url, postgres::NoTls)
            .unwrap()
            .batch_execute("INSERT INTO typed VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a19', '2024-05-01 12:30:00+00', 1)")
            .unwrap();
    });
}

#[test]
fn a_stop_request_while_waiting_for_kafka_is_honoured_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.sqlite");
    let config = sink_only_config(dir.path(), "t", "sqlite", db.to_str().unwrap(), "127.0.0.1:1");
    let sink = Processor::start_with(&config, &dir.path().join("sink.log"), "sink");
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let status = sink.stop();
    assert!(status.success(), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(3), "took {:?}", asked.elapsed());
}

#[test]
fn a_broker_lost_while_running_is_logged_once_and_the_sink_goes_on() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut broker = kafka::OwnedBroker::start();
    let topic = unique("sink-lost-broker");
    kafka::create_topic_at(broker.bootstrap(), &topic, 1, &[("cleanup.policy", "compact")]);
    let send = |bootstrap: &str, id: i64| {
        let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
        let (key, value) = (json!({ "id": id }).to_string(), good(id).to_string());
        producer.send(BaseRecord::to(&topic).key(&key).payload(&value)).unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    send(broker.bootstrap(), 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lost.sqlite");
    let config = sink_only_config(dir.path(), &topic, "sqlite", db.to_str().unwrap(), broker.bootstrap());
    let ids = || -> Vec<i64> {
        let Ok(conn) = rusqlite::Connection::open(&db) else { return vec![] };
        let Ok(mut stmt) = conn.prepare("SELECT id FROM facts ORDER BY id") else { return vec![] };
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    let sink = Processor::start_with(&config, &dir.path().join("sink.log"), "sink");
    wait_until("the first row", || ids() == [1]);
    broker.restart(Duration::from_secs(8));
    send(broker.bootstrap(), 2);
    wait_until("the row written after the restart", || ids() == [1, 2]);
    assert!(sink.stop().success());
    let log = std::fs::read_to_string(dir.path().join("sink.log")).unwrap();
    assert_eq!(log.matches("cannot reach Kafka").count(), 1, "{log}");
    let loud: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    assert!(loud.len() <= 2, "{loud:#?}");
}
