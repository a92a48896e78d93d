//! Flat JSON rows, e.g. Debezium after the `ExtractNewRecordState` SMT:
//! the value is the row itself; a delete is a tombstone (null value) or a
//! row whose deleted marker field is `"true"` (`delete.handling.mode=rewrite`).

use serde_json::Value;

use super::{lookup, Format, InputRecord, NormalizeErrorKind, RawChange, RawOp};
use crate::json::json_kind;
use crate::merge::Row;

/// The `json` format.
#[derive(Debug, Clone)]
pub struct FlatJson {
    ts_field: Option<(String, Vec<String>)>,
    deleted_field: String,
}

impl FlatJson {
    /// A flat-row format reading the commit time from `ts_field` (dotted path
    /// into the row; the Kafka timestamp when `None`) and deletes from `deleted_field`.
    pub fn new(ts_field: Option<&str>, deleted_field: &str) -> Self {
        Self {
            ts_field: ts_field.map(|p| (p.to_string(), p.split('.').map(String::from).collect())),
            deleted_field: deleted_field.to_string(),
        }
    }
}

impl Format for FlatJson {
    fn name(&self) -> &'static str {
        "json"
    }

    fn ts_path(&self) -> &str {
        self.ts_field.as_ref().map_or("", |(name, _)| name)
    }

    fn parse(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind> {
        let Some(bytes) = record.value.filter(|v| !v.is_empty()) else {
            // With flat rows a tombstone *is* the delete; the key comes from the record key.
            return Ok(Some(RawChange { op: RawOp::Delete, before: None, after: None, ts: None, sequence: None, key: None }));
        };
        let value: Value =
            crate::json::from_bytes(bytes).map_err(|e| NormalizeErrorKind::BadValue { format: "json", detail: e.to_string() })?;
        let Value::Object(mut row) = value else {
            return Err(NormalizeErrorKind::BadValue {
                format: "json",
                detail: format!("expected a JSON object, found {}", json_kind(&value)),
            });
        };
        let deleted = match row.remove(&self.deleted_field) {
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(Value::Bool(b)) => b,
            _ => false,
        };
        let row_value = Value::Object(row);
        let ts = match &self.ts_field {
            None => None,
            Some((name, path)) => {
                Some(lookup(&row_value, path).and_then(Value::as_i64).ok_or_else(|| NormalizeErrorKind::BadTimestamp {
                    path: name.clone(),
                    problem: "missing or not an integer number of milliseconds".into(),
                })?)
            }
        };
        let sequence = sequence.and_then(|p| lookup(&row_value, p).cloned());
        let Value::Object(row) = row_value else { unreachable!("built as an object above") };
        let row: Row = row;
        Ok(Some(if deleted {
            RawChange { op: RawOp::Delete, before: Some(row), after: None, ts, sequence, key: None }
        } else {
            // No before image: every field counts as written.
            RawChange { op: RawOp::Update, before: None, after: Some(row.into()), ts, sequence, key: None }
        }))
    }
}
