//! The merged output record (design §1, "Output record").

use crate::merge::Resolved;
use crate::time::now_ms;

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
    /// Record timestamp: the newest commit time in the key's version set,
    /// or the current time when that is earlier (see [`record_timestamp`]).
    pub timestamp: i64,
}

/// Encodes a merged view as an output record (JSON value).
pub fn encode_owned(partition: i32, key: String, resolved: &Resolved<'_>, timestamp: i64) -> OutputRecord {
    let mut record = without_value(partition, key, resolved, timestamp);
    record.value = resolved.row.as_ref().map(|r| match r.json_text() {
        // A stored row's text is its serialization already (see `json_text`).
        Some(text) => text.as_bytes().to_vec(),
        None => serde_json::to_vec(&**r).expect("rows serialize"),
    });
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
    OutputRecord { partition, key, key_bytes: None, value, headers, timestamp: record_timestamp(timestamp, now_ms()) }
}

/// The timestamp to write for a key whose newest commit time is `newest`:
/// no later than `now`. The broker refuses a record timestamp more than
/// `message.timestamp.after.max.ms` ahead of its clock (one hour by default
/// since Kafka 4.0), and a refused output record aborts the transaction,
/// again at every retry: one commit time from a source whose clock runs
/// ahead would stall its partition for good.
fn record_timestamp(newest: i64, now: i64) -> i64 {
    newest.min(now)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{LazyRow, MergedClock, Op, Version, VersionVector};

    #[test]
    fn a_stored_row_is_written_as_its_text_without_parsing_it() {
        use crate::merge::{KeyState, MergeEngine, MergeSettings};
        let row = serde_json::json!({"id": 7, "name": "Zoë", "n": {"b": [1.5, null], "a": "\u{1}"}});
        let text = serde_json::to_string(&row).unwrap();
        let version = |row| Version { source: "eu".into(), vv: VersionVector::single("eu", 1), ts: 1, op: Op::Upsert, row };
        let engine = MergeEngine::new(MergeSettings::default());
        // Decoded from a state: the row is its text until used.
        let stored = KeyState { versions: vec![version(Some(LazyRow::from_json(&text).unwrap()))], fields: None };
        let out = encode_owned(0, "k".into(), &engine.resolve(&stored), 1);
        assert_eq!(out.value_text(), Some(text.as_str()));
        assert!(!stored.versions[0].row.as_ref().unwrap().is_parsed(), "the output did not parse the row");
        // The same row as a map gives the same bytes.
        let parsed = KeyState { versions: vec![version(Some(LazyRow::from(row.as_object().unwrap().clone())))], fields: None };
        assert_eq!(encode_owned(0, "k".into(), &engine.resolve(&parsed), 1).value, out.value);
        // With a clock column the row is copied and changed: the text is not used.
        let carried = MergeEngine::new(MergeSettings { clock_field: Some("_vv".into()), ..MergeSettings::default() });
        let out = encode_owned(0, "k".into(), &carried.resolve(&stored), 1);
        let written: serde_json::Value = serde_json::from_slice(out.value.as_ref().unwrap()).unwrap();
        assert_eq!(written["_vv"], serde_json::json!(r#"{"eu":1}"#));
        assert_eq!(written["name"], "Zoë");
    }

    #[test]
    fn a_commit_time_in_the_future_is_written_as_now() {
        assert_eq!(record_timestamp(1_000, 2_000), 1_000);
        assert_eq!(record_timestamp(3_000, 2_000), 2_000);
        let versions = [Version { source: "eu".into(), vv: VersionVector::single("eu", 1), ts: 1, op: Op::Delete, row: None }];
        let resolved = Resolved { row: None, vv: MergedClock::of(&versions), winner: None, siblings: 1 };
        let before = now_ms();
        let year_9999 = 253_402_300_799_999;
        let out = encode_owned(0, "k".into(), &resolved, year_9999);
        assert!((before..=now_ms()).contains(&out.timestamp), "{}", out.timestamp);
        assert_eq!(encode_owned(0, "k".into(), &resolved, 1_700_000_000_000).timestamp, 1_700_000_000_000);
    }
}
