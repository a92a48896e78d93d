//! Debezium's envelope in Avro, Confluent wire format, for key and value.
//!
//! The schema id in each payload is looked up in the registry (cached), the
//! body decoded with apache-avro, and the envelope read by field name into
//! the same [`RawChange`] the JSON formats produce; row values follow
//! [`crate::avro::value`]'s mapping, so an Avro source and a JSON source of
//! the same table merge into the same rows. Every schema id seen is
//! reported to the [`SchemaCatalog`], from which the Avro output schema is
//! derived.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::types::Value as Avro;
use schema_registry_converter::avro_common::AvroSchema;
use serde_json::Value;

use super::{Format, InputRecord, NormalizeErrorKind, Parsed, RawChange, RawOp};
use crate::avro::output::SchemaCatalog;
use crate::avro::registry::{Registry, RegistryError};
use crate::avro::value::{Names, Shape};
use crate::merge::Row;

const FORMAT: &str = "debezium-avro";

/// The `debezium-avro` format of one source.
pub struct DebeziumAvro {
    source: String,
    registry: Arc<Registry>,
    catalog: Arc<SchemaCatalog>,
    shapes: RwLock<HashMap<u32, Arc<Shape>>>,
}

impl std::fmt::Debug for DebeziumAvro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebeziumAvro").field("source", &self.source).finish_non_exhaustive()
    }
}

impl DebeziumAvro {
    /// The format for source `source`.
    pub fn new(source: &str, registry: Arc<Registry>, catalog: Arc<SchemaCatalog>) -> Self {
        Self { source: source.to_string(), registry, catalog, shapes: RwLock::new(HashMap::new()) }
    }

    /// The shape of a writer schema, built on first sight of its id.
    fn shape(&self, schema: &AvroSchema, is_key: bool) -> Result<Arc<Shape>, NormalizeErrorKind> {
        if let Some(s) = self.shapes.read().expect("shapes").get(&schema.id) {
            return Ok(s.clone());
        }
        let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema.parsed).map_err(|e| NormalizeErrorKind::BadValue {
            format: FORMAT,
            detail: format!("schema id {}: {e}", schema.id),
        })?;
        let names: Names<'_> = resolved.get_names().clone();
        let shape = Arc::new(Shape::of(&schema.parsed, &names));
        if is_key {
            self.catalog.observe_key(&self.source, schema.id, &schema.raw);
        } else {
            self.catalog.observe_value(&self.source, schema.id, &schema.raw);
        }
        self.shapes.write().expect("shapes").insert(schema.id, shape.clone());
        Ok(shape)
    }

    fn decode(&self, bytes: &[u8], what: &str) -> Result<(Arc<AvroSchema>, Avro), NormalizeErrorKind> {
        self.registry.decode(bytes).map_err(|e| match e {
            RegistryError::Unavailable(d) => NormalizeErrorKind::RegistryUnavailable(format!("{what}: schema registry unavailable: {d}")),
            RegistryError::NotFound(d) => NormalizeErrorKind::UnknownSchema(format!("{what}: {d}")),
            RegistryError::Incompatible(d) | RegistryError::Invalid(d) => {
                NormalizeErrorKind::BadValue { format: FORMAT, detail: format!("{what}: {d}") }
            }
        })
    }

    /// The record key as canonical JSON text (sorted fields, compact).
    fn key(&self, bytes: &[u8]) -> Result<String, NormalizeErrorKind> {
        let (schema, value) = self.decode(bytes, "key").map_err(|e| match e {
            NormalizeErrorKind::BadValue { detail, .. } => NormalizeErrorKind::BadKey(detail),
            other => other,
        })?;
        let shape = self.shape(&schema, true)?;
        match shape.to_json(&value).map_err(NormalizeErrorKind::BadKey)? {
            Value::Object(o) if !o.is_empty() => Ok(Value::Object(o).to_string()),
            Value::Object(_) => Err(NormalizeErrorKind::BadKey("the key record has no fields".into())),
            other => Err(NormalizeErrorKind::BadKey(format!(
                "expected a record, found {} (schema id {})",
                super::json_kind(&other),
                schema.id
            ))),
        }
    }
}

/// A field of a decoded record, by name.
fn field<'v>(fields: &'v [(String, Avro)], name: &str) -> Option<&'v Avro> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Unwraps a union.
fn plain(v: &Avro) -> &Avro {
    match v {
        Avro::Union(_, inner) => inner,
        other => other,
    }
}

impl Format for DebeziumAvro {
    fn name(&self) -> &'static str {
        FORMAT
    }

    fn parse(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind> {
        Ok(self.parse_lean(record, sequence, true)?.map(|p| p.raw))
    }

    fn parse_lean(
        &self,
        record: &InputRecord<'_>,
        sequence: Option<&[String]>,
        upsert_before: bool,
    ) -> Result<Option<Parsed>, NormalizeErrorKind> {
        let Some(bytes) = record.value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let (schema, value) = self.decode(bytes, "value")?;
        let shape = self.shape(&schema, false)?;
        let bad = |detail: String| NormalizeErrorKind::BadValue { format: FORMAT, detail: format!("schema id {}: {detail}", schema.id) };
        let Avro::Record(fields) = &value else {
            return Err(bad("not a Debezium envelope: the value is not a record".into()));
        };
        let op = match field(fields, "op").map(plain) {
            Some(Avro::String(s)) => s.as_str(),
            Some(Avro::Null) | None => return Err(NormalizeErrorKind::MissingOp),
            Some(other) => return Err(bad(format!("`op` is {other:?}, expected a string"))),
        };
        let op = match op {
            "c" => RawOp::Create,
            "u" => RawOp::Update,
            "r" => RawOp::Read,
            "d" => RawOp::Delete,
            "t" => return Err(NormalizeErrorKind::Truncate),
            other => return Err(NormalizeErrorKind::UnsupportedOp(other.to_string())),
        };
        let image = |name: &str| -> Result<Option<Row>, NormalizeErrorKind> {
            let Some(v) = field(fields, name) else { return Ok(None) };
            let (_, s) = shape.field(name).ok_or_else(|| bad(format!("no `{name}` in the schema")))?;
            match s.to_json(v).map_err(|e| bad(format!("{name}.{e}")))? {
                Value::Null => Ok(None),
                Value::Object(o) => Ok(Some(o)),
                other => Err(bad(format!("`{name}` is {}, expected a record", super::json_kind(&other)))),
            }
        };
        let after = image("after")?;
        let had_before = !matches!(field(fields, "before").map(plain), None | Some(Avro::Null));
        let before = if op == RawOp::Delete || upsert_before { image("before")? } else { None };
        let source_block = field(fields, "source").map(plain);
        let source_ts = match source_block {
            Some(Avro::Record(s)) => match field(s, "ts_ms").map(plain) {
                Some(Avro::Long(n) | Avro::TimestampMillis(n)) => Some(*n),
                Some(Avro::Int(n)) => Some(i64::from(*n)),
                _ => None,
            },
            _ => None,
        };
        let ts_ms = match field(fields, "ts_ms").map(plain) {
            Some(Avro::Long(n) | Avro::TimestampMillis(n)) => Some(*n),
            _ => None,
        };
        // The sequence path starts at `source` (e.g. `source.lsn`).
        let sequence = match (sequence, source_block) {
            (Some([first, rest @ ..]), Some(block)) if first == "source" => {
                let (_, s) = shape.field("source").ok_or_else(|| bad("no `source` in the schema".into()))?;
                let json = s.to_json(block).map_err(|e| bad(format!("source.{e}")))?;
                super::lookup(&json, rest).cloned()
            }
            _ => None,
        };
        let key = match record.key.filter(|k| !k.is_empty()) {
            Some(k) => Some(self.key(k)?),
            None => None,
        };
        Ok(Some(Parsed { raw: RawChange { op, before, after, ts: source_ts.or(ts_ms), sequence, key }, had_before }))
    }
}
