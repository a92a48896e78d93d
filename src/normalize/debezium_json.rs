//! Debezium's JSON envelope, with or without the `schema`/`payload` wrapper
//! that the JSON converter adds when `schemas.enable=true`.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::{lookup, Format, InputRecord, NormalizeErrorKind, RawChange, RawOp};
use crate::merge::Row;

/// The `debezium-json` format.
#[derive(Debug, Clone, Copy, Default)]
pub struct DebeziumJson;

/// The envelope fields Tributary reads; the rest (e.g. `transaction`) is
/// skipped without building values for it.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    schema: Option<IgnoredAny>,
    #[serde(default)]
    payload: Option<Box<Envelope>>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    before: Option<Row>,
    #[serde(default)]
    after: Option<Row>,
    #[serde(default)]
    source: Option<Row>,
    #[serde(default)]
    ts_ms: Option<i64>,
}

impl Format for DebeziumJson {
    fn name(&self) -> &'static str {
        "debezium-json"
    }

    fn parse(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind> {
        let Some(bytes) = record.value.filter(|v| !v.is_empty()) else {
            return Ok(None); // Debezium's tombstone after a delete.
        };
        let bad = |detail: String| NormalizeErrorKind::BadValue { format: "debezium-json", detail };
        // The path names the offending field (`payload.ts_ms: invalid type…`).
        let mut env: Envelope = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
            .map_err(|e| match e.path().to_string().as_str() {
                "." => bad(e.inner().to_string()),
                path => bad(format!("{path}: {}", e.inner())),
            })?;
        if env.op.is_none() {
            match env.payload.take() {
                Some(inner) => env = *inner,
                // `{"schema": …, "payload": null}`: a tombstone with the wrapper.
                None if env.schema.is_some() => return Ok(None),
                None => return Err(NormalizeErrorKind::MissingOp),
            }
        }
        let op = match env.op.as_deref() {
            Some("c") => RawOp::Create,
            Some("u") => RawOp::Update,
            Some("r") => RawOp::Read,
            Some("d") => RawOp::Delete,
            Some("t") => return Err(NormalizeErrorKind::Truncate),
            Some(other) => return Err(NormalizeErrorKind::UnsupportedOp(other.to_string())),
            None => return Err(NormalizeErrorKind::MissingOp),
        };
        let source_ts = match env.source.as_ref().and_then(|s| s.get("ts_ms")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| NormalizeErrorKind::BadTimestamp {
                path: "source.ts_ms".into(),
                problem: format!("{v} is not an integer number of milliseconds"),
            })?),
        };
        // The sequence path starts at `source` (e.g. `source.lsn`); the
        // configuration rejects other roots, which deletes could not carry.
        let sequence = sequence.and_then(|path| match path {
            [first, second, rest @ ..] if first == "source" => {
                lookup(env.source.as_ref()?.get(second.as_str())?, rest).cloned()
            }
            _ => None,
        });
        Ok(Some(RawChange { op, before: env.before, after: env.after, ts: source_ts.or(env.ts_ms), sequence }))
    }
}
