//! `tributary load`: the inverse of capturing with `kcat -J`. Produces every
//! record of a dump (JSON lines in kcat's `-J` shape, the format `replay`
//! reads) to its topic on the cluster of `[kafka]`, with its key, headers and
//! recorded partition, so that any example or captured dump can be replayed
//! into a live cluster.
//!
//! A load is all or nothing as far as the dump goes: a first pass reads every
//! line, checks it is a kcat record whose topic exists and whose partition
//! exists, and reports every problem with its line number. If there is one,
//! nothing is produced. Only then does a second pass produce, in file order
//! (so each partition receives its records in the dump's order; the producer
//! is idempotent, so retries neither reorder nor duplicate them). Every
//! delivery is awaited; a record the broker refuses is reported with its line
//! and counted, never dropped silently.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message};
use serde::Deserialize;

use crate::config::Config;
use crate::kafka::{murmur2_partition, send_waiting};

/// How long to wait for the cluster's metadata before giving up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// Problems listed one by one before the rest are only counted.
const MAX_LISTED: usize = 20;

/// One line of a dump, as `load` needs it. Like
/// [`DumpRecord`](crate::replay::DumpRecord) but `partition` may be absent
/// (hand-written dumps) and `offset` and `broker` are not needed (the broker
/// assigns offsets). Other fields (kcat's `key_hex`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoadRecord {
    /// Topic to produce to (before `--rename-topic`).
    pub topic: String,
    /// Recorded partition; absent, null or -1: murmur2 of the key.
    #[serde(default)]
    pub partition: Option<i32>,
    /// `create`, `logappend` or `none`.
    #[serde(default)]
    pub tstype: Option<String>,
    /// Recorded timestamp (ms); used with `--keep-timestamps`.
    #[serde(default)]
    pub ts: Option<i64>,
    /// Headers as a flat `[name, value, name, value, …]` list (a value may be null).
    #[serde(default)]
    pub headers: Vec<Option<String>>,
    /// Key as UTF-8 text, or null.
    #[serde(default)]
    pub key: Option<String>,
    /// Value as UTF-8 text, or null (a tombstone).
    #[serde(default)]
    pub payload: Option<String>,
}

impl LoadRecord {
    /// Parses one dump line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<LoadRecord, String> {
        let record: LoadRecord = serde_json::from_str(line).map_err(|e| format!("not a kcat -J record: {e}"))?;
        if record.topic.is_empty() {
            return Err("not a kcat -J record: `topic` is empty".into());
        }
        if matches!(record.partition, Some(p) if p < -1) {
            return Err(format!("`partition` {} is negative", record.partition.unwrap_or_default()));
        }
        if !record.headers.len().is_multiple_of(2) {
            return Err(format!(
                "`headers` must be a flat [name, value, …] list with an even number of entries; it has {}",
                record.headers.len()
            ));
        }
        if let Some(i) = record.headers.iter().step_by(2).position(Option::is_none) {
            return Err(format!("header {} has a null name", i + 1));
        }
        Ok(record)
    }

    /// The recorded partition, when there is one (-1 is kcat's "unassigned").
    fn recorded_partition(&self) -> Option<i32> {
        self.partition.filter(|p| *p >= 0)
    }

    /// The timestamp to carry with `--keep-timestamps`.
    fn timestamp(&self) -> Option<i64> {
        self.ts.filter(|t| *t >= 0 && self.tstype.as_deref() != Some("none"))
    }

    fn headers(&self) -> Option<OwnedHeaders> {
        if self.headers.is_empty() {
            return None;
        }
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len() / 2);
        for pair in self.headers.chunks(2) {
            let key = pair[0].as_deref().expect("checked by parse");
            headers = headers.insert(Header { key, value: pair[1].as_deref() });
        }
        Some(headers)
    }
}

/// The partition a record goes to in a topic of `partitions` partitions:
/// the recorded one, else murmur2 of the key (what Java clients, Debezium and
/// Kafka Connect do, so a hand-written dump co-partitions like real sources),
/// else `None` for a record with neither (librdkafka picks one).
pub fn target_partition(record: &LoadRecord, partitions: i32) -> Result<Option<i32>, String> {
    match record.recorded_partition() {
        Some(p) if p < partitions => Ok(Some(p)),
        Some(p) => Err(format!(
            "partition {p} does not exist: topic {} has {partitions} partition{}",
            record.topic,
            if partitions == 1 { "" } else { "s" }
        )),
        None => Ok(record.key.as_ref().map(|k| murmur2_partition(k.as_bytes(), partitions))),
    }
}

/// Where the dump comes from. A file is read twice (check, then produce);
/// stdin is read into memory first.
pub enum Dump {
    /// A file on disk.
    File(PathBuf),
    /// Text already read (stdin).
    Text {
        /// How to name it in messages, e.g. `<stdin>`.
        name: String,
        /// The lines.
        text: String,
    },
}

impl Dump {
    fn name(&self) -> String {
        match self {
            Dump::File(p) => p.display().to_string(),
            Dump::Text { name, .. } => name.clone(),
        }
    }

    /// (line number, line) for every non-blank line.
    fn lines(&self) -> Result<NumberedLines<'_>, LoadError> {
        let lines: Box<dyn Iterator<Item = io::Result<String>>> = match self {
            Dump::File(p) => {
                let file = File::open(p).map_err(|source| LoadError::Input { name: self.name(), source })?;
                Box::new(BufReader::with_capacity(1 << 20, file).lines())
            }
            Dump::Text { text, .. } => Box::new(text.lines().map(|l| Ok(l.to_string()))),
        };
        Ok(Box::new(
            lines.enumerate().map(|(i, l)| l.map(|l| (i + 1, l))).filter(|r| !matches!(r, Ok((_, l)) if l.trim().is_empty())),
        ))
    }
}

/// (line number, line) pairs of a [`Dump`].
type NumberedLines<'a> = Box<dyn Iterator<Item = io::Result<(usize, String)>> + 'a>;

/// Options of one load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Produce the records of topic `from` to topic `to` instead.
    pub rename_topics: BTreeMap<String, String>,
    /// Give each record its recorded `ts` as timestamp instead of the time
    /// of the load.
    pub keep_timestamps: bool,
}

/// Parses `--rename-topic FROM=TO`.
pub fn parse_rename(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => Ok((from.to_string(), to.to_string())),
        _ => Err(format!("expected FROM=TO (two topic names), got \"{text}\"")),
    }
}

/// Why a load did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The dump cannot be read.
    #[error("cannot read the dump {name}: {source}")]
    Input {
        /// The file (or `<stdin>`).
        name: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The cluster cannot be reached, or a client cannot be created.
    #[error("Kafka at {bootstrap}: {message}")]
    Kafka {
        /// `[kafka] bootstrap_servers`.
        bootstrap: String,
        /// What failed.
        message: String,
    },
    /// Interrupted while the dump was being checked; nothing was produced.
    #[error("{name}: interrupted while checking the dump; nothing was produced")]
    Interrupted {
        /// The file (or `<stdin>`).
        name: String,
    },
    /// Some lines are not records that can be produced; nothing was produced.
    #[error("{name}: {problems} line(s) cannot be produced (listed above); nothing was produced")]
    BadLines {
        /// The file (or `<stdin>`).
        name: String,
        /// How many lines.
        problems: usize,
    },
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records in the dump (non-blank lines).
    pub read: u64,
    /// Records the broker acknowledged, per topic.
    pub produced: BTreeMap<String, u64>,
    /// Records that were not delivered (each reported with its line).
    pub failed: u64,
    /// Set when the load was interrupted: the last line sent (0: none).
    pub interrupted_after: Option<usize>,
}

impl Summary {
    /// Acknowledged records, all topics.
    pub fn produced_total(&self) -> u64 {
        self.produced.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.interrupted_after {
            write!(f, "load: interrupted after line {line}: ")?;
        } else {
            write!(f, "load: ")?;
        }
        write!(f, "read={} produced={} failed={}", self.read, self.produced_total(), self.failed)?;
        for (topic, n) in &self.produced {
            write!(f, " {topic}={n}")?;
        }
        Ok(())
    }
}

/// Delivery reports, keyed by the dump line each record came from.
#[derive(Default)]
struct Deliveries {
    state: Mutex<DeliveryState>,
}

#[derive(Default)]
struct DeliveryState {
    produced: BTreeMap<String, u64>,
    failures: Vec<(usize, String)>,
}

/// librdkafka's log lines and errors, quiet as in `run` ([`crate::kafka::quiet`]);
/// and since the load reports an unreachable cluster itself, naming the
/// bootstrap servers, connection failures are DEBUG too.
impl ClientContext for Deliveries {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::kafka::quiet::log_connection_failures_quietly(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if crate::kafka::quiet::is_unreachable(&error) {
            tracing::debug!(target: "librdkafka", "{error}: {reason}");
        } else {
            crate::kafka::quiet::error(&error, reason);
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, line: usize) {
        let mut st = self.state.lock().expect("delivery state");
        match result {
            Ok(m) => *st.produced.entry(m.topic().to_string()).or_default() += 1,
            Err((e, m)) => st.failures.push((line, format!("not delivered to {} [{}]: {e}", m.topic(), m.partition()))),
        }
    }
}

/// Checks the whole dump, then produces it (see the module documentation).
/// Problems and delivery failures go to `log`, one line each, prefixed with
/// the dump's name and line number. Once `stop` is set (SIGINT, SIGTERM),
/// nothing more is checked or sent; what was sent is still awaited and counted.
pub fn load(
    config: &Config,
    dump: &Dump,
    options: &LoadOptions,
    stop: &AtomicBool,
    log: &mut dyn Write,
) -> Result<Summary, LoadError> {
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let kafka_err = |message: String| LoadError::Kafka { bootstrap: bootstrap.clone(), message };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        // Order within a partition and no duplicates on retry.
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // The check below must not create missing topics with the broker's
        // default partition count: that would break co-partitioning.
        .set("allow.auto.create.topics", "false");
    for (k, v) in &config.kafka.properties {
        client.set(k, v);
    }
    let producer: BaseProducer<Deliveries> =
        client.create_with_context(Deliveries::default()).map_err(|e| kafka_err(format!("cannot create a producer: {e}")))?;
    let name = dump.name();

    // Pass 1: every line parses, every topic exists, every partition exists.
    let mut partitions: HashMap<String, Result<i32, String>> = HashMap::new();
    let mut bad_topics: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut problems = 0usize;
    let mut read = 0u64;
    for item in dump.lines()? {
        let (line_no, line) = item.map_err(|source| LoadError::Input { name: name.clone(), source })?;
        if stop.load(Ordering::Relaxed) {
            return Err(LoadError::Interrupted { name });
        }
        read += 1;
        let record = match LoadRecord::parse(&line) {
            Ok(r) => r,
            Err(e) => {
                report(log, &mut problems, format!("{name}:{line_no}: {e}"));
                continue;
            }
        };
        let topic = options.rename_topics.get(&record.topic).unwrap_or(&record.topic);
        if !partitions.contains_key(topic) {
            let count = partition_count(&producer, topic).map_err(&kafka_err)?;
            partitions.insert(topic.clone(), count);
        }
        match &partitions[topic] {
            Err(_) => {
                let entry = bad_topics.entry(topic.clone()).or_insert((line_no, 0));
                entry.1 += 1;
            }
            Ok(count) => {
                if let Err(e) = target_partition(&record, *count) {
                    report(log, &mut problems, format!("{name}:{line_no}: {e}"));
                }
            }
        }
    }
    for (topic, (first, lines)) in &bad_topics {
        let why = partitions[topic].as_ref().err().cloned().unwrap_or_default();
        report(log, &mut problems, format!("{name}:{first}: topic {topic} {why} ({lines} line(s) name it, the first here)"));
    }
    if problems > MAX_LISTED {
        let _ = writeln!(log, "{name}: … and {} more", problems - MAX_LISTED);
    }
    if problems > 0 {
        return Err(LoadError::BadLines { name, problems });
    }

    // Pass 2: produce in file order, then wait for every delivery report.
    let mut send_failures: Vec<(usize, String)> = Vec::new();
    let mut interrupted_after = None;
    let mut last_line = 0;
    for item in dump.lines()? {
        let (line_no, line) = item.map_err(|source| LoadError::Input { name: name.clone(), source })?;
        if stop.load(Ordering::Relaxed) {
            interrupted_after = Some(last_line);
            break;
        }
        last_line = line_no;
        // The first pass checked every line; a file that changed since gets
        // its new problems reported like refused records.
        let checked = LoadRecord::parse(&line).and_then(|record| {
            let topic = options.rename_topics.get(&record.topic).unwrap_or(&record.topic).clone();
            match partitions.get(&topic) {
                Some(Ok(count)) => Ok((target_partition(&record, *count)?, topic, record)),
                _ => Err(format!("topic {topic} was not checked: the dump changed during the load")),
            }
        });
        let (partition, topic, record) = match checked {
            Ok(c) => c,
            Err(e) => {
                send_failures.push((line_no, format!("not produced: {e}")));
                continue;
            }
        };
        let mut rec: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(&topic, line_no);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(k) = &record.key {
            rec = rec.key(k.as_bytes());
        }
        if let Some(v) = &record.payload {
            rec = rec.payload(v.as_bytes());
        }
        if let Some(h) = record.headers() {
            rec = rec.headers(h);
        }
        if options.keep_timestamps {
            if let Some(ts) = record.timestamp() {
                rec = rec.timestamp(ts);
            }
        }
        if let Err((e, _)) = send_waiting(&producer, rec, Duration::from_millis(50)) {
            send_failures.push((line_no, format!("not produced to {topic}: {e}")));
        }
        producer.poll(Duration::ZERO);
    }
    if let Some(after) = interrupted_after {
        let _ = writeln!(log, "{name}: interrupted: the records up to line {after} were sent, none after it; waiting for their delivery reports (interrupt again to exit at once)");
    }
    producer.flush(Timeout::Never).map_err(|e| kafka_err(format!("waiting for the deliveries: {e}")))?;

    let mut st = producer.context().state.lock().expect("delivery state");
    let mut failures = std::mem::take(&mut st.failures);
    failures.append(&mut send_failures);
    failures.sort_by_key(|(line, _)| *line);
    for (line, why) in failures.iter().take(MAX_LISTED) {
        let _ = writeln!(log, "{name}:{line}: {why}");
    }
    if failures.len() > MAX_LISTED {
        let _ = writeln!(log, "{name}: … and {} more records not delivered", failures.len() - MAX_LISTED);
    }
    Ok(Summary { read, produced: std::mem::take(&mut st.produced), failed: failures.len() as u64, interrupted_after })
}

/// Counts a problem and lists it while fewer than [`MAX_LISTED`] were.
fn report(log: &mut dyn Write, problems: &mut usize, text: String) {
    *problems += 1;
    if *problems <= MAX_LISTED {
        let _ = writeln!(log, "{text}");
    }
}

/// A topic's partition count; `Ok(Err(why))` when the topic cannot be used,
/// `Err` when the cluster cannot be asked.
fn partition_count(producer: &BaseProducer<Deliveries>, topic: &str) -> Result<Result<i32, String>, String> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| format!("no metadata within {} s: {e}", METADATA_TIMEOUT.as_secs()))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(Err("is not in the cluster's metadata".into()));
    };
    match t.error() {
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            Ok(Err("does not exist (load never creates topics: create it with the partition count of the other sources)".into()))
        }
        Some(e) => Ok(Err(format!("is unusable: {}", RDKafkaErrorCode::from(e)))),
        None if t.partitions().is_empty() => Ok(Err("has no partitions".into())),
        None => Ok(Ok(t.partitions().len() as i32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"topic":"eu.public.customers","partition":1,"offset":7,"tstype":"create","ts":5000,"broker":1,"headers":["a","1","b",null],"key":"{\"id\":1}","payload":"{\"op\":\"c\"}","key_hex":"7b"}"#;

    #[test]
    fn parses_a_kcat_line_and_ignores_fields_it_does_not_need() {
        let r = LoadRecord::parse(LINE).unwrap();
        assert_eq!(r.topic, "eu.public.customers");
        assert_eq!(r.partition, Some(1));
        assert_eq!(r.key.as_deref(), Some(r#"{"id":1}"#));
        assert_eq!(r.payload.as_deref(), Some(r#"{"op":"c"}"#));
        assert_eq!(r.headers, vec![Some("a".into()), Some("1".into()), Some("b".into()), None]);
        assert_eq!(r.timestamp(), Some(5000));
        let h = r.headers().unwrap();
        use rdkafka::message::Headers;
        assert_eq!(h.count(), 2);
        assert_eq!(h.get(0).key, "a");
        assert_eq!(h.get(0).value, Some(&b"1"[..]));
        assert_eq!(h.get(1).value, None);
    }

    #[test]
    fn a_minimal_line_is_a_record_and_a_null_payload_a_tombstone() {
        let r = LoadRecord::parse(r#"{"topic":"t","key":"k","payload":null}"#).unwrap();
        assert!(r.headers().is_none());
        assert_eq!((r.partition, r.payload.as_deref(), r.timestamp()), (None, None, None));
        let r = LoadRecord::parse(r#"{"topic":"t","partition":0,"tstype":"none","ts":12,"key":null,"payload":"v"}"#).unwrap();
        assert_eq!(r.timestamp(), None, "tstype none carries no timestamp");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, expected) in [
            ("not json", "not a kcat -J record"),
            (r#"{"topic":"t","partition":0,"key":"k","payload":"#, "not a kcat -J record: EOF"),
            (r#"{"partition":0,"key":"k","payload":"v"}"#, "missing field `topic`"),
            (r#"{"topic":"","key":"k","payload":"v"}"#, "`topic` is empty"),
            (r#"{"topic":"t","partition":"0","key":"k","payload":"v"}"#, "invalid type"),
            (r#"{"topic":"t","partition":-2,"key":"k","payload":"v"}"#, "`partition` -2 is negative"),
            (r#"{"topic":"t","key":{"id":1},"payload":"v"}"#, "invalid type: map"),
            (r#"{"topic":"t","key":"k","payload":"v","headers":["a"]}"#, "even number of entries; it has 1"),
            (r#"{"topic":"t","key":"k","payload":"v","headers":["a","1",null,"2"]}"#, "header 2 has a null name"),
        ] {
            let e = LoadRecord::parse(line).expect_err(line);
            assert!(e.contains(expected), "{line}: {e}");
        }
    }

    #[test]
    fn the_recorded_partition_is_kept_and_an_absent_one_is_murmur2_of_the_key() {
        let r = LoadRecord::parse(LINE).unwrap();
        assert_eq!(target_partition(&r, 3), Ok(Some(1)));
        let e = target_partition(&r, 1).unwrap_err();
        assert_eq!(e, "partition 1 does not exist: topic eu.public.customers has 1 partition");
        for line in [
            r#"{"topic":"t","key":"{\"id\":42}","payload":"v"}"#,
            r#"{"topic":"t","partition":-1,"key":"{\"id\":42}","payload":"v"}"#,
        ] {
            let r = LoadRecord::parse(line).unwrap();
            let expected = murmur2_partition(br#"{"id":42}"#, 6);
            assert_eq!(target_partition(&r, 6), Ok(Some(expected)), "{line}");
        }
        let r = LoadRecord::parse(r#"{"topic":"t","key":null,"payload":"v"}"#).unwrap();
        assert_eq!(target_partition(&r, 6), Ok(None), "neither key nor partition: librdkafka picks");
    }

    #[test]
    fn renames_are_from_equals_to() {
        assert_eq!(parse_rename("a.b=c-1"), Ok(("a.b".into(), "c-1".into())));
        for bad in ["a", "=b", "a=", ""] {
            assert!(parse_rename(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_lines_are_skipped_and_numbering_follows_the_file() {
        let dump = Dump::Text { name: "<stdin>".into(), text: "a\n\n  \nb\n".into() };
        let lines: Vec<(usize, String)> = dump.lines().unwrap().map(Result::unwrap).collect();
        assert_eq!(lines, vec![(1, "a".to_string()), (4, "b".to_string())]);
    }

    #[test]
    fn the_summary_counts_per_topic() {
        let mut s = Summary {
            read: 3,
            produced: [("a".to_string(), 2), ("b".to_string(), 1)].into(),
            failed: 0,
            interrupted_after: None,
        };
        assert_eq!(s.to_string(), "load: read=3 produced=3 failed=0 a=2 b=1");
        s.interrupted_after = Some(2);
        assert_eq!(s.to_string(), "load: interrupted after line 2: read=3 produced=3 failed=0 a=2 b=1");
    }
}
