//! `field-lww`'s column state: disjoint and contested columns, row-stale
//! events, the row's base after deletes, one stamp per writing event.

use super::*;

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
