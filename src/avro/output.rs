//! The Avro output: the merged row's schema, derived from the sources'
//! schemas, registered under `<output topic>-value` (key: `-key`), and the
//! Confluent-framed encoding of output records.
//!
//! Schema rules (the README repeats them for users):
//! - The output value is a record `<namespace>.Value`, the namespace being
//!   the output topic with characters Avro does not allow replaced by `_`.
//! - Its fields are the union of the columns of every source's `after`
//!   record, over every schema version seen, plus every field of the
//!   output schema registered before (a column is never dropped, so each
//!   new version can read the old data). Order: the previous output schema's
//!   fields, then each source's in configuration order.
//! - Every field is optional: `["null", T]` with default `null`. A merged
//!   row may come from a source, or a schema version, without the column.
//! - Where sources disagree on a column's type: identical types (including
//!   Debezium's `connect.name` semantic type) are kept; `int`+`long` →
//!   `long`; any of `int`/`long`/`float` with `float`/`double` → `double`;
//!   decimals → the larger scale and integer digits. Any other disagreement is a schema conflict: the newest
//!   schema causing it is refused and the output schema stays as it was;
//!   rows that then do not fit go to the dead letters (reason
//!   `schema_conflict`), the rest goes on.
//! - The key is a record `<namespace>.Key` of the key columns (the record
//!   keys' fields, or `key_fields` with their row types), not optional.
//!   Keep it stable: Confluent framing puts the schema id in the key bytes,
//!   so a new key schema version changes every key's bytes for compaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use apache_avro::schema::Schema;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{json, Map, Value as Json};

use super::registry::{frame, Registry, RegistryError};
use super::value::{Names, Shape};
use crate::merge::Row;

/// A catalog entry: (is a key schema, source, schema id).
type Entry = (bool, String, u32);

/// Every source schema seen so far (and the output schema registered
/// before), from which the output schema is derived.
#[derive(Debug, Default)]
pub struct SchemaCatalog {
    inner: Mutex<CatalogInner>,
    generation: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct CatalogInner {
    /// Source name → schema id → envelope schema text.
    values: BTreeMap<String, BTreeMap<u32, String>>,
    /// Source name → schema id → key schema text.
    keys: BTreeMap<String, BTreeMap<u32, String>>,
    /// The output value schema registered before, if any.
    previous_value: Option<String>,
    /// The output key schema registered before, if any.
    previous_key: Option<String>,
    /// Every schema in the order first seen: (is a key schema, source, id).
    order: Vec<(bool, String, u32)>,
    /// Schemas refused for conflicting with the others, with why.
    rejected: Vec<(String, u32, String)>,
}

impl SchemaCatalog {
    /// A value (envelope) schema of `source`.
    pub fn observe_value(&self, source: &str, id: u32, schema: &str) {
        self.observe(false, source, id, schema);
    }

    /// A key schema of `source`.
    pub fn observe_key(&self, source: &str, id: u32, schema: &str) {
        self.observe(true, source, id, schema);
    }

    fn observe(&self, is_key: bool, source: &str, id: u32, schema: &str) {
        let mut inner = self.inner.lock().expect("catalog");
        if inner.rejected.iter().any(|(s, i, _)| s == source && *i == id) {
            return;
        }
        let map = if is_key { &mut inner.keys } else { &mut inner.values };
        if map.entry(source.to_string()).or_default().insert(id, schema.to_string()).is_none() {
            inner.order.push((is_key, source.to_string(), id));
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes a schema out: it conflicts with the others (`why`).
    fn reject(&self, entry: &(bool, String, u32), why: &str) {
        let mut guard = self.inner.lock().expect("catalog");
        let inner = &mut *guard;
        let (is_key, source, id) = entry;
        let map = if *is_key { &mut inner.keys } else { &mut inner.values };
        if let Some(ids) = map.get_mut(source) {
            ids.remove(id);
        }
        inner.order.retain(|o| o != entry);
        inner.rejected.push((source.clone(), *id, why.to_string()));
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The schemas refused so far: (source, schema id, why).
    pub fn rejected(&self) -> Vec<(String, u32, String)> {
        self.inner.lock().expect("catalog").rejected.clone()
    }

    /// The output key schema registered before this process started: kept,
    /// so key bytes stay the same across restarts.
    pub fn seed_previous_key(&self, schema: &str) {
        self.inner.lock().expect("catalog").previous_key = Some(schema.to_string());
    }

    fn previous_key(&self) -> Option<String> {
        self.inner.lock().expect("catalog").previous_key.clone()
    }

    /// The output value schema registered before this process started.
    pub fn seed_previous_output(&self, schema: &str) {
        let mut inner = self.inner.lock().expect("catalog");
        inner.previous_value = Some(schema.to_string());
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The catalog and its generation, read together.
    fn snapshot(&self) -> (u64, CatalogInner) {
        let inner = self.inner.lock().expect("catalog");
        (self.generation.load(Ordering::Relaxed), inner.clone())
    }
}

/// Why the output could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutputError {
    /// The registry: unavailable (retry), or it refused the schema.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Sources disagree on a column's type beyond the promotion rules.
    #[error("schema conflict: {0}")]
    Conflict(String),
    /// The row does not fit the output schema.
    #[error("the merged row does not fit the output schema: {0}")]
    Misfit(#[source] super::error::CodecError),
    /// The row or key cannot be written for a reason outside the codec (the
    /// key is not JSON, a column no known schema has, apache-avro refused it).
    #[error("the merged row does not fit the output schema: {0}")]
    Unwritable(String),
}

impl OutputError {
    /// True when retrying later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Registry(e) if e.is_retriable())
    }

    /// A short label for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Registry(RegistryError::Unavailable(_)) => "registry_unavailable",
            Self::Registry(_) => "schema_rejected",
            Self::Conflict(_) => "schema_conflict",
            Self::Misfit(_) | Self::Unwritable(_) => "schema_misfit",
        }
    }
}

/// An Avro namespace from a topic name: segments of `[A-Za-z0-9_]`, not
/// starting with a digit.
pub fn namespace_of(topic: &str) -> String {
    topic
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|seg| {
            let mut s: String = seg.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
            if s.starts_with(|c: char| c.is_ascii_digit()) {
                s.insert(0, '_');
            }
            s
        })
        .collect::<Vec<_>>()
        .join(".")
}

// ---- schema JSON helpers -------------------------------------------------

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The full name of a named type definition within `namespace`.
fn fullname(def: &Map<String, Json>, namespace: &str) -> Option<(String, String)> {
    let name = def.get("name")?.as_str()?;
    if name.contains('.') {
        let ns = name.rsplit_once('.').map(|(n, _)| n.to_string()).unwrap_or_default();
        return Some((name.to_string(), ns));
    }
    let ns = def.get("namespace").and_then(Json::as_str).unwrap_or(namespace).to_string();
    Some((if ns.is_empty() { name.to_string() } else { format!("{ns}.{name}") }, ns))
}

/// Collects every named type definition (record, enum, fixed) by full name.
fn collect_names(schema: &Json, namespace: &str, out: &mut HashMap<String, Json>) {
    match schema {
        Json::Array(branches) => branches.iter().for_each(|b| collect_names(b, namespace, out)),
        Json::Object(o) => {
            let t = o.get("type").and_then(Json::as_str).unwrap_or("");
            let mut ns = namespace.to_string();
            if matches!(t, "record" | "error" | "enum" | "fixed") {
                if let Some((full, inner_ns)) = fullname(o, namespace) {
                    out.entry(full).or_insert_with(|| schema.clone());
                    ns = inner_ns;
                }
            }
            if let Some(Json::Array(fields)) = o.get("fields") {
                for f in fields {
                    if let Some(ft) = f.get("type") {
                        collect_names(ft, &ns, out);
                    }
                }
            }
            for k in ["items", "values"] {
                if let Some(inner) = o.get(k) {
                    collect_names(inner, &ns, out);
                }
            }
            if let Some(inner @ (Json::Object(_) | Json::Array(_))) = o.get("type") {
                collect_names(inner, &ns, out);
            }
        }
        _ => {}
    }
}

/// `schema` with every named reference replaced by its definition and every
/// definition's name made a full name, so it can move to another namespace.
fn inline(schema: &Json, namespace: &str, names: &HashMap<String, Json>, depth: usize) -> Result<Json, String> {
    if depth > 32 {
        return Err("recursive named types are not supported in the output schema".into());
    }
    Ok(match schema {
        Json::String(s) if PRIMITIVES.contains(&s.as_str()) => schema.clone(),
        Json::String(s) => {
            let full = if s.contains('.') || namespace.is_empty() { s.clone() } else { format!("{namespace}.{s}") };
            let def = names.get(&full).or_else(|| names.get(s)).ok_or_else(|| format!("unknown type name {s}"))?;
            let def_ns = full.rsplit_once('.').map(|(n, _)| n).unwrap_or("");
            inline(def, def_ns, names, depth + 1)?
        }
        Json::Array(branches) => {
            Json::Array(branches.iter().map(|b| inline(b, namespace, names, depth + 1)).collect::<Result<_, _>>()?)
        }
        Json::Object(o) => {
            let mut out = o.clone();
            let mut ns = namespace.to_string();
            let t = o.get("type").and_then(Json::as_str).unwrap_or("");
            if matches!(t, "record" | "error" | "enum" | "fixed") {
                if let Some((full, inner_ns)) = fullname(o, namespace) {
                    out.insert("name".into(), Json::String(full));
                    out.remove("namespace");
                    ns = inner_ns;
                }
            }
            if let Some(Json::Array(fields)) = o.get("fields") {
                let mut new_fields = Vec::with_capacity(fields.len());
                for f in fields {
                    let mut f = f.as_object().cloned().ok_or("a field is not an object")?;
                    if let Some(ft) = f.get("type") {
                        let t = inline(ft, &ns, names, depth + 1)?;
                        f.insert("type".into(), t);
                    }
                    new_fields.push(Json::Object(f));
                }
                out.insert("fields".into(), Json::Array(new_fields));
            }
            for k in ["items", "values"] {
                if let Some(inner) = o.get(k) {
                    out.insert(k.into(), inline(inner, &ns, names, depth + 1)?);
                }
            }
            if let Some(inner @ (Json::Object(_) | Json::Array(_) | Json::String(_))) = o.get("type") {
                if !matches!(inner.as_str(), Some(s) if PRIMITIVES.contains(&s) || matches!(s, "record" | "error" | "enum" | "fixed" | "array" | "map"))
                {
                    out.insert("type".into(), inline(inner, &ns, names, depth + 1)?);
                }
            }
            Json::Object(out)
        }
        other => other.clone(),
    })
}

/// The fields of the record a Debezium envelope's `after` holds, inlined.
fn after_fields(envelope: &Json) -> Result<Vec<Map<String, Json>>, String> {
    let mut names = HashMap::new();
    collect_names(envelope, "", &mut names);
    let env = inline(envelope, "", &names, 0)?;
    let after = env
        .get("fields")
        .and_then(Json::as_array)
        .and_then(|fs| fs.iter().find(|f| f.get("name").and_then(Json::as_str) == Some("after")))
        .ok_or("the envelope schema has no `after` field")?;
    let record = non_null(after.get("type").ok_or("`after` has no type")?);
    record_fields(&record)
}

/// The fields of a record schema, inlined.
fn record_fields(record: &Json) -> Result<Vec<Map<String, Json>>, String> {
    record
        .get("fields")
        .and_then(Json::as_array)
        .ok_or_else(|| "not a record schema".to_string())?
        .iter()
        .map(|f| f.as_object().cloned().ok_or_else(|| "a field is not an object".to_string()))
        .collect()
}

/// A type without its `null` branch (a single remaining branch unwrapped).
fn non_null(t: &Json) -> Json {
    match t {
        Json::Array(branches) => {
            let rest: Vec<Json> = branches.iter().filter(|b| b.as_str() != Some("null")).cloned().collect();
            if rest.len() == 1 {
                rest.into_iter().next().expect("one branch")
            } else {
                Json::Array(rest)
            }
        }
        other => other.clone(),
    }
}

/// What identifies a type for comparison: structure, logical and Debezium
/// semantic type; not docs, defaults or other annotations.
fn type_key(t: &Json) -> Json {
    match t {
        Json::String(s) => Json::String(s.clone()),
        Json::Array(b) => Json::Array(b.iter().map(type_key).collect()),
        Json::Object(o) => {
            let mut out = Map::new();
            for k in ["type", "name", "logicalType", "precision", "scale", "size", "symbols", "connect.name"] {
                if let Some(v) = o.get(k) {
                    out.insert(k.into(), if k == "type" { type_key(v) } else { v.clone() });
                }
            }
            for k in ["items", "values"] {
                if let Some(v) = o.get(k) {
                    out.insert(k.into(), type_key(v));
                }
            }
            if let Some(Json::Array(fields)) = o.get("fields") {
                out.insert(
                    "fields".into(),
                    Json::Array(fields.iter().map(|f| json!([f.get("name"), f.get("type").map(type_key)])).collect()),
                );
            }
            // {"type": "long"} is "long".
            if out.len() == 1 {
                if let Some(Json::String(s)) = out.get("type") {
                    return Json::String(s.clone());
                }
            }
            Json::Object(out)
        }
        other => other.clone(),
    }
}

/// A type with only what defines it (no docs, defaults or connector
/// annotations other than `connect.name`): key schemas are built of these,
/// so two connectors annotating the same key differently agree on it.
fn plain_type(t: &Json) -> Json {
    match t {
        Json::Array(b) => Json::Array(b.iter().map(plain_type).collect()),
        Json::Object(o) => {
            let mut out = Map::new();
            for k in ["type", "name", "logicalType", "precision", "scale", "size", "symbols", "connect.name"] {
                if let Some(v) = o.get(k) {
                    out.insert(k.into(), if k == "type" { plain_type(v) } else { v.clone() });
                }
            }
            for k in ["items", "values"] {
                if let Some(v) = o.get(k) {
                    out.insert(k.into(), plain_type(v));
                }
            }
            if let Some(Json::Array(fields)) = o.get("fields") {
                let fields: Vec<Json> =
                    fields.iter().map(|f| json!({"name": f.get("name"), "type": f.get("type").map(plain_type)})).collect();
                out.insert("fields".into(), Json::Array(fields));
            }
            if out.len() == 1 {
                if let Some(Json::String(s)) = out.get("type") {
                    return Json::String(s.clone());
                }
            }
            Json::Object(out)
        }
        other => other.clone(),
    }
}

fn base_type(t: &Json) -> Option<&str> {
    match t {
        Json::String(s) => Some(s),
        Json::Object(o) if o.get("logicalType").is_none() && o.get("connect.name").is_none() => o.get("type")?.as_str(),
        _ => None,
    }
}

fn decimal_params(t: &Json) -> Option<(u64, u64)> {
    let o = t.as_object()?;
    if o.get("logicalType")?.as_str()? != "decimal" || o.get("type")?.as_str()? != "bytes" {
        return None;
    }
    Some((o.get("precision")?.as_u64()?, o.get("scale").and_then(Json::as_u64).unwrap_or(0)))
}

/// The type a column gets when two schemas give it `a` and `b`.
fn merge_types(column: &str, a: &Json, b: &Json) -> Result<Json, String> {
    if type_key(a) == type_key(b) {
        return Ok(a.clone());
    }
    if let (Some(x), Some(y)) = (base_type(a), base_type(b)) {
        let rank = |t: &str| match t {
            "int" => Some(0),
            "long" => Some(1),
            "float" => Some(2),
            "double" => Some(3),
            _ => None,
        };
        if let (Some(rx), Some(ry)) = (rank(x), rank(y)) {
            let widest = rx.max(ry);
            return Ok(Json::String(if widest >= 2 { "double" } else { "long" }.into()));
        }
        if matches!((x, y), ("string", "string")) {
            return Ok(Json::String("string".into()));
        }
    }
    if let (Some((pa, sa)), Some((pb, sb))) = (decimal_params(a), decimal_params(b)) {
        let scale = sa.max(sb);
        let precision = (pa - sa.min(pa)).max(pb - sb.min(pb)) + scale;
        let mut out = a.as_object().cloned().expect("a decimal is an object");
        out.insert("precision".into(), json!(precision));
        out.insert("scale".into(), json!(scale));
        out.insert(
            "connect.parameters".into(),
            json!({"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()}),
        );
        return Ok(Json::Object(out));
    }
    Err(format!("column `{column}` is {} in one schema and {} in another", type_key(a), type_key(b)))
}

/// Replaces repeated definitions of a named type by its name (Avro allows
/// one definition per name); differing definitions are a conflict.
fn dedupe_names(t: &mut Json, seen: &mut HashMap<String, Json>) -> Result<(), String> {
    match t {
        Json::Array(b) => b.iter_mut().try_for_each(|x| dedupe_names(x, seen)),
        Json::Object(o) => {
            let kind = o.get("type").and_then(Json::as_str).unwrap_or("");
            if matches!(kind, "record" | "error" | "enum" | "fixed") {
                if let Some(name) = o.get("name").and_then(Json::as_str).map(String::from) {
                    let key = type_key(&Json::Object(o.clone()));
                    if let Some(prev) = seen.get(&name) {
                        if *prev != key {
                            return Err(format!("type {name} is defined differently by two sources"));
                        }
                        *t = Json::String(name);
                        return Ok(());
                    }
                    seen.insert(name, key);
                }
            }
            if let Some(Json::Array(fields)) = o.get_mut("fields") {
                for f in fields {
                    if let Some(ft) = f.get_mut("type") {
                        dedupe_names(ft, seen)?;
                    }
                }
            }
            for k in ["items", "values"] {
                if let Some(inner) = o.get_mut(k) {
                    dedupe_names(inner, seen)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Merges field lists in order: the column set is the union, types by
/// [`merge_types`].
fn merge_fields<'a>(lists: impl IntoIterator<Item = &'a [Map<String, Json>]>) -> Result<Vec<(String, Json)>, String> {
    let mut out: Vec<(String, Json)> = Vec::new();
    for list in lists {
        for f in list {
            let name = f.get("name").and_then(Json::as_str).ok_or("a field has no name")?;
            let t = non_null(f.get("type").ok_or_else(|| format!("field {name} has no type"))?);
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => *existing = merge_types(name, existing, &t)?,
                None => out.push((name.to_string(), t)),
            }
        }
    }
    Ok(out)
}

/// Derives the output value schema (pretty-stable JSON text).
pub fn derive_value_schema(namespace: &str, previous: Option<&str>, sources: &[(String, Vec<String>)]) -> Result<Json, String> {
    let mut lists: Vec<Vec<Map<String, Json>>> = Vec::new();
    if let Some(p) = previous {
        let parsed: Json = serde_json::from_str(p).map_err(|e| format!("previous output schema: {e}"))?;
        let mut names = HashMap::new();
        collect_names(&parsed, "", &mut names);
        let inlined = inline(&parsed, "", &names, 0)?;
        lists.push(record_fields(&inlined)?);
    }
    for (source, schemas) in sources {
        for s in schemas {
            let parsed: Json = serde_json::from_str(s).map_err(|e| format!("source {source}: schema is not JSON: {e}"))?;
            lists.push(after_fields(&parsed).map_err(|e| format!("source {source}: {e}"))?);
        }
    }
    let fields = merge_fields(lists.iter().map(Vec::as_slice))?;
    let mut seen = HashMap::new();
    let mut out_fields = Vec::with_capacity(fields.len());
    for (name, t) in fields {
        let mut t = t;
        dedupe_names(&mut t, &mut seen)?;
        let t = match t {
            Json::Array(mut b) => {
                b.insert(0, Json::String("null".into()));
                Json::Array(b)
            }
            other => json!(["null", other]),
        };
        out_fields.push(json!({"name": name, "type": t, "default": null}));
    }
    Ok(json!({
        "type": "record",
        "name": "Value",
        "namespace": namespace,
        "doc": "A merged row written by Tributary; every column optional (see the README's Avro schema rules).",
        "fields": out_fields,
    }))
}

/// Derives the output key schema: from the sources' key records, or from
/// `key_fields` with their types in `value` (the derived value schema).
pub fn derive_key_schema(
    namespace: &str,
    key_fields: Option<&[String]>,
    source_keys: &[(String, Vec<String>)],
    value: &Json,
) -> Result<Json, String> {
    let fields: Vec<(String, Json)> = match key_fields {
        Some(names) => {
            let vf = record_fields(value)?;
            names
                .iter()
                .map(|n| {
                    let f = vf
                        .iter()
                        .find(|f| f.get("name").and_then(Json::as_str) == Some(n))
                        .ok_or_else(|| format!("key field `{n}` is in no source's schema"))?;
                    Ok((n.clone(), non_null(f.get("type").expect("derived fields have types"))))
                })
                .collect::<Result<_, String>>()?
        }
        None => {
            let mut lists = Vec::new();
            for (source, schemas) in source_keys {
                for s in schemas {
                    let parsed: Json =
                        serde_json::from_str(s).map_err(|e| format!("source {source}: key schema is not JSON: {e}"))?;
                    let mut names = HashMap::new();
                    collect_names(&parsed, "", &mut names);
                    let inlined = inline(&parsed, "", &names, 0)?;
                    lists.push(record_fields(&inlined).map_err(|e| format!("source {source} key: {e}"))?);
                }
            }
            merge_fields(lists.iter().map(Vec::as_slice))?
        }
    };
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (name, t) in fields {
        let mut t = plain_type(&t);
        dedupe_names(&mut t, &mut seen)?;
        out.push(json!({"name": name, "type": t}));
    }
    Ok(json!({"type": "record", "name": "Key", "namespace": namespace, "fields": out}))
}

// ---- encoding ------------------------------------------------------------

/// One registered schema, ready to encode with.
struct Encoder {
    id: u32,
    text: String,
    shape: Shape,
    writer: GenericDatumWriter<'static>,
}

impl Encoder {
    fn new(id: u32, text: String) -> Result<Self, String> {
        // Leaked on purpose: one per registered schema version, kept for the
        // process's life (the writer borrows it).
        let schema: &'static Schema = Box::leak(Box::new(Schema::parse_str(&text).map_err(|e| format!("derived schema: {e}"))?));
        let resolved = apache_avro::schema::ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        let names: Names<'_> = resolved.get_names().clone();
        let shape = Shape::of(schema, &names);
        let writer = GenericDatumWriter::builder(schema).validate(false).build().map_err(|e| e.to_string())?;
        Ok(Self { id, text, shape, writer })
    }

    fn encode(&self, json: &Json) -> Result<Vec<u8>, OutputError> {
        if self.shape.is_direct() {
            let mut out = frame(self.id, &[]);
            self.shape.encode_json(json, &mut out).map_err(OutputError::Misfit)?;
            return Ok(out);
        }
        let value = self.shape.to_avro(json).map_err(OutputError::Misfit)?;
        self.frame(&value)
    }

    /// [`encode`](Self::encode) of a row, without copying it into a JSON value.
    fn encode_row(&self, row: &Row) -> Result<Vec<u8>, OutputError> {
        if self.shape.is_direct() {
            let mut out = Vec::with_capacity(64 + 16 * row.len());
            out.extend_from_slice(&frame(self.id, &[]));
            self.shape.encode_record(row, &mut out).map_err(OutputError::Misfit)?;
            return Ok(out);
        }
        let value = self.shape.record_to_avro(row).map_err(OutputError::Misfit)?;
        self.frame(&value)
    }

    fn frame(&self, value: &apache_avro::types::Value) -> Result<Vec<u8>, OutputError> {
        let mut out = frame(self.id, &[]);
        self.writer.write_value_ref(&mut out, value).map_err(|e| OutputError::Unwritable(e.to_string()))?;
        Ok(out)
    }
}

struct Current {
    generation: u64,
    /// The schemas the current derivation was made of.
    accepted: Vec<(bool, String, u32)>,
    value: Encoder,
    key: Encoder,
    /// Column names of the value schema.
    columns: std::collections::HashSet<String>,
}

/// Encodes merged records as Confluent-framed Avro.
pub struct AvroOutput {
    registry: Arc<Registry>,
    catalog: Arc<SchemaCatalog>,
    topic: String,
    namespace: String,
    sources: Vec<String>,
    key_fields: Option<Vec<String>>,
    current: Mutex<Option<Current>>,
}

impl std::fmt::Debug for AvroOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroOutput").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl AvroOutput {
    /// The encoder for `topic`, whose rows come from `sources` (in
    /// configuration order).
    pub fn new(
        registry: Arc<Registry>,
        catalog: Arc<SchemaCatalog>,
        topic: &str,
        sources: Vec<String>,
        key_fields: Option<Vec<String>>,
    ) -> Self {
        Self {
            registry,
            catalog,
            topic: topic.to_string(),
            namespace: namespace_of(topic),
            sources,
            key_fields,
            current: Mutex::new(None),
        }
    }

    /// The value subject (`<topic>-value`).
    pub fn value_subject(&self) -> String {
        format!("{}-value", self.topic)
    }

    /// The key subject (`<topic>-key`).
    pub fn key_subject(&self) -> String {
        format!("{}-key", self.topic)
    }

    /// Brings the output schemas up to date with the catalog, registering
    /// new versions. Returns the current value and key schema ids.
    pub fn refresh(&self) -> Result<(u32, u32), OutputError> {
        let mut current = self.current.lock().expect("avro output");
        self.refresh_locked(&mut current)?;
        let c = current.as_ref().expect("refreshed");
        Ok((c.value.id, c.key.id))
    }

    fn refresh_locked(&self, current: &mut Option<Current>) -> Result<(), OutputError> {
        // The common case, cheaply: nothing new seen since the last refresh.
        if current.as_ref().is_some_and(|c| c.generation == self.catalog.generation()) {
            return Ok(());
        }
        let (generation, snapshot) = self.catalog.snapshot();
        // Schemas join one at a time in the order they were seen: the ones
        // already in the output first, then each new one, which is refused
        // when it conflicts with those before it (the type rules) or makes a
        // value schema the registry would not take (its compatibility
        // level). A refused schema's events then do not fit and go to the
        // dead letters; nothing else stops.
        let mut accepted: Vec<Entry> = current
            .as_ref()
            .map(|c| c.accepted.iter().filter(|e| snapshot.order.contains(e)).cloned().collect())
            .unwrap_or_default();
        let (mut value, mut key) = self.derive(&snapshot, &accepted).map_err(OutputError::Conflict)?;
        let candidates: Vec<Entry> = snapshot.order.iter().filter(|e| !accepted.contains(e)).cloned().collect();
        for entry in &candidates {
            let mut trial = accepted.clone();
            trial.push(entry.clone());
            let refusal = match self.derive(&snapshot, &trial) {
                Err(e) => Some(e),
                Ok((v, k)) if v != value && !self.registry_takes(&v)? => {
                    let _ = k;
                    Some(format!(
                        "the output schema it leads to is incompatible with the latest version under {} (the subject's compatibility level)",
                        self.value_subject()
                    ))
                }
                Ok((v, k)) => {
                    (value, key) = (v, k);
                    accepted = trial;
                    None
                }
            };
            if let Some(why) = refusal {
                tracing::warn!(
                    source = %entry.1,
                    schema_id = entry.2,
                    "{} schema refused for the output: {why}; events that do not fit go to the dead letters",
                    if entry.0 { "key" } else { "value" }
                );
                self.catalog.reject(entry, &why);
            }
        }
        let value_text = value.to_string();
        // The key schema is chosen once (the one registered before, else the
        // first derived) and kept: its id is part of every key's bytes, and
        // compaction compares bytes.
        let key_text = match current.as_ref() {
            Some(c) => c.key.text.clone(),
            None => self.catalog.previous_key().unwrap_or_else(|| key.to_string()),
        };
        let value_enc = match current.as_ref() {
            Some(c) if c.value.text == value_text => None,
            _ => {
                let id = self.registry.register(&self.value_subject(), &value_text)?;
                tracing::info!(subject = %self.value_subject(), id, "output value schema registered");
                Some(Encoder::new(id, value_text).map_err(OutputError::Conflict)?)
            }
        };
        let key_enc = match current.as_ref() {
            Some(_) => None,
            None => {
                let id = self.registry.register(&self.key_subject(), &key_text)?;
                tracing::info!(subject = %self.key_subject(), id, "output key schema registered");
                Some(Encoder::new(id, key_text).map_err(OutputError::Conflict)?)
            }
        };
        // Only now, every registration done, does the current state change.
        let old = current.take();
        let (old_value, old_key) = match old {
            Some(c) => (Some(c.value), Some(c.key)),
            None => (None, None),
        };
        let value_enc = value_enc.or(old_value).expect("a value encoder, new or kept");
        let key_enc = key_enc.or(old_key).expect("a key encoder, new or kept");
        let columns = match &value_enc.shape {
            Shape::Record(fields) => fields.iter().map(|f| f.name.clone()).collect(),
            _ => Default::default(),
        };
        *current = Some(Current { generation, accepted, value: value_enc, key: key_enc, columns });
        Ok(())
    }

    /// Whether the registry would accept `value` under the value subject
    /// (true when the subject does not exist yet).
    fn registry_takes(&self, value: &Json) -> Result<bool, OutputError> {
        match self.registry.compatible(&self.value_subject(), &value.to_string()) {
            Ok(ok) => Ok(ok),
            Err(RegistryError::NotFound(_)) => Ok(true),
            Err(e) => Err(OutputError::Registry(e)),
        }
    }

    /// A row that does not fit while schemas were refused is most likely
    /// one of theirs: say so (reason `schema_conflict`).
    fn explain(&self, e: OutputError) -> OutputError {
        let rejected = self.catalog.rejected();
        match e {
            OutputError::Misfit(m) if !rejected.is_empty() => OutputError::Conflict(format!(
                "{m}; refused for conflicting with the output schema: {}",
                rejected.iter().map(|(s, id, why)| format!("source {s} schema id {id} ({why})")).collect::<Vec<_>>().join("; ")
            )),
            other => other,
        }
    }

    /// The value and key schemas the `entries` of a catalog snapshot give
    /// (with the previous output schema).
    fn derive(&self, snapshot: &CatalogInner, entries: &[Entry]) -> Result<(Json, Json), String> {
        let in_order = |is_key: bool, m: &BTreeMap<String, BTreeMap<u32, String>>| -> Vec<(String, Vec<String>)> {
            self.sources
                .iter()
                .filter_map(|s| {
                    let ids = m.get(s)?;
                    let texts: Vec<String> = ids
                        .iter()
                        .filter(|(id, _)| entries.iter().any(|e| e.0 == is_key && &e.1 == s && e.2 == **id))
                        .map(|(_, t)| t.clone())
                        .collect();
                    (!texts.is_empty()).then(|| (s.clone(), texts))
                })
                .collect()
        };
        let value = derive_value_schema(&self.namespace, snapshot.previous_value.as_deref(), &in_order(false, &snapshot.values))?;
        let key = derive_key_schema(&self.namespace, self.key_fields.as_deref(), &in_order(true, &snapshot.keys), &value)?;
        Ok((value, key))
    }

    /// Encodes the canonical key and the merged row (`None`: a tombstone).
    pub fn encode(&self, key: &str, row: Option<&Row>) -> Result<(Vec<u8>, Option<Vec<u8>>), OutputError> {
        let mut current = self.current.lock().expect("avro output");
        self.refresh_locked(&mut current)?;
        let c = current.as_ref().expect("refreshed");
        let key_json: Json = serde_json::from_str(key).map_err(|e| OutputError::Unwritable(format!("key {key}: {e}")))?;
        let key_bytes = c.key.encode(&key_json).map_err(|e| OutputError::Unwritable(format!("key {key}: {e}")))?;
        let value = match row {
            None => None,
            Some(row) => {
                if let Some(col) = row.keys().find(|k| !c.columns.contains(*k)) {
                    return Err(self.explain(OutputError::Unwritable(format!(
                        "column `{col}` is in no source schema known to this process"
                    ))));
                }
                Some(c.value.encode_row(row).map_err(|e| self.explain(e))?)
            }
        };
        Ok((key_bytes, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(ns: &str, value_fields: Json) -> String {
        json!({
            "type": "record", "name": "Envelope", "namespace": ns,
            "fields": [
                {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": value_fields}], "default": null},
                {"name": "after", "type": ["null", "Value"], "default": null},
                {"name": "op", "type": "string"},
            ]
        })
        .to_string()
    }

    #[test]
    fn columns_are_unioned_optional_and_promoted() {
        let eu = envelope(
            "eu.public.customers",
            json!([
                {"name": "id", "type": "int"},
                {"name": "name", "type": ["null", "string"], "default": null},
                {"name": "score", "type": "int"},
            ]),
        );
        let us = envelope(
            "us.public.customers",
            json!([
                {"name": "id", "type": "long"},
                {"name": "score", "type": "double"},
                {"name": "email", "type": ["null", "string"], "default": null},
            ]),
        );
        let s = derive_value_schema("customers.merged", None, &[("eu".into(), vec![eu]), ("us".into(), vec![us])]).unwrap();
        let fields: Vec<(String, Json)> = s["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap().to_string(), f["type"].clone()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("id".into(), json!(["null", "long"])),
                ("name".into(), json!(["null", "string"])),
                ("score".into(), json!(["null", "double"])),
                ("email".into(), json!(["null", "string"])),
            ]
        );
        Schema::parse_str(&s.to_string()).expect("a valid Avro schema");
    }

    #[test]
    fn a_new_column_keeps_the_old_ones_and_conflicts_are_named() {
        let v1 = envelope("eu.t", json!([{"name": "id", "type": "int"}, {"name": "a", "type": "string"}]));
        let v2 = envelope(
            "eu.t",
            json!([{"name": "id", "type": "int"}, {"name": "a", "type": "string"}, {"name": "b", "type": "boolean"}]),
        );
        let first = derive_value_schema("o", None, &[("eu".into(), vec![v1])]).unwrap();
        let second = derive_value_schema("o", Some(&first.to_string()), &[("eu".into(), vec![v2])]).unwrap();
        assert_eq!(second["fields"].as_array().unwrap().len(), 3);
        assert_eq!(second["fields"][0], first["fields"][0], "old columns keep their place");
        let bad = envelope("us.t", json!([{"name": "a", "type": "boolean"}]));
        let e = derive_value_schema("o", Some(&second.to_string()), &[("us".into(), vec![bad])]).unwrap_err();
        assert!(e.contains("column `a`"), "{e}");
    }

    #[test]
    fn decimals_widen_and_semantic_types_must_agree() {
        let d = |p: u64, s: u64| json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s});
        let m = merge_types("x", &d(10, 2), &d(12, 4)).unwrap();
        assert_eq!((m["precision"].clone(), m["scale"].clone()), (json!(12), json!(4)));
        let micros = json!({"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"});
        let millis = json!({"type": "long", "connect.name": "io.debezium.time.Timestamp"});
        assert!(merge_types("t", &micros, &millis).is_err(), "micro- and millisecond timestamps are not the same column type");
        assert_eq!(merge_types("t", &micros, &micros.clone()).unwrap(), micros);
    }

    #[test]
    fn named_types_are_moved_with_full_names_and_defined_once() {
        let with_enum = |ns: &str| {
            envelope(
                ns,
                json!([{"name": "tier", "type": {"type": "enum", "name": "Tier", "namespace": "shared", "symbols": ["A", "B"]}}]),
            )
        };
        let s = derive_value_schema("o", None, &[("eu".into(), vec![with_enum("eu.t")]), ("us".into(), vec![with_enum("us.t")])])
            .unwrap();
        Schema::parse_str(&s.to_string()).expect("one definition of shared.Tier");
    }

    #[test]
    fn key_schema_from_key_fields_or_source_keys() {
        let eu = envelope("eu.t", json!([{"name": "id", "type": "int"}, {"name": "a", "type": "string"}]));
        let value = derive_value_schema("o", None, &[("eu".into(), vec![eu])]).unwrap();
        let k = derive_key_schema("o", Some(&["id".to_string()]), &[], &value).unwrap();
        assert_eq!(k["fields"], json!([{"name": "id", "type": "int"}]));
        let key =
            json!({"type": "record", "name": "Key", "namespace": "eu.t", "fields": [{"name": "id", "type": "int"}]}).to_string();
        let k = derive_key_schema("o", None, &[("eu".into(), vec![key])], &value).unwrap();
        assert_eq!(k["fields"], json!([{"name": "id", "type": "int"}]));
        assert!(derive_key_schema("o", Some(&["nope".to_string()]), &[], &value).is_err());
    }

    #[test]
    fn namespaces_from_topic_names() {
        assert_eq!(namespace_of("customers.merged"), "customers.merged");
        assert_eq!(namespace_of("eu-customers.1x"), "eu_customers._1x");
    }
}
