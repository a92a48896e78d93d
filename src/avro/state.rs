//! The changelog/store encoding of key states: Avro single-object encoding
//! of `schemas/changelog-state.avsc`.
//!
//! Every change of a key writes its whole state to the local store and to the
//! compacted changelog topic, so this encoding sits on the hot path. The datum
//! is therefore written and read by hand (zig-zag varints, length-prefixed
//! strings, array/map blocks) into one buffer, not through a generic Avro
//! value tree. The schema file is still what defines the bytes: it is parsed
//! once at start-up and its fingerprint goes into every header, so anyone can
//! read the changelog with standard Avro tools.
//!
//! Layout of one value (the Avro specification's single-object encoding):
//!
//! | bytes | content |
//! | --- | --- |
//! | 0–1 | the marker `C3 01` |
//! | 2–9 | the CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, little-endian |
//! | 10– | the binary datum of `io.tributary.state.KeyState` |
//!
//! Choices within the datum:
//!
//! - The enum `Op` uses the lower-case symbols `upsert` and `delete`, spelled
//!   as in Tributary's JSON records.
//! - Rows and column values are dynamic, so they are compact JSON text in
//!   Avro strings.
//! - Clock counters are `u64` in Rust and Avro `long`s on the wire: a counter
//!   above `i64::MAX` (never produced in practice: Kafka offsets and LSNs fit)
//!   is written as its two's-complement bit pattern, so every value round-trips.
//! - The encoder writes each non-empty array or map as one block with a
//!   positive count, then the terminating 0. The decoder accepts anything the
//!   specification allows: several blocks, and negative counts followed by
//!   the block's size in bytes.
//!
//! Values written before this encoding existed are JSON objects (serde_json
//! of [`KeyState`](crate::merge::KeyState)); [`decode_state`] still reads them, so existing stores and
//! changelogs keep working.
//!
//! Schema versions: version 2 added `FieldState.sets` (`union` columns) at
//! the end of `FieldState`, and version 3 (the file) `FieldState.counters`
//! (`counter` columns) after it. Values written with version 1 or 2 carry
//! its fingerprint ([`V1_FINGERPRINT`], [`V2_FINGERPRINT`]) and are still
//! read: the datum is the same up to the missing fields. Every value is
//! written with the newest.
//!
//! The files: here the schema, its fingerprints and the errors; the writer in
//! `encode.rs`; the cursor over a value's Avro primitives, which puts the
//! byte offset into every error, in `reader.rs`; the records read with it in
//! `decode.rs`.

mod decode;
mod encode;
mod reader;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde_json::Value;

pub use decode::{check_state_header, decode_state, keep_row_texts};
pub use encode::{encode_state, encode_state_knowing};

/// The changelog state schema (`schemas/changelog-state.avsc`), as compiled in.
pub const CHANGELOG_SCHEMA_JSON: &str = include_str!("../../schemas/changelog-state.avsc");

/// The two bytes that open every Avro single-object encoded value.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// The fingerprint of version 1 of the schema (without `FieldState.sets`),
/// whose values are still read.
pub const V1_FINGERPRINT: [u8; 8] = [0xB0, 0x0D, 0x8D, 0x39, 0x80, 0x81, 0x58, 0x37];

/// The fingerprint of version 2 of the schema (without `FieldState.counters`),
/// whose values are still read.
pub const V2_FINGERPRINT: [u8; 8] = [0x7D, 0x35, 0xE8, 0xC9, 0xD1, 0x4F, 0x06, 0xC0];

/// Marker plus fingerprint: the datum starts at this offset.
pub const HEADER_LEN: usize = 10;
/// The parsed schema and the header derived from it, computed once.
struct Changelog {
    schema: Schema,
    header: [u8; HEADER_LEN],
}

static CHANGELOG: LazyLock<Changelog> = LazyLock::new(|| {
    // The file is compiled in and its validity is tested, so a failure here
    // is a build defect, not bad input.
    let schema = Schema::parse_str(CHANGELOG_SCHEMA_JSON).expect("schemas/changelog-state.avsc is a valid Avro schema");
    let header = single_object_header(&spec_fingerprint(CHANGELOG_SCHEMA_JSON));
    Changelog { schema, header }
});

/// The marker followed by the fingerprint.
fn single_object_header(fingerprint: &[u8; 8]) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..2].copy_from_slice(&SINGLE_OBJECT_MARKER);
    header[2..].copy_from_slice(fingerprint);
    header
}

/// The CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, as the
/// Avro specification defines it (and Java, Python and fastavro compute it).
///
/// apache-avro 0.22's canonical form renders a primitive with a logical type
/// as `{"type":"long"}` where the specification's [PRIMITIVES] rule gives
/// `"long"`, so its fingerprint of this schema (which has `timestamp-millis`
/// fields) disagrees with every other implementation. The canonical form
/// drops logical types anyway ([STRIP]), so fingerprinting the schema parsed
/// without them yields the specification's value through apache-avro's own
/// fingerprint API.
fn spec_fingerprint(schema_json: &str) -> [u8; 8] {
    let mut json: Value = serde_json::from_str(schema_json).expect("schema files are JSON");
    remove_logical_types(&mut json);
    let plain = Schema::parse(&json).expect("a valid schema stays valid without its logical types");
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(&plain.fingerprint::<Rabin>().bytes);
    fingerprint
}

/// Removes every `logicalType` attribute from a schema's JSON.
fn remove_logical_types(json: &mut Value) {
    match json {
        Value::Object(map) => {
            map.remove("logicalType");
            map.values_mut().for_each(remove_logical_types);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_logical_types),
        _ => {}
    }
}

/// The parsed changelog state schema (for tools and tests that read the
/// changelog generically).
pub fn changelog_schema() -> &'static Schema {
    &CHANGELOG.schema
}

/// The 8 fingerprint bytes every encoded state carries after the marker.
pub fn changelog_fingerprint() -> [u8; 8] {
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(&CHANGELOG.header[2..]);
    fingerprint
}

/// Why a stored or changelog value is not a key state.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    /// The value has no bytes at all.
    #[error("empty value: neither an Avro single-object encoded key state nor a legacy JSON key state")]
    Empty,
    /// The value starts with neither the single-object marker nor `{`.
    #[error("not a key state: expected the Avro single-object marker C3 01 or a legacy JSON object, found bytes {}", hex(.found))]
    UnknownFormat {
        /// Up to the first 10 bytes of the value.
        found: Vec<u8>,
    },
    /// The value is single-object encoded with a schema this build does not know.
    #[error(
        "Avro single-object value written with an unknown schema (fingerprint {}); this build reads schemas/changelog-state.avsc (fingerprint {}) and its versions 1 (fingerprint {}) and 2 (fingerprint {})",
        hex(.found),
        hex(.expected),
        hex(&V1_FINGERPRINT),
        hex(&V2_FINGERPRINT)
    )]
    UnknownFingerprint {
        /// The fingerprint in the value's header, in wire order.
        found: [u8; 8],
        /// The fingerprint of the compiled-in schema, in wire order.
        expected: [u8; 8],
    },
    /// The value ends before the datum does.
    #[error("truncated value: it ends inside {what} (which starts at byte {offset})")]
    Truncated {
        /// The part of the state being read.
        what: &'static str,
        /// Byte offset in the value where that part starts.
        offset: usize,
    },
    /// The bytes are not a valid encoding of the part being read.
    #[error("malformed {what} at byte {offset}: {problem}")]
    Malformed {
        /// The part of the state being read.
        what: &'static str,
        /// Byte offset in the value.
        offset: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A union branch or enum symbol index outside the schema.
    #[error("malformed {what} at byte {offset}: index {index} is not one the schema defines")]
    BadIndex {
        /// The union or enum being read.
        what: &'static str,
        /// Byte offset in the value.
        offset: usize,
        /// The index found.
        index: i64,
    },
    /// A row or column value's JSON text does not parse.
    #[error("the JSON text of {what} at byte {offset} does not parse: {source}")]
    Json {
        /// The part of the state being read.
        what: &'static str,
        /// Byte offset in the value where the text starts.
        offset: usize,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// Bytes are left over after a complete datum.
    #[error("{count} unexpected bytes after the end of the key state datum at byte {offset}")]
    TrailingBytes {
        /// Byte offset where the datum ended.
        offset: usize,
        /// How many bytes follow it.
        count: usize,
    },
    /// A legacy (JSON) value does not decode.
    #[error("legacy JSON key state does not decode: {0}")]
    LegacyJson(#[source] serde_json::Error),
}

/// Bytes as space-separated upper-case hex, the way `xxd`-style dumps show them.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(" ")
}
