//! One `tributary sink` process materializing several output topics
//! (`[[sink.tables]]`) on a real broker and PostgreSQL, `kill -9` included.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::{self, admin_addr, create_topic, http_get, produce, unique, Processor, Rec};
use serde_json::json;

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

/// What the compacted `customers` topic says: id → (name, seq).
type Customers = BTreeMap<i64, (String, i64)>;
/// What the compacted `orders` topic says: order id → (customer, amount text).
type Orders = BTreeMap<String, (i64, String)>;

/// Upserts and tombstones over `keys` customers, records `from..to`.
fn customers(topic: &str, keys: u32, from: u32, to: u32, table: &mut Customers) -> Vec<Rec> {
    let mut recs = Vec::new();
    for i in from..to {
        let id = i64::from((i * 7919) % keys);
        let key = json!({ "id": id }).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), 3);
        if i % 11 == 5 {
            table.remove(&id);
            recs.push(Rec { topic: topic.into(), partition, key: Some(key), value: None });
        } else {
            table.insert(id, (format!("n{i}"), i64::from(i)));
            let value = json!({"id": id, "name": format!("n{i}"), "seq": i}).to_string();
            recs.push(Rec { topic: topic.into(), partition, key: Some(key), value: Some(value) });
        }
    }
    recs
}

/// Upserts and tombstones over `keys` orders (text keys, numeric amounts),
/// records `from..to`.
fn orders(topic: &str, keys: u32, from: u32, to: u32, table: &mut Orders) -> Vec<Rec> {
    let mut recs = Vec::new();
    for i in from..to {
        let id = format!("o-{}", (i * 104_729) % keys);
        let key = json!({ "order_id": id }).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), 2);
        if i % 7 == 3 {
            table.remove(&id);
            recs.push(Rec { topic: topic.into(), partition, key: Some(key), value: None });
        } else {
            let amount = format!("{}.{:02}", i, i % 100);
            table.insert(id.clone(), (i64::from(i % 300), amount.clone()));
            let value = json!({"order_id": id, "customer": i % 300, "amount": amount}).to_string();
            recs.push(Rec { topic: topic.into(), partition, key: Some(key), value: Some(value) });
        }
    }
    recs
}

fn config(dir: &std::path::Path, url: &str, customers: &str, orders: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[kafka]
bootstrap_servers = "{}"
group_id = "{}"

[sink]
target = "postgres"
url = "{url}"
batch_size = 40
admin_listen = "127.0.0.1:0"

[[sink.tables]]
table = "customers"
topic = "{customers}"
columns = ["id bigint", "name text", "seq integer"]
key_columns = ["id"]

[[sink.tables]]
table = "orders"
topic = "{orders}"
columns = ["order_id text", "customer bigint", "amount numeric(12,2)"]
key_columns = ["order_id"]
vv_column = "_vv"
"#,
        kafka::bootstrap(),
        unique("sinktables"),
    );
    let p = dir.join("sink.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The stored next offsets of `topic`, summed over its partitions.
fn stored(db: &mut postgres::Client, topic: &str) -> i64 {
    db.query_opt("SELECT coalesce(sum(next_offset), 0)::bigint FROM tributary_sink_offsets WHERE topic = $1", &[&topic])
        .ok()
        .flatten()
        .map_or(0, |r| r.get(0))
}

fn customer_rows(db: &mut postgres::Client) -> Customers {
    db.query("SELECT id, name, seq FROM customers", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), (r.get::<_, String>(1), i64::from(r.get::<_, i32>(2)))))
        .collect()
}

fn order_rows(db: &mut postgres::Client) -> Orders {
    db.query("SELECT order_id, customer, amount::text FROM orders", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, String>(2))))
        .collect()
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn one_sink_materializes_two_topics_into_two_postgres_tables_through_kill_9() {
    let pg = Pg::start();
    let (ct, ot) = (unique("sink-customers"), unique("sink-orders"));
    let compact = [("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")];
    create_topic(&ct, 3, &compact);
    create_topic(&ot, 2, &compact);
    let (mut want_c, mut want_o) = (Customers::new(), Orders::new());
    produce(&customers(&ct, 300, 0, 3000, &mut want_c));
    produce(&orders(&ot, 250, 0, 2000, &mut want_o));

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg.url, &ct, &ot);
    let log = dir.path().join("sink.log");
    let mut db = pg.client();
    // Crashed three times while writing both tables, each time after it
    // got further.
    for _ in 0..3 {
        let before = stored(&mut db, &ct) + stored(&mut db, &ot);
        let p = Processor::start_with(&cfg, &log, "sink");
        let start = Instant::now();
        while (stored(&mut db, &ct) == 0 || stored(&mut db, &ot) == 0 || stored(&mut db, &ct) + stored(&mut db, &ot) == before)
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        p.kill9();
    }
    assert!(stored(&mut db, &ct) > 0 && stored(&mut db, &ot) > 0, "both tables were written before the kills");
    assert!(stored(&mut db, &ct) < 3000 || stored(&mut db, &ot) < 2000, "a kill happened mid-stream");

    // Restarted; more records for both topics arrive while it runs.
    let log = dir.path().join("restart.log");
    let p = Processor::start_with(&cfg, &log, "sink");
    produce(&customers(&ct, 300, 3000, 3500, &mut want_c));
    produce(&orders(&ot, 250, 2000, 2400, &mut want_o));
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored(&mut db, &ct) < 3500 || stored(&mut db, &ot) < 2400 {
        assert!(Instant::now() < deadline, "the sink did not catch up; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both tables on the admin port, each with its own label.
    let addr = admin_addr(&p);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        let lag: Option<f64> = [("customers", 3), ("orders", 2)]
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (t, p)))
            .map(|(t, p)| sample(&body, &format!("tributary_sink_lag_records{{partition=\"{p}\",table=\"{t}\"}}")))
            .sum();
        if lag == Some(0.0) {
            break body;
        }
        assert!(Instant::now() < deadline, "the lag of every partition of both tables never reached 0:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for t in ["customers", "orders"] {
        let applied = sample(&metrics, &format!("tributary_sink_records_applied_total{{table=\"{t}\"}}"));
        assert!(applied.is_some_and(|n| n >= 1.0), "{t}: {metrics}");
    }
    assert!(p.stop().success());

    assert_eq!(customer_rows(&mut db), want_c, "customers equals its compacted topic");
    assert_eq!(order_rows(&mut db), want_o, "orders equals its compacted topic");
    // Per topic and partition, exactly the topic's end: nothing applied twice or skipped.
    let offsets: Vec<(String, i32, i64)> = db
        .query("SELECT topic, partition_id, next_offset FROM tributary_sink_offsets ORDER BY topic, partition_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(offsets.iter().filter(|o| o.0 == ct).count(), 3, "{offsets:?}");
    assert_eq!(offsets.iter().filter(|o| o.0 == ot).count(), 2, "{offsets:?}");
    assert_eq!(stored(&mut db, &ct), 3500);
    assert_eq!(stored(&mut db, &ot), 2400);
    let vv: i64 = db.query_one("SELECT count(*) FROM orders WHERE _vv IS NULL", &[]).unwrap().get(0);
    assert_eq!(vv, i64::try_from(want_o.len()).unwrap(), "records without a tributary.vv header leave the column NULL");
    let dead: i64 = db.query_one("SELECT count(*) FROM tributary_sink_dead_letters", &[]).unwrap().get(0);
    assert_eq!(dead, 0);
    let text = p_log(&log);
    assert!(text.contains("sink started") && text.contains("tables=customers,orders"), "{text}");
}

fn p_log(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}
