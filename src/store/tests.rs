use super::*;
use crate::merge::{Op, Version, VersionVector};

fn state(n: u64) -> KeyState {
    KeyState {
        versions: vec![Version {
            source: "eu".into(),
            vv: VersionVector::single("eu", n),
            ts: n as i64,
            op: Op::Delete,
            row: None,
        }],
        fields: None,
    }
}

#[test]
fn a_state_dir_in_use_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let _held = StateDb::open(dir.path()).unwrap();
    let e = StateDb::open(dir.path()).err().expect("a second open fails").to_string();
    assert!(e.contains("is locked: another tributary instance") && e.contains(&dir.path().display().to_string()), "{e}");
}

#[test]
fn writes_reach_disk_only_on_commit_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(3).unwrap();
        assert_eq!(t.checkpoint(), 0);
        t.update("k1", |s| *s = state(1)).unwrap();
        t.update("k2", |s| *s = state(2)).unwrap();
        t.abort();
        assert_eq!(t.get("k1").unwrap(), None, "an abort drops the cache");
        t.update("k1", |s| *s = state(5)).unwrap();
        assert_eq!(t.cached("k1"), Some(&state(5)));
        t.commit(42).unwrap();
        db.persist().unwrap();
    }
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(3).unwrap();
    assert_eq!(t.checkpoint(), 42);
    assert_eq!(t.get("k1").unwrap(), Some(state(5)));
    assert_eq!(t.get("k2").unwrap(), None);
    assert_eq!(db.task(4).unwrap().checkpoint(), 0, "tasks are separate keyspaces");
}

#[test]
fn the_committed_view_ignores_the_open_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(1).unwrap();
    t.update("k", |s| *s = state(1)).unwrap();
    assert_eq!(t.get_committed("k").unwrap(), None, "not committed yet");
    t.commit(1).unwrap();
    t.update("k", |s| *s = state(2)).unwrap();
    assert_eq!(t.get_committed("k").unwrap(), Some(state(1)));
    assert_eq!(t.get("k").unwrap(), Some(state(2)));
    t.remove("k");
    assert_eq!(t.get_committed("k").unwrap(), Some(state(1)));
    t.commit(2).unwrap();
    assert_eq!(t.get_committed("k").unwrap(), None);
}

#[test]
fn sweeps_go_round_the_keyspace_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(2).unwrap();
    for i in 0..5 {
        t.update(&format!("k{i}"), |s| *s = state(i)).unwrap();
    }
    t.commit(1).unwrap();
    let odd = |s: &KeyState| s.versions[0].ts % 2 == 1;
    let mut found = t.sweep(2, odd).unwrap();
    found.extend(t.sweep(2, odd).unwrap());
    found.extend(t.sweep(2, odd).unwrap());
    assert_eq!(found, ["k1", "k3"]);
    // Wrapped around: the next sweep starts again at the beginning, and
    // the open cycle's view counts (k1 removed, k2 changed).
    t.remove("k1");
    t.update("k2", |s| s.versions[0].ts = 7).unwrap();
    assert_eq!(t.sweep(10, odd).unwrap(), ["k2", "k3"]);
}

#[test]
fn states_are_stored_avro_single_object_encoded() {
    let bytes = encode_state(&state(1));
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(decode_state(&bytes).unwrap(), state(1));
}

#[test]
fn states_stored_as_json_by_earlier_versions_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(0).unwrap();
    // The value the earlier serde_json encoding left on disk.
    t.keyspace.insert("k", serde_json::to_vec(&state(3)).unwrap()).unwrap();
    assert_eq!(t.get("k").unwrap(), Some(state(3)));
    // Updated and committed, it is rewritten in the new encoding.
    t.update("k", |s| s.versions[0].ts = 4).unwrap();
    t.commit(1).unwrap();
    let stored = t.keyspace.get("k").unwrap().unwrap();
    assert_eq!(&stored[..2], &[0xC3, 0x01]);
}

#[test]
fn restored_values_are_stored_as_they_are_and_decode_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(2).unwrap();
    t.update("old", |s| *s = state(1)).unwrap();
    t.commit(10).unwrap();
    // A restore: one new key, one key overwritten, one removed.
    t.put_restored_bytes(b"new", Some(&encode_state(&state(7)))).unwrap();
    t.put_restored_bytes(b"old", None).unwrap();
    t.put_restored_bytes(b"json", Some(serde_json::to_string(&state(3)).unwrap().as_bytes())).unwrap();
    assert_eq!(t.keyspace.get("new").unwrap(), None, "nothing is written before the commit");
    t.commit(20).unwrap();
    assert_eq!(t.checkpoint(), 20);
    assert_eq!(t.keyspace.get("new").unwrap().as_deref(), Some(encode_state(&state(7)).as_slice()), "the very bytes");
    assert_eq!(t.get("new").unwrap(), Some(state(7)));
    assert_eq!(t.get("old").unwrap(), None);
    assert_eq!(t.get("json").unwrap(), Some(state(3)), "earlier encodings are kept and read as before");
    // A value this version cannot read stops the restore, naming the key.
    let err = t.put_restored_bytes(b"bad", Some(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9])).unwrap_err();
    assert!(matches!(&err, StoreError::Decode { partition: 2, key, .. } if key == "bad"), "{err}");
    assert!(t.put_restored_bytes(b"bad", Some(b"")).is_err());
    // An abort drops restored records not yet committed.
    t.put_restored_bytes(b"gone", Some(&encode_state(&state(9)))).unwrap();
    t.abort();
    t.commit(30).unwrap();
    assert_eq!(t.get("gone").unwrap(), None);
}

#[test]
fn restores_in_several_commits_keep_the_last_value_per_key_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(1).unwrap();
        t.update("k0", |s| *s = state(1)).unwrap();
        t.commit(5).unwrap();
        // Two chunks of a restore, the later ones written above the earlier.
        for (i, n) in [(0, 2), (1, 3), (0, 4)] {
            t.put_restored_bytes(format!("k{i}").as_bytes(), Some(&encode_state(&state(n)))).unwrap();
        }
        assert!(t.restored_bytes() > 0);
        t.commit(8).unwrap();
        assert_eq!(t.restored_bytes(), 0);
        t.put_restored_bytes(b"k1", None).unwrap();
        t.put_restored_bytes(b"k2", Some(&encode_state(&state(6)))).unwrap();
        t.commit(10).unwrap();
        // Processing after the restore writes above it.
        t.update("k2", |s| *s = state(7)).unwrap();
        t.commit(11).unwrap();
        db.persist().unwrap();
    }
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(1).unwrap();
    assert_eq!(t.checkpoint(), 11);
    assert_eq!(t.get("k0").unwrap(), Some(state(4)));
    assert_eq!(t.get("k1").unwrap(), None);
    assert_eq!(t.get("k2").unwrap(), Some(state(7)));
}

#[test]
fn a_restore_keeps_the_last_record_of_keys_sharing_long_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(0).unwrap();
    let long = |i: u64| format!("{{\"id\":\"a shared prefix longer than sixteen bytes {i}\"}}");
    let short = ["a", "a\0", "a\0\0", "ab", "b", "0123456789abcdef", "0123456789abcdef\0", "0123456789abcdefg"];
    let keys: Vec<String> = short.iter().map(|k| k.to_string()).chain((0..30).map(long)).collect();
    // Each key three times, interleaved; the third value is the last.
    for round in 1..=3 {
        for (i, k) in keys.iter().enumerate() {
            let gone = round == 3 && i % 7 == 0;
            t.put_restored_bytes(k.as_bytes(), (!gone).then(|| encode_state(&state(round * 100 + i as u64))).as_deref()).unwrap();
        }
    }
    t.commit(1).unwrap();
    for (i, k) in keys.iter().enumerate() {
        let expected = (i % 7 != 0).then(|| state(300 + i as u64));
        assert_eq!(t.get(k).unwrap(), expected, "key {k:?}");
    }
}

#[test]
fn undecodable_values_are_decode_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(5).unwrap();
    t.keyspace.insert("bad", vec![0xC3, 0x01, 0x00]).unwrap();
    let err = t.get("bad").unwrap_err();
    assert!(matches!(&err, StoreError::Decode { partition: 5, key, .. } if key == "bad"), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn remembered_encodings_are_dropped_when_the_state_changes_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(0).unwrap();
    t.update("k", |s| *s = state(1)).unwrap();
    t.remember_encoded("k", encode_state(&state(1)));
    t.update("k", |s| *s = state(2)).unwrap();
    t.commit(1).unwrap();
    // From the decoded cache of committed states, then from disk.
    assert_eq!(t.get("k").unwrap(), Some(state(2)));
    let mut fresh = db.task(0).unwrap();
    assert_eq!(fresh.get("k").unwrap(), Some(state(2)), "disk holds the new state, not the remembered bytes");
    // An update after commit starts from the committed state.
    t.update("k", |s| s.versions[0].ts += 10).unwrap();
    t.abort();
    assert_eq!(t.get("k").unwrap(), Some(state(2)), "an abort falls back to the committed state");
}

#[test]
fn a_reserved_restore_batch_fills_without_growing_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut t = db.task(0).unwrap();
    let value = encode_state(&state(1));
    let n = 1000;
    t.reserve_restored(n * (value.len() + 8));
    let (at, capacity) = (t.restored.bytes.as_ptr(), t.restored.bytes.capacity());
    assert!(capacity >= n * (value.len() + 8));
    for i in 0..n {
        t.put_restored_bytes(format!("k{i:06}").as_bytes(), Some(&value)).unwrap();
    }
    // One allocation: neither moved nor grown while the batch filled.
    assert_eq!((t.restored.bytes.as_ptr(), t.restored.bytes.capacity()), (at, capacity));
    // Reserving again for what a batch already holds changes nothing.
    t.reserve_restored(10);
    assert_eq!(t.restored.bytes.capacity(), capacity);
    t.commit(n as i64).unwrap();
    assert_eq!(t.get("k000999").unwrap(), Some(state(1)));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Restored records of keys around the 16-byte head the restore sorts
    /// by (trailing zero bytes, shared heads, both sides of 16 bytes), in
    /// any order and in one or several batches: the store keeps each key's
    /// last record, as a map does.
    #[test]
    fn a_restore_keeps_the_last_record_per_key_whatever_the_keys(
        records in proptest::collection::vec(
            (proptest::collection::vec(proptest::sample::select(vec![0u8, b'a', b'b']), 1..20), proptest::option::of(0u64..1000)),
            1..200,
        ),
        batch in 1usize..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(0).unwrap();
        let mut model = std::collections::BTreeMap::new();
        for (n, (key, value)) in records.iter().enumerate() {
            t.put_restored_bytes(key, value.map(|v| encode_state(&state(v))).as_deref()).unwrap();
            model.insert(key.clone(), *value);
            if (n + 1) % batch == 0 {
                t.commit(n as i64).unwrap();
            }
        }
        t.commit(records.len() as i64).unwrap();
        for (key, value) in &model {
            let stored = t.keyspace.get(key).unwrap().map(|v| decode_state(&v).unwrap());
            proptest::prop_assert_eq!(stored, value.map(state), "key {:?}", key);
        }
        proptest::prop_assert_eq!(t.keyspace.iter().count(), model.values().filter(|v| v.is_some()).count());
    }
}

#[test]
fn events_find_recently_committed_states_in_the_decoded_cache_and_older_ones_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let one = decoded_bytes("k00", &state(1), encode_state(&state(1)).len()) + 64;
    // Room for about four states in the task's share of the cache.
    let db = StateDb::open_with_cache(dir.path(), 4 * one).unwrap();
    let mut t = db.task(0).unwrap();
    for i in 0..8 {
        t.update(&format!("k{i:02}"), |s| *s = state(i)).unwrap();
    }
    t.update("k00", |s| s.versions[0].ts = 1).unwrap(); // the open cycle's own state
    t.commit(1).unwrap();
    assert_eq!(t.take_reads(), StateReads { cycle: 1, cache: 0, store: 8 });
    for i in 8..10 {
        t.update(&format!("k{i:02}"), |s| *s = state(i)).unwrap();
    }
    t.commit(2).unwrap();
    t.take_reads();
    // The two just committed are cached, and some of the cycle before.
    for i in 0..10 {
        t.update(&format!("k{i:02}"), |s| s.versions[0].ts += 1).unwrap();
    }
    let reads = t.take_reads();
    assert_eq!(reads.cache + reads.store, 10);
    assert!((3..=4).contains(&reads.cache), "{reads:?}");
    t.abort();
    assert_eq!(t.get("k09").unwrap(), Some(state(9)), "read from disk after the abort");
}
