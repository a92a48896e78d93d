//! Debezium's headers on the two halves of a primary-key change, read so the
//! halves can be told apart in the metric and the logs. Apart from the
//! normalizer because they change nothing in the events: the halves merge as
//! the plain delete and create they are.

use super::key::canonicalize_key;
use super::InputRecord;

/// Debezium's header on the delete half of a primary-key change: the row's
/// new key.
pub const NEW_KEY_HEADER: &str = "__debezium.newkey";
/// Debezium's header on the create half of a primary-key change: the row's
/// old key.
pub const OLD_KEY_HEADER: &str = "__debezium.oldkey";

/// A record's part in a primary-key change. Debezium sends `UPDATE … SET id =
/// …` as a delete of the old key (header [`NEW_KEY_HEADER`]), a tombstone of
/// the old key, and a create of the new key (header [`OLD_KEY_HEADER`]). The
/// two halves have different keys and merge as the plain delete and create
/// they are; this only tells them apart, for the metric and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The delete of the old key.
    OldKeyDeleted {
        /// The key the row moved to: canonical JSON when the header holds a
        /// JSON object, else the header text as sent.
        new_key: String,
    },
    /// The create of the new key.
    NewKeyCreated {
        /// The key the row had (as `new_key` above).
        old_key: String,
    },
}

impl InputRecord<'_> {
    /// The record's part in a primary-key change, read from Debezium's
    /// headers; `None` for every other record.
    pub fn key_change(&self) -> Option<KeyChange> {
        // Most records have no headers at all: nothing to search.
        self.headers.iter().rev().find_map(|(name, value)| match *name {
            OLD_KEY_HEADER => Some(KeyChange::NewKeyCreated { old_key: header_key(value) }),
            NEW_KEY_HEADER => Some(KeyChange::OldKeyDeleted { new_key: header_key(value) }),
            _ => None,
        })
    }
}

/// A key header's value as canonical key text where it is a JSON object (the
/// JSON header converter, with or without its schema wrapper), else as sent:
/// Kafka Connect's default `SimpleHeaderConverter` writes a key struct as
/// text such as `Struct{id=200}`.
fn header_key(value: &[u8]) -> String {
    canonicalize_key(value).unwrap_or_else(|_| String::from_utf8_lossy(value).into_owned())
}
