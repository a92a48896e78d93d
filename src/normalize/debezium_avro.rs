//! Debezium's envelope in Avro, Confluent wire format, for key and value.
//!
//! The schema id in each payload is looked up in the registry (cached), and
//! the body read by field name into the same [`RawChange`] the JSON formats
//! produce: straight from the bytes by the writer schema's [`Shape`], or,
//! for schemas holding types that reader does not handle (`big-decimal`,
//! `duration`, recursive types), decoded with apache-avro first. Row values follow
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
use crate::avro::decode::Reader;
use crate::avro::error::CodecError;
use crate::avro::output::SchemaCatalog;
use crate::avro::registry::{frame_id, Registry, RegistryError};
use crate::avro::value::{Names, Shape};
use crate::merge::{LazyRow, Row};

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
        let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema.parsed)
            .map_err(|e| NormalizeErrorKind::BadValue { format: FORMAT, detail: format!("schema id {}: {e}", schema.id) })?;
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
        self.registry.decode(bytes).map_err(|e| registry_error(e, what))
    }

    /// The writer schema of a framed payload and its shape, plus the body.
    fn resolve<'b>(&self, bytes: &'b [u8], what: &str, is_key: bool) -> Result<Resolved<'b>, NormalizeErrorKind> {
        let id = frame_id(bytes).map_err(|e| registry_error(e, what))?;
        let schema = self.registry.schema(id).map_err(|e| registry_error(e, what))?;
        let shape = self.shape(&schema, is_key)?;
        Ok((schema, shape, &bytes[5..]))
    }

    /// The record key as canonical JSON text (sorted fields, compact).
    fn key(&self, bytes: &[u8]) -> Result<String, NormalizeErrorKind> {
        let as_key = |e: NormalizeErrorKind| match e {
            NormalizeErrorKind::BadValue { detail, .. } => NormalizeErrorKind::BadKey(detail),
            other => other,
        };
        let (schema, shape, body) = self.resolve(bytes, "key", true).map_err(as_key)?;
        let json = if shape.is_direct() {
            shape
                .decode_json(&mut Reader::new(body))
                .map_err(|e| NormalizeErrorKind::BadKey(format!("schema id {}: {e}", schema.id)))?
        } else {
            let (_, value) = self.decode(bytes, "key").map_err(as_key)?;
            shape.to_json(&value).map_err(|e| NormalizeErrorKind::BadKey(e.to_string()))?
        };
        match json {
            Value::Object(o) if !o.is_empty() => Ok(Value::Object(o).to_string()),
            Value::Object(_) => Err(NormalizeErrorKind::BadKey("the key record has no fields".into())),
            other => Err(NormalizeErrorKind::BadKey(format!(
                "expected a record, found {} (schema id {})",
                crate::json::json_kind(&other),
                schema.id
            ))),
        }
    }

    /// The envelope read straight from the bytes: `before` (when not
    /// wanted), the `source` fields other than `ts_ms` (unless a sequence
    /// path reads them), `transaction` and the rest are stepped over.
    fn envelope_direct(
        &self,
        schema: &AvroSchema,
        shape: &Shape,
        body: &[u8],
        sequence: Option<&[String]>,
        keep_before: bool,
    ) -> Result<Envelope, NormalizeErrorKind> {
        let bad = |detail: String| NormalizeErrorKind::BadValue {
            format: FORMAT,
            detail: format!("schema id {}: {detail}", schema.id),
        };
        let Shape::Record(fields) = shape else {
            return Err(bad("not a Debezium envelope: the value is not a record".into()));
        };
        let mut r = Reader::new(body);
        let mut env = Envelope::default();
        for f in fields {
            let at = |e: CodecError| bad(format!("{}: {e}", f.name));
            match f.name.as_str() {
                "op" => env.op = Some(f.shape.decode_json(&mut r).map_err(at)?),
                "after" => env.after = optional(&f.shape, &mut r, true).map_err(at)?.1,
                "before" => {
                    let (present, image) = optional(&f.shape, &mut r, keep_before).map_err(at)?;
                    env.had_before = present;
                    env.before = image;
                }
                "ts_ms" => env.ts_ms = f.shape.decode_json(&mut r).map_err(at)?.as_i64(),
                "source" if sequence.is_some() => {
                    let block = f.shape.decode_json(&mut r).map_err(at)?;
                    env.source_ts = block.get("ts_ms").and_then(Value::as_i64);
                    env.sequence = match sequence {
                        Some([first, rest @ ..]) if first == "source" => super::lookup(&block, rest).cloned(),
                        _ => None,
                    };
                }
                "source" => env.source_ts = source_ts(&f.shape, &mut r).map_err(at)?,
                _ => f.shape.skip(&mut r).map_err(at)?,
            }
        }
        Ok(env)
    }

    /// The same through apache-avro's value tree (schemas with types the
    /// direct path does not handle).
    fn envelope_via_values(
        &self,
        bytes: &[u8],
        shape: &Shape,
        sequence: Option<&[String]>,
        keep_before: bool,
    ) -> Result<Envelope, NormalizeErrorKind> {
        let (schema, value) = self.decode(bytes, "value")?;
        let bad = |detail: String| NormalizeErrorKind::BadValue {
            format: FORMAT,
            detail: format!("schema id {}: {detail}", schema.id),
        };
        let Avro::Record(fields) = &value else {
            return Err(bad("not a Debezium envelope: the value is not a record".into()));
        };
        let json = |name: &str| -> Result<Option<Value>, NormalizeErrorKind> {
            let Some(v) = field(fields, name) else { return Ok(None) };
            let (_, s) = shape.field(name).ok_or_else(|| bad(format!("no `{name}` in the schema")))?;
            s.to_json(v).map(Some).map_err(|e| bad(format!("{name}.{e}")))
        };
        let had_before = !matches!(field(fields, "before").map(plain), None | Some(Avro::Null));
        let source = json("source")?;
        Ok(Envelope {
            op: json("op")?,
            after: json("after")?.filter(|v| !v.is_null()),
            before: if keep_before { json("before")?.filter(|v| !v.is_null()) } else { None },
            had_before,
            ts_ms: json("ts_ms")?.and_then(|v| v.as_i64()),
            source_ts: source.as_ref().and_then(|s| s.get("ts_ms")).and_then(Value::as_i64),
            sequence: match (sequence, &source) {
                (Some([first, rest @ ..]), Some(block)) if first == "source" => super::lookup(block, rest).cloned(),
                _ => None,
            },
        })
    }
}

/// A payload's writer schema, its shape, and the Avro body.
type Resolved<'b> = (Arc<AvroSchema>, Arc<Shape>, &'b [u8]);

/// What the parser reads out of an envelope.
#[derive(Debug, Default)]
struct Envelope {
    op: Option<Value>,
    before: Option<Value>,
    had_before: bool,
    after: Option<Value>,
    ts_ms: Option<i64>,
    source_ts: Option<i64>,
    sequence: Option<Value>,
}

fn registry_error(e: RegistryError, what: &str) -> NormalizeErrorKind {
    match e {
        RegistryError::Unavailable(d) => {
            NormalizeErrorKind::RegistryUnavailable(format!("{what}: schema registry unavailable: {d}"))
        }
        RegistryError::NotFound(d) => NormalizeErrorKind::UnknownSchema(format!("{what}: {d}")),
        RegistryError::Incompatible(d) | RegistryError::Invalid(d) => {
            NormalizeErrorKind::BadValue { format: FORMAT, detail: format!("{what}: {d}") }
        }
    }
}

/// An optional image (`["null", record]` in Debezium): whether it is there,
/// and its value when `keep` (else it is stepped over).
fn optional(shape: &Shape, r: &mut Reader<'_>, keep: bool) -> Result<(bool, Option<Value>), CodecError> {
    let shape = match shape {
        Shape::Union(branches) => {
            let i = r.long()?;
            let b = usize::try_from(i).ok().and_then(|i| branches.get(i)).ok_or(CodecError::UnionBranch(i))?;
            if *b == Shape::Null {
                return Ok((false, None));
            }
            b
        }
        other => other,
    };
    if keep {
        Ok((true, Some(shape.decode_json(r)?).filter(|v| !v.is_null())))
    } else {
        shape.skip(r)?;
        Ok((true, None))
    }
}

/// `source.ts_ms`, stepping over the rest of the block.
fn source_ts(shape: &Shape, r: &mut Reader<'_>) -> Result<Option<i64>, CodecError> {
    let shape = match shape {
        Shape::Union(branches) => {
            let i = r.long()?;
            usize::try_from(i).ok().and_then(|i| branches.get(i)).ok_or(CodecError::UnionBranch(i))?
        }
        other => other,
    };
    let Shape::Record(fields) = shape else {
        shape.skip(r)?;
        return Ok(None);
    };
    let mut ts = None;
    for f in fields {
        if f.name == "ts_ms" {
            ts = f.shape.decode_json(r).map_err(|e| e.in_field("ts_ms"))?.as_i64();
        } else {
            f.shape.skip(r).map_err(|e| e.in_field(&f.name))?;
        }
    }
    Ok(ts)
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
    fn decodes_key(&self) -> bool {
        true
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
        let (schema, shape, body) = self.resolve(bytes, "value", false)?;
        let bad = |detail: String| NormalizeErrorKind::BadValue {
            format: FORMAT,
            detail: format!("schema id {}: {detail}", schema.id),
        };
        // The op is not known before the envelope is read: keep `before` when
        // the caller wants it for upserts; deletes always need it, and a
        // delete whose `before` was skipped is read again below.
        let mut env = if shape.is_direct() {
            self.envelope_direct(&schema, &shape, body, sequence, upsert_before)?
        } else {
            self.envelope_via_values(bytes, &shape, sequence, upsert_before)?
        };
        let op = match env.op.take() {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(NormalizeErrorKind::MissingOp),
            Some(other) => return Err(bad(format!("`op` is {other}, expected a string"))),
        };
        let op = match op.as_str() {
            "c" => RawOp::Create,
            "u" => RawOp::Update,
            "r" => RawOp::Read,
            "d" => RawOp::Delete,
            "t" => return Err(NormalizeErrorKind::Truncate),
            other => return Err(NormalizeErrorKind::UnsupportedOp(other.to_string())),
        };
        if op == RawOp::Delete && env.had_before && env.before.is_none() {
            env = if shape.is_direct() {
                self.envelope_direct(&schema, &shape, body, sequence, true)?
            } else {
                self.envelope_via_values(bytes, &shape, sequence, true)?
            };
        }
        let image = |v: Option<Value>, name: &str| -> Result<Option<Row>, NormalizeErrorKind> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(o)) => Ok(Some(o)),
                Some(other) => Err(bad(format!("`{name}` is {}, expected a record", crate::json::json_kind(&other)))),
            }
        };
        let after = image(env.after, "after")?;
        let before = image(env.before, "before")?;
        let (had_before, source_ts, ts_ms, sequence) = (env.had_before, env.source_ts, env.ts_ms, env.sequence);
        let key = match record.key.filter(|k| !k.is_empty()) {
            Some(k) => Some(self.key(k)?),
            None => None,
        };
        Ok(Some(Parsed {
            raw: RawChange { op, before, after: after.map(LazyRow::from), ts: source_ts.or(ts_ms), sequence, key },
            had_before,
            changed: None,
        }))
    }
}
