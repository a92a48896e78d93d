//! Tributary's own Avro records: conflict audit records
//! (`schemas/conflict-audit.avsc`) and dead letters (`schemas/dead-letter.avsc`).
//!
//! These are written only when the output format is Avro, and rarely (one per
//! conflict or per bad input record), so they go through apache-avro's
//! generic [`Value`]s, validated against the parsed schema files, rather than
//! a hand-written encoder. The functions here produce the raw Avro datum; the
//! caller adds the Confluent framing (magic byte and registry schema id).
//!
//! As in the changelog state, rows are compact JSON text, the enum `Op` uses
//! the lower-case symbols `upsert` and `delete`, and clock counters above
//! `i64::MAX` (never produced in practice) are written as their
//! two's-complement bit pattern.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::merge::{ColumnWinner, Op, Row, Version, VersionVector};

/// The conflict audit schema (`schemas/conflict-audit.avsc`), as compiled in.
pub const AUDIT_SCHEMA_JSON: &str = include_str!("../../schemas/conflict-audit.avsc");

/// The dead-letter schema (`schemas/dead-letter.avsc`), as compiled in.
pub const DEAD_LETTER_SCHEMA_JSON: &str = include_str!("../../schemas/dead-letter.avsc");

// The files are compiled in and their validity is tested, so a parse failure
// is a build defect, not bad input.
static AUDIT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(AUDIT_SCHEMA_JSON).expect("schemas/conflict-audit.avsc is a valid Avro schema"));
static DEAD_LETTER_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(DEAD_LETTER_SCHEMA_JSON).expect("schemas/dead-letter.avsc is a valid Avro schema"));

/// The parsed conflict audit schema (`io.tributary.audit.Conflict`), e.g. to
/// register it with the schema registry.
pub fn audit_schema() -> &'static Schema {
    &AUDIT_SCHEMA
}

/// The parsed dead-letter schema (`io.tributary.dlq.DeadLetter`), e.g. to
/// register it with the schema registry.
pub fn dead_letter_schema() -> &'static Schema {
    &DEAD_LETTER_SCHEMA
}

/// A conflict audit record, borrowed from the processor's state: the same
/// fields as the JSON audit record.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    /// The canonical key.
    pub key: &'a str,
    /// The key's partition (task).
    pub partition: i32,
    /// The merge policy's configuration spelling.
    pub policy: &'a str,
    /// The delete policy's configuration spelling.
    pub deletes: &'a str,
    /// The winning source, when the merged record names one.
    pub winner: Option<&'a str>,
    /// The merged clock (pointwise maximum over `versions`).
    pub merged_vv: &'a VersionVector,
    /// True when the key resolved to deleted.
    pub deleted: bool,
    /// The key's concurrent versions, winner first.
    pub versions: &'a [Version],
    /// The input record that triggered the audit record.
    pub event: AuditEvent<'a>,
    /// `field-lww`: which write decided each column and why
    /// ([`crate::merge::MergeEngine::explain`]); empty otherwise, written as
    /// null (the JSON record leaves `columns` out).
    pub columns: &'a [ColumnWinner],
}

/// Where the input record that triggered an audit record came from.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// The configured source name of the input topic, when it maps to one.
    pub source: Option<&'a str>,
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The input offset.
    pub offset: i64,
}

/// A dead letter: an input record that could not be processed, with the
/// original bytes untouched so it can be re-driven.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Human-readable description of the failure (names topic, partition and offset).
    pub error: &'a str,
    /// Short label of the failure, e.g. `bad_value`, `unknown_schema`.
    pub reason: &'a str,
    /// The configured source name of the input topic, when it maps to one.
    pub source: Option<&'a str>,
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The input offset.
    pub offset: i64,
    /// The input record's Kafka timestamp (ms since the epoch), when it had one.
    pub timestamp: Option<i64>,
    /// The original key bytes.
    pub key: Option<&'a [u8]>,
    /// The original value bytes (`None` for a tombstone).
    pub value: Option<&'a [u8]>,
}

/// Encodes a conflict audit record as a raw Avro datum of `io.tributary.audit.Conflict`.
pub fn encode_audit(r: &AuditRecord<'_>) -> Vec<u8> {
    let value = Value::Record(vec![
        field("key", Value::String(r.key.to_owned())),
        field("partition", Value::Int(r.partition)),
        field("policy", Value::String(r.policy.to_owned())),
        field("deletes", Value::String(r.deletes.to_owned())),
        field("winner", optional(r.winner.map(|w| Value::String(w.to_owned())))),
        field("merged_vv", clock_value(r.merged_vv)),
        field("deleted", Value::Boolean(r.deleted)),
        field("versions", Value::Array(r.versions.iter().map(audit_version_value).collect())),
        field("event", audit_event_value(&r.event)),
        field(
            "columns",
            optional((!r.columns.is_empty()).then(|| Value::Array(r.columns.iter().map(column_winner_value).collect()))),
        ),
    ]);
    write_datum(audit_schema(), &value, "conflict audit record")
}

/// Encodes a dead letter as a raw Avro datum of `io.tributary.dlq.DeadLetter`.
pub fn encode_dead_letter(d: &DeadLetter<'_>) -> Vec<u8> {
    let value = Value::Record(vec![
        field("error", Value::String(d.error.to_owned())),
        field("reason", Value::String(d.reason.to_owned())),
        field("source", optional(d.source.map(|s| Value::String(s.to_owned())))),
        field("topic", Value::String(d.topic.to_owned())),
        field("partition", Value::Int(d.partition)),
        field("offset", Value::Long(d.offset)),
        field("timestamp", optional(d.timestamp.map(Value::Long))),
        field("key", optional(d.key.map(|k| Value::Bytes(k.to_vec())))),
        field("value", optional(d.value.map(|v| Value::Bytes(v.to_vec())))),
    ]);
    write_datum(dead_letter_schema(), &value, "dead letter")
}

/// Writes `value` as a datum of `schema`, validating it first. Every value
/// here is built field by field from the schema, so a failure is a bug in
/// this module (a field that does not match the schema file), not bad input.
fn write_datum(schema: &Schema, value: &Value, what: &str) -> Vec<u8> {
    let writer = GenericDatumWriter::builder(schema).build().unwrap_or_else(|e| panic!("the {what} schema resolves: {e}"));
    let mut buf = Vec::with_capacity(256);
    writer.write_value_ref(&mut buf, value).unwrap_or_else(|e| panic!("a {what} value built from its schema encodes: {e}"));
    buf
}

/// One record field.
fn field(name: &str, value: Value) -> (String, Value) {
    (name.to_owned(), value)
}

/// A `["null", T]` union value.
fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

/// A version vector as a `map<long>` (counters as their bit pattern).
fn clock_value(clock: &VersionVector) -> Value {
    Value::Map(clock.iter().map(|(source, counter)| (source.to_owned(), Value::Long(counter as i64))).collect::<HashMap<_, _>>())
}

/// The enum `Op` value: index and symbol.
fn op_value(op: Op) -> Value {
    match op {
        Op::Upsert => Value::Enum(0, "upsert".to_owned()),
        Op::Delete => Value::Enum(1, "delete".to_owned()),
    }
}

/// A row as compact JSON text.
fn row_json(row: &Row) -> Value {
    // Maps with string keys and JSON values always serialize.
    Value::String(serde_json::to_string(row).expect("JSON rows serialize"))
}

/// One `io.tributary.audit.Version` record.
fn audit_version_value(v: &Version) -> Value {
    Value::Record(vec![
        field("source", Value::String(v.source.clone())),
        field("vv", clock_value(&v.vv)),
        field("ts", Value::TimestampMillis(v.ts)),
        field("op", op_value(v.op)),
        field("row", optional(v.row.as_ref().map(row_json))),
    ])
}

/// The `io.tributary.audit.Event` record.
fn audit_event_value(e: &AuditEvent<'_>) -> Value {
    Value::Record(vec![
        field("source", optional(e.source.map(|s| Value::String(s.to_owned())))),
        field("topic", Value::String(e.topic.to_owned())),
        field("partition", Value::Int(e.partition)),
        field("offset", Value::Long(e.offset)),
    ])
}

/// One `io.tributary.audit.ColumnWinner` record.
fn column_winner_value(c: &ColumnWinner) -> Value {
    Value::Record(vec![
        field("column", Value::String(c.column.clone())),
        field("rule", Value::String(c.rule.to_owned())),
        field("source", optional(c.source.as_ref().map(|s| Value::String(s.clone())))),
        field("vv", optional(c.vv.as_ref().map(clock_value))),
        field("why", Value::String(c.why.to_owned())),
    ])
}

#[cfg(test)]
mod tests {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::schema::Name;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn clock(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// Reads a datum with apache-avro's generic reader; it must use every byte.
    fn read(schema: &Schema, datum: &[u8]) -> Value {
        let reader = GenericDatumReader::builder(schema).build().unwrap();
        let mut rest = datum;
        let value = reader.read_value(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes left unread", rest.len());
        value
    }

    fn string(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    fn null() -> Value {
        Value::Union(0, Box::new(Value::Null))
    }

    fn some(v: Value) -> Value {
        Value::Union(1, Box::new(v))
    }

    fn longs(entries: &[(&str, i64)]) -> Value {
        Value::Map(entries.iter().map(|(k, v)| (k.to_string(), Value::Long(*v))).collect())
    }

    fn record_field_names(schema: &Schema) -> Vec<String> {
        match schema {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
            other => panic!("not a record: {other:?}"),
        }
    }

    fn record_name(schema: &Schema) -> &Name {
        match schema {
            Schema::Record(r) => &r.name,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn schemas_parse_with_their_documented_names() {
        assert_eq!(record_name(audit_schema()).fullname(None), "io.tributary.audit.Conflict");
        assert_eq!(record_name(dead_letter_schema()).fullname(None), "io.tributary.dlq.DeadLetter");
    }

    #[test]
    fn audit_records_decode_to_the_expected_values() {
        let versions = vec![
            Version {
                source: "eu".into(),
                vv: clock(&[("eu", 3), ("us", 1)]),
                ts: 1_700_000_000_000,
                op: Op::Upsert,
                row: json!({"id": 42, "name": "Zoë ✓", "nested": {"a": [1, null]}}).as_object().cloned(),
            },
            Version { source: "us".into(), vv: clock(&[("us", 2)]), ts: 1_699_999_999_999, op: Op::Delete, row: None },
        ];
        let merged = clock(&[("eu", 3), ("us", 2)]);
        let record = AuditRecord {
            key: r#"{"id":42}"#,
            partition: 7,
            policy: "lww",
            deletes: "delete-wins",
            winner: Some("eu"),
            merged_vv: &merged,
            deleted: false,
            versions: &versions,
            event: AuditEvent { source: Some("us"), topic: "db.us.customers", partition: 7, offset: 1234 },
            columns: &[],
        };
        let expected = Value::Record(vec![
            ("key".into(), string(r#"{"id":42}"#)),
            ("partition".into(), Value::Int(7)),
            ("policy".into(), string("lww")),
            ("deletes".into(), string("delete-wins")),
            ("winner".into(), some(string("eu"))),
            ("merged_vv".into(), longs(&[("eu", 3), ("us", 2)])),
            ("deleted".into(), Value::Boolean(false)),
            (
                "versions".into(),
                Value::Array(vec![
                    Value::Record(vec![
                        ("source".into(), string("eu")),
                        ("vv".into(), longs(&[("eu", 3), ("us", 1)])),
                        ("ts".into(), Value::TimestampMillis(1_700_000_000_000)),
                        ("op".into(), Value::Enum(0, "upsert".into())),
                        ("row".into(), some(string(r#"{"id":42,"name":"Zoë ✓","nested":{"a":[1,null]}}"#))),
                    ]),
                    Value::Record(vec![
                        ("source".into(), string("us")),
                        ("vv".into(), longs(&[("us", 2)])),
                        ("ts".into(), Value::TimestampMillis(1_699_999_999_999)),
                        ("op".into(), Value::Enum(1, "delete".into())),
                        ("row".into(), null()),
                    ]),
                ]),
            ),
            (
                "event".into(),
                Value::Record(vec![
                    ("source".into(), some(string("us"))),
                    ("topic".into(), string("db.us.customers")),
                    ("partition".into(), Value::Int(7)),
                    ("offset".into(), Value::Long(1234)),
                ]),
            ),
            ("columns".into(), null()),
        ]);
        assert_eq!(read(audit_schema(), &encode_audit(&record)), expected);
    }

    #[test]
    fn audit_records_carry_nulls_and_empty_sets() {
        let merged = VersionVector::new();
        let record = AuditRecord {
            key: "k",
            partition: 0,
            policy: "field-lww",
            deletes: "lww",
            winner: None,
            merged_vv: &merged,
            deleted: true,
            versions: &[],
            event: AuditEvent { source: None, topic: "t", partition: 0, offset: 0 },
            columns: &[],
        };
        let Value::Record(fields) = read(audit_schema(), &encode_audit(&record)) else { panic!("not a record") };
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("winner"), null());
        assert_eq!(get("merged_vv"), Value::Map(Default::default()));
        assert_eq!(get("deleted"), Value::Boolean(true));
        assert_eq!(get("versions"), Value::Array(vec![]));
        assert_eq!(get("columns"), null(), "no column winners: null, as the JSON record leaves columns out");
        let Value::Record(event) = get("event") else { panic!("not a record") };
        assert_eq!(event[0], ("source".into(), null()));
    }

    #[test]
    fn audit_version_fields_are_the_json_audit_records() {
        // The Avro record mirrors the JSON one field for field, so consumers
        // can switch formats without renaming anything.
        let version = Version { source: "eu".into(), vv: clock(&[("eu", 1)]), ts: 1, op: Op::Upsert, row: Some(Row::new()) };
        let json_fields: Vec<String> = serde_json::to_value(&version).unwrap().as_object().unwrap().keys().cloned().collect();
        let Schema::Record(conflict) = audit_schema() else { panic!("not a record") };
        let versions = &conflict.fields[conflict.lookup["versions"]].schema;
        let Schema::Array(array) = versions else { panic!("versions is not an array") };
        let mut avro_fields = record_field_names(&array.items);
        avro_fields.sort();
        let mut json_sorted = json_fields.clone();
        json_sorted.sort();
        assert_eq!(avro_fields, json_sorted);
        assert_eq!(
            record_field_names(audit_schema()),
            ["key", "partition", "policy", "deletes", "winner", "merged_vv", "deleted", "versions", "event", "columns"]
        );
    }

    fn winners() -> Vec<ColumnWinner> {
        vec![
            ColumnWinner {
                column: "email".into(),
                rule: "owner",
                source: Some("crm".into()),
                vv: Some(clock(&[("crm", 2), ("eu", 1)])),
                why: "the owner's latest write",
            },
            ColumnWinner {
                column: "id".into(),
                rule: "lww",
                source: Some("eu".into()),
                vv: Some(clock(&[("eu", u64::MAX)])),
                why: "latest write (lww order)",
            },
            ColumnWinner {
                column: "tags".into(),
                rule: "union",
                source: None,
                vv: None,
                why: "union of the additions no removal had seen",
            },
        ]
    }

    fn field_lww_record<'a>(columns: &'a [ColumnWinner], merged: &'a VersionVector) -> AuditRecord<'a> {
        AuditRecord {
            key: r#"{"id":1}"#,
            partition: 2,
            policy: "field-lww",
            deletes: "update-wins",
            winner: None,
            merged_vv: merged,
            deleted: false,
            versions: &[],
            event: AuditEvent { source: Some("crm"), topic: "crm.customers", partition: 2, offset: 9 },
            columns,
        }
    }

    #[test]
    fn audit_records_carry_the_column_winners() {
        let columns = winners();
        let merged = clock(&[("crm", 2), ("eu", 1)]);
        let Value::Record(fields) = read(audit_schema(), &encode_audit(&field_lww_record(&columns, &merged))) else {
            panic!("not a record")
        };
        let column = |name: &str, rule: &str, source: Value, vv: Value, why: &str| {
            Value::Record(vec![
                ("column".into(), string(name)),
                ("rule".into(), string(rule)),
                ("source".into(), source),
                ("vv".into(), vv),
                ("why".into(), string(why)),
            ])
        };
        let expected = some(Value::Array(vec![
            column("email", "owner", some(string("crm")), some(longs(&[("crm", 2), ("eu", 1)])), "the owner's latest write"),
            // Counters above i64::MAX: their bit pattern, as everywhere else.
            column("id", "lww", some(string("eu")), some(longs(&[("eu", -1)])), "latest write (lww order)"),
            column("tags", "union", null(), null(), "union of the additions no removal had seen"),
        ]));
        assert_eq!(fields.last(), Some(&("columns".to_owned(), expected)));
    }

    #[test]
    fn column_winners_read_as_the_json_audit_records_columns() {
        // Field for field and value for value the JSON record's `columns`
        // (counters within i64, where the two formats agree).
        let mut columns = winners();
        columns[1].vv = Some(clock(&[("eu", 7)]));
        let merged = VersionVector::new();
        let Value::Record(fields) = read(audit_schema(), &encode_audit(&field_lww_record(&columns, &merged))) else {
            panic!("not a record")
        };
        let Some((_, Value::Union(1, array))) = fields.into_iter().find(|(name, _)| name == "columns") else {
            panic!("no columns")
        };
        let as_json = serde_json::Value::try_from(*array).unwrap();
        assert_eq!(as_json, serde_json::to_value(&columns).unwrap());
        // And the record's field names are the JSON object's keys.
        let Schema::Record(conflict) = audit_schema() else { panic!("not a record") };
        let Schema::Union(union) = &conflict.fields[conflict.lookup["columns"]].schema else { panic!("columns is not a union") };
        let Schema::Array(array) = &union.variants()[1] else { panic!("columns is not an optional array") };
        let mut avro_fields = record_field_names(&array.items);
        avro_fields.sort();
        let mut json_fields: Vec<String> =
            serde_json::to_value(&columns[0]).unwrap().as_object().unwrap().keys().cloned().collect();
        json_fields.sort();
        assert_eq!(avro_fields, json_fields);
    }

    /// The audit schema as it was before `columns`: the same minus that field.
    fn schema_without_columns() -> Schema {
        let mut json: serde_json::Value = serde_json::from_str(AUDIT_SCHEMA_JSON).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        let before = fields.len();
        fields.retain(|f| f["name"] != "columns");
        assert_eq!(fields.len(), before - 1);
        Schema::parse(&json).unwrap()
    }

    #[test]
    fn the_audit_schema_evolves_backward_compatibly() {
        // The registry's default rule: the new schema reads records written
        // with the old one. An old record then has no column winners.
        let old = schema_without_columns();
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(&old, audit_schema()).unwrap();
        let mut old_record = match read(audit_schema(), &encode_audit(&field_lww_record(&[], &VersionVector::new()))) {
            Value::Record(fields) => fields,
            other => panic!("not a record: {other:?}"),
        };
        old_record.retain(|(name, _)| name != "columns");
        let old_datum = write_datum(&old, &Value::Record(old_record.clone()), "old audit record");
        let reader = GenericDatumReader::builder(&old).reader_schema(audit_schema()).build().unwrap();
        let Value::Record(fields) = reader.read_value(&mut &old_datum[..]).unwrap() else { panic!("not a record") };
        assert_eq!(fields[..fields.len() - 1], old_record[..]);
        assert_eq!(fields.last(), Some(&("columns".to_owned(), null())));
    }

    #[test]
    fn dead_letters_keep_the_original_bytes_exactly() {
        let key = [0x00, 0xFF, 0xC3, 0x28, b'{'];
        let value = [0xC3, 0x01, 0x00, 0x80, 0xFE];
        let letter = DeadLetter {
            error: "db.eu.customers/3@17: value is not JSON: expected value at line 1 column 1 (Zoë ✓)",
            reason: "bad_value",
            source: Some("eu"),
            topic: "db.eu.customers",
            partition: 3,
            offset: 17,
            timestamp: Some(1_700_000_000_123),
            key: Some(&key),
            value: Some(&value),
        };
        let expected = Value::Record(vec![
            ("error".into(), string(letter.error)),
            ("reason".into(), string("bad_value")),
            ("source".into(), some(string("eu"))),
            ("topic".into(), string("db.eu.customers")),
            ("partition".into(), Value::Int(3)),
            ("offset".into(), Value::Long(17)),
            ("timestamp".into(), some(Value::Long(1_700_000_000_123))),
            ("key".into(), some(Value::Bytes(key.to_vec()))),
            ("value".into(), some(Value::Bytes(value.to_vec()))),
        ]);
        assert_eq!(read(dead_letter_schema(), &encode_dead_letter(&letter)), expected);
    }

    #[test]
    fn dead_letters_carry_nulls_and_empty_bytes() {
        let letter = DeadLetter {
            error: "",
            reason: "unknown_schema",
            source: None,
            topic: "t",
            partition: -1,
            offset: i64::MAX,
            timestamp: None,
            key: Some(&[]),
            value: None,
        };
        let expected = Value::Record(vec![
            ("error".into(), string("")),
            ("reason".into(), string("unknown_schema")),
            ("source".into(), null()),
            ("topic".into(), string("t")),
            ("partition".into(), Value::Int(-1)),
            ("offset".into(), Value::Long(i64::MAX)),
            ("timestamp".into(), null()),
            ("key".into(), some(Value::Bytes(vec![]))),
            ("value".into(), null()),
        ]);
        assert_eq!(read(dead_letter_schema(), &encode_dead_letter(&letter)), expected);
    }

    proptest! {
        #[test]
        fn any_dead_letter_encodes_and_reads_back(
            error in ".{0,20}",
            source in prop::option::of(".{0,8}"),
            offset in any::<i64>(),
            timestamp in prop::option::of(any::<i64>()),
            key in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            value in prop::option::of(prop::collection::vec(any::<u8>(), 0..32)),
        ) {
            let letter = DeadLetter {
                error: &error,
                reason: "bad_value",
                source: source.as_deref(),
                topic: "t",
                partition: 0,
                offset,
                timestamp,
                key: key.as_deref(),
                value: value.as_deref(),
            };
            let Value::Record(fields) = read(dead_letter_schema(), &encode_dead_letter(&letter)) else { panic!("not a record") };
            let bytes = |v: &Value| match v {
                Value::Union(0, _) => None,
                Value::Union(1, b) => match &**b { Value::Bytes(b) => Some(b.clone()), other => panic!("{other:?}") },
                other => panic!("{other:?}"),
            };
            prop_assert_eq!(bytes(&fields[7].1), key);
            prop_assert_eq!(bytes(&fields[8].1), value);
            prop_assert_eq!(&fields[0].1, &Value::String(error.clone()));
        }

        #[test]
        fn any_audit_record_encodes(
            key in ".{0,12}",
            counters in prop::collection::btree_map(".{0,6}", any::<u64>(), 0..4),
            ts in any::<i64>(),
            delete in any::<bool>(),
            name in ".{0,12}",
        ) {
            let vv: VersionVector = counters.into_iter().collect();
            let row = (!delete).then(|| json!({"name": name}).as_object().cloned().unwrap());
            let op = if delete { Op::Delete } else { Op::Upsert };
            let versions = vec![Version { source: "s".into(), vv: vv.clone(), ts, op, row }];
            let record = AuditRecord {
                key: &key,
                partition: 0,
                policy: "lww",
                deletes: "lww",
                winner: None,
                merged_vv: &vv,
                deleted: delete,
                versions: &versions,
                event: AuditEvent { source: None, topic: "t", partition: 0, offset: 0 },
                columns: &[],
            };
            let Value::Record(fields) = read(audit_schema(), &encode_audit(&record)) else { panic!("not a record") };
            let expected: HashMap<String, Value> = vv.iter().map(|(k, v)| (k.to_owned(), Value::Long(v as i64))).collect();
            prop_assert_eq!(&fields[5].1, &Value::Map(expected));
        }
    }
}
