//! The merged output record (design §1, "Output record").

use crate::merge::Resolved;

/// Header carrying the merged clock as a JSON object.
pub const HEADER_VV: &str = "tributary.vv";
/// Header: `true` when concurrent versions are live.
pub const HEADER_CONFLICT: &str = "tributary.conflict";
/// Header: the winning source (row-level policies).
pub const HEADER_WINNER: &str = "tributary.winner";
/// Header: the number of versions in the set.
pub const HEADER_SIBLINGS: &str = "tributary.siblings";

/// One record for the compacted output topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Output partition: the partition number the input came from.
    pub partition: i32,
    /// The canonical key.
    pub key: String,
    /// The key as written, when it is not the canonical key's text (Avro).
    pub key_bytes: Option<Vec<u8>>,
    /// The merged row (flat JSON, or Confluent-framed Avro), or `None` for a
    /// tombstone.
    pub value: Option<Vec<u8>>,
    /// `tributary.*` headers, in a fixed order.
    pub headers: Vec<(&'static str, String)>,
    /// Record timestamp: the newest commit time in the key's version set.
    pub timestamp: i64,
}

/// Encodes a merged view as an output record (JSON value).
pub fn encode_owned(partition: i32, key: String, resolved: &Resolved<'_>, timestamp: i64) -> OutputRecord {
    let mut record = without_value(partition, key, resolved, timestamp);
    record.value = resolved.row.as_ref().map(|r| serde_json::to_vec(r.as_ref()).expect("rows serialize"));
    record
}

/// The record with its key, headers and timestamp but no value yet (the
/// caller encodes the row: Avro output).
pub fn without_value(partition: i32, key: String, resolved: &Resolved<'_>, timestamp: i64) -> OutputRecord {
    let value = None;
    let mut headers = Vec::with_capacity(4);
    headers.push((HEADER_VV, resolved.vv.to_json()));
    headers.push((HEADER_CONFLICT, String::from(if resolved.conflict() { "true" } else { "false" })));
    if let Some(w) = resolved.winner {
        headers.push((HEADER_WINNER, w.to_string()));
    }
    headers.push((HEADER_SIBLINGS, resolved.siblings.to_string()));
    OutputRecord { partition, key, key_bytes: None, value, headers, timestamp }
}

impl OutputRecord {
    /// The key bytes to write.
    pub fn key_bytes(&self) -> &[u8] {
        self.key_bytes.as_deref().unwrap_or(self.key.as_bytes())
    }

    /// The value as text (JSON output).
    pub fn value_text(&self) -> Option<&str> {
        self.value.as_deref().and_then(|v| std::str::from_utf8(v).ok())
    }
}
