//! Schema algebra, pure: the output value and key schemas derived from the
//! sources' schemas (the rules are in `output.rs`'s module comment).

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

/// Why the output schemas cannot be derived from the sources' schemas, or
/// why a row does not fit the schemas accepted so far: a schema conflict.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// Named types that refer to themselves.
    #[error("recursive named types are not supported in the output schema")]
    Recursive,
    /// A type name no definition in the schema has.
    #[error("unknown type name {0}")]
    UnknownName(String),
    /// A record field that is not a JSON object.
    #[error("a field is not an object")]
    FieldNotObject,
    /// A record field without a name.
    #[error("a field has no name")]
    FieldWithoutName,
    /// A record field without a type.
    #[error("field {0} has no type")]
    FieldWithoutType(String),
    /// A Debezium envelope schema without the `after` image.
    #[error("the envelope schema has no `after` field")]
    NoAfter,
    /// The envelope's `after` field has no type.
    #[error("`after` has no type")]
    AfterWithoutType,
    /// A schema that should be a record is not one.
    #[error("not a record schema")]
    NotRecord,
    /// Two schemas give a column types that do not promote to one.
    #[error("column `{column}` is {one} in one schema and {other} in another")]
    ColumnTypes {
        /// The column.
        column: String,
        /// Its type in one schema.
        one: Json,
        /// Its type in the other.
        other: Json,
    },
    /// Two sources define a named type differently.
    #[error("type {0} is defined differently by two sources")]
    NameClash(String),
    /// A `key_fields` column that no source's schema has.
    #[error("key field `{0}` is in no source's schema")]
    UnknownKeyField(String),
    /// The previous output schema (read from the registry) is not JSON.
    #[error("previous output schema: {0}")]
    PreviousNotJson(String),
    /// A source's schema is not JSON.
    #[error("source {source_name}: {}schema is not JSON: {error}", if *.key { "key " } else { "" })]
    NotJson {
        /// The source.
        source_name: String,
        /// Its key schema (else its value schema).
        key: bool,
        /// The JSON parser's complaint.
        error: String,
    },
    /// A source's schema cannot be used.
    #[error("source {source_name}{}: {error}", if *.key { " key" } else { "" })]
    Source {
        /// The source.
        source_name: String,
        /// Its key schema (else its value schema).
        key: bool,
        /// Why.
        #[source]
        error: Box<SchemaError>,
    },
    /// The derived schema is not valid Avro (apache-avro's complaint).
    #[error("derived schema: {0}")]
    Unparsable(String),
    /// The derived schema's names do not resolve, or no writer can be built
    /// for it (apache-avro's complaint).
    #[error("{0}")]
    Unusable(String),
    /// A row does not fit the output schema while some sources' schemas
    /// were refused for conflicting with it: most likely one of theirs.
    #[error(
        "{misfit}; refused for conflicting with the output schema: {}",
        .refused.iter().map(|(s, id, why)| format!("source {s} schema id {id} ({why})")).collect::<Vec<_>>().join("; ")
    )]
    Refused {
        /// Why the row does not fit.
        #[source]
        misfit: super::error::CodecError,
        /// Each refused schema: source, schema id, why.
        refused: Vec<(String, u32, String)>,
    },
}

impl SchemaError {
    fn of_source(self, source: &str, key: bool) -> Self {
        Self::Source { source_name: source.to_string(), key, error: Box::new(self) }
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

pub(super) const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The full name of a named type definition within `namespace`.
pub(super) fn fullname(def: &Map<String, Json>, namespace: &str) -> Option<(String, String)> {
    let name = def.get("name")?.as_str()?;
    if name.contains('.') {
        let ns = name.rsplit_once('.').map(|(n, _)| n.to_string()).unwrap_or_default();
        return Some((name.to_string(), ns));
    }
    let ns = def.get("namespace").and_then(Json::as_str).unwrap_or(namespace).to_string();
    Some((if ns.is_empty() { name.to_string() } else { format!("{ns}.{name}") }, ns))
}

/// Collects every named type definition (record, enum, fixed) by full name.
pub(super) fn collect_names(schema: &Json, namespace: &str, out: &mut HashMap<String, Json>) {
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
pub(super) fn inline(schema: &Json, namespace: &str, names: &HashMap<String, Json>, depth: usize) -> Result<Json, SchemaError> {
    if depth > 32 {
        return Err(SchemaError::Recursive);
    }
    Ok(match schema {
        Json::String(s) if PRIMITIVES.contains(&s.as_str()) => schema.clone(),
        Json::String(s) => {
            let full = if s.contains('.') || namespace.is_empty() { s.clone() } else { format!("{namespace}.{s}") };
            let def = names.get(&full).or_else(|| names.get(s)).ok_or_else(|| SchemaError::UnknownName(s.clone()))?;
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
                    let mut f = f.as_object().cloned().ok_or(SchemaError::FieldNotObject)?;
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
pub(super) fn after_fields(envelope: &Json) -> Result<Vec<Map<String, Json>>, SchemaError> {
    let mut names = HashMap::new();
    collect_names(envelope, "", &mut names);
    let env = inline(envelope, "", &names, 0)?;
    let after = env
        .get("fields")
        .and_then(Json::as_array)
        .and_then(|fs| fs.iter().find(|f| f.get("name").and_then(Json::as_str) == Some("after")))
        .ok_or(SchemaError::NoAfter)?;
    let record = non_null(after.get("type").ok_or(SchemaError::AfterWithoutType)?);
    record_fields(&record)
}

/// The fields of a record schema, inlined.
pub(super) fn record_fields(record: &Json) -> Result<Vec<Map<String, Json>>, SchemaError> {
    record
        .get("fields")
        .and_then(Json::as_array)
        .ok_or(SchemaError::NotRecord)?
        .iter()
        .map(|f| f.as_object().cloned().ok_or(SchemaError::FieldNotObject))
        .collect()
}

/// A type without its `null` branch (a single remaining branch unwrapped).
pub(super) fn non_null(t: &Json) -> Json {
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
pub(super) fn type_key(t: &Json) -> Json {
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
pub(super) fn plain_type(t: &Json) -> Json {
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

pub(super) fn base_type(t: &Json) -> Option<&str> {
    match t {
        Json::String(s) => Some(s),
        Json::Object(o) if o.get("logicalType").is_none() && o.get("connect.name").is_none() => o.get("type")?.as_str(),
        _ => None,
    }
}

pub(super) fn decimal_params(t: &Json) -> Option<(u64, u64)> {
    let o = t.as_object()?;
    if o.get("logicalType")?.as_str()? != "decimal" || o.get("type")?.as_str()? != "bytes" {
        return None;
    }
    Some((o.get("precision")?.as_u64()?, o.get("scale").and_then(Json::as_u64).unwrap_or(0)))
}

/// The type a column gets when two schemas give it `a` and `b`.
pub(super) fn merge_types(column: &str, a: &Json, b: &Json) -> Result<Json, SchemaError> {
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
    Err(SchemaError::ColumnTypes { column: column.to_string(), one: type_key(a), other: type_key(b) })
}

/// Replaces repeated definitions of a named type by its name (Avro allows
/// one definition per name); differing definitions are a conflict.
pub(super) fn dedupe_names(t: &mut Json, seen: &mut HashMap<String, Json>) -> Result<(), SchemaError> {
    match t {
        Json::Array(b) => b.iter_mut().try_for_each(|x| dedupe_names(x, seen)),
        Json::Object(o) => {
            let kind = o.get("type").and_then(Json::as_str).unwrap_or("");
            if matches!(kind, "record" | "error" | "enum" | "fixed") {
                if let Some(name) = o.get("name").and_then(Json::as_str).map(String::from) {
                    let key = type_key(&Json::Object(o.clone()));
                    if let Some(prev) = seen.get(&name) {
                        if *prev != key {
                            return Err(SchemaError::NameClash(name));
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
pub(super) fn merge_fields<'a>(
    lists: impl IntoIterator<Item = &'a [Map<String, Json>]>,
) -> Result<Vec<(String, Json)>, SchemaError> {
    let mut out: Vec<(String, Json)> = Vec::new();
    for list in lists {
        for f in list {
            let name = f.get("name").and_then(Json::as_str).ok_or(SchemaError::FieldWithoutName)?;
            let t = non_null(f.get("type").ok_or_else(|| SchemaError::FieldWithoutType(name.to_string()))?);
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => *existing = merge_types(name, existing, &t)?,
                None => out.push((name.to_string(), t)),
            }
        }
    }
    Ok(out)
}

/// Derives the output value schema (pretty-stable JSON text).
pub fn derive_value_schema(
    namespace: &str,
    previous: Option<&str>,
    sources: &[(String, Vec<String>)],
) -> Result<Json, SchemaError> {
    let mut lists: Vec<Vec<Map<String, Json>>> = Vec::new();
    if let Some(p) = previous {
        let parsed: Json = serde_json::from_str(p).map_err(|e| SchemaError::PreviousNotJson(e.to_string()))?;
        let mut names = HashMap::new();
        collect_names(&parsed, "", &mut names);
        let inlined = inline(&parsed, "", &names, 0)?;
        lists.push(record_fields(&inlined)?);
    }
    for (source, schemas) in sources {
        for s in schemas {
            let parsed: Json = serde_json::from_str(s).map_err(|e| SchemaError::NotJson {
                source_name: source.clone(),
                key: false,
                error: e.to_string(),
            })?;
            lists.push(after_fields(&parsed).map_err(|e| e.of_source(source, false))?);
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
) -> Result<Json, SchemaError> {
    let fields: Vec<(String, Json)> = match key_fields {
        Some(names) => {
            let vf = record_fields(value)?;
            names
                .iter()
                .map(|n| {
                    let f = vf
                        .iter()
                        .find(|f| f.get("name").and_then(Json::as_str) == Some(n))
                        .ok_or_else(|| SchemaError::UnknownKeyField(n.clone()))?;
                    Ok((n.clone(), non_null(f.get("type").expect("derived fields have types"))))
                })
                .collect::<Result<_, SchemaError>>()?
        }
        None => {
            let mut lists = Vec::new();
            for (source, schemas) in source_keys {
                for s in schemas {
                    let parsed: Json = serde_json::from_str(s).map_err(|e| SchemaError::NotJson {
                        source_name: source.clone(),
                        key: true,
                        error: e.to_string(),
                    })?;
                    let mut names = HashMap::new();
                    collect_names(&parsed, "", &mut names);
                    let inlined = inline(&parsed, "", &names, 0)?;
                    lists.push(record_fields(&inlined).map_err(|e| e.of_source(source, true))?);
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
