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
        let partition = tributary::admin::murmur2_partition(key.as_bytes(), 3);
        if i % 11 == 5 {
            table.remove(&id);
            recs.push(Rec {
                topic: topic.into(),
                partition,
                key: Some(key),
                value: None,
            });
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
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (r.get::<_, String>(1)?, r.get::<_, i64>(2)?),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn sqlite_offsets(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT coalesce(sum(next_offset), 0) FROM tributary_sink_offsets",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[test]
fn sqlite_sink_survives_kill_9_mid_batch_without_loss_or_repeats() {
    let topic = unique("sink-out");
    create_topic(
        &topic,
        3,
        &[
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "3600000"),
        ],
    );
    let (mut recs, table) = output_records(&topic, 300, 3000);
    // A row that does not fit: `seq` is not an integer.
    let bad_key = json!({"id": 100_000}).to_string();
    let bad_partition = tributary::admin::murmur2_partition(bad_key.as_bytes(), 3);
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
    assert!(
        sqlite_offsets_safe(&db) < total,
        "the crashes happened mid-stream"
    );
    let p = Processor::start_with(&cfg, &log, "sink");
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlite_offsets_safe(&db) < total {
        assert!(
            Instant::now() < deadline,
            "sink did not catch up; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
    assert_eq!(
        sqlite_rows(&db),
        table,
        "the table equals the compacted topic"
    );
    assert_eq!(sqlite_offsets(&db), total);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let dead: (i64, String) = conn
        .query_row(
            "SELECT count(*), max(error) FROM tributary_sink_dead_letters",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
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
    conn.query_row(
        "SELECT coalesce(sum(next_offset), 0) FROM tributary_sink_offsets",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
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
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_partitions([&NewPartitions::new(&topic, 3)], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    produce(&[row(3, 2)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlite_offsets_safe(&db) < 3 {
        assert!(
            Instant::now() < deadline,
            "the new partition was not read; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.stop().success());
    assert_eq!(
        sqlite_rows(&db).keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}
