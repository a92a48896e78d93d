//! Unit tests of every rule of design §1, and property tests of convergence,
//! by concern: row-level policies, `field-lww`'s column state, the column
//! rules, value order, and convergence. The helpers below build events and
//! engines for all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn vv(entries: &[(&str, u64)]) -> VersionVector {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn row(v: Value) -> Row {
    v.as_object().expect("object").clone()
}

fn upsert(source: &str, clock: VersionVector, ts: i64, r: Value) -> ChangeEvent {
    ChangeEvent {
        source: source.into(),
        key: r#"{"id":1}"#.into(),
        op: Op::Upsert,
        row: Some(row(r).into()),
        before: None,
        full_image: true,
        changed: None,
        ts,
        vv: clock,
    }
}

fn update(source: &str, clock: VersionVector, ts: i64, before: Value, after: Value) -> ChangeEvent {
    ChangeEvent { before: Some(row(before)), full_image: false, ..upsert(source, clock, ts, after) }
}

fn delete(source: &str, clock: VersionVector, ts: i64) -> ChangeEvent {
    ChangeEvent {
        source: source.into(),
        key: r#"{"id":1}"#.into(),
        op: Op::Delete,
        row: None,
        before: None,
        full_image: false,
        changed: None,
        ts,
        vv: clock,
    }
}

fn engine(policy: Policy, deletes: DeletePolicy) -> MergeEngine {
    MergeEngine::new(MergeSettings {
        policy,
        deletes,
        priorities: [("eu".to_string(), 0), ("us".to_string(), 0)].into_iter().collect(),
        clock_field: None,
        tombstone_retention_ms: 1000,
        columns: BTreeMap::new(),
    })
}

fn lww() -> MergeEngine {
    engine(Policy::Lww, DeletePolicy::Lww)
}

fn out(e: &MergeEngine, s: &KeyState) -> Option<Value> {
    e.resolve(s).row.map(|r| Value::Object(r.into_owned()))
}

fn with_rules(mut e: MergeEngine, rules: &[(&str, ColumnRule)]) -> MergeEngine {
    e.settings.columns = rules.iter().map(|(c, r)| (c.to_string(), r.clone())).collect();
    e
}

fn owner(source: &str) -> ColumnRule {
    ColumnRule::Owner { source: source.into() }
}

/// Applies `events` in every order that keeps each source's own order, and
/// checks that all of them give `want` (and the same state).
fn in_every_order(e: &MergeEngine, events: &[ChangeEvent], want: Value) -> KeyState {
    fn orders(queues: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
        if queues.iter().all(Vec::is_empty) {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for q in 0..queues.len() {
            if let Some((&first, rest)) = queues[q].split_first() {
                let mut next = queues.clone();
                next[q] = rest.to_vec();
                for mut tail in orders(next) {
                    tail.insert(0, first);
                    out.push(tail);
                }
            }
        }
        out
    }
    let mut by_source: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        match by_source.iter_mut().find(|(s, _)| *s == ev.source) {
            Some((_, q)) => q.push(i),
            None => by_source.push((ev.source.clone(), vec![i])),
        }
    }
    let mut first: Option<KeyState> = None;
    for order in orders(by_source.into_iter().map(|(_, q)| q).collect()) {
        let mut s = KeyState::default();
        for &i in &order {
            assert_ne!(e.apply(&mut s, events[i].clone()), Applied::Refused, "order {order:?}");
        }
        let mut got = out(e, &s).expect("the row exists");
        got.as_object_mut().unwrap().remove("_vv");
        assert_eq!(got, want, "order {order:?}");
        match &first {
            None => first = Some(s),
            Some(f) => assert_eq!(f, &s, "order {order:?}"),
        }
    }
    first.unwrap()
}

fn counter_engine(deletes: DeletePolicy, carried: bool) -> MergeEngine {
    let mut e = with_rules(engine(Policy::FieldLww, deletes), &[("points", ColumnRule::Counter)]);
    if carried {
        e.settings.clock_field = Some("_vv".into());
    }
    e
}

mod convergence;
mod fields;
mod row;
mod rules;
mod values;
