use super::*;
use serde_json::json;

fn sink(extra: &str) -> SinkConfig {
    toml::from_str(&format!(
        "url = \"x\"\ntable = \"customers\"\ncolumns = [\"id bigint\", \"name text\", \"age integer\", \"vip boolean\", \"tags json\"]\nkey_columns = [\"id\"]\n{extra}"
    ))
    .unwrap()
}

fn rec(offset: i64, key: i64, value: Option<Value>) -> RawRecord {
    RawRecord {
        topic: "out".into(),
        partition: 0,
        offset,
        key: Some(json!({"id": key}).to_string()),
        value: value.map(|v| v.to_string()),
        vv: Some(r#"{"eu":1}"#.into()),
        error: None,
    }
}

#[test]
fn column_lists_are_validated_with_the_key_named() {
    assert!(sink("").table_spec().is_ok());
    let e = sink("").clone();
    let mut bad = e.clone();
    bad.columns.push("x decimal".into());
    assert!(bad
        .table_spec()
        .unwrap_err()
        .to_string()
        .contains("sink.columns[5]: unknown type \"decimal\""));
    let mut bad = e.clone();
    bad.key_columns = vec!["nope".into()];
    assert!(bad
        .table_spec()
        .unwrap_err()
        .to_string()
        .contains("sink.key_columns: \"nope\""));
    let mut bad = e;
    bad.table = "drop table x;".into();
    assert!(bad.table_spec().is_err());
}

#[test]
fn the_last_change_per_key_wins_and_offsets_advance() {
    let spec = sink("vv_column = \"_vv\"").table_spec().unwrap();
    let records = vec![
        rec(0, 1, Some(json!({"id":1,"name":"a"}))),
        rec(
            1,
            2,
            Some(json!({"id":2,"name":"b","age":"41","vip":true,"tags":["x"]})),
        ),
        rec(2, 1, None),
    ];
    let b = build_batch(&spec, &records);
    assert_eq!(b.changes.len(), 2);
    assert_eq!(b.changes[0], Change::Delete(vec![SqlValue::Int(1)]));
    assert_eq!(
        b.changes[1],
        Change::Upsert(vec![
            SqlValue::Int(2),
            SqlValue::Text("b".into()),
            SqlValue::Int(41),
            SqlValue::Bool(true),
            SqlValue::Json(json!(["x"])),
            SqlValue::Text(r#"{"eu":1}"#.into()),
        ])
    );
    assert_eq!(b.offsets, vec![("out".to_string(), 0, 3)]);
}

#[test]
fn type_mismatches_become_dead_rows_naming_the_column() {
    let spec = sink("").table_spec().unwrap();
    let b = build_batch(
        &spec,
        &[
            rec(0, 1, Some(json!({"id":1,"age":"old"}))),
            rec(1, 2, Some(json!({"id":2,"age":3_000_000_000i64}))),
        ],
    );
    assert!(b.changes.is_empty());
    assert_eq!(b.dead.len(), 2);
    assert!(
        b.dead[0]
            .error
            .contains("column `age` (integer): \"old\" is not an integer"),
        "{}",
        b.dead[0].error
    );
    assert!(b.dead[1].error.contains("32-bit"), "{}", b.dead[1].error);
    assert_eq!(
        b.offsets,
        vec![("out".to_string(), 0, 2)],
        "dead rows still advance the offsets"
    );
}

#[test]
fn sqlite_applies_batches_atomically_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite").display().to_string();
    let mut cfg = sink("vv_column = \"_vv\"");
    cfg.url = path.clone();
    let spec = cfg.table_spec().unwrap();
    let mut t = open_target(&cfg).unwrap();
    t.prepare(&spec).unwrap();
    t.prepare(&spec).unwrap();
    let b = build_batch(
        &spec,
        &[
            rec(0, 1, Some(json!({"id":1,"name":"a"}))),
            rec(1, 2, Some(json!({"id":2,"name":"b"}))),
        ],
    );
    t.apply(&spec, "g", &b).unwrap();
    let b = build_batch(
        &spec,
        &[
            rec(2, 1, None),
            rec(3, 2, Some(json!({"id":2,"name":"c","age":"x"}))),
        ],
    );
    t.apply(&spec, "g", &b).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap(), HashMap::from([(0, 4)]));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT id, name FROM customers ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![(2, "b".to_string())],
        "id 1 deleted; id 2's bad update dead-lettered"
    );
    let dead: i64 = conn
        .query_row(
            "SELECT count(*) FROM tributary_sink_dead_letters",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dead, 1);
}

#[test]
fn keys_are_deduplicated_by_value_and_bad_keys_or_nul_text_are_dead_rows() {
    let spec = sink("").table_spec().unwrap();
    let mut a = rec(0, 1, Some(json!({"id":1,"name":"a"})));
    a.key = Some(r#"{"id":"1"}"#.into());
    let b = rec(1, 1, Some(json!({"id":1,"name":"b"})));
    let mut null_key = rec(2, 0, Some(json!({"name":"x"})));
    null_key.key = Some(r#"{"id":null}"#.into());
    let nul = rec(3, 5, Some(json!({"id":5,"name":"a\u{0}b"})));
    let batch = build_batch(&spec, &[a, b, null_key, nul]);
    assert_eq!(
        batch.changes.len(),
        1,
        "{{\"id\":\"1\"}} and {{\"id\":1}} are one row"
    );
    assert!(matches!(&batch.changes[0], Change::Upsert(v) if v[1] == SqlValue::Text("b".into())));
    assert_eq!(batch.dead.len(), 2);
    assert!(
        batch.dead[0].error.contains("missing or null"),
        "{}",
        batch.dead[0].error
    );
    assert!(
        batch.dead[1].error.contains("NUL"),
        "{}",
        batch.dead[1].error
    );
}

#[test]
fn reserved_words_work_as_column_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: SinkConfig = toml::from_str(&format!(
        "url = \"{}\"\ntable = \"order\"\ncolumns = [\"user bigint\", \"group text\"]\nkey_columns = [\"user\"]\n",
        dir.path().join("r.sqlite").display()
    ))
    .unwrap();
    let spec = cfg.table_spec().unwrap();
    let mut t = open_target(&cfg).unwrap();
    t.prepare(&spec).unwrap();
    let mut r = rec(0, 0, Some(json!({"user":7,"group":"g"})));
    r.key = Some(r#"{"user":7}"#.into());
    t.apply(&spec, "g", &build_batch(&spec, &[r])).unwrap();
    // Offsets never go backwards, even if an older batch is applied again.
    let mut old = build_batch(&spec, &[]);
    old.offsets = vec![("out".into(), 0, 0)];
    t.apply(&spec, "g", &old).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap(), HashMap::from([(0, 1)]));
}
