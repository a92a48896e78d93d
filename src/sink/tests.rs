use super::*;
use crate::config::Config;
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
        timestamp: Some(1_000 + offset),
        error: None,
    }
}

fn off(partition: i32, next: i64, ts: i64) -> OffsetUpdate {
    OffsetUpdate { topic: "out".into(), partition, next, record_ts: Some(ts) }
}

#[test]
fn column_lists_are_validated_with_the_key_named() {
    assert!(sink("").table_spec().is_ok());
    let e = sink("").clone();
    let mut bad = e.clone();
    bad.columns.push("x money".into());
    assert!(bad.table_spec().unwrap_err().to_string().contains("sink.columns[5]: unknown type \"money\""));
    let mut bad = e.clone();
    bad.columns.push("x numeric(2,3)".into());
    assert!(bad.table_spec().unwrap_err().to_string().contains("sink.columns[5]: unknown type \"numeric(2,3)\""));
    let mut postgres_names = e.clone();
    postgres_names.columns.extend(
        ["balance double precision", "created timestamp with time zone", "amount numeric(12, 2)", "note character varying"]
            .map(String::from),
    );
    let spec = postgres_names.table_spec().unwrap();
    let types: Vec<String> = spec.columns[5..].iter().map(|c| c.ty.to_string()).collect();
    assert_eq!(types, ["double", "timestamptz", "numeric(12,2)", "text"]);
    let mut bad = e.clone();
    bad.time_units.insert("age".into(), EpochUnit::Micros);
    assert!(bad.table_spec().unwrap_err().to_string().contains("sink.time_units.age: not a timestamp"));
    let mut bad = e.clone();
    bad.key_columns = vec!["nope".into()];
    assert!(bad.table_spec().unwrap_err().to_string().contains("sink.key_columns: \"nope\""));
    let mut bad = e;
    bad.table = "drop table x;".into();
    assert!(bad.table_spec().is_err());
}

#[test]
fn the_last_change_per_key_wins_and_offsets_advance() {
    let spec = sink("vv_column = \"_vv\"").table_spec().unwrap();
    let records = vec![
        rec(0, 1, Some(json!({"id":1,"name":"a"}))),
        rec(1, 2, Some(json!({"id":2,"name":"b","age":"41","vip":true,"tags":["x"]}))),
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
    assert_eq!(b.offsets, vec![off(0, 3, 1_002)]);
}

#[test]
fn type_mismatches_become_dead_rows_naming_the_column() {
    let spec = sink("").table_spec().unwrap();
    let b = build_batch(
        &spec,
        &[rec(0, 1, Some(json!({"id":1,"age":"old"}))), rec(1, 2, Some(json!({"id":2,"age":3_000_000_000i64})))],
    );
    assert!(b.changes.is_empty());
    assert_eq!(b.dead.len(), 2);
    assert!(b.dead[0].error.contains("column `age` (integer): \"old\" is not an integer"), "{}", b.dead[0].error);
    assert!(b.dead[1].error.contains("32-bit"), "{}", b.dead[1].error);
    assert_eq!(b.offsets, vec![off(0, 2, 1_001)], "dead rows still advance the offsets");
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
    let b = build_batch(&spec, &[rec(0, 1, Some(json!({"id":1,"name":"a"}))), rec(1, 2, Some(json!({"id":2,"name":"b"})))]);
    t.apply(&spec, "g", &b).unwrap();
    let b = build_batch(&spec, &[rec(2, 1, None), rec(3, 2, Some(json!({"id":2,"name":"c","age":"x"})))]);
    t.apply(&spec, "g", &b).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap(), HashMap::from([(0, StoredOffset { next: 4, record_ts: Some(1_003) })]));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT id, name FROM customers ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, vec![(2, "b".to_string())], "id 1 deleted; id 2's bad update dead-lettered");
    let dead: i64 = conn.query_row("SELECT count(*) FROM tributary_sink_dead_letters", [], |r| r.get(0)).unwrap();
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
    assert_eq!(batch.changes.len(), 1, "{{\"id\":\"1\"}} and {{\"id\":1}} are one row");
    assert!(matches!(&batch.changes[0], Change::Upsert(v) if v[1] == SqlValue::Text("b".into())));
    assert_eq!(batch.dead.len(), 2);
    assert!(batch.dead[0].error.contains("missing or null"), "{}", batch.dead[0].error);
    assert!(batch.dead[1].error.contains("NUL"), "{}", batch.dead[1].error);
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
    old.offsets = vec![off(0, 0, 5)];
    t.apply(&spec, "g", &old).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap(), HashMap::from([(0, StoredOffset { next: 1, record_ts: Some(1_000) })]));
}

fn ids(path: &str, table: &str) -> Vec<i64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare(&format!("SELECT id FROM {table} ORDER BY id")).unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    rows
}

#[test]
fn resync_batches_apply_only_past_the_stored_offset_and_mark_every_key() {
    let spec = sink("").table_spec().unwrap();
    let records = vec![
        rec(0, 1, Some(json!({"id":1,"name":"old"}))),
        rec(1, 2, Some(json!({"id":2,"name":"b"}))),
        rec(2, 3, None),
        rec(3, 1, Some(json!({"id":1,"name":"new"}))),
        rec(4, 2, None),
    ];
    let b = build_resync_batch(&spec, &records, &HashMap::from([(0, 3)]));
    // Offsets 0..3 are in the table already: applying them again would move
    // key 1 back to "old" until offset 3 is applied.
    assert_eq!(b.changes.len(), 2);
    assert!(matches!(&b.changes[0], Change::Upsert(v) if v[1] == SqlValue::Text("new".into())));
    assert_eq!(b.changes[1], Change::Delete(vec![SqlValue::Int(2)]));
    assert_eq!(b.offsets, vec![off(0, 5, 1_004)]);
    assert_eq!(b.live, vec![vec![SqlValue::Int(1)]]);
    assert_eq!(b.gone, vec![vec![SqlValue::Int(2)], vec![SqlValue::Int(3)]]);
    assert!(build_batch(&spec, &records).live.is_empty(), "outside a resync nothing is marked");
}

#[test]
fn a_resync_removes_rows_without_live_keys_in_bounded_batches_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite").display().to_string();
    let mut cfg = sink("");
    cfg.url = path.clone();
    let spec = cfg.table_spec().unwrap();
    let mut t = open_target(&cfg).unwrap();
    t.prepare(&spec).unwrap();
    let rows: Vec<RawRecord> = (1..=7).map(|id| rec(id - 1, id, Some(json!({"id": id})))).collect();
    t.apply(&spec, "g", &build_batch(&spec, &rows)).unwrap();
    assert_eq!(t.resync_started("g", "out").unwrap(), None);
    t.begin_resync(&spec, "g", "out", &[]).unwrap();
    assert!(t.resync_started("g", "out").unwrap().is_some(), "in progress from the first transaction");
    // The topic holds keys 2 and 5 (and a tombstone for 3).
    let seen = vec![rec(1, 2, Some(json!({"id":2}))), rec(2, 3, None), rec(4, 5, Some(json!({"id":5})))];
    t.apply(&spec, "g", &build_resync_batch(&spec, &seen, &HashMap::from([(0, 7)]))).unwrap();
    assert_eq!(t.sweep(&spec, None, 2).unwrap(), Sweep { examined: 2, deleted: 1, last: Some(vec![SqlValue::Int(2)]) });
    drop(t);
    // A crash here: the next start finds the resync unfinished and redoes it.
    let mut t = open_target(&cfg).unwrap();
    t.prepare(&spec).unwrap();
    assert!(t.resync_started("g", "out").unwrap().is_some());
    t.begin_resync(&spec, "g", "out", &[]).unwrap();
    t.apply(&spec, "g", &build_resync_batch(&spec, &seen, &HashMap::from([(0, 7)]))).unwrap();
    let mut removed = 0;
    let mut after: Option<Vec<SqlValue>> = None;
    loop {
        let step = t.sweep(&spec, after.as_deref(), 2).unwrap();
        removed += step.deleted;
        if step.examined < 2 {
            break;
        }
        after = step.last;
    }
    assert_eq!(removed, 4, "keys 3, 4, 6 and 7; key 1 went in the first run");
    t.finish_resync("g", "out").unwrap();
    assert_eq!(t.resync_started("g", "out").unwrap(), None);
    assert_eq!(ids(&path, "customers"), vec![2, 5]);
    assert_eq!(t.offsets("g", "out").unwrap()[&0].next, 7, "offsets never went back");
}

#[test]
fn a_reset_partition_forgets_its_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = sink("");
    cfg.url = dir.path().join("t.sqlite").display().to_string();
    let spec = cfg.table_spec().unwrap();
    let mut t = open_target(&cfg).unwrap();
    t.prepare(&spec).unwrap();
    t.apply(&spec, "g", &build_batch(&spec, &[rec(40, 1, Some(json!({"id":1})))])).unwrap();
    t.begin_resync(&spec, "g", "out", &[0]).unwrap();
    assert!(t.offsets("g", "out").unwrap().is_empty());
    t.apply(&spec, "g", &build_resync_batch(&spec, &[rec(0, 1, Some(json!({"id":1})))], &HashMap::new())).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap()[&0].next, 1);
}

#[test]
fn an_offsets_table_from_before_timestamps_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite").display().to_string();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE tributary_sink_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic, partition_id));
             INSERT INTO tributary_sink_offsets VALUES ('g', 'out', 0, 12);",
        )
        .unwrap();
    }
    let mut cfg = sink("");
    cfg.url = path;
    let spec = cfg.table_spec().unwrap();
    let mut t = open_target(&cfg).unwrap();
    t.prepare(&spec).unwrap();
    t.prepare(&spec).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap(), HashMap::from([(0, StoredOffset { next: 12, record_ts: None })]));
    t.apply(&spec, "g", &build_batch(&spec, &[rec(12, 1, Some(json!({"id":1})))])).unwrap();
    assert_eq!(t.offsets("g", "out").unwrap(), HashMap::from([(0, StoredOffset { next: 13, record_ts: Some(1_012) })]));
}

#[test]
fn a_second_sqlite_sink_on_one_file_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = sink("");
    cfg.url = dir.path().join("one.sqlite").display().to_string();
    let first = open_target(&cfg).unwrap();
    let Err(e) = open_target(&cfg) else { panic!("a second sink opened the file") };
    let text = e.to_string();
    assert!(text.contains(&cfg.url) && text.contains("another tributary sink holds"), "{text}");
    assert!(matches!(e, SinkError::Db { source: DbError::SqliteBusy { .. }, .. }), "{e:?}");
    drop(first);
    // The lock goes with the first sink. A process another test forks at
    // that moment holds a copy of the lock's descriptor until it execs (the
    // flock belongs to the open file, not the descriptor): wait that out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(e) = open_target(&cfg) {
        assert!(std::time::Instant::now() < deadline, "the lock goes with the first sink: {e}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn statement_sizes_come_from_a_few_and_cover_every_row() {
    for n in [0, 1, 7, 500, 511, 512, 513, 1999] {
        let sizes = chunk_sizes(n, 512);
        assert_eq!(sizes.iter().sum::<usize>(), n);
        assert!(sizes.iter().all(|s| s.is_power_of_two()), "{n}: {sizes:?}");
    }
    assert_eq!(chunk_sizes(1029, 512), vec![512, 512, 4, 1]);
    assert_eq!(rows_per_statement(3, 32_766), 512);
    assert_eq!(rows_per_statement(200, 32_766), 128);
    assert_eq!(rows_per_statement(70_000, 65_535), 1);
}

#[test]
fn deletes_are_one_statement_and_postgres_casts_the_exact_types() {
    let mut cfg = sink("");
    cfg.columns = vec!["id uuid".into(), "day date".into(), "amount numeric(12,2)".into()];
    cfg.key_columns = vec!["id".into(), "day".into()];
    let spec = cfg.table_spec().unwrap();
    assert_eq!(
        delete_sql(&spec, 2, '$'),
        r#"DELETE FROM "customers" WHERE ("id", "day") IN (($1::text::UUID, $2::text::DATE), ($3::text::UUID, $4::text::DATE))"#
    );
    assert_eq!(delete_sql(&spec, 1, '?'), r#"DELETE FROM "customers" WHERE ("id", "day") IN ((?1, ?2))"#);
    assert!(upsert_sql(&spec, 1, '$').contains("($1::text::UUID, $2::text::DATE, $3::text::NUMERIC(12,2))"));
}

#[test]
fn a_sink_only_config_needs_no_sources_but_run_still_does() {
    let text = r#"
[kafka]
bootstrap_servers = "k:9092"
[sink]
topic = "customers.merged"
url = "c.sqlite"
table = "customers"
columns = ["id bigint", "balance double precision", "created timestamp with time zone"]
key_columns = ["id"]
"#;
    let c = Config::parse_for_sink(text, "sink.toml", []).unwrap();
    assert_eq!(c.sink.unwrap().table_spec().unwrap().columns[2].ty, ColumnType::TimestampTz);
    let e = Config::parse(text, "sink.toml", []).unwrap_err().to_string();
    assert!(e.contains("sources: at least one"), "{e}");
    let e = Config::parse_for_sink(&text.replace("topic = \"customers.merged\"\n", ""), "sink.toml", []).unwrap_err().to_string();
    assert!(e.contains("sink.topic"), "{e}");
    let e = Config::parse_for_sink("[kafka]\n[output]\ntopic = \"x\"\n", "sink.toml", []).unwrap_err().to_string();
    assert!(e.contains("no [sink] section"), "{e}");
}

const TWO_TABLES: &str = r#"
[kafka]
bootstrap_servers = "k:9092"
[sink]
url = "c.sqlite"
batch_size = 10
[[sink.tables]]
table = "customers"
topic = "customers.merged"
columns = ["id bigint", "name text"]
key_columns = ["id"]
[[sink.tables]]
table = "orders"
topic = "orders.merged"
columns = ["order_id text", "customer bigint", "placed timestamp"]
key_columns = ["order_id"]
vv_column = "_vv"
[sink.tables.time_units]
placed = "micros"
"#;

#[test]
fn several_tables_resolve_each_with_its_topic_and_layout() {
    let c = Config::parse_for_sink(TWO_TABLES, "sink.toml", []).unwrap();
    let tables = c.sink.as_ref().unwrap().resolve(&c).unwrap();
    let got: Vec<(&str, &str, usize)> =
        tables.iter().map(|t| (t.topic.as_str(), t.spec.table.as_str(), t.spec.columns.len())).collect();
    assert_eq!(got, [("customers.merged", "customers", 2), ("orders.merged", "orders", 4)]);
    assert_eq!(tables[1].spec.columns[2].unit, Some(EpochUnit::Micros), "time_units belong to their table");
    assert_eq!(tables[1].spec.vv, Some(3));
    assert_eq!(tables[0].spec.vv, None);
}

#[test]
fn problems_of_several_tables_name_the_entry() {
    let problems = |text: String| match Config::parse_for_sink(&text, "sink.toml", []) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    };
    let e = problems(TWO_TABLES.replace("topic = \"orders.merged\"\n", ""));
    assert!(e.contains("sink.tables[1].topic: name the topic to read"), "{e}");
    let e = problems(TWO_TABLES.replace("orders.merged", "customers.merged"));
    assert!(e.contains("sink.tables[1].topic: \"customers.merged\" is already materialized by sink.tables[0]"), "{e}");
    let e = problems(TWO_TABLES.replace("table = \"orders\"", "table = \"Customers\""));
    assert!(e.contains("sink.tables[1].table: \"Customers\" is also sink.tables[0].table"), "{e}");
    let e = problems(TWO_TABLES.replace("\"placed timestamp\"", "\"placed money\""));
    assert!(e.contains("sink.tables[1].columns[2]: unknown type \"money\""), "{e}");
    let e = problems(TWO_TABLES.replace("key_columns = [\"order_id\"]", "key_columns = [\"id\"]"));
    assert!(e.contains("sink.tables[1].key_columns: \"id\" is not in sink.tables[1].columns"), "{e}");
    let e = problems(TWO_TABLES.replace("placed = \"micros\"", "customer = \"micros\""));
    assert!(e.contains("sink.tables[1].time_units.customer: not a timestamp"), "{e}");
    let e = problems(TWO_TABLES.replace("batch_size = 10\n", "batch_size = 10\ntable = \"x\"\ncolumns = [\"id bigint\"]\n"));
    assert!(e.contains("sink.table: with [[sink.tables]] every table has its own; move table, columns"), "{e}");
    let e = problems(TWO_TABLES.replace("table = \"orders\"", "table = \"orders\"\nbatch_size = 3"));
    assert!(e.contains("batch_size"), "connection and group keys stay in [sink]: {e}");
}

#[test]
fn two_tables_share_one_database_and_keep_their_offsets_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite").display().to_string();
    let mut c = Config::parse_for_sink(TWO_TABLES, "sink.toml", []).unwrap();
    c.sink.as_mut().unwrap().url = path.clone();
    let sink = c.sink.as_ref().unwrap();
    let tables = sink.resolve(&c).unwrap();
    let mut t = open_target(sink).unwrap();
    for table in &tables {
        t.prepare(&table.spec).unwrap();
    }
    let customer = RawRecord { topic: "customers.merged".into(), ..rec(4, 1, Some(json!({"id":1,"name":"a"}))) };
    let order = RawRecord {
        topic: "orders.merged".into(),
        key: Some(json!({"order_id": "o-1"}).to_string()),
        ..rec(9, 0, Some(json!({"order_id":"o-1","customer":1,"placed":1_700_000_000_000_000i64})))
    };
    t.apply(&tables[0].spec, "g", &build_batch(&tables[0].spec, &[customer])).unwrap();
    t.apply(&tables[1].spec, "g", &build_batch(&tables[1].spec, &[order])).unwrap();
    assert_eq!(t.offsets("g", "customers.merged").unwrap()[&0].next, 5);
    assert_eq!(t.offsets("g", "orders.merged").unwrap()[&0].next, 10);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let placed: String = conn.query_row("SELECT placed FROM orders WHERE order_id = 'o-1'", [], |r| r.get(0)).unwrap();
    assert_eq!(placed, "2023-11-14 22:13:20", "the table's time_units (micros) applied");
    assert_eq!(ids(&path, "customers"), vec![1]);
}

#[test]
fn a_value_that_does_not_fit_says_which_column_and_why_by_type() {
    let col = |name: &str, ty| Column { name: name.into(), ty, unit: None };
    let e = to_sql(&col("n", ColumnType::Integer), Some(&json!("x"))).unwrap_err();
    assert!(matches!(&e, ColumnError::Mismatch { column, expected: "an integer", .. } if column == "n"), "{e:?}");
    assert_eq!(e.to_string(), r#"column `n` (integer): "x" is not an integer"#);
    let e = to_sql(&col("d", ColumnType::Date), Some(&json!("May"))).unwrap_err();
    assert!(matches!(e, ColumnError::Misfit { why: Misfit::NotDateText, .. }), "{e:?}");
    assert_eq!(e.to_string(), r#"column `d` (date): "May" is not a date (YYYY-MM-DD)"#);
    let e = to_sql(&col("t", ColumnType::Text), Some(&json!("a\u{0}b"))).unwrap_err();
    assert_eq!(e.to_string(), "column `t` (text): the value contains a NUL character, which databases reject");
}
