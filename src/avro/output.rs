//! The Avro output: the merged row's schema, derived from the sources'
//! schemas, registered under `<output topic>-value` (key: `-key`), and the
//! Confluent-framed encoding of output records.
//!
//! Schema rules (doc/avro.md repeats them for users):
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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use apache_avro::schema::Schema;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::Value as Json;

use super::catalog::*;
use super::registry::{frame, Registry, RegistryError};
use super::value::{Names, Shape};
use crate::merge::Row;

pub use super::catalog::SchemaCatalog;
pub use super::derive::{derive_key_schema, derive_value_schema, namespace_of, SchemaError};

/// Why the output could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutputError {
    /// The registry: unavailable (retry), or it refused the schema.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Sources disagree on a column's type beyond the promotion rules, or a
    /// row does not fit because its source's schema was refused.
    #[error("schema conflict: {0}")]
    Conflict(#[source] SchemaError),
    /// The row does not fit the output schema.
    #[error("the merged row does not fit the output schema: {0}")]
    Misfit(#[source] super::error::CodecError),
    /// The row has a column that no schema known to this process has.
    #[error("the merged row does not fit the output schema: column `{column}` is in no source schema known to this process")]
    UnknownColumn {
        /// The column.
        column: String,
    },
    /// The canonical key cannot be written with the key schema.
    #[error("the merged row does not fit the output schema: key {key}: {why}")]
    Key {
        /// The canonical key.
        key: String,
        /// Why (the key is not JSON, or does not fit).
        why: String,
    },
    /// apache-avro refused to write the value.
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
            Self::Misfit(_) | Self::UnknownColumn { .. } | Self::Key { .. } | Self::Unwritable(_) => "schema_misfit",
        }
    }
}

// ---- schema JSON helpers -------------------------------------------------

// ---- encoding ------------------------------------------------------------

/// One registered schema, ready to encode with.
struct Encoder {
    id: u32,
    text: String,
    shape: Shape,
    writer: GenericDatumWriter<'static>,
}

impl Encoder {
    fn new(id: u32, text: String) -> Result<Self, SchemaError> {
        // Leaked on purpose: one per registered schema version, kept for the
        // process's life (the writer borrows it).
        let schema: &'static Schema =
            Box::leak(Box::new(Schema::parse_str(&text).map_err(|e| SchemaError::Unparsable(e.to_string()))?));
        let resolved = apache_avro::schema::ResolvedSchema::try_from(schema).map_err(|e| SchemaError::Unusable(e.to_string()))?;
        let names: Names<'_> = resolved.get_names().clone();
        let shape = Shape::of(schema, &names);
        let writer =
            GenericDatumWriter::builder(schema).validate(false).build().map_err(|e| SchemaError::Unusable(e.to_string()))?;
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
                Err(e) => Some(e.to_string()),
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
            OutputError::Misfit(misfit) if !rejected.is_empty() => {
                OutputError::Conflict(SchemaError::Refused { misfit, refused: rejected })
            }
            other => other,
        }
    }

    /// The value and key schemas the `entries` of a catalog snapshot give
    /// (with the previous output schema).
    fn derive(&self, snapshot: &CatalogInner, entries: &[Entry]) -> Result<(Json, Json), SchemaError> {
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
        let unwritable = |why: String| OutputError::Key { key: key.to_string(), why };
        let key_json: Json = serde_json::from_str(key).map_err(|e| unwritable(e.to_string()))?;
        let key_bytes = c.key.encode(&key_json).map_err(|e| unwritable(e.to_string()))?;
        let value = match row {
            None => None,
            Some(row) => {
                if let Some(col) = row.keys().find(|k| !c.columns.contains(*k)) {
                    return Err(self.explain(OutputError::UnknownColumn { column: col.clone() }));
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
    use crate::avro::derive::*;
    use serde_json::json;

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
        assert!(matches!(&e, SchemaError::ColumnTypes { column, .. } if column == "a"), "{e:?}");
        assert_eq!(e.to_string(), r#"column `a` is "string" in one schema and "boolean" in another"#);
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
        let e = derive_key_schema("o", Some(&["nope".to_string()]), &[], &value).unwrap_err();
        assert_eq!(e, SchemaError::UnknownKeyField("nope".into()));
        assert_eq!(e.to_string(), "key field `nope` is in no source's schema");
    }

    #[test]
    fn namespaces_from_topic_names() {
        assert_eq!(namespace_of("customers.merged"), "customers.merged");
        assert_eq!(namespace_of("eu-customers.1x"), "eu_customers._1x");
    }
}
