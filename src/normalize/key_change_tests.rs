//! Primary-key changes: how Debezium's two halves normalize, and what they
//! merge to under every policy, alone and against a concurrent update of the
//! old key in another region. Each test backs a sentence of doc/operations.md's
//! "Primary-key changes" section.

use super::*;
use crate::config::SourceConfig;
use crate::merge::{DeletePolicy, KeyState, MergeEngine, MergeSettings, Op, Policy};
use serde_json::json;

const NEW_KEY: &[(&str, &[u8])] = &[(NEW_KEY_HEADER, br#"{"id":2}"#), ("__debezium.context.connectorName", b"postgresql")];
const OLD_KEY: &[(&str, &[u8])] = &[(OLD_KEY_HEADER, br#"{"id":1}"#), ("__debezium.context.connectorName", b"postgresql")];

fn region(name: &str, policy: Policy) -> SourceNormalizer {
    let cfg: SourceConfig = toml::from_str(&format!("name = \"{name}\"\ntopic = \"{name}.t\"\n")).unwrap();
    SourceNormalizer::new(&cfg, policy)
}

fn region_carried(name: &str, policy: Policy) -> SourceNormalizer {
    let cfg: SourceConfig = toml::from_str(&format!("name = \"{name}\"\ntopic = \"{name}.t\"\nclock_field = \"_vv\"\n")).unwrap();
    SourceNormalizer::new(&cfg, policy)
}

/// A Debezium record of `name`'s topic.
fn record<'a>(name: &str, offset: i64, key: &'a str, value: &'a str, headers: &'a [(&'a str, &'a [u8])]) -> InputRecord<'a> {
    let topic = if name == "eu" { "eu.t" } else { "us.t" };
    InputRecord {
        topic,
        partition: 0,
        offset,
        timestamp: Some(1),
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
        headers,
    }
}

fn envelope(op: &str, before: Option<Value>, after: Option<Value>, ts: i64) -> String {
    json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}}).to_string()
}

fn row(id: i64, email: &str, city: &str) -> Value {
    json!({"id": id, "name": "Ann", "email": email, "city": city})
}

fn event_of(n: &SourceNormalizer, r: &InputRecord<'_>) -> ChangeEvent {
    match n.normalize(r).unwrap() {
        Normalized::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

const K1: &str = r#"{"id":1}"#;
const K2: &str = r#"{"id":2}"#;

/// What eu sent: the row inserted, its email changed, then `UPDATE customers
/// SET id = 2 WHERE id = 1` at time 2000 (delete of 1, tombstone, create of 2).
fn eu_history(policy: Policy) -> Vec<ChangeEvent> {
    let eu = region("eu", policy);
    let v0 = envelope("c", None, Some(row(1, "old@x", "Oslo")), 1000);
    let v1 = envelope("u", Some(row(1, "old@x", "Oslo")), Some(row(1, "new@eu", "Oslo")), 1500);
    let v2 = envelope("d", Some(row(1, "new@eu", "Oslo")), None, 2000);
    let v4 = envelope("c", None, Some(row(2, "new@eu", "Oslo")), 2000);
    assert_eq!(eu.normalize(&record("eu", 3, K1, "", &[])).unwrap(), Normalized::Tombstone, "the tombstone between the halves");
    vec![
        event_of(&eu, &record("eu", 0, K1, &v0, &[])),
        event_of(&eu, &record("eu", 1, K1, &v1, &[])),
        event_of(&eu, &record("eu", 2, K1, &v2, NEW_KEY)),
        event_of(&eu, &record("eu", 4, K2, &v4, OLD_KEY)),
    ]
}

/// What us sent: the same row inserted, then its city changed at `ts`,
/// concurrently with eu's key change (us never saw it).
fn us_history(policy: Policy, ts: i64) -> Vec<ChangeEvent> {
    let us = region("us", policy);
    let v0 = envelope("c", None, Some(row(1, "old@x", "Oslo")), 1000);
    let v1 = envelope("u", Some(row(1, "old@x", "Oslo")), Some(row(1, "old@x", "Lima")), ts);
    vec![event_of(&us, &record("us", 0, K1, &v0, &[])), event_of(&us, &record("us", 1, K1, &v1, &[]))]
}

/// The merged row of `key` after `events`, the same in the given order and
/// in reverse (the key's result does not depend on arrival order).
fn merged(policy: Policy, deletes: DeletePolicy, events: &[ChangeEvent], key: &str) -> Option<Value> {
    merged_with(MergeSettings { policy, deletes, ..Default::default() }, events, key)
}

fn merged_with(settings: MergeSettings, events: &[ChangeEvent], key: &str) -> Option<Value> {
    let (policy, deletes) = (settings.policy, settings.deletes);
    let engine = MergeEngine::new(settings);
    let run = |order: Vec<&ChangeEvent>| {
        let mut state = KeyState::default();
        for e in order.into_iter().filter(|e| e.key == key) {
            engine.apply(&mut state, e.clone());
        }
        engine.resolve(&state).row.map(|r| Value::Object(r.into_owned()))
    };
    let forward = run(events.iter().collect());
    assert_eq!(forward, run(events.iter().rev().collect()), "{policy:?}/{deletes:?}: order-independent");
    forward
}

const POLICIES: [Policy; 3] = [Policy::Lww, Policy::SourcePriority, Policy::FieldLww];
const DELETES: [DeletePolicy; 3] = [DeletePolicy::Lww, DeletePolicy::DeleteWins, DeletePolicy::UpdateWins];

#[test]
fn the_halves_are_told_apart_by_their_headers() {
    let r = |headers| record("eu", 0, K1, "{}", headers);
    assert_eq!(r(NEW_KEY).key_change(), Some(KeyChange::OldKeyDeleted { new_key: K2.into() }));
    assert_eq!(r(OLD_KEY).key_change(), Some(KeyChange::NewKeyCreated { old_key: K1.into() }));
    // Debezium 3.6 puts context headers on every record: they are no key change.
    assert_eq!(r(&[("__debezium.context.taskId", b"0")]).key_change(), None);
    assert_eq!(r(&[]).key_change(), None);
    // The JSON header converter with schemas, or spaces: the canonical key.
    let wrapped: &[(&str, &[u8])] = &[(OLD_KEY_HEADER, br#"{"schema":{"type":"struct"},"payload":{"tenant":"x", "id":1}}"#)];
    assert_eq!(r(wrapped).key_change(), Some(KeyChange::NewKeyCreated { old_key: r#"{"id":1,"tenant":"x"}"#.into() }));
    // Anything else (Kafka Connect's `Struct{…}` text) is kept as sent.
    let text: &[(&str, &[u8])] = &[(NEW_KEY_HEADER, b"Struct{id=2}")];
    assert_eq!(r(text).key_change(), Some(KeyChange::OldKeyDeleted { new_key: "Struct{id=2}".into() }));
}

#[test]
fn the_halves_are_a_plain_delete_of_the_old_key_and_a_full_create_of_the_new_key() {
    for policy in POLICIES {
        let events = eu_history(policy);
        let (delete, create) = (&events[2], &events[3]);
        assert_eq!((delete.key.as_str(), delete.op), (K1, Op::Delete));
        assert_eq!((create.key.as_str(), create.op, create.full_image), (K2, Op::Upsert, true), "every column counts as written");
        assert_eq!(create.row.as_deref().map(|r| Value::Object(r.clone())), Some(row(2, "new@eu", "Oslo")));
    }
}

#[test]
fn alone_a_key_change_deletes_the_old_key_and_creates_the_new_one_under_every_policy() {
    for policy in POLICIES {
        let events = eu_history(policy);
        for deletes in DELETES {
            assert_eq!(merged(policy, deletes, &events, K1), None, "{policy:?}/{deletes:?}: old key deleted");
            assert_eq!(merged(policy, deletes, &events, K2), Some(row(2, "new@eu", "Oslo")), "{policy:?}/{deletes:?}");
        }
    }
}

#[test]
fn a_later_concurrent_update_of_the_old_key_brings_it_back_unless_deletes_win() {
    for policy in POLICIES {
        let mut events = eu_history(policy);
        events.extend(us_history(policy, 2500));
        // us's whole row comes back, with its own email, not eu's earlier change.
        let back = Some(row(1, "old@x", "Lima"));
        assert_eq!(merged(policy, DeletePolicy::Lww, &events, K1), back, "{policy:?}/lww");
        assert_eq!(merged(policy, DeletePolicy::UpdateWins, &events, K1), back, "{policy:?}/update-wins");
        assert_eq!(merged(policy, DeletePolicy::DeleteWins, &events, K1), None, "{policy:?}/delete-wins");
        for deletes in DELETES {
            // The new key is eu's row as moved: us's change does not follow it.
            assert_eq!(merged(policy, deletes, &events, K2), Some(row(2, "new@eu", "Oslo")), "{policy:?}/{deletes:?}");
        }
    }
}

#[test]
fn an_earlier_concurrent_update_of_the_old_key_brings_it_back_only_under_update_wins() {
    for policy in POLICIES {
        let mut events = eu_history(policy);
        events.extend(us_history(policy, 1800));
        assert_eq!(merged(policy, DeletePolicy::Lww, &events, K1), None, "{policy:?}/lww");
        assert_eq!(merged(policy, DeletePolicy::DeleteWins, &events, K1), None, "{policy:?}/delete-wins");
        assert_eq!(
            merged(policy, DeletePolicy::UpdateWins, &events, K1),
            Some(row(1, "old@x", "Lima")),
            "{policy:?}/update-wins"
        );
    }
}

#[test]
fn carried_clocks_a_concurrent_update_of_the_old_key_comes_back_the_same_way() {
    // us had applied eu's insert ({eu:1}) and then changed the city: its
    // clock {eu:1,us:1} is concurrent with eu's key-change delete {eu:3}.
    let with_vv = |r: Value, vv: Value| {
        let mut r = r;
        r["_vv"] = vv;
        r
    };
    for policy in POLICIES {
        let (eu, us) = (region_carried("eu", policy), region_carried("us", policy));
        let eu_row = with_vv(row(1, "old@x", "Oslo"), json!({"eu": 2}));
        let moved = with_vv(row(2, "old@x", "Oslo"), json!({"eu": 3}));
        let us_row = with_vv(row(1, "old@x", "Lima"), json!({"eu": 1, "us": 1}));
        let (d, c) = (envelope("d", Some(eu_row), None, 2000), envelope("c", None, Some(moved), 2000));
        let u = envelope("u", Some(with_vv(row(1, "old@x", "Oslo"), json!({"eu": 1}))), Some(us_row), 2500);
        let events = [
            event_of(&eu, &record("eu", 2, K1, &d, NEW_KEY)),
            event_of(&eu, &record("eu", 4, K2, &c, OLD_KEY)),
            event_of(&us, &record("us", 1, K1, &u, &[])),
        ];
        assert_eq!(events[0].vv.to_json(), r#"{"eu":3}"#);
        assert_eq!(merged(policy, DeletePolicy::Lww, &events, K1), Some(row(1, "old@x", "Lima")), "{policy:?}/lww");
        assert_eq!(merged(policy, DeletePolicy::DeleteWins, &events, K1), None, "{policy:?}/delete-wins");
        assert_eq!(merged(policy, DeletePolicy::UpdateWins, &events, K1), Some(row(1, "old@x", "Lima")), "{policy:?}");
        assert_eq!(merged(policy, DeletePolicy::Lww, &events, K2), Some(row(2, "old@x", "Oslo")), "{policy:?}/new key");
    }
}

#[test]
fn under_source_priority_the_larger_priority_decides_before_the_commit_time() {
    let settings = |favoured: &str| MergeSettings {
        policy: Policy::SourcePriority,
        deletes: DeletePolicy::Lww,
        priorities: [(favoured.to_string(), 1)].into_iter().collect(),
        ..Default::default()
    };
    for us_ts in [1800, 2500] {
        let mut events = eu_history(Policy::SourcePriority);
        events.extend(us_history(Policy::SourcePriority, us_ts));
        assert_eq!(merged_with(settings("us"), &events, K1), Some(row(1, "old@x", "Lima")), "us favoured, us at {us_ts}");
        assert_eq!(merged_with(settings("eu"), &events, K1), None, "eu favoured, us at {us_ts}");
    }
}
