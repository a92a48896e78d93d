//! Tests of the key state encoding: the hand-written codec against apache-avro,
//! old schema versions and legacy JSON, and malformed input.

use std::collections::{BTreeMap, HashMap};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use proptest::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::encode::{
    op_index, write_array, write_clock, write_counter, write_field_version, write_op, write_optional_row, write_version,
};
use super::*;
use crate::avro::binary::{write_len, write_long, write_str};
use crate::merge::{
    CounterState, Delta, ElementVersions, FieldState, FieldVersion, KeyState, Op, Row, Tally, Version, VersionVector,
};

// --- Fixtures -----------------------------------------------------------

fn clock(entries: &[(&str, u64)]) -> VersionVector {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn row(value: serde_json::Value) -> Row {
    match value {
        Value::Object(map) => map,
        other => panic!("not a row: {other}"),
    }
}

fn upsert(source: &str, vv: VersionVector, ts: i64, r: serde_json::Value) -> Version {
    Version { source: source.into(), vv, ts, op: Op::Upsert, row: Some(row(r).into()) }
}

fn delete(source: &str, vv: VersionVector, ts: i64) -> Version {
    Version { source: source.into(), vv, ts, op: Op::Delete, row: None }
}

/// A state with every part of the schema populated.
fn sample() -> KeyState {
    let mut columns = BTreeMap::new();
    columns.insert(
        "name".to_string(),
        vec![
            FieldVersion { source: "eu".into(), vv: clock(&[("eu", 3)]), ts: 1_700_000_000_000, value: json!("Zoë") },
            FieldVersion { source: "us".into(), vv: clock(&[("us", 9)]), ts: 1_700_000_000_001, value: json!(null) },
        ],
    );
    columns.insert(
        "tags".to_string(),
        vec![FieldVersion { source: "eu".into(), vv: clock(&[("eu", 2)]), ts: -5, value: json!({"a": [1, 2.5, true]}) }],
    );
    KeyState {
        versions: vec![
            upsert(
                "eu",
                clock(&[("eu", 3), ("us", 1)]),
                1_700_000_000_000,
                json!({"id": 42, "name": "Zoë", "n": {"x": [1, null]}}),
            ),
            delete("us", clock(&[("us", u64::MAX)]), 1_699_999_999_999),
            upsert("ap", clock(&[]), i64::MIN, json!({})),
        ],
        fields: Some(FieldState {
            cleared: vec![clock(&[("us", 7)]), clock(&[("eu", 1), ("ap", 1)])],
            counters: sample_counters(),
            ..FieldState::with_writes(columns, sample_sets())
        }),
    }
}

fn sample_counters() -> BTreeMap<String, CounterState> {
    let create = FieldVersion { source: "eu".into(), vv: clock(&[("eu", 1)]), ts: 3, value: json!(100) };
    let tally = |seen: VersionVector, deleted: bool, deltas: &[(u64, &str)]| Tally {
        seen,
        deleted,
        deltas: deltas.iter().map(|(at, amount)| Delta { at: *at, amount: amount.to_string() }).collect(),
    };
    let mut tallies = BTreeMap::new();
    tallies.insert("eu".to_string(), tally(clock(&[("eu", 4), ("us", 2)]), false, &[(2, "-12.50"), (4, "3")]));
    tallies.insert("us".to_string(), tally(clock(&[("us", u64::MAX)]), true, &[]));
    let mut counters = BTreeMap::new();
    counters.insert("points".to_string(), CounterState { creates: vec![create], tallies });
    counters.insert("idle".to_string(), CounterState::default());
    counters
}

fn sample_sets() -> BTreeMap<String, ElementVersions> {
    let write =
        |source: &str, vv: VersionVector, value: serde_json::Value| FieldVersion { source: source.into(), vv, ts: 7, value };
    let mut sets = BTreeMap::new();
    sets.insert(
        "labels".to_string(),
        ElementVersions {
            adds: vec![write("eu", clock(&[("eu", 1)]), json!("vip")), write("us", clock(&[("us", 2)]), json!(3))],
            removes: vec![write("us", clock(&[("eu", 1), ("us", 3)]), json!("vip"))],
        },
    );
    sets.insert("empty".to_string(), ElementVersions::default());
    sets
}

// --- apache-avro's generic view of a state --------------------------------

fn avro_clock(vv: &VersionVector) -> Avro {
    Avro::Map(vv.iter().map(|(k, v)| (k.to_string(), Avro::Long(v as i64))).collect())
}

fn avro_optional(value: Option<Avro>) -> Avro {
    match value {
        None => Avro::Union(0, Box::new(Avro::Null)),
        Some(v) => Avro::Union(1, Box::new(v)),
    }
}

fn avro_version(v: &Version) -> Avro {
    Avro::Record(vec![
        ("source".into(), Avro::String(v.source.clone())),
        ("clock".into(), avro_clock(&v.vv)),
        ("ts".into(), Avro::TimestampMillis(v.ts)),
        ("op".into(), Avro::Enum(op_index(v.op) as u32, if v.op == Op::Upsert { "upsert" } else { "delete" }.into())),
        ("row".into(), avro_optional(v.row.as_ref().map(|r| Avro::String(serde_json::to_string(r).unwrap())))),
    ])
}

fn avro_field_version(w: &FieldVersion) -> Avro {
    Avro::Record(vec![
        ("source".into(), Avro::String(w.source.clone())),
        ("clock".into(), avro_clock(&w.vv)),
        ("ts".into(), Avro::TimestampMillis(w.ts)),
        ("value".into(), Avro::String(w.value.to_string())),
    ])
}

fn avro_counter(counter: &CounterState) -> Avro {
    let tally = |t: &Tally| {
        let deltas = t
            .deltas
            .iter()
            .map(|d| {
                Avro::Record(vec![("at".into(), Avro::Long(d.at as i64)), ("amount".into(), Avro::String(d.amount.clone()))])
            })
            .collect();
        Avro::Record(vec![
            ("seen".into(), avro_clock(&t.seen)),
            ("deleted".into(), Avro::Boolean(t.deleted)),
            ("deltas".into(), Avro::Array(deltas)),
        ])
    };
    Avro::Record(vec![
        ("creates".into(), Avro::Array(counter.creates.iter().map(avro_field_version).collect())),
        ("tallies".into(), Avro::Map(counter.tallies.iter().map(|(s, t)| (s.clone(), tally(t))).collect())),
    ])
}

fn from_avro_counter(value: &Avro) -> CounterState {
    let r = record(value);
    let tallies = match r["tallies"] {
        Avro::Map(m) => m
            .iter()
            .map(|(source, t)| {
                let t = record(t);
                let deltas = from_avro_array(t["deltas"])
                    .iter()
                    .map(|d| {
                        let d = record(d);
                        let Avro::Long(at) = d["at"] else { panic!("not a long: {:?}", d["at"]) };
                        Delta { at: *at as u64, amount: from_avro_string(d["amount"]).to_owned() }
                    })
                    .collect();
                let Avro::Boolean(deleted) = t["deleted"] else { panic!("not a boolean: {:?}", t["deleted"]) };
                (source.clone(), Tally { seen: from_avro_clock(t["seen"]), deleted: *deleted, deltas })
            })
            .collect(),
        other => panic!("not a map: {other:?}"),
    };
    CounterState { creates: from_avro_array(r["creates"]).iter().map(from_avro_field_version).collect(), tallies }
}

fn to_avro(state: &KeyState) -> Avro {
    let fields = state.fields.as_ref().map(|f| {
        Avro::Record(vec![
            (
                "columns".into(),
                Avro::Map(
                    f.column_versions()
                        .iter()
                        .map(|(c, ws)| (c.clone(), Avro::Array(ws.iter().map(avro_field_version).collect())))
                        .collect(),
                ),
            ),
            ("cleared".into(), Avro::Array(f.cleared.iter().map(avro_clock).collect())),
            (
                "sets".into(),
                Avro::Map(
                    f.set_versions()
                        .iter()
                        .map(|(c, set)| {
                            let set = Avro::Record(vec![
                                ("adds".into(), Avro::Array(set.adds.iter().map(avro_field_version).collect())),
                                ("removes".into(), Avro::Array(set.removes.iter().map(avro_field_version).collect())),
                            ]);
                            (c.clone(), set)
                        })
                        .collect(),
                ),
            ),
            ("counters".into(), Avro::Map(f.counters.iter().map(|(c, counter)| (c.clone(), avro_counter(counter))).collect())),
        ])
    });
    Avro::Record(vec![
        ("versions".into(), Avro::Array(state.versions.iter().map(avro_version).collect())),
        ("fields".into(), avro_optional(fields)),
    ])
}

fn record(value: &Avro) -> HashMap<&str, &Avro> {
    match value {
        Avro::Record(fields) => fields.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        other => panic!("not a record: {other:?}"),
    }
}

fn from_avro_clock(value: &Avro) -> VersionVector {
    match value {
        Avro::Map(m) => m
            .iter()
            .map(|(k, v)| match v {
                Avro::Long(n) => (k.clone(), *n as u64),
                other => panic!("not a long: {other:?}"),
            })
            .collect(),
        other => panic!("not a map: {other:?}"),
    }
}

fn from_avro_string(value: &Avro) -> &str {
    match value {
        Avro::String(s) => s,
        other => panic!("not a string: {other:?}"),
    }
}

fn from_avro_ts(value: &Avro) -> i64 {
    match value {
        Avro::TimestampMillis(ts) => *ts,
        other => panic!("not a timestamp-millis: {other:?}"),
    }
}

fn from_avro_optional(value: &Avro) -> Option<&Avro> {
    match value {
        Avro::Union(0, inner) if **inner == Avro::Null => None,
        Avro::Union(1, inner) => Some(inner),
        other => panic!("not a [null, T] union: {other:?}"),
    }
}

fn from_avro_array(value: &Avro) -> &[Avro] {
    match value {
        Avro::Array(items) => items,
        other => panic!("not an array: {other:?}"),
    }
}

fn from_avro_version(value: &Avro) -> Version {
    let r = record(value);
    Version {
        source: from_avro_string(r["source"]).to_owned(),
        vv: from_avro_clock(r["clock"]),
        ts: from_avro_ts(r["ts"]),
        op: match r["op"] {
            Avro::Enum(0, s) if s == "upsert" => Op::Upsert,
            Avro::Enum(1, s) if s == "delete" => Op::Delete,
            other => panic!("not an Op: {other:?}"),
        },
        row: from_avro_optional(r["row"]).map(|t| serde_json::from_str(from_avro_string(t)).unwrap()),
    }
}

fn from_avro_field_version(value: &Avro) -> FieldVersion {
    let r = record(value);
    FieldVersion {
        source: from_avro_string(r["source"]).to_owned(),
        vv: from_avro_clock(r["clock"]),
        ts: from_avro_ts(r["ts"]),
        value: serde_json::from_str(from_avro_string(r["value"])).unwrap(),
    }
}

fn from_avro(value: &Avro) -> KeyState {
    let r = record(value);
    let fields = from_avro_optional(r["fields"]).map(|f| {
        let f = record(f);
        let columns = match f["columns"] {
            Avro::Map(m) => {
                m.iter().map(|(c, ws)| (c.clone(), from_avro_array(ws).iter().map(from_avro_field_version).collect())).collect()
            }
            other => panic!("not a map: {other:?}"),
        };
        let writes = |v: &Avro| from_avro_array(v).iter().map(from_avro_field_version).collect();
        let sets = match f["sets"] {
            Avro::Map(m) => m
                .iter()
                .map(|(c, set)| {
                    let set = record(set);
                    (c.clone(), ElementVersions { adds: writes(set["adds"]), removes: writes(set["removes"]) })
                })
                .collect(),
            other => panic!("not a map: {other:?}"),
        };
        let counters = match f["counters"] {
            Avro::Map(m) => m.iter().map(|(c, counter)| (c.clone(), from_avro_counter(counter))).collect(),
            other => panic!("not a map: {other:?}"),
        };
        FieldState {
            cleared: from_avro_array(f["cleared"]).iter().map(from_avro_clock).collect(),
            counters,
            ..FieldState::with_writes(columns, sets)
        }
    });
    KeyState { versions: from_avro_array(r["versions"]).iter().map(from_avro_version).collect(), fields }
}

/// Reads a datum with apache-avro's generic reader; it must use every byte.
fn avro_read(datum: &[u8]) -> Avro {
    let reader = GenericDatumReader::builder(changelog_schema()).build().unwrap();
    let mut rest = datum;
    let value = reader.read_value(&mut rest).unwrap();
    assert!(rest.is_empty(), "apache-avro left {} bytes unread", rest.len());
    value
}

/// Writes a generic value with apache-avro (one positive-count block per array/map).
fn avro_write(state: &KeyState) -> Vec<u8> {
    GenericDatumWriter::builder(changelog_schema()).build().unwrap().write_value_to_vec(to_avro(state)).unwrap()
}

// serde mirror of the schema, for apache-avro's schema-aware serializer,
// which with a target block size writes several blocks with negative
// counts and byte sizes.
#[derive(Serialize)]
enum SerOp {
    #[serde(rename = "upsert")]
    Upsert,
    #[serde(rename = "delete")]
    Delete,
}

#[derive(Serialize)]
struct SerVersion {
    source: String,
    clock: BTreeMap<String, i64>,
    ts: i64,
    op: SerOp,
    row: Option<String>,
}

#[derive(Serialize)]
struct SerFieldVersion {
    source: String,
    clock: BTreeMap<String, i64>,
    ts: i64,
    value: String,
}

#[derive(Serialize)]
struct SerFieldState {
    columns: BTreeMap<String, Vec<SerFieldVersion>>,
    cleared: Vec<BTreeMap<String, i64>>,
    sets: BTreeMap<String, SerElementSet>,
    counters: BTreeMap<String, SerCounterState>,
}

#[derive(Serialize)]
struct SerCounterState {
    creates: Vec<SerFieldVersion>,
    tallies: BTreeMap<String, SerTally>,
}

#[derive(Serialize)]
struct SerTally {
    seen: BTreeMap<String, i64>,
    deleted: bool,
    deltas: Vec<SerDelta>,
}

#[derive(Serialize)]
struct SerDelta {
    at: i64,
    amount: String,
}

fn ser_counter(c: &CounterState) -> SerCounterState {
    SerCounterState {
        creates: c.creates.iter().map(ser_field_version).collect(),
        tallies: c
            .tallies
            .iter()
            .map(|(s, t)| {
                let deltas = t.deltas.iter().map(|d| SerDelta { at: d.at as i64, amount: d.amount.clone() }).collect();
                (s.clone(), SerTally { seen: ser_clock(&t.seen), deleted: t.deleted, deltas })
            })
            .collect(),
    }
}

#[derive(Serialize)]
struct SerElementSet {
    adds: Vec<SerFieldVersion>,
    removes: Vec<SerFieldVersion>,
}

fn ser_field_version(w: &FieldVersion) -> SerFieldVersion {
    SerFieldVersion { source: w.source.clone(), clock: ser_clock(&w.vv), ts: w.ts, value: w.value.to_string() }
}

#[derive(Serialize)]
struct SerKeyState {
    versions: Vec<SerVersion>,
    fields: Option<SerFieldState>,
}

fn ser_clock(vv: &VersionVector) -> BTreeMap<String, i64> {
    vv.iter().map(|(k, v)| (k.to_string(), v as i64)).collect()
}

fn ser_state(state: &KeyState) -> SerKeyState {
    SerKeyState {
        versions: state
            .versions
            .iter()
            .map(|v| SerVersion {
                source: v.source.clone(),
                clock: ser_clock(&v.vv),
                ts: v.ts,
                op: if v.op == Op::Upsert { SerOp::Upsert } else { SerOp::Delete },
                row: v.row.as_ref().map(|r| serde_json::to_string(r).unwrap()),
            })
            .collect(),
        fields: state.fields.as_ref().map(|f| SerFieldState {
            columns: f
                .column_versions()
                .iter()
                .map(|(c, ws)| {
                    let ws = ws
                        .iter()
                        .map(|w| SerFieldVersion {
                            source: w.source.clone(),
                            clock: ser_clock(&w.vv),
                            ts: w.ts,
                            value: w.value.to_string(),
                        })
                        .collect();
                    (c.clone(), ws)
                })
                .collect(),
            cleared: f.cleared.iter().map(ser_clock).collect(),
            sets: f
                .set_versions()
                .iter()
                .map(|(c, set)| {
                    let set = SerElementSet {
                        adds: set.adds.iter().map(ser_field_version).collect(),
                        removes: set.removes.iter().map(ser_field_version).collect(),
                    };
                    (c.clone(), set)
                })
                .collect(),
            counters: f.counters.iter().map(|(c, counter)| (c.clone(), ser_counter(counter))).collect(),
        }),
    }
}

/// Writes with apache-avro in blocks of one item each (negative counts with byte sizes).
fn avro_write_blocked(state: &KeyState) -> Vec<u8> {
    let writer = GenericDatumWriter::builder(changelog_schema()).target_block_size(1).build().unwrap();
    writer.write_ser_to_vec(&ser_state(state)).unwrap()
}

fn with_header(datum: &[u8]) -> Vec<u8> {
    let mut bytes = CHANGELOG.header.to_vec();
    bytes.extend_from_slice(datum);
    bytes
}

// --- Strategies -----------------------------------------------------------

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Finite floats whose JSON text serde_json parses back exactly (all
        // of them since its `float_roundtrip` feature is on; without it the
        // parser can be one ULP off for some values, in any text format).
        any::<f64>().prop_filter_map("finite, exactly re-parsed floats", |f| {
            let text = serde_json::to_string(&serde_json::Number::from_f64(f)?).ok()?;
            (serde_json::from_str::<f64>(&text).ok()? == f).then(|| Value::from(f))
        }),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_row() -> impl Strategy<Value = Row> {
    prop::collection::btree_map(".{0,8}", json_value(), 0..5).prop_map(|m| m.into_iter().collect())
}

fn arb_clock() -> impl Strategy<Value = VersionVector> {
    prop::collection::btree_map(".{0,6}", any::<u64>(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn arb_version() -> impl Strategy<Value = Version> {
    // An upsert carries its row, a delete none (the decoder refuses others).
    (".{0,8}", arb_clock(), any::<i64>(), any::<bool>(), arb_row()).prop_map(|(source, vv, ts, is_delete, row)| {
        if is_delete {
            Version { source, vv, ts, op: Op::Delete, row: None }
        } else {
            Version { source, vv, ts, op: Op::Upsert, row: Some(row.into()) }
        }
    })
}

fn arb_field_version() -> impl Strategy<Value = FieldVersion> {
    (".{0,8}", arb_clock(), any::<i64>(), json_value()).prop_map(|(source, vv, ts, value)| FieldVersion { source, vv, ts, value })
}

fn arb_field_state() -> impl Strategy<Value = FieldState> {
    (
        prop::collection::btree_map(".{0,8}", prop::collection::vec(arb_field_version(), 0..3), 0..4),
        prop::collection::vec(arb_clock(), 0..3),
        prop::collection::btree_map(
            ".{0,8}",
            (prop::collection::vec(arb_field_version(), 0..3), prop::collection::vec(arb_field_version(), 0..2))
                .prop_map(|(adds, removes)| ElementVersions { adds, removes }),
            0..3,
        ),
        prop::collection::btree_map(".{0,8}", arb_counter(), 0..2),
    )
        .prop_map(|(fields, cleared, sets, counters)| FieldState {
            cleared,
            counters,
            ..FieldState::with_writes(fields, sets)
        })
}

fn arb_counter() -> impl Strategy<Value = CounterState> {
    let delta = (any::<u64>(), "-?[0-9]{1,5}(\\.[0-9]{1,3})?").prop_map(|(at, amount)| Delta { at, amount });
    let tally = (arb_clock(), any::<bool>(), prop::collection::vec(delta, 0..3)).prop_map(|(seen, deleted, deltas)| Tally {
        seen,
        deleted,
        deltas,
    });
    (prop::collection::vec(arb_field_version(), 0..2), prop::collection::btree_map(".{0,8}", tally, 0..3))
        .prop_map(|(creates, tallies)| CounterState { creates, tallies })
}

fn arb_state() -> impl Strategy<Value = KeyState> {
    (prop::collection::vec(arb_version(), 0..4), prop::option::of(arb_field_state()))
        .prop_map(|(versions, fields)| KeyState { versions, fields })
}

// --- (1) Interoperability with apache-avro ---------------------------------

#[test]
fn hand_encoding_reads_with_apache_avro() {
    let state = sample();
    let bytes = encode_state(&state);
    assert_eq!(from_avro(&avro_read(&bytes[HEADER_LEN..])), state);
}

#[test]
fn apache_avro_encodings_read_with_the_hand_decoder() {
    let state = sample();
    assert_eq!(decode_state(&with_header(&avro_write(&state))).unwrap(), state, "single blocks");
    let blocked = avro_write_blocked(&state);
    assert!(blocked.len() > avro_write(&state).len(), "the blocked encoding carries block sizes");
    assert_eq!(decode_state(&with_header(&blocked)).unwrap(), state, "one-item blocks with negative counts");
}

#[test]
fn the_hand_encoding_is_the_one_apache_avro_writes() {
    // With one block per array/map and the same map order (sorted), the bytes agree exactly.
    let state = KeyState {
        versions: vec![
            upsert("eu", clock(&[("eu", 3)]), 1_700_000_000_000, json!({"id": 1})),
            delete("us", clock(&[("us", 2)]), 1),
        ],
        fields: None,
    };
    assert_eq!(&encode_state(&state)[HEADER_LEN..], avro_write(&state).as_slice());
}

#[test]
fn hand_made_multi_block_and_negative_count_sequences_decode() {
    let state = sample();
    let [v0, v1, v2] = &state.versions[..] else { unreachable!() };
    let mut datum = Vec::new();
    // versions: a block of one with a negative count and its byte size,
    // then a block of two, then the end.
    let mut first = Vec::new();
    write_version(&mut first, v0);
    write_long(&mut datum, -1);
    write_len(&mut datum, first.len());
    datum.extend_from_slice(&first);
    write_long(&mut datum, 2);
    // v1 by hand, its clock map as a sized block of one entry.
    write_str(&mut datum, &v1.source);
    let mut entry = Vec::new();
    write_str(&mut entry, "us");
    write_long(&mut entry, u64::MAX as i64);
    write_long(&mut datum, -1);
    write_len(&mut datum, entry.len());
    datum.extend_from_slice(&entry);
    datum.push(0);
    write_long(&mut datum, v1.ts);
    write_op(&mut datum, v1.op);
    write_optional_row(&mut datum, v1.row.as_ref());
    write_version(&mut datum, v2);
    datum.push(0);
    // fields: the columns map as two positive blocks of one, cleared as
    // a sized block of two.
    let fields = state.fields.as_ref().unwrap();
    write_long(&mut datum, 1);
    for (column, writes) in &fields.column_versions() {
        write_long(&mut datum, 1);
        write_str(&mut datum, column);
        write_array(&mut datum, writes, write_field_version);
    }
    datum.push(0);
    let mut cleared = Vec::new();
    for c in &fields.cleared {
        write_clock(&mut cleared, c);
    }
    write_long(&mut datum, -2);
    write_len(&mut datum, cleared.len());
    datum.extend_from_slice(&cleared);
    datum.push(0);
    // sets: one sized block per column.
    for (column, set) in &fields.set_versions() {
        let mut entry = Vec::new();
        write_str(&mut entry, column);
        write_array(&mut entry, &set.adds, write_field_version);
        write_array(&mut entry, &set.removes, write_field_version);
        write_long(&mut datum, -1);
        write_len(&mut datum, entry.len());
        datum.extend_from_slice(&entry);
    }
    datum.push(0);
    // counters: one sized block per column.
    for (column, counter) in &fields.counters {
        let mut entry = Vec::new();
        write_str(&mut entry, column);
        write_counter(&mut entry, counter);
        write_long(&mut datum, -1);
        write_len(&mut datum, entry.len());
        datum.extend_from_slice(&entry);
    }
    datum.push(0);

    assert_eq!(decode_state(&with_header(&datum)).unwrap(), state, "the hand decoder");
    assert_eq!(from_avro(&avro_read(&datum)), state, "apache-avro agrees on what the bytes mean");
}

#[test]
fn a_block_size_that_disagrees_with_its_items_is_an_error() {
    let state = KeyState { versions: vec![delete("us", clock(&[("us", 1)]), 1)], fields: None };
    let mut item = Vec::new();
    write_version(&mut item, &state.versions[0]);
    let mut datum = Vec::new();
    write_long(&mut datum, -1);
    write_len(&mut datum, item.len() + 1);
    datum.extend_from_slice(&item);
    datum.extend_from_slice(&[0, 0, 0]); // a padding byte the size claims, the array end, fields: null
    let err = decode_state(&with_header(&datum)).unwrap_err();
    assert!(matches!(err, StateDecodeError::Malformed { what: "versions", .. }), "{err}");
}

proptest! {
    #[test]
    fn arbitrary_hand_encodings_read_with_apache_avro(state in arb_state()) {
        let bytes = encode_state(&state);
        prop_assert_eq!(from_avro(&avro_read(&bytes[HEADER_LEN..])), state);
    }

    #[test]
    fn arbitrary_apache_avro_encodings_read_with_the_hand_decoder(state in arb_state()) {
        prop_assert_eq!(&decode_state(&with_header(&avro_write(&state))).unwrap(), &state);
        prop_assert_eq!(&decode_state(&with_header(&avro_write_blocked(&state))).unwrap(), &state);
    }

    // --- (2) Round trip ---------------------------------------------------

    #[test]
    fn arbitrary_states_round_trip(state in arb_state()) {
        let bytes = encode_state(&state);
        prop_assert_eq!(&bytes[..2], &SINGLE_OBJECT_MARKER[..]);
        prop_assert_eq!(decode_state(&bytes).unwrap(), state);
    }

    // --- (4) Bad input is an error, never a panic ---------------------------

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_state(&bytes);
        let _ = decode_state(&with_header(&bytes));
    }

    #[test]
    fn corrupted_encodings_are_errors_or_states_never_panics(
        state in arb_state(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode_state(&state);
        for (at, byte) in flips {
            let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            bytes[i] = byte;
        }
        let _ = decode_state(&bytes);
    }
}

#[test]
fn the_empty_state_is_a_header_and_two_bytes() {
    let bytes = encode_state(&KeyState::default());
    assert_eq!(bytes.len(), HEADER_LEN + 2, "empty versions array, null fields");
    assert_eq!(&bytes[HEADER_LEN..], &[0, 0]);
    assert_eq!(decode_state(&bytes).unwrap(), KeyState::default());
}

// --- (3) Legacy JSON --------------------------------------------------------

#[test]
fn legacy_json_states_still_decode() {
    let state = sample();
    let legacy = serde_json::to_vec(&state).unwrap();
    assert_eq!(legacy[0], b'{');
    assert_eq!(decode_state(&legacy).unwrap(), state);
    // As the earlier code wrote it, verbatim.
    let text = br#"{"versions":[{"source":"eu","vv":{"eu":5},"ts":5,"op":"delete"}]}"#;
    assert_eq!(decode_state(text).unwrap(), KeyState { versions: vec![delete("eu", clock(&[("eu", 5)]), 5)], fields: None });
    assert!(matches!(decode_state(b"{\"versions\":"), Err(StateDecodeError::LegacyJson(_))));
}

// --- (4) Truncation and garbage ---------------------------------------------

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode_state(&sample());
    for len in 0..bytes.len() {
        let result = decode_state(&bytes[..len]);
        assert!(result.is_err(), "a value cut to {len} of {} bytes decoded", bytes.len());
    }
    let err = decode_state(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(matches!(err, StateDecodeError::Truncated { .. }), "{err}");
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode_state(&sample());
    bytes.push(0);
    let err = decode_state(&bytes).unwrap_err();
    assert!(matches!(err, StateDecodeError::TrailingBytes { count: 1, .. }), "{err}");
}

#[test]
fn errors_name_what_was_found() {
    assert!(matches!(decode_state(b""), Err(StateDecodeError::Empty)));
    let err = decode_state(b"\x00\x01garbage").unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a key state: expected the Avro single-object marker C3 01 or a legacy JSON object, found bytes 00 01 67 61 72 62 61 67 65"
    );
    let mut other = encode_state(&sample());
    other[9] ^= 0xFF;
    let err = decode_state(&other).unwrap_err();
    assert!(matches!(err, StateDecodeError::UnknownFingerprint { .. }), "{err}");
    assert!(err.to_string().contains(&hex(&other[2..10])), "{err}");
    let err = decode_state(&[0xC3, 0x01, 0xB0]).unwrap_err();
    assert!(matches!(err, StateDecodeError::Truncated { what: "the single-object header", .. }), "{err}");
    // A union branch the schema does not have.
    let err = decode_state(&with_header(&[0, 4])).unwrap_err();
    assert!(matches!(err, StateDecodeError::BadIndex { what: "fields", index: 2, .. }), "{err}");
    // An eleven-byte varint.
    let err = decode_state(&with_header(&[0xFF; 11])).unwrap_err();
    assert!(matches!(err, StateDecodeError::Malformed { what: "versions", .. }), "{err}");
    // A row whose JSON text is not an object.
    let mut datum = vec![2];
    write_str(&mut datum, "eu");
    datum.push(0);
    write_long(&mut datum, 1);
    write_long(&mut datum, 0);
    write_long(&mut datum, 1);
    write_str(&mut datum, "[1]");
    datum.extend_from_slice(&[0, 0]);
    let err = decode_state(&with_header(&datum)).unwrap_err();
    assert!(matches!(err, StateDecodeError::Json { what: "a version's row", .. }), "{err}");
}

// --- (5) The header -----------------------------------------------------------

#[test]
fn the_header_carries_the_fingerprint_of_the_schema_file() {
    let bytes = encode_state(&sample());
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    // apache-avro's CRC-64-AVRO of the file (without logical types: see
    // `spec_fingerprint`), computed here from scratch.
    let mut json: Value = serde_json::from_str(CHANGELOG_SCHEMA_JSON).unwrap();
    remove_logical_types(&mut json);
    assert!(!json.to_string().contains("logicalType"));
    let parsed = Schema::parse(&json).unwrap();
    assert_eq!(bytes[2..HEADER_LEN], parsed.fingerprint::<Rabin>().bytes[..]);
    assert_eq!(changelog_fingerprint()[..], bytes[2..HEADER_LEN]);
    // apache-avro's own single-object header builder agrees.
    use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
    assert_eq!(RabinFingerprintHeader::from_schema(&parsed).build_header(), bytes[..HEADER_LEN]);
}

#[test]
fn the_fingerprint_is_the_specifications_and_pinned() {
    // Computed independently: fastavro's Parsing Canonical Form of the
    // file and its CRC-64-AVRO (also by a from-the-spec Rabin in Python).
    // A schema change that alters the canonical form makes every stored
    // state undecodable until code that reads the old schema exists, so
    // it must be deliberate: update this value only together with that code.
    // (Versions 1 and 2 are `V1_FINGERPRINT` and `V2_FINGERPRINT`, still read.)
    assert_eq!(changelog_fingerprint(), [0xBB, 0xC7, 0x92, 0xD3, 0x9F, 0x0D, 0x47, 0x59]);
}

/// An older version of the schema: the file without its last `FieldState` fields.
fn older_schema_json(dropped: &[&str]) -> String {
    let mut json: Value = serde_json::from_str(CHANGELOG_SCHEMA_JSON).unwrap();
    let field_state = &mut json["fields"][1]["type"][1]["fields"];
    let fields = field_state.as_array_mut().unwrap();
    for name in dropped {
        assert_eq!(fields.pop().unwrap()["name"], *name);
    }
    json.to_string()
}

/// Version 1 of the schema: the file without `FieldState.sets` (nor `counters`).
fn v1_schema_json() -> String {
    older_schema_json(&["counters", "sets"])
}

#[test]
fn version_1_is_the_file_without_sets_and_its_fingerprint_is_pinned() {
    assert_eq!(spec_fingerprint(&v1_schema_json()), V1_FINGERPRINT);
    assert_ne!(changelog_fingerprint(), V1_FINGERPRINT);
}

#[test]
fn version_2_is_the_file_without_counters_and_its_fingerprint_is_pinned() {
    assert_eq!(spec_fingerprint(&older_schema_json(&["counters"])), V2_FINGERPRINT);
    assert_ne!(changelog_fingerprint(), V2_FINGERPRINT);
}

#[test]
fn version_2_values_still_decode() {
    let mut state = sample();
    state.fields.as_mut().unwrap().counters.clear();
    // apache-avro writing with the version 2 schema, framed with its fingerprint.
    let v2 = Schema::parse_str(&older_schema_json(&["counters"])).unwrap();
    let datum =
        GenericDatumWriter::builder(&v2).build().unwrap().write_value_to_vec(to_avro_older(&state, &["counters"])).unwrap();
    let mut bytes = single_object_header(&V2_FINGERPRINT).to_vec();
    bytes.extend_from_slice(&datum);
    assert_eq!(decode_state(&bytes).unwrap(), state);
    // The same state in version 3 is one byte longer: the empty `counters` map.
    assert_eq!(encode_state(&state).len(), bytes.len() + 1);
    // A version 2 value with union sets, as the previous build wrote it.
    assert!(!state.fields.as_ref().unwrap().sets.is_empty());
    let plain = KeyState { versions: state.versions.clone(), fields: None };
    let mut v2_plain = single_object_header(&V2_FINGERPRINT).to_vec();
    v2_plain.extend_from_slice(&encode_state(&plain)[HEADER_LEN..]);
    assert_eq!(decode_state(&v2_plain).unwrap(), plain);
}

#[test]
fn version_1_values_still_decode() {
    let mut state = sample();
    // Without sets (and their events' stamps) and counters.
    let fields = state.fields.as_mut().unwrap();
    *fields = FieldState { cleared: fields.cleared.clone(), ..FieldState::with_columns(fields.column_versions()) };
    // apache-avro writing with the version 1 schema, framed with its fingerprint.
    let v1 = Schema::parse_str(&v1_schema_json()).unwrap();
    let datum = GenericDatumWriter::builder(&v1).build().unwrap().write_value_to_vec(to_avro_v1(&state)).unwrap();
    let mut bytes = single_object_header(&V1_FINGERPRINT).to_vec();
    bytes.extend_from_slice(&datum);
    assert_eq!(decode_state(&bytes).unwrap(), state);
    // The same state in version 3 is two bytes longer: the empty `sets` and `counters` maps.
    assert_eq!(encode_state(&state).len(), bytes.len() + 2);
    // Without column state the two versions' datums are the same.
    let plain = KeyState { versions: state.versions.clone(), fields: None };
    let mut v1_plain = single_object_header(&V1_FINGERPRINT).to_vec();
    v1_plain.extend_from_slice(&encode_state(&plain)[HEADER_LEN..]);
    assert_eq!(decode_state(&v1_plain).unwrap(), plain);
}

/// apache-avro's generic view of a state in version 1 of the schema.
fn to_avro_v1(state: &KeyState) -> Avro {
    to_avro_older(state, &["counters", "sets"])
}

/// apache-avro's generic view of a state in an older version of the
/// schema: without the last `FieldState` fields, `dropped`.
fn to_avro_older(state: &KeyState, dropped: &[&str]) -> Avro {
    let Avro::Record(mut fields) = to_avro(state) else { unreachable!() };
    if let Avro::Union(1, field_state) = &mut fields[1].1 {
        let Avro::Record(parts) = &mut **field_state else { unreachable!() };
        for name in dropped {
            assert_eq!(parts.pop().unwrap().0, *name);
        }
    }
    Avro::Record(fields)
}

#[test]
fn the_fingerprint_ignores_logical_types_as_the_specification_says() {
    // [PRIMITIVES] and [STRIP]: a logical-typed long canonicalizes to "long".
    let with = r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
    let without = r#"{"type":"record","name":"R","fields":[{"name":"t","type":"long"}]}"#;
    assert_eq!(spec_fingerprint(with), spec_fingerprint(without));
}

#[test]
fn column_writes_of_one_event_share_one_stamp_and_encode_as_before() {
    // The schema spells every column write out (source, clock, ts); in
    // memory the writes of one event point at one stamp. apache-avro reads
    // the bytes as the spelled-out writes, its encoding of them decodes to
    // the same stamps, and so do the bytes.
    let write = |source: &str, n: u64, ts: i64, value: serde_json::Value| FieldVersion {
        source: source.into(),
        vv: clock(&[(source, n)]),
        ts,
        value,
    };
    let mut columns = BTreeMap::new();
    columns.insert("a".to_string(), vec![write("us", 2, 20, json!("x")), write("eu", 1, 10, json!("y"))]);
    columns.insert("b".to_string(), vec![write("eu", 1, 10, json!(7))]);
    columns.insert("c".to_string(), vec![write("eu", 1, 10, json!(null)), write("us", 2, 20, json!([1]))]);
    let fields = FieldState::with_columns(columns.clone());
    assert_eq!(fields.stamps.len(), 2, "{:?}", fields.stamps);
    assert_eq!((fields.stamps[0].source.as_str(), fields.stamps[0].ts), ("us", 20), "newest first");
    assert_eq!(fields.fields["a"].iter().map(|w| w.stamp).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(fields.fields["c"].iter().map(|w| w.stamp).collect::<Vec<_>>(), [1, 0]);
    assert_eq!(fields.column_versions(), columns, "written out again in stored order");
    let state = KeyState { versions: vec![upsert("eu", clock(&[("eu", 1)]), 10, json!({"id": 1}))], fields: Some(fields) };
    let bytes = encode_state(&state);
    assert_eq!(from_avro(&avro_read(&bytes[HEADER_LEN..])), state);
    assert_eq!(decode_state(&with_header(&avro_write(&state))).unwrap(), state);
    assert_eq!(decode_state(&bytes).unwrap(), state);
}

/// An upsert without its row (or a delete with one) is refused when decoded,
/// in both encodings: merging the key would otherwise panic on it.
#[test]
fn an_upsert_without_a_row_is_refused_when_decoded() {
    let rowless = Version { source: "eu".into(), vv: clock(&[("eu", 1)]), ts: 1, op: Op::Upsert, row: None };
    let mut with_row = delete("us", clock(&[("us", 1)]), 2);
    with_row.row = Some(row(json!({"id": 1})).into());
    for bad in [rowless, with_row] {
        let state = KeyState { versions: vec![upsert("ap", clock(&[("ap", 1)]), 3, json!({"id": 1})), bad], fields: None };
        for bytes in [encode_state(&state), serde_json::to_vec(&state).unwrap()] {
            let e = decode_state(&bytes).unwrap_err();
            assert!(
                matches!(e, StateDecodeError::Malformed { what: "a version's row", .. }),
                "{e}: {}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(e.to_string().contains("an upsert must carry a row and a delete none"), "{e}");
        }
    }
}

// --- Rows kept as text --------------------------------------------------

#[test]
fn decoded_rows_stay_text_and_are_written_back_as_they_were() {
    let state = sample();
    let bytes = encode_state(&state);
    let decoded = decode_state(&bytes).unwrap();
    for v in &decoded.versions {
        if let Some(r) = &v.row {
            assert!(!r.is_parsed() && r.json_text().is_some(), "a decoded row is not parsed until used");
        }
    }
    assert_eq!(encode_state(&decoded), bytes, "unparsed rows are written back byte for byte");
    assert_eq!(decoded, state);
}

#[test]
fn a_row_that_is_not_a_json_object_is_refused_when_decoded() {
    for text in [r#"[1,2]"#, r#"{"a":1e400}"#, r#"{"a":"#, "{\"a\":\"\u{1}\"}"] {
        let mut datum = Vec::new();
        write_array(&mut datum, &[()], |buf, _| {
            write_str(buf, "eu");
            write_clock(buf, &clock(&[("eu", 1)]));
            write_long(buf, 5);
            write_op(buf, Op::Upsert);
            write_long(buf, 1);
            write_str(buf, text);
        });
        write_long(&mut datum, 0);
        let mut bytes = CHANGELOG.header.to_vec();
        bytes.extend_from_slice(&datum);
        let err = decode_state(&bytes).expect_err(text).to_string();
        assert!(err.contains("a version's row"), "{text}: {err}");
    }
}

#[test]
fn a_committed_state_keeps_its_rows_as_the_text_of_its_own_encoding() {
    let mut state = sample();
    assert!(state.versions.iter().filter_map(|v| v.row.as_ref()).all(|r| r.json_text().is_none()));
    let bytes = encode_state(&state);
    assert!(keep_row_texts(&mut state, &bytes));
    for r in state.versions.iter().filter_map(|v| v.row.as_ref()) {
        assert!(!r.is_parsed());
        assert_eq!(r.json_text(), Some(serde_json::to_string(&**r).unwrap().as_str()));
    }
    assert_eq!(encode_state(&state), bytes);
    assert_eq!(state, sample());
    // Not its own encoding (another number of versions): left alone.
    let mut other = sample();
    other.versions.pop();
    assert!(!keep_row_texts(&mut other, &encode_state(&sample())));
    assert!(!keep_row_texts(&mut other, b"{}"));
    assert!(other.versions.iter().filter_map(|v| v.row.as_ref()).all(|r| r.is_parsed() && r.json_text().is_none()));
}

#[test]
fn a_known_row_text_is_written_as_it_is_and_the_bytes_do_not_change() {
    let state = sample();
    let bytes = encode_state(&state);
    for (i, v) in state.versions.iter().enumerate() {
        let Some(row) = &v.row else { continue };
        let text = serde_json::to_vec(&**row).unwrap();
        assert_eq!(encode_state_knowing(&state, Some((row, &text))), bytes, "version {i}");
    }
    // A row of another state (equal, but not the same one) is not taken
    // for one of this state's: its text goes unused.
    let other = sample();
    let row = other.versions[0].row.as_ref().unwrap();
    assert_eq!(encode_state_knowing(&state, Some((row, b"{}"))), bytes);
    // Decoded, the rows are text and written back from it all the same.
    let decoded = decode_state(&bytes).unwrap();
    let row = decoded.versions[0].row.as_ref().unwrap();
    let text = row.json_text().unwrap().as_bytes().to_vec();
    assert_eq!(encode_state_knowing(&decoded, Some((row, &text))), bytes);
    assert!(!row.is_parsed());
}
