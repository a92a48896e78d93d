//! The schema registry stand-in and the fastavro tool, proven against the
//! real clients: schema_registry_converter (what the product uses) talks to
//! `tests/registry/standin.py` as to Confluent Schema Registry, and bytes
//! cross between apache-avro (Rust) and fastavro (Python) both ways.

mod common;

use std::collections::HashMap;

use apache_avro::schema::{RecordSchema, Schema};
use apache_avro::types::Value as Avro;
use apache_avro::{Decimal, GenericSingleObjectReader, GenericSingleObjectWriter};
use common::registry::{fastavro, Registry};
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_all_versions, get_schema_by_subject, get_schema_by_subject_and_version, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::{json, Value};

const HEARTBEAT: &str = r#"{"type":"record","name":"Heartbeat","namespace":"nl.openweb.data","fields":[{"name":"beat","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_string())
}

fn settings(reg: &Registry) -> SrSettings {
    SrSettings::new(reg.url.clone())
}

fn heartbeat(beat: i64) -> Vec<(&'static str, Avro)> {
    vec![("beat", Avro::Long(beat)), ("note", Avro::Union(1, Box::new(Avro::String("hi".into()))))]
}

/// A record value's field.
fn field<'a>(v: &'a Avro, name: &str) -> &'a Avro {
    match v {
        Avro::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no field {name} in {v:?}")).1,
        Avro::Union(_, inner) => field(inner, name),
        _ => panic!("not a record: {v:?}"),
    }
}

/// A record schema's field schema.
fn field_schema<'a>(s: &'a Schema, name: &str) -> &'a Schema {
    let Schema::Record(RecordSchema { fields, .. }) = s else { panic!("not a record schema: {s:?}") };
    &fields.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no field {name}")).schema
}

fn union_branch(s: &Schema, i: usize) -> &Schema {
    let Schema::Union(u) = s else { panic!("not a union: {s:?}") };
    &u.variants()[i]
}

fn connect_name(s: &Schema) -> Option<&str> {
    let Schema::Record(r) = s else { return None };
    r.attributes.get("connect.name").and_then(|v| v.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, SRCError>) -> SRCError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

fn cause(e: &SRCError) -> String {
    format!("{} / {}", e.error, e.cause.as_deref().unwrap_or(""))
}

#[tokio::test]
async fn real_client_registers_encodes_and_decodes() {
    let reg = Registry::start();
    let sr = settings(&reg);

    let posted = post_schema(&sr, "beats-value".into(), avro(HEARTBEAT)).await.unwrap();
    assert_eq!(posted.id, 1);
    // Same schema again (formatted differently): same id, no new version.
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(HEARTBEAT).unwrap()).unwrap();
    assert_eq!(post_schema(&sr, "beats-value".into(), avro(&pretty)).await.unwrap().id, 1);
    assert_eq!(get_all_versions(&sr, "beats-value".into()).await.unwrap(), vec![1]);
    // Same schema under another subject: the global id is reused.
    assert_eq!(post_schema(&sr, "other-value".into(), avro(HEARTBEAT)).await.unwrap().id, 1);
    assert_eq!(get_all_subjects(&sr).await.unwrap(), vec!["beats-value", "other-value"]);

    let strategy = SubjectNameStrategy::TopicNameStrategy("beats".into(), false);
    let registered = get_schema_by_subject(&sr, &strategy).await.unwrap();
    assert_eq!((registered.id, registered.version, registered.subject.as_deref()), (1, Some(1), Some("beats-value")));

    let encoder = AvroEncoder::new(sr.clone());
    let bytes = encoder.encode(heartbeat(3), strategy).await.unwrap();
    assert_eq!(bytes[..5], [0, 0, 0, 0, 1], "Confluent framing: magic byte, id 1");

    let decoder = AvroDecoder::new(sr.clone());
    for _ in 0..3 {
        let decoded = decoder.decode(Some(&bytes)).await.unwrap();
        assert_eq!(field(&decoded.value, "beat"), &Avro::Long(3));
        assert_eq!(field(&decoded.value, "note"), &Avro::Union(1, Box::new(Avro::String("hi".into()))));
        assert_eq!(decoded.name.unwrap().fullname(None), "nl.openweb.data.Heartbeat");
    }
    let requests = reg.requests();
    let by_id: Vec<_> = requests.iter().filter(|r| r.starts_with("GET /schemas/ids/")).collect();
    assert_eq!(by_id, ["GET /schemas/ids/1?deleted=true"], "the decoder fetches a schema once: {requests:?}");
    assert!(requests.contains(&"GET /subjects/beats-value/versions/latest".to_string()), "{requests:?}");

    // The encoder's WithSchema strategies post the schema: POST /subjects/S/versions.
    let with_schema = SubjectNameStrategy::TopicNameStrategyWithSchema("fresh".into(), true, avro(r#""string""#));
    let key = encoder.encode_struct("k1", &with_schema).await.unwrap();
    assert_eq!(key[..5], [0, 0, 0, 0, 2]);
    assert!(reg.requests().contains(&"POST /subjects/fresh-key/versions".to_string()));
    assert_eq!(decoder.decode(Some(&key)).await.unwrap().value, Avro::String("k1".into()));
    // A tombstone decodes to Null without asking the registry.
    assert_eq!(decoder.decode(None).await.unwrap().value, Avro::Null);
}

#[tokio::test]
async fn registry_errors_are_retriable_or_not_as_the_client_decides() {
    let reg = Registry::start();
    let sr = settings(&reg);

    // An unknown id: 404 40403, not retriable, and cached by the decoder.
    let decoder = AvroDecoder::new(sr.clone());
    let e = expect_err(decoder.decode(Some(&[0, 0, 0, 0, 42, 2])).await);
    assert!(!e.retriable && cause(&e).contains("40403"), "{e}");
    let again = expect_err(decoder.decode(Some(&[0, 0, 0, 0, 42, 2])).await);
    assert!(again.cached, "non-retriable errors are cached: {again}");
    assert_eq!(reg.requests().iter().filter(|r| r.starts_with("GET /schemas/ids/42")).count(), 1);

    let id = reg.register("beats-value", HEARTBEAT);
    let bytes = AvroEncoder::new(sr.clone())
        .encode(heartbeat(5), SubjectNameStrategy::TopicNameStrategy("beats".into(), false))
        .await
        .unwrap();
    assert_eq!(bytes[4] as u32, id);

    // 503 (and 502) are retriable and not cached: the next call succeeds.
    reg.inject_fault(503, 1, "/schemas/ids");
    let decoder = AvroDecoder::new(sr.clone());
    let e = expect_err(decoder.decode(Some(&bytes)).await);
    assert!(e.retriable && !e.cached && cause(&e).contains("50003"), "{e}");
    assert_eq!(field(&decoder.decode(Some(&bytes)).await.unwrap().value, "beat"), &Avro::Long(5));

    // Any other error status (500 here) is NOT retriable, and is cached
    // until remove_errors_from_cache.
    reg.inject_fault(500, 1, "/schemas/ids");
    let decoder = AvroDecoder::new(sr.clone());
    let e = expect_err(decoder.decode(Some(&bytes)).await);
    assert!(!e.retriable, "a 500 is not retriable for schema_registry_converter: {e}");
    assert!(expect_err(decoder.decode(Some(&bytes)).await).cached);
    decoder.remove_errors_from_cache();
    assert!(decoder.decode(Some(&bytes)).await.is_ok());

    // A dropped connection is retriable.
    reg.http("POST", "/__standin/faults", Some(&json!({"path_prefix": "/schemas/ids", "drop": true})));
    let e = expect_err(AvroDecoder::new(sr.clone()).decode(Some(&bytes)).await);
    assert!(e.retriable, "{e}");

    // No registry at all: retriable.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = SrSettings::new(format!("http://127.0.0.1:{port}"));
    let e = expect_err(AvroDecoder::new(nowhere).decode(Some(&bytes)).await);
    assert!(e.retriable, "{e}");
}

#[tokio::test]
async fn basic_auth_is_required_when_configured() {
    let reg = Registry::start_with_auth("alice", "s3cret");
    let with = SrSettings::new_builder(reg.url.clone()).set_basic_authorization("alice", Some("s3cret")).build().unwrap();
    let posted = post_schema(&with, "beats-value".into(), avro(HEARTBEAT)).await.unwrap();
    let bytes = AvroEncoder::new(with.clone())
        .encode(heartbeat(1), SubjectNameStrategy::TopicNameStrategy("beats".into(), false))
        .await
        .unwrap();
    assert_eq!(bytes[4] as u32, posted.id);
    assert!(AvroDecoder::new(with).decode(Some(&bytes)).await.is_ok());
    // The harness sends the credentials too.
    assert_eq!(reg.register("beats-value", HEARTBEAT), posted.id);

    for bad in [
        SrSettings::new(reg.url.clone()),
        SrSettings::new_builder(reg.url.clone()).set_basic_authorization("alice", Some("wrong")).build().unwrap(),
    ] {
        let e = expect_err(post_schema(&bad, "beats-value".into(), avro(HEARTBEAT)).await);
        assert!(!e.retriable && cause(&e).contains("401"), "{e}");
        let e = expect_err(AvroDecoder::new(bad).decode(Some(&bytes)).await);
        assert!(!e.retriable && cause(&e).contains("Unauthorized"), "{e}");
    }
}

#[tokio::test]
async fn compatibility_is_enforced_on_register() {
    let reg = Registry::start();
    let sr = settings(&reg);
    let v1 = r#"{"type":"record","name":"Customer","namespace":"shop","fields":[{"name":"id","type":"int"},{"name":"name","type":"string"}]}"#;
    let required = r#"{"type":"record","name":"Customer","namespace":"shop","fields":[{"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"email","type":"string"}]}"#;
    let optional = r#"{"type":"record","name":"Customer","namespace":"shop","fields":[{"name":"id","type":"int"},{"name":"name","type":"string"},{"name":"email","type":["null","string"],"default":null}]}"#;

    let first = post_schema(&sr, "customers-value".into(), avro(v1)).await.unwrap();
    let e = expect_err(post_schema(&sr, "customers-value".into(), avro(required)).await);
    assert!(!e.retriable, "{e}");
    assert!(cause(&e).contains("409") && cause(&e).contains("READER_FIELD_MISSING_DEFAULT_VALUE"), "{e}");
    let (status, answer) = reg.try_register("customers-value", required);
    assert_eq!(status, 409);
    assert_eq!(answer["error_code"], 409);
    assert!(
        answer["message"].as_str().unwrap().starts_with(
            r#"Schema being registered is incompatible with an earlier schema for subject "customers-value", details: ["#
        ),
        "{answer}"
    );

    let second = post_schema(&sr, "customers-value".into(), avro(optional)).await.unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(get_all_versions(&sr, "customers-value".into()).await.unwrap(), vec![1, 2]);
    let v2 = get_schema_by_subject_and_version(&sr, "customers-value", Some(2)).await.unwrap();
    assert_eq!((v2.id, v2.version), (second.id, Some(2)));
    let latest = get_schema_by_subject_and_version(&sr, "customers-value", None).await.unwrap();
    assert_eq!(latest.id, second.id);

    // An invalid schema: 422 42201.
    let e = expect_err(post_schema(&sr, "customers-value".into(), avro(r#"{"type":"record","name":"X"}"#)).await);
    assert!(cause(&e).contains("42201"), "{e}");

    // With compatibility NONE for the subject, anything goes.
    let (st, answer) = reg.http("PUT", "/config/customers-value", Some(&json!({"compatibility": "NONE"})));
    assert_eq!((st, answer), (200, json!({"compatibility": "NONE"})));
    assert_eq!(reg.http("GET", "/config", None), (200, json!({"compatibilityLevel": "BACKWARD"})));
    post_schema(&sr, "customers-value".into(), avro(required)).await.unwrap();
    assert_eq!(get_all_versions(&sr, "customers-value".into()).await.unwrap(), vec![1, 2, 3]);

    // Soft delete: the subject is gone, its ids still resolve.
    assert_eq!(reg.http("DELETE", "/subjects/customers-value", None), (200, json!([1, 2, 3])));
    let e = expect_err(get_all_versions(&sr, "customers-value".into()).await);
    assert!(cause(&e).contains("40401"), "{e}");
    let bytes = [0, 0, 0, 0, first.id as u8, 2, 2, b'x'];
    let decoded = AvroDecoder::new(sr).decode(Some(&bytes)).await.unwrap();
    assert_eq!(field(&decoded.value, "name"), &Avro::String("x".into()));
}

/// Registers `old` (all of them, in order) under a fresh subject with `level`
/// and asks the stand-in whether `new` may follow.
fn may_follow(reg: &Registry, level: &str, old: &[&str], new: &str) -> (bool, Value) {
    let subject = common::kafka::unique("compat");
    assert_eq!(reg.http("PUT", &format!("/config/{subject}"), Some(&json!({"compatibility": "NONE"}))).0, 200);
    for s in old {
        reg.register(&subject, s);
    }
    assert_eq!(reg.http("PUT", &format!("/config/{subject}"), Some(&json!({"compatibility": level}))).0, 200);
    let (st, answer) =
        reg.http("POST", &format!("/compatibility/subjects/{subject}/versions?verbose=true"), Some(&json!({"schema": new})));
    assert_eq!(st, 200, "{answer}");
    let ok = answer["is_compatible"].as_bool().unwrap();
    // Registering agrees with the check.
    let (st, reply) = reg.try_register(&subject, new);
    assert_eq!(st == 200, ok, "register ({st} {reply}) disagrees with the check ({answer})");
    (ok, answer)
}

fn rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)
}

#[test]
fn standin_applies_avro_resolution_rules() {
    let reg = Registry::start();
    let a_int = rec(r#"{"name":"a","type":"int"}"#);
    let a_long = rec(r#"{"name":"a","type":"long"}"#);
    let cases: Vec<(&str, Vec<String>, String, bool)> = vec![
        // promotions: the new (reader) schema reads the old data
        ("BACKWARD", vec![a_int.clone()], a_long.clone(), true),
        ("BACKWARD", vec![a_long.clone()], a_int.clone(), false),
        ("FORWARD", vec![a_long.clone()], a_int.clone(), true),
        ("FULL", vec![a_int.clone()], a_long.clone(), false),
        ("BACKWARD", vec![rec(r#"{"name":"a","type":"string"}"#)], rec(r#"{"name":"a","type":"bytes"}"#), true),
        ("BACKWARD", vec![rec(r#"{"name":"a","type":"float"}"#)], rec(r#"{"name":"a","type":"double"}"#), true),
        ("BACKWARD", vec![rec(r#"{"name":"a","type":"double"}"#)], rec(r#"{"name":"a","type":"float"}"#), false),
        // fields added and removed
        ("BACKWARD", vec![a_int.clone()], rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#), true),
        ("FORWARD", vec![a_int.clone()], rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), true),
        ("FULL", vec![a_int.clone()], rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), false),
        ("BACKWARD", vec![rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#)], a_int.clone(), true),
        ("FORWARD", vec![rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#)], a_int.clone(), false),
        ("FORWARD", vec![rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#)], a_int.clone(), true),
        // field aliases
        ("BACKWARD", vec![a_int.clone()], rec(r#"{"name":"z","type":"int","aliases":["a"]}"#), true),
        // unions
        ("BACKWARD", vec![rec(r#"{"name":"a","type":"string"}"#)], rec(r#"{"name":"a","type":["null","string"],"default":null}"#), true),
        ("FORWARD", vec![rec(r#"{"name":"a","type":"string"}"#)], rec(r#"{"name":"a","type":["null","string"],"default":null}"#), false),
        ("BACKWARD", vec![rec(r#"{"name":"a","type":["null","int"]}"#)], rec(r#"{"name":"a","type":["null","long"]}"#), true),
        ("BACKWARD", vec![rec(r#"{"name":"a","type":["null","int","string"]}"#)], rec(r#"{"name":"a","type":["null","int"]}"#), false),
        // enums
        ("BACKWARD", vec![rec(r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}}"#)], rec(r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}}"#), true),
        ("BACKWARD", vec![rec(r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}}"#)], rec(r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}}"#), false),
        ("BACKWARD", vec![rec(r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}}"#)], rec(r#"{"name":"e","type":{"type":"enum","name":"E","symbols":["A"],"default":"A"}}"#), true),
        // names, fixed
        ("BACKWARD", vec![a_int.clone()], r#"{"type":"record","name":"S","namespace":"t","fields":[{"name":"a","type":"int"}]}"#.to_string(), false),
        ("BACKWARD", vec![a_int.clone()], r#"{"type":"record","name":"S","namespace":"t","aliases":["t.R"],"fields":[{"name":"a","type":"int"}]}"#.to_string(), true),
        ("BACKWARD", vec![rec(r#"{"name":"f","type":{"type":"fixed","name":"F","size":4}}"#)], rec(r#"{"name":"f","type":{"type":"fixed","name":"F","size":8}}"#), false),
        // nested: arrays, maps, records; named references
        ("BACKWARD", vec![rec(r#"{"name":"xs","type":{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"n","type":"int"}]}}}"#)], rec(r#"{"name":"xs","type":{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"n","type":"long"}]}}}"#), true),
        ("BACKWARD", vec![rec(r#"{"name":"xs","type":{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"n","type":"int"}]}}}"#)], rec(r#"{"name":"xs","type":{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"n","type":"int"},{"name":"m","type":"int"}]}}}"#), false),
        ("BACKWARD", vec![rec(r#"{"name":"m","type":{"type":"map","values":"int"}}"#)], rec(r#"{"name":"m","type":{"type":"map","values":"double"}}"#), true),
        ("BACKWARD", vec![rec(r#"{"name":"m","type":{"type":"map","values":"string"}}"#)], rec(r#"{"name":"m","type":{"type":"map","values":"int"}}"#), false),
        ("BACKWARD", vec![rec(r#"{"name":"p","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},{"name":"q","type":"P"}"#)], rec(r#"{"name":"p","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}},{"name":"q","type":"P"}"#), false),
        // a recursive type
        ("FULL", vec![r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#.to_string()], r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","Node"],"default":null}]}"#.to_string(), false),
        ("BACKWARD", vec![r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#.to_string()], r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","Node"],"default":null}]}"#.to_string(), true),
        // transitive levels check every earlier version, the others only the latest
        ("BACKWARD", vec![a_int.clone(), rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#)], rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), true),
        ("BACKWARD_TRANSITIVE", vec![a_int.clone(), rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#)], rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), false),
        ("NONE", vec![a_int.clone()], rec(r#"{"name":"a","type":"string"}"#), true),
    ];
    for (i, (level, old, new, expected)) in cases.iter().enumerate() {
        let old: Vec<&str> = old.iter().map(String::as_str).collect();
        let (ok, answer) = may_follow(&reg, level, &old, new);
        assert_eq!(ok, *expected, "case {i}: {level} {old:?} -> {new}: {answer}");
    }

    // The real-world case: a Debezium envelope whose table gains a column.
    let envelope = |columns: &str| {
        let out = fastavro(&["debezium-schema", "--prefix", "eu", "--table", "customers", "--columns", columns], &[]);
        out[0]["value"].to_string()
    };
    let v1 = envelope("id:int32:key,name:string:optional");
    let optional = envelope("id:int32:key,name:string:optional,balance:decimal(10,2):optional");
    let required = envelope("id:int32:key,name:string:optional,balance:decimal(10,2)");
    assert!(may_follow(&reg, "BACKWARD", &[&v1], &optional).0);
    assert!(may_follow(&reg, "FULL", &[&v1], &optional).0);
    let (ok, answer) = may_follow(&reg, "BACKWARD", &[&v1], &required);
    assert!(!ok);
    // Like Java Avro, a record that no branch of the reader's union can read
    // is reported as a missing union branch (at `before`'s type).
    let message = answer["messages"][0].as_str().unwrap();
    assert!(message.contains("MISSING_UNION_BRANCH") && message.contains("path '/fields/0/type'"), "{answer}");
}

/// Debezium PostgreSQL events, schemas and bytes made by fastavro, decoded
/// by the product's Rust client.
#[tokio::test]
async fn fastavro_debezium_events_decode_with_the_rust_client() {
    let reg = Registry::start();
    let columns = "id:int32:key,name:string:optional,balance:decimal(10,2):optional,updated:timestamp:optional,\
                   created:micro_timestamp,born:date:optional,small:int16,photo:bytes:optional";
    let schemas = fastavro(&["debezium-schema", "--prefix", "eu", "--table", "customers", "--columns", columns], &[]);
    assert_eq!(schemas[0]["topic"], "eu.public.customers");
    let key_schema = schemas[0]["key"].to_string();
    let value_schema = schemas[0]["value"].to_string();

    let keys = fastavro(
        &["encode", "--registry", &reg.url, "--subject", "eu.public.customers-key", "--schema", &key_schema],
        &[r#"{"id":1}"#.to_string()],
    );
    let after = json!({"id": 1, "name": "Ann", "balance": "12.34", "updated": 1_700_000_000_000_i64,
                       "created": 1_700_000_000_000_123_i64, "born": 19_000, "small": -3, "photo": "AAEC"});
    let events = [
        json!({"op": "c", "after": after, "ts_ms": 1_700_000_000_500_i64, "lsn": 456, "txId": 77}).to_string(),
        json!({"op": "u", "before": after, "after": {"id": 1, "name": null, "balance": "-0.01", "created": 0, "small": 1},
               "ts_ms": 1_700_000_000_600_i64, "lsn": 457})
        .to_string(),
        "null".to_string(),
    ];
    let values = fastavro(
        &["encode", "--registry", &reg.url, "--subject", "eu.public.customers-value", "--schema", &value_schema, "--debezium"],
        &events,
    );
    assert_eq!(values.len(), 3);
    assert_eq!(values[2], json!({"hex": null}), "a tombstone stays a tombstone");

    let decoder = AvroDecoder::new(settings(&reg));
    let key = decoder.decode(Some(&unhex(keys[0]["hex"].as_str().unwrap()))).await.unwrap();
    assert_eq!(key.value, Avro::Record(vec![("id".into(), Avro::Int(1))]));

    let created = decoder.decode_with_schema(Some(&unhex(values[0]["hex"].as_str().unwrap()))).await.unwrap().unwrap();
    let v = &created.value;
    assert_eq!(field(v, "op"), &Avro::String("c".into()));
    assert_eq!(field(v, "before"), &Avro::Union(0, Box::new(Avro::Null)));
    let a = field(v, "after");
    assert_eq!(field(a, "id"), &Avro::Int(1));
    assert_eq!(field(a, "name"), &Avro::Union(1, Box::new(Avro::String("Ann".into()))));
    assert_eq!(
        field(a, "balance"),
        &Avro::Union(1, Box::new(Avro::Decimal(Decimal::from([0x04, 0xd2])))),
        "1234 = 12.34 at scale 2"
    );
    assert_eq!(field(a, "updated"), &Avro::Union(1, Box::new(Avro::Long(1_700_000_000_000))));
    assert_eq!(field(a, "created"), &Avro::Long(1_700_000_000_000_123));
    assert_eq!(field(a, "born"), &Avro::Union(1, Box::new(Avro::Int(19_000))));
    assert_eq!(field(a, "small"), &Avro::Int(-3));
    assert_eq!(field(a, "photo"), &Avro::Union(1, Box::new(Avro::Bytes(vec![0, 1, 2]))));
    let source = field(v, "source");
    assert_eq!(field(source, "connector"), &Avro::String("postgresql".into()));
    assert_eq!(field(source, "name"), &Avro::String("eu".into()));
    assert_eq!(field(source, "schema"), &Avro::String("public".into()));
    assert_eq!(field(source, "table"), &Avro::String("customers".into()));
    assert_eq!(field(source, "snapshot"), &Avro::Union(0, Box::new(Avro::String("false".into()))));
    assert_eq!(field(source, "lsn"), &Avro::Union(1, Box::new(Avro::Long(456))));
    assert_eq!(field(source, "txId"), &Avro::Union(1, Box::new(Avro::Long(77))));
    assert_eq!(field(source, "sequence"), &Avro::Union(1, Box::new(Avro::String(r#"["456","456"]"#.into()))));
    assert_eq!(field(v, "ts_ms"), &Avro::Union(1, Box::new(Avro::Long(1_700_000_000_500))));
    assert_eq!(field(v, "transaction"), &Avro::Union(0, Box::new(Avro::Null)));

    let updated = decoder.decode(Some(&unhex(values[1]["hex"].as_str().unwrap()))).await.unwrap().value;
    assert_eq!(field(&updated, "op"), &Avro::String("u".into()));
    assert_eq!(
        field(field(&updated, "before"), "balance"),
        &Avro::Union(1, Box::new(Avro::Decimal(Decimal::from([0x04, 0xd2]))))
    );
    let after = field(&updated, "after");
    assert_eq!(field(after, "balance"), &Avro::Union(1, Box::new(Avro::Decimal(Decimal::from([0xff])))), "-1 = -0.01");
    assert_eq!(field(after, "name"), &Avro::Union(0, Box::new(Avro::Null)));
    assert_eq!(decoder.decode(None).await.unwrap().value, Avro::Null);

    // The parsed schema keeps Debezium's names and Connect annotations on
    // records, and the decimal logical type.
    let schema = &created.schema.parsed;
    assert_eq!(connect_name(schema), Some("eu.public.customers.Envelope"));
    let Schema::Record(envelope) = schema else { unreachable!() };
    assert_eq!(envelope.attributes.get("connect.version"), Some(&json!(2)));
    let value_record = union_branch(field_schema(schema, "before"), 1);
    assert_eq!(connect_name(value_record), Some("eu.public.customers.Value"));
    assert!(
        matches!(union_branch(field_schema(schema, "after"), 1), Schema::Ref { name } if name.fullname(None) == "eu.public.customers.Value")
    );
    match union_branch(field_schema(value_record, "balance"), 1) {
        Schema::Decimal(d) => assert_eq!((d.precision, d.scale), (10, 2)),
        other => panic!("balance is not a decimal: {other:?}"),
    }
    assert_eq!(connect_name(field_schema(schema, "source")), Some("io.debezium.connector.postgresql.Source"));
    // apache-avro drops attributes of primitive types: `connect.name` of a
    // column (io.debezium.time.Timestamp, ...) survives only in the raw schema.
    assert_eq!(union_branch(field_schema(value_record, "updated"), 1), &Schema::Long);
    let raw: Value = serde_json::from_str(&created.schema.raw).unwrap();
    let raw_columns = &raw["fields"][0]["type"][1]["fields"];
    let raw_column = |name: &str| raw_columns.as_array().unwrap().iter().find(|f| f["name"] == name).unwrap()["type"].clone();
    assert_eq!(raw_column("updated")[1]["connect.name"], "io.debezium.time.Timestamp");
    assert_eq!(raw_column("created")["connect.name"], "io.debezium.time.MicroTimestamp");
    assert_eq!(raw_column("born")[1]["connect.name"], "io.debezium.time.Date");
    assert_eq!(raw_column("small")["connect.type"], "int16");
    assert_eq!(
        raw_column("balance")[1],
        json!({"type": "bytes", "scale": 2, "precision": 10, "connect.version": 1,
               "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
               "connect.name": "org.apache.kafka.connect.data.Decimal", "logicalType": "decimal"})
    );
}

/// Bytes made by the product's Rust encoder, decoded by fastavro.
#[tokio::test]
async fn rust_encoded_bytes_decode_with_fastavro() {
    let reg = Registry::start();
    let schema = r#"{"type":"record","name":"Mixed","namespace":"t","fields":[
        {"name":"id","type":"int"},
        {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
        {"name":"debt","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}],"default":null},
        {"name":"raw","type":"bytes"},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
        {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[{"name":"n","type":"long"}]}}},
        {"name":"attrs","type":{"type":"map","values":"double"}},
        {"name":"at","type":{"type":"long","connect.name":"io.debezium.time.Timestamp"}}]}"#;
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema("mixed".into(), false, avro(schema));
    let encoder = AvroEncoder::new(settings(&reg));
    let values = vec![
        ("id", Avro::Int(7)),
        ("amount", Avro::Decimal(Decimal::from([0x04, 0xd2]))),
        ("debt", Avro::Union(1, Box::new(Avro::Decimal(Decimal::from([0xff, 0x85]))))),
        ("raw", Avro::Bytes(vec![0, 1, 2])),
        ("note", Avro::Union(0, Box::new(Avro::Null))),
        ("kind", Avro::Enum(1, "B".into())),
        ("items", Avro::Array(vec![Avro::Record(vec![("n".into(), Avro::Long(-1))])])),
        ("attrs", Avro::Map(HashMap::from([("a".to_string(), Avro::Double(1.5))]))),
        ("at", Avro::Long(1_700_000_000_000)),
    ];
    let bytes = encoder.encode(values, strategy).await.unwrap();
    let tombstone_and_garbage =
        [json!({"hex": hex(&bytes)}).to_string(), "null".into(), json!({"hex": "0000000063"}).to_string()];
    let out = fastavro(&["decode", "--registry", &reg.url, "--with-id"], &tombstone_and_garbage);
    assert_eq!(
        out[0],
        json!({"id": 1, "value": {"id": 7, "amount": "12.34", "debt": "-1.23", "raw": "AAEC", "note": null, "kind": "B",
               "items": [{"n": -1}], "attrs": {"a": 1.5}, "at": 1_700_000_000_000_i64}})
    );
    assert_eq!(out[1], Value::Null);
    assert!(out[2]["error"].as_str().unwrap().contains("40403"), "{}", out[2]);
}

/// Avro single-object encoding: apache-avro and fastavro agree on the header
/// (C3 01 + the little-endian CRC-64-AVRO fingerprint) both ways.
#[test]
fn single_object_encoding_agrees() {
    let text = r#"{"type":"record","name":"Point","namespace":"geo","fields":[{"name":"x","type":"long"},{"name":"label","type":["null","string"],"default":null}]}"#;
    let schema = Schema::parse_str(text).unwrap();
    let value = Avro::Record(vec![
        ("x".into(), Avro::Long(-42)),
        ("label".into(), Avro::Union(1, Box::new(Avro::String("here".into())))),
    ]);
    let mut bytes = Vec::new();
    GenericSingleObjectWriter::new_with_capacity(&schema, 64).unwrap().write_value(value.clone(), &mut bytes).unwrap();
    let mut tampered = bytes.clone();
    tampered[9] ^= 1;
    let lines = [json!({"hex": hex(&bytes)}).to_string(), json!({"hex": hex(&tampered)}).to_string()];
    let out = fastavro(&["read-single-object", "--schema", text], &lines);
    assert_eq!(out[0], json!({"x": -42, "label": "here"}));
    assert!(out[1]["error"].as_str().unwrap().contains("fingerprint mismatch"), "{}", out[1]);

    let written = fastavro(&["write-single-object", "--schema", text], &[r#"{"x": -42, "label": "here"}"#.to_string()]);
    let from_python = unhex(written[0]["hex"].as_str().unwrap());
    assert_eq!(from_python, bytes, "the same bytes from both implementations");
    let reader = GenericSingleObjectReader::builder().schema(schema).build().unwrap();
    assert_eq!(reader.read_value(&mut &from_python[..]).unwrap(), value);
}
