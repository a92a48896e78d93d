//! The schemas of the sources seen so far (value and key, per source and
//! version), from which the output schema is derived.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A catalog entry: (is a key schema, source, schema id).
pub(super) type Entry = (bool, String, u32);

/// Every source schema seen so far (and the output schema registered
/// before), from which the output schema is derived.
#[derive(Debug, Default)]
pub struct SchemaCatalog {
    inner: Mutex<CatalogInner>,
    generation: AtomicU64,
}

#[derive(Debug, Default, Clone)]
pub(super) struct CatalogInner {
    /// Source name → schema id → envelope schema text.
    pub(super) values: BTreeMap<String, BTreeMap<u32, String>>,
    /// Source name → schema id → key schema text.
    pub(super) keys: BTreeMap<String, BTreeMap<u32, String>>,
    /// The output value schema registered before, if any.
    pub(super) previous_value: Option<String>,
    /// The output key schema registered before, if any.
    pub(super) previous_key: Option<String>,
    /// Every schema in the order first seen: (is a key schema, source, id).
    pub(super) order: Vec<(bool, String, u32)>,
    /// Schemas refused for conflicting with the others, with why.
    pub(super) rejected: Vec<(String, u32, String)>,
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

    pub(super) fn observe(&self, is_key: bool, source: &str, id: u32, schema: &str) {
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
    pub(super) fn reject(&self, entry: &(bool, String, u32), why: &str) {
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

    pub(super) fn previous_key(&self) -> Option<String> {
        self.inner.lock().expect("catalog").previous_key.clone()
    }

    /// The output value schema registered before this process started.
    pub fn seed_previous_output(&self, schema: &str) {
        let mut inner = self.inner.lock().expect("catalog");
        inner.previous_value = Some(schema.to_string());
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The catalog and its generation, read together.
    pub(super) fn snapshot(&self) -> (u64, CatalogInner) {
        let inner = self.inner.lock().expect("catalog");
        (self.generation.load(Ordering::Relaxed), inner.clone())
    }
}
