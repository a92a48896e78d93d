//! End-to-end throughput of `tributary run` on a real Kafka broker, against a
//! raw consume → produce pass-through with the same client settings.
//!
//! Run: `cargo bench -j2 --bench e2e` (about 1–4 minutes on 2 cores).
//! Environment:
//!
//! * `TRIBUTARY_BENCH_EVENTS`: change events (default 200 000), spread over
//!   3 source topics (`eu`, `us`, `ap`) × 3 partitions.
//! * `TRIBUTARY_BENCH_KEYS`: distinct ids (default 50 000).
//! * `TRIBUTARY_BENCH_ROW_BYTES`: pad each row to about this size (default:
//!   no padding, rows of about 200 bytes).
//! * `TRIBUTARY_TEST_BOOTSTRAP`: a running broker. Without it the bench starts
//!   one with `scripts/kafka/kafka start` and stops it (`--rm`) at the end.
//!   On a given broker it deletes the topics it created when it is done.
//! * `TRIBUTARY_BIN`: the `tributary` binary to run. Default: the one cargo
//!   builds for this bench (`target/release/tributary`; the bench profile
//!   inherits release).
//! * `TRIBUTARY_BENCH_MODES`: comma-separated subset of
//!   `pass-eos,pass-alo,trib-eos,trib-alo` (default: all, in that order).
//! * `TRIBUTARY_BENCH_COMMIT_MS`: commit interval of every mode (100).
//! * `TRIBUTARY_BENCH_AUDIT=0`: run Tributary without its conflict audit
//!   topic (on by default, as in Tributary).
//! * `TRIBUTARY_BENCH_PASS_DRAIN=1`: the pass-through serves its delivery
//!   reports in 1 ms steps before committing (rdkafka 0.39's `flush`, which
//!   `commit_transaction` calls, otherwise waits in 100 ms steps).
//! * `TRIBUTARY_BENCH_TIMEOUT_SECS`: give up on a mode after this long (60);
//!   the table then shows how far it got.
//! * `TRIBUTARY_BENCH_TRACE`: print the output count every 500 ms.
//! * `TRIBUTARY_BENCH_LOG`: `RUST_LOG` of the processor (default
//!   `info,librdkafka=warn,rdkafka=warn`; `tributary::run=debug` adds every
//!   "cycle committed elapsed_ms=…", and one line per conflict).
//!
//! Workload: Debezium JSON envelopes (Postgres connector, no schema), key
//! `{"id":k}` placed by Kafka's murmur2 partitioner (so a key is in the same
//! partition of every source), a customer row of about 200 bytes, `op` `c`
//! on a source's first write of a key and `u` after, `before: null`, a full
//! `source` block, commit times that are real epoch milliseconds (now,
//! 8 events per ms: the broker applies retention to record times). Derived
//! clocks (Kafka offset + 1), `lww`: every event raises its key's clock, so
//! Tributary emits exactly one output record per event.
//!
//! All events are produced once, untimed. Then each mode consumes all of
//! them from the beginning with a fresh consumer group and output topic:
//!
//! * `pass-eos`: in-process rdkafka `BaseConsumer` (Tributary's consumer
//!   settings: range assignor, read_committed, manual commits) + transactional
//!   `BaseProducer` (idempotent, linger.ms=5, lz4, Tributary's timeouts); the
//!   same bytes go to the same partition of a pass-through topic. One message
//!   per `poll(20ms)`, as Tributary's loop; after each 100 ms of processing,
//!   `send_offsets_to_transaction` + `commit_transaction`, as Tributary's
//!   cycle does. (The interval counts from the end of the previous commit;
//!   see the report of the first runs for why that matters.)
//! * `pass-alo`: the same without transactions: flush, then a synchronous
//!   offset commit (Tributary's at-least-once cycle).
//! * `trib-eos` / `trib-alo`: the `tributary run` binary (exactly-once /
//!   at-least-once) with a fresh group, output topic and temp state dir.
//!
//! Every mode is timed the same way: from the start (client creation, or
//! spawning the process) until a separate `read_committed` reader has seen
//! all N records in the output topic. Output topics and Tributary's
//! changelogs are created up front, compacted with `min.compaction.lag.ms`
//! of an hour, so the counts are exact. `startup` is the time until the
//! reader saw the first output record; `steady ev/s` is the rate after that.
//! Per event Tributary writes an output and a changelog record (and an audit
//! record when the event leaves concurrent versions, which is most events
//! here), where the pass-through writes one. Processor logs (with the final
//! `stopped … commits=…` counters) go to `target/e2e-bench/`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const SOURCES: [&str; 3] = ["eu", "us", "ap"];
const PARTITIONS: i32 = 3;
const TIMEOUT: Duration = Duration::from_secs(30);
const CITIES: [(&str, &str); 8] = [
    ("Lisbon", "PT"),
    ("Frankfurt", "DE"),
    ("Dublin", "IE"),
    ("New York", "US"),
    ("Sao Paulo", "BR"),
    ("Toronto", "CA"),
    ("Singapore", "SG"),
    ("Sydney", "AU"),
];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name}={v:?}: expected a positive integer")),
        Err(_) => default,
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

// ------------------------------------------------------------------ broker

/// The broker: given by `TRIBUTARY_TEST_BOOTSTRAP`, or started here and
/// stopped on drop.
struct Broker {
    bootstrap: String,
    started_dir: Option<String>,
    created_topics: Vec<String>,
}

impl Broker {
    fn get() -> Broker {
        if let Ok(b) = std::env::var("TRIBUTARY_TEST_BOOTSTRAP") {
            return Broker { bootstrap: b, started_dir: None, created_topics: Vec::new() };
        }
        eprintln!("starting a Kafka broker (scripts/kafka/kafka start)…");
        let out = Command::new(root().join("scripts/kafka/kafka"))
            .arg("start")
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/kafka/kafka runs");
        assert!(out.status.success(), "could not start a Kafka broker");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("broker in {} at {}", lines[0], lines.last().unwrap());
        Broker {
            bootstrap: lines.last().unwrap().trim().to_string(),
            started_dir: Some(lines[0].to_string()),
            created_topics: Vec::new(),
        }
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("admin client")
    }

    fn create_topic(&mut self, name: &str, config: &[(&str, &str)]) {
        let mut topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
        for (k, v) in config {
            topic = topic.set(k, v);
        }
        let res = rt().block_on(self.admin().create_topics([&topic], &AdminOptions::new())).expect("create topics");
        for r in res {
            r.unwrap_or_else(|e| panic!("create topic {name}: {e:?}"));
        }
        self.created_topics.push(name.to_string());
    }

    fn compacted_topic(&mut self, name: &str) {
        self.create_topic(name, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(dir) = &self.started_dir {
            eprintln!("stopping the broker in {dir}");
            let _ = Command::new(root().join("scripts/kafka/kafka")).args(["stop", dir, "--rm"]).stdout(Stdio::null()).status();
        } else if !self.created_topics.is_empty() {
            // A shared development broker: leave it as it was.
            let names: Vec<&str> = self.created_topics.iter().map(String::as_str).collect();
            let _ = rt().block_on(self.admin().delete_topics(&names, &AdminOptions::new()));
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- workload

/// `2024-05-01T12:34:56.789Z` from epoch milliseconds (UTC).
fn iso8601(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Event i: (source, key id). Sources take turns; ids are scattered.
fn event_key(i: usize, keys: usize) -> (usize, usize) {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    let x = (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (i % SOURCES.len(), ((x ^ (x >> 32)) % keys as u64) as usize)
}

fn row_padding() -> usize {
    static PAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAD.get_or_init(|| env_usize("TRIBUTARY_BENCH_ROW_BYTES", 0))
}

/// A Debezium (Postgres connector, JSON without schema) change event.
fn envelope(i: usize, s: usize, k: usize, first: bool, ts: i64) -> String {
    let (city, country) = CITIES[(k * 31 + s) % CITIES.len()];
    let balance = ((k * 7919 + i * 104_729 + s * 13) % 10_000_000) as f64 / 100.0;
    let mut row = serde_json::json!({
        "id": k,
        "name": format!("Customer {k:06}"),
        "email": format!("customer.{k:06}@example.com"),
        "phone": format!("+1 555 {:03} {:04}", k / 10_000 % 1000, k % 10_000),
        "city": city,
        "country": country,
        "tier": TIERS[k % TIERS.len()],
        "balance": balance,
        "updated_at": iso8601(ts),
    });
    // TRIBUTARY_BENCH_ROW_BYTES: pad the row to about that many bytes (the
    // memory figure per key is stated for ~500-byte rows).
    let pad = row_padding().saturating_sub(row.to_string().len() + 10);
    if pad > 0 {
        row["notes"] = serde_json::Value::String("x".repeat(pad));
    }
    let lsn = 24_000_000 + i as i64 * 312;
    serde_json::json!({
        "before": null,
        "after": row,
        "source": {
            "version": "2.7.3.Final", "connector": "postgresql", "name": SOURCES[s], "ts_ms": ts,
            "snapshot": "false", "db": "shop", "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 312),
            "schema": "public", "table": "customers", "txId": 7_000 + i / 4, "lsn": lsn, "xmin": null
        },
        "op": if first { "c" } else { "u" },
        "ts_ms": ts + 3,
        "transaction": null
    })
    .to_string()
}

/// `send`, waiting while the queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(20));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Produces the N events (untimed); returns (bytes of values, seconds).
fn produce_events(bootstrap: &str, topics: &[String], n: usize, keys: usize) -> (usize, f64) {
    let started = Instant::now();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .expect("producer");
    let mut seen = vec![vec![false; keys]; SOURCES.len()];
    let base = now_ms();
    let mut bytes = 0;
    for i in 0..n {
        let (s, k) = event_key(i, keys);
        let first = !std::mem::replace(&mut seen[s][k], true);
        let ts = base + (i / 8) as i64;
        let value = envelope(i, s, k, first, ts);
        bytes += value.len();
        let key = format!("{{\"id\":{k}}}");
        let record = BaseRecord::to(&topics[s])
            .partition(tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS))
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .timestamp(ts + 5);
        send(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    (bytes, started.elapsed().as_secs_f64())
}

// ------------------------------------------------------------------ reader

/// Counts the committed records of a topic as they appear.
struct Reader {
    count: Arc<AtomicU64>,
    first: Arc<std::sync::Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(bootstrap: &str, topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .set("group.id", format!("{topic}-reader"))
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let (count, first, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(None)), Arc::new(AtomicBool::new(false)));
        let (c, f, st) = (count.clone(), first.clone(), stop.clone());
        let topic = topic.to_string();
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(_)) => {
                        let before = c.fetch_add(1, Ordering::Relaxed);
                        if before == 0 {
                            *f.lock().unwrap() = Some(Instant::now());
                        }
                    }
                    Some(Err(e)) => eprintln!("reader of {topic}: {e}"),
                    None => {}
                }
            }
        });
        Reader { count, first, stop, handle: Some(handle) }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn first(&self) -> Option<Instant> {
        *self.first.lock().unwrap()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- results

struct Outcome {
    mode: &'static str,
    events: u64,
    /// Output records seen (= events when complete).
    done: u64,
    /// Until the reader saw all N (or the timeout).
    seconds: f64,
    /// Until the reader saw the first output record.
    startup: f64,
    commits: Option<u64>,
    complete: bool,
    note: String,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.done as f64 / self.seconds
    }

    fn steady(&self) -> f64 {
        self.done.saturating_sub(1) as f64 / (self.seconds - self.startup).max(1e-9)
    }
}

/// Waits until the reader has seen `n` records (or `within` passed).
/// Returns (seconds from `start`, startup seconds, complete).
fn wait_all(
    reader: &Reader,
    start: Instant,
    n: u64,
    within: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> (f64, f64, u64, String) {
    let mut note = String::new();
    let trace = std::env::var_os("TRIBUTARY_BENCH_TRACE").is_some();
    let mut next_trace = start;
    let done = loop {
        let c = reader.count();
        if trace && Instant::now() >= next_trace {
            eprintln!("    {:6.2} s: {c} records", start.elapsed().as_secs_f64());
            next_trace += Duration::from_millis(500);
        }
        if c >= n {
            break c;
        }
        if start.elapsed() > within {
            note = format!("timed out at {c}/{n} records");
            break c;
        }
        if let Err(e) = alive() {
            note = format!("{e} at {c}/{n} records");
            break c;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = start.elapsed().as_secs_f64();
    let startup = reader.first().map_or(seconds, |f| f.duration_since(start).as_secs_f64());
    (seconds, startup, done, note)
}

// ------------------------------------------------------------ pass-through

#[derive(Clone, Copy)]
struct Settings {
    /// Give up on a mode after this long.
    timeout: Duration,
    /// Tributary's `runtime.commit_interval`, and the pass-through's.
    commit_interval: Duration,
    /// Pass-through only: drain delivery reports before committing.
    drain: bool,
    /// Tributary's conflict audit topic (on by default, as in Tributary).
    audit: bool,
}

fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    c
}

fn producer_config(bootstrap: &str, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("enable.idempotence", "true").set("linger.ms", "5").set("compression.type", "lz4");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id).set("transaction.timeout.ms", "10000").set("message.timeout.ms", "10000");
    }
    c
}

/// What the pass-through saw of its own commits.
struct Stats {
    commits: u64,
    /// Until the last commit.
    seconds: f64,
    commit_ms: f64,
    max_commit_ms: f64,
}

/// Consume → produce the same bytes → commit after each 100 ms of
/// processing, until `n` records are committed.
#[allow(clippy::too_many_arguments)]
fn pass_through(
    bootstrap: &str,
    sources: &[String],
    group: &str,
    output: &str,
    n: u64,
    exactly_once: bool,
    start: Instant,
    set: Settings,
) -> Result<Stats, String> {
    let consumer: BaseConsumer = consumer_config(bootstrap, group).create().map_err(|e| e.to_string())?;
    let txn_id = format!("{group}-txn");
    let producer: BaseProducer =
        producer_config(bootstrap, exactly_once.then_some(txn_id.as_str())).create().map_err(|e| e.to_string())?;
    if exactly_once {
        producer.init_transactions(TIMEOUT).map_err(|e| format!("init transactions: {e}"))?;
    }
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).map_err(|e| e.to_string())?;
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    let (mut open, mut pending, mut committed, mut commits) = (false, 0u64, 0u64, 0u64);
    let mut last_commit = Instant::now();
    let (mut commit_time, mut max_commit) = (Duration::ZERO, Duration::ZERO);
    while committed < n {
        if start.elapsed() > set.timeout {
            return Err(format!("timed out with {committed}/{n} committed"));
        }
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                if exactly_once && !open {
                    producer.begin_transaction().map_err(|e| format!("begin: {e}"))?;
                }
                open = true;
                let mut record = BaseRecord::<[u8], [u8]>::to(output).partition(m.partition());
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                if let Some(v) = m.payload() {
                    record = record.payload(v);
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    record = record.timestamp(ts);
                }
                send(&producer, record).map_err(|e| format!("produce: {e}"))?;
                positions.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
                pending += 1;
            }
            Some(Err(e)) => eprintln!("pass-through consumer: {e}"),
            None => {}
        }
        if last_commit.elapsed() >= set.commit_interval {
            last_commit = Instant::now();
            if open {
                if set.drain {
                    // rdkafka 0.39's flush (also inside commit_transaction)
                    // polls in 100 ms steps: collect the delivery reports in
                    // small steps first, so that it finds nothing in flight.
                    while producer.in_flight_count() > 0 && last_commit.elapsed() < TIMEOUT {
                        producer.poll(Duration::from_millis(1));
                    }
                }
                let mut offsets = TopicPartitionList::new();
                for ((t, p), o) in &positions {
                    offsets.add_partition_offset(t, *p, Offset::Offset(*o)).unwrap();
                }
                if exactly_once {
                    let md = consumer.group_metadata().ok_or("no group metadata")?;
                    producer.send_offsets_to_transaction(&offsets, &md, TIMEOUT).map_err(|e| format!("send offsets: {e}"))?;
                    producer.commit_transaction(TIMEOUT).map_err(|e| format!("commit: {e}"))?;
                } else {
                    producer.flush(TIMEOUT).map_err(|e| format!("flush: {e}"))?;
                    consumer.commit(&offsets, CommitMode::Sync).map_err(|e| format!("commit offsets: {e}"))?;
                }
                let took = last_commit.elapsed();
                commit_time += took;
                max_commit = max_commit.max(took);
                positions.clear();
                open = false;
                committed += pending;
                pending = 0;
                commits += 1;
            }
            // The next cycle gets its full interval, however long the commit took.
            last_commit = Instant::now();
        }
    }
    Ok(Stats {
        commits,
        seconds: start.elapsed().as_secs_f64(),
        commit_ms: commit_time.as_secs_f64() * 1e3 / commits.max(1) as f64,
        max_commit_ms: max_commit.as_secs_f64() * 1e3,
    })
}

fn run_pass_through(broker: &mut Broker, run: &str, sources: &[String], n: u64, exactly_once: bool, set: Settings) -> Outcome {
    let mode = if exactly_once { "pass-eos" } else { "pass-alo" };
    let group = format!("{run}-{mode}");
    let output = format!("{group}.out");
    broker.compacted_topic(&output);
    let reader = Reader::start(&broker.bootstrap, &output);
    let start = Instant::now();
    let bootstrap = broker.bootstrap.clone();
    let (srcs, grp, out) = (sources.to_vec(), group.clone(), output.clone());
    let worker = std::thread::spawn(move || pass_through(&bootstrap, &srcs, &grp, &out, n, exactly_once, start, set));
    // The reader may lag the last commit a little.
    let mut ended: Option<Instant> = None;
    let (seconds, startup, done, mut note) = wait_all(&reader, start, n, set.timeout, || {
        if worker.is_finished() && ended.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
            return Err("pass-through ended".into());
        }
        Ok(())
    });
    let mut commits = None;
    match worker.join().expect("pass-through thread") {
        Ok(st) => {
            commits = Some(st.commits);
            if note.is_empty() {
                note = format!(
                    "all committed in-process at {:.2} s; commit avg {:.0} ms, max {:.0} ms",
                    st.seconds, st.commit_ms, st.max_commit_ms
                );
            }
        }
        Err(e) => note = format!("{note}; {e}"),
    }
    Outcome { mode, events: n, done, seconds, startup, commits, complete: done >= n, note }
}

// --------------------------------------------------------------- tributary

fn tributary_bin() -> PathBuf {
    match std::env::var_os("TRIBUTARY_BIN") {
        Some(p) => PathBuf::from(p),
        // Built by `cargo bench` for this bench, with the bench profile
        // (which inherits release): target/release/tributary.
        None => PathBuf::from(env!("CARGO_BIN_EXE_tributary")),
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn sigterm(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.0.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// The text without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=` in the processor's "stopped" log line.
fn stopped_field(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("stopped") && l.contains("commits="))?;
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

#[allow(clippy::too_many_arguments)]
fn run_tributary(
    broker: &mut Broker,
    run: &str,
    sources: &[String],
    n: u64,
    exactly_once: bool,
    set: Settings,
    state_root: &Path,
    log_dir: &Path,
) -> Outcome {
    let mode = if exactly_once { "trib-eos" } else { "trib-alo" };
    let group = format!("{run}-{mode}");
    let output = format!("{group}.merged");
    broker.compacted_topic(&output);
    broker.compacted_topic(&format!("{group}-state-changelog"));
    let mut config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\n[output]\ntopic = \"{output}\"\n\n[merge]\npolicy = \"lww\"\n\n[runtime]\nprocessing = \"{}\"\ncommit_interval = \"{}ms\"\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = {}\n",
        broker.bootstrap,
        if exactly_once { "exactly-once" } else { "at-least-once" },
        set.commit_interval.as_millis(),
        state_root.join(mode).display(),
        set.audit,
    );
    for (i, (s, t)) in SOURCES.iter().zip(sources).enumerate() {
        config += &format!("\n[[sources]]\nname = \"{s}\"\ntopic = \"{t}\"\npriority = {i}\n");
    }
    let config_path = state_root.join(format!("{mode}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let log_path = log_dir.join(format!("{mode}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let reader = Reader::start(&broker.bootstrap, &output);

    let mut cmd = Command::new(tributary_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIBUTARY_") && k.contains("__") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["run", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", std::env::var("TRIBUTARY_BENCH_LOG").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let start = Instant::now();
    let mut child = Process(cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", tributary_bin().display())));
    let (seconds, startup, done, mut note) = wait_all(&reader, start, n, set.timeout, || match child.0.try_wait() {
        Ok(Some(s)) => Err(format!("tributary exited ({s})")),
        _ => Ok(()),
    });
    // Peak resident memory of the whole run (the kernel's high-water mark).
    let peak_rss_mb = std::fs::read_to_string(format!("/proc/{}/status", child.0.id()))
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb / 1024);
    let status = child.sigterm(Duration::from_secs(60));
    let text = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    if let Some(mb) = peak_rss_mb {
        note = format!("{note} peak_rss={mb}MB");
    }
    if !status.is_some_and(|s| s.success()) {
        note = format!("{note} exit {status:?}; see {}", log_path.display());
    }
    let commits = stopped_field(&text, "commits");
    if let (Some(consumed), Some(aborts)) = (stopped_field(&text, "consumed"), stopped_field(&text, "aborts")) {
        note = format!("{note} consumed={consumed} aborts={aborts}");
    }
    Outcome { mode, events: n, done, seconds, startup, commits, complete: done >= n, note: note.trim().to_string() }
}

// -------------------------------------------------------------------- main

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a == "--list") {
        return;
    }
    let n = env_usize("TRIBUTARY_BENCH_EVENTS", 200_000);
    let keys = env_usize("TRIBUTARY_BENCH_KEYS", 50_000);
    let modes: Vec<String> = std::env::var("TRIBUTARY_BENCH_MODES")
        .unwrap_or_else(|_| "pass-eos,pass-alo,trib-eos,trib-alo".into())
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    let set = Settings {
        timeout: Duration::from_secs(env_usize("TRIBUTARY_BENCH_TIMEOUT_SECS", 60) as u64),
        commit_interval: Duration::from_millis(env_usize("TRIBUTARY_BENCH_COMMIT_MS", 100) as u64),
        drain: std::env::var_os("TRIBUTARY_BENCH_PASS_DRAIN").is_some_and(|v| v != "0"),
        audit: std::env::var("TRIBUTARY_BENCH_AUDIT").map_or(true, |v| v != "0" && v != "false"),
    };
    let bin = tributary_bin();
    if modes.iter().any(|m| m.starts_with("trib")) {
        assert!(bin.exists(), "{} does not exist (set TRIBUTARY_BIN or build with `cargo build --release -j2`)", bin.display());
    }

    let mut broker = Broker::get();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let run = format!("e2e-{}-{:x}", std::process::id(), nanos % 0xffff_ffff);
    let sources: Vec<String> = SOURCES.iter().map(|s| format!("{run}.{s}.public.customers")).collect();
    for t in &sources {
        broker.create_topic(t, &[]);
    }
    let state = tempfile::tempdir().unwrap();
    let log_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("e2e-bench");
    std::fs::create_dir_all(&log_dir).unwrap();

    eprintln!("producing {n} events ({} sources × {PARTITIONS} partitions, {keys} keys) to {run}.*…", SOURCES.len());
    let (bytes, secs) = produce_events(&broker.bootstrap, &sources, n, keys);
    eprintln!("produced in {secs:.1} s (untimed); average value {} bytes", bytes / n.max(1));

    let n = n as u64;
    let mut outcomes = Vec::new();
    for mode in &modes {
        eprintln!("running {mode}…");
        let o = match mode.as_str() {
            "pass-eos" => run_pass_through(&mut broker, &run, &sources, n, true, set),
            "pass-alo" => run_pass_through(&mut broker, &run, &sources, n, false, set),
            "trib-eos" => run_tributary(&mut broker, &run, &sources, n, true, set, state.path(), &log_dir),
            "trib-alo" => run_tributary(&mut broker, &run, &sources, n, false, set, state.path(), &log_dir),
            other => panic!("unknown mode {other:?} in TRIBUTARY_BENCH_MODES"),
        };
        eprintln!("  {mode}: {:.2} s, {:.0} events/s {}", o.seconds, o.rate(), o.note);
        outcomes.push(o);
    }

    let base = |m: &str| outcomes.iter().find(|o| o.mode == m && o.complete).map(Outcome::rate);
    let (eos, alo) = (base("pass-eos"), base("pass-alo"));
    let ratio = |r: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.0} %", 100.0 * r / b));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\ne2e: {n} events, {keys} keys, 3 sources × {PARTITIONS} partitions, commit interval {} ms, tributary audit {}{}, broker {}",
        set.commit_interval.as_millis(),
        if set.audit { "on" } else { "off" },
        if set.drain { ", pass-through drains deliveries before committing" } else { "" },
        broker.bootstrap
    )
    .unwrap();
    writeln!(
        out,
        "{:<9} {:>8} {:>8} {:>8} {:>10} {:>11} {:>9} {:>9} {:>8} {:>9}  note",
        "mode", "events", "seconds", "startup", "events/s", "steady ev/s", "vs p-eos", "vs p-alo", "commits", "ev/commit"
    )
    .unwrap();
    for o in &outcomes {
        let mark = if o.complete { String::new() } else { format!(" INCOMPLETE ({}/{})", o.done, o.events) };
        writeln!(
            out,
            "{:<9} {:>8} {:>8.2} {:>8.2} {:>10.0} {:>11.0} {:>9} {:>9} {:>8} {:>9}  {}{mark}",
            o.mode,
            o.done,
            o.seconds,
            o.startup,
            o.rate(),
            o.steady(),
            ratio(o.rate(), eos),
            ratio(o.rate(), alo),
            o.commits.map_or("-".into(), |c| c.to_string()),
            o.commits.filter(|c| *c > 0).map_or("-".into(), |c| format!("{:.0}", o.done as f64 / c as f64)),
            o.note
        )
        .unwrap();
    }
    if let (Some(t), Some(b)) = (outcomes.iter().find(|o| o.mode == "trib-eos" && o.complete), eos) {
        let pct = 100.0 * t.rate() / b;
        writeln!(
            out,
            "goal: tributary exactly-once >= 60 % of the exactly-once pass-through: {pct:.0} % ({})",
            if pct >= 60.0 { "met" } else { "MISSED" }
        )
        .unwrap();
    }
    writeln!(out, "processor logs: {}", log_dir.display()).unwrap();
}
