//! Schema algebra, pure: the output value and key schemas derived from the
//! sources' schemas (the rules are in `output.rs`'s module comment).

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

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
pub(super) fn inline(schema: &Json, namespace: &str, names: &HashMap<String, Json>, depth: usize) -> Result<Json, String> {
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
pub(super) fn after_fields(envelope: &Json) -> Result<Vec<Map<String, Json>>, String> {
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
pub(super) fn record_fields(record: &Json) -> Result<Vec<Map<String, Json>>, String> {
    record
        .get("fields")
        .and_then(Json::as_array)
        .ok_or_else(|| "not a record schema".to_string())?
        .iter()
        .map(|f| f.as_object().cloned().ok_or_else(|| "a field is not an object".to_string()))
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
pub(super) fn merge_types(column: &str, a: &Json, b: &Json) -> Result<Json, String> {
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
pub(super) fn dedupe_names(t: &mut Json, seen: &mut HashMap<String, Json>) -> Result<(), String> {
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
pub(super) fn merge_fields<'a>(lists: impl IntoIterator<Item = &'a [Map<String, Json>]>) -> Result<Vec<(String, Json)>, String> {
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
