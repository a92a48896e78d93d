//! Avro and the Confluent Schema Registry (design §4).
//!
//! - [`registry`]: the registry client (schema_registry_converter underneath),
//!   with settings, caching and retriable/fatal error classification.
//! - `binary`: Avro's binary primitives (varint `long`, lengths, strings),
//!   shared by the two hand-written codecs, `decode` and `state`.
//! - [`shape`]: a schema reduced to what converting values needs, built
//!   once per schema.
//! - [`value`]: Avro values ↔ the JSON rows the merge engine works on, by
//!   Debezium's type conventions.
//! - [`output`]: the merged row's schema, derived from the sources' schemas,
//!   and the Confluent-framed Avro encoding of output records.
//! - [`state`]: the changelog/store encoding of key states
//!   (`schemas/changelog-state.avsc`, Avro single-object encoding).
//! - [`records`]: Tributary's own Avro records (`schemas/conflict-audit.avsc`,
//!   `schemas/dead-letter.avsc`).

mod binary;
mod catalog;
pub mod decode;
mod derive;
pub mod error;
pub mod output;
pub mod records;
pub mod registry;
pub mod shape;
pub mod state;
pub mod value;

use std::sync::Arc;

/// What Avro sources and outputs share: the registry connection and the
/// catalog of source schemas seen.
#[derive(Debug, Clone)]
pub struct AvroContext {
    /// The registry.
    pub registry: Arc<registry::Registry>,
    /// Every source schema seen.
    pub catalog: Arc<output::SchemaCatalog>,
}
