//! Row-level policies (`lww`, `source-priority`), deletes, the merged clock,
//! tombstones and the state's JSON form.

use super::*;

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
