//! The decoded-state cache is bounded in bytes (`[runtime]
//! state_cache_bytes`) by an estimate of what each decoded state holds
//! (`store::decoded_bytes`). This test decodes states of the merge bench's
//! shape under a counting allocator and checks that the estimate is within
//! a third of the memory the states really take, for row-level `lww` and
//! for `field-lww` with column rules. An estimate that counts only the
//! encoded bytes (as before) undercounts by more than two times and fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicIsize, Ordering};

use serde_json::json;
use tributary::merge::{ChangeEvent, ColumnRule, KeyState, MergeEngine, MergeSettings, Op, Policy, Row, VersionVector};
use tributary::store::{decode_state, decoded_bytes, encode_state};

/// What the store's estimate counts per allocation beyond the bytes asked
/// for (size-class rounding, bookkeeping).
const PER_ALLOCATION: isize = 16;

/// Live heap bytes (asked for, plus [`PER_ALLOCATION`] each).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize + PER_ALLOCATION, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize + PER_ALLOCATION, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SOURCES: [&str; 3] = ["eu", "us", "apac"];
const KEYS: usize = 3_000;

/// A customer row of the merge bench's shape (9 columns, about 200 bytes).
fn row(k: usize, s: usize, round: usize) -> Row {
    let (city, country) = [("Lisbon", "PT"), ("Osaka", "JP"), ("Austin", "US")][(k + s) % 3];
    let tier = ["free", "pro", "enterprise"][k % 3];
    let v = json!({
        "id": k,
        "name": format!("Customer {k:06}"),
        "email": format!("customer.{k:06}@example.com"),
        "phone": format!("+1 555 {:03} {:04}", k / 10_000 % 1000, k % 10_000),
        "city": city,
        "country": country,
        "tier": tier,
        "balance": ((k * 7919 + round * 104_729 + s * 13) % 10_000_000) as f64 / 100.0,
        "updated_at": format!("2024-05-01T12:{:02}:{:02}.{:03}Z", round % 60, k % 60, s),
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Encoded states of `KEYS` keys after two rounds of writes by every source
/// (derived clocks: each source's writes are concurrent with the others').
fn encoded_states(settings: MergeSettings) -> Vec<(String, Vec<u8>)> {
    let engine = MergeEngine::new(settings);
    (0..KEYS)
        .map(|k| {
            let mut state = KeyState::default();
            for round in 0..2 {
                for (s, source) in SOURCES.iter().enumerate() {
                    let seq = (round * KEYS + k + 1) as u64;
                    engine.apply(
                        &mut state,
                        ChangeEvent {
                            source: source.to_string(),
                            key: format!("{{\"id\":{k}}}"),
                            op: Op::Upsert,
                            row: Some(row(k, s, round).into()),
                            before: None,
                            full_image: true,
                            changed: None,
                            ts: 1_714_566_896_000 + (round * KEYS + k) as i64 * 10 + s as i64,
                            vv: VersionVector::single(source, seq),
                        },
                    );
                }
            }
            (format!("{{\"id\":{k}}}"), encode_state(&state))
        })
        .collect()
}

/// Decodes the states into a cache-shaped map (and renders each, as the
/// processor's cache holds them after an event): the measured bytes and the
/// estimate's sum.
fn measure(engine: &MergeEngine, states: &[(String, Vec<u8>)]) -> (isize, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut cache: HashMap<String, (KeyState, usize)> = HashMap::new();
    let mut estimate = 0;
    for (key, bytes) in states {
        let state = decode_state(bytes).expect("the state decodes");
        std::hint::black_box(engine.resolve(&state));
        let size = decoded_bytes(key, &state, bytes.len());
        estimate += size;
        cache.insert(key.clone(), (state, size));
    }
    let measured = LIVE.load(Ordering::Relaxed) - before;
    drop(cache);
    (measured, estimate)
}

fn check(name: &str, settings: MergeSettings) {
    let states = encoded_states(settings.clone());
    let engine = MergeEngine::new(settings);
    let encoded: usize = states.iter().map(|(k, b)| k.len() + b.len()).sum();
    let (measured, estimate) = measure(&engine, &states);
    let ratio = estimate as f64 / measured as f64;
    eprintln!(
        "{name}: {KEYS} states, encoded {} B/key, decoded {} B/key measured, {} B/key estimated ({ratio:.2})",
        encoded / KEYS,
        measured as usize / KEYS,
        estimate / KEYS
    );
    assert!(
        (0.75..=1.34).contains(&ratio),
        "{name}: the decoded-state estimate is {ratio:.2} of the memory the states take \
         ({estimate} estimated, {measured} measured)"
    );
}

#[test]
fn the_decoded_state_estimate_is_within_a_third_of_what_states_take() {
    check("lww", MergeSettings { policy: Policy::Lww, ..Default::default() });
    let columns: BTreeMap<String, ColumnRule> = [
        ("email", ColumnRule::Owner { source: "eu".into() }),
        ("balance", ColumnRule::Max),
        ("updated_at", ColumnRule::Max),
        ("tier", ColumnRule::Union),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_string(), r))
    .collect();
    check("field-lww", MergeSettings { policy: Policy::FieldLww, ..Default::default() });
    check("field-lww with rules", MergeSettings { policy: Policy::FieldLww, columns, ..Default::default() });
}
