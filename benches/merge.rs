//! Throughput of the data path, in events per second.
//!
//! * `merge_only`: [`MergeEngine::apply`] on pre-built [`ChangeEvent`]s, plus
//!   [`MergeEngine::resolve`] for every `Changed` outcome (what the processor
//!   must do per event to know the merged row). No decoding, no encoding.
//!   `apply+resolve/lww/3src` under `lww`; `apply+resolve/field-lww/3src` the
//!   same events under `field-lww`, and `apply+resolve/field-lww+rules/3src`
//!   with mixed column rules (`email` owned by `eu`, `balance` and
//!   `updated_at` by `max`, `tier` by `union`). Every event is a full image,
//!   so under `field-lww` every column is written each time. The events'
//!   rows are what the processor's Debezium decoder gives the engine: their
//!   canonical JSON text under the row-level policies ([`CanonicalRow`]),
//!   maps under `field-lww`.
//!   `apply+resolve/union-3000/3src` and `…/union-3000-full/3src`: one key
//!   whose `union` column holds 3 000 elements, changed by one element per
//!   update, with and without `before` images (see [`UnionFixture`]).
//! * `decode_merge_encode`: [`Pipeline::process`] on pre-built Debezium JSON
//!   records (normalize → apply → resolve → encode), state in a [`MemoryStore`].
//!   `process/debezium-json/lww/3src` under `lww`;
//!   `process/debezium-json/field-lww+rules/3src` under `field-lww` with the
//!   same column rules as above. These records are Debezium updates with a
//!   `before` image in which `balance` and `updated_at` changed, so
//!   `field-lww` writes those two columns per event (what an update that
//!   touches some columns costs, where `merge_only` shows a full image).
//!
//! Workload (both groups): 3 sources (`eu`, `us`, `ap`), `TRIBUTARY_BENCH_KEYS`
//! keys (default 100 000), rows of about 200 bytes of JSON, `lww` unless named, derived
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
//! `decode_merge_encode` also runs the same logical events as Debezium Avro
//! (Confluent framing, schemas in a registry) in the same process:
//!
//! * `process/debezium-avro/lww/3src`: Avro key and value in, JSON out.
//! * `process/debezium-avro→avro/lww/3src`: Avro in, `output.format = "avro"`
//!   out (the output schema is derived and registered during the untimed set-up).
//!
//! There is no Confluent Schema Registry here: the Avro benches start the
//! test stand-in (`python3 tests/registry/standin.py`), register the sources'
//! schemas with [`Registry::register`], and stop it at the end. Schemas are
//! cached after the first lookup; the bench checks, through the stand-in's
//! request log, that no registry request happens while timing.
//!
//! Instruction counts (repeatable where wall clock is noisy):
//! `TRIBUTARY_BENCH_KEYS=2000 valgrind --tool=callgrind --dump-instr=no
//! --toggle-collect=merge::merge_one target/release/deps/merge-HASH --bench
//! --profile-time 2 'apply\+resolve/lww/'`, then the inclusive cost and call
//! count of `merge_one` as called from `MergeFixture::run`
//! (`callgrind_annotate --inclusive=yes --tree=caller`; the set-up's two
//! rounds call it too). With `--profile-time 20` the timed calls outnumber
//! the set-up's five to one, so the per-function profile is the steady state's.
//!
//! Run: `cargo bench -j2 --bench merge`; `TRIBUTARY_BENCH_KEYS=10000 cargo bench …`
//! for a smaller state; `cargo bench -j2 --bench merge -- process/` for the
//! JSON/Avro comparison only.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema as AvroSchema;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};

use tributary::avro::output::SchemaCatalog;
use tributary::avro::registry::{frame, Registry};
use tributary::avro::value::Shape;
use tributary::avro::AvroContext;
use tributary::config::Config;
use tributary::merge::{
    Applied, CanonicalRow, ChangeEvent, ColumnRule, KeyState, MergeEngine, MergeSettings, Op, Policy, Row, VersionVector,
};
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
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("TRIBUTARY_BENCH_KEYS={v:?}: expected a positive integer")),
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
    /// `text_rows`: rows as their canonical JSON text, as the processor's
    /// decoder gives them under the row-level policies
    /// ([`CanonicalRow`]); else as maps, as under `field-lww`.
    fn new(keys: usize, text_rows: bool) -> Self {
        let order: Vec<(usize, usize)> = round_order(keys).collect();
        let template = order
            .iter()
            .map(|&(s, k)| {
                let ts = commit_ts(0, keys, s, k);
                ChangeEvent {
                    source: SOURCES[s].to_string(),
                    key: format!("{{\"id\":{k}}}"),
                    op: Op::Upsert,
                    row: Some(match text_rows {
                        true => {
                            let text = serde_json::to_string(&row(k, s, 0, ts)).unwrap();
                            serde_json::from_str::<CanonicalRow>(&text).unwrap().0
                        }
                        false => row(k, s, 0, ts).into(),
                    }),
                    before: None,
                    full_image: true,
                    changed: None,
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
/// Never inlined, so that `valgrind --tool=callgrind
/// --toggle-collect=merge::merge_one` counts exactly the timed work.
#[inline(never)]
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

/// `field-lww` with a mix of column rules over the bench rows' columns.
fn mixed_rules() -> MergeSettings {
    let columns = [
        ("email", ColumnRule::Owner { source: "eu".into() }),
        ("balance", ColumnRule::Max),
        ("updated_at", ColumnRule::Max),
        ("tier", ColumnRule::Union),
    ];
    MergeSettings {
        policy: Policy::FieldLww,
        columns: columns.into_iter().map(|(c, r)| (c.to_string(), r)).collect(),
        ..MergeSettings::default()
    }
}

impl MergeFixture {
    fn new(keys: usize, settings: MergeSettings) -> Self {
        let policy = settings.policy.as_str();
        // The processor's decoder gives the row-level policies rows as text.
        let text_rows = settings.policy != Policy::FieldLww;
        let engine = MergeEngine::new(settings);
        let mut source = EventSource::new(keys, text_rows);
        let per_round = source.order.len();
        eprintln!(
            "merge_only ({policy}): {keys} keys x {} sources, row {} bytes of JSON",
            SOURCES.len(),
            serialized_len(source.template[0].row.as_ref().unwrap())
        );
        // Round 0 populates the store; round 1 is checked to be all `Changed`
        // with three versions per key (the steady state the timed rounds see).
        let mut states = HashMap::new();
        for _ in 0..per_round {
            merge_one(&engine, &mut states, source.next_event());
        }
        let changed = (0..per_round).filter(|_| merge_one(&engine, &mut states, source.next_event()) == Applied::Changed).count();
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
        let f = fixture
            .get_or_insert_with(|| MergeFixture::new(keys(), MergeSettings { policy: Policy::Lww, ..MergeSettings::default() }));
        b.iter_custom(|iters| f.run(iters))
    });
    // Dropped before the next fixture is built: one state map in memory at a time.
    fixture = None;
    group.bench_function("apply+resolve/field-lww/3src", |b| {
        let f = fixture.get_or_insert_with(|| {
            MergeFixture::new(keys(), MergeSettings { policy: Policy::FieldLww, ..MergeSettings::default() })
        });
        b.iter_custom(|iters| f.run(iters))
    });
    fixture = None;
    group.bench_function("apply+resolve/field-lww+rules/3src", |b| {
        let f = fixture.get_or_insert_with(|| MergeFixture::new(keys(), mixed_rules()));
        b.iter_custom(|iters| f.run(iters))
    });
    drop(fixture);
    let mut union = None;
    group.bench_function("apply+resolve/union-3000/3src", |b| {
        let f = union.get_or_insert_with(UnionFixture::new);
        b.iter_custom(|iters| f.run(iters, false))
    });
    group.bench_function("apply+resolve/union-3000-full/3src", |b| {
        let f = union.get_or_insert_with(UnionFixture::new);
        b.iter_custom(|iters| f.run(iters, true))
    });
    group.finish();
}

/// `apply+resolve/union-3000/3src`: one key whose `tags` column (rule
/// `union`) holds 3 000 elements; the three sources take turns, each having
/// seen everything so far, and each update drops the lowest tag and adds a
/// new one (a large set changing by one element per update).
/// `apply+resolve/union-3000-full/3src`: the same events without their
/// `before` images (full images, as a snapshot or a source without
/// `before` sends them): every element is written again.
struct UnionFixture {
    engine: MergeEngine,
    state: KeyState,
    clock: VersionVector,
    step: u32,
}

const UNION_TAGS: u32 = 3000;

impl UnionFixture {
    fn new() -> Self {
        let settings = MergeSettings {
            policy: Policy::FieldLww,
            columns: [("tags".to_string(), ColumnRule::Union)].into_iter().collect(),
            ..MergeSettings::default()
        };
        let mut f =
            UnionFixture { engine: MergeEngine::new(settings), state: KeyState::default(), clock: VersionVector::new(), step: 0 };
        f.clock.set("eu", 1);
        let first = f.event("eu", None, Self::row(0));
        assert_eq!(f.engine.apply(&mut f.state, first), Applied::Changed);
        eprintln!("merge_only (union): 1 key, {UNION_TAGS} tags, one moved per update");
        f
    }

    fn row(first: u32) -> Row {
        let tags: Vec<Value> = (first..first + UNION_TAGS).map(|i| json!(format!("tag-{i:07}"))).collect();
        json!({"id": 1, "name": "n", "tags": tags}).as_object().unwrap().clone()
    }

    fn event(&self, source: &str, before: Option<Row>, after: Row) -> ChangeEvent {
        ChangeEvent {
            source: source.into(),
            key: r#"{"id":1}"#.into(),
            op: Op::Upsert,
            row: Some(after.into()),
            full_image: before.is_none(),
            before,
            changed: None,
            ts: 1 + i64::from(self.step),
            vv: self.clock.clone(),
        }
    }

    fn run(&mut self, iters: u64, full: bool) -> Duration {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            let source = SOURCES[self.step as usize % SOURCES.len()];
            let own = self.clock.get(source) + 1;
            self.clock.set(source, own);
            let before = (!full).then(|| Self::row(self.step));
            let event = self.event(source, before, Self::row(self.step + 1));
            self.step += 1;
            let start = Instant::now();
            let applied = self.engine.apply(&mut self.state, event);
            black_box(self.engine.resolve(&self.state));
            timed += start.elapsed();
            assert_eq!(applied, Applied::Changed);
        }
        timed
    }
}

// ------------------------------------------------------- decode_merge_encode

/// One pre-built Kafka record of a round.
#[derive(Clone)]
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

/// The Debezium JSON records of `order` (source index, key).
fn json_records(keys: usize, order: impl Iterator<Item = (usize, usize)>) -> Vec<Record> {
    order
        .map(|(s, k)| {
            let (timestamp, value) = debezium_update(k, s, keys);
            Record { source: s, position: k, timestamp, key: format!("{{\"id\":{k}}}").into_bytes(), value }
        })
        .collect()
}

const PIPELINE_CONFIG: &str = r#"
[output]
topic = "customers.merged"

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

/// The `[merge]` section of `process/debezium-json/lww/3src`.
const LWW: &str = "[merge]\npolicy = \"lww\"\n";

/// The `[merge]` section of `process/debezium-json/field-lww+rules/3src`:
/// the rules of [`mixed_rules`], as a user writes them.
const MIXED_RULES: &str = r#"
[merge]
policy = "field-lww"
[merge.columns]
email = { rule = "owner", source = "eu" }
balance = { rule = "max" }
updated_at = { rule = "max" }
tier = { rule = "union" }
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
    /// The JSON fixture under `merge` (a `[merge]` section).
    fn new(keys: usize, merge: &str) -> Self {
        let text = format!("{merge}{PIPELINE_CONFIG}");
        let config = Config::parse(&text, "bench", std::iter::empty()).expect("bench config");
        let pipeline = Pipeline::new(&config);
        let records: Vec<Record> = json_records(keys, round_order(keys));
        eprintln!(
            "decode_merge_encode: {keys} keys x {} sources, value {} bytes (row {} bytes), {} MB of records",
            SOURCES.len(),
            records[0].value.len(),
            serialized_len(&row(0, 0, 1, T0)),
            records.iter().map(|r| r.value.len() + r.key.len()).sum::<usize>() >> 20
        );
        Self::populated(keys, pipeline, records)
    }

    /// A fixture over `records` (one round, in consumption order), with the
    /// store populated and checked as described above.
    fn populated(keys: usize, pipeline: Pipeline, records: Vec<Record>) -> Self {
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
            headers: &[],
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

// ------------------------------------------------- decode_merge_encode, Avro

const REGISTRY_STANDIN: &str = "tests/registry/standin.py";
const OUTPUT_TOPIC: &str = "customers.merged";

/// The columns of [`row`] as Debezium's Avro converter declares them for
/// `customers (id int primary key, name text not null, email text, phone
/// text, city text, country text, tier text not null, balance numeric(10,2),
/// updated_at timestamptz not null)`: NOT NULL columns plain, nullable ones
/// `["null", T]`. `balance` is a decimal (bytes, scale 2), which Tributary
/// reads as the exact text `"1234.50"` where the JSON bench has the number
/// `1234.5`; every other column decodes to the same JSON value.
fn value_fields() -> Value {
    let optional = |t: Value| json!(["null", t]);
    let decimal = json!({
        "type": "bytes", "scale": 2, "precision": 10, "connect.version": 1,
        "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal",
    });
    let zoned = json!({"type": "string", "connect.version": 1, "connect.name": "io.debezium.time.ZonedTimestamp"});
    json!([
        {"name": "id", "type": "int"},
        {"name": "name", "type": "string"},
        {"name": "email", "type": optional(json!("string")), "default": null},
        {"name": "phone", "type": optional(json!("string")), "default": null},
        {"name": "city", "type": optional(json!("string")), "default": null},
        {"name": "country", "type": optional(json!("string")), "default": null},
        {"name": "tier", "type": "string"},
        {"name": "balance", "type": optional(decimal), "default": null},
        {"name": "updated_at", "type": zoned},
    ])
}

/// Debezium's PostgreSQL envelope schema for a topic (namespace = topic).
fn envelope_schema(topic: &str) -> Value {
    let optional_long = json!(["null", "long"]);
    let source = json!({
        "type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": [{
                "type": "string", "connect.version": 1,
                "connect.parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
                "connect.default": "false", "connect.name": "io.debezium.data.Enum",
            }, "null"], "default": "false"},
            {"name": "db", "type": "string"},
            {"name": "sequence", "type": ["null", "string"], "default": null},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": optional_long, "default": null},
            {"name": "lsn", "type": optional_long, "default": null},
            {"name": "xmin", "type": optional_long, "default": null},
        ],
        "connect.name": "io.debezium.connector.postgresql.Source",
    });
    let block = json!({
        "type": "record", "name": "block", "namespace": "event",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"},
        ],
        "connect.version": 1, "connect.name": "event.block",
    });
    let value = json!({"type": "record", "name": "Value", "fields": value_fields(), "connect.name": format!("{topic}.Value")});
    json!({
        "type": "record", "name": "Envelope", "namespace": topic,
        "fields": [
            {"name": "before", "type": ["null", value], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "source", "type": source},
            {"name": "transaction", "type": ["null", block], "default": null},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": optional_long, "default": null},
        ],
        "connect.version": 2, "connect.name": format!("{topic}.Envelope"),
    })
}

/// Debezium's key schema for a topic.
fn key_schema(topic: &str) -> Value {
    json!({
        "type": "record", "name": "Key", "namespace": topic,
        "fields": [{"name": "id", "type": "int"}], "connect.name": format!("{topic}.Key"),
    })
}

/// Minimal big-endian two's complement, as Avro decimals are written.
fn decimal_bytes(unscaled: i64) -> Vec<u8> {
    let b = unscaled.to_be_bytes();
    let mut start = 0;
    while start < 7 && ((b[start] == 0 && b[start + 1] < 0x80) || (b[start] == 0xff && b[start + 1] >= 0x80)) {
        start += 1;
    }
    b[start..].to_vec()
}

/// The Avro `Value` record of a [`row`], column by column.
fn avro_row(row: &Row) -> AvroValue {
    let text = |name: &str| AvroValue::String(row[name].as_str().expect("a text column").to_string());
    let some = |v: AvroValue| AvroValue::Union(1, Box::new(v));
    let balance = (row["balance"].as_f64().expect("balance") * 100.0).round() as i64;
    AvroValue::Record(vec![
        ("id".into(), AvroValue::Int(row["id"].as_i64().expect("id") as i32)),
        ("name".into(), text("name")),
        ("email".into(), some(text("email"))),
        ("phone".into(), some(text("phone"))),
        ("city".into(), some(text("city"))),
        ("country".into(), some(text("country"))),
        ("tier".into(), text("tier")),
        ("balance".into(), some(AvroValue::Decimal(apache_avro::Decimal::from(decimal_bytes(balance))))),
        ("updated_at".into(), text("updated_at")),
    ])
}

/// [`debezium_update`] as a Debezium Avro envelope.
fn debezium_avro_update(k: usize, s: usize, keys: usize) -> (i64, AvroValue) {
    let ts = commit_ts(1, keys, s, k);
    let before_ts = commit_ts(0, keys, s, k);
    let string = |v: &str| AvroValue::String(v.to_string());
    let null = || AvroValue::Union(0, Box::new(AvroValue::Null));
    let long = |n: i64| AvroValue::Union(1, Box::new(AvroValue::Long(n)));
    let source = AvroValue::Record(vec![
        ("version".into(), string("2.5.4.Final")),
        ("connector".into(), string("postgresql")),
        ("name".into(), string(SOURCES[s])),
        ("ts_ms".into(), AvroValue::Long(ts)),
        ("snapshot".into(), AvroValue::Union(0, Box::new(string("false")))),
        ("db".into(), string("shop")),
        ("sequence".into(), null()),
        ("schema".into(), string("public")),
        ("table".into(), string("customers")),
        ("txId".into(), long(700_000 + k as i64)),
        ("lsn".into(), long(24_023_128 + 4096 * k as i64)),
        ("xmin".into(), null()),
    ]);
    let envelope = AvroValue::Record(vec![
        ("before".into(), AvroValue::Union(1, Box::new(avro_row(&row(k, s, 0, before_ts))))),
        ("after".into(), AvroValue::Union(1, Box::new(avro_row(&row(k, s, 1, ts))))),
        ("source".into(), source),
        ("transaction".into(), null()),
        ("op".into(), string("u")),
        ("ts_ms".into(), long(ts + 37)),
    ]);
    (ts + 37, envelope)
}

/// The registry stand-in, stopped when dropped.
struct StandIn {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

impl StandIn {
    fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(REGISTRY_STANDIN);
        // With --watch-stdin it also exits when this process dies (stdin closes).
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--watch-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let Some(url) = line.trim().strip_prefix("listening on ").map(str::to_string) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{REGISTRY_STANDIN} did not start (first line {line:?})");
        };
        Self { child, url }
    }

    /// How many registry API requests the stand-in has served.
    fn requests(&self) -> usize {
        // The tests' HTTP client crate; no proxy, the stand-in is local.
        let client = reqwest::blocking::Client::builder().no_proxy().build().expect("HTTP client");
        let url = format!("{}/__standin/requests", self.url);
        let answer = client.get(&url).send().and_then(|r| r.error_for_status()).and_then(|r| r.text());
        match answer.as_deref().map(serde_json::from_str::<Value>) {
            Ok(Ok(Value::Array(requests))) => requests.len(),
            _ => panic!("GET {url}: unexpected answer {answer:?}"),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the Avro benches share: the stand-in with the sources' schemas
/// registered, a client, and one round of Avro records (the same events, in
/// the same order, as the JSON bench's round).
struct AvroEnv {
    registry: Arc<Registry>,
    records: Vec<Record>,
    // Declared last, so dropped (stopped) after the client.
    standin: StandIn,
}

impl AvroEnv {
    fn new(keys: usize) -> Self {
        let standin = StandIn::start();
        let config = Config::parse(&avro_config(&standin.url, "json"), "bench", std::iter::empty()).expect("bench config");
        let registry = Registry::new(config.schema_registry.as_ref().expect("schema_registry")).expect("registry client");
        let mut writers = Vec::new();
        for topic in TOPICS {
            let value = envelope_schema(topic).to_string();
            let key = key_schema(topic).to_string();
            let value_id = registry.register(&format!("{topic}-value"), &value).expect("register the value schema");
            let key_id = registry.register(&format!("{topic}-key"), &key).expect("register the key schema");
            let value = AvroSchema::parse_str(&value).expect("envelope schema");
            let key = AvroSchema::parse_str(&key).expect("key schema");
            writers.push((value_id, value, key_id, key));
        }
        let encoders: Vec<_> = writers
            .iter()
            .map(|(vid, v, kid, k)| {
                let v = GenericDatumWriter::builder(v).build().expect("value writer");
                let k = GenericDatumWriter::builder(k).build().expect("key writer");
                (*vid, v, *kid, k)
            })
            .collect();
        let records: Vec<Record> = round_order(keys)
            .map(|(s, k)| {
                let (vid, value_writer, kid, key_writer) = &encoders[s];
                let (timestamp, envelope) = debezium_avro_update(k, s, keys);
                let value = frame(*vid, &value_writer.write_value_to_vec(envelope).expect("encode the envelope"));
                let key_value = AvroValue::Record(vec![("id".into(), AvroValue::Int(k as i32))]);
                let key = frame(*kid, &key_writer.write_value_to_vec(key_value).expect("encode the key"));
                Record { source: s, position: k, timestamp, key, value }
            })
            .collect();
        drop(encoders);
        eprintln!(
            "decode_merge_encode (Avro): {keys} keys x {} sources, value {} bytes, key {} bytes, {} MB of records; registry stand-in at {}",
            SOURCES.len(),
            records[0].value.len(),
            records[0].key.len(),
            records.iter().map(|r| r.value.len() + r.key.len()).sum::<usize>() >> 20,
            standin.url
        );
        let env = Self { registry, records, standin };
        env.check_against_json(keys);
        env
    }

    /// A pipeline reading the Avro sources, writing `output` ("json" or "avro").
    fn pipeline(&self, output: &str) -> Pipeline {
        let config = Config::parse(&avro_config(&self.standin.url, output), "bench", std::iter::empty()).expect("bench config");
        let ctx = AvroContext { registry: self.registry.clone(), catalog: Arc::new(SchemaCatalog::default()) };
        Pipeline::with_avro(&config, Some(&ctx))
    }

    /// Fairness check (untimed): the first poll's records of two rounds,
    /// through the JSON pipeline and through both Avro pipelines, give the
    /// same output records (keys, headers, rows; `balance` compared as the
    /// exact decimal).
    fn check_against_json(&self, keys: usize) {
        let n = SOURCES.len() * keys.min(POLL);
        let order: Vec<(usize, usize)> = round_order(keys).take(n).collect();
        let json = json_records(keys, order.iter().copied());
        let config = Config::parse(&format!("{LWW}{PIPELINE_CONFIG}"), "bench", std::iter::empty()).expect("bench config");
        let json_pipeline = Pipeline::new(&config);
        let (avro_json, avro_avro) = (self.pipeline("json"), self.pipeline("avro"));
        let mut stores: [MemoryStore; 3] = Default::default();
        for round in 0..2 {
            for (j, a) in json.iter().zip(&self.records[..n]) {
                let steps = [
                    feed(&json_pipeline, &mut stores[0], j, round, keys),
                    feed(&avro_json, &mut stores[1], a, round, keys),
                    feed(&avro_avro, &mut stores[2], a, round, keys),
                ];
                let rows = steps.each_ref().map(|step| match step {
                    Step::Emitted { record, .. } => (record.key.clone(), record.headers.clone(), record.timestamp),
                    other => panic!("expected an output record, got {other:?}"),
                });
                assert!(rows[0] == rows[1] && rows[1] == rows[2], "keys, headers and timestamps differ: {rows:?}");
                let value = |step: &Step| match step {
                    Step::Emitted { record, .. } => record.value.clone().expect("a row"),
                    _ => unreachable!(),
                };
                let mut from_json: Value = serde_json::from_slice(&value(&steps[0])).expect("JSON output");
                let balance = from_json["balance"].as_f64().expect("balance");
                from_json["balance"] = json!(format!("{balance:.2}"));
                let from_avro: Value = serde_json::from_slice(&value(&steps[1])).expect("JSON output");
                assert_eq!(from_avro, from_json, "Avro in, JSON out: not the JSON bench's row");
                let (schema, decoded) = self.registry.decode(&value(&steps[2])).expect("decode the Avro output");
                let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema.parsed).expect("output schema");
                let names = resolved.get_names().clone();
                let from_avro_out = Shape::of(&schema.parsed, &names).to_json(&decoded).expect("output row");
                assert_eq!(from_avro_out, from_json, "Avro in, Avro out: not the JSON bench's row");
            }
        }
    }
}

/// Processes one record of round `round` outside a fixture.
fn feed(pipeline: &Pipeline, store: &mut MemoryStore, r: &Record, round: u64, keys: usize) -> Step {
    let input = InputRecord {
        topic: TOPICS[r.source],
        partition: 0,
        offset: (round * keys as u64 + r.position as u64) as i64,
        timestamp: Some(r.timestamp),
        key: Some(&r.key),
        value: Some(&r.value),
        headers: &[],
    };
    pipeline.process(&input, store).expect("bench records are valid")
}

/// [`PIPELINE_CONFIG`] under `lww` with Avro sources, a registry and an output format.
fn avro_config(registry_url: &str, output_format: &str) -> String {
    let mut text = format!(
        "[schema_registry]\nurl = \"{registry_url}\"\n\n[output]\ntopic = \"{OUTPUT_TOPIC}\"\nformat = \"{output_format}\"\n\n[merge]\npolicy = \"lww\"\n"
    );
    for (name, topic) in SOURCES.iter().zip(TOPICS) {
        text.push_str(&format!("\n[[sources]]\nname = \"{name}\"\ntopic = \"{topic}\"\nformat = \"debezium-avro\"\n"));
    }
    text
}

/// An Avro bench's fixture, with the stand-in's request count after set-up.
struct AvroFixture {
    pipeline: PipelineFixture,
    requests_after_setup: usize,
}

impl AvroFixture {
    fn new(env: &AvroEnv, keys: usize, output: &str) -> Self {
        let pipeline = PipelineFixture::populated(keys, env.pipeline(output), env.records.clone());
        Self { pipeline, requests_after_setup: env.standin.requests() }
    }
}

fn decode_merge_encode(c: &mut Criterion) {
    let mut fixture: Option<PipelineFixture> = None;
    let mut group = c.benchmark_group("decode_merge_encode");
    group.throughput(Throughput::Elements(1));
    for (name, merge) in [("process/debezium-json/lww/3src", LWW), ("process/debezium-json/field-lww+rules/3src", MIXED_RULES)] {
        group.bench_function(name, |b| {
            let f = fixture.get_or_insert_with(|| PipelineFixture::new(keys(), merge));
            // The output record is consumed (and dropped) inside the timed loop.
            b.iter(|| black_box(f.step()))
        });
        // Each fixture's state is freed before the next one is built.
        fixture = None;
    }
    // Built on first use: a run filtered to the JSON bench starts no registry.
    let mut env: Option<AvroEnv> = None;
    for (name, output) in [("process/debezium-avro/lww/3src", "json"), ("process/debezium-avro→avro/lww/3src", "avro")] {
        let mut fixture: Option<AvroFixture> = None;
        group.bench_function(name, |b| {
            let env = env.get_or_insert_with(|| AvroEnv::new(keys()));
            let f = fixture.get_or_insert_with(|| AvroFixture::new(env, keys(), output));
            b.iter(|| black_box(f.pipeline.step()))
        });
        if let (Some(env), Some(f)) = (&env, &fixture) {
            let now = env.standin.requests();
            assert_eq!(now, f.requests_after_setup, "{name}: registry requests while timing");
            eprintln!("{name}: {now} registry requests in all so far, none while timing");
        }
    }
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
