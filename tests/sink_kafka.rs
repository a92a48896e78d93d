//! `tributary sink` on a real broker: SQLite (and PostgreSQL, see
//! `tests/pipeline_postgres.rs`), crashes mid-batch included.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::{self, create_topic, produce, unique, Processor, Rec};
use serde_json::json;

/// Records for an output-like topic: upserts and tombstones over `keys` keys,
/// plus one row that does not fit the table. Returns them and the table the
/// compacted topic describes.
fn output_records(topic: &str, keys: u32, n: u32) -> (Vec<Rec>, BTreeMap<i64, (String, i64)>) {
    let mut recs = Vec::new();
    let mut table = BTreeMap::new();
    for i in 0..n {
        let id = i64::from((i * 7919) % keys);
        let key = json!({ "id": id }).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), 3);
        if i % 11 == 5 {
            table.remove(&id);
            recs.push(Rec { topic: topic.into(), partition, key: Some(key), value: None });
        } else {
            let name = format!("n{i}");
            table.insert(id, (name.clone(), i64::from(i)));
            recs.push(Rec {
                topic: topic.into(),
                partition,
                key: Some(key),
                value: Some(json!({"id": id, "name": name, "seq": i}).to_string()),
            });
        }
    }
    (recs, table)
}

fn config(dir: &std::path::Path, topic: &str, target: &str, url: &str) -> std::path::PathBuf {
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n[output]\ntopic = \"{topic}\"\n[[sources]]\nname = \"eu\"\ntopic = \"unused\"\n\n[sink]\ntarget = \"{target}\"\nurl = \"{url}\"\ntable = \"customers\"\ncolumns = [\"id bigint\", \"name text\", \"seq integer\"]\nkey_columns = [\"id\"]\nbatch_size = 40\n",
        kafka::bootstrap(),
        unique("sinkgroup"),
    );
    let p = dir.join("sink.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn sqlite_rows(path: &std::path::Path) -> BTreeMap<i64, (String, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id, name, seq FROM customers").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, (r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))).unwrap();
    rows.map(Result::unwrap).collect()
}

fn sqlite_offsets(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT coalesce(sum(next_offset), 0) FROM tributary_sink_offsets", [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn sqlite_sink_survives_kill_9_mid_batch_without_loss_or_repeats() {
    let topic = unique("sink-out");
    create_topic(&topic, 3, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
    let (mut recs, table) = output_records(&topic, 300, 3000);
    // A row that does not fit: `seq` is not an integer.
    let bad_key = json!({"id": 100_000}).to_string();
    let bad_partition = tributary::kafka::murmur2_partition(bad_key.as_bytes(), 3);
    recs.push(Rec {
        topic: topic.clone(),
        partition: bad_partition,
        key: Some(bad_key),
        value: Some(r#"{"id":100000,"name":"x","seq":"many"}"#.into()),
    });
    produce(&recs);
    let total = recs.len() as i64;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sink.sqlite");
    let cfg = config(dir.path(), &topic, "sqlite", &db.display().to_string());
    let log = dir.path().join("sink.log");
    // Crash it three times while it is writing.
    for _ in 0..3 {
        let p = Processor::start_with(&cfg, &log, "sink");
        let start = Instant::now();
        while sqlite_offsets_safe(&db) == 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(30));
        p.kill9();
    }
    assert!(sqlite_offsets_safe(&db) < total, "the crashes happened mid-stream");
    let p = Processor::start_with(&cfg, &log, "sink");
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlite_offsets_safe(&db) < total {
        assert!(Instant::now() < deadline, "sink did not catch up; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    assert_eq!(sqlite_rows(&db), table, "the table equals the compacted topic");
    assert_eq!(sqlite_offsets(&db), total);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let dead: (i64, String) = conn
        .query_row("SELECT count(*), max(error) FROM tributary_sink_dead_letters", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(dead.0, 1);
    assert!(dead.1.contains("column `seq` (integer)"), "{}", dead.1);
}

/// Offsets so far, 0 while the file or table does not exist yet.
fn sqlite_offsets_safe(path: &std::path::Path) -> i64 {
    if !path.exists() {
        return 0;
    }
    let Ok(conn) = rusqlite::Connection::open(path) else {
        return 0;
    };
    conn.query_row("SELECT coalesce(sum(next_offset), 0) FROM tributary_sink_offsets", [], |r| r.get(0)).unwrap_or(0)
}

#[test]
fn sqlite_sink_picks_up_partitions_added_later() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let topic = unique("sink-grow");
    create_topic(&topic, 2, &[]);
    let row = |id: i64, p: i32| Rec {
        topic: topic.clone(),
        partition: p,
        key: Some(json!({ "id": id }).to_string()),
        value: Some(json!({"id": id, "name": format!("n{id}"), "seq": id}).to_string()),
    };
    produce(&[row(1, 0), row(2, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sink.sqlite");
    let cfg = config(dir.path(), &topic, "sqlite", &db.display().to_string());
    let text = std::fs::read_to_string(&cfg).unwrap() + "metadata_interval = \"1s\"\n";
    std::fs::write(&cfg, text).unwrap();
    let p = Processor::start_with(&cfg, &dir.path().join("sink.log"), "sink");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlite_offsets_safe(&db) < 2 {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for r in rt.block_on(admin.create_partitions([&NewPartitions::new(&topic, 3)], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    produce(&[row(3, 2)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlite_offsets_safe(&db) < 3 {
        assert!(Instant::now() < deadline, "the new partition was not read; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.stop().success());
    assert_eq!(sqlite_rows(&db).keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
}

/// The sum of the end offsets of `topic`'s partitions.
fn end_offsets(topic: &str, partitions: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().unwrap();
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).sum()
}

/// Waits until the sink's stored offsets reach `n` (summed over partitions).
fn wait_for_offsets(db: &std::path::Path, n: i64, p: &Processor) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlite_offsets_safe(db) < n {
        assert!(Instant::now() < deadline, "the sink did not reach offset {n}; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn customer(topic: &str, id: i64, partitions: i32) -> Rec {
    let key = json!({ "id": id }).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), partitions);
    Rec {
        topic: topic.into(),
        partition,
        key: Some(key),
        value: Some(json!({"id": id, "name": format!("n{id}"), "seq": id}).to_string()),
    }
}

fn tombstone(topic: &str, id: i64, partitions: i32) -> Rec {
    Rec { value: None, ..customer(topic, id, partitions) }
}

/// Produces `records` in one committed transaction.
fn produce_in_transaction(records: &[Rec]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .set("transactional.id", unique("sink-test-tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    for r in records {
        let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(&r.topic).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_str());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_str());
        }
        producer.send(rec).map_err(|(e, _)| e).unwrap();
    }
    producer.commit_transaction(Duration::from_secs(30)).unwrap();
}

/// `tributary sink --resync -c CONFIG`, logging to `LOG`.
fn start_resync(config: &std::path::Path, log: &std::path::Path) -> Processor {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = common::tributary()
        .args(["sink", "--resync", "-c"])
        .arg(config)
        .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Processor { child, log: log.to_path_buf() }
}

#[test]
fn a_sink_down_longer_than_the_topic_keeps_tombstones_still_deletes_the_row() {
    tombstone_removed_while_the_sink_was_down(false);
}

/// The same with a database written before the sink stored record
/// timestamps with its offsets: the age comes from the record at the stored
/// offset.
#[test]
fn a_database_without_stored_timestamps_is_checked_from_the_record_at_its_offset() {
    tombstone_removed_while_the_sink_was_down(true);
}

fn tombstone_removed_while_the_sink_was_down(old_database: bool) {
    let topic = unique("sink-cleaned");
    // A cleaner that removes a tombstone a second after it first cleans it.
    create_topic(
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "1000"),
            ("min.compaction.lag.ms", "0"),
        ],
    );
    produce(&[customer(&topic, 1, 1), customer(&topic, 2, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sink.sqlite");
    let cfg = config(dir.path(), &topic, "sqlite", &db.display().to_string());
    let log = dir.path().join("sink.log");
    let p = Processor::start_with(&cfg, &log, "sink");
    wait_for_offsets(&db, 2, &p);
    assert!(p.stop().success());
    assert_eq!(sqlite_rows(&db).keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    if old_database {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("UPDATE tributary_sink_offsets SET last_record_ts = NULL", []).unwrap();
    }

    // While the sink is down: key 1 is deleted, and filler records roll
    // segments (a segment rolls only when a record arrives after segment.ms)
    // until the cleaner has removed the tombstone, which takes two passes:
    // one sets its delete horizon, a later one drops it.
    produce(&[tombstone(&topic, 1, 1)]);
    let key1 = json!({ "id": 1 }).to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut filler = 0;
    loop {
        produce(&[customer(&topic, 1000, 1)]);
        filler += 1;
        std::thread::sleep(Duration::from_millis(250));
        if filler % 4 == 0 && !kafka::read_topic(&topic, false).iter().any(|r| r["key"] == key1.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the cleaner did not remove the tombstone of key 1 within 180 s");
    }

    let p = Processor::start_with(&cfg, &log, "sink");
    wait_for_offsets(&db, end_offsets(&topic, 1), &p);
    assert!(p.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        sqlite_rows(&db).keys().copied().collect::<Vec<_>>(),
        vec![2, 1000],
        "the row whose tombstone the cleaner removed is gone; log:\n{text}"
    );
    assert!(text.contains("further behind than the topic keeps tombstones"), "the reason is logged:\n{text}");
    assert!(text.contains("resync finished"), "{text}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let unfinished: i64 = conn.query_row("SELECT count(*) FROM tributary_sink_resync", [], |r| r.get(0)).unwrap();
    assert_eq!(unfinished, 0, "the resync is recorded as finished");
}

#[test]
fn sink_resync_on_demand_removes_rows_the_topic_does_not_hold_then_goes_on() {
    let topic = unique("sink-resync");
    create_topic(&topic, 2, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
    let mut recs: Vec<Rec> = (1..=5).map(|id| customer(&topic, id, 2)).collect();
    recs.push(tombstone(&topic, 3, 2));
    // As `tributary run` writes: each partition then ends with a commit
    // marker, which a read_committed consumer never returns, so the resync's
    // scan must see the partition's end to stop.
    produce_in_transaction(&recs);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sink.sqlite");
    let cfg = config(dir.path(), &topic, "sqlite", &db.display().to_string());
    let p = Processor::start_with(&cfg, &dir.path().join("first.log"), "sink");
    wait_for_offsets(&db, 6, &p);
    assert!(p.stop().success());
    // A row the topic has no record for (as if its tombstone had been missed).
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("INSERT INTO customers (id, name, seq) VALUES (99, 'stray', 99)", []).unwrap();
    drop(conn);

    // A plain start has no reason to resync: the sink is at the end.
    let log = dir.path().join("plain.log");
    let p = Processor::start_with(&cfg, &log, "sink");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.log_text().contains("sink started") {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = p.stop();
    assert!(status.success(), "{status}; log:\n{}", p_log(&log));
    assert!(sqlite_rows(&db).contains_key(&99));
    assert!(!p_log(&log).contains("resync:"), "no resync without a reason");

    let log = dir.path().join("resync.log");
    let p = start_resync(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.log_text().contains("resync finished") {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sqlite_rows(&db).keys().copied().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
    // … and then it goes on as usual.
    produce_in_transaction(&[customer(&topic, 6, 2)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sqlite_rows(&db).contains_key(&6) {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    assert_eq!(sqlite_rows(&db).keys().copied().collect::<Vec<_>>(), vec![1, 2, 4, 5, 6]);
    assert!(p_log(&log).contains("requested with --resync"));
}

fn p_log(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn a_second_sqlite_sink_on_the_same_file_fails_fast_naming_it() {
    let topic = unique("sink-lock");
    create_topic(&topic, 1, &[("cleanup.policy", "compact")]);
    produce(&[customer(&topic, 1, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sink.sqlite");
    let cfg = config(dir.path(), &topic, "sqlite", &db.display().to_string());
    let first = Processor::start_with(&cfg, &dir.path().join("first.log"), "sink");
    wait_for_offsets(&db, 1, &first);
    let second = Processor::start_with(&cfg, &dir.path().join("second.log"), "sink");
    let (status, text) = second.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(text.contains("another tributary sink holds this database") && text.contains(&db.display().to_string()), "{text}");
    // The first one is not disturbed.
    produce(&[customer(&topic, 2, 1)]);
    wait_for_offsets(&db, 2, &first);
    assert!(first.stop().success());
    assert_eq!(sqlite_rows(&db).keys().copied().collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn a_resync_killed_midway_is_started_over_and_completes() {
    let topic = unique("sink-resync-kill");
    create_topic(&topic, 3, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
    let (recs, table) = output_records(&topic, 2000, 20_000);
    produce(&recs);
    let total = recs.len() as i64;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sink.sqlite");
    let cfg = config(dir.path(), &topic, "sqlite", &db.display().to_string());
    let p = Processor::start_with(&cfg, &dir.path().join("first.log"), "sink");
    let deadline = Instant::now() + Duration::from_secs(120);
    while sqlite_offsets_safe(&db) < total {
        assert!(Instant::now() < deadline, "the sink did not catch up; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    // Many rows the topic does not hold, so that the sweep (40 rows a
    // transaction, the configured batch_size) takes a while.
    const STRAY: i64 = 200_000;
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    let tx = conn.transaction().unwrap();
    for id in 0..STRAY {
        tx.execute("INSERT INTO customers (id, name, seq) VALUES (?1, 'stray', 0)", [1_000_000 + id]).unwrap();
    }
    tx.commit().unwrap();
    let stray = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row("SELECT count(*) FROM customers WHERE id >= 1000000", [], |r| r.get(0)).unwrap()
    };

    // Killed in the middle of the sweep.
    let log = dir.path().join("resync.log");
    let p = start_resync(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stray(&conn) == STRAY {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    p.kill9();
    let left = stray(&conn);
    assert!(left > 0, "the resync ended before the kill:\n{}", p_log(&log));
    let in_progress: i64 = conn.query_row("SELECT count(*) FROM tributary_sink_resync", [], |r| r.get(0)).unwrap();
    assert_eq!(in_progress, 1, "the interrupted resync is recorded as unfinished");

    // A plain start (no --resync) finds it unfinished and does it again.
    let log = dir.path().join("restart.log");
    let p = Processor::start_with(&cfg, &log, "sink");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !p.log_text().contains("sink started") {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    let text = p_log(&log);
    assert!(text.contains("did not finish: starting it over") && text.contains("resync finished"), "{text}");
    assert_eq!(stray(&conn), 0);
    assert_eq!(sqlite_rows(&db), table, "the table equals the compacted topic");
    assert_eq!(sqlite_offsets(&db), total);
    let in_progress: i64 = conn.query_row("SELECT count(*) FROM tributary_sink_resync", [], |r| r.get(0)).unwrap();
    assert_eq!(in_progress, 0);
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

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = std::process::Command::new(common::root().join("scripts/postgres/pg")).args(["stop", &self.dir, "--rm"]).output();
    }
}

#[test]
fn postgres_sink_resyncs_on_demand_and_migrates_an_old_offsets_table() {
    let pg = Pg::start();
    let topic = unique("sink-resync-pg");
    create_topic(&topic, 2, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
    let mut recs: Vec<Rec> = (1..=5).map(|id| customer(&topic, id, 2)).collect();
    recs.push(tombstone(&topic, 3, 2));
    produce(&recs);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &topic, "postgres", &pg.url);
    let mut db = pg.client();
    // An offsets table as older versions created it.
    db.batch_execute(
        "CREATE TABLE tributary_sink_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic, partition_id))",
    )
    .unwrap();
    let offsets = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT coalesce(sum(next_offset), 0)::bigint FROM tributary_sink_offsets", &[]).unwrap().get(0)
    };
    let ids = |db: &mut postgres::Client| -> Vec<i64> {
        db.query("SELECT id FROM customers ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    let p = Processor::start_with(&cfg, &dir.path().join("first.log"), "sink");
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsets(&mut db) < 6 {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    let stamped: i64 = db.query_one("SELECT count(last_record_ts) FROM tributary_sink_offsets", &[]).unwrap().get(0);
    assert_eq!(stamped, 2, "the migrated table stores record timestamps");
    db.execute("INSERT INTO customers (id, name, seq) VALUES (99, 'stray', 99)", &[]).unwrap();

    let log = dir.path().join("resync.log");
    let p = start_resync(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.log_text().contains("resync finished") {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ids(&mut db), vec![1, 2, 4, 5]);
    produce(&[customer(&topic, 6, 2)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while offsets(&mut db) < 7 {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    assert_eq!(ids(&mut db), vec![1, 2, 4, 5, 6]);
    let in_progress: i64 = db.query_one("SELECT count(*) FROM tributary_sink_resync", &[]).unwrap().get(0);
    assert_eq!(in_progress, 0);
}
