//! Throughput of the data path, in events per second.
//!
//! * `merge_only`: [`MergeEngine::apply`] on pre-built [`ChangeEvent`]s, plus
//!   [`MergeEngine::resolve`] for every `Changed` outcome (what the processor
//!   must do per event to know the merged row). No decoding, no encoding.
//! * `decode_merge_encode`: [`Pipeline::process`] on pre-built Debezium JSON
//!   records (normalize → apply → resolve → encode), state in a [`MemoryStore`].
//!
//! Workload (both groups): 3 sources (`eu`, `us`, `ap`), `TRIBUTARY_BENCH_KEYS`
//! keys (default 100 000), rows of about 200 bytes of JSON, `lww`, derived
//! clocks (Kafka offset + 1). Every source writes every key once per round;
//! the records of the three topics are interleaved in polls of 500 records, as
//! a consumer with `max.poll.records = 500` would see them. The store is
//! populated with one full round before timing, so every timed event finds its
//! key with three concurrent versions (one per source), supersedes its own
//! source's previous version and stays concurrent with the other two: the
//! steady state of a three-region active-active table.
//!
//! Each benchmark iteration is one event; the state persists across
//! iterations and the per-source offsets (hence the clocks) keep increasing,
//! so no timed event is stale or a duplicate.
//!
//! Run: `cargo bench -j2 --bench merge`; `TRIBUTARY_BENCH_KEYS=10000 cargo bench …`
//! for a smaller state.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};

use tributary::config::Config;
use tributary::merge::{Applied, ChangeEvent, KeyState, MergeEngine, MergeSettings, Op, Policy, Row, VersionVector};
use tributary::normalize::InputRecord;
use tributary::pipeline::{MemoryStore, Pipeline, Step};

/// The allocator the `tributary` binary runs with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SOURCES: [&str; 3] = ["eu", "us", "ap"];
const TOPICS: [&str; 3] = ["eu.public.customers", "us.public.customers", "ap.public.customers"];
/// Records per topic per poll.
const POLL: usize = 500;
/// Commit-time base (2024-05-01T12:00:00Z) and spacing between a source's commits.
const T0: i64 = 1_714_564_800_000;
const TICK_MS: i64 = 10;
/// Events moved into one timed batch of `merge_only` (built untimed). Small
/// enough that the freshly built events are still in cache, as a decoded
/// event is when the processor applies it.
const BATCH: u64 = 1024;

const CITIES: [(&str, &str); 8] = [
    ("Lisbon", "PT"),
    ("Frankfurt", "DE"),
    ("Dublin", "IE"),
    ("New York", "US"),
    ("São Paulo", "BR"),
    ("Toronto", "CA"),
    ("Singapore", "SG"),
    ("Sydney", "AU"),
];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

fn keys() -> usize {
    match std::env::var("TRIBUTARY_BENCH_KEYS") {
        Ok(v) => v.trim().parse().ok().filter(|n| *n > 0).unwrap_or_else(|| panic!("TRIBUTARY_BENCH_KEYS={v:?}: expected a positive integer")),
        Err(_) => 100_000,
    }
}

/// The order the records of one round are consumed in: per poll, 500 records
/// of each topic in turn. Yields (source index, position in that source's round).
fn round_order(keys: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..keys).step_by(POLL).flat_map(move |start| {
        let end = (start + POLL).min(keys);
        (0..SOURCES.len()).flat_map(move |s| (start..end).map(move |k| (s, k)))
    })
}

/// Commit time of source `s` writing key `k` in round `round`. A small
/// per-key, per-source skew (distinct among the sources of a key) makes the
/// `lww` winner vary from key to key and never ties on time.
fn commit_ts(round: u64, keys: usize, s: usize, k: usize) -> i64 {
    let skew = ((k * 7 + s * 3) % 11) as i64 - 5;
    T0 + (round as i64 * keys as i64 + k as i64) * TICK_MS + skew
}

/// Per-source sequence (Kafka offset + 1) of source `s`'s write of key `k` in `round`.
fn sequence(round: u64, keys: usize, k: usize) -> u64 {
    round * keys as u64 + k as u64 + 1
}

/// A customer row of about 200 bytes of compact JSON.
fn row(k: usize, s: usize, round: u64, ts: i64) -> Row {
    let (city, country) = CITIES[(k * 31 + s) % CITIES.len()];
    let balance = ((k * 7919 + round as usize * 104_729 + s * 13) % 10_000_000) as f64 / 100.0;
    let v = json!({
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
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// `2024-05-01T12:34:56.789Z`-style text (UTC, days counted from T0's date).
fn iso8601(ts: i64) -> String {
    let ms = ts - T0 + 12 * 3_600_000;
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (h, m, sec, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("2024-05-{:02}T{h:02}:{m:02}:{sec:02}.{milli:03}Z", 1 + days % 28)
}

fn serialized_len(row: &Row) -> usize {
    serde_json::to_string(row).unwrap().len()
}

// ---------------------------------------------------------------- merge_only

/// Produces the events of successive rounds, in consumption order, by cloning
/// a pre-built round and setting its clock and commit time (untimed).
struct EventSource {
    keys: usize,
    template: Vec<ChangeEvent>,
    order: Vec<(usize, usize)>,
    next: usize,
    round: u64,
}

impl EventSource {
    fn new(keys: usize) -> Self {
        let order: Vec<(usize, usize)> = round_order(keys).collect();
        let template = order
            .iter()
            .map(|&(s, k)| {
                let ts = commit_ts(0, keys, s, k);
                ChangeEvent {
                    source: SOURCES[s].to_string(),
                    key: format!("{{\"id\":{k}}}"),
                    op: Op::Upsert,
                    row: Some(row(k, s, 0, ts)),
                    before: None,
                    full_image: true,
                    ts,
                    vv: VersionVector::single(SOURCES[s], sequence(0, keys, k)),
                }
            })
            .collect();
        Self { keys, template, order, next: 0, round: 0 }
    }

    fn next_event(&mut self) -> ChangeEvent {
        let (s, k) = self.order[self.next];
        let mut e = self.template[self.next].clone();
        e.ts = commit_ts(self.round, self.keys, s, k);
        e.vv = VersionVector::single(SOURCES[s], sequence(self.round, self.keys, k));
        self.next += 1;
        if self.next == self.order.len() {
            self.next = 0;
            self.round += 1;
        }
        e
    }
}

/// What the processor does per event, over a `MemoryStore`-like map: find
/// (or create) the key's state, apply, and resolve when the state changed.
#[inline]
fn merge_one(engine: &MergeEngine, states: &mut HashMap<String, KeyState>, mut event: ChangeEvent) -> Applied {
    // `apply` does not read the key: move it out instead of copying it.
    let key = std::mem::take(&mut event.key);
    let state = states.entry(key).or_default();
    let applied = engine.apply(state, event);
    if applied == Applied::Changed {
        black_box(engine.resolve(state));
    }
    applied
}

/// The `merge_only` fixture: an engine, a populated state map and the event source.
struct MergeFixture {
    engine: MergeEngine,
    states: HashMap<String, KeyState>,
    source: EventSource,
    batch: Vec<ChangeEvent>,
}

impl MergeFixture {
    fn new(keys: usize) -> Self {
        let engine = MergeEngine::new(MergeSettings { policy: Policy::Lww, ..MergeSettings::default() });
        let mut source = EventSource::new(keys);
        let per_round = source.order.len();
        eprintln!(
            "merge_only: {keys} keys x {} sources, row {} bytes of JSON",
            SOURCES.len(),
            serialized_len(source.template[0].row.as_ref().unwrap())
        );
        // Round 0 populates the store; round 1 is checked to be all `Changed`
        // with three versions per key (the steady state the timed rounds see).
        let mut states = HashMap::new();
        for _ in 0..per_round {
            merge_one(&engine, &mut states, source.next_event());
        }
        let changed =
            (0..per_round).filter(|_| merge_one(&engine, &mut states, source.next_event()) == Applied::Changed).count();
        assert_eq!(changed, per_round, "every steady-state event must change its key");
        assert_eq!(states.len(), keys);
        assert!(states.values().all(|s| s.versions.len() == SOURCES.len()));
        Self { engine, states, source, batch: Vec::with_capacity(BATCH as usize) }
    }

    /// Applies `iters` events; returns the time spent in the merge only.
    /// Events are built in batches outside the timed section and moved into
    /// the timed loop from a reused buffer (`iter_batched` would free a fresh
    /// multi-megabyte input vector inside the timed section, where glibc then
    /// consolidates its fastbins: a measurement artifact of ~20 %).
    fn run(&mut self, iters: u64) -> Duration {
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(BATCH);
            self.batch.extend((0..n).map(|_| self.source.next_event()));
            let start = Instant::now();
            for event in self.batch.drain(..) {
                black_box(merge_one(&self.engine, &mut self.states, event));
            }
            timed += start.elapsed();
            left -= n;
        }
        timed
    }
}

fn merge_only(c: &mut Criterion) {
    // Built on first use, so that a filtered run does not pay for it.
    let mut fixture: Option<MergeFixture> = None;
    let mut group = c.benchmark_group("merge_only");
    group.throughput(Throughput::Elements(1));
    group.bench_function("apply+resolve/lww/3src", |b| {
        let f = fixture.get_or_insert_with(|| MergeFixture::new(keys()));
        b.iter_custom(|iters| f.run(iters))
    });
    group.finish();
}

// ------------------------------------------------------- decode_merge_encode

/// One pre-built Kafka record of a round.
struct Record {
    source: usize,
    /// Position in the source's round: offset = round * keys + position.
    position: usize,
    timestamp: i64,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// A Debezium update envelope as the JSON converter writes it with
/// `schemas.enable=false` (no `schema`/`payload` wrapper).
fn debezium_update(k: usize, s: usize, keys: usize) -> (i64, Vec<u8>) {
    let ts = commit_ts(1, keys, s, k);
    let before_ts = commit_ts(0, keys, s, k);
    let v = json!({
        "before": row(k, s, 0, before_ts),
        "after": row(k, s, 1, ts),
        "source": {
            "version": "2.5.4.Final",
            "connector": "postgresql",
            "name": SOURCES[s],
            "ts_ms": ts,
            "snapshot": "false",
            "db": "shop",
            "schema": "public",
            "table": "customers",
            "txId": 700_000 + k,
            "lsn": 24_023_128_u64 + 4096 * k as u64,
        },
        "op": "u",
        "ts_ms": ts + 37,
        "transaction": null,
    });
    (ts + 37, serde_json::to_vec(&v).unwrap())
}

const PIPELINE_CONFIG: &str = r#"
[output]
topic = "customers.merged"

[merge]
policy = "lww"

[[sources]]
name = "eu"
topic = "eu.public.customers"

[[sources]]
name = "us"
topic = "us.public.customers"

[[sources]]
name = "ap"
topic = "ap.public.customers"
"#;

/// The `decode_merge_encode` fixture: a pipeline, one round of records and a
/// populated store. The same bytes are replayed every round with increasing
/// offsets, so the derived clocks increase and no record is stale.
struct PipelineFixture {
    keys: usize,
    pipeline: Pipeline,
    records: Vec<Record>,
    store: MemoryStore,
    round: u64,
    next: usize,
}

impl PipelineFixture {
    fn new(keys: usize) -> Self {
        let config = Config::parse(PIPELINE_CONFIG, "bench", std::iter::empty()).expect("bench config");
        let pipeline = Pipeline::new(&config);
        let records: Vec<Record> = round_order(keys)
            .map(|(s, k)| {
                let (timestamp, value) = debezium_update(k, s, keys);
                Record { source: s, position: k, timestamp, key: format!("{{\"id\":{k}}}").into_bytes(), value }
            })
            .collect();
        eprintln!(
            "decode_merge_encode: {keys} keys x {} sources, value {} bytes (row {} bytes), {} MB of records",
            SOURCES.len(),
            records[0].value.len(),
            serialized_len(&row(0, 0, 1, T0)),
            records.iter().map(|r| r.value.len() + r.key.len()).sum::<usize>() >> 20
        );
        let mut f = Self { keys, pipeline, records, store: MemoryStore::default(), round: 0, next: 0 };
        // Round 0 populates the store; round 1 is checked: every record emits,
        // with three siblings (the steady state the timed rounds see).
        let n = f.records.len();
        for _ in 0..n {
            f.step();
        }
        let emitted = (0..n).filter(|_| matches!(f.step(), Step::Emitted { siblings: 3, .. })).count();
        assert_eq!(emitted, n, "every steady-state record must emit with three siblings");
        assert_eq!(f.store.len(), keys);
        f
    }

    /// Processes the next record.
    #[inline]
    fn step(&mut self) -> Step {
        let r = &self.records[self.next];
        let input = InputRecord {
            topic: TOPICS[r.source],
            partition: 0,
            offset: (self.round * self.keys as u64 + r.position as u64) as i64,
            timestamp: Some(r.timestamp),
            key: Some(&r.key),
            value: Some(&r.value),
        };
        let step = self.pipeline.process(&input, &mut self.store).expect("bench records are valid");
        self.next += 1;
        if self.next == self.records.len() {
            self.next = 0;
            self.round += 1;
        }
        step
    }
}

fn decode_merge_encode(c: &mut Criterion) {
    let mut fixture: Option<PipelineFixture> = None;
    let mut group = c.benchmark_group("decode_merge_encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("process/debezium-json/lww/3src", |b| {
        let f = fixture.get_or_insert_with(|| PipelineFixture::new(keys()));
        // The output record is consumed (and dropped) inside the timed loop.
        b.iter(|| black_box(f.step()))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10))
}

criterion_group! {
    name = benches;
    config = config();
    targets = merge_only, decode_merge_encode
}
criterion_main!(benches);
