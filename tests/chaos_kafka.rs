//! Chaos: `tributary run` on a broker this test owns, while three sources
//! feed many keys in batches and the processes come and go (issue 9):
//! `kill -9` at random moments, scale-out and back in, one instance restarted
//! with its state directory wiped, and one broker restart; with an odd seed
//! every instance keeps standby copies of the others' tasks. Afterwards the
//! `read_committed` output must hold one record per change event, its last
//! record per key must equal what `tributary replay` makes of the source
//! topics, and no key's `tributary.vv` may ever repeat or go backwards.
//!
//! The short form (CI, `scripts/test`) runs 4 kill cycles and scales
//! 1 → 2 → 1. The long form, as the README says:
//!
//!     TRIBUTARY_CHAOS_CYCLES=20 cargo test --test chaos_kafka -- --nocapture
//!
//! runs 20 kill cycles and scales 1 → 3 → 1 (`TRIBUTARY_CHAOS_WIDTH` sets the
//! width). The schedule and the data come from a seed that the test prints;
//! `TRIBUTARY_CHAOS_SEED=N` runs the same schedule again (the moments are
//! the same, what the processes were doing at them is up to the machine).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{compacted, read_topic_at, OwnedBroker, Processor, Rec};
use common::setup::{Conf, Setup, PARTITIONS, SOURCES};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

const INSTANCES: [&str; 3] = ["a", "b", "c"];
const KEYS: u32 = 1000;
/// Change events per produced batch, and the pause between batches.
const BATCH: usize = 80;
const BATCH_PAUSE: Duration = Duration::from_millis(200);

/// SplitMix64: a small deterministic generator, so that a seed names a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The sources' history: Debezium change events on random keys from random
/// sources, with `before` images, a few deletes (each followed by its
/// Debezium tombstone) and commit times near now.
struct Feed {
    topics: Vec<String>,
    rng: Rng,
    live: HashMap<(usize, u32), Value>,
    written: u64,
}

impl Feed {
    fn batch(&mut self) -> Vec<Rec> {
        let mut out = Vec::new();
        for _ in 0..BATCH {
            let si = self.rng.below(SOURCES.len() as u64) as usize;
            let k = self.rng.below(u64::from(KEYS)) as u32;
            let key = json!({ "id": k }).to_string();
            // Where Debezium (a Java producer: murmur2) puts the key.
            let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
            let topic = self.topics[si].clone();
            // Sources' clocks disagree a little, so concurrent writes race.
            let ts = now_ms() - self.rng.below(50) as i64;
            let before = self.live.get(&(si, k)).cloned();
            self.written += 1;
            match before {
                Some(b) if self.rng.chance(6) => {
                    self.live.remove(&(si, k));
                    let payload = json!({"before": b, "after": null, "op": "d", "source": {"ts_ms": ts}, "ts_ms": ts + 2});
                    out.push(Rec { topic: topic.clone(), partition, key: Some(key.clone()), value: Some(payload.to_string()) });
                    out.push(Rec { topic, partition, key: Some(key), value: None });
                }
                before => {
                    let after = json!({"id": k, "name": format!("n{k}"), "by": SOURCES[si], "n": self.written});
                    self.live.insert((si, k), after.clone());
                    let op = if before.is_some() { "u" } else { "c" };
                    let payload = json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}, "ts_ms": ts + 2});
                    out.push(Rec { topic, partition, key: Some(key), value: Some(payload.to_string()) });
                }
            }
        }
        out
    }
}

/// Produces batches until `stop` is set; returns the number of change events
/// (every one must come out once: derived clocks make none of them stale).
fn run_feed(bootstrap: String, mut feed: Feed, stop: Arc<AtomicBool>) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("log_level", "3")
        .create()
        .expect("producer");
    let mut events = 0;
    while !stop.load(Ordering::Relaxed) {
        for r in feed.batch() {
            events += usize::from(r.value.is_some());
            let mut rec: BaseRecord<'_, str, str> = BaseRecord::to(&r.topic).partition(r.partition);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_str());
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v.as_str());
            }
            while let Err((_, back)) = producer.send(rec) {
                rec = back;
                producer.poll(Duration::from_millis(10));
            }
        }
        // Long enough to ride out the broker restart.
        producer.flush(Duration::from_secs(180)).expect("the feed's records are acknowledged");
        std::thread::sleep(BATCH_PAUSE);
    }
    events
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Kill,
    ScaleOut,
    ScaleIn,
    Wipe,
    BrokerRestart,
}

/// The kill cycles, with scale-out after the first quarter and scale-in
/// after the third (so kills hit the scaled-out group too), and the wipe and
/// the broker restart at random places.
fn plan(rng: &mut Rng, cycles: usize) -> Vec<Step> {
    let mut steps = vec![Step::Kill; cycles];
    steps.insert(3 * cycles / 4, Step::ScaleIn);
    steps.insert(cycles / 4, Step::ScaleOut);
    for step in [Step::Wipe, Step::BrokerRestart] {
        let at = rng.below(steps.len() as u64 + 1) as usize;
        steps.insert(at, step);
    }
    steps
}

/// The test's broker, topics, processes and log directory.
struct Chaos {
    seed: u64,
    began: Instant,
    running: BTreeMap<&'static str, Processor>,
    starts: BTreeMap<&'static str, u32>,
    /// Processes that exited without being told to.
    exits: Vec<String>,
    /// Topics and directory: dropped after the processes.
    setup: Setup,
    /// Declared last: dropped after the processes.
    broker: OwnedBroker,
}

impl Drop for Chaos {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = self.setup.keep();
        for name in ["server.log", "kafka.out"] {
            let _ = std::fs::copy(self.broker.dir().join("logs").join(name), dir.join(format!("broker-{name}")));
        }
        eprintln!("chaos seed {}: logs, outputs and the broker's log are kept in {}", self.seed, dir.display());
    }
}

impl Chaos {
    fn new(seed: u64) -> Chaos {
        let broker = OwnedBroker::start();
        // Compaction held back on the output, so that every record written
        // can be checked; the changelog is cleaned within seconds, so that
        // restores read compacted partitions.
        let changelog = [("cleanup.policy", "compact"), ("segment.ms", "3000"), ("min.cleanable.dirty.ratio", "0.01")];
        let setup = Setup::on(broker.bootstrap(), "chaos", &[], &changelog);
        Chaos { seed, began: Instant::now(), running: BTreeMap::new(), starts: BTreeMap::new(), exits: Vec::new(), setup, broker }
    }

    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{:6.1}s] {what}", self.began.elapsed().as_secs_f64());
    }

    /// Dynamic membership (the default): a killed member holds its
    /// partitions until its session times out, so keep that short. With an
    /// odd seed every instance keeps a standby copy of the others' tasks, so
    /// takeovers also start from copies caught up to any point of the
    /// faults; with an even one there are no copies (the default).
    fn conf(&self) -> Conf<'static> {
        Conf {
            merge: "",
            runtime: if self.standby() { "standby_replicas = 1" } else { "" },
            tables: "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"",
        }
    }

    fn standby(&self) -> bool {
        self.seed % 2 == 1
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.setup.dir.path().join(name)
    }

    fn start(&mut self, name: &'static str) {
        let config = self.setup.config_with(name, &self.conf());
        let n = self.starts.entry(name).or_default();
        *n += 1;
        let n = *n;
        let log = self.setup.log(name);
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut file,
            format!("===== chaos: start #{n} of {name} at {:.1}s =====\n", self.began.elapsed().as_secs_f64()).as_bytes(),
        )
        .unwrap();
        let p = Processor::start(&config, &log);
        self.say(format!("start {name} (#{n}, pid {})", p.child.id()));
        assert!(self.running.insert(name, p).is_none(), "{name} was running already");
    }

    /// Waits until `name` has opened a task since its last start (it is
    /// processing, or about to), restarting what exits meanwhile.
    fn wait_processing(&mut self, name: &'static str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(self.setup.log(name)).unwrap_or_default();
            let since = text.rfind("===== chaos: start #").map_or("", |at| &text[at..]);
            if since.contains("task opened") {
                return;
            }
            self.pause(Duration::from_millis(100));
        }
        self.say(format!("{name} opened no task within {within:?}"));
    }

    fn kill9(&mut self, name: &'static str) {
        let p = self.running.remove(name).expect("a running instance");
        self.say(format!("kill -9 {name} (pid {})", p.child.id()));
        p.kill9();
    }

    fn stop(&mut self, name: &'static str) {
        let p = self.running.remove(name).expect("a running instance");
        self.say(format!("SIGTERM {name} (pid {})", p.child.id()));
        let status = p.stop();
        if !status.success() {
            self.exits.push(format!("{name} exited with {status} on SIGTERM (see {name}.log)"));
        }
    }

    /// Restarts, as a supervisor would, the processes that exited on their own.
    fn supervise(&mut self) {
        let exited: Vec<&'static str> =
            self.running.iter_mut().filter_map(|(name, p)| p.child.try_wait().unwrap().map(|_| *name)).collect();
        for name in exited {
            let mut p = self.running.remove(name).unwrap();
            let status = p.child.wait().unwrap();
            // The binary's own last word, else the last error logged.
            let text = p.log_text();
            let lines = || text.lines().rev();
            let last = lines()
                .find(|l| l.starts_with("error:"))
                .or_else(|| lines().find(|l| l.contains("ERROR")))
                .unwrap_or("(no error logged)")
                .to_string();
            self.say(format!("{name} exited by itself ({status}): {last}"));
            self.exits.push(format!("{name} exited with {status} at {:.1}s: {last}", self.began.elapsed().as_secs_f64()));
            std::thread::sleep(Duration::from_secs(1));
            self.start(name);
        }
    }

    fn pause(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.supervise();
            std::thread::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
        }
    }

    fn committed_output(&self) -> Vec<Value> {
        read_topic_at(self.broker.bootstrap(), &self.setup.output, true)
    }

    /// The source topics' records, and what `tributary replay` makes of them.
    fn replay(&self) -> (String, Vec<Value>) {
        let dump = self.setup.dump();
        let replay = self.setup.replay_of(&dump, &self.conf());
        (dump, replay)
    }
}

fn header(r: &Value, name: &str) -> String {
    common::header(r, name).unwrap_or_default()
}

fn clock(r: &Value) -> BTreeMap<String, u64> {
    serde_json::from_str(&header(r, "tributary.vv")).unwrap_or_else(|e| panic!("tributary.vv of {r}: {e}"))
}

/// `b` follows `a`: every entry at least as large, and not the same clock.
fn dominates(b: &BTreeMap<String, u64>, a: &BTreeMap<String, u64>) -> bool {
    a.iter().all(|(s, n)| b.get(s).copied().unwrap_or(0) >= *n) && a != b
}

/// Every key's clocks, in offset order, each strictly above the previous one.
fn clock_problems(output: &[Value]) -> Vec<String> {
    let mut records: Vec<&Value> = output.iter().collect();
    records.sort_by_key(|r| (r["partition"].as_i64(), r["offset"].as_i64()));
    let mut last: HashMap<&str, (&Value, BTreeMap<String, u64>)> = HashMap::new();
    let mut problems = Vec::new();
    for r in records {
        let key = r["key"].as_str().expect("a key");
        let vv = clock(r);
        if let Some((prev, before)) = last.get(key) {
            if prev["partition"] != r["partition"] {
                problems.push(format!("key {key} in partitions {} and {}", prev["partition"], r["partition"]));
            } else if !dominates(&vv, before) {
                let how = if &vv == before { "repeats" } else { "does not follow" };
                problems.push(format!(
                    "key {key}: tributary.vv {vv:?} at partition {} offset {} {how} {before:?} at offset {}",
                    r["partition"], r["offset"], prev["offset"]
                ));
            }
        }
        last.insert(key, (r, vv));
    }
    problems
}

/// A compacted record in a line: the value and the headers.
fn shown(record: Option<&(Value, Value)>) -> String {
    let Some((payload, headers)) = record else {
        return "nothing".into();
    };
    let headers: Vec<String> = headers
        .as_array()
        .unwrap()
        .chunks(2)
        .map(|kv| format!("{}={}", kv[0].as_str().unwrap(), kv[1].as_str().unwrap_or("null")))
        .collect();
    format!("{} [{}]", payload.as_str().unwrap_or("null (tombstone)"), headers.join(" "))
}

/// Keys whose last committed record differs from replay's.
fn view_problems(output: &[Value], replay: &[Value]) -> Vec<String> {
    let (live, want) = (compacted(output), compacted(replay));
    let mut problems = Vec::new();
    let keys: std::collections::BTreeSet<&String> = live.keys().chain(want.keys()).collect();
    for key in keys {
        if live.get(key) != want.get(key) {
            problems.push(format!(
                "key {key}: replay ends with {}, the output with {}",
                shown(want.get(key)),
                shown(live.get(key))
            ));
        }
    }
    let partition: HashMap<&str, &Value> = replay.iter().map(|r| (r["key"].as_str().unwrap(), &r["partition"])).collect();
    for r in output {
        if partition.get(r["key"].as_str().unwrap()) != Some(&&r["partition"]) {
            problems.push(format!(
                "key {} written to partition {}, replay says {:?}",
                r["key"],
                r["partition"],
                partition.get(r["key"].as_str().unwrap())
            ));
        }
    }
    problems
}

#[test]
fn chaos_kills_scaling_wiped_state_and_broker_restart_converge_to_replay() {
    let seed = env_u64("TRIBUTARY_CHAOS_SEED")
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    let cycles = env_u64("TRIBUTARY_CHAOS_CYCLES").unwrap_or(4) as usize;
    let width =
        env_u64("TRIBUTARY_CHAOS_WIDTH").unwrap_or(if cycles >= 10 { 3 } else { 2 }).clamp(1, INSTANCES.len() as u64) as usize;
    let mut rng = Rng(seed);
    let steps = plan(&mut rng, cycles);
    let copies = if seed % 2 == 1 { "standby copies on" } else { "no standby copies" };
    eprintln!("chaos seed {seed} (run again with TRIBUTARY_CHAOS_SEED={seed}): {cycles} kill cycles, scale 1 -> {width} -> 1, {copies}, steps {steps:?}");

    let mut chaos = Chaos::new(seed);
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feed = Feed { topics: chaos.setup.topics.clone(), rng: Rng(seed ^ 0x5eed_f00d), live: HashMap::new(), written: 0 };
    let feeder = {
        let (bootstrap, stop) = (chaos.broker.bootstrap().to_string(), stop_feed.clone());
        std::thread::spawn(move || run_feed(bootstrap, feed, stop))
    };
    chaos.start("a");
    let mut scaled = 1;
    for step in steps {
        chaos.pause(rng.millis(300, 4000));
        match step {
            Step::Kill => {
                let names: Vec<&'static str> = chaos.running.keys().copied().collect();
                let victim = names[rng.below(names.len() as u64) as usize];
                // Mostly in the middle of processing, sometimes earlier:
                // while it joins the group or restores.
                if rng.chance(75) {
                    chaos.wait_processing(victim, Duration::from_secs(60));
                    chaos.pause(rng.millis(0, 2500));
                }
                chaos.kill9(victim);
                chaos.pause(rng.millis(0, 1500));
                chaos.start(victim);
            }
            Step::ScaleOut => {
                for name in &INSTANCES[1..width] {
                    chaos.start(name);
                }
                scaled = width;
            }
            Step::ScaleIn => {
                for name in &INSTANCES[1..scaled] {
                    // Gone for good: a crash leaves its transaction open
                    // until the broker times it out.
                    if rng.chance(50) {
                        chaos.stop(name);
                    } else {
                        chaos.kill9(name);
                    }
                }
                scaled = 1;
            }
            Step::Wipe => {
                let names: Vec<&'static str> = chaos.running.keys().copied().collect();
                let victim = names[rng.below(names.len() as u64) as usize];
                chaos.wait_processing(victim, Duration::from_secs(60));
                chaos.pause(rng.millis(0, 2500));
                chaos.kill9(victim);
                std::fs::remove_dir_all(chaos.state_dir(victim)).unwrap();
                chaos.say(format!("wiped the state directory of {victim}"));
                chaos.start(victim);
            }
            Step::BrokerRestart => {
                chaos.say("restarting the broker");
                let down = rng.millis(0, 3000);
                chaos.broker.restart(down);
                chaos.say(format!("broker back (down for at least {down:?})"));
            }
        }
    }
    stop_feed.store(true, Ordering::Relaxed);
    let expected = feeder.join().expect("the feed thread");
    chaos.say(format!("feed stopped: {expected} change events"));

    // The group settles on one instance and catches up.
    let deadline = Instant::now() + Duration::from_secs(300);
    let seen = loop {
        chaos.supervise();
        let seen = chaos.committed_output().len();
        if seen >= expected || Instant::now() > deadline {
            break seen;
        }
        chaos.pause(Duration::from_secs(2));
    };
    chaos.say(format!("{seen} of {expected} outputs committed; stopping"));
    // Anything past `expected` would be a duplicate: give it time to show.
    chaos.pause(Duration::from_secs(2));
    for name in chaos.running.keys().copied().collect::<Vec<_>>() {
        chaos.stop(name);
    }
    let output = chaos.committed_output();
    let (dump, replay) = chaos.replay();
    let uncommitted = read_topic_at(chaos.broker.bootstrap(), &chaos.setup.output, false).len();
    let conflicts = output.iter().filter(|r| header(r, "tributary.conflict") == "true").count();
    chaos.say(format!(
        "{} committed outputs ({conflicts} with conflicts), {} keys; {} records written and aborted; starts {:?}; exits by themselves: {:?}",
        output.len(),
        compacted(&output).len(),
        uncommitted - output.len(),
        chaos.starts,
        chaos.exits
    ));

    let mut problems = Vec::new();
    if replay.len() != expected {
        problems.push(format!("replay made {} outputs of {expected} change events", replay.len()));
    }
    if output.len() != expected {
        problems.push(format!("{} committed outputs for {expected} change events (exactly one each)", output.len()));
    }
    let views = view_problems(&output, &replay);
    let clocks = clock_problems(&output);
    if !views.is_empty() {
        problems.push(format!("{} keys differ from replay, for example:", views.len()));
        problems.extend(views.into_iter().take(10));
    }
    if !clocks.is_empty() {
        problems.push(format!("{} clocks repeat or go backwards, for example:", clocks.len()));
        problems.extend(clocks.into_iter().take(10));
    }
    if !problems.is_empty() {
        let dir = chaos.setup.dir.path();
        let lines = |rs: &[Value]| rs.iter().map(|r| r.to_string() + "\n").collect::<String>();
        std::fs::write(dir.join("output.jsonl"), lines(&output)).unwrap();
        std::fs::write(dir.join("replay.jsonl"), lines(&replay)).unwrap();
        std::fs::write(dir.join("dump.jsonl"), dump).unwrap();
        panic!("chaos seed {seed}:\n{}", problems.join("\n"));
    }
}
