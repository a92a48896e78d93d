//! Convergence: any interleaving that keeps each source's order gives the same
//! state and the same merged output; undo; bounded state.

use super::*;

#[derive(Debug, Clone)]
struct Step {
    key: u8,
    delete: bool,
    ts: i64,
    col: u8,
    val: u8,
    /// Carried mode: how much of another source's clock this write has seen.
    seen: u8,
}

fn history() -> impl Strategy<Value = Vec<Vec<Step>>> {
    let step = (0u8..3, prop::bool::weighted(0.2), 0i64..6, 0u8..4, 0u8..4, 0u8..3)
        .prop_map(|(key, delete, ts, col, val, seen)| Step { key, delete, ts, col, val, seen });
    prop::collection::vec(prop::collection::vec(step, 0..12), 3)
}

const SOURCES: [&str; 3] = ["eu", "us", "ap"];

/// Column `c2` holds arrays (a subset of `["a", "b"]`, for the `union`
/// rule), the others numbers.
fn column_value(col: u8, val: u8) -> Value {
    if col == 2 {
        Value::Array(["a", "b"].iter().enumerate().filter(|(i, _)| val & (1 << i) != 0).map(|(_, x)| json!(x)).collect())
    } else {
        json!(val)
    }
}

/// The mixed rules of the property tests.
fn mixed_rules() -> [(&'static str, ColumnRule); 4] {
    [("c0", owner("us")), ("c1", ColumnRule::Max), ("c2", ColumnRule::Union), ("c3", ColumnRule::Min)]
}

/// Mixed rules with a counter (`c1`, which holds numbers).
fn counter_rules() -> [(&'static str, ColumnRule); 4] {
    [("c0", owner("us")), ("c1", ColumnRule::Counter), ("c2", ColumnRule::Union), ("c3", ColumnRule::Min)]
}

/// How the property tests' events get their clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clocks {
    /// `{source: seq}`.
    Derived,
    /// A source's clock has seen `seen` entries of the other sources'
    /// counters so far, which makes some writes causally later than others
    /// and some concurrent; a source's clocks need not grow.
    Carried,
    /// As `Carried`, but what a source has seen only grows (as a real
    /// region's clocks do), and a step with `seen == 0` after the first is
    /// an echo: the source applied a merged record, so its own entry does
    /// not advance.
    Growing,
}

/// Turns per-source steps into events.
fn events(hist: &[Vec<Step>], clocks: Clocks) -> Vec<Vec<ChangeEvent>> {
    let mut out = Vec::new();
    let mut images: HashMap<(usize, u8), Row> = HashMap::new();
    for (si, steps) in hist.iter().enumerate() {
        let source = SOURCES[si];
        let mut evs = Vec::new();
        let mut seq = 0;
        let mut seen_so_far = [0u64; 3];
        for st in steps {
            // An echo rewrites the image it had (a merged record applied):
            // an update, after the source's first write, of a row it has.
            let echo = clocks == Clocks::Growing && st.seen == 0 && seq > 0 && !st.delete;
            if !echo {
                seq += 1;
            }
            let mut clock = VersionVector::single(source, seq);
            if clocks != Clocks::Derived {
                for (oi, other) in SOURCES.iter().enumerate() {
                    if oi != si {
                        let mut seen = (st.seen as u64).min(hist[oi].len() as u64);
                        if clocks == Clocks::Growing {
                            seen = seen.max(seen_so_far[oi]);
                            seen_so_far[oi] = seen;
                        }
                        clock.set(other, seen);
                    }
                }
            }
            let key = format!(r#"{{"id":{}}}"#, st.key);
            let before = images.get(&(si, st.key)).cloned();
            let ev = if st.delete {
                images.remove(&(si, st.key));
                ChangeEvent {
                    source: source.into(),
                    key,
                    op: Op::Delete,
                    row: None,
                    before,
                    full_image: false,
                    changed: None,
                    ts: st.ts,
                    vv: clock,
                }
            } else {
                let mut r = before.clone().unwrap_or_else(|| {
                    // A new row has the counter column (`c1`) from the start,
                    // as a database row has every column: a `before` image
                    // lacking it would be refused.
                    let mut r = Row::new();
                    r.insert("c1".into(), json!(0));
                    r
                });
                r.insert("id".into(), json!(st.key));
                r.insert(format!("c{}", st.col), column_value(st.col, st.val));
                images.insert((si, st.key), r.clone());
                ChangeEvent {
                    source: source.into(),
                    key,
                    op: Op::Upsert,
                    row: Some(r.into()),
                    full_image: before.is_none(),
                    changed: None,
                    before,
                    ts: st.ts,
                    vv: clock,
                }
            };
            evs.push(ev);
        }
        out.push(evs);
    }
    out
}

/// The events of the per-source queues in the order `picks` chooses (each
/// pick selects a non-empty queue), keeping every queue's own order.
fn interleaved(queues: &[Vec<ChangeEvent>], picks: &[usize]) -> Vec<ChangeEvent> {
    let mut pos = vec![0usize; queues.len()];
    let mut pick = picks.iter().cycle();
    let total: usize = queues.iter().map(Vec::len).sum();
    (0..total)
        .map(|_| {
            let mut q = *pick.next().unwrap() % queues.len();
            while pos[q] >= queues[q].len() {
                q = (q + 1) % queues.len();
            }
            pos[q] += 1;
            queues[q][pos[q] - 1].clone()
        })
        .collect()
}

/// Feeds the per-source queues in the order `picks` chooses (each pick
/// selects a non-empty queue), keeping every queue's own order; returns the
/// final states and the last emitted output per key.
fn run(
    e: &MergeEngine,
    queues: &[Vec<ChangeEvent>],
    picks: &[usize],
) -> (BTreeMap<String, KeyState>, BTreeMap<String, Option<Value>>) {
    let mut states: BTreeMap<String, KeyState> = BTreeMap::new();
    let mut emitted = BTreeMap::new();
    for ev in interleaved(queues, picks) {
        let st = states.entry(ev.key.clone()).or_default();
        let applied = e.apply(st, ev.clone());
        assert_ne!(applied, Applied::Refused, "the generated events are all mergeable: {ev:?}");
        if applied == Applied::Changed {
            let r = e.resolve(st);
            let mut rendered = r.row.map(|r| Value::Object(r.into_owned()));
            if let Some(v) = rendered.as_mut() {
                v["__vv"] = json!(r.vv.to_json());
                v["__winner"] = json!(r.winner);
                v["__siblings"] = json!(r.siblings);
            }
            emitted.insert(ev.key.clone(), rendered);
        }
    }
    (states, emitted)
}

/// Every policy and delete policy, and `field-lww` with mixed column rules
/// (with a counter only where each source's clocks grow, as counters need).
fn all_engines(clocks: Clocks) -> Vec<MergeEngine> {
    let mut v = Vec::new();
    for policy in [Policy::Lww, Policy::SourcePriority, Policy::FieldLww] {
        for deletes in [DeletePolicy::Lww, DeletePolicy::DeleteWins, DeletePolicy::UpdateWins] {
            let mut e = engine(policy, deletes);
            e.settings.priorities.insert("ap".into(), 3);
            v.push(e.clone());
            if policy == Policy::FieldLww {
                v.push(with_rules(e.clone(), &mixed_rules()));
                if clocks != Clocks::Carried {
                    let mut c = with_rules(e, &counter_rules());
                    if clocks == Clocks::Growing {
                        c.settings.clock_field = Some("_vv".into());
                    }
                    v.push(c);
                }
            }
        }
    }
    v
}

fn clocks() -> impl Strategy<Value = Clocks> {
    prop_oneof![Just(Clocks::Derived), Just(Clocks::Carried), Just(Clocks::Growing)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn every_interleaving_converges(
        hist in history(),
        clocks in clocks(),
        a in prop::collection::vec(0usize..3, 1..40),
        b in prop::collection::vec(0usize..3, 1..40),
    ) {
        let queues = events(&hist, clocks);
        for e in all_engines(clocks) {
            let (s1, o1) = run(&e, &queues, &a);
            let (s2, o2) = run(&e, &queues, &b);
            let what = format!("{:?}/{:?} {:?}", e.settings.policy, e.settings.deletes, e.settings.columns);
            prop_assert_eq!(&s1, &s2, "states differ under {}", what);
            prop_assert_eq!(&o1, &o2, "last outputs differ under {}", what);
            // The last emitted record equals a fresh rendering of the final state.
            for (k, st) in &s1 {
                let fresh = e.resolve(st).row.map(|r| Value::Object(r.into_owned()));
                let last = o1.get(k).cloned().flatten().map(|mut v| {
                    let o = v.as_object_mut().unwrap();
                    o.remove("__vv"); o.remove("__winner"); o.remove("__siblings");
                    v
                });
                // Key fields are always present in an existing row (no
                // skeleton rows after a delete), and under `field-lww` every
                // column of the winning existence version's image is there.
                if let Some(row) = &fresh {
                    let id = serde_json::from_str::<Value>(k).unwrap()["id"].clone();
                    prop_assert_eq!(&row["id"], &id, "{:?}/{:?}", e.settings.policy, e.settings.deletes);
                    if e.settings.policy == Policy::FieldLww {
                        let i = e.decide(&st.versions, |a, b| e.lww_cmp(a, b)).unwrap();
                        for column in st.versions[i].row.as_ref().unwrap().keys() {
                            prop_assert!(row.get(column).is_some(), "{} missing from {}", column, row);
                        }
                    }
                }
                prop_assert_eq!(fresh, last);
            }
        }
    }

    /// `apply_undoable` changes a state as `apply` does, and `undo` puts
    /// it back exactly (same versions in the same order), for every policy
    /// that undoes without a copy, at every point of a random history.
    #[test]
    fn an_undo_puts_the_state_back_exactly(hist in history(), clocks in clocks(), a in prop::collection::vec(0usize..3, 1..40)) {
        let queues = events(&hist, clocks);
        for e in all_engines(clocks).into_iter().filter(MergeEngine::undoes_without_copy) {
            let mut states: BTreeMap<String, KeyState> = BTreeMap::new();
            for ev in interleaved(&queues, &a) {
                let st = states.entry(ev.key.clone()).or_default();
                let before = st.clone();
                let mut applied = before.clone();
                let plain = e.apply(&mut applied, ev.clone());
                let (report, undo) = e.apply_undoable(st, ev.clone());
                prop_assert_eq!(report.applied, plain);
                prop_assert_eq!(&*st, &applied, "apply_undoable changed the state as apply does");
                prop_assert_eq!(undo.is_some(), plain == Applied::Changed);
                if let Some(undo) = undo {
                    // Take it back, check, and apply again to go on.
                    e.undo(st, undo);
                    prop_assert_eq!(&*st, &before, "the undo restored the state");
                    e.apply(st, ev);
                }
            }
        }
    }

    #[test]
    fn the_state_is_an_antichain_bounded_per_source_in_derived_mode(hist in history(), a in prop::collection::vec(0usize..3, 1..40)) {
        let queues = events(&hist, Clocks::Derived);
        for e in all_engines(Clocks::Derived) {
            let (states, _) = run(&e, &queues, &a);
            for st in states.values() {
                prop_assert!(st.versions.len() <= SOURCES.len());
                for (i, x) in st.versions.iter().enumerate() {
                    for (j, y) in st.versions.iter().enumerate() {
                        if i != j {
                            prop_assert_eq!(x.vv.causality(&y.vv), Causality::Concurrent);
                        }
                    }
                }
            }
        }
    }
}
