//! Records to rows: a batch of upserts, deletes and dead rows for one
//! database transaction.

use std::collections::HashMap;

use serde_json::Value;

use super::*;

/// Why a value does not fit its column; its text is the dead row's reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ColumnError {
    /// The value is not of the column's kind (text for an integer column).
    #[error("column `{column}` ({ty}): {value} is not {expected}")]
    Mismatch {
        /// The column.
        column: String,
        /// Its type.
        ty: ColumnType,
        /// The value.
        value: Value,
        /// What the column takes ("an integer", "a 32-bit integer", ...).
        expected: &'static str,
    },
    /// The value is of the column's kind but does not fit it.
    #[error("column `{column}` ({ty}): {value} {why}")]
    Misfit {
        /// The column.
        column: String,
        /// Its type.
        ty: ColumnType,
        /// The value.
        value: Value,
        /// Why.
        #[source]
        why: types::Misfit,
    },
    /// Text or JSON holding a NUL character.
    #[error("column `{column}` ({ty}): the value contains a NUL character, which databases reject")]
    Nul {
        /// The column.
        column: String,
        /// Its type.
        ty: ColumnType,
    },
}

/// Why a record becomes a dead row rather than a change; its text is the
/// dead row's reason.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The record could not be read (an undecodable Avro payload).
    #[error("{0}")]
    Unreadable(String),
    /// A record without a key.
    #[error("the record has no key")]
    NoKey,
    /// The key is not a JSON object.
    #[error("the key is not a JSON object: {0}")]
    KeyNotObject(#[source] serde_json::Error),
    /// The key lacks a key column.
    #[error("key column `{column}` is missing or null in the key {key}")]
    KeyColumnMissing {
        /// The key column.
        column: String,
        /// The key's text.
        key: String,
    },
    /// The value is not a JSON object.
    #[error("the value is not a JSON object: {0}")]
    ValueNotObject(#[source] serde_json::Error),
    /// A column's value does not fit.
    #[error(transparent)]
    Column(#[from] ColumnError),
}

/// Converts a JSON value to a column value, or says why it does not fit.
pub fn to_sql(column: &Column, value: Option<&Value>) -> Result<SqlValue, ColumnError> {
    let v = match value {
        None | Some(Value::Null) => return Ok(SqlValue::Null),
        Some(v) => v,
    };
    let mismatch =
        |expected: &'static str| ColumnError::Mismatch { column: column.name.clone(), ty: column.ty, value: v.clone(), expected };
    let misfit = |why| ColumnError::Misfit { column: column.name.clone(), ty: column.ty, value: v.clone(), why };
    let nul = || ColumnError::Nul { column: column.name.clone(), ty: column.ty };
    Ok(match column.ty {
        ColumnType::Text => {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.contains('\0') {
                return Err(nul());
            }
            SqlValue::Text(text)
        }
        ColumnType::BigInt | ColumnType::Integer => {
            let n = match v {
                Value::Number(n) => n.as_i64().ok_or_else(|| mismatch("an integer"))?,
                Value::String(s) => s.trim().parse::<i64>().map_err(|_| mismatch("an integer"))?,
                _ => return Err(mismatch("an integer")),
            };
            if column.ty == ColumnType::Integer && i32::try_from(n).is_err() {
                return Err(mismatch("a 32-bit integer"));
            }
            SqlValue::Int(n)
        }
        ColumnType::Double => match v {
            Value::Number(n) => SqlValue::Float(n.as_f64().ok_or_else(|| mismatch("a number"))?),
            Value::String(s) => SqlValue::Float(s.trim().parse::<f64>().map_err(|_| mismatch("a number"))?),
            _ => return Err(mismatch("a number")),
        },
        ColumnType::Boolean => match v {
            Value::Bool(b) => SqlValue::Bool(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => SqlValue::Bool(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => SqlValue::Bool(false),
            _ => return Err(mismatch("a boolean")),
        },
        ColumnType::Json => {
            if v.to_string().contains("\\u0000") {
                return Err(nul());
            }
            SqlValue::Json(v.clone())
        }
        ColumnType::Numeric { precision, scale } => SqlValue::Text(types::decimal(v, precision, scale).map_err(misfit)?),
        ColumnType::Date => SqlValue::Text(types::date(v).map_err(misfit)?),
        ColumnType::Timestamp => SqlValue::Text(types::timestamp(v, column.unit, false).map_err(misfit)?),
        ColumnType::TimestampTz => SqlValue::Text(types::timestamp(v, column.unit, true).map_err(misfit)?),
        ColumnType::Uuid => SqlValue::Text(types::uuid(v).map_err(misfit)?),
        ColumnType::Bytes => SqlValue::Bytes(types::bytes(v).map_err(misfit)?),
    })
}

/// Builds the batch for a run of records (already in offset order per
/// partition): the last change per key wins, as on the compacted topic.
pub fn build_batch(spec: &TableSpec, records: &[RawRecord]) -> Batch {
    batch_of(spec, records, None)
}

/// [`build_batch`] during a resync: every record marks its key live or gone
/// (a tombstone), and only records at or past `applied[partition]` (what the
/// table already reflects) change rows and offsets. Re-applying the older
/// ones would move rows back to older versions for a while.
pub fn build_resync_batch(spec: &TableSpec, records: &[RawRecord], applied: &HashMap<i32, i64>) -> Batch {
    batch_of(spec, records, Some(applied))
}

pub(super) fn batch_of(spec: &TableSpec, records: &[RawRecord], resync: Option<&HashMap<i32, i64>>) -> Batch {
    let mut batch = Batch::default();
    // By the converted key values, not the key text: `{"id":1}` and
    // `{"id":"1"}` are one row, and one statement must not touch it twice.
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut marks: Vec<(Vec<SqlValue>, bool)> = Vec::new();
    let mut mark_of: HashMap<String, usize> = HashMap::new();
    let mut next: HashMap<(&str, i32), (i64, Option<i64>)> = HashMap::new();
    for r in records {
        if let Some(applied) = resync {
            if let Ok(key) = key_values(spec, r) {
                // Only a real tombstone proves the key gone; a record that
                // could not be decoded keeps it.
                let live = r.value.is_some() || r.error.is_some();
                let id = format!("{:?}", key.iter().collect::<Vec<_>>());
                match mark_of.get(&id) {
                    Some(&i) => marks[i] = (key, live),
                    None => {
                        mark_of.insert(id, marks.len());
                        marks.push((key, live));
                    }
                }
            }
            if r.offset < applied.get(&r.partition).copied().unwrap_or(0) {
                continue;
            }
        }
        next.insert((&r.topic, r.partition), (r.offset + 1, r.timestamp));
        match convert(spec, r) {
            Ok(change) => {
                let key = match &change {
                    Change::Upsert(values) => format!("{:?}", spec.key.iter().map(|&i| &values[i]).collect::<Vec<_>>()),
                    Change::Delete(key) => format!("{:?}", key.iter().collect::<Vec<_>>()),
                };
                match by_key.get(&key) {
                    Some(&i) => batch.changes[i] = change,
                    None => {
                        by_key.insert(key, batch.changes.len());
                        batch.changes.push(change);
                    }
                }
            }
            Err(error) => batch.dead.push(DeadRow {
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
                key: r.key.clone(),
                value: r.value.clone(),
                error: error.to_string(),
            }),
        }
    }
    batch.offsets = next
        .into_iter()
        .map(|((t, p), (next, record_ts))| OffsetUpdate { topic: t.to_string(), partition: p, next, record_ts })
        .collect();
    batch.offsets.sort();
    for (key, live) in marks {
        if live {
            batch.live.push(key);
        } else {
            batch.gone.push(key);
        }
    }
    batch
}

/// A consumed output record.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (canonical key JSON).
    pub key: Option<String>,
    /// Value (merged row JSON, or None for a tombstone).
    pub value: Option<String>,
    /// The `tributary.vv` header.
    pub vv: Option<String>,
    /// The record's timestamp (ms).
    pub timestamp: Option<i64>,
    /// Why the record could not be read (an undecodable Avro payload): it
    /// becomes a dead row.
    pub error: Option<String>,
}

/// The record's key as column values, in key order.
pub(super) fn key_values(spec: &TableSpec, r: &RawRecord) -> Result<Vec<SqlValue>, RowError> {
    let key_text = r.key.as_deref().ok_or(RowError::NoKey)?;
    let key: serde_json::Map<String, Value> = serde_json::from_str(key_text).map_err(RowError::KeyNotObject)?;
    spec.key
        .iter()
        .map(|&i| {
            let c = &spec.columns[i];
            match key.get(&c.name) {
                Some(Value::Null) | None => Err(RowError::KeyColumnMissing { column: c.name.clone(), key: key_text.to_string() }),
                Some(v) => Ok(to_sql(c, Some(v))?),
            }
        })
        .collect()
}

pub(super) fn convert(spec: &TableSpec, r: &RawRecord) -> Result<Change, RowError> {
    if let Some(e) = &r.error {
        return Err(RowError::Unreadable(e.clone()));
    }
    let key_values = key_values(spec, r)?;
    let Some(value) = r.value.as_deref() else {
        return Ok(Change::Delete(key_values));
    };
    let row: serde_json::Map<String, Value> = serde_json::from_str(value).map_err(RowError::ValueNotObject)?;
    let mut values = Vec::with_capacity(spec.columns.len());
    for (i, c) in spec.columns.iter().enumerate() {
        if let Some(k) = spec.key.iter().position(|&ki| ki == i) {
            values.push(key_values[k].clone());
        } else if Some(i) == spec.vv {
            values.push(r.vv.clone().map_or(SqlValue::Null, SqlValue::Text));
        } else {
            values.push(to_sql(c, row.get(&c.name))?);
        }
    }
    Ok(Change::Upsert(values))
}
