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
//! of [`KeyState`]); [`decode_state`] still reads them, so existing stores and
//! changelogs keep working.
//!
//! Schema versions: version 2 added `FieldState.sets` (`union` columns) at
//! the end of `FieldState`, and version 3 (the file) `FieldState.counters`
//! (`counter` columns) after it. Values written with version 1 or 2 carry
//! its fingerprint ([`V1_FINGERPRINT`], [`V2_FINGERPRINT`]) and are still
//! read: the datum is the same up to the missing fields. Every value is
//! written with the newest.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::Serialize;
use serde_json::Value;

use super::binary::{read_bytes, read_long, write_len, write_long, write_str, ReadError};
use crate::merge::{
    ColumnWrite, CounterState, Delta, ElementVersions, FieldState, FieldVersion, KeyState, Op, Row, Tally, Version, VersionVector,
};

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

/// Initial buffer room per stored version: a source name, a small clock and a
/// row of a few hundred bytes of JSON, so most states encode without regrowing.
const RESERVE_PER_VERSION: usize = 256;

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

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Encodes a key state for the store and the changelog (single-object Avro).
pub fn encode_state(state: &KeyState) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + RESERVE_PER_VERSION * (state.versions.len() + 1));
    buf.extend_from_slice(&CHANGELOG.header);
    write_array(&mut buf, &state.versions, write_version);
    write_optional_field_state(&mut buf, state.fields.as_ref());
    buf
}

/// An Avro `string` holding compact JSON text. The JSON is serialized straight
/// into `buf` and its length prefix rotated in front of it afterwards, which
/// saves a scratch buffer and a copy per row.
fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    let start = buf.len();
    // Maps with string keys and JSON values always serialize, and writing to
    // a Vec cannot fail.
    serde_json::to_writer(&mut *buf, value).expect("JSON values serialize into a Vec");
    let json_len = buf.len() - start;
    write_len(buf, json_len);
    let prefix_len = buf.len() - start - json_len;
    buf[start..].rotate_right(prefix_len);
}

/// An Avro array as one block (count, items) and the terminating 0.
fn write_array<T>(buf: &mut Vec<u8>, items: &[T], mut write_item: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        write_len(buf, items.len());
        for item in items {
            write_item(buf, item);
        }
    }
    buf.push(0);
}

/// A version vector as an Avro `map<long>` (one block).
fn write_clock(buf: &mut Vec<u8>, clock: &VersionVector) {
    if !clock.is_empty() {
        write_len(buf, clock.iter().count());
        for (source, counter) in clock.iter() {
            write_str(buf, source);
            // Bit pattern, not a range check: see the module docs.
            write_long(buf, counter as i64);
        }
    }
    buf.push(0);
}

/// The enum `Op`: its symbol index.
fn write_op(buf: &mut Vec<u8>, op: Op) {
    write_long(buf, op_index(op));
}

/// The symbol index of `op` in `Op`'s `symbols`.
fn op_index(op: Op) -> i64 {
    match op {
        Op::Upsert => 0,
        Op::Delete => 1,
    }
}

/// `["null", "string"]` with the row as JSON text.
fn write_optional_row(buf: &mut Vec<u8>, row: Option<&Row>) {
    match row {
        None => write_long(buf, 0),
        Some(row) => {
            write_long(buf, 1);
            write_json(buf, row);
        }
    }
}

/// One `Version` record.
fn write_version(buf: &mut Vec<u8>, version: &Version) {
    write_str(buf, &version.source);
    write_clock(buf, &version.vv);
    write_long(buf, version.ts);
    write_op(buf, version.op);
    write_optional_row(buf, version.row.as_ref());
}

/// `["null", FieldState]`.
fn write_optional_field_state(buf: &mut Vec<u8>, fields: Option<&FieldState>) {
    match fields {
        None => write_long(buf, 0),
        Some(fields) => {
            write_long(buf, 1);
            write_field_state(buf, fields);
        }
    }
}

/// One `FieldState` record: `columns` (one map block) and `cleared`.
fn write_field_state(buf: &mut Vec<u8>, fields: &FieldState) {
    if !fields.fields.is_empty() {
        write_len(buf, fields.fields.len());
        for (column, writes) in &fields.fields {
            write_str(buf, column);
            write_array(buf, writes, |buf, w| write_column_write(buf, fields, w));
        }
    }
    buf.push(0);
    write_array(buf, &fields.cleared, write_clock);
    if !fields.sets.is_empty() {
        write_len(buf, fields.sets.len());
        for (column, set) in &fields.sets {
            write_str(buf, column);
            write_array(buf, &set.adds, |buf, w| write_column_write(buf, fields, w));
            write_array(buf, &set.removes, |buf, w| write_column_write(buf, fields, w));
        }
    }
    buf.push(0);
    if !fields.counters.is_empty() {
        write_len(buf, fields.counters.len());
        for (column, counter) in &fields.counters {
            write_str(buf, column);
            write_counter(buf, counter);
        }
    }
    buf.push(0);
}

/// One `CounterState` record: `creates` and `tallies` (one map block).
fn write_counter(buf: &mut Vec<u8>, counter: &CounterState) {
    write_array(buf, &counter.creates, write_field_version);
    if !counter.tallies.is_empty() {
        write_len(buf, counter.tallies.len());
        for (source, tally) in &counter.tallies {
            write_str(buf, source);
            write_clock(buf, &tally.seen);
            buf.push(u8::from(tally.deleted));
            write_array(buf, &tally.deltas, |buf, d: &Delta| {
                // Bit pattern, as clock counters.
                write_long(buf, d.at as i64);
                write_str(buf, &d.amount);
            });
        }
    }
    buf.push(0);
}

/// A column write (or set operation) as the `FieldVersion` record of its
/// event and value.
fn write_column_write(buf: &mut Vec<u8>, fields: &FieldState, w: &ColumnWrite) {
    let stamp = fields.stamp(w);
    write_str(buf, &stamp.source);
    write_clock(buf, &stamp.vv);
    write_long(buf, stamp.ts);
    write_json(buf, &w.value);
}

/// One `FieldVersion` record.
fn write_field_version(buf: &mut Vec<u8>, write: &FieldVersion) {
    write_str(buf, &write.source);
    write_clock(buf, &write.vv);
    write_long(buf, write.ts);
    write_json(buf, &write.value);
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes a key state from the store or the changelog: single-object Avro,
/// or the legacy JSON encoding (a value starting with `{`).
pub fn decode_state(bytes: &[u8]) -> Result<KeyState, StateDecodeError> {
    if bytes.starts_with(&SINGLE_OBJECT_MARKER) {
        decode_single_object(bytes)
    } else if bytes.starts_with(b"{") {
        serde_json::from_slice(bytes).map_err(StateDecodeError::LegacyJson)
    } else if bytes.is_empty() {
        Err(StateDecodeError::Empty)
    } else {
        Err(StateDecodeError::UnknownFormat { found: bytes[..bytes.len().min(HEADER_LEN)].to_vec() })
    }
}

/// Checks that `bytes` are a key state this version reads (a known header:
/// single-object marker and a fingerprint of schema version 1, 2 or 3, or
/// the legacy JSON encoding) without decoding the datum: for a restore that
/// stores changelog values as they are and decodes them when read.
pub fn check_state_header(bytes: &[u8]) -> Result<(), StateDecodeError> {
    if bytes.starts_with(b"{") {
        return Ok(());
    }
    if bytes.is_empty() {
        return Err(StateDecodeError::Empty);
    }
    if !bytes.starts_with(&SINGLE_OBJECT_MARKER) {
        return Err(StateDecodeError::UnknownFormat { found: bytes[..bytes.len().min(HEADER_LEN)].to_vec() });
    }
    let Some(found) = bytes.get(2..HEADER_LEN) else {
        return Err(StateDecodeError::Truncated { what: "the single-object header", offset: 0 });
    };
    if found == &CHANGELOG.header[2..] || found == V2_FINGERPRINT || found == V1_FINGERPRINT {
        return Ok(());
    }
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(found);
    Err(StateDecodeError::UnknownFingerprint { found: fingerprint, expected: changelog_fingerprint() })
}

/// Checks the header's fingerprint, then reads the datum, which must fill the
/// rest of the value.
fn decode_single_object(bytes: &[u8]) -> Result<KeyState, StateDecodeError> {
    let Some(found) = bytes.get(2..HEADER_LEN) else {
        return Err(StateDecodeError::Truncated { what: "the single-object header", offset: 0 });
    };
    let version = if found == &CHANGELOG.header[2..] {
        SchemaVersion::V3
    } else if found == V2_FINGERPRINT {
        SchemaVersion::V2
    } else if found == V1_FINGERPRINT {
        SchemaVersion::V1
    } else {
        let mut fingerprint = [0; 8];
        fingerprint.copy_from_slice(found);
        return Err(StateDecodeError::UnknownFingerprint { found: fingerprint, expected: changelog_fingerprint() });
    };
    let mut reader = Reader { bytes, pos: HEADER_LEN };
    let state = read_key_state(&mut reader, version)?;
    if reader.pos != bytes.len() {
        return Err(StateDecodeError::TrailingBytes { offset: reader.pos, count: bytes.len() - reader.pos });
    }
    Ok(state)
}

/// The schema version a value was written with.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SchemaVersion {
    /// Without `FieldState.sets` and `FieldState.counters`.
    V1,
    /// Without `FieldState.counters`.
    V2,
    /// `schemas/changelog-state.avsc`.
    V3,
}

/// A cursor over one value. Offsets in errors count from the value's first
/// byte (the marker), so they match a hex dump of the record.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// One block of an array or map.
struct Block {
    /// Items in the block.
    count: usize,
    /// Where the block must end, when its header gave a byte size.
    end: Option<usize>,
}

type Decoded<T> = Result<T, StateDecodeError>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(what: &'static str, offset: usize) -> StateDecodeError {
        StateDecodeError::Truncated { what, offset }
    }

    fn malformed(what: &'static str, offset: usize, problem: &'static str) -> StateDecodeError {
        StateDecodeError::Malformed { what, offset, problem }
    }

    /// The error for `e` met reading `what` at the current position (where
    /// the primitive started).
    fn error(&self, what: &'static str, e: ReadError) -> StateDecodeError {
        match e {
            ReadError::Truncated => Self::truncated(what, self.pos),
            ReadError::TooLong => Self::malformed(what, self.pos, "varint does not fit 64 bits"),
            ReadError::NegativeLength => Self::malformed(what, self.pos, "negative length"),
        }
    }

    /// An Avro `long`.
    fn long(&mut self, what: &'static str) -> Decoded<i64> {
        read_long(self.bytes, &mut self.pos).map_err(|e| self.error(what, e))
    }

    /// Length-prefixed bytes, borrowed from the value.
    fn bytes(&mut self, what: &'static str) -> Decoded<&'a [u8]> {
        read_bytes(self.bytes, &mut self.pos).map_err(|e| self.error(what, e))
    }

    /// An Avro `string`, borrowed from the value.
    fn str(&mut self, what: &'static str) -> Decoded<&'a str> {
        let start = self.pos;
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| Self::malformed(what, start, "string is not valid UTF-8"))
    }

    /// An Avro `string` holding JSON text, parsed.
    fn json<T: serde::de::DeserializeOwned>(&mut self, what: &'static str) -> Decoded<T> {
        let start = self.pos;
        // serde_json checks UTF-8 itself while parsing.
        let text = self.bytes(what)?;
        serde_json::from_slice(text).map_err(|source| StateDecodeError::Json { what, offset: start, source })
    }

    /// A union or enum index in `0..=max`.
    fn index(&mut self, what: &'static str, max: i64) -> Decoded<i64> {
        let start = self.pos;
        let index = self.long(what)?;
        if !(0..=max).contains(&index) {
            return Err(StateDecodeError::BadIndex { what, offset: start, index });
        }
        Ok(index)
    }

    /// An Avro `boolean`: one byte, 0 or 1.
    fn boolean(&mut self, what: &'static str) -> Decoded<bool> {
        let start = self.pos;
        let Some(&byte) = self.bytes.get(self.pos) else { return Err(Self::truncated(what, start)) };
        self.pos += 1;
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Self::malformed(what, start, "a boolean is the byte 0 or 1")),
        }
    }

    /// The branch of a `["null", T]` union: true when `T` follows.
    fn present(&mut self, what: &'static str) -> Decoded<bool> {
        Ok(self.index(what, 1)? == 1)
    }

    /// One block header of an array or map; `None` at the terminating 0.
    /// A negative count means "this many items, and the block's size in bytes
    /// follows" (so readers can skip blocks); the size is checked, not used.
    fn block(&mut self, what: &'static str) -> Decoded<Option<Block>> {
        let start = self.pos;
        let count = self.long(what)?;
        let end = if count < 0 {
            let size_at = self.pos;
            let size = self.long(what)?;
            let size = usize::try_from(size).map_err(|_| Self::malformed(what, size_at, "negative block size"))?;
            if size > self.remaining() {
                return Err(Self::truncated(what, start));
            }
            Some(self.pos + size)
        } else {
            None
        };
        let count = usize::try_from(count.unsigned_abs()).map_err(|_| Self::malformed(what, start, "block count overflows"))?;
        // Every item takes at least one byte, so a larger count cannot be
        // complete; checking here also bounds the capacity callers reserve.
        if count > self.remaining() {
            return Err(Self::truncated(what, start));
        }
        Ok((count > 0).then_some(Block { count, end }))
    }

    /// After a block's items: a block that declared its size must end exactly there.
    fn block_end(&self, what: &'static str, block: &Block) -> Decoded<()> {
        match block.end {
            Some(end) if end != self.pos => Err(Self::malformed(what, self.pos, "block size disagrees with the block's items")),
            _ => Ok(()),
        }
    }

    /// Reads every item of a map (or an array read for its side effects),
    /// across as many blocks as there are.
    fn blocks(&mut self, what: &'static str, mut read_item: impl FnMut(&mut Self) -> Decoded<()>) -> Decoded<()> {
        while let Some(block) = self.block(what)? {
            for _ in 0..block.count {
                read_item(self)?;
            }
            self.block_end(what, &block)?;
        }
        Ok(())
    }

    /// An Avro array into a `Vec`, across as many blocks as there are.
    fn array<T>(&mut self, what: &'static str, mut read_item: impl FnMut(&mut Self) -> Decoded<T>) -> Decoded<Vec<T>> {
        let mut items = Vec::new();
        while let Some(block) = self.block(what)? {
            items.reserve(block.count);
            for _ in 0..block.count {
                items.push(read_item(self)?);
            }
            self.block_end(what, &block)?;
        }
        Ok(items)
    }

    /// An Avro `map<long>` into a version vector (zero counters are dropped,
    /// as everywhere else).
    fn clock(&mut self, what: &'static str) -> Decoded<VersionVector> {
        let mut clock = VersionVector::new();
        self.blocks(what, |r| {
            let source = r.str(what)?;
            let counter = r.long(what)?;
            // Bit pattern back to the counter: see the module docs.
            clock.set(source, counter as u64);
            Ok(())
        })?;
        Ok(clock)
    }

    /// The enum `Op`.
    fn op(&mut self, what: &'static str) -> Decoded<Op> {
        Ok(match self.index(what, 1)? {
            0 => Op::Upsert,
            _ => Op::Delete,
        })
    }
}

/// The `KeyState` record.
fn read_key_state(r: &mut Reader<'_>, version: SchemaVersion) -> Decoded<KeyState> {
    let versions = r.array("versions", read_version)?;
    let fields = if r.present("fields")? { Some(read_field_state(r, version)?) } else { None };
    Ok(KeyState { versions, fields })
}

/// One `Version` record.
fn read_version(r: &mut Reader<'_>) -> Decoded<Version> {
    let source = r.str("a version's source")?.to_owned();
    let vv = r.clock("a version's clock")?;
    let ts = r.long("a version's ts")?;
    let op = r.op("a version's op")?;
    let row = if r.present("a version's row")? { Some(r.json::<Row>("a version's row")?) } else { None };
    Ok(Version { source, vv, ts, op, row })
}

/// One `FieldState` record.
fn read_field_state(r: &mut Reader<'_>, version: SchemaVersion) -> Decoded<FieldState> {
    let mut columns = BTreeMap::new();
    r.blocks("fields.columns", |r| {
        let column = r.str("a column name")?.to_owned();
        let writes = r.array("a column's writes", read_field_version)?;
        columns.insert(column, writes);
        Ok(())
    })?;
    let cleared = r.array("fields.cleared", |r| r.clock("a cleared clock"))?;
    let mut sets = BTreeMap::new();
    if version >= SchemaVersion::V2 {
        r.blocks("fields.sets", |r| {
            let column = r.str("a union column's name")?.to_owned();
            let adds = r.array("a union column's additions", read_field_version)?;
            let removes = r.array("a union column's removals", read_field_version)?;
            sets.insert(column, ElementVersions { adds, removes });
            Ok(())
        })?;
    }
    let mut counters = BTreeMap::new();
    if version >= SchemaVersion::V3 {
        r.blocks("fields.counters", |r| {
            let column = r.str("a counter column's name")?.to_owned();
            counters.insert(column, read_counter(r)?);
            Ok(())
        })?;
    }
    Ok(FieldState { cleared, counters, ..FieldState::with_writes(columns, sets) })
}

/// One `CounterState` record.
fn read_counter(r: &mut Reader<'_>) -> Decoded<CounterState> {
    let creates = r.array("a counter column's creates", read_field_version)?;
    let mut tallies = BTreeMap::new();
    r.blocks("a counter column's tallies", |r| {
        let source = r.str("a tally's source")?.to_owned();
        let seen = r.clock("a tally's seen clock")?;
        let deleted = r.boolean("a tally's deleted flag")?;
        let deltas = r.array("a tally's deltas", |r| {
            let at = r.long("a delta's at")? as u64;
            let amount = r.str("a delta's amount")?.to_owned();
            Ok(Delta { at, amount })
        })?;
        tallies.insert(source, Tally { seen, deleted, deltas });
        Ok(())
    })?;
    Ok(CounterState { creates, tallies })
}

/// One `FieldVersion` record.
fn read_field_version(r: &mut Reader<'_>) -> Decoded<FieldVersion> {
    let source = r.str("a column write's source")?.to_owned();
    let vv = r.clock("a column write's clock")?;
    let ts = r.long("a column write's ts")?;
    let value = r.json::<Value>("a column write's value")?;
    Ok(FieldVersion { source, vv, ts, value })
}

#[cfg(test)]
mod tests;
