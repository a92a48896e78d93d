//! What a per-source transformation costs on the data path, in events per
//! second: [`Pipeline::process`] (decode → `where` + transform → merge →
//! encode) with and without `[sources.transform]`, on the same logical events.
//!
//! * `process/no-transform/3src`: three Debezium JSON sources whose rows
//!   already have the target shape (`id`, `name`, `email`, `status`,
//!   `balance`, `updated_at`, `region`, `tier`).
//! * `process/8-op-transform/3src`: the same events from three legacy-style
//!   sources (`CUST_NO` as zero-padded text, `STATUS_CD` codes, `BAL_CENTS`
//!   as text, `updated_at` in epoch millis, no `region`), each mapped by an
//!   8-operation transform: rename `CUST_NO`, `STATUS_CD`, `BAL_CENTS`; cast
//!   `id` (int), `balance` (cents), `updated_at` (epoch-millis); map
//!   `status`; set `region`. The record key (`{"CUST_NO":"000042"}`) goes
//!   through the renames and casts too. The set-up checks that both
//!   pipelines produce byte-identical output records.
//! * `process/8-op-transform+where/3src`: the same plus a two-condition
//!   `where` that every record passes.
//!
//! Workload: `lww`, `TRIBUTARY_BENCH_KEYS` keys (default 100 000), every
//! source updates every key once per round (Debezium `u` with a before
//! image), derived clocks (offset + 1). One round populates the store before
//! timing, so every timed event finds three concurrent versions and emits.
//!
//! Run: `cargo bench -j2 --bench transform`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};

use tributary::config::Config;
use tributary::normalize::InputRecord;
use tributary::pipeline::{MemoryStore, Pipeline, Step};
use tributary::time;

const SOURCES: [&str; 3] = ["eu", "us", "ap"];
const TOPICS: [&str; 3] = ["eu.public.customers", "us.public.customers", "ap.public.customers"];
const T0: i64 = 1_709_290_800_000;
const TIERS: [&str; 3] = ["bronze", "silver", "gold"];

fn keys() -> usize {
    std::env::var("TRIBUTARY_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// One logical row: (`id`, status code, balance in cents, updated_at millis).
fn logical(k: usize, s: usize, round: u64) -> (usize, bool, i64, i64) {
    let ts = T0 + (round as i64) * 10_000_000 + (k as i64) * 3 + s as i64;
    (k, !(k + s).is_multiple_of(5), 10_000 + (k as i64 * 37 + s as i64) % 900_000, ts)
}

fn target_row(k: usize, s: usize, round: u64) -> Value {
    let (id, active, cents, ts) = logical(k, s, round);
    json!({
        "id": id, "name": format!("Customer {k}"), "email": format!("customer{k}@example.com"),
        "status": if active { "active" } else { "inactive" }, "balance": cents as f64 / 100.0,
        "updated_at": time::format_micros(ts * 1000).unwrap(), "region": SOURCES[s], "tier": TIERS[k % 3],
    })
}

fn legacy_row(k: usize, s: usize, round: u64) -> Value {
    let (id, active, cents, ts) = logical(k, s, round);
    json!({
        "CUST_NO": format!("{id:08}"), "name": format!("Customer {k}"), "email": format!("customer{k}@example.com"),
        "STATUS_CD": if active { "A" } else { "I" }, "BAL_CENTS": cents.to_string(),
        "updated_at": ts, "tier": TIERS[k % 3],
    })
}

fn envelope(before: Value, after: Value, s: usize, k: usize, ts: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "before": before, "after": after,
        "source": {"version": "2.5.4.Final", "connector": "postgresql", "name": SOURCES[s], "ts_ms": ts, "snapshot": "false",
                   "db": "shop", "schema": "public", "table": "customers", "txId": 700_000 + k, "lsn": 24_023_128_u64 + 4096 * k as u64},
        "op": "u", "ts_ms": ts + 37, "transaction": null,
    }))
    .unwrap()
}

struct Record {
    source: usize,
    position: usize,
    key: Vec<u8>,
    value: Vec<u8>,
}

fn records(keys: usize, legacy: bool) -> Vec<Record> {
    let mut out = Vec::with_capacity(keys * 3);
    for k in 0..keys {
        for s in 0..3 {
            let ts = logical(k, s, 1).3;
            let (key, before, after) = if legacy {
                (json!({"CUST_NO": format!("{k:08}")}), legacy_row(k, s, 0), legacy_row(k, s, 1))
            } else {
                (json!({"id": k}), target_row(k, s, 0), target_row(k, s, 1))
            };
            out.push(Record {
                source: s,
                position: k,
                key: key.to_string().into_bytes(),
                value: envelope(before, after, s, k, ts),
            });
        }
    }
    out
}

const MAPPING: &str = r#"
[sources.transform]
rename = { CUST_NO = "id", STATUS_CD = "status", BAL_CENTS = "balance" }
cast = { id = "int", balance = "cents", updated_at = "epoch-millis" }
map.status = { A = "active", I = "inactive" }
set = { region = "SOURCE" }
"#;

const FILTER: &str = r#"
[sources.where]
STATUS_CD = { in = ["A", "I"] }
CUST_NO = { present = true }
"#;

fn config(transform: bool, filter: bool) -> Config {
    let mut text = String::from("[output]\ntopic = \"customers.merged\"\n[merge]\npolicy = \"lww\"\n");
    for (name, topic) in SOURCES.iter().zip(TOPICS) {
        text.push_str(&format!("[[sources]]\nname = \"{name}\"\ntopic = \"{topic}\"\n"));
        if transform {
            text.push_str(&MAPPING.replace("SOURCE", name));
        }
        if filter {
            text.push_str(FILTER);
        }
    }
    Config::parse(&text, "bench", std::iter::empty()).expect("bench config")
}

struct Fixture {
    keys: usize,
    pipeline: Pipeline,
    records: Vec<Record>,
    store: MemoryStore,
    round: u64,
    next: usize,
}

impl Fixture {
    fn new(keys: usize, transform: bool, filter: bool) -> Self {
        let mut f = Self {
            keys,
            pipeline: Pipeline::new(&config(transform, filter)),
            records: records(keys, transform),
            store: MemoryStore::default(),
            round: 0,
            next: 0,
        };
        let n = f.records.len();
        for _ in 0..n {
            f.step();
        }
        let emitted = (0..n).filter(|_| matches!(f.step(), Step::Emitted { siblings: 3, .. })).count();
        assert_eq!(emitted, n, "every steady-state record must emit with three siblings");
        f
    }

    #[inline]
    fn step(&mut self) -> Step {
        let r = &self.records[self.next];
        let input = InputRecord {
            topic: TOPICS[r.source],
            partition: 0,
            offset: (self.round * self.keys as u64 + r.position as u64) as i64,
            timestamp: None,
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

/// Both pipelines must emit the same records for the same logical events.
fn check_same_output(keys: usize) {
    let keys = keys.min(2_000);
    let mut plain = Fixture::new(keys, false, false);
    let mut mapped = Fixture::new(keys, true, true);
    for _ in 0..plain.records.len() {
        match (plain.step(), mapped.step()) {
            (Step::Emitted { record: a, .. }, Step::Emitted { record: b, .. }) => {
                assert_eq!((a.key, a.value, a.headers), (b.key, b.value, b.headers), "the mapping gives the target rows");
            }
            other => panic!("both emit: {other:?}"),
        }
    }
}

fn process(c: &mut Criterion) {
    let keys = keys();
    check_same_output(keys);
    let mut group = c.benchmark_group("process");
    group.throughput(Throughput::Elements(1));
    for (name, transform, filter) in
        [("8-op-transform+where", true, true), ("no-transform", false, false), ("8-op-transform", true, false)]
    {
        let mut f = Fixture::new(keys, transform, filter);
        eprintln!("{name}: {keys} keys x 3 sources, value {} bytes", f.records[0].value.len());
        group.bench_function(format!("{name}/3src"), |b| b.iter(|| black_box(f.step())));
    }
    group.finish();
}

fn criterion_config() -> Criterion {
    Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10))
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = process
}
criterion_main!(benches);
