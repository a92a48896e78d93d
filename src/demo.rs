//! `tributary demo`: the whole pipeline on one machine, with nothing installed.
//!
//! librdkafka's mock cluster stands in for Kafka (in process), three
//! simulated regions (`eu`, `us`, `ap`) write Debezium JSON change events of
//! one `customers` table to their own topics, `tributary run` merges them
//! (through [`crate::run::run_with`], topics created here because the mock
//! has no admin API) and `tributary sink` materializes the merged topic into
//! an SQLite file. At the end a short report says what happened.
//!
//! The regions replicate each other's writes with a lag, like a
//! multi-primary database: each row carries its version vector in a `_vv`
//! column (carried clocks), a region that applied another's write and then
//! writes again produces a clock that dominates it, and two regions editing
//! a row within the replication lag produce concurrent versions: conflicts,
//! resolved by the configured policy. `ap`'s database clock runs 3 s behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde_json::{json, Value};

use crate::config::Config;
use crate::run::RunOptions;

/// What `tributary demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the regions write.
    pub duration: Duration,
    /// Events per second, all regions together.
    pub rate: f64,
    /// Merge policy name (`lww`, `source-priority`, `field-lww`).
    pub policy: String,
    /// Where the SQLite file and the state store go (default: a new
    /// directory under the system temp dir).
    pub dir: Option<PathBuf>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn fail<E: fmt::Display>(what: impl fmt::Display) -> impl FnOnce(E) -> DemoError {
    move |e| DemoError(format!("{what}: {e}"))
}

/// Parses `--duration`: plain seconds (`20`, `2.5`) or a duration (`90s`, `1m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("\"{s}\" is not a duration")),
        Err(_) => humantime::parse_duration(s.trim()).map_err(|e| format!("\"{s}\" is not a duration ({e}); try 20 or 20s"))?,
    };
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    Ok(d)
}

const GROUP: &str = "tributary-demo";
const POLICIES: [&str; 3] = ["lww", "source-priority", "field-lww"];
const OUTPUT: &str = "customers.merged";
const TABLE: &str = "customers";
const PARTITIONS: i32 = 3;
/// Not the default 100 ms: an at-least-once cycle flushes the producer, and
/// rdkafka 0.39's `BaseProducer::flush` polls in fixed 100 ms slices, so a
/// cycle with a record in flight takes >= 100 ms; with a 100 ms interval
/// (measured from the start of the previous commit) the processor then
/// commits after every single record, about 10 records/s, until the backlog
/// happens to drain. 250 ms leaves each cycle time to process.
const COMMIT_INTERVAL: &str = "250ms";
/// How long the processor and the sink get to catch up after the writes.
const CATCH_UP: Duration = Duration::from_secs(8);
const CUSTOMERS: u64 = 200;
/// The first keys take a share of all writes, so regions edit them concurrently.
const HOT_KEYS: u64 = 12;

struct Region {
    name: &'static str,
    topic: &'static str,
    priority: i64,
    /// Offset of this region's database clock (`source.ts_ms`), ms.
    skew_ms: i64,
    /// Share of the writes, in percent.
    weight: u64,
    cities: [&'static str; 4],
}

const REGIONS: [Region; 3] = [
    Region {
        name: "eu",
        topic: "eu.public.customers",
        priority: 3,
        skew_ms: 0,
        weight: 40,
        cities: ["Paris", "Berlin", "Lisbon", "Dublin"],
    },
    Region {
        name: "us",
        topic: "us.public.customers",
        priority: 2,
        skew_ms: 0,
        weight: 35,
        cities: ["Boston", "Denver", "Austin", "Seattle"],
    },
    Region {
        name: "ap",
        topic: "ap.public.customers",
        priority: 1,
        skew_ms: -3000,
        weight: 25,
        cities: ["Tokyo", "Singapore", "Sydney", "Seoul"],
    },
];

/// Runs the demo and prints its report on stdout (progress on stderr).
pub fn run(opts: &DemoOptions) -> Result<(), DemoError> {
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(DemoError(format!("--rate must be a positive number of events per second, not {}", opts.rate)));
    }
    if !POLICIES.contains(&opts.policy.as_str()) {
        return Err(DemoError(format!(
            "unknown policy \"{}\" (from --policy or TRIBUTARY_MERGE__POLICY): expected one of {}",
            opts.policy,
            POLICIES.join(", ")
        )));
    }
    let dir = prepare_dir(opts.dir.as_deref())?;
    let sqlite = dir.join("tributary-demo.sqlite");
    let state_dir = dir.join("state");

    // Kafka, in process.
    let mock = MockCluster::new(1).map_err(fail("cannot start librdkafka's mock cluster"))?;
    let bootstrap = mock.bootstrap_servers();
    let mut topics: Vec<String> = REGIONS.iter().map(|r| r.topic.to_string()).collect();
    topics.extend([
        OUTPUT.to_string(),
        crate::run::changelog_topic(GROUP),
        crate::run::dlq_topic(GROUP),
        crate::run::conflicts_topic(GROUP),
    ]);
    for t in &topics {
        mock.create_topic(t, PARTITIONS, 1).map_err(fail(format!("mock cluster: create topic {t}")))?;
    }

    let port = free_port()?;
    let config = demo_config(&bootstrap, &opts.policy, &state_dir, &sqlite, port)?;
    let policy = config.merge.policy.as_str();
    let deletes = config.merge.deletes.as_str();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    eprintln!("tributary demo: Kafka = librdkafka's in-process mock cluster at {bootstrap}");
    eprintln!("  regions eu, us, ap -> topics {} (3 partitions each)", REGIONS.map(|r| r.topic).join(", "));
    eprintln!("  policy {policy}, deletes {deletes}; processing at-least-once (the mock's transactions write no commit markers, so exactly-once cannot be shown here)");
    eprintln!("  metrics: {metrics_url}   state: {}   SQLite: {}", state_dir.display(), sqlite.display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("demo-runtime")
        .enable_all()
        .build()
        .map_err(fail("cannot start the async runtime"))?;
    let stop_processor = Arc::new(AtomicBool::new(false));
    let stop_sink = Arc::new(AtomicBool::new(false));
    let stop_regions = Arc::new(AtomicBool::new(false));

    let processor: JoinHandle<Result<crate::run::Counters, crate::run::RunError>> = {
        let (config, stop, handle) = (config.clone(), stop_processor.clone(), runtime.handle().clone());
        std::thread::Builder::new()
            .name("demo-processor".into())
            .spawn(move || {
                handle.block_on(crate::run::run_with(config, stop, RunOptions { manage_topics: false, ..RunOptions::default() }))
            })
            .map_err(fail("cannot start the processor thread"))?
    };
    let sink: JoinHandle<Result<crate::sink::SinkStats, crate::sink::SinkError>> = {
        let (config, stop) = (config.clone(), stop_sink.clone());
        std::thread::Builder::new()
            .name("demo-sink".into())
            .spawn(move || crate::sink::run(&config, &stop))
            .map_err(fail("cannot start the sink thread"))?
    };
    let live = Arc::new(LiveCounts::default());
    let regions: JoinHandle<Result<Produced, DemoError>> = {
        let (bootstrap, live, stop) = (bootstrap.clone(), live.clone(), stop_regions.clone());
        let (duration, rate) = (opts.duration, opts.rate);
        std::thread::Builder::new()
            .name("demo-regions".into())
            .spawn(move || simulate(&bootstrap, duration, rate, &live, &stop))
            .map_err(fail("cannot start the region simulator"))?
    };

    let mut progress = Progress::new(port, &sqlite);
    let started = Instant::now();
    // Writing phase: until the regions are done (or a part fails).
    let failure = loop {
        std::thread::sleep(Duration::from_millis(100));
        progress.tick(started, &live, "writing");
        if processor.is_finished() || sink.is_finished() {
            break Some(());
        }
        if regions.is_finished() {
            break None;
        }
    };
    if failure.is_some() {
        stop_regions.store(true, Ordering::Relaxed);
        stop_sink.store(true, Ordering::Relaxed);
        stop_processor.store(true, Ordering::Relaxed);
        progress.finish();
        let p = join(processor, "processor")?.map_err(fail("the processor stopped"));
        let s = join(sink, "sink")?.map_err(fail("the sink stopped"));
        let _ = join(regions, "region simulator");
        p?;
        s?;
        return Err(DemoError("the processor or the sink stopped early".into()));
    }
    let produced = match join(regions, "region simulator")? {
        Ok(p) => p,
        Err(e) => {
            stop_sink.store(true, Ordering::Relaxed);
            stop_processor.store(true, Ordering::Relaxed);
            progress.finish();
            let _ = join(processor, "processor");
            let _ = join(sink, "sink");
            return Err(e);
        }
    };
    let wrote_for = started.elapsed();

    // Catch-up phase: the processor consumed everything, every merged record
    // is on the output topic, and the sink stored the topic's end offsets.
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .map_err(fail("cannot create a client of the mock cluster"))?;
    let catch_up_deadline = Instant::now() + CATCH_UP;
    // Done when that holds twice in a row with nothing moving: a scrape can
    // land between a record's `consumed` and `emitted` counts.
    let mut settled: Option<(u64, Vec<i64>)> = None;
    let caught_up = loop {
        progress.tick(started, &live, "catching up");
        let scrape = scrape_metrics(port);
        let ends: Option<Vec<i64>> = (0..PARTITIONS)
            .map(|p| watermarks.fetch_watermarks(OUTPUT, p, Duration::from_secs(2)).ok().map(|(_, h)| h))
            .collect();
        let sunk = sink_offsets(&sqlite);
        let done = match (&scrape, ends, &sunk) {
            (Some(scrape), Some(ends), Some(sunk)) => {
                let consumed = scrape.sum("tributary_records_consumed_total", &[]) as u64;
                let emitted = scrape.sum("tributary_records_emitted_total", &[]) as u64;
                let on_topic: i64 = ends.iter().sum();
                let applied = (0..PARTITIONS).all(|p| sunk.get(&p).copied().unwrap_or(0) >= ends[p as usize]);
                if consumed >= produced.records() && on_topic as u64 == emitted && applied {
                    let now = (emitted, ends);
                    let stable = settled.as_ref() == Some(&now);
                    settled = Some(now);
                    stable
                } else {
                    settled = None;
                    false
                }
            }
            _ => false,
        };
        if done {
            break true;
        }
        if Instant::now() > catch_up_deadline || processor.is_finished() || sink.is_finished() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(150));
    };
    progress.finish();

    // What the processor holds, while it still serves /state.
    let scrape = scrape_metrics(port).unwrap_or_default();
    let mut keys: BTreeMap<u64, KeyView> = BTreeMap::new();
    for &id in &produced.ids {
        if let Some((200, body)) = http_get(port, &format!("/state/%7B%22id%22%3A{id}%7D")) {
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                keys.insert(id, KeyView::from_state(&v));
            }
        }
    }

    stop_sink.store(true, Ordering::Relaxed);
    stop_processor.store(true, Ordering::Relaxed);
    let sink_result = join(sink, "sink")?;
    let processor_result = join(processor, "processor")?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(watermarks);
    drop(mock);
    let counters = processor_result.map_err(fail("the processor failed"))?;
    let sink_stats = sink_result.map_err(fail("the sink failed"))?;

    let rows = read_rows(&sqlite).map_err(fail(format!("cannot read {}", sqlite.display())))?;
    let report = Report {
        policy,
        deletes,
        wrote_for,
        rate: opts.rate,
        produced: &produced,
        scrape: &scrape,
        keys: &keys,
        rows: &rows,
        sqlite: &sqlite,
        metrics_url: &metrics_url,
        caught_up,
        consumed: counters.consumed,
        sink_records: sink_stats.records,
    };
    print!("{report}");
    std::io::stdout().flush().ok();
    Ok(())
}

fn join<T>(handle: JoinHandle<T>, what: &str) -> Result<T, DemoError> {
    handle.join().map_err(|_| DemoError(format!("the {what} thread panicked")))
}

/// The demo directory: the given one (previous demo files removed) or a new one.
fn prepare_dir(dir: Option<&Path>) -> Result<PathBuf, DemoError> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            std::env::temp_dir().join(format!("tributary-demo-{stamp}-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).map_err(fail(format!("cannot create {}", dir.display())))?;
    // A new mock cluster starts empty: a previous run's state and table would
    // point at offsets that no longer exist.
    let state = dir.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).map_err(fail(format!("cannot remove the previous demo's {}", state.display())))?;
    }
    for f in ["tributary-demo.sqlite", "tributary-demo.sqlite-wal", "tributary-demo.sqlite-shm"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(fail(format!("cannot remove the previous demo's {}", p.display())))?;
        }
    }
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail("cannot find a free port for the admin server"))?;
    l.local_addr().map(|a| a.port()).map_err(fail("cannot find a free port for the admin server"))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The demo's configuration, as a user would write it.
fn demo_config(bootstrap: &str, policy: &str, state_dir: &Path, sqlite: &Path, port: u16) -> Result<Config, DemoError> {
    let mut text = format!(
        r#"[kafka]
bootstrap_servers = {bootstrap}
group_id = "{GROUP}"

[output]
topic = "{OUTPUT}"

[merge]
policy = {policy}

[runtime]
processing = "at-least-once"
commit_interval = "{COMMIT_INTERVAL}"
state_dir = {state}

[admin]
listen = "127.0.0.1:{port}"

[sink]
target = "sqlite"
url = {url}
table = "{TABLE}"
columns = ["id bigint", "name text", "email text", "city text", "tier text"]
key_columns = ["id"]
vv_column = "_vv"
"#,
        bootstrap = toml_str(bootstrap),
        policy = toml_str(policy),
        state = toml_str(&state_dir.to_string_lossy()),
        url = toml_str(&sqlite.to_string_lossy()),
    );
    for r in &REGIONS {
        let _ = write!(
            text,
            "\n[[sources]]\nname = \"{}\"\ntopic = \"{}\"\npriority = {}\nclock_field = \"_vv\"\n",
            r.name, r.topic, r.priority
        );
    }
    // `[merge]` overrides from the environment (TRIBUTARY_MERGE__DELETES=…)
    // apply; the policy is already in the text (--policy, else
    // TRIBUTARY_MERGE__POLICY, else lww); nothing else may point the demo
    // elsewhere. Errors name the variable.
    let env = std::env::vars().filter(|(k, _)| k.starts_with("TRIBUTARY_MERGE__") && k != "TRIBUTARY_MERGE__POLICY");
    Config::parse(&text, "tributary demo", env).map_err(|e| DemoError(e.to_string()))
}

// ---------------------------------------------------------------------------
// The regions.

/// A small deterministic generator (xorshift64*): the same writes every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const FIRST: [&str; 16] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken", "Radia", "Tim", "Hedy",
    "Dennis", "Karen", "Niklaus",
];
const LAST: [&str; 16] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Hamilton", "Thompson", "Perlman", "Lee",
    "Lamarr", "Ritchie", "Jones", "Wirth",
];
const DOMAINS: [&str; 4] = ["example.com", "mail.example", "corp.example", "post.example"];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

type Vv = BTreeMap<&'static str, u64>;

fn dominated(a: &Vv, b: &Vv) -> bool {
    a.iter().all(|(k, v)| b.get(k).copied().unwrap_or(0) >= *v)
}

#[derive(Clone, PartialEq)]
struct Customer {
    first: &'static str,
    last: &'static str,
    email: String,
    city: &'static str,
    tier: &'static str,
}

/// A region's copy of a row: its image (None: deleted), clock, commit time
/// and the region that wrote it.
#[derive(Clone)]
struct Local {
    row: Option<Customer>,
    vv: Vv,
    ts: i64,
    origin: usize,
}

fn row_json(id: u64, c: &Customer, vv: &Vv) -> Value {
    json!({
        "id": id,
        "name": format!("{} {}", c.first, c.last),
        "email": c.email,
        "city": c.city,
        "tier": c.tier,
        // A json column: Debezium sends it as a string.
        "_vv": serde_json::to_string(vv).expect("a clock serializes"),
    })
}

/// What the regions wrote.
#[derive(Debug, Default)]
struct Produced {
    inserts: [u64; 3],
    updates: [u64; 3],
    deletes: [u64; 3],
    /// Every key written.
    ids: BTreeSet<u64>,
}

impl Produced {
    fn events(&self, r: usize) -> u64 {
        self.inserts[r] + self.updates[r] + self.deletes[r]
    }
    /// Kafka records: events plus one Debezium tombstone per delete.
    fn records(&self) -> u64 {
        (0..3).map(|r| self.events(r) + self.deletes[r]).sum()
    }
}

/// Events sent so far per region, for the progress line.
#[derive(Default)]
struct LiveCounts {
    events: [AtomicU64; 3],
}

struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Sim {
    rng: Rng,
    locals: [HashMap<u64, Local>; 3],
    /// Replication in flight: (due, to region, key, version).
    inbox: Vec<(Instant, usize, u64, Local)>,
    lsn: [u64; 3],
    produced: Produced,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            rng: Rng(0x5eed_0f7a_1b07_a41e),
            locals: Default::default(),
            inbox: Vec::new(),
            lsn: [10_000_000; 3],
            produced: Produced::default(),
        }
    }

    /// Applies replicated versions that are due: a version that dominates
    /// the local one replaces it; a concurrent one is resolved locally
    /// (later commit time wins) under the merged clock, so the region's next
    /// write dominates both.
    fn replicate(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.inbox.len() {
            if self.inbox[i].0 > now {
                i += 1;
                continue;
            }
            let (_, to, id, incoming) = self.inbox.swap_remove(i);
            let local = self.locals[to].entry(id).or_insert_with(|| incoming.clone());
            if dominated(&incoming.vv, &local.vv) {
                continue;
            }
            if dominated(&local.vv, &incoming.vv) {
                *local = incoming;
                continue;
            }
            let mut vv = local.vv.clone();
            for (k, v) in &incoming.vv {
                let e = vv.entry(k).or_insert(0);
                *e = (*e).max(*v);
            }
            if (incoming.ts, std::cmp::Reverse(incoming.origin)) > (local.ts, std::cmp::Reverse(local.origin)) {
                *local = incoming;
            }
            local.vv = vv;
        }
    }

    fn pick_region(&mut self) -> usize {
        let mut roll = self.rng.below(100);
        for (i, r) in REGIONS.iter().enumerate() {
            if roll < r.weight {
                return i;
            }
            roll -= r.weight;
        }
        REGIONS.len() - 1
    }

    fn pick_key(&mut self, r: usize) -> u64 {
        for _ in 0..4 {
            let id = if self.rng.chance(0.15) { 1 + self.rng.below(HOT_KEYS) } else { 1 + self.rng.below(CUSTOMERS) };
            // Deleted customers come back, but not at once.
            match self.locals[r].get(&id) {
                Some(Local { row: None, .. }) if self.rng.chance(0.8) => continue,
                _ => return id,
            }
        }
        1 + self.rng.below(CUSTOMERS)
    }

    /// One write by region `r`: the Debezium records it produces (key, value).
    fn write(&mut self, r: usize, id: u64, wall_ms: i64, now: Instant) -> Vec<(String, Option<String>)> {
        let region = &REGIONS[r];
        let ts = wall_ms + region.skew_ms;
        let current = self.locals[r].get(&id).cloned();
        let mut vv = current.as_ref().map(|l| l.vv.clone()).unwrap_or_default();
        *vv.entry(region.name).or_insert(0) += 1;
        let (op, before, after) = match current.and_then(|l| l.row.map(|row| (row, l.vv))) {
            Some((row, old_vv)) if self.rng.chance(0.06) => {
                self.produced.deletes[r] += 1;
                ("d", Some(row_json(id, &row, &old_vv)), None)
            }
            Some((row, old_vv)) => {
                let mut new = row.clone();
                while new == row {
                    match self.rng.below(10) {
                        0..=2 => {
                            new.email = format!(
                                "{}.{}{}@{}",
                                new.first.to_lowercase(),
                                new.last.to_lowercase(),
                                self.rng.below(100),
                                self.rng.pick(&DOMAINS)
                            )
                        }
                        3..=5 => new.city = self.rng.pick(&region.cities),
                        6..=8 => new.tier = self.rng.pick(&TIERS),
                        _ => new.last = self.rng.pick(&LAST),
                    }
                }
                self.produced.updates[r] += 1;
                ("u", Some(row_json(id, &row, &old_vv)), Some(new))
            }
            None => {
                let first = FIRST[(id % 16) as usize];
                let last = LAST[((id / 16 + id * 5) % 16) as usize];
                let new = Customer {
                    first,
                    last,
                    email: format!("{}.{}{id}@{}", first.to_lowercase(), last.to_lowercase(), DOMAINS[0]),
                    city: self.rng.pick(&region.cities),
                    tier: self.rng.pick(&TIERS),
                };
                self.produced.inserts[r] += 1;
                ("c", None, Some(new))
            }
        };
        self.produced.ids.insert(id);
        self.lsn[r] += 40 + self.rng.below(400);
        let envelope = json!({
            "before": before,
            "after": after.as_ref().map(|c| row_json(id, c, &vv)),
            "source": {
                "version": "2.7.3.Final", "connector": "postgresql", "name": region.name,
                "ts_ms": ts, "snapshot": "false", "db": "shop", "schema": "public", "table": "customers",
                "txId": self.lsn[r] / 64, "lsn": self.lsn[r],
            },
            "op": op,
            "ts_ms": wall_ms,
            "transaction": null,
        });
        let key = format!("{{\"id\":{id}}}");
        let mut records = vec![(key.clone(), Some(envelope.to_string()))];
        if op == "d" {
            records.push((key, None));
        }
        let version = Local { row: after, vv, ts, origin: r };
        for to in 0..REGIONS.len() {
            if to != r {
                let lag = Duration::from_millis(50 + self.rng.below(450));
                self.inbox.push((now + lag, to, id, version.clone()));
            }
        }
        self.locals[r].insert(id, version);
        records
    }
}

/// The three regions writing for `duration` at `rate` events/s in total.
fn simulate(bootstrap: &str, duration: Duration, rate: f64, live: &LiveCounts, stop: &AtomicBool) -> Result<Produced, DemoError> {
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create_with_context(Failures(AtomicU64::new(0)))
        .map_err(fail("cannot create the regions' producer"))?;
    let mut sim = Sim::new();
    let started = Instant::now();
    let mut written: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let elapsed = now - started;
        if elapsed >= duration {
            break;
        }
        sim.replicate(now);
        let due = (elapsed.as_secs_f64() * rate) as u64;
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        while written < due {
            let r = sim.pick_region();
            let id = sim.pick_key(r);
            for (key, value) in sim.write(r, id, wall_ms, now) {
                let partition = crate::admin::murmur2_partition(key.as_bytes(), PARTITIONS);
                let mut record: BaseRecord<'_, str, str> =
                    BaseRecord::to(REGIONS[r].topic).key(key.as_str()).partition(partition);
                if let Some(v) = value.as_deref() {
                    record = record.payload(v);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => {
                            return Err(DemoError(format!("region {}: produce to {}: {e}", REGIONS[r].name, REGIONS[r].topic)))
                        }
                    }
                }
            }
            live.events[r].fetch_add(1, Ordering::Relaxed);
            written += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(10)).map_err(fail("the regions' producer could not deliver everything"))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(DemoError(format!("{failed} region records were not delivered to the mock cluster")));
    }
    Ok(sim.produced)
}

// ---------------------------------------------------------------------------
// Observing: /metrics, /state and the SQLite file.

/// One GET on the admin port: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Parsed Prometheus text: (name, labels, value) per sample.
#[derive(Debug, Default, Clone)]
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let mut labels = BTreeMap::new();
                    for pair in rest.trim_end_matches('}').split("\",") {
                        if let Some((k, v)) = pair.split_once("=\"") {
                            labels.insert(k.trim_start_matches(',').to_string(), v.trim_end_matches('"').to_string());
                        }
                    }
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            out.push((name.to_string(), labels, value));
        }
        Scrape(out)
    }

    /// Sum of a metric's samples whose labels match `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && filter.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// A metric's samples summed by one label.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.0 {
            if n == name {
                *out.entry(l.get(label).cloned().unwrap_or_default()).or_insert(0.0) += v;
            }
        }
        out
    }
}

fn scrape_metrics(port: u16) -> Option<Scrape> {
    match http_get(port, "/metrics")? {
        (200, body) => Some(Scrape::parse(&body)),
        _ => None,
    }
}

fn open_sqlite(path: &Path) -> Option<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    // Never create the file: the sink does.
    let conn =
        rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).ok()?;
    conn.busy_timeout(Duration::from_secs(1)).ok()?;
    Some(conn)
}

fn sqlite_count(path: &Path) -> Option<i64> {
    open_sqlite(path)?.query_row(&format!("SELECT count(*) FROM {TABLE}"), [], |r| r.get(0)).ok()
}

/// The sink's stored next offsets of the output topic, per partition.
fn sink_offsets(path: &Path) -> Option<HashMap<i32, i64>> {
    let conn = open_sqlite(path)?;
    let mut stmt = conn
        .prepare("SELECT partition_id, next_offset FROM tributary_sink_offsets WHERE consumer_group = ?1 AND topic = ?2")
        .ok()?;
    let rows = stmt.query_map([format!("{GROUP}-sink").as_str(), OUTPUT], |r| Ok((r.get(0)?, r.get(1)?))).ok()?;
    rows.collect::<Result<HashMap<i32, i64>, _>>().ok()
}

/// A row of the materialized table.
struct TableRow {
    id: i64,
    name: String,
    email: String,
    city: String,
    tier: String,
    vv: Option<String>,
}

fn read_rows(path: &Path) -> Result<BTreeMap<i64, TableRow>, rusqlite::Error> {
    let conn = rusqlite::Connection::open(path)?;
    let mut stmt = conn.prepare(&format!("SELECT id, name, email, city, tier, _vv FROM {TABLE} ORDER BY id"))?;
    let rows = stmt.query_map([], |r| {
        Ok(TableRow {
            id: r.get(0)?,
            name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            email: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            city: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            tier: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            vv: r.get(5)?,
        })
    })?;
    rows.map(|r| r.map(|t| (t.id, t))).collect()
}

/// What `/state/{key}` said about a key.
struct KeyView {
    deleted: bool,
    winner: Option<String>,
    siblings: u64,
    /// (source, commit time) of every version in the set.
    versions: Vec<(String, i64)>,
}

impl KeyView {
    fn from_state(v: &Value) -> KeyView {
        KeyView {
            deleted: v["deleted"].as_bool().unwrap_or(false),
            winner: v["winner"].as_str().map(str::to_string),
            siblings: v["siblings"].as_u64().unwrap_or(1),
            versions: v["versions"]
                .as_array()
                .map(|a| {
                    a.iter().map(|x| (x["source"].as_str().unwrap_or("?").to_string(), x["ts"].as_i64().unwrap_or(0))).collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The live progress line on stderr.
struct Progress {
    port: u16,
    sqlite: PathBuf,
    tty: bool,
    last_print: Option<Instant>,
    last: Option<Scrape>,
    printed: bool,
}

impl Progress {
    fn new(port: u16, sqlite: &Path) -> Progress {
        Progress {
            port,
            sqlite: sqlite.to_path_buf(),
            tty: std::io::stderr().is_terminal(),
            last_print: None,
            last: None,
            printed: false,
        }
    }

    fn tick(&mut self, started: Instant, live: &LiveCounts, phase: &str) {
        if let Some(s) = scrape_metrics(self.port) {
            self.last = Some(s);
        }
        // A terminal gets a line rewritten twice a second; a log, one every 2 s.
        let every = if self.tty { Duration::from_millis(500) } else { Duration::from_secs(2) };
        if self.last_print.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_print = Some(Instant::now());
        let ev: Vec<String> =
            REGIONS.iter().zip(&live.events).map(|(r, n)| format!("{}={}", r.name, n.load(Ordering::Relaxed))).collect();
        let (merged, conflicts, ready) = match &self.last {
            Some(s) => (
                (s.sum("tributary_records_emitted_total", &[]) as u64).to_string(),
                (s.sum("tributary_conflicts_total", &[]) as u64).to_string(),
                s.sum("tributary_ready", &[]) >= 1.0,
            ),
            None => ("-".into(), "-".into(), false),
        };
        let rows = sqlite_count(&self.sqlite).map_or("-".into(), |n| n.to_string());
        let note = if ready { "" } else { "  (processor joining its group: the mock delays a first join by 3 s)" };
        let line = format!(
            "[{:5.1}s {phase}] events {} | merged {merged} | conflicts {conflicts} | rows in SQLite {rows}{note}",
            started.elapsed().as_secs_f64(),
            ev.join(" ")
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line:<130}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    fn finish(&mut self) {
        if self.tty && self.printed {
            eprintln!();
        }
        self.printed = false;
    }
}

// ---------------------------------------------------------------------------
// The report.

struct Report<'a> {
    policy: &'a str,
    deletes: &'a str,
    wrote_for: Duration,
    rate: f64,
    produced: &'a Produced,
    scrape: &'a Scrape,
    keys: &'a BTreeMap<u64, KeyView>,
    rows: &'a BTreeMap<i64, TableRow>,
    sqlite: &'a Path,
    metrics_url: &'a str,
    caught_up: bool,
    consumed: u64,
    sink_records: u64,
}

fn clock_time(ms: i64) -> String {
    let ms = ms.rem_euclid(86_400_000);
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

impl<'a> fmt::Display for Report<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.produced;
        let s = self.scrape;
        writeln!(f)?;
        writeln!(
            f,
            "== tributary demo: 3 regions -> one merged customers table (policy {}, deletes {}) ==",
            self.policy, self.deletes
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Events written ({:.1} s at ~{} events/s; Debezium JSON, keys {{\"id\":N}} over {CUSTOMERS} customers):",
            self.wrote_for.as_secs_f64(),
            self.rate
        )?;
        for (i, r) in REGIONS.iter().enumerate() {
            let skew = if r.skew_ms != 0 { format!("   (database clock {:+} s)", r.skew_ms / 1000) } else { String::new() };
            writeln!(
                f,
                "  {:<3} {:>6} events: {} inserts, {} updates, {} deletes (+{} tombstones){skew}",
                r.name,
                p.events(i),
                p.inserts[i],
                p.updates[i],
                p.deletes[i],
                p.deletes[i]
            )?;
        }
        let emitted = s.sum("tributary_records_emitted_total", &[]) as u64;
        let stale = s.sum("tributary_events_dropped_total", &[("outcome", "stale")]) as u64;
        let dup = s.sum("tributary_events_dropped_total", &[("outcome", "duplicate")]) as u64;
        let ignored = s.sum("tributary_events_dropped_total", &[("outcome", "ignored")]) as u64;
        let dead = s.sum("tributary_dead_letters_total", &[]) as u64;
        writeln!(f)?;
        writeln!(f, "Processor (tributary run, at-least-once: the mock cluster's transactions write no markers, so exactly-once cannot be shown here):")?;
        writeln!(f, "  consumed {} records, merged records emitted {emitted}", self.consumed)?;
        writeln!(f, "  dropped: {stale} stale (superseded by a causally later version already merged), {dup} duplicates, {ignored} tombstones ignored; {dead} dead letters")?;
        let conflicts = s.sum("tributary_conflicts_total", &[]) as u64;
        let winners = s.by("tributary_conflicts_total", "winner");
        let listing: Vec<String> = winners.iter().filter(|(w, _)| *w != "-").map(|(w, n)| format!("{w} {}", *n as u64)).collect();
        let resolved =
            if listing.is_empty() { "column by column".to_string() } else { format!("winners {}", listing.join(", ")) };
        writeln!(
            f,
            "  conflicts: {conflicts} events left concurrent versions of their key; resolved by {}: {resolved}",
            self.policy
        )?;
        let how = match self.policy {
            "lww" => "the version with the latest source commit time wins. ap's database clock runs 3 s behind, so its\n    concurrent edits lose to eu/us edits made up to 3 s earlier; its causally later edits (made after it\n    had replicated the other version) still win, because their version vectors dominate",
            "source-priority" => "the source with the larger priority wins (eu 3 > us 2 > ap 1), then the latest commit time",
            _ => "column by column: each column takes its latest write (no single winner, shown as \"-\")",
        };
        writeln!(f, "    {how}.")?;
        let skews: Vec<String> =
            s.by("tributary_clock_skew_seconds", "source").iter().map(|(k, v)| format!("{k} {v:+.1} s")).collect();
        if !skews.is_empty() {
            writeln!(
                f,
                "  clock skew seen (Kafka time - source commit time, tributary_clock_skew_seconds): {}",
                skews.join(", ")
            )?;
        }

        let live = self.keys.values().filter(|k| !k.deleted).count();
        let deleted = self.keys.len() - live;
        let open = self.keys.values().filter(|k| k.siblings > 1).count();
        writeln!(f)?;
        writeln!(f, "Merged view (GET /state for each key): {} keys, {live} live keys, {deleted} deleted, {open} with concurrent versions right now", self.keys.len())?;
        writeln!(f, "SQLite (tributary sink, {} records applied): {} rows in table {TABLE}", self.sink_records, self.rows.len())?;
        writeln!(f, "  SQLite file: {}", self.sqlite.display())?;
        // Fewer rows than customers is not data loss: say where they went.
        let unwritten = (CUSTOMERS as usize).saturating_sub(self.keys.len());
        writeln!(
            f,
            "  {} customers, {} rows: {deleted} keys resolve to deleted under deletes = {} (the sink removed their rows on the tombstone), {unwritten} customers were never written in this run",
            CUSTOMERS,
            self.rows.len(),
            self.deletes
        )?;
        if self.policy == "field-lww" {
            writeln!(f, "  field-lww: a row that survives a concurrent delete starts from the surviving write's full row, so no column goes missing")?;
        }
        if !self.caught_up {
            writeln!(
                f,
                "  warning: the processor and sink had not caught up within {} s; the table may lag",
                CATCH_UP.as_secs()
            )?;
        } else if self.rows.len() != live {
            writeln!(f, "  warning: the table's row count differs from the live keys")?;
        }

        // A few rows: open conflicts, then keys where a causally later write
        // settled the merge (ap's among them: it wins those despite its clock).
        let regions_in =
            |id: u64| self.rows.get(&(id as i64)).and_then(|r| r.vv.as_deref()).map_or(0, |v| v.matches(':').count());
        let live_keys: Vec<(u64, &KeyView)> = self.keys.iter().filter(|(_, k)| !k.deleted).map(|(id, k)| (*id, k)).collect();
        let mut sample: Vec<(u64, &KeyView)> = Vec::new();
        let take = |pred: &dyn Fn(u64, &KeyView) -> bool, n: usize, sample: &mut Vec<(u64, &'a KeyView)>| {
            let mut picked: Vec<(u64, &KeyView)> =
                live_keys.iter().filter(|(id, k)| pred(*id, k) && !sample.iter().any(|(s, _)| s == id)).copied().collect();
            picked.sort_by_key(|(id, k)| (std::cmp::Reverse(regions_in(*id)), std::cmp::Reverse(k.siblings), *id));
            sample.extend(picked.into_iter().take(n));
        };
        take(&|_, k| k.siblings > 1, 2, &mut sample);
        take(&|_, k| k.siblings == 1 && k.winner.as_deref() == Some("ap"), 2, &mut sample);
        take(&|_, k| k.siblings == 1, 6 - sample.len().min(6), &mut sample);
        writeln!(f)?;
        writeln!(f, "Some merged rows (table {TABLE}, _vv = the merged version vector; winner from /state):")?;
        writeln!(f, "  {:>4}  {:<18} {:<32} {:<10} {:<9} {:<26} winner", "id", "name", "email", "city", "tier", "_vv")?;
        for (id, k) in sample {
            let Some(row) = self.rows.get(&(id as i64)) else { continue };
            let versions = if k.siblings > 1 {
                let v: Vec<String> = k.versions.iter().map(|(src, ts)| format!("{src} @{}", clock_time(*ts))).collect();
                format!("  ({} concurrent: {})", k.siblings, v.join(", "))
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:>4}  {:<18} {:<32} {:<10} {:<9} {:<26} {}{versions}",
                row.id,
                row.name,
                row.email,
                row.city,
                row.tier,
                row.vv.as_deref().unwrap_or("-"),
                k.winner.as_deref().unwrap_or("-")
            )?;
        }
        writeln!(f)?;
        writeln!(f, "Metrics were served at {} (and /state/{{key}}, /healthz, /readyz) while the demo ran.", self.metrics_url)?;
        writeln!(f, "Look at the table:   sqlite3 {} 'SELECT * FROM {TABLE} LIMIT 10'", self.sqlite.display())?;
        writeln!(f, "Re-run with another policy (from a checkout: cargo run --release -- demo ...):")?;
        for other in POLICIES.iter().filter(|p| **p != self.policy) {
            writeln!(f, "  tributary demo --policy {other}")?;
        }
        writeln!(f, "  TRIBUTARY_MERGE__DELETES=delete-wins tributary demo --policy {}", self.policy)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(parse_duration("6").unwrap(), Duration::from_secs(6));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_demo_configuration_is_valid_and_rejects_unknown_policies() {
        let c = demo_config("127.0.0.1:1", "field-lww", Path::new("/tmp/s"), Path::new("/tmp/x.sqlite"), 1234).unwrap();
        assert_eq!(c.merge.policy.as_str(), "field-lww");
        assert_eq!(c.sources.len(), 3);
        assert_eq!(c.output_clock_field().as_deref(), Some("_vv"));
        let e = demo_config("127.0.0.1:1", "newest", Path::new("/tmp/s"), Path::new("/tmp/x.sqlite"), 1234).unwrap_err();
        assert!(e.to_string().contains("newest"), "{e}");
    }

    #[test]
    fn metrics_text_is_parsed_by_label() {
        let s = Scrape::parse(
            "# HELP x\ntributary_conflicts_total{policy=\"lww\",winner=\"eu\"} 3\ntributary_conflicts_total{policy=\"lww\",winner=\"ap\"} 1\ntributary_ready 1\n",
        );
        assert_eq!(s.sum("tributary_conflicts_total", &[]), 4.0);
        assert_eq!(s.by("tributary_conflicts_total", "winner")["eu"], 3.0);
        assert_eq!(s.sum("tributary_ready", &[]), 1.0);
    }

    #[test]
    fn the_simulated_regions_write_valid_carried_clocks() {
        let mut sim = Sim::new();
        let now = Instant::now();
        for i in 0..2000 {
            let r = sim.pick_region();
            let id = sim.pick_key(r);
            for (_, v) in sim.write(r, id, 1_000 + i, now) {
                if let Some(v) = v {
                    let v: Value = serde_json::from_str(&v).unwrap();
                    let image = if v["op"] == "d" { &v["before"] } else { &v["after"] };
                    let vv: BTreeMap<String, u64> = serde_json::from_str(image["_vv"].as_str().unwrap()).unwrap();
                    // A delete's clock is the before image's plus one for the region.
                    if v["op"] == "d" {
                        assert!(!vv.is_empty());
                    } else {
                        assert!(vv[REGIONS[r].name] >= 1);
                    }
                }
            }
            sim.replicate(now + Duration::from_secs(2));
        }
        assert!(sim.produced.deletes.iter().sum::<u64>() > 0 && sim.produced.updates.iter().sum::<u64>() > 0);
    }
}
