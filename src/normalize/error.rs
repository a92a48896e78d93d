//! The error a record that cannot be normalized becomes: where it is and
//! what is wrong with it, with the bounded `reason` label of the metrics and
//! whether trying again later may help. Such records go to the dead-letter
//! path; processing continues.

use std::fmt;

use super::InputRecord;

/// Where a record came from: topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl fmt::Display for RecordPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic {} partition {} offset {}", self.topic, self.partition, self.offset)
    }
}

impl From<&InputRecord<'_>> for RecordPosition {
    fn from(r: &InputRecord<'_>) -> Self {
        Self { topic: r.topic.to_string(), partition: r.partition, offset: r.offset }
    }
}

/// A record that cannot be normalized: where it is and what is wrong with it.
/// Such records go to the dead-letter path; processing continues.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{position}: {kind}")]
pub struct NormalizeError {
    /// The record's position.
    pub position: RecordPosition,
    /// The configured source name, when the topic belongs to one.
    pub source_name: Option<String>,
    /// What is wrong.
    pub kind: NormalizeErrorKind,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormalizeErrorKind {
    /// The topic belongs to no configured source.
    #[error("no source is configured for this topic")]
    UnknownTopic,
    /// The value is not JSON, or not the expected shape.
    #[error("value is not a valid {format} record: {detail}")]
    BadValue {
        /// Expected format.
        format: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// The key is not JSON, or not an object.
    #[error("key is not a valid JSON object: {0}")]
    BadKey(String),
    /// No key could be found.
    #[error("missing key: the record has no key and no key_fields are configured")]
    MissingKey,
    /// The canonical key is longer than the state store takes.
    #[error("the key is {bytes} bytes, over the state store's limit of {limit} bytes")]
    KeyTooLarge {
        /// Length of the canonical key.
        bytes: usize,
        /// [`MAX_KEY_BYTES`](super::MAX_KEY_BYTES).
        limit: usize,
    },
    /// A configured key field is absent from the row.
    #[error("key field `{0}` is missing from the row")]
    MissingKeyField(String),
    /// The Debezium envelope has no `op`.
    #[error("missing `op` in the Debezium envelope")]
    MissingOp,
    /// An `op` Tributary does not handle.
    #[error("unsupported op `{0}` (expected c, u, r or d)")]
    UnsupportedOp(String),
    /// Truncate events cannot be merged per key.
    #[error("truncate events (op `t`) are not supported: a truncate has no key to merge; replay the table instead")]
    Truncate,
    /// An upsert without an `after` image.
    #[error("op `{0}` without an `after` row image")]
    MissingAfter(String),
    /// No commit time anywhere.
    #[error("no timestamp: source.ts_ms, ts_ms and the record timestamp are all missing")]
    MissingTimestamp,
    /// The configured timestamp field is bad.
    #[error("timestamp field `{path}`: {problem}")]
    BadTimestamp {
        /// Configured path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The configured sequence field is missing or not a positive integer.
    #[error("sequence field `{path}`: {problem}")]
    BadSequence {
        /// Configured path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The Avro payload names a schema id the registry does not have.
    #[error("{0}")]
    UnknownSchema(String),
    /// The schema registry cannot be reached: not the record's fault; the
    /// processor pauses and retries instead of dead-lettering.
    #[error("{0}")]
    RegistryUnavailable(String),
    /// The carried clock is missing or malformed.
    #[error("clock field `{field}`: {problem}")]
    BadClock {
        /// Configured column.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The source's `[sources.transform]` cannot map the record (a failing
    /// cast, a missing required column, a code without an entry).
    #[error("transform of source `{source_name}`: {error}")]
    Transform {
        /// The configured source.
        source_name: String,
        /// The column, its value and what is wrong (boxed: it would double
        /// the size of every normalize result).
        error: Box<crate::transform::TransformError>,
    },
    /// A record of a repartition topic without a readable origin: Tributary
    /// writes every one with its origin headers, so something else wrote it.
    #[error("repartition record: {0}")]
    BadOrigin(String),
}

impl NormalizeErrorKind {
    /// A short, bounded label for metrics (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownTopic => "unknown_topic",
            Self::BadValue { .. } => "bad_value",
            Self::BadKey(_) => "bad_key",
            Self::MissingKey | Self::MissingKeyField(_) => "missing_key",
            Self::KeyTooLarge { .. } => "key_too_large",
            Self::MissingOp | Self::UnsupportedOp(_) => "bad_op",
            Self::Truncate => "truncate",
            Self::MissingAfter(_) => "bad_value",
            Self::MissingTimestamp | Self::BadTimestamp { .. } => "bad_timestamp",
            Self::BadSequence { .. } => "bad_sequence",
            Self::BadClock { .. } => "bad_clock",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::RegistryUnavailable(_) => "registry_unavailable",
            Self::Transform { .. } => "transform",
            Self::BadOrigin(_) => "bad_origin",
        }
    }

    /// True when the record is not at fault and processing it later may
    /// succeed (the schema registry is unavailable).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::RegistryUnavailable(_))
    }
}
