//! The column rules: `owner`, `max`/`min`, `union`, `counter`, and why each
//! column shows its value.

use super::*;

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
