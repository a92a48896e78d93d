//! `debezium-avro` normalization through the real registry client (against
//! the stand-in under `tests/registry/`): Debezium's envelope in Avro becomes
//! the same change event its JSON twin becomes, on the direct decoding path
//! and on the apache-avro value path (taken for schemas with types the direct
//! path leaves out), and bad payloads are dead letters naming what is wrong.

mod common;

use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema::Schema;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use common::registry::Registry as StandIn;
use serde_json::{json, Value};
use tributary::avro::registry::{frame, Registry};
use tributary::avro::AvroContext;
use tributary::config::{SchemaRegistryConfig, SourceConfig, SourceFormat};
use tributary::merge::{Op, Policy};
use tributary::normalize::{InputRecord, NormalizeErrorKind, Normalized, SourceNormalizer};

const KEY: &str = r#"{"type":"record","name":"Key","namespace":"eu.public.customers","fields":[{"name":"id","type":"int"}]}"#;

/// Debezium's PostgreSQL envelope; `extra` adds a column to `Value`.
fn envelope(extra: &str) -> String {
    format!(
        r#"{{"type":"record","name":"Envelope","namespace":"eu.public.customers","fields":[
        {{"name":"before","type":["null",{{"type":"record","name":"Value","fields":[
            {{"name":"id","type":"int"}},
            {{"name":"name","type":["null","string"],"default":null}},
            {{"name":"balance","type":["null",{{"type":"bytes","scale":2,"precision":10,"connect.name":"org.apache.kafka.connect.data.Decimal","logicalType":"decimal"}}],"default":null}},
            {{"name":"updated","type":["null",{{"type":"long","connect.name":"io.debezium.time.MicroTimestamp"}}],"default":null}}
            {extra}
        ],"connect.name":"eu.public.customers.Value"}}],"default":null}},
        {{"name":"after","type":["null","Value"],"default":null}},
        {{"name":"source","type":{{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[
            {{"name":"version","type":"string"}},{{"name":"connector","type":"string"}},{{"name":"name","type":"string"}},
            {{"name":"ts_ms","type":"long"}},
            {{"name":"snapshot","type":[{{"type":"string","connect.name":"io.debezium.data.Enum"}},"null"],"default":"false"}},
            {{"name":"db","type":"string"}},{{"name":"schema","type":"string"}},{{"name":"table","type":"string"}},
            {{"name":"txId","type":["null","long"],"default":null}},{{"name":"lsn","type":["null","long"],"default":null}}]}}}},
        {{"name":"transaction","type":["null",{{"type":"record","name":"block","namespace":"event","fields":[
            {{"name":"id","type":"string"}},{{"name":"total_order","type":"long"}},{{"name":"data_collection_order","type":"long"}}]}}],"default":null}},
        {{"name":"op","type":"string"}},
        {{"name":"ts_ms","type":["null","long"],"default":null}}
    ]}}"#
    )
}

fn u(i: u32, v: Avro) -> Avro {
    Avro::Union(i, Box::new(v))
}

fn row(id: i32, name: &str, cents: i64, extra: Option<Avro>) -> Avro {
    let mut fields = vec![
        ("id".to_string(), Avro::Int(id)),
        ("name".to_string(), u(1, Avro::String(name.into()))),
        (
            "balance".to_string(),
            u(1, Avro::Decimal(apache_avro::Decimal::from(num_bigint::BigInt::from(cents).to_signed_bytes_be()))),
        ),
        ("updated".to_string(), u(1, Avro::Long(1_700_000_000_000_123))),
    ];
    if let Some(e) = extra {
        fields.push(("span".to_string(), e));
    }
    Avro::Record(fields)
}

fn event(op: &str, before: Option<Avro>, after: Option<Avro>, ts: i64) -> Avro {
    Avro::Record(vec![
        ("before".into(), before.map_or(u(0, Avro::Null), |b| u(1, b))),
        ("after".into(), after.map_or(u(0, Avro::Null), |a| u(1, a))),
        (
            "source".into(),
            Avro::Record(vec![
                ("version".into(), Avro::String("3.6.1.Final".into())),
                ("connector".into(), Avro::String("postgresql".into())),
                ("name".into(), Avro::String("eu".into())),
                ("ts_ms".into(), Avro::Long(ts)),
                ("snapshot".into(), u(0, Avro::String("false".into()))),
                ("db".into(), Avro::String("app".into())),
                ("schema".into(), Avro::String("public".into())),
                ("table".into(), Avro::String("customers".into())),
                ("txId".into(), u(1, Avro::Long(77))),
                ("lsn".into(), u(1, Avro::Long(4242))),
            ]),
        ),
        (
            "transaction".into(),
            u(
                1,
                Avro::Record(vec![
                    ("id".into(), Avro::String("77:4242".into())),
                    ("total_order".into(), Avro::Long(1)),
                    ("data_collection_order".into(), Avro::Long(1)),
                ]),
            ),
        ),
        ("op".into(), Avro::String(op.into())),
        ("ts_ms".into(), u(1, Avro::Long(ts + 5))),
    ])
}

fn encode(schema: &str, id: u32, value: Avro) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    frame(id, &GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(value).unwrap())
}

struct Fixture {
    standin: StandIn,
    registry: Arc<Registry>,
}

impl Fixture {
    fn new() -> Fixture {
        let standin = StandIn::start();
        let settings = SchemaRegistryConfig { max_backoff: Duration::from_secs(1), ..SchemaRegistryConfig::new(&standin.url) };
        Fixture { registry: Registry::new(&settings).unwrap(), standin }
    }

    fn normalizer(&self, policy: Policy, sequence: Option<&str>) -> SourceNormalizer {
        let mut source: SourceConfig =
            toml::from_str("name = \"eu\"\ntopic = \"eu.public.customers\"\nformat = \"debezium-avro\"\n").unwrap();
        assert_eq!(source.format, SourceFormat::DebeziumAvro);
        source.sequence = sequence.map(String::from);
        let ctx = AvroContext { registry: self.registry.clone(), catalog: Default::default() };
        SourceNormalizer::with_avro(&source, policy, Some(&ctx))
    }
}

fn input<'a>(offset: i64, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> InputRecord<'a> {
    InputRecord { topic: "eu.public.customers", partition: 0, offset, timestamp: Some(1), key, value, headers: &[] }
}

#[test]
fn debezium_avro_envelopes_normalize_like_their_json_twins() {
    let f = Fixture::new();
    let key_id = f.registry.register("eu.public.customers-key", KEY).unwrap();
    let plain = envelope("");
    // `duration` is not decoded directly: this schema takes the value path.
    let with_duration = envelope(
        r#",{"name":"span","type":["null",{"type":"fixed","name":"D","size":12,"logicalType":"duration"}],"default":null}"#,
    );
    let plain_id = f.registry.register("eu.public.customers-value", &plain).unwrap();
    let duration_id = f.registry.register("other-value", &with_duration).unwrap();
    let key = encode(KEY, key_id, Avro::Record(vec![("id".into(), Avro::Int(7))]));
    let expected_row = json!({"id": 7, "name": "Zoë", "balance": "-12.30", "updated": 1_700_000_000_000_123i64});

    for policy in [Policy::Lww, Policy::FieldLww] {
        let n = f.normalizer(policy, None);
        let cases = [
            (
                encode(&plain, plain_id, event("u", Some(row(7, "old", 100, None)), Some(row(7, "Zoë", -1230, None)), 1_000)),
                "direct",
            ),
            (
                encode(
                    &with_duration,
                    duration_id,
                    event(
                        "u",
                        Some(row(7, "old", 100, Some(u(0, Avro::Null)))),
                        Some(row(7, "Zoë", -1230, Some(u(0, Avro::Null)))),
                        1_000,
                    ),
                ),
                "via values",
            ),
        ];
        for (bytes, path) in &cases {
            let Normalized::Event(e) = n.normalize(&input(4, Some(&key), Some(bytes))).unwrap() else { panic!("an event") };
            let mut row = Value::Object(e.row.clone().unwrap().into_row());
            row.as_object_mut().unwrap().remove("span");
            assert_eq!(row, expected_row, "{path}");
            assert_eq!(e.key, r#"{"id":7}"#, "{path}");
            assert_eq!(e.ts, 1_000, "source.ts_ms, {path}");
            assert_eq!(e.op, Op::Upsert);
            assert_eq!(e.vv.to_json(), r#"{"eu":5}"#, "offset + 1, {path}");
            // field-lww needs the before image of an update; lww does not.
            assert_eq!(e.before.is_some(), policy == Policy::FieldLww, "{path}");
            assert!(!e.full_image, "{path}");
        }
        // A delete keeps its before image under every policy.
        let delete = encode(&plain, plain_id, event("d", Some(row(7, "Zoë", -1230, None)), None, 2_000));
        let Normalized::Event(e) = n.normalize(&input(5, Some(&key), Some(&delete))).unwrap() else { panic!("an event") };
        assert_eq!(e.op, Op::Delete);
        assert_eq!(e.before.map(Value::Object), Some(expected_row.clone()));
        // A Kafka tombstone after a delete is ignored.
        assert_eq!(n.normalize(&input(6, Some(&key), None)).unwrap(), Normalized::Tombstone);
    }

    // sequence = "source.lsn" reads the source block.
    let n = f.normalizer(Policy::Lww, Some("source.lsn"));
    let bytes = encode(&plain, plain_id, event("c", None, Some(row(7, "Zoë", -1230, None)), 1_000));
    let Normalized::Event(e) = n.normalize(&input(9, Some(&key), Some(&bytes))).unwrap() else { panic!("an event") };
    assert_eq!(e.vv.to_json(), r#"{"eu":4242}"#);
    assert!(e.full_image);
}

#[test]
fn bad_avro_payloads_are_dead_letters_naming_the_problem() {
    let f = Fixture::new();
    let plain = envelope("");
    let id = f.registry.register("eu.public.customers-value", &plain).unwrap();
    let key_id = f.registry.register("eu.public.customers-key", KEY).unwrap();
    let key = encode(KEY, key_id, Avro::Record(vec![("id".into(), Avro::Int(7))]));
    let n = f.normalizer(Policy::Lww, None);
    let kind = |value: &[u8], key: Option<&[u8]>| n.normalize(&input(3, key, Some(value))).unwrap_err();

    let e = kind(&frame(id + 500, &[0]), Some(&key));
    assert!(matches!(e.kind, NormalizeErrorKind::UnknownSchema(_)), "{e}");
    assert!(e.to_string().contains(&format!("unknown schema id {}", id + 500)), "{e}");
    assert!(e.to_string().contains("topic eu.public.customers partition 0 offset 3"), "{e}");

    let e = kind(br#"{"op":"c"}"#, Some(&key));
    assert_eq!(e.kind.reason(), "bad_value");
    assert!(e.to_string().contains("magic byte"), "{e}");

    let good = encode(&plain, id, event("c", None, Some(row(7, "x", 1, None)), 1));
    let e = kind(&good[..good.len() - 3], Some(&key));
    assert_eq!(e.kind.reason(), "bad_value", "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");

    let truncate = encode(&plain, id, event("t", None, None, 1));
    assert_eq!(kind(&truncate, Some(&key)).kind, NormalizeErrorKind::Truncate);

    // A JSON key on an Avro source: the key is named as the problem.
    let e = kind(&good, Some(br#"{"id":7}"#));
    assert_eq!(e.kind.reason(), "bad_key", "{e}");
    // No key at all.
    assert_eq!(kind(&good, None).kind, NormalizeErrorKind::MissingKey);
}

#[test]
fn a_conflicting_source_schema_is_refused_and_the_rest_goes_on() {
    use tributary::avro::output::{AvroOutput, OutputError, SchemaCatalog};
    let f = Fixture::new();
    let catalog = Arc::new(SchemaCatalog::default());
    let env = |ns: &str, a_type: &str| {
        format!(
            r#"{{"type":"record","name":"Envelope","namespace":"{ns}","fields":[
            {{"name":"before","type":["null",{{"type":"record","name":"Value","fields":[{{"name":"id","type":"int"}},{{"name":"a","type":{a_type}}}]}}],"default":null}},
            {{"name":"after","type":["null","Value"],"default":null}},{{"name":"op","type":"string"}}]}}"#
        )
    };
    catalog.observe_value("eu", 1, &env("eu.t", r#""string""#));
    catalog.observe_key("eu", 2, KEY);
    let output = AvroOutput::new(f.registry.clone(), catalog.clone(), "merged", vec!["eu".into(), "us".into()], None);
    let row = |a: Value| json!({"id": 1, "a": a}).as_object().unwrap().clone();
    assert!(output.encode(r#"{"id":1}"#, Some(&row(json!("x")))).is_ok());
    let (v1, _) = output.refresh().unwrap();

    // us says `a` is a boolean: refused, the output schema stays, eu goes on.
    catalog.observe_value("us", 3, &env("us.t", r#""boolean""#));
    assert!(output.encode(r#"{"id":1}"#, Some(&row(json!("y")))).is_ok());
    assert_eq!(output.refresh().unwrap().0, v1, "no new output schema");
    let rejected = catalog.rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0].0.as_str(), rejected[0].1), ("us", 3));
    assert!(rejected[0].2.contains("column `a`"), "{rejected:?}");
    // A us row (a boolean) does not fit: a schema conflict, named.
    match output.encode(r#"{"id":1}"#, Some(&row(json!(true)))) {
        Err(e @ OutputError::Conflict(_)) => {
            assert_eq!(e.reason(), "schema_conflict");
            assert!(e.to_string().contains("source us schema id 3"), "{e}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A compatible change of us still gets in: a new column, a new version.
    catalog.observe_value(
        "us",
        4,
        &env("us.t", r#"["null","string"]"#)
            .replace(r#"{"name":"a""#, r#"{"name":"b","type":["null","long"],"default":null},{"name":"a""#),
    );
    let mut r = row(json!("z"));
    r.insert("b".into(), json!(5));
    assert!(output.encode(r#"{"id":1}"#, Some(&r)).is_ok());
    assert_ne!(output.refresh().unwrap().0, v1, "a new output schema version with `b`");
}

#[test]
fn a_schema_the_registry_would_refuse_is_refused_first_and_the_key_schema_stays() {
    use tributary::avro::output::{AvroOutput, SchemaCatalog};
    let f = Fixture::new();
    // Under FORWARD, int → long is not compatible (an old reader of int
    // cannot read a long); the type rules alone would promote it.
    let (status, _) = f.standin.http("PUT", "/config/merged-value", Some(&json!({"compatibility": "FORWARD"})));
    assert_eq!(status, 200);
    let env = |ns: &str, n_type: &str| {
        format!(
            r#"{{"type":"record","name":"Envelope","namespace":"{ns}","fields":[
            {{"name":"before","type":["null",{{"type":"record","name":"Value","fields":[{{"name":"id","type":"int"}},{{"name":"n","type":"{n_type}"}}]}}],"default":null}},
            {{"name":"after","type":["null","Value"],"default":null}},{{"name":"op","type":"string"}}]}}"#
        )
    };
    let catalog = Arc::new(SchemaCatalog::default());
    // The us key carries a connector annotation, the eu key does not.
    let annotated = r#"{"type":"record","name":"Key","namespace":"us.t","fields":[{"name":"id","type":{"type":"int","connect.type":"int32"}}]}"#;
    catalog.observe_key("us", 10, annotated);
    catalog.observe_value("eu", 1, &env("eu.t", "int"));
    let output = AvroOutput::new(f.registry.clone(), catalog.clone(), "merged", vec!["eu".into(), "us".into()], None);
    let row = |n: Value| json!({"id": 1, "n": n}).as_object().unwrap().clone();
    assert!(output.encode(r#"{"id":1}"#, Some(&row(json!(5)))).is_ok());
    let (v1, k1) = output.refresh().unwrap();

    catalog.observe_value("us", 2, &env("us.t", "long"));
    catalog.observe_key("eu", 11, KEY);
    assert!(output.encode(r#"{"id":1}"#, Some(&row(json!(6)))).is_ok(), "eu rows still go out");
    assert_eq!(output.refresh().unwrap(), (v1, k1), "no new value schema, the same key schema");
    let rejected = catalog.rejected();
    assert_eq!(rejected.iter().map(|r| (r.0.as_str(), r.1)).collect::<Vec<_>>(), [("us", 2)], "{rejected:?}");
    assert!(rejected[0].2.contains("incompatible with the latest version under merged-value"), "{rejected:?}");
    // The key schema has no connector annotations.
    let (_, key) = f.standin.http("GET", "/subjects/merged-key/versions/latest", None);
    assert_eq!(
        key["schema"].as_str().unwrap(),
        r#"{"fields":[{"name":"id","type":"int"}],"name":"Key","namespace":"merged","type":"record"}"#
    );
}
