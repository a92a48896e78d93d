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
        )
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
            Err(ProcessError::Normalize(e)) => {
                summary.dead_lettered += 1;
                writeln!(log, "{input_name}:{line_no}: dead letter: {e}")?;
                if let Some(dl) = dead_letters.as_mut() {
                    let entry = DeadLetter { record: &record, error: e.to_string(), reason: e.kind.reason() };
                    serde_json::to_writer(&mut *dl, &entry)?;
                    dl.write_all(b"\n")?;
                }
            }
            Err(ProcessError::Store(never)) => match never {},
            // Replay writes JSON (kcat -J carries text); no Avro encoder here.
            Err(ProcessError::Output { error, .. }) => unreachable!("replay encodes JSON only: {error}"),
        }
    }
    output.flush()?;
    if let Some(dl) = dead_letters.as_mut() {
        dl.flush()?;
    }
    summary.keys = store.len() as u64;
    Ok(summary)
}
