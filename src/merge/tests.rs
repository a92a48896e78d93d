//! Unit tests of every rule of design §1, and property tests of convergence.

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

#[test]
fn causally_later_write_wins_over_newer_timestamp_in_carried_mode() {
    let e = lww();
    let mut s = KeyState::default();
    // us writes at 10:00 with clock {us:1}; eu applied it, then writes again
    // with a wall clock that is behind (ts 5), clock {eu:1, us:1}.
    assert_eq!(e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 10_000, json!({"id":1,"name":"us"}))), Applied::Changed);
    assert_eq!(
        e.apply(&mut s, upsert("eu", vv(&[("eu", 1), ("us", 1)]), 5, json!({"id":1,"name":"eu-later"}))),
        Applied::Changed
    );
    let r = e.resolve(&s);
    assert_eq!(r.siblings, 1, "the causally later write supersedes, no conflict");
    assert_eq!(r.winner, Some("eu"));
    assert_eq!(out(&e, &s), Some(json!({"id":1,"name":"eu-later"})));
    // The older write arriving again is stale.
    assert_eq!(e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 10_000, json!({"id":1,"name":"us"}))), Applied::Stale);
}

#[test]
fn echo_of_merged_record_is_dropped() {
    let mut e = lww();
    e.settings.clock_field = Some("_vv".into());
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 100, json!({"id":1,"x":"a"})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 200, json!({"id":1,"x":"b"})));
    let merged = e.resolve(&s);
    assert!(merged.conflict());
    assert_eq!(merged.row.as_ref().unwrap().get("_vv"), Some(&json!(r#"{"eu":1,"us":1}"#)));
    // A sink wrote the merged row into eu; eu applies it and then writes
    // nothing new. Its CDC event carries the merged clock: it dominates both
    // versions and replaces them with one, the conflict's resolution.
    let merged_row = json!({"id":1,"x":"b"});
    assert_eq!(e.apply(&mut s, upsert("eu", vv(&[("eu", 1), ("us", 1)]), 300, merged_row.clone())), Applied::Changed);
    assert_eq!(e.resolve(&s).siblings, 1);
    // The same merged record echoed from us too: equal clock, equal content:
    // dropped, nothing emitted, so replication does not ping-pong.
    assert_eq!(e.apply(&mut s, upsert("us", vv(&[("eu", 1), ("us", 1)]), 400, merged_row.clone())), Applied::Duplicate);
    // If a copy with an earlier commit time arrives after its echo, it takes
    // the echo's place (the stored state is the same whatever the order).
    let mut t = KeyState::default();
    e.apply(&mut t, upsert("us", vv(&[("eu", 1), ("us", 1)]), 400, json!({"id":1,"x":"b"})));
    assert_eq!(e.apply(&mut t, upsert("eu", vv(&[("eu", 1), ("us", 1)]), 300, json!({"id":1,"x":"b"}))), Applied::Changed);
    assert_eq!(t, s);
    // And an echo of an older merged record is dominated: stale.
    assert_eq!(e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 500, merged_row)), Applied::Stale);
    assert_eq!(out(&e, &s).unwrap()["x"], json!("b"));
}

#[test]
fn exact_duplicate_is_dropped() {
    let e = lww();
    let mut s = KeyState::default();
    let ev = upsert("eu", vv(&[("eu", 3)]), 1, json!({"id":1}));
    assert_eq!(e.apply(&mut s, ev.clone()), Applied::Changed);
    assert_eq!(e.apply(&mut s, ev), Applied::Duplicate);
}

#[test]
fn derived_clocks_keep_at_most_one_version_per_source() {
    let e = lww();
    let mut s = KeyState::default();
    for seq in 1..=5 {
        e.apply(&mut s, upsert("eu", vv(&[("eu", seq)]), seq as i64, json!({"id":1,"n":seq})));
        e.apply(&mut s, upsert("us", vv(&[("us", seq)]), seq as i64, json!({"id":1,"m":seq})));
    }
    assert_eq!(s.versions.len(), 2);
    // Older sequence from the same source: stale.
    assert_eq!(e.apply(&mut s, upsert("eu", vv(&[("eu", 2)]), 99, json!({"id":1}))), Applied::Stale);
    assert_eq!(e.resolve(&s).vv.to_vv(), vv(&[("eu", 5), ("us", 5)]));
}

#[test]
fn lww_ties_go_to_priority_then_name_then_own_entry_then_content() {
    let mut e = lww();
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 100, json!({"id":1,"v":"us"})));
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 100, json!({"id":1,"v":"eu"})));
    assert_eq!(e.resolve(&s).winner, Some("eu"), "equal ts and priority: the name that sorts first");
    e.settings.priorities.insert("us".into(), 5);
    assert_eq!(e.resolve(&s).winner, Some("us"), "equal ts: larger priority");
    e.settings.priorities.insert("us".into(), 0);
    // Same source name cannot be concurrent in derived mode, but can in carried mode.
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1), ("us", 2)]), 100, json!({"id":1,"v":"a"})));
    e.apply(&mut s, upsert("eu", vv(&[("eu", 2), ("us", 1)]), 100, json!({"id":1,"v":"b"})));
    assert_eq!(out(&e, &s).unwrap()["v"], json!("b"), "larger own clock entry");
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1), ("us", 2)]), 100, json!({"id":1,"v":"a"})));
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1), ("x", 2)]), 100, json!({"id":1,"v":"z"})));
    assert_eq!(out(&e, &s).unwrap()["v"], json!("z"), "larger canonical content");
}

#[test]
fn source_priority_beats_timestamps() {
    let mut e = engine(Policy::SourcePriority, DeletePolicy::Lww);
    e.settings.priorities.insert("eu".into(), 10);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 100, json!({"id":1,"v":"eu"})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 900, json!({"id":1,"v":"us"})));
    assert_eq!(e.resolve(&s).winner, Some("eu"));
    assert_eq!(lww_resolve_winner(&s), "us");
}

fn lww_resolve_winner(s: &KeyState) -> String {
    lww().resolve(s).winner.unwrap().to_string()
}

#[test]
fn equal_clocks_with_different_content_resolve_deterministically() {
    let e = lww();
    let a = upsert("eu", vv(&[("eu", 7)]), 100, json!({"id":1,"v":"a"}));
    let b = upsert("eu", vv(&[("eu", 7)]), 100, json!({"id":1,"v":"b"}));
    let mut s1 = KeyState::default();
    e.apply(&mut s1, a.clone());
    assert_eq!(e.apply(&mut s1, b.clone()), Applied::Changed);
    let mut s2 = KeyState::default();
    e.apply(&mut s2, b);
    assert_eq!(e.apply(&mut s2, a), Applied::Stale);
    assert_eq!(s1, s2);
    assert_eq!(s1.versions.len(), 1);
    assert_eq!(out(&e, &s1).unwrap()["v"], json!("b"));
}

#[test]
fn delete_vs_concurrent_update_under_each_delete_policy() {
    // eu updates at ts 200, us deletes concurrently at ts 100 (and the reverse).
    for (policy, delete_newer, expect_deleted) in [
        (DeletePolicy::Lww, false, false),
        (DeletePolicy::Lww, true, true),
        (DeletePolicy::DeleteWins, false, true),
        (DeletePolicy::DeleteWins, true, true),
        (DeletePolicy::UpdateWins, false, false),
        (DeletePolicy::UpdateWins, true, false),
    ] {
        let e = engine(Policy::Lww, policy);
        let (ts_up, ts_del) = if delete_newer { (100, 200) } else { (200, 100) };
        let mut s = KeyState::default();
        e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), ts_up, json!({"id":1,"v":"eu"})));
        e.apply(&mut s, delete("us", vv(&[("us", 1)]), ts_del));
        let r = e.resolve(&s);
        assert_eq!(r.row.is_none(), expect_deleted, "{policy:?} delete_newer={delete_newer}");
        assert!(r.conflict());
        assert_eq!(r.winner, Some(if expect_deleted { "us" } else { "eu" }));
        // The same under field-lww's existence register.
        let f = engine(Policy::FieldLww, policy);
        let mut s = KeyState::default();
        f.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), ts_up, json!({"id":1,"v":"eu"})));
        f.apply(&mut s, delete("us", vv(&[("us", 1)]), ts_del));
        assert_eq!(f.resolve(&s).row.is_none(), expect_deleted, "field-lww {policy:?} delete_newer={delete_newer}");
    }
    // update-wins: tombstone only when every version is a delete.
    let e = engine(Policy::Lww, DeletePolicy::UpdateWins);
    let mut s = KeyState::default();
    e.apply(&mut s, delete("eu", vv(&[("eu", 1)]), 1));
    e.apply(&mut s, delete("us", vv(&[("us", 1)]), 2));
    assert!(e.resolve(&s).row.is_none());
}

#[test]
fn a_delete_stops_resurrection_by_older_updates() {
    let e = lww();
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1})));
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 2));
    assert_eq!(e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1}))), Applied::Stale);
    assert!(e.resolve(&s).row.is_none());
}

#[test]
fn field_lww_merges_disjoint_columns_and_keeps_newest_contested_column() {
    let e = engine(Policy::FieldLww, DeletePolicy::Lww);
    let mut s = KeyState::default();
    let base = json!({"id":1,"email":"a@x","phone":"1","city":"Oslo"});
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 10, base.clone()));
    // us has the same row (replicated) and changes phone and city at ts 30.
    e.apply(&mut s, update("us", vv(&[("us", 1)]), 30, base.clone(), json!({"id":1,"email":"a@x","phone":"2","city":"Rome"})));
    // eu concurrently changes email and city at ts 20 (city: older than us).
    e.apply(&mut s, update("eu", vv(&[("eu", 2)]), 20, base, json!({"id":1,"email":"b@x","phone":"1","city":"Bergen"})));
    let r = e.resolve(&s);
    assert_eq!(r.winner, None, "field-lww has no row-level winner");
    assert!(r.conflict());
    assert_eq!(Value::Object(r.row.unwrap().into_owned()), json!({"id":1,"email":"b@x","phone":"2","city":"Rome"}));
}

#[test]
fn field_lww_row_stale_event_still_writes_its_fields() {
    let e = engine(Policy::FieldLww, DeletePolicy::Lww);
    // Carried clocks: b = {eu:1,us:1} dominates a = {eu:1}, but b did not
    // change `email` (its before == after there), while a did.
    let a = update("eu", vv(&[("eu", 1)]), 10, json!({"id":1,"email":"old"}), json!({"id":1,"email":"new"}));
    let b =
        update("us", vv(&[("eu", 1), ("us", 1)]), 20, json!({"id":1,"email":"old","n":1}), json!({"id":1,"email":"old","n":2}));
    let mut s1 = KeyState::default();
    e.apply(&mut s1, a.clone());
    e.apply(&mut s1, b.clone());
    let mut s2 = KeyState::default();
    e.apply(&mut s2, b);
    assert_eq!(e.apply(&mut s2, a), Applied::Changed, "stale at row level but its field write is new");
    assert_eq!(s2.versions.len(), 1);
    assert_eq!(out(&e, &s1), out(&e, &s2));
    // The base is b's full after image, so `id` is there although neither
    // event's column writes carry it (neither changed it).
    assert_eq!(out(&e, &s1).unwrap(), json!({"id":1,"email":"new","n":2}));
}

/// Issue 10's skeleton row: one region deletes, another concurrently updates
/// one column, and the update survives. The delete hides every column write
/// it followed, so the visible writes are that one column; the row is the
/// surviving writer's full after image with the visible winners on top.
#[test]
fn field_lww_surviving_update_after_a_concurrent_delete_is_a_full_row() {
    let created = json!({"id":20,"name":"us-93","email":"old@eu","tier":"pro","balance":0});
    let mut updated = created.clone();
    updated["email"] = json!("807@us");
    for (deletes, ts_del) in [(DeletePolicy::UpdateWins, 5), (DeletePolicy::Lww, 2)] {
        let mut e = engine(Policy::FieldLww, deletes);
        e.settings.clock_field = Some("_vv".into());
        let events = [
            upsert("eu", vv(&[("eu", 1)]), 1, created.clone()),
            update("us", vv(&[("eu", 1), ("us", 1)]), 3, created.clone(), updated.clone()),
            delete("eu", vv(&[("eu", 2)]), ts_del),
        ];
        for order in [[0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 2, 0]] {
            let mut s = KeyState::default();
            for i in order {
                e.apply(&mut s, events[i].clone());
            }
            let mut expect = updated.clone();
            expect["_vv"] = json!(r#"{"eu":2,"us":1}"#);
            assert_eq!(out(&e, &s), Some(expect), "{deletes:?} order {order:?}");
        }
    }
}

#[test]
fn field_lww_visible_column_winners_are_laid_over_the_base() {
    let e = engine(Policy::FieldLww, DeletePolicy::UpdateWins);
    let mut s = KeyState::default();
    let created = json!({"id":1,"a":"a0","b":"b0","c":"c0"});
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, created.clone()));
    // us saw the create and changes `a`; ap saw it too and changes `b`
    // later; eu concurrently deletes the row.
    let (us, ap) = (json!({"id":1,"a":"a1","b":"b0","c":"c0"}), json!({"id":1,"a":"a0","b":"b2","c":"c0"}));
    e.apply(&mut s, update("us", vv(&[("eu", 1), ("us", 1)]), 3, created.clone(), us));
    e.apply(&mut s, update("ap", vv(&[("eu", 1), ("ap", 1)]), 4, created, ap));
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 2));
    // The base is ap's image (the later existing version); us's visible
    // write of `a` is laid over it; `c` comes from the base alone.
    assert_eq!(out(&e, &s), Some(json!({"id":1,"a":"a1","b":"b2","c":"c0"})));
}

#[test]
fn field_lww_recreated_row_does_not_resurrect_deleted_columns() {
    let e = engine(Policy::FieldLww, DeletePolicy::Lww);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"old":"x"})));
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 2));
    assert!(e.resolve(&s).row.is_none());
    e.apply(&mut s, upsert("eu", vv(&[("eu", 3)]), 3, json!({"id":1,"new":"y"})));
    assert_eq!(out(&e, &s).unwrap(), json!({"id":1,"new":"y"}));
}

fn with_rules(mut e: MergeEngine, rules: &[(&str, ColumnRule)]) -> MergeEngine {
    e.settings.columns = rules.iter().map(|(c, r)| (c.to_string(), r.clone())).collect();
    e
}

fn owner(source: &str) -> ColumnRule {
    ColumnRule::Owner { source: source.into() }
}

#[test]
fn owner_column_takes_the_owners_latest_write_even_when_another_source_saw_it() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("email", owner("crm"))]);
    let mut s = KeyState::default();
    let r0 = json!({"id":1,"email":"a@crm","tier":"free"});
    assert_eq!(e.apply_reported(&mut s, upsert("crm", vv(&[("crm", 1)]), 1, r0.clone())).foreign_owner_writes, 0);
    // eu saw crm's write, then changes both columns: its tier counts, its
    // email is ignored although its clock dominates crm's.
    let r1 = json!({"id":1,"email":"b@eu","tier":"pro"});
    let report = e.apply_reported(&mut s, update("eu", vv(&[("crm", 1), ("eu", 1)]), 2, r0, r1));
    assert_eq!(report, ApplyReport { applied: Applied::Changed, foreign_owner_writes: 1, refused: None });
    assert_eq!(out(&e, &s), Some(json!({"id":1,"email":"a@crm","tier":"pro"})));
    // Without the rule, eu's causally later email wins.
    let plain = engine(Policy::FieldLww, DeletePolicy::Lww);
    let mut t = KeyState::default();
    plain.apply(&mut t, upsert("crm", vv(&[("crm", 1)]), 1, json!({"id":1,"email":"a@crm"})));
    plain.apply(
        &mut t,
        update("eu", vv(&[("crm", 1), ("eu", 1)]), 2, json!({"id":1,"email":"a@crm"}), json!({"id":1,"email":"b@eu"})),
    );
    assert_eq!(out(&plain, &t).unwrap()["email"], json!("b@eu"));
}

#[test]
fn owner_column_falls_back_to_any_source_while_the_owner_has_not_written() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("email", owner("crm"))]);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"email":"x@eu"})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 2, json!({"id":1,"email":"x@us"})));
    assert_eq!(out(&e, &s).unwrap()["email"], json!("x@us"), "latest write of any source");
    e.apply(&mut s, update("crm", vv(&[("crm", 1)]), 0, json!({"id":1}), json!({"id":1,"email":"x@crm"})));
    assert_eq!(out(&e, &s).unwrap()["email"], json!("x@crm"), "the owner's write, although older");
}

#[test]
fn max_and_min_columns_keep_the_extremes_ever_written() {
    let e = with_rules(
        engine(Policy::FieldLww, DeletePolicy::Lww),
        &[("last", ColumnRule::Max), ("first", ColumnRule::Min), ("name", ColumnRule::Max)],
    );
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"last":5,"first":5,"name":"b"})));
    let before = json!({"id":1,"last":5,"first":5,"name":"b"});
    // A causally later write of smaller/larger values does not move them.
    e.apply(&mut s, update("eu", vv(&[("eu", 2)]), 2, before, json!({"id":1,"last":3,"first":9,"name":"a"})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 3, json!({"id":1,"last":4.5,"first":null,"name":"ab"})));
    assert_eq!(out(&e, &s), Some(json!({"id":1,"last":5,"first":5,"name":"b"})));
    e.apply(&mut s, upsert("us", vv(&[("us", 2)]), 4, json!({"id":1,"last":7,"first":1,"name":"c"})));
    assert_eq!(out(&e, &s), Some(json!({"id":1,"last":7,"first":1,"name":"c"})));
    // us's 4.5 is gone (its later 7 is larger); eu's later 3 stays, for
    // when a delete that saw eu's 5 but not its 3 hides the 5.
    let kept: Vec<&Value> = s.fields.as_ref().unwrap().fields["last"].iter().map(|w| &w.value).collect();
    assert_eq!(kept, [&json!(7), &json!(3), &json!(5)]);
}

#[test]
fn max_column_after_a_delete_shows_only_writes_the_delete_did_not_see() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::UpdateWins), &[("last", ColumnRule::Max)]);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"last":9})));
    // us saw the row and lowers `last` (max keeps 9); eu then deletes
    // concurrently with us's write: 9 is gone with the row, 2 survives.
    e.apply(&mut s, update("us", vv(&[("eu", 1), ("us", 1)]), 3, json!({"id":1,"last":9}), json!({"id":1,"last":2})));
    assert_eq!(out(&e, &s).unwrap()["last"], json!(9));
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 2));
    assert_eq!(out(&e, &s), Some(json!({"id":1,"last":2})));
}

#[test]
fn union_column_is_an_add_wins_observed_remove_set() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("tags", ColumnRule::Union)]);
    let events = [
        upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"tags":["b","a"]})),
        // us saw eu's row: removes `a` (seen), adds `c`.
        update("us", vv(&[("eu", 1), ("us", 1)]), 2, json!({"id":1,"tags":["b","a"]}), json!({"id":1,"tags":["b","c"]})),
        // ap never saw eu's `a`, adds its own `a` concurrently: it survives.
        upsert("ap", vv(&[("ap", 1)]), 3, json!({"id":1,"tags":["a","d"]})),
    ];
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]] {
        let mut s = KeyState::default();
        for i in order {
            e.apply(&mut s, events[i].clone());
        }
        assert_eq!(out(&e, &s).unwrap()["tags"], json!(["a", "b", "c", "d"]), "order {order:?}");
        // Without ap's concurrent add, us's removal of `a` holds.
        let mut t = KeyState::default();
        for i in order.into_iter().filter(|i| *i != 2) {
            e.apply(&mut t, events[i].clone());
        }
        assert_eq!(out(&e, &t).unwrap()["tags"], json!(["b", "c"]), "order {order:?}");
    }
    // A removal by a source that had seen every addition empties the set.
    let mut s = KeyState::default();
    for ev in &events {
        e.apply(&mut s, ev.clone());
    }
    let seen_all = vv(&[("eu", 1), ("us", 1), ("ap", 2)]);
    e.apply(&mut s, update("ap", seen_all, 4, json!({"id":1,"tags":["a","b","c","d"]}), json!({"id":1,"tags":null})));
    assert_eq!(out(&e, &s).unwrap()["tags"], json!([]));
}

#[test]
fn union_column_sent_as_json_text_stays_json_text() {
    // Debezium sends a jsonb column as a string holding the JSON.
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("tags", ColumnRule::Union)]);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"tags":"[\"x\", \"y\"]"})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 2, json!({"id":1,"tags":"[2, \"x\"]"})));
    assert_eq!(out(&e, &s).unwrap()["tags"], json!(r#"[2,"x","y"]"#));
    // A string that is not an array is one element.
    e.apply(&mut s, upsert("ap", vv(&[("ap", 1)]), 3, json!({"id":1,"tags":["[z"]})));
    assert_eq!(out(&e, &s).unwrap()["tags"], json!([2, "[z", "x", "y"]), "the base (ap's) holds an array");
}

#[test]
fn union_column_written_only_empty_stays_in_a_row_whose_base_lacks_it() {
    // eu creates the row with no tags; us concurrently creates it without
    // the column at all and wins the row's base (later commit). eu's `[]`
    // added nothing, yet the column was written: it must not vanish.
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("tags", ColumnRule::Union)]);
    let events = [
        upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"tags":[]})),
        upsert("us", vv(&[("us", 1)]), 2, json!({"id":1,"name":"x"})),
        upsert("ap", vv(&[("ap", 1)]), 0, json!({"id":1,"tags":"[]"})),
    ];
    for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]] {
        let mut s = KeyState::default();
        for i in order.into_iter().filter(|i| *i != 2) {
            e.apply(&mut s, events[i].clone());
        }
        assert_eq!(out(&e, &s), Some(json!({"id":1,"name":"x","tags":[]})), "order {order:?}");
        let mut t = KeyState::default();
        for i in order {
            e.apply(&mut t, events[i].clone());
        }
        assert_eq!(out(&e, &t), Some(json!({"id":1,"name":"x","tags":[]})), "order {order:?}");
    }
    // A delete that saw eu's empty write hides it: the column goes back to the base.
    let mut s = KeyState::default();
    e.apply(&mut s, events[0].clone());
    e.apply(&mut s, events[1].clone());
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 0));
    assert_eq!(out(&e, &s), Some(json!({"id":1,"name":"x"})));
}

#[test]
fn union_column_after_a_delete_keeps_only_unseen_additions() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::UpdateWins), &[("tags", ColumnRule::Union)]);
    let mut s = KeyState::default();
    let r0 = json!({"id":1,"tags":["x"]});
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, r0.clone()));
    e.apply(&mut s, update("us", vv(&[("eu", 1), ("us", 1)]), 2, r0, json!({"id":1,"tags":["x","y"]})));
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 3));
    // eu's `x` went with its delete; us's concurrent `y` survives.
    assert_eq!(out(&e, &s), Some(json!({"id":1,"tags":["y"]})));
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

#[test]
fn counter_column_adds_up_concurrent_deltas() {
    let e = counter_engine(DeletePolicy::Lww, false);
    let r0 = json!({"id":1,"points":100});
    let events = [
        upsert("eu", vv(&[("eu", 1)]), 1, r0.clone()),
        update("eu", vv(&[("eu", 2)]), 3, r0.clone(), json!({"id":1,"points":110})),
        update("eu", vv(&[("eu", 3)]), 5, json!({"id":1,"points":110}), json!({"id":1,"points":109})),
        // us holds the same row (inserted there too: one initial value, not two).
        upsert("us", vv(&[("us", 1)]), 2, r0.clone()),
        update("us", vv(&[("us", 2)]), 4, r0, json!({"id":1,"points":105})),
    ];
    let s = in_every_order(&e, &events, json!({"id":1,"points":114}));
    // Derived clocks: a source's deltas are summed into one entry.
    let counter = &s.fields.as_ref().unwrap().counters["points"];
    assert_eq!(counter.tallies["eu"].deltas, [Delta { at: 3, amount: "9".into() }]);
    // A redelivery adds nothing.
    let mut t = s.clone();
    assert_eq!(e.apply(&mut t, events[1].clone()), Applied::Stale);
    assert_eq!(t, s);
    // Without the rule the latest write wins: 109.
    let plain = engine(Policy::FieldLww, DeletePolicy::Lww);
    let mut p = KeyState::default();
    for ev in &events {
        plain.apply(&mut p, ev.clone());
    }
    assert_eq!(out(&plain, &p).unwrap()["points"], json!(109));
}

#[test]
fn counter_column_does_not_count_echoes_of_merged_records_under_carried_clocks() {
    // eu inserts with 0 points. us applies the merged record (an echo: its
    // own entry does not advance), then adds 5. eu applies the merged 5 (an
    // echo again, an update 0 -> 5), then adds 2. The value is 7; counting
    // every after - before would give 12.
    let e = counter_engine(DeletePolicy::Lww, true);
    let events = [
        upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"points":0})),
        upsert("us", vv(&[("eu", 1)]), 2, json!({"id":1,"points":0})),
        update("us", vv(&[("eu", 1), ("us", 1)]), 3, json!({"id":1,"points":0}), json!({"id":1,"points":5})),
        update("eu", vv(&[("eu", 1), ("us", 1)]), 4, json!({"id":1,"points":0}), json!({"id":1,"points":5})),
        update("eu", vv(&[("eu", 2), ("us", 1)]), 5, json!({"id":1,"points":5}), json!({"id":1,"points":7})),
        // A concurrent increment by ap, which saw only eu's insert.
        update("ap", vv(&[("eu", 1), ("ap", 1)]), 6, json!({"id":1,"points":0}), json!({"id":1,"points":10})),
    ];
    in_every_order(&e, &events[..5], json!({"id":1,"points":7}));
    in_every_order(&e, &events, json!({"id":1,"points":17}));
}

#[test]
fn counter_column_after_a_delete_keeps_only_unseen_deltas_and_a_recreate_starts_afresh() {
    let e = counter_engine(DeletePolicy::UpdateWins, true);
    let r0 = json!({"id":1,"points":10});
    let events = [
        upsert("eu", vv(&[("eu", 1)]), 1, r0.clone()),
        update("eu", vv(&[("eu", 2)]), 2, r0.clone(), json!({"id":1,"points":15})),
        // us saw the insert (not eu's +5) and adds 4; eu then deletes, not
        // having seen us's +4: the insert and eu's +5 go, us's +4 stays.
        update("us", vv(&[("eu", 1), ("us", 1)]), 3, r0, json!({"id":1,"points":14})),
        delete("eu", vv(&[("eu", 3)]), 4),
    ];
    in_every_order(&e, &events, json!({"id":1,"points":4}));
    // eu re-creates the row with 3 points: the new insert is the initial value.
    let mut all = events.to_vec();
    all.push(upsert("eu", vv(&[("eu", 4)]), 5, json!({"id":1,"points":3})));
    in_every_order(&e, &all, json!({"id":1,"points":7}));
}

#[test]
fn counter_column_sums_decimals_exactly_and_keeps_integers_integers() {
    let e = counter_engine(DeletePolicy::Lww, false);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"points":0.1})));
    e.apply(&mut s, update("eu", vv(&[("eu", 2)]), 2, json!({"id":1,"points":0.1}), json!({"id":1,"points":0.3})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 0, json!({"id":1,"points":5})));
    e.apply(&mut s, update("us", vv(&[("us", 2)]), 3, json!({"id":1,"points":5}), json!({"id":1,"points":5.1})));
    // 0.1 + 0.2 + 0.1, exactly (in doubles 0.1 + 0.2 is 0.30000000000000004).
    assert_eq!(out(&e, &s).unwrap()["points"], json!(0.4));
    let mut t = KeyState::default();
    e.apply(&mut t, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"points":9007199254740993u64})));
    e.apply(&mut t, update("us", vv(&[("us", 1)]), 2, json!({"id":1,"points":0}), json!({"id":1,"points":2})));
    assert_eq!(out(&e, &t).unwrap()["points"], json!(9007199254740995u64), "past 2^53: exact");
    // Decimal text (Debezium's decimal.handling.mode=string) stays text.
    let mut u = KeyState::default();
    e.apply(&mut u, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"points":"10.50"})));
    e.apply(&mut u, update("us", vv(&[("us", 1)]), 2, json!({"id":1,"points":"10.50"}), json!({"id":1,"points":"11.25"})));
    assert_eq!(out(&e, &u).unwrap()["points"], json!("11.25"));
}

#[test]
fn counter_column_refuses_non_numbers_and_updates_without_before_images() {
    let e = counter_engine(DeletePolicy::Lww, false);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"points":1})));
    let kept = s.clone();
    let refused = |s: &mut KeyState, ev: ChangeEvent| {
        let report = e.apply_reported(s, ev);
        assert_eq!(report.applied, Applied::Refused);
        report.refused.unwrap()
    };
    let r = refused(&mut s, update("eu", vv(&[("eu", 2)]), 2, json!({"id":1,"points":1}), json!({"id":1,"points":"lots"})));
    assert_eq!(r.reason(), "counter_not_numeric");
    assert!(r.to_string().contains("column `points` has rule \"counter\" but the after image holds \"lots\""), "{r}");
    // An update without a before image (REPLICA IDENTITY DEFAULT): Debezium sends none.
    let r = refused(&mut s, upsert("eu", vv(&[("eu", 3)]), 3, json!({"id":1,"points":4})));
    assert_eq!(r.reason(), "counter_needs_before");
    assert!(r.to_string().contains("REPLICA IDENTITY FULL"), "{r}");
    let r = refused(&mut s, update("eu", vv(&[("eu", 4)]), 4, json!({"id":1}), json!({"id":1,"points":4})));
    assert!(r.to_string().contains("the update's before image lacks the column"), "{r}");
    assert_eq!(s, kept, "a refused event changes nothing");
    // The source's next good update counts as usual.
    e.apply(&mut s, update("eu", vv(&[("eu", 5)]), 5, json!({"id":1,"points":1}), json!({"id":1,"points":3})));
    assert_eq!(out(&e, &s).unwrap()["points"], json!(3));
    let explained = e.explain(&s).into_iter().find(|w| w.column == "points").unwrap();
    assert_eq!(
        (explained.rule, explained.why),
        ("counter", "the initial value (latest visible insert) plus every source's counted deltas (after - before)")
    );
    // An insert after the source's own delete is a re-create, not a refusal.
    e.apply(&mut s, delete("eu", vv(&[("eu", 6)]), 6));
    assert_eq!(e.apply(&mut s, upsert("eu", vv(&[("eu", 7)]), 7, json!({"id":1,"points":8}))), Applied::Changed);
    assert_eq!(out(&e, &s).unwrap()["points"], json!(8));
}

#[test]
fn explain_names_each_columns_rule_deciding_write_and_reason() {
    let rules = [("email", owner("crm")), ("tier", owner("crm")), ("last", ColumnRule::Max), ("tags", ColumnRule::Union)];
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::UpdateWins), &rules);
    let mut s = KeyState::default();
    let r0 = json!({"id":1,"email":"a@crm","tier":"free","last":3,"tags":["x"],"note":"n"});
    e.apply(&mut s, upsert("crm", vv(&[("crm", 1)]), 1, r0.clone()));
    let r1 = json!({"id":1,"email":"a@crm","tier":"free","last":5,"tags":["x"],"note":"m"});
    e.apply(&mut s, update("eu", vv(&[("crm", 1), ("eu", 1)]), 2, r0, r1));
    let explained = e.explain(&s);
    let why: Vec<(&str, &str, Option<&str>, &str)> =
        explained.iter().map(|w| (w.column.as_str(), w.rule, w.source.as_deref(), w.why)).collect();
    assert_eq!(
        why,
        [
            ("email", "owner", Some("crm"), "the owner's latest write"),
            ("id", "lww", Some("crm"), "latest write (lww order)"),
            ("last", "max", Some("eu"), "largest value written"),
            ("note", "lww", Some("eu"), "latest write (lww order)"),
            ("tags", "union", None, "union of the additions no removal had seen"),
            ("tier", "owner", Some("crm"), "the owner's latest write"),
        ]
    );
    // After a concurrent delete by crm, its writes are hidden: eu's base shows.
    e.apply(&mut s, delete("crm", vv(&[("crm", 2)]), 3));
    let email = e.explain(&s).into_iter().find(|w| w.column == "email").unwrap();
    assert_eq!((email.source.as_deref(), email.why), (Some("eu"), "the row's base: a delete hides every write of this column"));
    assert!(engine(Policy::Lww, DeletePolicy::Lww).explain(&s).is_empty());
}

#[test]
fn value_order_is_total_and_null_loses() {
    use std::cmp::Ordering::*;
    for (a, b, want) in [
        (json!(2), json!(10), Less),
        (json!(-1), json!(18446744073709551615u64), Less),
        (json!(1.5), json!(1), Greater),
        (json!(1), json!(1.0), Less), // equal numbers: canonical text decides
        (json!("b"), json!("ab"), Greater),
        (json!(999), json!("1"), Less), // numbers before strings
        (json!(true), json!(false), Greater),
    ] {
        assert_eq!(value_rank(&ColumnRule::Max, &a, &b), want, "{a} vs {b}");
        assert_eq!(value_rank(&ColumnRule::Min, &a, &b), want.reverse(), "{a} vs {b}");
    }
    assert_eq!(value_rank(&ColumnRule::Max, &json!(null), &json!(-5)), Less);
    assert_eq!(value_rank(&ColumnRule::Min, &json!(null), &json!(-5)), Less);
}

#[test]
fn same_json_is_equality_of_canonical_text() {
    let text_eq = |a: &Value, b: &Value| serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap();
    let values = [
        json!(0.0),
        json!(-0.0),
        json!(1),
        json!(1.0),
        json!(-1),
        json!(u64::MAX),
        json!("1"),
        json!([0.0, {"a": -0.0}]),
        json!([-0.0, {"a": -0.0}]),
        json!([0.0, {"a": 0.0}]),
        json!({"a": 1, "b": [true, null]}),
        json!({"a": 1, "b": [true, null], "c": 2}),
        json!({"a": 1.0, "b": [true, null]}),
        json!(null),
    ];
    for a in &values {
        for b in &values {
            assert_eq!(same_json(a, b), text_eq(a, b), "{a} vs {b}");
        }
    }
}

#[test]
fn merged_clock_conflict_and_siblings() {
    let e = lww();
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 4)]), 1, json!({"id":1})));
    let r = e.resolve(&s);
    assert!(!r.conflict());
    assert_eq!(r.siblings, 1);
    e.apply(&mut s, upsert("us", vv(&[("us", 9)]), 2, json!({"id":1})));
    let r = e.resolve(&s);
    assert!(r.conflict());
    assert_eq!(r.siblings, 2);
    assert_eq!(r.vv.to_json(), r#"{"eu":4,"us":9}"#);
}

#[test]
fn tombstones_expire_after_retention() {
    let e = lww();
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1_000, json!({"id":1})));
    assert!(!e.tombstone_expired(&s, 1_000_000));
    e.apply(&mut s, delete("eu", vv(&[("eu", 2)]), 2_000));
    assert!(!e.tombstone_expired(&s, 2_500));
    assert!(e.tombstone_expired(&s, 3_001));
}

#[test]
fn state_round_trips_through_json() {
    let e = engine(Policy::FieldLww, DeletePolicy::Lww);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"a":1})));
    e.apply(&mut s, delete("us", vv(&[("us", 1)]), 2));
    let text = serde_json::to_string(&s).unwrap();
    let back: KeyState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
}

// ---------------------------------------------------------------------------
// Convergence: any interleaving that keeps each source's order gives the same
// state and the same merged output.

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

#[test]
fn field_lww_stores_each_writing_event_once() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("last", ColumnRule::Max)]);
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"name":"a","last":5})));
    e.apply(&mut s, upsert("us", vv(&[("us", 1)]), 2, json!({"id":1,"name":"b","last":3})));
    // Changes `name` only: eu's first event still wrote the latest `id` and `last` of eu.
    e.apply(&mut s, update("eu", vv(&[("eu", 2)]), 3, json!({"id":1,"name":"a","last":5}), json!({"id":1,"name":"c","last":5})));
    // The events the writes point at, newest first, and each column's
    // writers, winner first; each event is one stamp.
    let stamps = |s: &KeyState| {
        let f = s.fields.as_ref().unwrap();
        let event = |w: &ColumnWrite| (f.stamps[w.stamp].source.clone(), f.stamps[w.stamp].ts);
        let live: BTreeSet<usize> = f.fields.values().flatten().map(|w| w.stamp).collect();
        let mut events: Vec<(String, i64)> = live.iter().map(|&i| (f.stamps[i].source.clone(), f.stamps[i].ts)).collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.1));
        let distinct: BTreeSet<&(String, i64)> = events.iter().collect();
        assert_eq!(distinct.len(), events.len(), "one stamp per event: {:?}", f.stamps);
        let columns: BTreeMap<String, Vec<(String, i64)>> =
            f.fields.iter().map(|(c, ws)| (c.clone(), ws.iter().map(event).collect())).collect();
        (events, columns)
    };
    let at = |source: &str, ts: i64| (source.to_string(), ts);
    let (events, columns) = stamps(&s);
    assert_eq!(events, [at("eu", 3), at("us", 2), at("eu", 1)]);
    assert_eq!(columns["name"], [at("eu", 3), at("us", 2)]);
    assert_eq!(columns["id"], [at("us", 2), at("eu", 1)]);
    assert_eq!(columns["last"], [at("us", 2), at("eu", 1)]);
    assert_eq!(out(&e, &s), Some(json!({"id":1,"name":"c","last":5})));
    // A full image from eu supersedes both of eu's earlier events in every
    // column: only its stamp and us's are pointed at.
    e.apply(&mut s, upsert("eu", vv(&[("eu", 3)]), 4, json!({"id":1,"name":"d","last":6})));
    let (events, columns) = stamps(&s);
    assert_eq!(events, [at("eu", 4), at("us", 2)]);
    assert!(columns.values().all(|ws| ws == &[at("eu", 4), at("us", 2)]), "{columns:?}");
    assert_eq!(out(&e, &s), Some(json!({"id":1,"name":"d","last":6})));
    // The legacy JSON form spells every column write out, and reads back to
    // the same stamps.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["fields"]["fields"]["name"][1], json!({"source":"us","vv":{"us":1},"ts":2,"value":"b"}));
    assert_eq!(serde_json::from_value::<KeyState>(json).unwrap(), s);
    // The stamps nothing points at any more stay as free slots, and the
    // next event's stamp takes one instead of adding a slot.
    let slots = s.fields.as_ref().unwrap().stamps.len();
    e.apply(&mut s, upsert("us", vv(&[("us", 2)]), 5, json!({"id":1,"name":"e","last":7})));
    assert_eq!(stamps(&s).0, [at("us", 5), at("eu", 4)]);
    assert_eq!(s.fields.as_ref().unwrap().stamps.len(), slots);
    assert_eq!(out(&e, &s), Some(json!({"id":1,"name":"e","last":7})));
}

proptest! {
    /// The merged clock's text, written straight from the versions' clocks,
    /// is the text of the joined clock: the same sources, each with its
    /// largest counter, in the same order and escaping.
    #[test]
    fn the_merged_clock_text_is_the_joined_clocks_text(
        clocks in prop::collection::vec(prop::collection::vec(("[a-c\"\\\\é]{0,3}", any::<u64>()), 0..4), 0..5),
    ) {
        let versions: Vec<Version> = clocks
            .into_iter()
            .map(|entries| Version {
                source: "s".into(),
                vv: entries.into_iter().collect(),
                ts: 0,
                op: Op::Delete,
                row: None,
            })
            .collect();
        let merged = MergedClock::of(&versions);
        let mut joined = VersionVector::new();
        for v in &versions {
            joined.join(&v.vv);
        }
        prop_assert_eq!(merged.to_json(), joined.to_json());
        prop_assert_eq!(merged.to_vv(), joined);
    }
}

/// JSON values with the spellings that compare equal or nearly:
/// integers and floats of one value, both zeros, repeated strings, nesting.
fn close_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..3).prop_map(Value::from),
        prop::sample::select(vec![-0.0, 0.0, 1.0, 2.5, -2.0, 1e300]).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        prop::sample::select(vec!["a", "b", "1", ""]).prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[ab]", inner), 0..3).prop_map(|e| Value::Object(e.into_iter().collect())),
        ]
    })
}

proptest! {
    /// The `union` rule looks elements up in lists sorted by `value_cmp`:
    /// that order must hold two values equal exactly when `same_json` does.
    #[test]
    fn value_order_equality_is_same_json(a in close_values(), b in close_values()) {
        prop_assert_eq!(value_cmp(&a, &b) == std::cmp::Ordering::Equal, same_json(&a, &b), "{} against {}", a, b);
        prop_assert_eq!(value_cmp(&a, &b), value_cmp(&b, &a).reverse());
    }
}

#[test]
fn union_column_of_thousands_of_elements_moves_one_element_per_update() {
    let e = with_rules(engine(Policy::FieldLww, DeletePolicy::Lww), &[("tags", ColumnRule::Union)]);
    let tags = |range: std::ops::Range<u32>| Value::Array(range.map(|i| json!(format!("t{i:05}"))).collect());
    let mut s = KeyState::default();
    e.apply(&mut s, upsert("eu", vv(&[("eu", 1)]), 1, json!({"id":1,"tags":tags(0..3000)})));
    // Each region in turn saw everything so far, drops the lowest tag and
    // adds the next one; the integers 1 and 1.0 are two elements.
    let mut clock = vv(&[("eu", 1)]);
    for step in 0..30u32 {
        let source = ["eu", "us", "ap"][step as usize % 3];
        let own = clock.get(source) + 1;
        clock.set(source, own);
        let mut before = tags(step..3000 + step);
        let mut after = tags(step + 1..3001 + step);
        if step == 29 {
            before.as_array_mut().unwrap().push(json!(1));
            after.as_array_mut().unwrap().extend([json!(1), json!(1.0)]);
        }
        let ts = 2 + i64::from(step);
        e.apply(&mut s, update(source, clock.clone(), ts, json!({"id":1,"tags":before}), json!({"id":1,"tags":after})));
    }
    let mut want = tags(30..3030).as_array().unwrap().clone();
    want.splice(0..0, [json!(1.0)]);
    assert_eq!(out(&e, &s).unwrap()["tags"], Value::Array(want));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// A `union` column's writes inserted all at once keep exactly what
    /// inserting them one by one keeps, in the same order, with the same
    /// stamps: across sources that did or did not see each other, full
    /// images, updates, deletes and redeliveries, in any order.
    #[test]
    fn union_writes_at_once_are_those_one_by_one(
        steps in prop::collection::vec((0usize..3, prop::collection::vec(0usize..6, 0..5), any::<bool>(), 0u8..4), 1..14),
        shuffle in any::<u64>(),
    ) {
        use crate::merge::fields::ONE_BY_ONE;
        let pool = [json!("a"), json!("b"), json!(1), json!(1.0), json!(["x"]), json!({"k": 1})];
        let e = with_rules(engine(Policy::FieldLww, DeletePolicy::UpdateWins), &[("tags", ColumnRule::Union)]);
        let sources = ["eu", "us", "ap"];
        let mut counters = [0u64; 3];
        let mut images: [Option<Value>; 3] = [None, None, None];
        let mut events: Vec<ChangeEvent> = Vec::new();
        for (i, (si, tags, saw, kind)) in steps.into_iter().enumerate() {
            if kind == 3 {
                if let Some(last) = events.last().cloned() {
                    events.push(last); // a redelivery
                }
                continue;
            }
            counters[si] += 1;
            let mut clock = VersionVector::single(sources[si], counters[si]);
            if saw {
                for (oi, other) in sources.iter().enumerate() {
                    if oi != si && counters[oi] > 0 {
                        clock.set(other, counters[oi]);
                    }
                }
            }
            let ts = i as i64 + 1;
            let after = json!({"id": 1, "tags": tags.iter().map(|t| pool[*t].clone()).collect::<Vec<_>>()});
            let ev = match (kind, images[si].take()) {
                (2, _) => delete(sources[si], clock, ts),
                (1, Some(before)) => update(sources[si], clock, ts, before, after.clone()),
                _ => upsert(sources[si], clock, ts, after.clone()),
            };
            if kind != 2 {
                images[si] = Some(after);
            }
            events.push(ev);
        }
        // Applied in any order (a causally later write may come first).
        let mut seed = shuffle;
        for i in (1..events.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            events.swap(i, (seed >> 33) as usize % (i + 1));
        }
        let run = |one_by_one: bool| {
            ONE_BY_ONE.with(|c| c.set(one_by_one));
            let mut s = KeyState::default();
            let applied: Vec<Applied> = events.iter().map(|ev| e.apply(&mut s, ev.clone())).collect();
            ONE_BY_ONE.with(|c| c.set(false));
            let row = out(&e, &s);
            // The stamps' use counts too (equal states ignore them).
            let uses = s.fields.as_ref().map(|f| (f.uses.clone(), f.stamps.clone()));
            (applied, s, row, uses)
        };
        prop_assert_eq!(run(false), run(true));
    }
}
