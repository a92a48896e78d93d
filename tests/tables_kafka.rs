//! Many tables in one processor, and sources that are not co-partitioned
//! (issue 14), on a real Apache Kafka 4.x broker, run as a user runs it: the
//! binary, a config file, SIGTERM and kill -9. Every table's final output
//! (its last record per key) must equal what `tributary replay` makes of
//! that table's original source topics with a single-table configuration:
//! the repartition detour is invisible in the result, the derived clock
//! counts the original offsets.
//!
//! The short form runs in CI. `TRIBUTARY_TABLES_LONG=1` runs the kill test
//! with more cycles on a larger backlog.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::kafka::{self, admin_addr, create_topic, http_get, metric, produce, read_topic, unique, Processor, Rec};
use common::setup::{topic_exists, HELD_BACK};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use tributary::config::Config;

/// The tables' partition count (the regional topics').
const PARTITIONS: i32 = 3;
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

fn long_form() -> bool {
    std::env::var("TRIBUTARY_TABLES_LONG").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// One source of a table.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    topic: String,
    partitions: i32,
    /// Keyed by `{"crm_no": "C…"}` in Kafka, with the canonical key
    /// `{"id": …}` picked from the row by `key_fields = ["id"]`.
    other_key: bool,
}

impl Source {
    fn new(name: &str, topic: &str, partitions: i32) -> Source {
        Source { name: name.into(), topic: topic.into(), partitions, other_key: false }
    }

    /// Its lines of a `[[sources]]` / `[[tables.sources]]` entry.
    fn toml(&self, header: &str, repartition: bool) -> String {
        let mut t = format!("\n[[{header}]]\nname = \"{}\"\ntopic = \"{}\"\n", self.name, self.topic);
        if self.other_key {
            t += "key_fields = [\"id\"]\n";
            if repartition {
                t += "repartition = \"always\"\n";
            }
        }
        t
    }
}

/// One table: its output topic and sources.
#[derive(Debug, Clone)]
struct Table {
    name: String,
    output: String,
    sources: Vec<Source>,
}

impl Table {
    /// A `[[tables]]` entry of a multi-table configuration.
    fn toml(&self) -> String {
        let mut t = format!("\n[[tables]]\nname = \"{}\"\n[tables.output]\ntopic = \"{}\"\n", self.name, self.output);
        for s in &self.sources {
            t += &s.toml("tables.sources", true);
        }
        t
    }

    /// What `tributary replay` makes of the table's original source topics,
    /// with the legacy single-table configuration of this table alone.
    fn replay(&self, group: &str) -> Vec<Value> {
        let mut text = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n\n[output]\ntopic = \"{}\"\n\n[merge]\npolicy = \"lww\"\n",
            kafka::bootstrap(),
            self.output
        );
        for s in &self.sources {
            text += &s.toml("sources", false);
        }
        let config = Config::parse(&text, "replay", std::iter::empty()).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut dump = String::new();
        for s in &self.sources {
            for r in read_topic(&s.topic, false) {
                dump += &r.to_string();
                dump.push('\n');
            }
        }
        let (mut out, mut log) = (Vec::new(), Vec::new());
        tributary::replay::replay(&config, dump.as_bytes(), "dump", &mut out, None, &mut log).unwrap();
        common::json_lines(&String::from_utf8(out).unwrap())
    }
}

/// A test's group id and directory (configs, state, logs).
struct World {
    group: String,
    dir: tempfile::TempDir,
    epoch_ms: i64,
}

impl World {
    fn new(name: &str) -> World {
        let epoch_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        World { group: unique(name), dir: tempfile::tempdir().unwrap(), epoch_ms }
    }

    /// `[kafka]`, `[merge]`, `[runtime]` (100 ms cycles) and `[admin]`
    /// (with the tests' token), then `rest`, written to `{name}.toml`.
    fn config(&self, name: &str, rest: &str) -> PathBuf {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n\n[merge]\npolicy = \"lww\"\n\n[runtime]\ncommit_interval = \"100ms\"\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n{rest}",
            kafka::bootstrap(),
            self.group,
            self.dir.path().join(name).display(),
            kafka::ADMIN_TOKEN,
        );
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// A table of explicit sources named `{group}.{source}.{table}`, each
    /// topic created with its partition count, and its output topic created
    /// with [`HELD_BACK`] (every record it gets can be counted).
    fn table(&self, name: &str, sources: &[(&str, i32, bool)]) -> Table {
        let sources: Vec<Source> = sources
            .iter()
            .map(|(s, partitions, other_key)| {
                let topic = format!("{}.{s}.{name}", self.group);
                create_topic(&topic, *partitions, &[]);
                Source { other_key: *other_key, ..Source::new(s, &topic, *partitions) }
            })
            .collect();
        let output = format!("{}.{name}.merged", self.group);
        create_topic(&output, PARTITIONS, &HELD_BACK);
        Table { name: name.into(), output, sources }
    }

    /// A pattern table: `{group}.{region}.public.{table}` for every region
    /// (topics created here), output `{group}.{table}.merged` (left to
    /// Tributary to create).
    fn pattern_table(&self, name: &str) -> Table {
        let sources: Vec<Source> = REGIONS
            .iter()
            .map(|r| {
                let topic = format!("{}.{r}.public.{name}", self.group);
                create_topic(&topic, PARTITIONS, &[]);
                Source::new(r, &topic, PARTITIONS)
            })
            .collect();
        Table { name: name.into(), output: format!("{}.{name}.merged", self.group), sources }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- {} (last 300 of {} lines) ---", entry.path().display(), lines.len());
                for l in &lines[lines.len().saturating_sub(300)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The record key and the partition of key `k` in source `s`: Debezium's
/// key (or the CRM's own number) placed by murmur2, as a Java producer does.
fn placed(s: &Source, k: u32) -> (String, i32) {
    let key = if s.other_key { json!({ "crm_no": format!("C{k:05}") }) } else { json!({ "id": k }) }.to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), s.partitions);
    (key, partition)
}

/// A deterministic history of `table`'s sources `only` (all when empty):
/// every source creates, updates and deletes the same keys (conflicts),
/// with Debezium tombstones after deletes. `live` carries each source's
/// rows across calls; round `r` is stamped `epoch + r * 100` ms.
fn history(
    w: &World,
    table: &Table,
    keys: u32,
    rounds: std::ops::Range<u32>,
    only: &[usize],
    live: &mut HashMap<(usize, u32), Value>,
) -> Vec<Rec> {
    let mut out = Vec::new();
    for r in rounds {
        for (si, s) in table.sources.iter().enumerate() {
            if !only.is_empty() && !only.contains(&si) {
                continue;
            }
            for k in 0..keys {
                let h = (r * 31 + si as u32 * 17 + k * 7) % 11;
                if h < 3 {
                    continue;
                }
                let (key, partition) = placed(s, k);
                let before = live.get(&(si, k)).cloned();
                let ts = w.epoch_ms + i64::from(r) * 100 + si as i64 * 7 + i64::from(k % 5);
                let (payload, tombstone) = match &before {
                    Some(b) if h == 10 => {
                        live.remove(&(si, k));
                        (json!({"before": b, "after": null, "op": "d", "source": {"ts_ms": ts}}), true)
                    }
                    _ => {
                        let mut after = json!({"id": k, "name": format!("n{k}"), "round": r, "by": s.name});
                        if s.other_key {
                            after["crm_no"] = json!(format!("C{k:05}"));
                        }
                        live.insert((si, k), after.clone());
                        let op = if before.is_some() { "u" } else { "c" };
                        (json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}, "ts_ms": ts + 3}), false)
                    }
                };
                out.push(Rec { topic: s.topic.clone(), partition, key: Some(key.clone()), value: Some(payload.to_string()) });
                if tombstone {
                    out.push(Rec { topic: s.topic.clone(), partition, key: Some(key), value: None });
                }
            }
        }
    }
    out
}

/// Output records a history must produce: one per change event (derived
/// clocks never make an event stale); Debezium tombstones produce none.
fn expected_outputs(records: &[Rec]) -> usize {
    records.iter().filter(|r| r.value.is_some()).count()
}

fn header(r: &Value, name: &str) -> String {
    common::header(r, name).unwrap_or_default()
}

/// Key → (payload, headers) of the last record per key, without a
/// `tributary.table` header (replay of a single table has none to compare).
fn view(records: &[Value]) -> BTreeMap<String, (Value, Vec<Value>)> {
    records
        .iter()
        .map(|r| {
            let headers: Vec<Value> = r["headers"]
                .as_array()
                .map(|h| h.chunks(2).filter(|kv| kv[0] != "tributary.table").flatten().cloned().collect())
                .unwrap_or_default();
            (r["key"].as_str().expect("a key").to_string(), (r["payload"].clone(), headers))
        })
        .collect()
}

fn assert_same_view(table: &Table, live: &[Value], replay: &[Value]) {
    let (a, b) = (view(live), view(replay));
    let missing: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let extra: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "table {}: keys missing {missing:?}, keys extra {extra:?}", table.name);
    for (k, v) in &b {
        assert_eq!(a.get(k), Some(v), "table {}: key {k}: live output differs from replay", table.name);
    }
}

/// Waits until `table`'s output topic's last record per key equals replay's
/// (the processor may still be working), then asserts it.
fn wait_for_view(group: &str, table: &Table, within: Duration) -> (Vec<Value>, Vec<Value>) {
    let replay = table.replay(group);
    assert!(!replay.is_empty(), "table {}: the history emits something", table.name);
    let deadline = Instant::now() + within;
    loop {
        let live = read_topic(&table.output, true);
        if view(&live) == view(&replay) || Instant::now() > deadline {
            assert_same_view(table, &live, &replay);
            return (live, replay);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Exactly-once: no key carries the same merged clock twice (every accepted
/// event raises it), and there is one output record per change event.
fn assert_exactly_once(output: &[Value], expected: usize) {
    let mut seen = BTreeSet::new();
    for r in output {
        let id = (r["key"].as_str().unwrap().to_string(), header(r, "tributary.vv"));
        assert!(seen.insert(id.clone()), "duplicate output record {id:?}");
    }
    assert_eq!(output.len(), expected, "one output record per change event");
}

/// Every output record is in the partition murmur2 gives its canonical key
/// among the table's partitions: where the co-partitioned sources have it.
fn assert_partitioned_by_key(table: &Table, output: &[Value]) {
    for r in output {
        let key = r["key"].as_str().unwrap();
        let want = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
        assert_eq!(r["partition"].as_i64(), Some(i64::from(want)), "table {}: key {key} in the wrong partition", table.name);
    }
}

/// Waits until the output topic holds at least `n` committed records.
fn wait_for_count(topic: &str, n: usize, within: Duration) -> Vec<Value> {
    kafka::wait_for_records(topic, n, within)
}

fn path_key(key: &str) -> String {
    key.replace('%', "%25").replace('"', "%22").replace('{', "%7B").replace('}', "%7D").replace(':', "%3A").replace(' ', "%20")
}

/// `GET path` until it is not 503 (busy: a commit, a restore).
fn get_settled(addr: &str, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, path);
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_ready(p: &Processor, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while http_get(addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/state/{table}/{key}` (or `/state/{key}` when `table` is None) answers
/// the row and clock of the replayed output, for a sample of keys.
fn assert_state_matches(addr: &str, table: Option<&str>, replay: &[Value], sample: usize) {
    let last = view(replay);
    let live: Vec<_> = last.iter().filter(|(_, (p, _))| !p.is_null()).take(sample).collect();
    assert!(!live.is_empty(), "a live key to ask about");
    for (key, (payload, headers)) in live {
        let path = match table {
            Some(t) => format!("/state/{t}/{}", path_key(key)),
            None => format!("/state/{}", path_key(key)),
        };
        let (status, body) = get_settled(addr, &path);
        assert_eq!(status, 200, "GET {path}: {body}");
        let st: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        let row: Value = serde_json::from_str(payload.as_str().unwrap()).unwrap();
        assert_eq!(st["row"], row, "GET {path}");
        let vv = headers.chunks(2).find(|kv| kv[0] == "tributary.vv").map(|kv| kv[1].clone()).unwrap();
        assert_eq!(st["vv"], serde_json::from_str::<Value>(vv.as_str().unwrap()).unwrap(), "GET {path}");
    }
}

fn metadata_client() -> BaseConsumer {
    ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().expect("metadata client")
}

/// (low, high) watermarks of every partition of `topic`; empty when it does not exist.
fn watermarks(topic: &str) -> Vec<(i64, i64)> {
    let client = metadata_client();
    let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len());
    (0..partitions as i32)
        .map(|p| {
            // A partition the processor has just created may not have its
            // leader yet (NotLeaderForPartition): ask again for a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match client.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                    Ok(w) => break w,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("watermarks of {topic} [{p}]: {e}; asking again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("watermarks of {topic} [{p}]: {e}"),
                }
            }
        })
        .collect()
}

/// A topic's configuration value as the broker describes it.
fn topic_config(topic: &str, name: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt.block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())).unwrap();
    let resource = res.into_iter().next()?.ok()?;
    resource.get(name).and_then(|e| e.value.clone())
}

fn repartition_topic(group: &str, table: &str, source: &str) -> String {
    format!("{group}-{table}-{source}-repartition")
}

/// Waits until every consumed record of the repartition topic is deleted
/// (up to the last commit marker on every partition), with no further
/// traffic: the purge runs on a timer, not only at a later commit.
fn wait_for_deleted_records(topic: &str, within: Duration) -> Vec<(i64, i64)> {
    let deadline = Instant::now() + within;
    loop {
        let w = watermarks(topic);
        // The last transaction's commit marker stays above the committed offset.
        let purged = !w.is_empty() && w.iter().all(|(lo, hi)| hi - lo <= 1) && w.iter().map(|(lo, _)| lo).sum::<i64>() > 0;
        if purged || Instant::now() > deadline {
            return w;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Three tables discovered by `[tables_pattern]`, a denied one left alone,
/// then a fourth table's topics created while the processor runs: every
/// table's output equals replay of its own topics; `/state/{table}/{key}`
/// and the metrics name the table.
#[test]
fn pattern_tables_and_one_discovered_while_running_match_replay() {
    let w = World::new("tables-pattern");
    let mut tables: Vec<Table> = ["customers", "orders", "invoices"].iter().map(|t| w.pattern_table(t)).collect();
    let denied = w.pattern_table("audit_log");
    let mut lives: Vec<HashMap<(usize, u32), Value>> = vec![HashMap::new(); 4];
    for (i, t) in tables.iter().chain([&denied]).enumerate() {
        produce(&history(&w, t, 20 + 5 * i as u32, 0..4, &[], &mut lives[i.min(3)]));
    }
    let g = &w.group;
    let pattern = format!(
        "\n[tables_pattern]\nsources = \"{g}.{{region}}.public.{{table}}\"\nregions = [\"eu\", \"us\", \"ap\"]\noutput = \"{g}.{{table}}.merged\"\ndeny = [\"audit_log\"]\ndiscovery_interval = \"2s\"\nmin_regions = 3\n"
    );
    let p = Processor::start(&w.config("a", &pattern), &w.log("a"));
    let addr = admin_addr(&p);
    for t in &tables {
        wait_for_view(g, t, Duration::from_secs(120));
    }

    // A table created while running: found by the periodic metadata check
    // (min_regions = 3: not while only some of its region topics exist, as
    // a region's topic created later joins its table only at a restart).
    let payments = w.pattern_table("payments");
    let mut live = HashMap::new();
    produce(&history(&w, &payments, 25, 0..4, &[], &mut live));
    let (_, replay) = wait_for_view(g, &payments, Duration::from_secs(120));
    // More history for the first tables after discovery changed the subscription.
    produce(&history(&w, &tables[0], 20, 4..6, &[], &mut lives[0]));
    tables.push(payments);
    for t in &tables {
        wait_for_view(g, t, Duration::from_secs(90));
    }

    wait_ready(&p, &addr);
    assert_state_matches(&addr, Some("payments"), &replay, 5);
    assert_state_matches(&addr, Some("customers"), &tables[0].replay(g), 5);
    let (status, body) = get_settled(&addr, &format!("/state/orders/{}", path_key(r#"{"id":999999}"#)));
    assert_eq!(status, 404, "{body}");
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for t in &tables {
        let label = format!("table=\"{}\"", t.name);
        assert!(
            metric(&metrics, "tributary_records_emitted_total", &[&label]).is_some_and(|v| v > 0.0),
            "no tributary_records_emitted_total{{{label}}} > 0:\n{metrics}"
        );
    }
    assert!(!metrics.contains("table=\"audit_log\""), "the denied table is not merged:\n{metrics}");
    assert!(p.stop().success());
    assert!(!topic_exists(&denied.output), "the denied table got an output topic");
    assert!(read_topic(&denied.output, true).is_empty());
}

/// One source with 2 partitions next to two with 3 (explicit `[[tables]]`,
/// repartition "auto"): it is re-keyed through
/// `<group>-<table>-<source>-repartition` (3 partitions, deleted after
/// commits), the others take no detour, and the output equals replay.
#[test]
fn source_with_other_partition_count_is_repartitioned_and_matches_replay() {
    let w = World::new("tables-2of3");
    let table = w.table("customers", &[("eu", 3, false), ("us", 3, false), ("erp", 2, false)]);
    let mut live = HashMap::new();
    let records = history(&w, &table, 40, 0..5, &[], &mut live);
    produce(&records);
    let p = Processor::start(&w.config("a", &table.toml()), &w.log("a"));
    let addr = admin_addr(&p);
    wait_for_count(&table.output, expected_outputs(&records), Duration::from_secs(120));
    let (output, _) = wait_for_view(&w.group, &table, Duration::from_secs(30));
    assert_exactly_once(&output, expected_outputs(&records));
    assert_partitioned_by_key(&table, &output);

    let topic = repartition_topic(&w.group, "customers", "erp");
    assert!(topic_exists(&topic), "{topic} exists");
    // Consumed records are deleted at a commit at least a purge interval
    // (1 s here) after the previous purge: more events, a while later.
    std::thread::sleep(Duration::from_millis(1500));
    let more = history(&w, &table, 40, 5..6, &[], &mut live);
    produce(&more);
    wait_for_count(&table.output, expected_outputs(&records) + expected_outputs(&more), Duration::from_secs(60));
    let marks = wait_for_deleted_records(&topic, Duration::from_secs(30));
    assert_eq!(marks.len(), PARTITIONS as usize, "{topic}: the table's partition count");
    assert!(
        marks.iter().all(|(lo, hi)| hi - lo <= 1) && marks.iter().map(|(lo, _)| lo).sum::<i64>() > 0,
        "{topic}: every consumed record is deleted once the processor is idle: {marks:?}"
    );
    assert_eq!(topic_config(&topic, "cleanup.policy").as_deref(), Some("delete"));
    for s in ["eu", "us"] {
        assert!(!topic_exists(&repartition_topic(&w.group, "customers", s)), "co-partitioned source {s} takes no detour");
    }
    let (output, replay) = wait_for_view(&w.group, &table, Duration::from_secs(30));
    assert_exactly_once(&output, expected_outputs(&records) + expected_outputs(&more));

    wait_ready(&p, &addr);
    let (_, metrics) = http_get(&addr, "/metrics");
    let name = "tributary_repartitioned_sources";
    assert_eq!(metric(&metrics, name, &["table=\"customers\"", "source=\"erp\""]), Some(1.0), "{metrics}");
    for s in ["eu", "us"] {
        let source = format!("source=\"{s}\"");
        assert!(metric(&metrics, name, &["table=\"customers\"", &source]).unwrap_or(0.0) == 0.0, "{s}: {metrics}");
    }
    // One table: /state/{key} still answers, as /state/{table}/{key} does.
    assert_state_matches(&addr, Some("customers"), &replay, 5);
    assert_state_matches(&addr, None, &replay, 5);
    let log = p.log_text();
    assert!(
        log.lines().any(|l| l.contains(" INFO ") && l.contains("repartition") && l.contains("erp")),
        "an INFO line names the repartitioned source:\n{log}"
    );
    assert!(p.stop().success());
}

/// A source keyed in Kafka by its own number, whose canonical key
/// `key_fields = ["id"]` picks from the row (`repartition = "always"`): its
/// records are re-keyed to the table's partitions and the output equals
/// replay.
#[test]
fn source_keyed_by_another_field_is_rekeyed_and_matches_replay() {
    let w = World::new("tables-rekey");
    let table = w.table("customers", &[("eu", 3, false), ("us", 3, false), ("crm", 3, true)]);
    let mut live = HashMap::new();
    let records = history(&w, &table, 40, 0..5, &[], &mut live);
    // The CRM's own keys do place most keys elsewhere than their ids do.
    let moved = (0..40).filter(|k| placed(&table.sources[2], *k).1 != placed(&table.sources[0], *k).1).count();
    assert!(moved > 10, "only {moved} keys placed differently");
    produce(&records);
    let p = Processor::start(&w.config("a", &table.toml()), &w.log("a"));
    let addr = admin_addr(&p);
    wait_for_count(&table.output, expected_outputs(&records), Duration::from_secs(120));
    let (output, _) = wait_for_view(&w.group, &table, Duration::from_secs(30));
    assert_exactly_once(&output, expected_outputs(&records));
    assert_partitioned_by_key(&table, &output);
    assert!(topic_exists(&repartition_topic(&w.group, "customers", "crm")));
    wait_ready(&p, &addr);
    let (_, metrics) = http_get(&addr, "/metrics");
    let labels = ["table=\"customers\"", "source=\"crm\""];
    assert_eq!(metric(&metrics, "tributary_repartitioned_sources", &labels), Some(1.0), "{metrics}");
    assert!(p.stop().success());
}

/// kill -9 while the processor works through a backlog of a repartitioned
/// source, several times, restarting each time: nothing lost, nothing
/// doubled (one output record per event, no key's clock twice), and the
/// output equals replay.
#[test]
fn kill_9_while_repartitioning_loses_and_duplicates_nothing() {
    let w = World::new("tables-kill9");
    let table = w.table("customers", &[("eu", 3, false), ("us", 3, false), ("erp", 2, false)]);
    // A killed member holds its partitions until its session times out: keep that short.
    let session = "\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n";
    let config = w.config("a", &format!("{session}{}", table.toml()));
    let topic = repartition_topic(&w.group, "customers", "erp");
    // The erp backlog of each cycle (keys × 6 × burst rounds × 8/11 events)
    // takes the debug binary a few seconds.
    let (cycles, keys, burst) = if long_form() { (10, 200, 8) } else { (4, 120, 8) };
    let mut live = HashMap::new();
    let mut all = Vec::new();
    let mut kills_while_rekeying = 0;
    for i in 0..cycles {
        let rounds = (i * 10)..(i * 10 + 2);
        let mut batch = history(&w, &table, keys, rounds, &[], &mut live);
        // The erp backlog: many more events of the 2-partition source.
        batch.extend(history(&w, &table, keys * 6, (i * 10 + 2)..(i * 10 + 2 + burst), &[2], &mut live));
        produce(&batch);
        all.extend(batch);
        let before: i64 = watermarks(&topic).iter().map(|(_, hi)| hi).sum();
        let p = Processor::start(&config, &w.log("a"));
        // Into the detour: re-keyed records are being written.
        let deadline = Instant::now() + Duration::from_secs(90);
        while watermarks(&topic).iter().map(|(_, hi)| hi).sum::<i64>() <= before + 20 {
            assert!(Instant::now() < deadline, "nothing re-keyed in cycle {i}: {}", p.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(20 + 40 * (i as u64 % 4)));
        p.kill9();
        // Killed before the backlog was through: the committed output is short of it.
        if read_topic(&table.output, true).len() < expected_outputs(&all) {
            kills_while_rekeying += 1;
        }
    }
    eprintln!("{kills_while_rekeying} of {cycles} kills landed before the backlog was through");
    assert!(
        kills_while_rekeying >= cycles / 2,
        "only {kills_while_rekeying} of {cycles} kills landed before the backlog was done"
    );
    // The kills landed inside transactions: their output or re-keyed
    // records reached the broker uncommitted (the last kill's transaction
    // still open, earlier ones aborted by the next start). Counted before the
    // final run, which purges the repartition topic below what it consumed,
    // aborted records with it. (Which of the two topics holds them depends
    // on what the consumer had fetched when the kill came.)
    let uncommitted = |t: &str| read_topic(t, false).len().saturating_sub(read_topic(t, true).len());
    let (output_left, rekeyed_left) = (uncommitted(&table.output), uncommitted(&topic));
    eprintln!("uncommitted records left by the kills: {output_left} output, {rekeyed_left} re-keyed");
    assert!(output_left + rekeyed_left > 0, "the kills left no uncommitted records");
    let expected = expected_outputs(&all);
    let p = Processor::start(&config, &w.log("a"));
    wait_for_count(&table.output, expected, Duration::from_secs(180));
    let (output, _) = wait_for_view(&w.group, &table, Duration::from_secs(30));
    assert!(p.stop().success());
    assert_exactly_once(&output, expected);
    assert_partitioned_by_key(&table, &output);
}
