//! Tests of Tributary's own Avro records: values read back through
//! apache-avro's reader, schema evolution, and properties over any record.

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
            row: json!({"id": 42, "name": "Zoë ✓", "nested": {"a": [1, null]}}).as_object().cloned().map(Into::into),
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
    let version = Version {
        source: "eu".into(),
        vv: clock(&[("eu", 1)]),
        ts: 1,
        op: Op::Upsert,
        row: Some(crate::merge::Row::new().into()),
    };
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
    let Some((_, Value::Union(1, array))) = fields.into_iter().find(|(name, _)| name == "columns") else { panic!("no columns") };
    let as_json = serde_json::Value::try_from(*array).unwrap();
    assert_eq!(as_json, serde_json::to_value(&columns).unwrap());
    // And the record's field names are the JSON object's keys.
    let Schema::Record(conflict) = audit_schema() else { panic!("not a record") };
    let Schema::Union(union) = &conflict.fields[conflict.lookup["columns"]].schema else { panic!("columns is not a union") };
    let Schema::Array(array) = &union.variants()[1] else { panic!("columns is not an optional array") };
    let mut avro_fields = record_field_names(&array.items);
    avro_fields.sort();
    let mut json_fields: Vec<String> = serde_json::to_value(&columns[0]).unwrap().as_object().unwrap().keys().cloned().collect();
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
        let versions = vec![Version { source: "s".into(), vv: vv.clone(), ts, op, row: row.map(Into::into) }];
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
