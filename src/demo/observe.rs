//! Watching the demo run: the processor's metrics (read in process from its
//! registry), its state store, the SQLite file, the progress line, and the
//! replay check (the source topics through `tributary replay`'s path,
//! compared with the output topic and the table).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::proto::MetricType;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Timestamp;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

use super::scenario::{Scenario, SourceSpec};
use super::sources::{key_of, LiveCounts};
use super::{fail, DemoError, GROUP, OUTPUT, PARTITIONS, TABLE};
use crate::config::Config;
use crate::merge::KeyState;
use crate::metrics::Metrics;
use crate::replay::DumpRecord;

/// A row of the materialized table or of a merged record, column → value.
pub(super) type Row = serde_json::Map<String, Value>;

/// The processor's metrics at one moment: (name, labels, value) per series
/// of the counters and gauges.
#[derive(Debug, Default, Clone)]
pub(super) struct MetricsView(Vec<(String, BTreeMap<String, String>, f64)>);

impl MetricsView {
    pub(super) fn read(metrics: &Metrics) -> MetricsView {
        let mut out = Vec::new();
        for family in metrics.registry().gather() {
            for m in family.get_metric() {
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => continue,
                };
                let labels = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                out.push((family.name().to_string(), labels, value));
            }
        }
        MetricsView(out)
    }

    /// Sum of a metric's series whose labels match `filter`.
    pub(super) fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && filter.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// A metric's series summed by one label.
    pub(super) fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.0 {
            if n == name {
                *out.entry(l.get(label).cloned().unwrap_or_default()).or_insert(0.0) += v;
            }
        }
        out
    }
}

fn open_sqlite(path: &Path) -> Option<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    // Never create the file: the sink does.
    let conn =
        rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).ok()?;
    conn.busy_timeout(Duration::from_secs(1)).ok()?;
    Some(conn)
}

fn sqlite_count(path: &Path) -> Option<i64> {
    open_sqlite(path)?.query_row(&format!("SELECT count(*) FROM {TABLE}"), [], |r| r.get(0)).ok()
}

/// The sink's stored next offsets of the output topic, per partition.
pub(super) fn sink_offsets(path: &Path) -> Option<HashMap<i32, i64>> {
    let conn = open_sqlite(path)?;
    let mut stmt = conn
        .prepare("SELECT partition_id, next_offset FROM tributary_sink_offsets WHERE consumer_group = ?1 AND topic = ?2")
        .ok()?;
    let rows = stmt.query_map([format!("{GROUP}-sink").as_str(), OUTPUT], |r| Ok((r.get(0)?, r.get(1)?))).ok()?;
    rows.collect::<Result<HashMap<i32, i64>, _>>().ok()
}

/// Every row of the materialized table, by id.
pub(super) fn read_rows(path: &Path) -> Result<BTreeMap<i64, Row>, rusqlite::Error> {
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open(path)?;
    let mut stmt = conn.prepare(&format!("SELECT * FROM {TABLE} ORDER BY id"))?;
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
    let mut rows = stmt.query([])?;
    let mut out = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let mut row = Row::new();
        for (i, name) in names.iter().enumerate() {
            let v = match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => n.into(),
                ValueRef::Real(x) => x.into(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                ValueRef::Blob(_) => Value::String("(bytes)".into()),
            };
            row.insert(name.clone(), v);
        }
        out.insert(row.get("id").and_then(Value::as_i64).unwrap_or(-1), row);
    }
    Ok(out)
}

/// The processor's committed state of every key the sources wrote (read
/// from its state store after it stopped), by customer id.
pub(super) fn read_states(state_dir: &Path, ids: &BTreeSet<u64>) -> Result<BTreeMap<u64, KeyState>, DemoError> {
    let what = format!("the processor's state store in {}", state_dir.display());
    let db = crate::store::StateDb::open(state_dir).map_err(fail(format!("cannot open {what}")))?;
    let tasks =
        (0..PARTITIONS).map(|p| db.task(p)).collect::<Result<Vec<_>, _>>().map_err(fail(format!("cannot open {what}")))?;
    let mut out = BTreeMap::new();
    for &id in ids {
        let key = key_of(id);
        let task = &tasks[crate::kafka::murmur2_partition(key.as_bytes(), PARTITIONS) as usize];
        if let Some(state) = task.get_committed(&key).map_err(fail(format!("cannot read key {key} from {what}")))? {
            out.insert(id, state);
        }
    }
    Ok(out)
}

/// The live progress line on stderr.
pub(super) struct Progress {
    metrics: Arc<Metrics>,
    sqlite: PathBuf,
    sources: &'static [SourceSpec],
    tty: bool,
    last_print: Option<Instant>,
    printed: bool,
}

impl Progress {
    pub(super) fn new(metrics: &Arc<Metrics>, sqlite: &Path, scenario: Scenario) -> Progress {
        Progress {
            metrics: metrics.clone(),
            sqlite: sqlite.to_path_buf(),
            sources: scenario.sources(),
            tty: std::io::stderr().is_terminal(),
            last_print: None,
            printed: false,
        }
    }

    pub(super) fn tick(&mut self, started: Instant, live: &LiveCounts, phase: &str) {
        // A terminal gets a line rewritten twice a second; a log, one every 2 s.
        let every = if self.tty { Duration::from_millis(500) } else { Duration::from_secs(2) };
        if self.last_print.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_print = Some(Instant::now());
        let ev: Vec<String> =
            self.sources.iter().zip(&live.events).map(|(s, n)| format!("{}={}", s.name, n.load(Ordering::Relaxed))).collect();
        let m = MetricsView::read(&self.metrics);
        let merged = m.sum("tributary_records_emitted_total", &[]) as u64;
        let conflicts = m.sum("tributary_conflicts_total", &[]) as u64;
        let rows = sqlite_count(&self.sqlite).map_or("-".into(), |n| n.to_string());
        let note =
            if self.metrics.is_ready() { "" } else { "  (processor joining its group: the mock delays a first join by 3 s)" };
        let line = format!(
            "[{:5.1}s {phase}] events {} | merged {merged} | conflicts {conflicts} | rows in SQLite {rows}{note}",
            started.elapsed().as_secs_f64(),
            ev.join(" ")
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line:<130}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    pub(super) fn finish(&mut self) {
        if self.tty && self.printed {
            eprintln!();
        }
        self.printed = false;
    }
}

/// The demo's output compared with `tributary replay` of its sources.
#[derive(Debug, Default)]
pub(super) struct ReplayCheck {
    /// Source records replayed.
    pub records: u64,
    /// Keys in replay's output.
    pub keys: usize,
    /// Keys whose replayed row exists (not a tombstone).
    pub live: usize,
    /// Keys whose output-topic record and table row both equal replay's.
    pub matching: usize,
    /// What differed, one line per key.
    pub mismatches: Vec<String>,
}

impl ReplayCheck {
    pub(super) fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.keys > 0
    }
}

/// Reads every record of `topic` up to its end, in partition and offset order.
fn read_topic(client: &BaseConsumer, bootstrap: &str, topic: &str) -> Result<Vec<DumpRecord>, DemoError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "tributary-demo-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(fail("cannot create a client of the mock cluster"))?;
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let (low, high) =
            client.fetch_watermarks(topic, p, Duration::from_secs(5)).map_err(fail(format!("{topic} [{p}]: end offsets")))?;
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low)).map_err(fail(format!("{topic} [{p}]")))?;
        consumer.assign(&tpl).map_err(fail(format!("{topic} [{p}]: assign")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut next = low;
        while next < high {
            if Instant::now() > deadline {
                return Err(DemoError(format!("{topic} [{p}]: read {next} of {high} records within 10 s")));
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m.map_err(fail(format!("{topic} [{p}]: read")))?;
            let (tstype, ts) = match m.timestamp() {
                Timestamp::CreateTime(t) => ("create", Some(t)),
                Timestamp::LogAppendTime(t) => ("logappend", Some(t)),
                Timestamp::NotAvailable => ("none", None),
            };
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            out.push(DumpRecord {
                topic: topic.to_string(),
                partition: p,
                offset: m.offset(),
                tstype: tstype.into(),
                ts,
                broker: -1,
                headers: Vec::new(),
                key: text(m.key()),
                payload: text(m.payload()),
            });
            next = m.offset() + 1;
        }
    }
    Ok(out)
}

/// The table's rows checked against values the simulated databases imply.
#[derive(Debug, Default)]
pub(super) struct KnownValues {
    /// The columns checked.
    pub columns: BTreeSet<String>,
    /// Rows checked (keys deleted in the merge have no row to check).
    pub rows: usize,
    /// What differed, one line per row.
    pub mismatches: Vec<String>,
}

/// Compares every table row with `expected` (customer id → column → value).
pub(super) fn known_values(expected: &BTreeMap<u64, Row>, table: &BTreeMap<i64, Row>) -> KnownValues {
    let mut out = KnownValues::default();
    for (id, want) in expected {
        let Some(row) = table.get(&(*id as i64)) else { continue };
        out.rows += 1;
        let mut differ = Vec::new();
        for (column, value) in want {
            out.columns.insert(column.clone());
            if !same_value(row.get(column), Some(value)) {
                differ.push(format!("{column} = {} (the databases imply {value})", row.get(column).unwrap_or(&Value::Null)));
            }
        }
        if !differ.is_empty() {
            out.mismatches.push(format!("customer {id}: {}", differ.join(", ")));
        }
    }
    out
}

/// Does the table's `got` hold the merged record's `want`? The sink stores
/// JSON columns as text and numbers as numbers.
fn same_value(got: Option<&Value>, want: Option<&Value>) -> bool {
    match (got.unwrap_or(&Value::Null), want.unwrap_or(&Value::Null)) {
        (g, w) if g == w => true,
        (Value::String(g), w @ (Value::Array(_) | Value::Object(_))) => serde_json::from_str::<Value>(g).is_ok_and(|g| &g == w),
        (Value::Number(g), Value::Number(w)) => g.as_f64() == w.as_f64(),
        _ => false,
    }
}

/// Replays the source topics offline through `tributary replay`'s path and
/// compares the last record per key with the output topic's and with the
/// table's row (every column of `[sink] columns`).
pub(super) fn replay_check(
    config: &Config,
    client: &BaseConsumer,
    sources: &[SourceSpec],
    sqlite: &Path,
) -> Result<ReplayCheck, DemoError> {
    let bootstrap = &config.kafka.bootstrap_servers;
    let mut dump = Vec::new();
    let mut records = 0;
    for s in sources {
        for r in read_topic(client, bootstrap, s.topic)? {
            serde_json::to_writer(&mut dump, &r).map_err(fail("dump"))?;
            dump.push(b'\n');
            records += 1;
        }
    }
    let mut replayed = Vec::new();
    let mut log = Vec::new();
    crate::replay::replay(config, &dump[..], "the demo's source topics", &mut replayed, None, &mut log)
        .map_err(fail("replay of the source topics"))?;
    let last = |records: Vec<DumpRecord>| -> BTreeMap<String, Option<Value>> {
        records
            .into_iter()
            .filter_map(|r| Some((r.key?, r.payload.map(|p| serde_json::from_str(&p).unwrap_or(Value::String(p))))))
            .collect()
    };
    let replayed: Vec<DumpRecord> = replayed
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()
        .map_err(fail("replay's output"))?;
    let want = last(replayed);
    let got = last(read_topic(client, bootstrap, OUTPUT)?);
    let table = read_rows(sqlite).map_err(fail(format!("cannot read {}", sqlite.display())))?;
    let columns: Vec<String> = config
        .sink
        .as_ref()
        .map(|s| s.columns.iter().filter_map(|c| c.split_whitespace().next().map(str::to_string)).collect())
        .unwrap_or_default();

    Ok(ReplayCheck { records, ..compare(&want, &got, &table, &columns) })
}

/// Replay's last record per key (`want`) against the output topic's (`got`)
/// and the table's rows.
fn compare(
    want: &BTreeMap<String, Option<Value>>,
    got: &BTreeMap<String, Option<Value>>,
    table: &BTreeMap<i64, Row>,
    columns: &[String],
) -> ReplayCheck {
    let mut check = ReplayCheck { keys: want.len(), ..ReplayCheck::default() };
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for key in keys {
        let (w, g) = (want.get(key).cloned().flatten(), got.get(key).cloned().flatten());
        if w.is_some() {
            check.live += 1;
        }
        if w != g {
            let show = |v: &Option<Value>| v.as_ref().map_or("nothing (deleted or absent)".to_string(), Value::to_string);
            check.mismatches.push(format!("{key}: output topic {}, replay {}", show(&g), show(&w)));
            continue;
        }
        let id = serde_json::from_str::<Value>(key).ok().and_then(|k| k["id"].as_i64()).unwrap_or(-1);
        match (table.get(&id), w.as_ref().and_then(Value::as_object)) {
            (None, None) => {}
            (Some(_), None) => {
                check.mismatches.push(format!("{key}: a row in table {TABLE}, but replay deletes the key"));
                continue;
            }
            (None, Some(_)) => {
                check.mismatches.push(format!("{key}: no row in table {TABLE}, but replay has one"));
                continue;
            }
            (Some(row), Some(merged)) => {
                let differ: Vec<String> = columns
                    .iter()
                    .filter(|c| !same_value(row.get(*c), merged.get(*c)))
                    .map(|c| {
                        format!("{c} = {} (replay {})", row.get(c).unwrap_or(&Value::Null), merged.get(c).unwrap_or(&Value::Null))
                    })
                    .collect();
                if !differ.is_empty() {
                    check.mismatches.push(format!("{key}: table {TABLE} has {}", differ.join(", ")));
                    continue;
                }
            }
        }
        check.matching += 1;
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_the_registry_by_label() {
        let m = Metrics::new();
        m.conflict("default", "lww", "eu");
        m.conflict("default", "lww", "eu");
        m.conflict("default", "lww", "ap");
        m.set_ready(true);
        let v = MetricsView::read(&m);
        assert_eq!(v.sum("tributary_conflicts_total", &[]), 3.0);
        assert_eq!(v.sum("tributary_conflicts_total", &[("winner", "ap")]), 1.0);
        assert_eq!(v.by("tributary_conflicts_total", "winner")["eu"], 2.0);
        assert_eq!(v.sum("tributary_ready", &[]), 1.0);
    }

    #[test]
    fn the_replay_check_finds_every_kind_of_difference() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let row = |s: &str| j(s).as_object().unwrap().clone();
        let columns: Vec<String> = ["id", "email", "tags"].map(String::from).to_vec();
        let want: BTreeMap<String, Option<Value>> = [
            (key_of(1), Some(j(r#"{"id":1,"email":"a@crm","tags":["x"]}"#))),
            (key_of(2), None),
            (key_of(3), Some(j(r#"{"id":3,"email":"c@crm"}"#))),
        ]
        .into();
        let table: BTreeMap<i64, Row> = [
            (1, row(r#"{"id":1,"email":"a@crm","tags":"[\"x\"]","_tributary_vv":"{}"}"#)),
            (3, row(r#"{"id":3,"email":"c@crm","tags":null}"#)),
        ]
        .into();
        let same = compare(&want, &want, &table, &columns);
        assert!(same.passed(), "{:?}", same.mismatches);
        assert_eq!((same.keys, same.live, same.matching), (3, 2, 3));

        // The output topic differs for key 1; the table keeps a deleted key 2 and misses key 3.
        let mut got = want.clone();
        got.insert(key_of(1), Some(j(r#"{"id":1,"email":"b@crm","tags":["x"]}"#)));
        let mut table = table;
        table.insert(2, row(r#"{"id":2}"#));
        table.remove(&3);
        let differ = compare(&want, &got, &table, &columns);
        assert!(!differ.passed());
        assert_eq!(differ.matching, 0);
        assert_eq!(differ.mismatches.len(), 3, "{:?}", differ.mismatches);
        assert!(differ.mismatches[0].contains("b@crm") && differ.mismatches[0].contains("a@crm"));

        // A column value differs in the table only.
        let table: BTreeMap<i64, Row> = [(1, row(r#"{"id":1,"email":"a@crm","tags":"[]"}"#))].into();
        let want: BTreeMap<String, Option<Value>> = [(key_of(1), Some(j(r#"{"id":1,"email":"a@crm","tags":["x"]}"#)))].into();
        let c = compare(&want, &want, &table, &columns);
        assert_eq!(c.mismatches.len(), 1);
        assert!(c.mismatches[0].contains("tags"), "{:?}", c.mismatches);
    }

    #[test]
    fn known_values_are_checked_on_the_rows_the_table_has() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap().as_object().unwrap().clone();
        let expected: BTreeMap<u64, Row> =
            [(1, j(r#"{"loyalty_points":30}"#)), (2, j(r#"{"loyalty_points":5}"#)), (3, j(r#"{"loyalty_points":0}"#))].into();
        let table: BTreeMap<i64, Row> =
            [(1, j(r#"{"id":1,"loyalty_points":30}"#)), (2, j(r#"{"id":2,"loyalty_points":15}"#))].into();
        let k = known_values(&expected, &table);
        assert_eq!(k.rows, 2);
        assert_eq!(k.columns.iter().collect::<Vec<_>>(), ["loyalty_points"]);
        assert_eq!(k.mismatches.len(), 1, "{:?}", k.mismatches);
        assert!(k.mismatches[0].starts_with("customer 2: loyalty_points = 15"), "{:?}", k.mismatches);
    }

    #[test]
    fn table_values_match_merged_values_across_the_sinks_encodings() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(same_value(Some(&j("\"[\\\"a\\\",\\\"b\\\"]\"")), Some(&j("[\"a\",\"b\"]"))));
        assert!(same_value(Some(&j("120")), Some(&j("120.0"))));
        assert!(same_value(Some(&Value::Null), None));
        assert!(!same_value(Some(&j("\"x\"")), Some(&j("\"y\""))));
        assert!(!same_value(Some(&j("\"[\\\"a\\\"]\"")), Some(&j("[\"a\",\"b\"]"))));
        assert!(!same_value(None, Some(&j("1"))));
    }
}
