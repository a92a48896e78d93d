//! Re-keying, then normalizing as the repartition topic's reader, gives the
//! event the original record gives; the processor's merge of a re-keyed
//! source equals the direct merge.

use serde_json::json;

use super::*;
use crate::config::SourceConfig;
use crate::merge::{ChangeEvent, Policy};
use crate::normalize::{NormalizeError, Normalized};
use crate::pipeline::{MemoryStore, Pipeline, Step};

const TOPIC: &str = "erp.customers";
const REPARTITION: &str = "g-default-erp-repartition";

/// The source `erp`, configured with `extra` lines.
fn source_config(extra: &str) -> SourceConfig {
    toml::from_str(&format!("name = \"erp\"\ntopic = \"{TOPIC}\"\n{extra}")).unwrap()
}

fn config(extra: &str) -> Config {
    let mut c = Config::parse(
        "[kafka]\nbootstrap_servers = \"k:9092\"\ngroup_id = \"g\"\n[output]\ntopic = \"out\"\n[[sources]]\nname = \"x\"\ntopic = \"x.t\"\n",
        "test.toml",
        [],
    )
    .unwrap();
    c.sources = vec![source_config(extra)];
    c
}

/// A rekeyer into `partitions` partitions and the normalizers of the
/// original topic and of the repartition topic.
fn setup(extra: &str, partitions: i32) -> (Rekeyer, SourceNormalizer, SourceNormalizer) {
    let rekeyer = Rekeyer::new(&config(extra), "erp", partitions, None).unwrap();
    let direct = SourceNormalizer::new(&source_config(extra), Policy::FieldLww);
    let read_back = SourceNormalizer::new(&source_config(extra), Policy::FieldLww).repartitioned();
    (rekeyer, direct, read_back)
}

/// An original record: topic `TOPIC`, partition 4, offset `offset`.
fn original<'a>(
    offset: i64,
    key: Option<&'a str>,
    value: Option<&'a str>,
    headers: &'a [(&'a str, &'a [u8])],
) -> InputRecord<'a> {
    InputRecord {
        topic: TOPIC,
        partition: 4,
        offset,
        timestamp: Some(1_234),
        key: key.map(str::as_bytes),
        value: value.map(str::as_bytes),
        headers,
    }
}

/// `r` as the repartition topic holds it (at `offset` of its partition),
/// handed to `f` as a consumer would read it.
fn read_back<T>(r: &Rekeyed, offset: i64, f: impl FnOnce(&InputRecord<'_>) -> T) -> T {
    let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    f(&InputRecord {
        topic: REPARTITION,
        partition: r.partition,
        offset,
        timestamp: Some(1_234),
        key: Some(&r.key),
        value: r.value.as_deref(),
        headers: &headers,
    })
}

fn event(n: Result<Normalized, NormalizeError>) -> ChangeEvent {
    match n {
        Ok(Normalized::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

const LEGACY: &str = r#"
[transform]
rename = { cust_no = "id", EMAIL_ADDR = "email" }
cast = { id = "int" }
"#;

/// Debezium JSON records of one source: creates, updates, deletes with and
/// without a before image, a schema-wrapped key and value.
fn debezium_records() -> Vec<(&'static str, String)> {
    let plain = |op: &str, before: serde_json::Value, after: serde_json::Value, ts: i64| {
        json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}}).to_string()
    };
    vec![
        (r#"{"id":7}"#, plain("c", json!(null), json!({"id": 7, "name": "a", "region": "eu"}), 10)),
        (r#"{"id":7}"#, plain("u", json!({"id": 7, "name": "a", "region": "eu"}), json!({"id": 7, "name": "b", "region": "eu"}), 11)),
        (r#"{"id": 8}"#, plain("r", json!(null), json!({"id": 8, "name": "c", "region": "us"}), 12)),
        (r#"{"id":8}"#, plain("d", json!({"id": 8, "name": "c", "region": "us"}), json!(null), 13)),
        (r#"{"id":9}"#, plain("d", json!(null), json!(null), 14)),
        (
            r#"{"schema":{"type":"struct"},"payload":{"id":10}}"#,
            json!({"schema": {"type": "struct"}, "payload": {"before": null, "after": {"id": 10, "name": "w", "region": "ap"}, "op": "c", "source": {"ts_ms": 15}}}).to_string(),
        ),
    ]
}

/// The same records as the legacy source with the mapping above sends them.
fn legacy_records() -> Vec<(&'static str, String)> {
    let plain = |op: &str, before: serde_json::Value, after: serde_json::Value, ts: i64| {
        json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}}).to_string()
    };
    vec![
        (r#"{"cust_no":"0042"}"#, plain("c", json!(null), json!({"cust_no": "0042", "EMAIL_ADDR": "a@x"}), 10)),
        (
            r#"{"cust_no":"42"}"#,
            plain("u", json!({"cust_no": "42", "EMAIL_ADDR": "a@x"}), json!({"cust_no": "42", "EMAIL_ADDR": "b@x"}), 11),
        ),
        (r#"{"cust_no":"0042"}"#, plain("d", json!(null), json!(null), 12)),
    ]
}

/// Every record, re-keyed and read back at another partition and offset,
/// gives the event the original gives; its key is the event's key, placed
/// by murmur2.
fn assert_round_trips(extra: &str, records: &[(&str, String)]) {
    for partitions in [1, 3, 12] {
        let (rekeyer, direct, read_back_normalizer) = setup(extra, partitions);
        for (i, (key, value)) in records.iter().enumerate() {
            let rec = original(100 + i as i64, Some(key), Some(value), &[]);
            let expected = event(direct.normalize(&rec));
            let rekeyed = rekeyer.rekey(&rec).unwrap_or_else(|e| panic!("{extra}: record {i}: {e}"));
            assert_eq!(rekeyed.key, expected.key.as_bytes(), "{extra}: record {i}: keyed by the canonical key");
            assert_eq!(rekeyed.partition, murmur2_partition(expected.key.as_bytes(), partitions));
            assert_eq!(rekeyed.value.as_deref(), Some(value.as_bytes()), "the value travels unchanged");
            let got = read_back(&rekeyed, 7, |r| event(read_back_normalizer.normalize(r)));
            assert_eq!(got, expected, "{extra}: record {i}: the same event, clock included");
            assert_eq!(got.vv.to_json(), format!(r#"{{"erp":{}}}"#, 101 + i), "the clock counts the original offset");
        }
    }
}

#[test]
fn repartition_topics_are_named_by_group_table_and_source() {
    assert_eq!(repartition_topic("g", "default", "erp"), "g-default-erp-repartition");
    assert_eq!(repartition_topic("tributary", "customers", "legacy.crm"), "tributary-customers-legacy.crm-repartition");
}

#[test]
fn debezium_json_records_read_back_as_the_originals() {
    assert_round_trips("", &debezium_records());
}

#[test]
fn key_fields_pick_the_key_from_the_row_through_the_detour() {
    // Keyed by region instead of id: the "always" case.
    let records: Vec<_> = debezium_records().into_iter().filter(|(k, _)| !k.contains("9")).collect();
    assert_round_trips("key_fields = [\"region\"]", &records);
    let (rekeyer, ..) = setup("key_fields = [\"region\"]", 3);
    let (key, value) = &records[0];
    assert_eq!(rekeyer.rekey(&original(0, Some(key), Some(value), &[])).unwrap().key, br#"{"region":"eu"}"#);
}

#[test]
fn transformed_keys_read_back_as_the_originals() {
    assert_round_trips(LEGACY, &legacy_records());
    assert_round_trips(&format!("key_fields = [\"id\"]\n{LEGACY}"), &legacy_records());
    let (rekeyer, ..) = setup(LEGACY, 3);
    let (key, value) = &legacy_records()[0];
    let rekeyed = rekeyer.rekey(&original(0, Some(key), Some(value), &[])).unwrap();
    assert_eq!(rekeyed.key, br#"{"id":42}"#, "the key in the row's names and types");
    assert_eq!(rekeyed.partition, 1, "the Java client puts {{\"id\":42}} in partition 1 of 3");
}

#[test]
fn key_extraction_sees_the_original_key_not_the_canonical_one() {
    // A swap is not idempotent: the canonical key through the transform
    // again would swap back. Only the original key gives the original event.
    let swap = "[transform]\nrename = { region = \"id\", id = \"region\" }";
    let records = vec![
        (r#"{"id":"eu","region":7}"#, json!({"after": {"id": "eu", "region": 7}, "op": "c", "source": {"ts_ms": 1}}).to_string()),
        (r#"{"id":"eu","region":7}"#, json!({"before": null, "after": null, "op": "d", "source": {"ts_ms": 2}}).to_string()),
    ];
    assert_round_trips(swap, &records);
    assert_round_trips(&format!("key_fields = [\"id\", \"region\"]\n{swap}"), &records);
    let (rekeyer, ..) = setup(swap, 3);
    let rekeyed = rekeyer.rekey(&original(0, Some(records[0].0), Some(&records[0].1), &[])).unwrap();
    assert_eq!(rekeyed.key, br#"{"id":7,"region":"eu"}"#);
}

#[test]
fn flat_json_records_read_back_as_the_originals() {
    let records = vec![
        (r#"{"id":1}"#, json!({"id": 1, "name": "a", "updated_at": 5}).to_string()),
        (r#"{"id":1}"#, json!({"id": 1, "name": "b", "updated_at": 6, "deleted": true}).to_string()),
    ];
    assert_round_trips("format = \"json\"\nts_field = \"updated_at\"", &records);
}

#[test]
fn partitions_agree_with_the_java_client() {
    // Placed by the Kafka 4.4 Java client's partitionForKey over 3, 6 and
    // 12 partitions (the vectors of crate::kafka::partitioner).
    let cases = [(1, [0, 0, 0]), (42, [1, 1, 1]), (1000, [0, 0, 6])];
    for (id, expected) in cases {
        let key = json!({"id": id}).to_string();
        let value = json!({"after": {"id": id}, "op": "c", "source": {"ts_ms": 1}}).to_string();
        let got = [3, 6, 12].map(|n| {
            let (rekeyer, ..) = setup("", n);
            rekeyer.rekey(&original(0, Some(&key), Some(&value), &[])).unwrap().partition
        });
        assert_eq!(got, expected, "{key}");
    }
}

#[test]
fn origin_headers_follow_the_original_headers() {
    let (rekeyer, direct, read_back_normalizer) = setup("", 3);
    let headers: [(&str, &[u8]); 1] = [("__debezium.newkey", br#"{"id":8}"#)];
    let value = json!({"before": {"id": 7}, "after": null, "op": "d", "source": {"ts_ms": 3}}).to_string();
    let rec = original(55, Some(r#"{"id":7}"#), Some(&value), &headers);
    let rekeyed = rekeyer.rekey(&rec).unwrap();
    let names: Vec<&str> = rekeyed.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["__debezium.newkey", ORIGIN_TOPIC_HEADER, ORIGIN_PARTITION_HEADER, ORIGIN_OFFSET_HEADER, ORIGIN_KEY_HEADER]
    );
    let values: Vec<&[u8]> = rekeyed.headers.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(values[1..], [TOPIC.as_bytes(), b"4", b"55", br#"{"id":7}"#]);
    read_back(&rekeyed, 0, |r| {
        assert_eq!(r.key_change(), rec.key_change(), "Debezium's key-change headers still tell");
        assert_eq!(event(read_back_normalizer.normalize(r)), event(direct.normalize(&rec)));
    });
}

#[test]
fn tombstones_travel_and_are_ignored_when_read_back() {
    for extra in ["", "key_fields = [\"region\"]"] {
        let (rekeyer, direct, read_back_normalizer) = setup(extra, 3);
        let rec = original(3, Some(r#"{"id":7}"#), None, &[]);
        assert_eq!(direct.normalize(&rec).unwrap(), Normalized::Tombstone);
        // With key_fields the tombstone's key lacks the field: no error, it
        // is keyed by its record key (it merges nothing wherever it lands).
        let rekeyed = rekeyer.rekey(&rec).unwrap_or_else(|e| panic!("{extra}: {e}"));
        assert_eq!(rekeyed.key, br#"{"id":7}"#);
        assert_eq!(rekeyed.value, None);
        assert_eq!(read_back(&rekeyed, 0, |r| read_back_normalizer.normalize(r)).unwrap(), Normalized::Tombstone);
    }
}

#[test]
fn a_record_that_cannot_be_keyed_is_a_typed_dead_letter_at_its_own_position() {
    let (rekeyer, direct, _) = setup("", 3);
    let value = json!({"after": {"id": 1}, "op": "c", "source": {"ts_ms": 1}}).to_string();
    let rec = original(77, None, Some(&value), &[]);
    let e = rekeyer.rekey(&rec).unwrap_err();
    assert_eq!(e, RekeyError { source_name: "erp".into(), kind: NormalizeErrorKind::MissingKey });
    assert_eq!(e.kind, direct.normalize(&rec).unwrap_err().kind, "what normalizing would report");
    assert!(!e.is_retriable());
    assert_eq!(e.reason().reason(), "missing_key");
    let dead = e.into_dead_letter(&rec);
    assert_eq!(dead.source_name.as_deref(), Some("erp"));
    assert_eq!(dead.to_string(), format!("topic {TOPIC} partition 4 offset 77: {}", NormalizeErrorKind::MissingKey));

    let (rekeyer, ..) = setup("key_fields = [\"tenant\"]", 3);
    let e = rekeyer.rekey(&original(0, Some(r#"{"id":1}"#), Some(&value), &[])).unwrap_err();
    assert_eq!(e.kind, NormalizeErrorKind::MissingKeyField("tenant".into()));
    // The error normalizing reports first wins: a bad value before a bad key.
    let (rekeyer, ..) = setup("", 3);
    let e = rekeyer.rekey(&original(0, Some("not json"), Some("{not json"), &[])).unwrap_err();
    assert_eq!(e.kind.reason(), "bad_value");
}

#[test]
fn a_filtered_record_is_no_dead_letter_and_is_counted_once() {
    let extra = "[where]\nregion = \"eu\"";
    let (rekeyer, _, read_back_normalizer) = setup(extra, 3);
    let value = json!({"after": {"id": 1, "region": "us"}, "op": "c", "source": {"ts_ms": 1}}).to_string();
    // No key at all: normalizing would filter it before looking for one.
    let rekeyed = rekeyer.rekey(&original(0, None, Some(&value), &[])).unwrap();
    assert_eq!(read_back(&rekeyed, 0, |r| read_back_normalizer.normalize(r)).unwrap(), Normalized::Filtered);
    assert_eq!(read_back_normalizer.filter_counts().unwrap().take(), (0, 1));
}

#[test]
fn errors_found_when_read_back_name_the_original_record() {
    let (rekeyer, direct, read_back_normalizer) = setup("", 3);
    // A good key and a bad value: re-keyed without parsing the value.
    let rec = original(90, Some(r#"{"id":1}"#), Some(r#"{"op":"x","after":{"id":1}}"#), &[]);
    let expected = direct.normalize(&rec).unwrap_err();
    let rekeyed = rekeyer.rekey(&rec).unwrap();
    let got = read_back(&rekeyed, 3, |r| read_back_normalizer.normalize(r).unwrap_err());
    assert_eq!((got.position, got.source_name, got.kind), (expected.position, expected.source_name, expected.kind));
}

#[test]
fn origin_headers_on_an_ordinary_topic_are_ignored() {
    let (_, direct, _) = setup("", 3);
    let value = json!({"after": {"id": 7, "name": "a"}, "op": "c", "source": {"ts_ms": 1}}).to_string();
    let forged: [(&str, &[u8]); 4] = [
        (ORIGIN_TOPIC_HEADER, b"elsewhere"),
        (ORIGIN_PARTITION_HEADER, b"0"),
        (ORIGIN_OFFSET_HEADER, b"999999"),
        (ORIGIN_KEY_HEADER, br#"{"id":99}"#),
    ];
    let with = event(direct.normalize(&original(5, Some(r#"{"id":7}"#), Some(&value), &forged)));
    let without = event(direct.normalize(&original(5, Some(r#"{"id":7}"#), Some(&value), &[])));
    assert_eq!(with, without);
    assert_eq!((with.key.as_str(), with.vv.to_json()), (r#"{"id":7}"#, r#"{"erp":6}"#.to_string()));
}

#[test]
fn a_repartition_record_without_its_origin_is_a_dead_letter() {
    let (_, _, read_back_normalizer) = setup("", 3);
    let value = json!({"after": {"id": 7}, "op": "c", "source": {"ts_ms": 1}}).to_string();
    let key = r#"{"id":7}"#;
    let bad_offset: [(&str, &[u8]); 3] =
        [(ORIGIN_TOPIC_HEADER, TOPIC.as_bytes()), (ORIGIN_PARTITION_HEADER, b"1"), (ORIGIN_OFFSET_HEADER, b"-4")];
    for headers in [&[][..], &bad_offset[..2], &bad_offset[..]] {
        let rec = InputRecord { topic: REPARTITION, ..original(5, Some(key), Some(&value), headers) };
        let e = read_back_normalizer.normalize(&rec).unwrap_err();
        assert_eq!(e.kind.reason(), "bad_origin", "{e}");
        assert_eq!(e.position.topic, REPARTITION, "no origin to name");
    }
}

#[test]
fn a_rekeyer_needs_its_source_and_partitions() {
    assert_eq!(Rekeyer::new(&config(""), "crm", 3, None).unwrap_err(), RekeyerError::UnknownSource("crm".into()));
    assert_eq!(Rekeyer::new(&config(""), "erp", 0, None).unwrap_err(), RekeyerError::Partitions(0));
    let r = Rekeyer::new(&config(""), "erp", 3, None).unwrap();
    assert_eq!((r.source(), r.partitions()), ("erp", 3));
}

mod pipeline;
