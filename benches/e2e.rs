//! End-to-end throughput of `tributary run` on a real Kafka broker, side by
//! side with raw consume → produce pass-throughs (Rust and Java) and with
//! Kafka Streams (a pass-through, and the same merge hand-coded), all on the
//! same data in the same run.
//!
//! Run: `cargo bench -j2 --bench e2e` (several minutes on 2 cores).
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
//!   `pass-eos,pass-alo,java-pass,kstreams-pass,kstreams-merge,trib-eos,trib-alo,tables,repartition`
//!   (default: all, in that order). `tables` and `repartition` are compared
//!   with `trib-eos`, so run it too.
//! * `TRIBUTARY_BENCH_TABLES`: tables of the `tables` mode (default 20).
//! * `TRIBUTARY_BENCH_JSON`: where to write the results as JSON (default
//!   `target/e2e-bench/result.json`).
//! * `TRIBUTARY_BENCH_JAVA` (default `java`) and `TRIBUTARY_BENCH_JAVA_OPTS`
//!   (JVM options, split at whitespace; default none, so the JVM's own heap
//!   sizing): how the Java modes run. Their jar,
//!   `benches/kstreams/target/kstreams-bench.jar`, is built when missing with
//!   `mvn -q -o package` in `benches/kstreams` (and `mvn -q package`, which
//!   downloads the dependencies from Maven Central, when the offline build
//!   fails). Cargo never builds it.
//! * `TRIBUTARY_BENCH_COMMIT_MS`: commit interval of every mode (100).
//! * `TRIBUTARY_BENCH_AUDIT=0`: run Tributary without its conflict audit
//!   topic (on by default, as in Tributary).
//! * `TRIBUTARY_BENCH_PASS_DRAIN=1`: the Rust pass-through serves its delivery
//!   reports in 1 ms steps before committing (rdkafka 0.39's `flush`, which
//!   `commit_transaction` calls, otherwise waits in 100 ms steps).
//! * `TRIBUTARY_BENCH_TIMEOUT_SECS`: give up on a mode after this long (60);
//!   the table then shows how far it got.
//! * `TRIBUTARY_BENCH_TRACE`: print the progress every 500 ms.
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
//! * `java-pass`: the same exactly-once pass-through with the Java clients
//!   (`benches/kstreams`, `PassThrough`: `KafkaConsumer` read_committed +
//!   transactional `KafkaProducer`, linger.ms=5, lz4,
//!   `sendOffsetsToTransaction` every commit interval).
//! * `kstreams-pass`: Kafka Streams, exactly-once v2, source → sink, no state
//!   (`StreamsPassThrough`).
//! * `kstreams-merge`: Kafka Streams, exactly-once v2, the merge Tributary
//!   does here hand-coded as a Streams user would (`StreamsMerge`: derived
//!   clocks, a KTable of the latest version per source per key, row-level
//!   `lww`, one merged row per key). Its KTable cache forwards one row per key
//!   per commit, so its output has fewer records than events; the bench checks
//!   instead that its compacted output holds every key, and, when a Tributary
//!   mode ran too, that the last row of every key equals Tributary's.
//! * `trib-eos` / `trib-alo`: the `tributary run` binary (exactly-once /
//!   at-least-once) with a fresh group, output topic and temp state dir.
//! * `tables` (issue 14): `trib-eos`'s events split by key into 20 tables
//!   (key `k` in table `k % 20`) of 3 regional topics each
//!   (`{run}.tables.{region}.public.t07`, 3 partitions; produced again,
//!   untimed), merged by one process found by `[tables_pattern]`: the same
//!   total events, keys and updates per key as the single table, over 20×
//!   the topics, tasks, changelogs and outputs. Reported as a ratio to
//!   `trib-eos` (goal: at least 0.9 of its events/s).
//! * `repartition` (issue 14): `trib-eos`'s events with ap's in a topic of
//!   2 partitions (produced again, untimed), so a third of the events are
//!   re-keyed through the repartition topic and read back; eu and us are
//!   `trib-eos`'s topics. Its ratio to `trib-eos` is the detour's cost.
//!   Both modes' outputs are checked against `trib-eos`'s: the last row of
//!   every key must be the same.
//!
//! Every mode is timed the same way: from the start (client creation, or
//! spawning the process) until the group's committed offsets reach the end
//! of every source partition and, for the modes that write one record per
//! event, a separate `read_committed` reader has seen all N records in the
//! output topic. Output topics and Tributary's changelogs are created up
//! front, compacted with `min.compaction.lag.ms` of an hour, so the counts
//! are exact. `startup` is the time until the reader saw the first output
//! record; `steady ev/s` is the rate after that. CPU is user + system time of
//! the process (`/proc/<pid>/stat`), peak RSS its `VmHWM`, both read just
//! before it is stopped; for the in-process Rust pass-throughs they are the
//! bench process's own (including its reader thread; marked `*`). Per event
//! Tributary writes an output and a changelog record (and an audit record
//! when the event leaves concurrent versions, which is most events here),
//! where the pass-throughs write one. Processor logs (with the final
//! `stopped … commits=…` counters) and the JVMs' stderr go to
//! `target/e2e-bench/`.

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
#[path = "support/broker.rs"]
mod broker;

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
        let (dir, bootstrap) = broker::start();
        eprintln!("broker in {dir} at {bootstrap}");
        Broker { bootstrap, started_dir: Some(dir), created_topics: Vec::new() }
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().expect("admin client")
    }

    fn create_topic(&mut self, name: &str, config: &[(&str, &str)]) {
        self.create_topic_of(name, PARTITIONS, config);
    }

    fn create_topic_of(&mut self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
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
            broker::stop(dir);
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
        "updated_at": tributary::time::format_millis(ts).expect("a commit time in years 1 to 9999"),
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

/// Produces the N events (untimed); returns (bytes of values, seconds, distinct keys written).
/// Commit times start at `base` (epoch ms).
fn produce_events(bootstrap: &str, topics: &[String], n: usize, keys: usize, base: i64) -> (usize, f64, usize) {
    produce_routed(bootstrap, n, keys, base, |s, _| Some((topics[s].as_str(), PARTITIONS)))
}

/// [`produce_events`] with the topic of each event chosen by `route(source,
/// key id)`: (topic, its partition count), or None to leave the event out.
/// Events, keys, rows and times are the same whatever the route (for the
/// same `base`).
fn produce_routed<'a>(
    bootstrap: &str,
    n: usize,
    keys: usize,
    base: i64,
    route: impl Fn(usize, usize) -> Option<(&'a str, i32)>,
) -> (usize, f64, usize) {
    let started = Instant::now();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .expect("producer");
    let mut seen = vec![vec![false; keys]; SOURCES.len()];
    let mut bytes = 0;
    for i in 0..n {
        let (s, k) = event_key(i, keys);
        let first = !std::mem::replace(&mut seen[s][k], true);
        let Some((topic, partitions)) = route(s, k) else { continue };
        let ts = base + (i / 8) as i64;
        let value = envelope(i, s, k, first, ts);
        bytes += value.len();
        let key = format!("{{\"id\":{k}}}");
        let record = BaseRecord::to(topic)
            .partition(tributary::kafka::murmur2_partition(key.as_bytes(), partitions))
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .timestamp(ts + 5);
        send(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let distinct = (0..keys).filter(|k| seen.iter().any(|s| s[*k])).count();
    (bytes, started.elapsed().as_secs_f64(), distinct)
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
        Reader::start_many(bootstrap, &[topic.to_string()])
    }

    /// One reader counting the records of every topic of `topics` together.
    fn start_many(bootstrap: &str, topics: &[String]) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .set("group.id", format!("{}-reader", topics[0]))
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
            }
        }
        consumer.assign(&tpl).expect("assign");
        let (count, first, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(None)), Arc::new(AtomicBool::new(false)));
        let (c, f, st) = (count.clone(), first.clone(), stop.clone());
        let topic = topics.join(",");
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

/// The mode's consumer group's committed offsets, summed over the source
/// partitions: the events it has finished with. (Sources start at offset 0
/// and hold no transaction markers, so the sum reaches N at the end.)
struct Committed {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
}

impl Committed {
    fn new(bootstrap: &str, group: &str, sources: &[String]) -> Committed {
        let sources: Vec<(String, i32)> = sources.iter().map(|t| (t.clone(), PARTITIONS)).collect();
        Committed::with_partitions(bootstrap, group, &sources)
    }

    /// [`new`](Committed::new) for sources of the given partition counts.
    fn with_partitions(bootstrap: &str, group: &str, sources: &[(String, i32)]) -> Committed {
        // Never joins the group: it only fetches the group's offsets.
        // read_uncommitted: with read_committed librdkafka asks for stable
        // offsets and waits out every open transaction.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_uncommitted")
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets reader");
        let mut partitions = TopicPartitionList::new();
        for (t, n) in sources {
            for p in 0..*n {
                partitions.add_partition(t, p);
            }
        }
        Committed { consumer, partitions }
    }

    fn events(&self) -> Option<u64> {
        let c = self.consumer.committed_offsets(self.partitions.clone(), Duration::from_secs(5)).ok()?;
        Some(
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o.max(0) as u64,
                    _ => 0,
                })
                .sum(),
        )
    }
}

/// CPU seconds (user + system) and peak resident memory (MB) of a process,
/// from `/proc/<pid>/stat` and `/proc/<pid>/status` (`self` for this one).
fn proc_usage(pid: &str) -> (Option<f64>, Option<u64>) {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    // Fields after the command name (which may hold spaces) in parentheses:
    // state is the first, utime and stime the 12th and 13th.
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|t| {
        let rest: Vec<&str> = t[t.rfind(')')? + 1..].split_whitespace().collect();
        let (u, s): (f64, f64) = (rest.get(11)?.parse().ok()?, rest.get(12)?.parse().ok()?);
        Some((u + s) / ticks)
    });
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb / 1024);
    (cpu, rss)
}

/// The last committed value of every key of a topic (None: a tombstone),
/// read from the beginning to the end.
fn read_last(bootstrap: &str, topic: &str) -> Result<HashMap<Vec<u8>, Option<serde_json::Value>>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("group.id", format!("{topic}-last"))
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut at_end = std::collections::HashSet::new();
    let mut last = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < PARTITIONS as usize {
        if Instant::now() > deadline {
            return Err(format!("reading {topic}: not at the end after 120 s"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let value = match m.payload() {
                    None => None,
                    Some(v) => Some(serde_json::from_slice(v).map_err(|e| format!("{topic} offset {}: {e}", m.offset()))?),
                };
                last.insert(m.key().unwrap_or_default().to_vec(), value);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {}
        }
    }
    Ok(last)
}

// ---------------------------------------------------------------- results

struct Outcome {
    mode: &'static str,
    /// Its output topic.
    output: String,
    events: u64,
    /// Output records seen (= events when complete).
    done: u64,
    /// Until the reader saw all N (or the timeout).
    seconds: f64,
    /// Until the reader saw the first output record.
    startup: f64,
    commits: Option<u64>,
    complete: bool,
    /// CPU seconds (user + system) of the process that did the work.
    cpu: Option<f64>,
    /// Its peak resident memory, MB.
    rss_mb: Option<u64>,
    /// CPU and memory are the bench process's own (the in-process modes).
    in_process: bool,
    note: String,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.done as f64 / self.seconds
    }

    fn steady(&self) -> f64 {
        self.done.saturating_sub(1) as f64 / (self.seconds - self.startup).max(1e-9)
    }

    /// CPU seconds per million events.
    fn cpu_per_m(&self) -> Option<f64> {
        self.cpu.filter(|_| self.done > 0).map(|c| c * 1e6 / self.done as f64)
    }
}

/// How far a mode got.
struct Waited {
    /// From `start` until done (or given up).
    seconds: f64,
    /// Until the reader saw the first output record.
    startup: f64,
    /// Events covered by the group's committed offsets.
    done: u64,
    complete: bool,
    note: String,
}

/// Waits until the group's committed offsets cover all `n` events and, with
/// `records`, the reader has seen `n` output records (or `within` passed, or
/// `alive` says the worker is gone).
fn wait_all(
    reader: &Reader,
    committed: &Committed,
    records: bool,
    start: Instant,
    n: u64,
    within: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Waited {
    let mut note = String::new();
    let trace = std::env::var_os("TRIBUTARY_BENCH_TRACE").is_some();
    let mut next_trace = start;
    let mut done = 0;
    let complete = loop {
        let c = reader.count();
        // A broker round trip: ask every 20 ms, and only once the output is
        // complete when it must be.
        if !records || c >= n {
            done = committed.events().unwrap_or(done);
        }
        if trace && Instant::now() >= next_trace {
            eprintln!("    {:6.2} s: {c} records, {done} committed", start.elapsed().as_secs_f64());
            next_trace += Duration::from_millis(500);
        }
        if done >= n && (!records || c >= n) {
            break true;
        }
        if start.elapsed() > within {
            note = format!("timed out at {done}/{n} committed, {c} records");
            break false;
        }
        if let Err(e) = alive() {
            note = format!("{e} at {done}/{n} committed, {c} records");
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !complete {
        done = committed.events().unwrap_or(done);
    }
    let seconds = start.elapsed().as_secs_f64();
    let startup = reader.first().map_or(seconds, |f| f.duration_since(start).as_secs_f64());
    Waited { seconds, startup, done, complete, note }
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
    let committed = Committed::new(&broker.bootstrap, &group, sources);
    let cpu_before = proc_usage("self").0;
    let start = Instant::now();
    let bootstrap = broker.bootstrap.clone();
    let (srcs, grp, out) = (sources.to_vec(), group.clone(), output.clone());
    let worker = std::thread::spawn(move || pass_through(&bootstrap, &srcs, &grp, &out, n, exactly_once, start, set));
    // The reader may lag the last commit a little.
    let mut ended: Option<Instant> = None;
    let Waited { seconds, startup, done, complete, mut note } =
        wait_all(&reader, &committed, true, start, n, set.timeout, || {
            if worker.is_finished() && ended.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
                return Err("pass-through ended".into());
            }
            Ok(())
        });
    let (cpu_after, rss_mb) = proc_usage("self");
    let cpu = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
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
    Outcome { mode, output, events: n, done, seconds, startup, commits, complete, cpu, rss_mb, in_process: true, note }
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
    let mut config = tributary_config(broker, &group, exactly_once, set, &state_root.join(mode));
    config += &format!("\n[output]\ntopic = \"{output}\"\n");
    for (i, (s, t)) in SOURCES.iter().zip(sources).enumerate() {
        config += &format!("\n[[sources]]\nname = \"{s}\"\ntopic = \"{t}\"\npriority = {i}\n");
    }
    let sources: Vec<(String, i32)> = sources.iter().map(|t| (t.clone(), PARTITIONS)).collect();
    run_tributary_config(broker, mode, &group, &config, &[output], &sources, n, set, state_root, log_dir)
}

/// The sections every Tributary mode shares: `[kafka]`, `[merge]`,
/// `[runtime]`, `[admin]`, `[audit]`.
fn tributary_config(broker: &Broker, group: &str, exactly_once: bool, set: Settings, state_dir: &Path) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\n[merge]\npolicy = \"lww\"\n\n[runtime]\nprocessing = \"{}\"\ncommit_interval = \"{}ms\"\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = {}\n",
        broker.bootstrap,
        if exactly_once { "exactly-once" } else { "at-least-once" },
        set.commit_interval.as_millis(),
        state_dir.display(),
        set.audit,
    )
}

/// Runs `tributary run` on `config` until the group has committed all `n`
/// events of `sources` (topic, partitions) and the `outputs` together hold
/// `n` committed records.
#[allow(clippy::too_many_arguments)]
fn run_tributary_config(
    broker: &Broker,
    mode: &'static str,
    group: &str,
    config: &str,
    outputs: &[String],
    sources: &[(String, i32)],
    n: u64,
    set: Settings,
    state_root: &Path,
    log_dir: &Path,
) -> Outcome {
    let config_path = state_root.join(format!("{mode}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let log_path = log_dir.join(format!("{mode}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let reader = Reader::start_many(&broker.bootstrap, outputs);
    let committed = Committed::with_partitions(&broker.bootstrap, group, sources);

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
    let Waited { seconds, startup, done, complete, mut note } =
        wait_all(&reader, &committed, true, start, n, set.timeout, || match child.0.try_wait() {
            Ok(Some(s)) => Err(format!("tributary exited ({s})")),
            _ => Ok(()),
        });
    // CPU and peak resident memory (the kernel's high-water mark) of the whole run.
    let (cpu, rss_mb) = proc_usage(&child.0.id().to_string());
    let status = child.sigterm(Duration::from_secs(60));
    let text = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
    if !status.is_some_and(|s| s.success()) {
        note = format!("{note} exit {status:?}; see {}", log_path.display());
    }
    let commits = stopped_field(&text, "commits");
    if let (Some(consumed), Some(aborts)) = (stopped_field(&text, "consumed"), stopped_field(&text, "aborts")) {
        note = format!("{note} consumed={consumed} aborts={aborts}");
    }
    // Of the states not already in the open cycle, the share the decoded-state cache served.
    if let (Some(cache), Some(store)) = (stopped_field(&text, "states_from_cache"), stopped_field(&text, "states_from_store")) {
        note = format!("{note} state cache hits={:.0}%", 100.0 * cache as f64 / (cache + store).max(1) as f64);
    }
    Outcome {
        mode,
        output: outputs.join(","),
        events: n,
        done,
        seconds,
        startup,
        commits,
        complete,
        cpu,
        rss_mb,
        in_process: false,
        note: note.trim().to_string(),
    }
}

// ------------------------------------------------------------- many tables

/// Tables of the `tables` mode (`TRIBUTARY_BENCH_TABLES`, default 20).
fn tables_count() -> usize {
    env_usize("TRIBUTARY_BENCH_TABLES", 20)
}

fn table_name(t: usize) -> String {
    format!("t{t:02}")
}

/// The source topics of the `tables` mode: `[table][source]`, named
/// `{run}.tables.{region}.public.{table}` (what `[tables_pattern]` matches).
fn tables_topics(run: &str, tables: usize) -> Vec<Vec<String>> {
    (0..tables).map(|t| SOURCES.iter().map(|s| format!("{run}.tables.{s}.public.{}", table_name(t))).collect()).collect()
}

/// `tables`: the same events as `trib-eos`, each key's in table
/// `key % tables`, found by `[tables_pattern]`; one process, one group.
#[allow(clippy::too_many_arguments)]
fn run_tables(
    broker: &mut Broker,
    run: &str,
    topics: &[Vec<String>],
    n: u64,
    set: Settings,
    state_root: &Path,
    log_dir: &Path,
) -> Outcome {
    let mode = "tables";
    let group = format!("{run}-{mode}");
    let mut outputs = Vec::new();
    for t in 0..topics.len() {
        // Created up front as for the single table: compacted, counted exactly.
        let output = format!("{group}.{}.merged", table_name(t));
        broker.compacted_topic(&output);
        broker.compacted_topic(&format!("{group}-{}-state-changelog", table_name(t)));
        outputs.push(output);
    }
    let mut config = tributary_config(broker, &group, true, set, &state_root.join(mode));
    config += &format!(
        "\n[tables_pattern]\nsources = \"{run}.tables.{{region}}.public.{{table}}\"\nregions = [{}]\noutput = \"{group}.{{table}}.merged\"\n\n[tables_pattern.priority]\n",
        SOURCES.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
    );
    // The single-table run's priorities.
    for (i, s) in SOURCES.iter().enumerate() {
        config += &format!("{s} = {i}\n");
    }
    let sources: Vec<(String, i32)> = topics.iter().flatten().map(|t| (t.clone(), PARTITIONS)).collect();
    run_tributary_config(broker, mode, &group, &config, &outputs, &sources, n, set, state_root, log_dir)
}

/// Partitions of the one source that is not co-partitioned in the
/// `repartition` mode.
const REPARTITIONED_PARTITIONS: i32 = 2;

/// `repartition`: the same events as `trib-eos`, eu and us from the same
/// topics, ap from `ap_topic` ([`REPARTITIONED_PARTITIONS`] partitions), so
/// ap's events take the detour through the repartition topic.
#[allow(clippy::too_many_arguments)]
fn run_repartition(
    broker: &mut Broker,
    run: &str,
    sources: &[String],
    ap_topic: &str,
    n: u64,
    set: Settings,
    state_root: &Path,
    log_dir: &Path,
) -> Outcome {
    let mode = "repartition";
    let group = format!("{run}-{mode}");
    let output = format!("{group}.merged");
    broker.compacted_topic(&output);
    broker.compacted_topic(&format!("{group}-state-changelog"));
    let mut config = tributary_config(broker, &group, true, set, &state_root.join(mode));
    config += &format!("\n[output]\ntopic = \"{output}\"\n");
    let topics =
        [(sources[0].clone(), PARTITIONS), (sources[1].clone(), PARTITIONS), (ap_topic.to_string(), REPARTITIONED_PARTITIONS)];
    for (i, (s, (t, _))) in SOURCES.iter().zip(&topics).enumerate() {
        config += &format!("\n[[sources]]\nname = \"{s}\"\ntopic = \"{t}\"\npriority = {i}\n");
    }
    run_tributary_config(broker, mode, &group, &config, &[output], &topics, n, set, state_root, log_dir)
}

/// Whether the last row of every key in `outputs` together equals the last
/// row in `reference` (the single-table run's output).
fn verify_same_rows(bootstrap: &str, outputs: &str, reference: &str) -> (String, bool) {
    let theirs = match read_last(bootstrap, reference) {
        Ok(l) => l,
        Err(e) => return (e, false),
    };
    let mut ours = HashMap::new();
    for topic in outputs.split(',') {
        match read_last(bootstrap, topic) {
            Ok(l) => ours.extend(l),
            Err(e) => return (e, false),
        }
    }
    let same = ours.iter().filter(|(k, v)| theirs.get(*k) == Some(v)).count();
    let ok = same == theirs.len() && ours.len() == theirs.len();
    (format!("last row equal to trib-eos's for {same} of {} keys ({} keys there)", ours.len(), theirs.len()), ok)
}

// -------------------------------------------------------------------- java

const ALL_MODES: &str = "pass-eos,pass-alo,java-pass,kstreams-pass,kstreams-merge,trib-eos,trib-alo,tables,repartition";

/// The newest modification time under `path`.
fn newest(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).ok();
    let own = meta.as_ref().and_then(|m| m.modified().ok()).unwrap_or(UNIX_EPOCH);
    if !meta.is_some_and(|m| m.is_dir()) {
        return own;
    }
    std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| newest(&e.path())).fold(own, SystemTime::max)
}

/// The Java baselines' jar (`benches/kstreams`), built with Maven when it is
/// missing or older than its sources. Cargo never builds it.
fn kstreams_jar() -> PathBuf {
    let dir = root().join("benches/kstreams");
    let jar = dir.join("target/kstreams-bench.jar");
    let built = std::fs::metadata(&jar).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| b >= newest(&dir.join("src")).max(newest(&dir.join("pom.xml")))) {
        return jar;
    }
    eprintln!("building {} (mvn -q -o package)…", jar.display());
    let mvn = |args: &[&str]| Command::new("mvn").args(args).current_dir(&dir).status();
    if !mvn(&["-q", "-o", "package"]).is_ok_and(|s| s.success()) {
        eprintln!("the offline build failed; mvn -q package (downloads the dependencies from Maven Central)…");
        let status = mvn(&["-q", "package"]).unwrap_or_else(|e| panic!("mvn: {e} (the Java modes need Maven and a JDK 17)"));
        assert!(status.success(), "mvn package in {} failed", dir.display());
    }
    jar
}

/// A Java baseline from `benches/kstreams` as its own JVM process.
#[allow(clippy::too_many_arguments)]
fn run_java(
    broker: &mut Broker,
    run: &str,
    sources: &[String],
    n: u64,
    mode: &'static str,
    set: Settings,
    jar: &Path,
    state_root: &Path,
    log_dir: &Path,
) -> Outcome {
    // (main class, writes one output record per event)
    let (class, records) = match mode {
        "java-pass" => ("tributary.bench.PassThrough", true),
        "kstreams-pass" => ("tributary.bench.StreamsPassThrough", true),
        _ => ("tributary.bench.StreamsMerge", false),
    };
    let group = format!("{run}-{mode}");
    let output = format!("{group}.out");
    broker.compacted_topic(&output);
    if mode == "kstreams-merge" {
        // The KTable's changelog, created by Kafka Streams: deleted at the end with the others.
        broker.created_topics.push(format!("{group}-merged-changelog"));
    }
    let log_path = log_dir.join(format!("{mode}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let reader = Reader::start(&broker.bootstrap, &output);
    let committed = Committed::new(&broker.bootstrap, &group, sources);

    let mut cmd = Command::new(std::env::var("TRIBUTARY_BENCH_JAVA").unwrap_or_else(|_| "java".into()));
    cmd.args(std::env::var("TRIBUTARY_BENCH_JAVA_OPTS").unwrap_or_default().split_whitespace());
    cmd.arg("-cp").arg(jar).arg(class);
    cmd.args(["--bootstrap", &broker.bootstrap, "--group", &group, "--output", &output]);
    cmd.args(["--commit-ms", &set.commit_interval.as_millis().to_string()]);
    cmd.arg("--state-dir").arg(state_root.join(mode));
    for (s, t) in SOURCES.iter().zip(sources) {
        cmd.args(["--source", &format!("{s}={t}")]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    let start = Instant::now();
    let mut child = Process(cmd.spawn().unwrap_or_else(|e| panic!("spawn java for {mode}: {e}")));
    let Waited { seconds, startup, done, complete, mut note } =
        wait_all(&reader, &committed, records, start, n, set.timeout, || match child.0.try_wait() {
            Ok(Some(s)) => Err(format!("{mode} exited ({s})")),
            _ => Ok(()),
        });
    let (cpu, rss_mb) = proc_usage(&child.0.id().to_string());
    if !records {
        note = format!("{note} output records={}", reader.count());
    }
    let status = child.sigterm(Duration::from_secs(60));
    // The JVM ends with 143 (SIGTERM) after its shutdown hook ran.
    if !status.is_some_and(|s| s.success() || s.code() == Some(143)) {
        note = format!("{note} exit {status:?}; see {}", log_path.display());
    }
    Outcome {
        mode,
        output,
        events: n,
        done,
        seconds,
        startup,
        commits: None,
        complete,
        cpu,
        rss_mb,
        in_process: false,
        note: note.trim().to_string(),
    }
}

/// Checks the merged output of `kstreams-merge`: every key present and
/// live, and when a Tributary mode ran, the same last row per key as
/// Tributary's. Returns (verdict, all good).
fn verify_merge(bootstrap: &str, streams_topic: &str, tributary: Option<(&str, &str)>, keys: usize) -> (String, bool) {
    let last = match read_last(bootstrap, streams_topic) {
        Ok(l) => l,
        Err(e) => return (e, false),
    };
    let live = last.values().filter(|v| v.is_some()).count();
    let mut verdict = format!("{} keys in its output ({live} live) of {keys} written", last.len());
    let mut ok = last.len() == keys && live == keys;
    if let Some((mode, topic)) = tributary {
        match read_last(bootstrap, topic) {
            Ok(theirs) => {
                let same = last.iter().filter(|(k, v)| theirs.get(*k) == Some(v)).count();
                verdict +=
                    &format!("; last row equal to {mode}'s for {same} of {} keys ({} keys there)", last.len(), theirs.len());
                ok &= same == last.len() && theirs.len() == last.len();
            }
            Err(e) => {
                verdict += &format!("; {e}");
                ok = false;
            }
        }
    }
    (verdict, ok)
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
        .unwrap_or_else(|_| ALL_MODES.into())
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
    if modes.iter().any(|m| m.starts_with("trib") || m == "tables" || m == "repartition") {
        assert!(bin.exists(), "{} does not exist (set TRIBUTARY_BIN or build with `cargo build --release -j2`)", bin.display());
    }
    for m in &modes {
        assert!(ALL_MODES.split(',').any(|a| a == m), "unknown mode {m:?} in TRIBUTARY_BENCH_MODES (known: {ALL_MODES})");
    }
    let jar = modes.iter().any(|m| m.starts_with("java") || m.starts_with("kstreams")).then(kstreams_jar);

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
    // One time base for every copy of the events: the same rows everywhere.
    let base = now_ms();
    let (bytes, secs, distinct) = produce_events(&broker.bootstrap, &sources, n, keys, base);
    eprintln!("produced in {secs:.1} s (untimed); average value {} bytes", bytes / n.max(1));
    // The same events again for the modes that read them from other topics.
    let tables = tables_count();
    let table_topics = tables_topics(&run, tables);
    if modes.iter().any(|m| m == "tables") {
        for t in table_topics.iter().flatten() {
            broker.create_topic(t, &[]);
        }
        eprintln!("producing them again to {tables} tables × {} sources ({run}.tables.*)…", SOURCES.len());
        let (_, secs, _) =
            produce_routed(&broker.bootstrap, n, keys, base, |s, k| Some((table_topics[k % tables][s].as_str(), PARTITIONS)));
        eprintln!("produced in {secs:.1} s (untimed)");
    }
    let ap_topic = format!("{run}.{}-{REPARTITIONED_PARTITIONS}p.public.customers", SOURCES[2]);
    if modes.iter().any(|m| m == "repartition") {
        broker.create_topic_of(&ap_topic, REPARTITIONED_PARTITIONS, &[]);
        eprintln!("producing the {} events again to {ap_topic} ({REPARTITIONED_PARTITIONS} partitions)…", SOURCES[2]);
        let (_, secs, _) = produce_routed(&broker.bootstrap, n, keys, base, |s, _| {
            (s == 2).then_some((ap_topic.as_str(), REPARTITIONED_PARTITIONS))
        });
        eprintln!("produced in {secs:.1} s (untimed)");
    }

    let n = n as u64;
    let mut outcomes = Vec::new();
    for mode in &modes {
        eprintln!("running {mode}…");
        let jar = jar.as_deref().unwrap_or(Path::new("-"));
        let o = match mode.as_str() {
            "pass-eos" => run_pass_through(&mut broker, &run, &sources, n, true, set),
            "pass-alo" => run_pass_through(&mut broker, &run, &sources, n, false, set),
            "java-pass" => run_java(&mut broker, &run, &sources, n, "java-pass", set, jar, state.path(), &log_dir),
            "kstreams-pass" => run_java(&mut broker, &run, &sources, n, "kstreams-pass", set, jar, state.path(), &log_dir),
            "kstreams-merge" => run_java(&mut broker, &run, &sources, n, "kstreams-merge", set, jar, state.path(), &log_dir),
            "trib-eos" => run_tributary(&mut broker, &run, &sources, n, true, set, state.path(), &log_dir),
            "trib-alo" => run_tributary(&mut broker, &run, &sources, n, false, set, state.path(), &log_dir),
            "tables" => run_tables(&mut broker, &run, &table_topics, n, set, state.path(), &log_dir),
            "repartition" => run_repartition(&mut broker, &run, &sources, &ap_topic, n, set, state.path(), &log_dir),
            other => unreachable!("mode {other}"),
        };
        eprintln!("  {mode}: {:.2} s, {:.0} events/s {}", o.seconds, o.rate(), o.note);
        outcomes.push(o);
    }

    // The Kafka Streams merge's output: complete, and the same rows as Tributary's.
    let trib = outcomes.iter().find(|o| o.mode.starts_with("trib") && o.complete).map(|o| (o.mode, o.output.clone()));
    let mut verification = None;
    if let Some(k) = outcomes.iter_mut().find(|o| o.mode == "kstreams-merge" && o.complete) {
        eprintln!("checking the output of kstreams-merge…");
        let (verdict, ok) = verify_merge(&broker.bootstrap, &k.output, trib.as_ref().map(|(m, t)| (*m, t.as_str())), distinct);
        eprintln!("  {verdict}");
        if !ok {
            k.note = format!("{} OUTPUT CHECK FAILED: {verdict}", k.note).trim().to_string();
            k.complete = false;
        }
        verification = Some(serde_json::json!({ "ok": ok, "verdict": verdict }));
    }

    // The many-tables and repartition runs' output: the single table's rows.
    let single = outcomes.iter().find(|o| o.mode == "trib-eos" && o.complete).map(|o| o.output.clone());
    for o in outcomes.iter_mut().filter(|o| (o.mode == "tables" || o.mode == "repartition") && o.complete) {
        let Some(reference) = &single else { break };
        eprintln!("checking the output of {}…", o.mode);
        let (verdict, ok) = verify_same_rows(&broker.bootstrap, &o.output, reference);
        eprintln!("  {verdict}");
        if !ok {
            o.note = format!("{} OUTPUT CHECK FAILED: {verdict}", o.note).trim().to_string();
            o.complete = false;
        }
    }

    let header = format!(
        "e2e: {n} events, {keys} keys ({distinct} written), 3 sources × {PARTITIONS} partitions, commit interval {} ms, tributary audit {}{}, broker {}",
        set.commit_interval.as_millis(),
        if set.audit { "on" } else { "off" },
        if set.drain { ", Rust pass-through drains deliveries before committing" } else { "" },
        broker.bootstrap
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{header}").unwrap();
    writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>8} {:>10} {:>11} {:>10} {:>9} {:>8} {:>9}  note",
        "mode", "events", "seconds", "startup", "events/s", "steady ev/s", "CPU s/M ev", "peak RSS", "commits", "ev/commit"
    )
    .unwrap();
    let star = |o: &Outcome| if o.in_process { "*" } else { "" };
    for o in &outcomes {
        let mark = if o.complete { String::new() } else { format!(" INCOMPLETE ({}/{})", o.done, o.events) };
        writeln!(
            out,
            "{:<14} {:>8} {:>8.2} {:>8.2} {:>10.0} {:>11.0} {:>10} {:>9} {:>8} {:>9}  {}{mark}",
            o.mode,
            o.done,
            o.seconds,
            o.startup,
            o.rate(),
            o.steady(),
            o.cpu_per_m().map_or("-".into(), |c| format!("{c:.1}{}", star(o))),
            o.rss_mb.map_or("-".into(), |m| format!("{m} MB{}", star(o))),
            o.commits.map_or("-".into(), |c| c.to_string()),
            o.commits.filter(|c| *c > 0).map_or("-".into(), |c| format!("{:.0}", o.done as f64 / c as f64)),
            o.note
        )
        .unwrap();
    }
    if outcomes.iter().any(|o| o.in_process) {
        writeln!(out, "* the bench process's own CPU and memory (the Rust pass-throughs run in it, beside its reader)").unwrap();
    }

    // Ratios of every complete Tributary mode to every complete baseline.
    let complete = |m: &str| outcomes.iter().find(|o| o.mode == m && o.complete);
    let mut ratios = Vec::new();
    for t in outcomes.iter().filter(|o| o.mode.starts_with("trib") && o.complete) {
        // The many-tables and repartition modes are Tributary too: compared with trib-eos below.
        let baseline = |o: &&Outcome| !o.mode.starts_with("trib") && o.mode != "tables" && o.mode != "repartition";
        for b in outcomes.iter().filter(baseline).filter(|o| o.complete) {
            let speed = t.rate() / b.rate();
            let cpu = t.cpu_per_m().zip(b.cpu_per_m()).map(|(a, b)| a / b);
            writeln!(
                out,
                "{} / {:<14} {speed:>5.2} × the events/s, {} the CPU per event",
                t.mode,
                b.mode,
                cpu.map_or("-".into(), |c| format!("{c:.2} ×{}", star(b)))
            )
            .unwrap();
            ratios.push(serde_json::json!({
                "tributary": t.mode, "baseline": b.mode, "events_per_s": speed, "cpu_per_event": cpu,
            }));
        }
    }
    let mut goals = Vec::new();
    if let (Some(t), Some(b)) = (complete("trib-eos"), complete("pass-eos").or(complete("java-pass"))) {
        // Issue 15, goal 1.
        let (pct, want) = (100.0 * t.rate() / b.rate(), if set.audit { 65.0 } else { 80.0 });
        goals.push(format!(
            "tributary exactly-once >= {want:.0} % of the raw transactional pass-through ({}): {pct:.0} % ({})",
            b.mode,
            if pct >= want { "met" } else { "MISSED" }
        ));
    }
    if let (Some(t), Some(km), Some(kp)) = (complete("trib-eos"), complete("kstreams-merge"), complete("kstreams-pass")) {
        // Issue 15, goal 2: in events/s and in CPU per event.
        let cpu_at_most = |b: &Outcome, factor: f64| t.cpu_per_m().zip(b.cpu_per_m()).is_some_and(|(a, b)| a * factor <= b);
        let met = t.rate() >= 3.0 * km.rate() && cpu_at_most(km, 3.0) && t.rate() >= kp.rate() && cpu_at_most(kp, 1.0);
        goals.push(format!(
            "tributary exactly-once >= 3 × the Kafka Streams merge and >= the Kafka Streams pass-through, in events/s and CPU per event: {}",
            if met { "met" } else { "MISSED" }
        ));
    }
    // Issue 14: many tables against one, and the repartition detour's cost.
    let mut table_ratios = serde_json::Map::new();
    if let Some(single) = complete("trib-eos") {
        for (mode, what) in
            [("tables", format!("{tables} tables × {} regions", SOURCES.len())), ("repartition", "ap not co-partitioned".into())]
        {
            let Some(o) = complete(mode) else { continue };
            let (speed, steady) = (o.rate() / single.rate(), o.steady() / single.steady());
            let cpu = o.cpu_per_m().zip(single.cpu_per_m()).map(|(a, b)| a / b);
            writeln!(
                out,
                "{mode} ({what}) / trib-eos: {speed:.2} × the events/s, {steady:.2} × the steady events/s, {} the CPU per event",
                cpu.map_or("-".into(), |c| format!("{c:.2} ×"))
            )
            .unwrap();
            table_ratios.insert(
                mode.into(),
                serde_json::json!({ "events_per_s": speed, "steady_events_per_s": steady, "cpu_per_event": cpu }),
            );
            if mode == "tables" {
                goals.push(format!(
                    "{tables} tables >= 0.9 × the events/s of one table with the same events: {speed:.2} ({})",
                    if speed >= 0.9 { "met" } else { "MISSED" }
                ));
            }
        }
    }
    for g in &goals {
        writeln!(out, "goal: {g}").unwrap();
    }

    let json = serde_json::json!({
        "header": header,
        "events": n,
        "keys": keys,
        "keys_written": distinct,
        "sources": SOURCES.len(),
        "partitions": PARTITIONS,
        "commit_interval_ms": set.commit_interval.as_millis() as u64,
        "audit": set.audit,
        "modes": outcomes.iter().map(|o| serde_json::json!({
            "mode": o.mode,
            "complete": o.complete,
            "events": o.done,
            "seconds": o.seconds,
            "startup_seconds": o.startup,
            "events_per_s": o.rate(),
            "steady_events_per_s": o.steady(),
            "cpu_seconds": o.cpu,
            "cpu_seconds_per_m_events": o.cpu_per_m(),
            "peak_rss_mb": o.rss_mb,
            "measured_in_bench_process": o.in_process,
            "commits": o.commits,
            "note": o.note,
        })).collect::<Vec<_>>(),
        "ratios": ratios,
        "kstreams_merge_output": verification,
        "tables": tables,
        "to_single_table": table_ratios,
        "goals": goals,
    });
    let json_path = std::env::var_os("TRIBUTARY_BENCH_JSON").map_or_else(|| log_dir.join("result.json"), PathBuf::from);
    std::fs::write(&json_path, serde_json::to_string_pretty(&json).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
    writeln!(out, "results: {}", json_path.display()).unwrap();
    writeln!(out, "processor logs: {}", log_dir.display()).unwrap();
}
