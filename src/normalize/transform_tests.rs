//! `[sources.transform]` and `where` inside normalization: images, keys,
//! clocks, dead letters and filter counts.

use super::*;
use crate::config::SourceConfig;
use crate::merge::{Op, Policy};
use serde_json::json;

const LEGACY: &str = r#"
rename = { cust_no = "id", EMAIL_ADDR = "email", BAL = "balance", STAT = "status" }
required = ["id", "email"]
cast = { id = "int", balance = "cents" }
map = { status = { A = "active", I = "inactive" } }
set = { region = "legacy" }
drop = ["internal"]
"#;

fn legacy(extra: &str, policy: Policy) -> SourceNormalizer {
    let text = format!("name = \"erp\"\ntopic = \"erp.t\"\nformat = \"debezium-json\"\n{extra}\n[transform]\n{LEGACY}");
    let cfg: SourceConfig = toml::from_str(&text).unwrap();
    SourceNormalizer::new(&cfg, policy)
}

fn rec<'a>(key: Option<&'a str>, value: Option<&'a str>) -> InputRecord<'a> {
    InputRecord {
        topic: "erp.t",
        partition: 0,
        offset: 9,
        timestamp: Some(5),
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

fn row(v: serde_json::Value) -> Row {
    v.as_object().unwrap().clone()
}

const UPDATE: &str = r#"{"before":{"cust_no":"0042","EMAIL_ADDR":"a@x","BAL":"100","STAT":"A","internal":1},
  "after":{"cust_no":"0042","EMAIL_ADDR":"b@x","BAL":"12345","STAT":"I","internal":2},"source":{"ts_ms":1700},"op":"u"}"#;

#[test]
fn after_before_and_the_record_key_are_transformed() {
    let e = event(legacy("", Policy::FieldLww).normalize(&rec(Some(r#"{"cust_no":"0042"}"#), Some(UPDATE))));
    assert_eq!(e.key, r#"{"id":42}"#, "the record key gets the row's names and types");
    assert_eq!(e.row.unwrap(), row(json!({"id":42,"email":"b@x","balance":123.45,"status":"inactive","region":"legacy"})));
    assert_eq!(e.before.unwrap(), row(json!({"id":42,"email":"a@x","balance":1.0,"status":"active","region":"legacy"})));
}

#[test]
fn key_fields_name_transformed_columns_and_deletes_without_a_before_image_agree() {
    let n = legacy("key_fields = [\"id\"]", Policy::Lww);
    let e = event(n.normalize(&rec(None, Some(UPDATE))));
    assert_eq!(e.key, r#"{"id":42}"#);
    let delete = r#"{"before":null,"after":null,"source":{"ts_ms":1800},"op":"d"}"#;
    let d = event(n.normalize(&rec(Some(r#"{"cust_no":"42"}"#), Some(delete))));
    assert_eq!((d.op, d.key.as_str()), (Op::Delete, r#"{"id":42}"#));
    // A key-only before image (REPLICA IDENTITY DEFAULT): no required check.
    let delete = r#"{"before":{"cust_no":"42"},"after":null,"source":{"ts_ms":1800},"op":"d"}"#;
    let d = event(n.normalize(&rec(None, Some(delete))));
    assert_eq!(d.key, r#"{"id":42}"#);
}

#[test]
fn carried_clocks_are_read_after_the_transform() {
    let n = legacy("clock_field = \"vv\"", Policy::Lww);
    let text = r#"{"after":{"cust_no":"1","EMAIL_ADDR":"e","vv":{"erp":3}},"source":{"ts_ms":1},"op":"c"}"#;
    let e = event(n.normalize(&rec(Some(r#"{"cust_no":"1"}"#), Some(text))));
    assert_eq!(e.vv.to_json(), r#"{"erp":3}"#);
    assert!(!e.row.unwrap().contains_key("vv"));
}

#[test]
fn records_the_mapping_cannot_handle_are_transform_dead_letters() {
    let n = legacy("", Policy::Lww);
    for (value, key, message) in [
        (
            r#"{"after":{"cust_no":"7","EMAIL_ADDR":"e","BAL":"12.5"},"source":{"ts_ms":1},"op":"c"}"#,
            r#"{"cust_no":"7"}"#,
            "transform of source `erp`: column `balance` value \"12.5\": cannot cast to cents: not a whole number",
        ),
        (
            r#"{"after":{"cust_no":"7","STAT":"A"},"source":{"ts_ms":1},"op":"c"}"#,
            r#"{"cust_no":"7"}"#,
            "transform of source `erp`: column `email`: required, but missing from the row",
        ),
        (
            r#"{"after":{"cust_no":"7","EMAIL_ADDR":"e","STAT":"Z"},"source":{"ts_ms":1},"op":"c"}"#,
            r#"{"cust_no":"7"}"#,
            "transform of source `erp`: column `status` value \"Z\": no entry in the code table (known: A, I)",
        ),
        (
            r#"{"after":{"cust_no":"7","EMAIL_ADDR":"e"},"source":{"ts_ms":1},"op":"c"}"#,
            r#"{"cust_no":"x7"}"#,
            "transform of source `erp`: column `id` value \"x7\": cannot cast to int: not a whole number",
        ),
    ] {
        let e = n.normalize(&rec(Some(key), Some(value))).expect_err("a dead letter");
        assert_eq!(e.kind.reason(), "transform");
        assert_eq!(e.kind.to_string(), message);
        assert_eq!(e.source_name.as_deref(), Some("erp"));
        assert!(!e.kind.is_retriable());
    }
}

#[test]
fn where_drops_records_counts_them_and_keeps_key_only_deletes() {
    let text = "name = \"erp\"\ntopic = \"erp.t\"\n[where]\ntenant = \"acme\"\nis_test = { ne = true }\n[transform]\nrename = { tenant = \"org\" }";
    let cfg: SourceConfig = toml::from_str(text).unwrap();
    let n = SourceNormalizer::new(&cfg, Policy::Lww);
    let upsert = |tenant: &str, test: bool| {
        format!(r#"{{"after":{{"id":1,"tenant":"{tenant}","is_test":{test}}},"source":{{"ts_ms":1}},"op":"c"}}"#)
    };
    let key = Some(r#"{"id":1}"#);
    // The filter reads source names (`tenant`), before the rename to `org`.
    let e = event(n.normalize(&rec(key, Some(&upsert("acme", false)))));
    assert_eq!(e.row.unwrap()["org"], json!("acme"));
    assert_eq!(n.normalize(&rec(key, Some(&upsert("other", false)))).unwrap(), Normalized::Filtered);
    assert_eq!(n.normalize(&rec(key, Some(&upsert("acme", true)))).unwrap(), Normalized::Filtered);
    let delete_other = r#"{"before":{"id":1,"tenant":"other","is_test":false},"source":{"ts_ms":1},"op":"d"}"#;
    assert_eq!(n.normalize(&rec(key, Some(delete_other))).unwrap(), Normalized::Filtered);
    let delete_key_only = r#"{"before":{"id":1},"source":{"ts_ms":1},"op":"d"}"#;
    assert_eq!(event(n.normalize(&rec(key, Some(delete_key_only)))).op, Op::Delete);
    // Tombstones are not records the filter sees.
    assert_eq!(n.normalize(&rec(key, None)).unwrap(), Normalized::Tombstone);
    assert_eq!(n.filter_counts().unwrap().take(), (2, 3));
    assert_eq!(n.filter_counts().unwrap().take(), (0, 0), "taken");
}

#[test]
fn sources_without_a_mapping_are_untouched() {
    let cfg: SourceConfig = toml::from_str("name = \"eu\"\ntopic = \"erp.t\"").unwrap();
    let n = SourceNormalizer::new(&cfg, Policy::FieldLww);
    assert!(n.filter_counts().is_none() && n.transform().is_none());
    let e = event(n.normalize(&rec(Some(r#"{"cust_no":"0042"}"#), Some(UPDATE))));
    assert_eq!(e.key, r#"{"cust_no":"0042"}"#);
    assert_eq!(e.row.unwrap()["BAL"], json!("12345"));
}

#[test]
fn configuration_errors_name_the_source_and_the_key() {
    let text = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "g"
[output]
topic = "out"
[[sources]]
name = "eu"
topic = "eu.t"
[[sources]]
name = "erp"
topic = "erp.t"
key_fields = ["id"]
clock_field = "vv"
[sources.transform]
rename = { cust_no = "id" }
cast = { balance = "money" }
keep = ["email"]
compute = { total = { add = ["a"] } }
[sources.where]
tenant = { like = "a%" }
"#;
    let err = crate::config::Config::parse(text, "t.toml", Vec::new()).unwrap_err().to_string();
    for line in [
        "sources[1].transform.cast.balance (source \"erp\"): unknown cast \"money\"",
        "sources[1].transform.compute.total (source \"erp\"): add needs at least two operands",
        "sources[1].where.tenant.like (source \"erp\"): unknown test \"like\"",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
    // The key and clock checks run on a mapping that compiles.
    let fixed = text.replace("\"money\"", "\"cents\"").replace("[\"a\"]", "[\"a\", 1]").replace("like", "eq");
    let err = crate::config::Config::parse(&fixed, "t.toml", Vec::new()).unwrap_err().to_string();
    assert!(err.contains("sources[1].key_fields: \"id\" is dropped by the transform"), "{err}");
    assert!(err.contains("sources[1].clock_field: \"vv\" is dropped by the transform"), "{err}");
    let ok = fixed.replace("keep = [\"email\"]", "keep = [\"email\", \"id\", \"vv\"]");
    let config = crate::config::Config::parse(&ok, "t.toml", Vec::new()).unwrap();
    // The mapping survives printing and reading back (check-config).
    let again: crate::config::Config = toml::from_str(&config.to_redacted_toml()).unwrap();
    assert_eq!(again.sources[1].transform, config.sources[1].transform);
    assert_eq!(again.sources[1].filter, config.sources[1].filter);
}
