use super::*;
use crate::config::SourceConfig;
use crate::merge::{Op, Policy};
use proptest::strategy::{Just, Strategy as _};
use serde_json::json;

fn source(extra: &str) -> SourceNormalizer {
    let text = format!("name = \"eu\"\ntopic = \"eu.t\"\n{extra}");
    let cfg: SourceConfig = toml::from_str(&text).unwrap();
    SourceNormalizer::new(&cfg, Policy::Lww)
}

fn source_with(extra: &str, policy: Policy) -> SourceNormalizer {
    let text = format!("name = \"eu\"\ntopic = \"eu.t\"\n{extra}");
    let cfg: SourceConfig = toml::from_str(&text).unwrap();
    SourceNormalizer::new(&cfg, policy)
}

fn rec<'a>(key: Option<&'a str>, value: Option<&'a str>) -> InputRecord<'a> {
    InputRecord {
        topic: "eu.t",
        partition: 2,
        offset: 41,
        timestamp: Some(999),
        key: key.map(str::as_bytes),
        value: value.map(str::as_bytes),
        headers: &[],
    }
}

fn event(n: Result<Normalized, NormalizeError>) -> ChangeEvent {
    match n.unwrap() {
        Normalized::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn err(n: Result<Normalized, NormalizeError>) -> NormalizeError {
    n.expect_err("expected an error")
}

const UPDATE: &str =
    r#"{"before":{"id":7,"name":"a"},"after":{"id":7,"name":"b"},"source":{"ts_ms":1700,"lsn":5000},"op":"u","ts_ms":1800}"#;

#[test]
fn debezium_update_without_wrapper() {
    let e = event(source("").normalize(&rec(Some(r#"{"id":7}"#), Some(UPDATE))));
    assert_eq!(e.key, r#"{"id":7}"#);
    assert_eq!(e.op, Op::Upsert);
    assert_eq!(e.row.unwrap(), json!({"id":7,"name":"b"}).as_object().unwrap().clone());
    assert_eq!(e.ts, 1700, "source.ts_ms first");
    assert_eq!(e.vv.to_json(), r#"{"eu":42}"#, "offset + 1");
    assert!(!e.full_image);
}

#[test]
fn debezium_with_schema_payload_wrapper_on_key_and_value() {
    let value = format!(r#"{{"schema":{{"type":"struct"}},"payload":{UPDATE}}}"#);
    let key = r#"{"schema":{"type":"struct"},"payload":{"tenant":"x","id":7}}"#;
    let e = event(source("").normalize(&rec(Some(key), Some(&value))));
    assert_eq!(e.key, r#"{"id":7,"tenant":"x"}"#, "sorted, no whitespace");
    assert_eq!(e.ts, 1700);
}

#[test]
fn ops_map_to_upserts_and_deletes() {
    let n = source("");
    for (op, full) in [("c", true), ("r", true)] {
        let v = format!(r#"{{"after":{{"id":1}},"op":"{op}","source":{{"ts_ms":1}}}}"#);
        let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(&v))));
        assert_eq!((e.op, e.full_image), (Op::Upsert, full));
    }
    let e =
        event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"before":{"id":1},"after":null,"op":"d","source":{"ts_ms":1}}"#))));
    assert_eq!(e.op, Op::Delete);
    assert!(e.row.is_none());
}

#[test]
fn tombstones_are_ignored_and_truncates_rejected() {
    let n = source("");
    assert_eq!(n.normalize(&rec(Some(r#"{"id":1}"#), None)).unwrap(), Normalized::Tombstone);
    assert_eq!(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"schema":{},"payload":null}"#))).unwrap(), Normalized::Tombstone);
    let e = err(n.normalize(&rec(None, Some(r#"{"op":"t","source":{"ts_ms":1}}"#))));
    assert_eq!(e.kind, NormalizeErrorKind::Truncate);
    assert_eq!(e.to_string().split(':').next().unwrap(), "topic eu.t partition 2 offset 41");
}

#[test]
fn timestamp_falls_back_to_envelope_then_record() {
    let n = source("");
    let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"after":{"id":1},"op":"c","ts_ms":55}"#))));
    assert_eq!(e.ts, 55);
    let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"after":{"id":1},"op":"c"}"#))));
    assert_eq!(e.ts, 999);
    let mut r = rec(Some(r#"{"id":1}"#), Some(r#"{"after":{"id":1},"op":"c"}"#));
    r.timestamp = None;
    assert_eq!(err(n.normalize(&r)).kind, NormalizeErrorKind::MissingTimestamp);
}

#[test]
fn bad_records_name_what_is_wrong() {
    let n = source("");
    let cases: &[(Option<&str>, &str, &str)] = &[
        (Some(r#"{"id":1}"#), "{not json", "bad_value"),
        (None, UPDATE, "missing_key"),
        (Some("[1]"), UPDATE, "bad_key"),
        (Some("nope"), UPDATE, "bad_key"),
        (Some(r#"{"id":1}"#), r#"{"after":{"id":1}}"#, "bad_op"),
        (Some(r#"{"id":1}"#), r#"{"after":{"id":1},"op":"x"}"#, "bad_op"),
        (Some(r#"{"id":1}"#), r#"{"op":"u","source":{"ts_ms":1}}"#, "bad_value"),
    ];
    for (key, value, reason) in cases {
        let e = err(n.normalize(&rec(*key, Some(value))));
        assert_eq!(e.kind.reason(), *reason, "{key:?} {value}: {e}");
        assert_eq!(e.source_name.as_deref(), Some("eu"));
    }
}

#[test]
fn sequence_path_gives_the_clock() {
    let n = source(r#"sequence = "source.lsn""#);
    assert_eq!(event(n.normalize(&rec(Some(r#"{"id":7}"#), Some(UPDATE)))).vv.to_json(), r#"{"eu":5000}"#);
    let zero = UPDATE.replace("5000", "0");
    let e = err(n.normalize(&rec(Some(r#"{"id":7}"#), Some(&zero))));
    assert!(matches!(e.kind, NormalizeErrorKind::BadSequence { .. }), "{e}");
    let missing = UPDATE.replace(r#","lsn":5000"#, "");
    assert!(err(n.normalize(&rec(Some(r#"{"id":7}"#), Some(&missing))))
        .to_string()
        .contains("sequence field `source.lsn`: missing"));
}

#[test]
fn carried_clocks_from_after_and_before_images() {
    let n = source(r#"clock_field = "_vv""#);
    let up = r#"{"before":null,"after":{"id":1,"x":2,"_vv":"{\"eu\":3,\"us\":4}"},"op":"u","source":{"ts_ms":1}}"#;
    let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(up))));
    assert_eq!(e.vv.to_json(), r#"{"eu":3,"us":4}"#);
    assert!(!e.row.as_ref().unwrap().contains_key("_vv"), "the clock column is metadata");
    assert!(e.full_image, "no before image: every field is written");
    let del = r#"{"before":{"id":1,"_vv":{"eu":3,"us":4}},"after":null,"op":"d","source":{"ts_ms":1}}"#;
    assert_eq!(event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(del)))).vv.to_json(), r#"{"eu":4,"us":4}"#);
    for bad in [
        r#"{"after":{"id":1},"op":"c","source":{"ts_ms":1}}"#,
        r#"{"after":{"id":1,"_vv":"not json"},"op":"c","source":{"ts_ms":1}}"#,
        r#"{"after":{"id":1,"_vv":{"eu":-1}},"op":"c","source":{"ts_ms":1}}"#,
        r#"{"after":{"id":1,"_vv":{}},"op":"c","source":{"ts_ms":1}}"#,
        r#"{"before":null,"after":null,"op":"d","source":{"ts_ms":1}}"#,
    ] {
        let e = err(n.normalize(&rec(Some(r#"{"id":1}"#), Some(bad))));
        assert_eq!(e.kind.reason(), "bad_clock", "{bad}: {e}");
    }
}

#[test]
fn key_fields_pick_from_the_row_and_the_record_key() {
    let n = source(r#"key_fields = ["name"]"#);
    assert_eq!(event(n.normalize(&rec(None, Some(UPDATE)))).key, r#"{"name":"b"}"#);
    let e = err(source(r#"key_fields = ["nope"]"#).normalize(&rec(None, Some(UPDATE))));
    assert_eq!(e.kind, NormalizeErrorKind::MissingKeyField("nope".into()));
}

#[test]
fn a_key_longer_than_the_state_store_takes_is_refused() {
    let n = source("");
    let at_limit = format!(r#"{{"id":"{}"}}"#, "k".repeat(MAX_KEY_BYTES - 9));
    assert_eq!(event(n.normalize(&rec(Some(&at_limit), Some(UPDATE)))).key.len(), MAX_KEY_BYTES);
    let over = format!(r#"{{"id":"{}"}}"#, "k".repeat(MAX_KEY_BYTES - 8));
    let e = err(n.normalize(&rec(Some(&over), Some(UPDATE))));
    assert_eq!(e.kind, NormalizeErrorKind::KeyTooLarge { bytes: MAX_KEY_BYTES + 1, limit: MAX_KEY_BYTES });
    assert_eq!(e.kind.reason(), "key_too_large");
    assert!(e.to_string().contains("the key is 65536 bytes, over the state store's limit of 65535 bytes"), "{e}");
    // Re-keying reports it as normalizing would.
    assert!(matches!(n.canonical_key(&rec(Some(&over), Some(UPDATE))), Err(NormalizeErrorKind::KeyTooLarge { .. })));
}

#[test]
fn flat_json_rows_tombstones_and_rewritten_deletes() {
    let n = source("format = \"json\"\nts_field = \"updated_ms\"");
    let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"id":1,"v":"x","updated_ms":77,"__deleted":"false"}"#))));
    assert_eq!((e.op, e.ts), (Op::Upsert, 77));
    assert!(!e.row.unwrap().contains_key("__deleted"));
    let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"id":1,"updated_ms":78,"__deleted":"true"}"#))));
    assert_eq!(e.op, Op::Delete);
    let e = event(source("format = \"json\"").normalize(&rec(Some(r#"{"id":1}"#), None)));
    assert_eq!((e.op, e.ts, e.key.as_str()), (Op::Delete, 999, r#"{"id":1}"#));
    let e = err(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"id":1}"#))));
    assert_eq!(e.kind.reason(), "bad_timestamp");
    let e = err(n.normalize(&rec(Some(r#"{"id":1}"#), Some("[1,2]"))));
    assert_eq!(e.kind.reason(), "bad_value");
}

#[test]
fn type_errors_name_the_field() {
    let n = source("");
    let e = err(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"after":{"id":1},"op":"c","ts_ms":"soon"}"#))));
    assert!(e.to_string().contains("ts_ms: invalid type"), "{e}");
    let e = err(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"after":{"id":1},"op":"c","source":{"ts_ms":"x"}}"#))));
    assert!(e.to_string().contains("timestamp field `source.ts_ms`"), "{e}");
}

#[test]
fn a_carried_clock_at_the_largest_counter_is_a_dead_letter_not_a_panic() {
    let n = source(r#"clock_field = "_vv""#);
    let del = format!(r#"{{"before":{{"id":1,"_vv":{{"eu":{}}}}},"op":"d","source":{{"ts_ms":1}}}}"#, u64::MAX);
    assert_eq!(err(n.normalize(&rec(Some(r#"{"id":1}"#), Some(&del)))).kind.reason(), "bad_clock");
}

// ------------------------------------------------------------------------
// The lean Debezium decoder against the straightforward one it replaced.

/// The envelope decoder as first written: every field built, the field path
/// tracked. The lean decoder must accept and reject the same records, with
/// the same messages, and give the same values.
mod reference {
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use serde_json::Value;

    use super::super::{lookup, NormalizeErrorKind, RawChange, RawOp};
    use crate::merge::Row;

    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        schema: Option<IgnoredAny>,
        #[serde(default)]
        payload: Option<Box<Envelope>>,
        #[serde(default)]
        op: Option<String>,
        #[serde(default)]
        before: Option<Row>,
        #[serde(default)]
        after: Option<Row>,
        #[serde(default)]
        source: Option<Row>,
        #[serde(default)]
        ts_ms: Option<i64>,
    }

    pub fn parse(bytes: &[u8], sequence: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let bad = |detail: String| NormalizeErrorKind::BadValue { format: "debezium-json", detail };
        let mut env: Envelope =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(|e| {
                match e.path().to_string().as_str() {
                    "." | "?" => bad(e.inner().to_string()),
                    path => bad(format!("{path}: {}", e.inner())),
                }
            })?;
        if env.op.is_none() {
            match env.payload.take() {
                Some(inner) => env = *inner,
                None if env.schema.is_some() => return Ok(None),
                None => return Err(NormalizeErrorKind::MissingOp),
            }
        }
        let op = match env.op.as_deref() {
            Some("c") => RawOp::Create,
            Some("u") => RawOp::Update,
            Some("r") => RawOp::Read,
            Some("d") => RawOp::Delete,
            Some("t") => return Err(NormalizeErrorKind::Truncate),
            Some(other) => return Err(NormalizeErrorKind::UnsupportedOp(other.to_string())),
            None => return Err(NormalizeErrorKind::MissingOp),
        };
        let source_ts = match env.source.as_ref().and_then(|s| s.get("ts_ms")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| NormalizeErrorKind::BadTimestamp {
                path: "source.ts_ms".into(),
                problem: format!("{v} is not an integer number of milliseconds"),
            })?),
        };
        let sequence = sequence.and_then(|path| match path {
            [first, second, rest @ ..] if first == "source" => lookup(env.source.as_ref()?.get(second.as_str())?, rest).cloned(),
            _ => None,
        });
        Ok(Some(RawChange {
            op,
            before: env.before,
            after: env.after.map(Into::into),
            ts: source_ts.or(env.ts_ms),
            sequence,
            key: None,
        }))
    }
}

/// Checks every decoding mode of `bytes` against the reference.
fn check_against_reference(bytes: &[u8]) {
    let seq_paths: [Option<Vec<String>>; 3] =
        [None, Some(vec!["source".into(), "lsn".into()]), Some(vec!["source".into(), "a".into(), "b".into()])];
    let record =
        InputRecord { topic: "t", partition: 0, offset: 0, timestamp: None, key: None, value: Some(bytes), headers: &[] };
    let text = String::from_utf8_lossy(bytes);
    for seq in &seq_paths {
        let seq = seq.as_deref();
        let want = reference::parse(bytes, seq);
        assert_eq!(DebeziumJson.parse(&record, seq), want, "parse, sequence {seq:?}: {text}");
        for upsert_before in [false, true] {
            let got = DebeziumJson.parse_lean(&record, seq, upsert_before);
            let want = want.clone().map(|o| {
                o.map(|raw| {
                    let had_before = raw.before.is_some();
                    let keep = upsert_before || raw.op == RawOp::Delete;
                    Parsed { raw: RawChange { before: if keep { raw.before } else { None }, ..raw }, had_before, changed: None }
                })
            });
            assert_eq!(got, want, "parse_lean, sequence {seq:?}, upsert_before {upsert_before}: {text}");
            // The after image as its canonical text: the same row (and the
            // same errors), held as the text serializing its map gives.
            let as_text = DebeziumJson.parse_text(&record, seq, upsert_before);
            assert_eq!(as_text, want, "parse_text, sequence {seq:?}, upsert_before {upsert_before}: {text}");
            if let Ok(Some(Parsed { raw: RawChange { after: Some(after), .. }, .. })) = &as_text {
                let map = serde_json::to_string(&**after).unwrap();
                assert_eq!(after.json_text(), Some(map.as_str()), "parse_text keeps the canonical text: {text}");
            }
        }
        // The before image compared with the after image: the same records
        // and errors; an update passes on which columns differ (by value)
        // and the before values of those.
        let got = DebeziumJson.parse_changes(&record, seq);
        match (got, want) {
            (Ok(Some(got)), Ok(Some(want))) => {
                assert_eq!(got.had_before, want.before.is_some(), "parse_changes had_before: {text}");
                let before = match (got.changed, want.after.as_deref(), want.before.as_ref()) {
                    (Some(changed), Some(after), Some(before)) => {
                        let mut kept = Row::new();
                        for (index, (name, value)) in after.iter().enumerate() {
                            let differs = before.get(name) != Some(value);
                            assert_eq!(changed.contains(index), differs, "parse_changes, column {name}: {text}");
                            if let (true, Some(old)) = (differs, before.get(name)) {
                                kept.insert(name.clone(), old.clone());
                            }
                        }
                        Some(kept)
                    }
                    (None, _, before) => before.cloned(),
                    (Some(_), ..) => panic!("parse_changes compared images it did not have: {text}"),
                };
                assert_eq!(got.raw, RawChange { before, ..want }, "parse_changes, sequence {seq:?}: {text}");
            }
            (got, want) => assert_eq!(got.map(|p| p.map(|p| p.raw)), want, "parse_changes, sequence {seq:?}: {text}"),
        }
    }
}

#[test]
fn lean_decoding_matches_the_reference_on_edge_cases() {
    let cases: &[&str] = &[
        UPDATE,
        r#"{"schema":{"type":"struct"},"payload":{"before":{"id":1},"after":{"id":1,"v":2},"op":"u","source":{"ts_ms":5,"lsn":9}}}"#,
        r#"{"before":{"id":1,"_vv":"{}"},"after":null,"op":"d","source":{"ts_ms":1,"lsn":7}}"#,
        r#"{"before":null,"after":{"id":1},"op":"u","source":{"ts_ms":1}}"#,
        r#"{"before":5,"after":{"id":1},"op":"u"}"#,
        r#"{"before":[1],"after":{"id":1},"op":"u"}"#,
        r#"{"before":"x","after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a":1e400},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a":"\ud800"},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a":"\uZZZZ"},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a\n":1},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a":[1,{"b":[null,true,-0,1.5e-3]}],"a":2},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a":1,},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{"a" 1},"after":{"id":1},"op":"u"}"#,
        r#"{"before":{1:1},"after":{"id":1},"op":"u"}"#,
        r#"{"source":5,"after":{"id":1},"op":"u"}"#,
        r#"{"source":[],"after":{"id":1},"op":"u"}"#,
        r#"{"source":{"ts_ms":1,"ts_ms":"x"},"after":{"id":1},"op":"u"}"#,
        r#"{"source":{"ts_ms":"x","ts_ms":2},"after":{"id":1},"op":"u"}"#,
        r#"{"source":{"ts\u005fms":3},"after":{"id":1},"op":"u"}"#,
        r#"{"source":{"ts_ms":1.5},"after":{"id":1},"op":"u"}"#,
        r#"{"source":{"ts_ms":null},"after":{"id":1},"op":"u","ts_ms":4}"#,
        r#"{"source":{"ts_ms":1,"x":1e999},"after":{"id":1},"op":"u"}"#,
        r#"{"source":{"ts_ms":1,"lsn":{"x":1}, "a":{"b":"deep"}},"after":{"id":1},"op":"u"}"#,
        r#"{"source":null,"after":{"id":1},"op":"u"}"#,
        r#"{"after":{"id":1},"op":"u"} trailing"#,
        r#"{"after":{"id":1},"op":"u","op":"c"}"#,
        r#"{"after":{"id":1},"op":5}"#,
        r#"{"after":{"id":1},"op":"\u0063"}"#,
        r#"{"after":{"id":1},"op":"t"}"#,
        r#"{"after":{"id":1},"op":"zz"}"#,
        r#"{"after":{"id":1},"ts_ms":"soon","op":"c"}"#,
        r#"{"schema":{},"payload":null}"#,
        r#"{"schema":{},"payload":5}"#,
        r#"{"payload":{"op":"d","before":{"id":1}},"op":"u","after":{"id":2}}"#,
        r#"{"payload":{"op":"d","before":[]},"op":"u","after":{"id":2}}"#,
        r#"{"payload":{"payload":{"op":"c","after":{}}}}"#,
        r#"[null,null,"c",null,{"id":1},{"ts_ms":1},7]"#,
        r#"["s"]"#,
        r#"null"#,
        r#"5"#,
        r#"{"#,
        r#"{"before":{"id":1"#,
    ];
    for case in cases {
        check_against_reference(case.as_bytes());
    }
    let deep = format!(r#"{{"before":{{"a":{}1{}}},"after":{{"id":1}},"op":"u"}}"#, "[".repeat(200), "]".repeat(200));
    check_against_reference(deep.as_bytes());
    // Invalid UTF-8 (not expressible in a `&str` literal).
    check_against_reference(b"{\"before\":{\"a\":\"\xff\"},\"after\":{\"id\":1},\"op\":\"u\"}");
    check_against_reference(b"{\"before\":{\"\xff\":1},\"after\":{\"id\":1},\"op\":\"u\"}");
    check_against_reference(b"{\"source\":{\"ts_ms\":1,\"v\":\"\xfe\"},\"after\":{\"id\":1},\"op\":\"u\"}");
    check_against_reference(b"{\"source\":{\"x\":\"\xc3\x28\"},\"after\":{\"id\":1},\"op\":\"u\"}");
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

    /// Random edits of valid envelopes: whatever comes out, the lean decoder
    /// agrees with the reference (values, errors, messages).
    #[test]
    fn lean_decoding_matches_the_reference_on_mangled_records(
        base in 0usize..4,
        edits in proptest::collection::vec((0usize..400, 0usize..3, proptest::sample::select(vec![
            "\"", "{", "}", "[", "]", ":", ",", "1", "-0", "1e400", "x", "\\", "\\u0000", "\\ud800", "null", " ",
            "\"ts_ms\"", "\"lsn\"", "\"op\"", "\"d\"", "\"before\"", "\"source\"", "\u{e9}", "\u{ff}",
        ])), 1..4),
    ) {
        let bases = [
            UPDATE.to_string(),
            r#"{"schema":{"type":"struct"},"payload":{"before":{"id":1,"n":"a"},"after":{"id":1,"n":"b"},"op":"u","source":{"ts_ms":5,"lsn":9,"a":{"b":3}},"ts_ms":6}}"#.to_string(),
            r#"{"before":{"id":1,"_vv":{"eu":1}},"after":null,"source":{"ts_ms":1,"lsn":"7"},"op":"d","transaction":null}"#.to_string(),
            r#"{"before":null,"after":{"id":1,"l":[1,2,{"x":null}]},"source":{"ts_ms":1},"op":"c","ts_ms":3}"#.to_string(),
        ];
        let mut bytes = bases[base].clone().into_bytes();
        for (at, kind, text) in edits {
            let at = at % (bytes.len() + 1);
            let text: &[u8] = if text == "\u{ff}" { b"\xff" } else { text.as_bytes() };
            match kind {
                0 => { bytes.splice(at..at, text.iter().copied()); }
                1 => { let end = (at + text.len()).min(bytes.len()); bytes.splice(at..end, text.iter().copied()); }
                _ => { let end = (at + 1 + at % 7).min(bytes.len()); bytes.drain(at..end); }
            }
        }
        check_against_reference(&bytes);
    }
}

#[test]
fn row_level_policies_drop_only_the_upsert_before_image() {
    let del = r#"{"before":{"id":7,"name":"a"},"after":null,"op":"d","source":{"ts_ms":1700}}"#;
    let create = r#"{"after":{"id":7,"name":"b"},"op":"c","source":{"ts_ms":1700}}"#;
    for extra in ["", r#"sequence = "source.lsn""#, r#"key_fields = ["name"]"#] {
        for value in [UPDATE, del, create] {
            let r = rec(Some(r#"{"id":7}"#), Some(value));
            let full = source_with(extra, Policy::FieldLww).whole_before().normalize(&r);
            for policy in [Policy::Lww, Policy::SourcePriority] {
                let lean = source_with(extra, policy).normalize(&r);
                let want = full.clone().map_err(|e| e.to_string()).map(|n| match n {
                    Normalized::Event(mut e) if e.op == Op::Upsert => {
                        e.before = None;
                        Normalized::Event(e)
                    }
                    other => other,
                });
                assert_eq!(lean.map_err(|e| e.to_string()), want, "{policy:?} {extra} {value}");
            }
        }
    }
    let e = event(source("").normalize(&rec(Some(r#"{"id":7}"#), Some(UPDATE))));
    assert_eq!((e.before, e.full_image), (None, false), "the update had a before image");
    let e = event(source("").normalize(&rec(Some(r#"{"id":7}"#), Some(del))));
    assert_eq!(e.before.unwrap(), json!({"id":7,"name":"a"}).as_object().unwrap().clone());
}

#[test]
fn rows_come_as_text_only_where_nothing_reads_their_columns_before_the_merge() {
    let r = rec(Some(r#"{"id":7}"#), Some(r#"{"after":{"name":"b","id":7},"op":"c","source":{"ts_ms":1700}}"#));
    let text = |extra: &str, policy| event(source_with(extra, policy).normalize(&r)).row.unwrap().json_text().map(str::to_string);
    for policy in [Policy::Lww, Policy::SourcePriority] {
        assert_eq!(text("", policy).as_deref(), Some(r#"{"id":7,"name":"b"}"#), "{policy:?}");
    }
    assert_eq!(text("", Policy::FieldLww), None, "field-lww reads the columns");
    assert_eq!(text(r#"key_fields = ["name"]"#, Policy::Lww), None, "key fields are read from the row");
}

#[test]
fn canonical_keys_are_taken_as_they_are_only_when_identical() {
    for key in [
        r#"{"id":7}"#,
        r#"{"a":"x","b":-12,"c":true,"d":false,"e":null,"f":0}"#,
        r#"{"":1,"id":123456789012345678}"#,
        r#"{"schema":1}"#,
    ] {
        assert_eq!(already_canonical(key.as_bytes()), Some(key), "{key}");
        assert_eq!(canonicalize_key(key.as_bytes()).unwrap(), key);
    }
    for key in [
        r#"{}"#,
        r#"{"id":7} "#,
        r#"{"id": 7}"#,
        r#"{"b":1,"a":2}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":-0}"#,
        r#"{"a":007}"#,
        r#"{"a":1.0}"#,
        r#"{"a":1e2}"#,
        r#"{"a":1234567890123456789}"#,
        r#"{"a":"\u0041"}"#,
        r#"{"a":"é"}"#,
        r#"{"a":{"b":1}}"#,
        r#"{"a":[1]}"#,
        r#"{"payload":{"id":1},"schema":{}}"#,
        r#"{"a":1,}"#,
        r#"{"a":tru}"#,
        r#"{"a":truex}"#,
        r#"[1]"#,
    ] {
        assert_eq!(already_canonical(key.as_bytes()), None, "{key}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

    /// Whenever the key is taken as it is, the long way gives the same text.
    #[test]
    fn canonical_key_shortcut_agrees_with_the_long_way(
        parts in proptest::collection::vec(proptest::sample::select(vec![
            "{", "}", "\"", ":", ",", "a", "b", "id", "payload", "schema", "0", "1", "-", "9", "e", ".",
            "true", "false", "null", " ", "\\", "\\\"", "\\u0041", "\u{e9}", "[", "]", "123456789012345678",
            "1234567890123456789", "99999999999999999999",
        ]), 0..24),
    ) {
        let text: String = parts.concat();
        if let Some(fast) = already_canonical(text.as_bytes()) {
            proptest::prop_assert_eq!(Ok(fast.to_string()), canonicalize_key(text.as_bytes()), "{}", text);
        }
    }

    /// Generated plain keys: the shortcut is taken, and agrees.
    #[test]
    fn canonical_key_shortcut_is_taken_for_plain_keys(
        fields in proptest::collection::btree_map("[a-z_]{0,6}", proptest::prop_oneof![
            (-99_999_999_999_999_999i64..=99_999_999_999_999_999).prop_map(|n| json!(n)),
            "[a-zA-Z0-9 ./:-]{0,8}".prop_map(|s| json!(s)),
            proptest::bool::ANY.prop_map(|b| json!(b)),
            Just(json!(null)),
        ], 1..5),
    ) {
        let text = serde_json::Value::Object(fields.into_iter().collect()).to_string();
        proptest::prop_assert_eq!(already_canonical(text.as_bytes()).map(str::to_string), Some(text.clone()));
        proptest::prop_assert_eq!(canonicalize_key(text.as_bytes()), Ok(text));
    }
}

#[test]
fn a_commit_time_outside_the_years_1_to_9999_is_a_dead_letter() {
    // Debezium's ts_us by mistake, and the extremes whose age the emit step
    // computed with an overflow (a panic in debug builds, a wrapped metric in release).
    let micros = 1_733_130_000_000_000i64;
    for (ts, hint) in [(micros, true), (i64::MAX, true), (i64::MIN, false), (super::normalizer::MIN_TS_MS - 1, false)] {
        let v = format!(r#"{{"after":{{"id":1}},"op":"c","source":{{"ts_ms":{ts}}}}}"#);
        let e = err(source("").normalize(&rec(Some(r#"{"id":1}"#), Some(&v))));
        assert_eq!(e.kind.reason(), "bad_timestamp", "{e}");
        let text = e.to_string();
        assert!(text.contains(&format!("`source.ts_ms` or `ts_ms`: {ts} is not a time between the years 1 and 9999")), "{text}");
        assert_eq!(text.contains("micro- or nanoseconds?"), hint, "{text}");
        assert!(text.contains("topic eu.t partition 2 offset 41"), "{text}");
    }
    let v = format!(r#"{{"after":{{"id":1}},"op":"c","ts_ms":{micros}}}"#);
    let e = err(source("").normalize(&rec(Some(r#"{"id":1}"#), Some(&v))));
    assert_eq!(e.kind.reason(), "bad_timestamp", "{e}");
    let flat = source("format = \"json\"\nts_field = \"updated\"");
    let e = err(flat.normalize(&rec(Some(r#"{"id":1}"#), Some(&format!(r#"{{"id":1,"updated":{micros}}}"#)))));
    assert!(e.to_string().contains(&format!("timestamp field `updated`: {micros} is not a time")), "{e}");
    let mut r = rec(Some(r#"{"id":1}"#), Some(r#"{"after":{"id":1},"op":"c"}"#));
    r.timestamp = Some(i64::MAX);
    assert!(err(source("").normalize(&r)).to_string().contains("`<kafka record timestamp>`"));
    // The bounds are the calendar's: both ends are taken.
    for ts in [super::normalizer::MIN_TS_MS, super::normalizer::MAX_TS_MS, -1, 0] {
        assert!(crate::time::format_millis(ts).is_some());
        let v = format!(r#"{{"after":{{"id":1}},"op":"c","source":{{"ts_ms":{ts}}}}}"#);
        assert_eq!(event(source("").normalize(&rec(Some(r#"{"id":1}"#), Some(&v)))).ts, ts);
    }
    assert!(crate::time::format_millis(super::normalizer::MAX_TS_MS + 1).is_none());
    assert!(crate::time::format_millis(super::normalizer::MIN_TS_MS - 1).is_none());
}
