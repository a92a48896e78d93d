//! Normalization: a source record (bytes from a topic) → a [`ChangeEvent`].
//!
//! Each input format is a small [`Format`] adapter that only parses its
//! envelope into a [`RawChange`]; everything the formats share — the
//! canonical key, derived or carried clocks, the timestamp fallback — lives
//! in [`SourceNormalizer`], so a new format is one new file.
//!
//! Here: the record a format reads and the interface it implements. The
//! steps every format shares are in `normalizer.rs`, the error a bad record
//! becomes in `error.rs`, Debezium's primary-key change headers in
//! `key_change.rs`.

mod debezium_avro;
mod debezium_json;
mod error;
mod flat_json;
mod key;
mod key_change;
mod normalizer;
mod origin;

use std::fmt;

pub(crate) use crate::json::json_kind;
use serde_json::Value;

use crate::merge::{ChangeEvent, ChangedColumns, LazyRow, Row};

pub use debezium_avro::DebeziumAvro;
pub use debezium_json::DebeziumJson;
pub use error::{NormalizeError, NormalizeErrorKind, RecordPosition};
pub use flat_json::FlatJson;
pub use key::MAX_KEY_BYTES;
#[cfg(test)]
use key::{already_canonical, canonicalize_key};
pub use key_change::{KeyChange, NEW_KEY_HEADER, OLD_KEY_HEADER};
pub use normalizer::SourceNormalizer;
pub use origin::{ORIGIN_KEY_HEADER, ORIGIN_OFFSET_HEADER, ORIGIN_PARTITION_HEADER, ORIGIN_TOPIC_HEADER};

/// One consumed record, whatever its origin (a broker, a dump file).
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Kafka record timestamp (ms), if any.
    pub timestamp: Option<i64>,
    /// Key bytes (`None` for a null key).
    pub key: Option<&'a [u8]>,
    /// Value bytes (`None` for a tombstone).
    pub value: Option<&'a [u8]>,
    /// The record's headers with a value, in order (`&[]` when it has none).
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// What normalizing a record gave.
#[derive(Debug, Clone, PartialEq)]
// Not boxed: nearly every record gives an event, consumed at once; a box
// would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Normalized {
    /// A change event to merge.
    Event(ChangeEvent),
    /// A Debezium tombstone (null value after a delete): nothing to do.
    Tombstone,
    /// The source's `where` filter dropped the record.
    Filtered,
}

/// How many records a source's `where` filter kept (`matched`) and dropped.
#[derive(Debug, Default)]
pub struct FilterCounts {
    /// Records the filter kept.
    pub matched: std::sync::atomic::AtomicU64,
    /// Records the filter dropped.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl FilterCounts {
    /// Takes the counts since the last call: (matched, dropped).
    pub fn take(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.matched.swap(0, Relaxed), self.dropped.swap(0, Relaxed))
    }
}

/// The kind of change as the source reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOp {
    /// Insert (`c`).
    Create,
    /// Update (`u`).
    Update,
    /// Snapshot read (`r`).
    Read,
    /// Delete (`d`).
    Delete,
}

/// A parsed envelope, before keys and clocks are worked out.
#[derive(Debug, Clone, PartialEq)]
pub struct RawChange {
    /// The change kind.
    pub op: RawOp,
    /// `before` image.
    pub before: Option<Row>,
    /// `after` image: a map, or its canonical text when the format decoded
    /// it so ([`Format::parse_text`]).
    pub after: Option<LazyRow>,
    /// The commit time the envelope carries, if any.
    pub ts: Option<i64>,
    /// The configured sequence field's value, if one is configured.
    pub sequence: Option<Value>,
    /// The canonical key, when the format decodes the record key itself
    /// (Avro); `None`: the record key is JSON text.
    pub key: Option<String>,
}

/// What [`Format::parse_lean`] gives: the parsed envelope, whose `before`
/// image may have been left out, and whether the record had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The parsed envelope.
    pub raw: RawChange,
    /// True when the record carried a `before` image (kept or not).
    pub had_before: bool,
    /// Which columns of the `after` image differ from the `before` image,
    /// when the format compared them itself ([`Format::parse_changes`]);
    /// `raw.before` then holds only the changed columns' before values.
    pub changed: Option<ChangedColumns>,
}

/// A format adapter: parses one record's value into a [`RawChange`].
pub trait Format: Send + Sync + fmt::Debug {
    /// The format's configuration name, for messages.
    fn name(&self) -> &'static str;
    /// Parses the value. `Ok(None)` is a tombstone to ignore.
    fn parse(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind>;
    /// As [`parse`](Format::parse), except that when `upsert_before` is false
    /// the `before` image of an upsert may be left out (`raw.before` is then
    /// `None`, `had_before` still tells). Deletes always keep it. Accepts and
    /// rejects exactly the records `parse` does, with the same errors.
    fn parse_lean(
        &self,
        record: &InputRecord<'_>,
        sequence: Option<&[String]>,
        upsert_before: bool,
    ) -> Result<Option<Parsed>, NormalizeErrorKind> {
        let _ = upsert_before;
        Ok(self.parse(record, sequence)?.map(|raw| Parsed { had_before: raw.before.is_some(), raw, changed: None }))
    }
    /// As [`parse_lean`](Format::parse_lean), except that the `after`
    /// image may come as its canonical JSON text instead of a map
    /// ([`CanonicalRow`](crate::merge::CanonicalRow)): for callers that read
    /// none of its columns before the merge. The same row either way.
    fn parse_text(
        &self,
        record: &InputRecord<'_>,
        sequence: Option<&[String]>,
        upsert_before: bool,
    ) -> Result<Option<Parsed>, NormalizeErrorKind> {
        self.parse_lean(record, sequence, upsert_before)
    }
    /// As [`parse_lean`](Format::parse_lean) with the `before` image kept,
    /// except that an update's `before` image may come compared with its
    /// `after` image ([`Parsed::changed`]): for `field-lww`, which reads
    /// an update's before values only to tell which columns it changed, and
    /// those of the changed columns. The same records accepted and rejected.
    fn parse_changes(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<Parsed>, NormalizeErrorKind> {
        self.parse_lean(record, sequence, true)
    }
    /// True when the format decodes the record key itself
    /// ([`RawChange::key`]); false: the key is the record key's JSON text.
    fn decodes_key(&self) -> bool {
        false
    }
    /// Where [`RawChange::ts`] comes from, for messages (inside backquotes).
    fn ts_path(&self) -> &str {
        "source.ts_ms` or `ts_ms"
    }
}

/// Looks up a dotted path (already split) in a JSON value.
pub(crate) fn lookup<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, segment| v.get(segment.as_str()))
}

#[cfg(test)]
mod key_change_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transform_tests;
