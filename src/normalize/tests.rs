use super::*;
use crate::config::SourceConfig;
use serde_json::json;

fn source(extra: &str) -> SourceNormalizer {
    let text = format!("name = \"eu\"\ntopic = \"eu.t\"\n{extra}");
    let cfg: SourceConfig = toml::from_str(&text).unwrap();
    SourceNormalizer::new(&cfg)
}

fn rec<'a>(key: Option<&'a str>, value: Option<&'a str>) -> InputRecord<'a> {
    InputRecord {
        topic: "eu.t",
        partition: 2,
        offset: 41,
        timestamp: Some(999),
        key: key.map(str::as_bytes),
        value: value.map(str::as_bytes),
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

const UPDATE: &str = r#"{"before":{"id":7,"name":"a"},"after":{"id":7,"name":"b"},"source":{"ts_ms":1700,"lsn":5000},"op":"u","ts_ms":1800}"#;

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
    let e = event(n.normalize(&rec(Some(r#"{"id":1}"#), Some(r#"{"before":{"id":1},"after":null,"op":"d","source":{"ts_ms":1}}"#))));
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
    assert!(err(n.normalize(&rec(Some(r#"{"id":7}"#), Some(&missing)))).to_string().contains("sequence field `source.lsn`: missing"));
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
