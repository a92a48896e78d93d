//! `tributary replay`: the merge path, offline, over a kcat `-J` dump.
//!
//! Input and output are JSON lines in kcat's `-J` shape
//! (`{"topic","partition","offset","tstype","ts","broker","headers","key","payload"}`),
//! so `kcat -C -b B -t T -J -e` makes a dump, and the output can be compared
//! with a dump of the live output topic. Records are processed in file order
//! through the same [`Pipeline`] the processor runs. Memory grows with the
//! number of keys, not of records: lines stream through.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::normalize::InputRecord;
use crate::pipeline::{MemoryStore, Pipeline, ProcessError, Step};

/// One record of a kcat `-J` dump.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DumpRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// `create`, `logappend` or `none`.
    #[serde(default = "default_tstype")]
    pub tstype: String,
    /// Timestamp in ms (absent or -1 when none).
    #[serde(default)]
    pub ts: Option<i64>,
    /// Broker id (-1 when unknown).
    #[serde(default = "default_broker")]
    pub broker: i32,
    /// Headers as a flat `[name, value, name, value, …]` list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Option<String>>,
    /// Key as UTF-8 text, or null.
    pub key: Option<String>,
    /// Value as UTF-8 text, or null (a tombstone).
    pub payload: Option<String>,
}

fn default_tstype() -> String {
    "create".into()
}

fn default_broker() -> i32 {
    -1
}

impl DumpRecord {
    fn timestamp(&self) -> Option<i64> {
        self.ts.filter(|t| *t >= 0 && self.tstype != "none")
    }
}

/// A dead-lettered record: the original plus what was wrong.
#[derive(Debug, Serialize)]
struct DeadLetter<'a> {
    #[serde(flatten)]
    record: &'a DumpRecord,
    error: String,
    reason: &'static str,
}

/// A line of the dump that is not a kcat record at all.
#[derive(Debug, Serialize)]
struct MalformedLine<'a> {
    line: usize,
    raw: &'a str,
    error: String,
    reason: &'static str,
}

/// Counts of what a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the dump (malformed lines included).
    pub read: u64,
    /// Events that changed state.
    pub accepted: u64,
    /// Events superseded by a stored version.
    pub stale: u64,
    /// Exact duplicates and echoes.
    pub duplicates: u64,
    /// Debezium tombstones skipped.
    pub ignored: u64,
    /// Per source with a `where` filter: (source, matched, dropped), sorted.
    pub filters: Vec<(String, u64, u64)>,
    /// Accepted events that left more than one version.
    pub conflicts: u64,
    /// Records sent to the dead letters (malformed lines included).
    pub dead_lettered: u64,
    /// Output records written.
    pub output: u64,
    /// Distinct keys in state at the end.
    pub keys: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replay: read={} accepted={} stale={} duplicates={} ignored={} conflicts={} dead_lettered={} output={} keys={}",
            self.read,
            self.accepted,
            self.stale,
            self.duplicates,
            self.ignored,
            self.conflicts,
            self.dead_lettered,
            self.output,
            self.keys
        )?;
        for (source, matched, dropped) in &self.filters {
            write!(f, "\nreplay: source {source} where: matched={matched} dropped={dropped}")?;
        }
        Ok(())
    }
}

/// Replays `input` (named `input_name` in messages) and writes output records
/// to `output`, dead letters to `dead_letters` (when given). Problems with
/// single records are reported on `log` and never stop the run; only I/O
/// errors on the files do.
pub fn replay(
    config: &Config,
    input: impl BufRead,
    input_name: &str,
    mut output: impl Write,
    mut dead_letters: Option<&mut dyn Write>,
    log: &mut dyn Write,
) -> io::Result<Summary> {
    if let Some(s) = config.sources.iter().find(|s| s.format == crate::config::SourceFormat::DebeziumAvro) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "sources.{}.format = \"debezium-avro\": replay reads kcat -J dumps of JSON sources; Avro sources are not supported by replay",
                s.name
            ),
        ));
    }
    let pipeline = Pipeline::new(config);
    let mut store = MemoryStore::default();
    let mut summary = Summary::default();
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        summary.read += 1;
        let record: DumpRecord = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                summary.dead_lettered += 1;
                let error = format!("{input_name}:{line_no}: not a kcat -J record: {e}");
                writeln!(log, "{error}")?;
                if let Some(dl) = dead_letters.as_mut() {
                    let entry = MalformedLine { line: line_no, raw: &line, error, reason: "malformed_line" };
                    serde_json::to_writer(&mut *dl, &entry)?;
                    dl.write_all(b"\n")?;
                }
                continue;
            }
        };
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .chunks(2)
            .filter_map(|pair| match pair {
                [Some(name), Some(value)] => Some((name.as_str(), value.as_bytes())),
                _ => None,
            })
            .collect();
        let input = InputRecord {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp(),
            key: record.key.as_deref().map(str::as_bytes),
            value: record.payload.as_deref().map(str::as_bytes),
            headers: &headers,
        };
        match pipeline.process(&input, &mut store) {
            Ok(Step::Ignored { .. }) => summary.ignored += 1,
            Ok(Step::Stale { .. }) => summary.stale += 1,
            Ok(Step::Duplicate { .. }) => summary.duplicates += 1,
            Ok(Step::Emitted { record: out, siblings, .. }) => {
                summary.accepted += 1;
                if siblings > 1 {
                    summary.conflicts += 1;
                }
                let offset = next_offset.entry(out.partition).or_insert(0);
                let dumped = DumpRecord {
                    topic: config.output.topic.clone(),
                    partition: out.partition,
                    offset: *offset,
                    tstype: "create".into(),
                    ts: Some(out.timestamp),
                    broker: -1,
                    headers: out.headers.into_iter().flat_map(|(k, v)| [Some(k.to_string()), Some(v)]).collect(),
                    key: Some(out.key),
                    payload: out.value.map(|v| String::from_utf8(v).expect("JSON output is UTF-8")),
                };
                *offset += 1;
                serde_json::to_writer(&mut output, &dumped)?;
                output.write_all(b"\n")?;
                summary.output += 1;
            }
            Err(ProcessError::Rejected(e)) => {
                summary.dead_lettered += 1;
                writeln!(log, "{input_name}:{line_no}: dead letter: {e}")?;
                if let Some(dl) = dead_letters.as_mut() {
                    let entry = DeadLetter { record: &record, error: e.to_string(), reason: e.reason.reason() };
                    serde_json::to_writer(&mut *dl, &entry)?;
                    dl.write_all(b"\n")?;
                }
            }
            Err(ProcessError::Store(never)) => match never {},
        }
    }
    output.flush()?;
    if let Some(dl) = dead_letters.as_mut() {
        dl.flush()?;
    }
    summary.keys = store.len() as u64;
    // Records the filters dropped came back as ignored: count them apart.
    let mut filters: Vec<(String, u64, u64)> =
        pipeline.take_filter_counts().into_iter().map(|(s, m, d)| (s.to_string(), m, d)).collect();
    filters.sort();
    summary.ignored -= filters.iter().map(|(_, _, d)| d).sum::<u64>();
    summary.filters = filters;
    Ok(summary)
}

/// Counts of what `transform-test` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformTestSummary {
    /// The source tried.
    pub source: String,
    /// Records of the source's topic read from the dump.
    pub records: u64,
    /// Records that came out transformed.
    pub transformed: u64,
    /// Records the `where` filter dropped.
    pub filtered: u64,
    /// Debezium tombstones (nothing to transform).
    pub tombstones: u64,
    /// Records that would be dead letters (with reason `transform` or another).
    pub dead_letters: u64,
    /// Records of other topics, skipped.
    pub other_topics: u64,
}

impl fmt::Display for TransformTestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transform-test: source={} records={} transformed={} filtered={} tombstones={} dead_letters={} other_topics={}",
            self.source, self.records, self.transformed, self.filtered, self.tombstones, self.dead_letters, self.other_topics
        )
    }
}

/// `tributary transform-test`: runs one source's records from a kcat `-J`
/// dump through its `where` filter and `[sources.transform]`, and prints
/// each record's source and target images side by side, column by column
/// (a source column beside the column it became), or the dead-letter reason
/// and message of a record the mapping cannot handle. Nothing is merged.
pub fn transform_test(
    config: &Config,
    source_name: &str,
    input: impl BufRead,
    input_name: &str,
    out: &mut dyn Write,
) -> io::Result<TransformTestSummary> {
    use crate::normalize::{Normalized, SourceNormalizer};
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let source = config.sources.iter().find(|s| s.name == source_name).ok_or_else(|| {
        let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
        invalid(format!("--source {source_name}: no such source (configured: {})", known.join(", ")))
    })?;
    if source.format == crate::config::SourceFormat::DebeziumAvro {
        return Err(invalid(format!(
            "sources.{source_name}.format = \"debezium-avro\": transform-test reads kcat -J dumps of JSON sources"
        )));
    }
    // Under field-lww, upserts keep their before image: show it too.
    let mapped = SourceNormalizer::new(source, crate::merge::Policy::FieldLww).whole_before();
    // The same source without mapping, filter, key fields or clock: the
    // record as it arrives (key fields and the clock name target columns).
    let mut plain_config = source.clone();
    (plain_config.transform, plain_config.filter, plain_config.key_fields, plain_config.clock_field) = (None, None, None, None);
    let plain = SourceNormalizer::new(&plain_config, crate::merge::Policy::FieldLww).whole_before();
    let mut summary = TransformTestSummary { source: source_name.to_string(), ..Default::default() };
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: DumpRecord =
            serde_json::from_str(&line).map_err(|e| invalid(format!("{input_name}:{line_no}: not a kcat -J record: {e}")))?;
        if record.topic != source.topic {
            summary.other_topics += 1;
            continue;
        }
        summary.records += 1;
        let input = InputRecord {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp(),
            key: record.key.as_deref().map(str::as_bytes),
            value: record.payload.as_deref().map(str::as_bytes),
            headers: &[],
        };
        writeln!(out, "record {} (line {line_no}, {}):", summary.records, crate::normalize::RecordPosition::from(&input))?;
        let original = match plain.normalize(&input) {
            Ok(Normalized::Event(e)) => Some(e),
            _ => None,
        };
        match mapped.normalize(&input) {
            Ok(Normalized::Tombstone) => {
                summary.tombstones += 1;
                writeln!(out, "  tombstone: nothing to transform")?;
            }
            Ok(Normalized::Filtered) => {
                summary.filtered += 1;
                writeln!(out, "  dropped by where")?;
                if let Some(e) = &original {
                    let row = e.row.as_deref().or(e.before.as_ref());
                    writeln!(
                        out,
                        "    {}",
                        row.map_or_else(|| "(no row image)".to_string(), |r| Value::Object(r.clone()).to_string())
                    )?;
                }
            }
            Ok(Normalized::Event(e)) => {
                summary.transformed += 1;
                let op = match e.op {
                    crate::merge::Op::Upsert => "upsert",
                    crate::merge::Op::Delete => "delete",
                };
                let source_key = original.as_ref().map_or("?", |o| o.key.as_str());
                writeln!(out, "  {op}, key {source_key} -> {}", e.key)?;
                let transform = mapped.transform();
                let pairs = [
                    ("after", original.as_ref().and_then(|o| o.row.as_deref()), e.row.as_deref()),
                    ("before", original.as_ref().and_then(|o| o.before.as_ref()), e.before.as_ref()),
                ];
                for (label, from, to) in pairs {
                    if from.is_none() && to.is_none() {
                        continue;
                    }
                    writeln!(out, "  {label}:")?;
                    side_by_side(out, from, to, transform)?;
                }
            }
            Err(e) => {
                summary.dead_letters += 1;
                writeln!(out, "  dead letter ({}): {}", e.kind.reason(), e.kind)?;
            }
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Prints a source image beside the target image: each source column on
/// the line of the column it became, then the target's new columns.
fn side_by_side(
    out: &mut dyn Write,
    from: Option<&crate::merge::Row>,
    to: Option<&crate::merge::Row>,
    transform: Option<&crate::transform::Transform>,
) -> io::Result<()> {
    let empty = crate::merge::Row::new();
    let (from, to) = (from.unwrap_or(&empty), to.unwrap_or(&empty));
    let cell = |name: &str, v: &Value| format!("{name} = {v}");
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut shown = std::collections::HashSet::new();
    for (name, value) in from {
        let target = transform.map_or(name.as_str(), |t| t.renamed(name));
        let right = match to.get(target) {
            Some(v) => {
                shown.insert(target.to_string());
                cell(target, v)
            }
            None => "(dropped)".to_string(),
        };
        lines.push((cell(name, value), right));
    }
    for (name, value) in to.iter().filter(|(n, _)| !shown.contains(n.as_str())) {
        lines.push(("(new)".to_string(), cell(name, value)));
    }
    let width = lines.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    for (left, right) in lines {
        writeln!(out, "    {left:<width$}  |  {right}")?;
    }
    Ok(())
}
