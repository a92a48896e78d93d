//! End-to-end latency of `tributary run` on a real broker (issue 15 goal 7):
//! from the moment a source record is committed (the broker acknowledged it
//! with `acks=all`) to the moment a `read_committed` reader of the output
//! topic sees the merged record, at a steady input rate.
//!
//!     TRIBUTARY_TEST_BOOTSTRAP=127.0.0.1:PORT cargo bench -j2 --bench latency
//!
//! Without `TRIBUTARY_TEST_BOOTSTRAP` it starts its own broker with
//! `scripts/kafka/kafka`. Settings (environment):
//!
//! - `TRIBUTARY_BENCH_RATE`: events per second over all sources (10 000);
//! - `TRIBUTARY_BENCH_SECONDS`: how long each run feeds events (20);
//! - `TRIBUTARY_BENCH_COMMIT_MS`: the commit intervals to measure, one run
//!   each (`100,500`): the interval bounds the latency, since output becomes
//!   visible to `read_committed` readers only when its transaction commits;
//! - `TRIBUTARY_BENCH_AUDIT`: `0` switches the conflict audit off;
//! - `TRIBUTARY_BIN`: the `tributary` binary to measure (default: the
//!   one cargo built beside this bench).
//!
//! Every event has a key of its own, so every event changes its key's state
//! and emits exactly one output record (design §1, "Output record"); the row
//! carries the event's sequence number, which pairs the two times. Both are
//! taken in this process, on one clock. The first second of each run is left
//! out (the group's first assignment and the producer's first transaction).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

#[path = "support/broker.rs"]
mod broker;

const SOURCES: [&str; 3] = ["eu", "us", "ap"];
const PARTITIONS: i32 = 3;
const WARM_UP: Duration = Duration::from_secs(1);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// The broker of `TRIBUTARY_TEST_BOOTSTRAP`, or one started here (stopped on drop).
struct Broker {
    bootstrap: String,
    started_dir: Option<String>,
}

impl Broker {
    fn get() -> Broker {
        if let Ok(b) = std::env::var("TRIBUTARY_TEST_BOOTSTRAP") {
            return Broker { bootstrap: b, started_dir: None };
        }
        let (dir, bootstrap) = broker::start();
        Broker { bootstrap, started_dir: Some(dir) }
    }

    fn create_topics(&self, topics: &[(String, &[(&str, &str)])]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("admin client");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, config)| {
                config.iter().fold(NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v))
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for r in rt.block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create topics") {
            r.unwrap_or_else(|e| panic!("create topic: {e:?}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(dir) = &self.started_dir {
            broker::stop(dir);
        }
    }
}

/// When each event's source record was acknowledged, by sequence number.
#[derive(Clone, Default)]
struct Acked(Arc<Mutex<HashMap<u64, Instant>>>);

impl ClientContext for Acked {}

impl ProducerContext for Acked {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: Self::DeliveryOpaque) {
        if result.is_ok() {
            self.0.lock().unwrap().insert(*seq, Instant::now());
        }
    }
}

/// A Debezium (PostgreSQL connector, JSON without schema) insert.
fn envelope(seq: u64, source: &str) -> String {
    serde_json::json!({
        "before": null,
        "after": {"id": seq, "seq": seq, "name": format!("Customer {seq:08}"), "tier": "gold", "balance": (seq % 10_000) as f64 / 100.0},
        "source": {"connector": "postgresql", "name": source, "ts_ms": 0, "db": "shop", "schema": "public", "table": "customers", "lsn": seq},
        "op": "c",
        "ts_ms": 0,
    })
    .to_string()
}

/// Feeds `rate` events/s round-robin over the sources for `seconds`.
fn feed(bootstrap: &str, topics: &[String], rate: u64, seconds: u64, acked: Acked) -> u64 {
    let producer: ThreadedProducer<Acked> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "1")
        .create_with_context(acked)
        .expect("producer");
    let total = rate * seconds;
    let start = Instant::now();
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let s = (seq % SOURCES.len() as u64) as usize;
        let key = format!("{{\"id\":{seq}}}");
        let value = envelope(seq, SOURCES[s]);
        let mut record = BaseRecord::with_opaque_to(&topics[s], Box::new(seq)).key(key.as_bytes()).payload(value.as_bytes());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    total
}

/// Reads the output with `read_committed` until `stop`, noting when each
/// sequence number is first seen.
fn read(bootstrap: &str, output: &str, stop: Arc<AtomicBool>) -> HashMap<u64, Instant> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{output}-latency-reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    consumer.subscribe(&[output]).expect("subscribe");
    let mut seen = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            let now = Instant::now();
            let seq =
                m.payload().and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok()).and_then(|v| v["seq"].as_u64());
            if let Some(seq) = seq {
                seen.entry(seq).or_insert(now);
            }
        }
    }
    seen
}

struct Tributary(Child);

impl Drop for Tributary {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tributary(broker: &Broker, group: &str, topics: &[String], output: &str, commit_ms: u64, dir: &Path) -> Tributary {
    let mut config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\n[merge]\npolicy = \"lww\"\n\n[runtime]\nprocessing = \"exactly-once\"\ncommit_interval = \"{commit_ms}ms\"\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = {}\n\n[output]\ntopic = \"{output}\"\n",
        broker.bootstrap,
        dir.join("state").display(),
        env_u64("TRIBUTARY_BENCH_AUDIT", 1) != 0,
    );
    for (s, t) in SOURCES.iter().zip(topics) {
        config += &format!("\n[[sources]]\nname = \"{s}\"\ntopic = \"{t}\"\n");
    }
    let path = dir.join("latency.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("latency.log")).unwrap();
    // `TRIBUTARY_BIN` measures another build (e.g. a clean checkout's).
    let bin = std::env::var("TRIBUTARY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tributary").to_string());
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tributary");
    Tributary(child)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would run this too.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rate = env_u64("TRIBUTARY_BENCH_RATE", 10_000);
    let seconds = env_u64("TRIBUTARY_BENCH_SECONDS", 20);
    let intervals: Vec<u64> = std::env::var("TRIBUTARY_BENCH_COMMIT_MS")
        .unwrap_or_else(|_| "100,500".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let broker = Broker::get();
    let run = format!(
        "latency-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    );
    println!("| commit interval | events | measured | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for commit_ms in intervals {
        let group = format!("{run}-{commit_ms}");
        let topics: Vec<String> = SOURCES.iter().map(|s| format!("{group}.{s}")).collect();
        let output = format!("{group}.merged");
        let mut create: Vec<(String, &[(&str, &str)])> = topics.iter().map(|t| (t.clone(), &[][..])).collect();
        create.push((output.clone(), &[("cleanup.policy", "compact")][..]));
        broker.create_topics(&create);
        let dir = tempfile::tempdir().unwrap();
        let tributary = start_tributary(&broker, &group, &topics, &output, commit_ms, dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (bootstrap, output, stop) = (broker.bootstrap.clone(), output.clone(), stop.clone());
            std::thread::spawn(move || read(&bootstrap, &output, stop))
        };
        // Let the processor join its group before the clock starts.
        std::thread::sleep(Duration::from_secs(5));
        let acked = Acked::default();
        let fed_at = Instant::now();
        let total = feed(&broker.bootstrap, &topics, rate, seconds, acked.clone());
        // The last events need a commit interval and a transaction to show.
        std::thread::sleep(Duration::from_secs(5) + Duration::from_millis(10 * commit_ms));
        let acked = acked.0.lock().unwrap().clone();
        stop.store(true, Ordering::Relaxed);
        let seen = reader.join().unwrap();
        drop(tributary);
        let mut lat: Vec<f64> = acked
            .iter()
            .filter(|(_, at)| at.duration_since(fed_at) >= WARM_UP)
            .filter_map(|(seq, at)| seen.get(seq).map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0))
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        if lat.is_empty() {
            println!("| {commit_ms} ms | {total} | 0 | — | — | — | (no output seen; log in {})", dir.keep().display());
            continue;
        }
        println!(
            "| {commit_ms} ms | {total} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
}
