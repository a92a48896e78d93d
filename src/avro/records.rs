//! Tributary's own Avro records: conflict audit records
//! (`schemas/conflict-audit.avsc`) and dead letters (`schemas/dead-letter.avsc`).
//!
//! These are written only when the output format is Avro, and rarely (one per
//! conflict or per bad input record), so they go through apache-avro's
//! generic [`Value`]s, validated against the parsed schema files, rather than
//! a hand-written encoder. The functions here produce the raw Avro datum; the
//! caller adds the Confluent framing (magic byte and registry schema id).
//!
//! As in the changelog state, rows are compact JSON text, the enum `Op` uses
//! the lower-case symbols `upsert` and `delete`, and clock counters above
//! `i64::MAX` (never produced in practice) are written as their
//! two's-complement bit pattern.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::merge::{ColumnWinner, LazyRow, Op, Version, VersionVector};

/// The conflict audit schema (`schemas/conflict-audit.avsc`), as compiled in.
pub const AUDIT_SCHEMA_JSON: &str = include_str!("../../schemas/conflict-audit.avsc");

/// The dead-letter schema (`schemas/dead-letter.avsc`), as compiled in.
pub const DEAD_LETTER_SCHEMA_JSON: &str = include_str!("../../schemas/dead-letter.avsc");

// The files are compiled in and their validity is tested, so a parse failure
// is a build defect, not bad input.
static AUDIT_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(AUDIT_SCHEMA_JSON).expect("schemas/conflict-audit.avsc is a valid Avro schema"));
static DEAD_LETTER_SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(DEAD_LETTER_SCHEMA_JSON).expect("schemas/dead-letter.avsc is a valid Avro schema"));

/// The parsed conflict audit schema (`io.tributary.audit.Conflict`), e.g. to
/// register it with the schema registry.
pub fn audit_schema() -> &'static Schema {
    &AUDIT_SCHEMA
}

/// The parsed dead-letter schema (`io.tributary.dlq.DeadLetter`), e.g. to
/// register it with the schema registry.
pub fn dead_letter_schema() -> &'static Schema {
    &DEAD_LETTER_SCHEMA
}

/// A conflict audit record, borrowed from the processor's state: the same
/// fields as the JSON audit record.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    /// The canonical key.
    pub key: &'a str,
    /// The key's partition (task).
    pub partition: i32,
    /// The merge policy's configuration spelling.
    pub policy: &'a str,
    /// The delete policy's configuration spelling.
    pub deletes: &'a str,
    /// The winning source, when the merged record names one.
    pub winner: Option<&'a str>,
    /// The merged clock (pointwise maximum over `versions`).
    pub merged_vv: &'a VersionVector,
    /// True when the key resolved to deleted.
    pub deleted: bool,
    /// The key's concurrent versions, winner first.
    pub versions: &'a [Version],
    /// The input record that triggered the audit record.
    pub event: AuditEvent<'a>,
    /// `field-lww`: which write decided each column and why
    /// ([`crate::merge::MergeEngine::explain`]); empty otherwise, written as
    /// null (the JSON record leaves `columns` out).
    pub columns: &'a [ColumnWinner],
}

/// Where the input record that triggered an audit record came from.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// The configured source name of the input topic, when it maps to one.
    pub source: Option<&'a str>,
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The input offset.
    pub offset: i64,
}

/// A dead letter: an input record that could not be processed, with the
/// original bytes untouched so it can be re-driven.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Human-readable description of the failure (names topic, partition and offset).
    pub error: &'a str,
    /// Short label of the failure, e.g. `bad_value`, `unknown_schema`.
    pub reason: &'a str,
    /// The configured source name of the input topic, when it maps to one.
    pub source: Option<&'a str>,
    /// The input topic.
    pub topic: &'a str,
    /// The input partition.
    pub partition: i32,
    /// The input offset.
    pub offset: i64,
    /// The input record's Kafka timestamp (ms since the epoch), when it had one.
    pub timestamp: Option<i64>,
    /// The original key bytes.
    pub key: Option<&'a [u8]>,
    /// The original value bytes (`None` for a tombstone).
    pub value: Option<&'a [u8]>,
}

/// Encodes a conflict audit record as a raw Avro datum of `io.tributary.audit.Conflict`.
pub fn encode_audit(r: &AuditRecord<'_>) -> Vec<u8> {
    let value = Value::Record(vec![
        field("key", Value::String(r.key.to_owned())),
        field("partition", Value::Int(r.partition)),
        field("policy", Value::String(r.policy.to_owned())),
        field("deletes", Value::String(r.deletes.to_owned())),
        field("winner", optional(r.winner.map(|w| Value::String(w.to_owned())))),
        field("merged_vv", clock_value(r.merged_vv)),
        field("deleted", Value::Boolean(r.deleted)),
        field("versions", Value::Array(r.versions.iter().map(audit_version_value).collect())),
        field("event", audit_event_value(&r.event)),
        field(
            "columns",
            optional((!r.columns.is_empty()).then(|| Value::Array(r.columns.iter().map(column_winner_value).collect()))),
        ),
    ]);
    write_datum(audit_schema(), &value, "conflict audit record")
}

/// Encodes a dead letter as a raw Avro datum of `io.tributary.dlq.DeadLetter`.
pub fn encode_dead_letter(d: &DeadLetter<'_>) -> Vec<u8> {
    let value = Value::Record(vec![
        field("error", Value::String(d.error.to_owned())),
        field("reason", Value::String(d.reason.to_owned())),
        field("source", optional(d.source.map(|s| Value::String(s.to_owned())))),
        field("topic", Value::String(d.topic.to_owned())),
        field("partition", Value::Int(d.partition)),
        field("offset", Value::Long(d.offset)),
        field("timestamp", optional(d.timestamp.map(Value::Long))),
        field("key", optional(d.key.map(|k| Value::Bytes(k.to_vec())))),
        field("value", optional(d.value.map(|v| Value::Bytes(v.to_vec())))),
    ]);
    write_datum(dead_letter_schema(), &value, "dead letter")
}

/// Writes `value` as a datum of `schema`, validating it first. Every value
/// here is built field by field from the schema, so a failure is a bug in
/// this module (a field that does not match the schema file), not bad input.
fn write_datum(schema: &Schema, value: &Value, what: &str) -> Vec<u8> {
    let writer = GenericDatumWriter::builder(schema).build().unwrap_or_else(|e| panic!("the {what} schema resolves: {e}"));
    let mut buf = Vec::with_capacity(256);
    writer.write_value_ref(&mut buf, value).unwrap_or_else(|e| panic!("a {what} value built from its schema encodes: {e}"));
    buf
}

/// One record field.
fn field(name: &str, value: Value) -> (String, Value) {
    (name.to_owned(), value)
}

/// A `["null", T]` union value.
fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

/// A version vector as a `map<long>` (counters as their bit pattern).
fn clock_value(clock: &VersionVector) -> Value {
    Value::Map(clock.iter().map(|(source, counter)| (source.to_owned(), Value::Long(counter as i64))).collect::<HashMap<_, _>>())
}

/// The enum `Op` value: index and symbol.
fn op_value(op: Op) -> Value {
    match op {
        Op::Upsert => Value::Enum(0, "upsert".to_owned()),
        Op::Delete => Value::Enum(1, "delete".to_owned()),
    }
}

/// A row as compact JSON text (the text a stored row was decoded from, while unchanged).
fn row_json(row: &LazyRow) -> Value {
    // Maps with string keys and JSON values always serialize.
    Value::String(match row.json_text() {
        Some(text) => text.to_owned(),
        None => serde_json::to_string(&**row).expect("JSON rows serialize"),
    })
}

/// One `io.tributary.audit.Version` record.
fn audit_version_value(v: &Version) -> Value {
    Value::Record(vec![
        field("source", Value::String(v.source.clone())),
        field("vv", clock_value(&v.vv)),
        field("ts", Value::TimestampMillis(v.ts)),
        field("op", op_value(v.op)),
        field("row", optional(v.row.as_ref().map(row_json))),
    ])
}

/// The `io.tributary.audit.Event` record.
fn audit_event_value(e: &AuditEvent<'_>) -> Value {
    Value::Record(vec![
        field("source", optional(e.source.map(|s| Value::String(s.to_owned())))),
        field("topic", Value::String(e.topic.to_owned())),
        field("partition", Value::Int(e.partition)),
        field("offset", Value::Long(e.offset)),
    ])
}

/// One `io.tributary.audit.ColumnWinner` record.
fn column_winner_value(c: &ColumnWinner) -> Value {
    Value::Record(vec![
        field("column", Value::String(c.column.clone())),
        field("rule", Value::String(c.rule.to_owned())),
        field("source", optional(c.source.as_ref().map(|s| Value::String(s.clone())))),
        field("vv", optional(c.vv.as_ref().map(clock_value))),
        field("why", Value::String(c.why.to_owned())),
    ])
}

#[cfg(test)]
mod tests;
