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
use crate::merge::{CounterState, Delta, ElementSet, FieldState, FieldVersion, KeyState, Op, Row, Tally, Version, VersionVector};

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
            write_array(buf, writes, write_field_version);
        }
    }
    buf.push(0);
    write_array(buf, &fields.cleared, write_clock);
    if !fields.sets.is_empty() {
        write_len(buf, fields.sets.len());
        for (column, set) in &fields.sets {
            write_str(buf, column);
            write_array(buf, &set.adds, write_field_version);
            write_array(buf, &set.removes, write_field_version);
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
            sets.insert(column, ElementSet { adds, removes });
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
    Ok(FieldState { fields: columns, cleared, sets, counters, ..FieldState::default() })
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
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value as Avro;
    use apache_avro::writer::datum::GenericDatumWriter;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    // --- Fixtures -----------------------------------------------------------

    fn clock(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn row(value: serde_json::Value) -> Row {
        match value {
            Value::Object(map) => map,
            other => panic!("not a row: {other}"),
        }
    }

    fn upsert(source: &str, vv: VersionVector, ts: i64, r: serde_json::Value) -> Version {
        Version { source: source.into(), vv, ts, op: Op::Upsert, row: Some(row(r)) }
    }

    fn delete(source: &str, vv: VersionVector, ts: i64) -> Version {
        Version { source: source.into(), vv, ts, op: Op::Delete, row: None }
    }

    /// A state with every part of the schema populated.
    fn sample() -> KeyState {
        let mut columns = BTreeMap::new();
        columns.insert(
            "name".to_string(),
            vec![
                FieldVersion { source: "eu".into(), vv: clock(&[("eu", 3)]), ts: 1_700_000_000_000, value: json!("Zoë") },
                FieldVersion { source: "us".into(), vv: clock(&[("us", 9)]), ts: 1_700_000_000_001, value: json!(null) },
            ],
        );
        columns.insert(
            "tags".to_string(),
            vec![FieldVersion { source: "eu".into(), vv: clock(&[("eu", 2)]), ts: -5, value: json!({"a": [1, 2.5, true]}) }],
        );
        KeyState {
            versions: vec![
                upsert(
                    "eu",
                    clock(&[("eu", 3), ("us", 1)]),
                    1_700_000_000_000,
                    json!({"id": 42, "name": "Zoë", "n": {"x": [1, null]}}),
                ),
                delete("us", clock(&[("us", u64::MAX)]), 1_699_999_999_999),
                upsert("ap", clock(&[]), i64::MIN, json!({})),
            ],
            fields: Some(FieldState {
                fields: columns,
                cleared: vec![clock(&[("us", 7)]), clock(&[("eu", 1), ("ap", 1)])],
                sets: sample_sets(),
                counters: sample_counters(),
                ..FieldState::default()
            }),
        }
    }

    fn sample_counters() -> BTreeMap<String, CounterState> {
        let create = FieldVersion { source: "eu".into(), vv: clock(&[("eu", 1)]), ts: 3, value: json!(100) };
        let tally = |seen: VersionVector, deleted: bool, deltas: &[(u64, &str)]| Tally {
            seen,
            deleted,
            deltas: deltas.iter().map(|(at, amount)| Delta { at: *at, amount: amount.to_string() }).collect(),
        };
        let mut tallies = BTreeMap::new();
        tallies.insert("eu".to_string(), tally(clock(&[("eu", 4), ("us", 2)]), false, &[(2, "-12.50"), (4, "3")]));
        tallies.insert("us".to_string(), tally(clock(&[("us", u64::MAX)]), true, &[]));
        let mut counters = BTreeMap::new();
        counters.insert("points".to_string(), CounterState { creates: vec![create], tallies });
        counters.insert("idle".to_string(), CounterState::default());
        counters
    }

    fn sample_sets() -> BTreeMap<String, ElementSet> {
        let write =
            |source: &str, vv: VersionVector, value: serde_json::Value| FieldVersion { source: source.into(), vv, ts: 7, value };
        let mut sets = BTreeMap::new();
        sets.insert(
            "labels".to_string(),
            ElementSet {
                adds: vec![write("eu", clock(&[("eu", 1)]), json!("vip")), write("us", clock(&[("us", 2)]), json!(3))],
                removes: vec![write("us", clock(&[("eu", 1), ("us", 3)]), json!("vip"))],
            },
        );
        sets.insert("empty".to_string(), ElementSet::default());
        sets
    }

    // --- apache-avro's generic view of a state --------------------------------

    fn avro_clock(vv: &VersionVector) -> Avro {
        Avro::Map(vv.iter().map(|(k, v)| (k.to_string(), Avro::Long(v as i64))).collect())
    }

    fn avro_optional(value: Option<Avro>) -> Avro {
        match value {
            None => Avro::Union(0, Box::new(Avro::Null)),
            Some(v) => Avro::Union(1, Box::new(v)),
        }
    }

    fn avro_version(v: &Version) -> Avro {
        Avro::Record(vec![
            ("source".into(), Avro::String(v.source.clone())),
            ("clock".into(), avro_clock(&v.vv)),
            ("ts".into(), Avro::TimestampMillis(v.ts)),
            ("op".into(), Avro::Enum(op_index(v.op) as u32, if v.op == Op::Upsert { "upsert" } else { "delete" }.into())),
            ("row".into(), avro_optional(v.row.as_ref().map(|r| Avro::String(serde_json::to_string(r).unwrap())))),
        ])
    }

    fn avro_field_version(w: &FieldVersion) -> Avro {
        Avro::Record(vec![
            ("source".into(), Avro::String(w.source.clone())),
            ("clock".into(), avro_clock(&w.vv)),
            ("ts".into(), Avro::TimestampMillis(w.ts)),
            ("value".into(), Avro::String(w.value.to_string())),
        ])
    }

    fn avro_counter(counter: &CounterState) -> Avro {
        let tally = |t: &Tally| {
            let deltas = t
                .deltas
                .iter()
                .map(|d| {
                    Avro::Record(vec![("at".into(), Avro::Long(d.at as i64)), ("amount".into(), Avro::String(d.amount.clone()))])
                })
                .collect();
            Avro::Record(vec![
                ("seen".into(), avro_clock(&t.seen)),
                ("deleted".into(), Avro::Boolean(t.deleted)),
                ("deltas".into(), Avro::Array(deltas)),
            ])
        };
        Avro::Record(vec![
            ("creates".into(), Avro::Array(counter.creates.iter().map(avro_field_version).collect())),
            ("tallies".into(), Avro::Map(counter.tallies.iter().map(|(s, t)| (s.clone(), tally(t))).collect())),
        ])
    }

    fn from_avro_counter(value: &Avro) -> CounterState {
        let r = record(value);
        let tallies = match r["tallies"] {
            Avro::Map(m) => m
                .iter()
                .map(|(source, t)| {
                    let t = record(t);
                    let deltas = from_avro_array(t["deltas"])
                        .iter()
                        .map(|d| {
                            let d = record(d);
                            let Avro::Long(at) = d["at"] else { panic!("not a long: {:?}", d["at"]) };
                            Delta { at: *at as u64, amount: from_avro_string(d["amount"]).to_owned() }
                        })
                        .collect();
                    let Avro::Boolean(deleted) = t["deleted"] else { panic!("not a boolean: {:?}", t["deleted"]) };
                    (source.clone(), Tally { seen: from_avro_clock(t["seen"]), deleted: *deleted, deltas })
                })
                .collect(),
            other => panic!("not a map: {other:?}"),
        };
        CounterState { creates: from_avro_array(r["creates"]).iter().map(from_avro_field_version).collect(), tallies }
    }

    fn to_avro(state: &KeyState) -> Avro {
        let fields = state.fields.as_ref().map(|f| {
            Avro::Record(vec![
                (
                    "columns".into(),
                    Avro::Map(
                        f.fields
                            .iter()
                            .map(|(c, ws)| (c.clone(), Avro::Array(ws.iter().map(avro_field_version).collect())))
                            .collect(),
                    ),
                ),
                ("cleared".into(), Avro::Array(f.cleared.iter().map(avro_clock).collect())),
                (
                    "sets".into(),
                    Avro::Map(
                        f.sets
                            .iter()
                            .map(|(c, set)| {
                                let set = Avro::Record(vec![
                                    ("adds".into(), Avro::Array(set.adds.iter().map(avro_field_version).collect())),
                                    ("removes".into(), Avro::Array(set.removes.iter().map(avro_field_version).collect())),
                                ]);
                                (c.clone(), set)
                            })
                            .collect(),
                    ),
                ),
                (
                    "counters".into(),
                    Avro::Map(f.counters.iter().map(|(c, counter)| (c.clone(), avro_counter(counter))).collect()),
                ),
            ])
        });
        Avro::Record(vec![
            ("versions".into(), Avro::Array(state.versions.iter().map(avro_version).collect())),
            ("fields".into(), avro_optional(fields)),
        ])
    }

    fn record(value: &Avro) -> HashMap<&str, &Avro> {
        match value {
            Avro::Record(fields) => fields.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            other => panic!("not a record: {other:?}"),
        }
    }

    fn from_avro_clock(value: &Avro) -> VersionVector {
        match value {
            Avro::Map(m) => m
                .iter()
                .map(|(k, v)| match v {
                    Avro::Long(n) => (k.clone(), *n as u64),
                    other => panic!("not a long: {other:?}"),
                })
                .collect(),
            other => panic!("not a map: {other:?}"),
        }
    }

    fn from_avro_string(value: &Avro) -> &str {
        match value {
            Avro::String(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    fn from_avro_ts(value: &Avro) -> i64 {
        match value {
            Avro::TimestampMillis(ts) => *ts,
            other => panic!("not a timestamp-millis: {other:?}"),
        }
    }

    fn from_avro_optional(value: &Avro) -> Option<&Avro> {
        match value {
            Avro::Union(0, inner) if **inner == Avro::Null => None,
            Avro::Union(1, inner) => Some(inner),
            other => panic!("not a [null, T] union: {other:?}"),
        }
    }

    fn from_avro_array(value: &Avro) -> &[Avro] {
        match value {
            Avro::Array(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    fn from_avro_version(value: &Avro) -> Version {
        let r = record(value);
        Version {
            source: from_avro_string(r["source"]).to_owned(),
            vv: from_avro_clock(r["clock"]),
            ts: from_avro_ts(r["ts"]),
            op: match r["op"] {
                Avro::Enum(0, s) if s == "upsert" => Op::Upsert,
                Avro::Enum(1, s) if s == "delete" => Op::Delete,
                other => panic!("not an Op: {other:?}"),
            },
            row: from_avro_optional(r["row"]).map(|t| serde_json::from_str(from_avro_string(t)).unwrap()),
        }
    }

    fn from_avro_field_version(value: &Avro) -> FieldVersion {
        let r = record(value);
        FieldVersion {
            source: from_avro_string(r["source"]).to_owned(),
            vv: from_avro_clock(r["clock"]),
            ts: from_avro_ts(r["ts"]),
            value: serde_json::from_str(from_avro_string(r["value"])).unwrap(),
        }
    }

    fn from_avro(value: &Avro) -> KeyState {
        let r = record(value);
        let fields = from_avro_optional(r["fields"]).map(|f| {
            let f = record(f);
            let columns = match f["columns"] {
                Avro::Map(m) => m
                    .iter()
                    .map(|(c, ws)| (c.clone(), from_avro_array(ws).iter().map(from_avro_field_version).collect()))
                    .collect(),
                other => panic!("not a map: {other:?}"),
            };
            let writes = |v: &Avro| from_avro_array(v).iter().map(from_avro_field_version).collect();
            let sets = match f["sets"] {
                Avro::Map(m) => m
                    .iter()
                    .map(|(c, set)| {
                        let set = record(set);
                        (c.clone(), ElementSet { adds: writes(set["adds"]), removes: writes(set["removes"]) })
                    })
                    .collect(),
                other => panic!("not a map: {other:?}"),
            };
            let counters = match f["counters"] {
                Avro::Map(m) => m.iter().map(|(c, counter)| (c.clone(), from_avro_counter(counter))).collect(),
                other => panic!("not a map: {other:?}"),
            };
            FieldState {
                fields: columns,
                cleared: from_avro_array(f["cleared"]).iter().map(from_avro_clock).collect(),
                sets,
                counters,
                ..FieldState::default()
            }
        });
        KeyState { versions: from_avro_array(r["versions"]).iter().map(from_avro_version).collect(), fields }
    }

    /// Reads a datum with apache-avro's generic reader; it must use every byte.
    fn avro_read(datum: &[u8]) -> Avro {
        let reader = GenericDatumReader::builder(changelog_schema()).build().unwrap();
        let mut rest = datum;
        let value = reader.read_value(&mut rest).unwrap();
        assert!(rest.is_empty(), "apache-avro left {} bytes unread", rest.len());
        value
    }

    /// Writes a generic value with apache-avro (one positive-count block per array/map).
    fn avro_write(state: &KeyState) -> Vec<u8> {
        GenericDatumWriter::builder(changelog_schema()).build().unwrap().write_value_to_vec(to_avro(state)).unwrap()
    }

    // serde mirror of the schema, for apache-avro's schema-aware serializer,
    // which with a target block size writes several blocks with negative
    // counts and byte sizes.
    #[derive(Serialize)]
    enum SerOp {
        #[serde(rename = "upsert")]
        Upsert,
        #[serde(rename = "delete")]
        Delete,
    }

    #[derive(Serialize)]
    struct SerVersion {
        source: String,
        clock: BTreeMap<String, i64>,
        ts: i64,
        op: SerOp,
        row: Option<String>,
    }

    #[derive(Serialize)]
    struct SerFieldVersion {
        source: String,
        clock: BTreeMap<String, i64>,
        ts: i64,
        value: String,
    }

    #[derive(Serialize)]
    struct SerFieldState {
        columns: BTreeMap<String, Vec<SerFieldVersion>>,
        cleared: Vec<BTreeMap<String, i64>>,
        sets: BTreeMap<String, SerElementSet>,
        counters: BTreeMap<String, SerCounterState>,
    }

    #[derive(Serialize)]
    struct SerCounterState {
        creates: Vec<SerFieldVersion>,
        tallies: BTreeMap<String, SerTally>,
    }

    #[derive(Serialize)]
    struct SerTally {
        seen: BTreeMap<String, i64>,
        deleted: bool,
        deltas: Vec<SerDelta>,
    }

    #[derive(Serialize)]
    struct SerDelta {
        at: i64,
        amount: String,
    }

    fn ser_counter(c: &CounterState) -> SerCounterState {
        SerCounterState {
            creates: c.creates.iter().map(ser_field_version).collect(),
            tallies: c
                .tallies
                .iter()
                .map(|(s, t)| {
                    let deltas = t.deltas.iter().map(|d| SerDelta { at: d.at as i64, amount: d.amount.clone() }).collect();
                    (s.clone(), SerTally { seen: ser_clock(&t.seen), deleted: t.deleted, deltas })
                })
                .collect(),
        }
    }

    #[derive(Serialize)]
    struct SerElementSet {
        adds: Vec<SerFieldVersion>,
        removes: Vec<SerFieldVersion>,
    }

    fn ser_field_version(w: &FieldVersion) -> SerFieldVersion {
        SerFieldVersion { source: w.source.clone(), clock: ser_clock(&w.vv), ts: w.ts, value: w.value.to_string() }
    }

    #[derive(Serialize)]
    struct SerKeyState {
        versions: Vec<SerVersion>,
        fields: Option<SerFieldState>,
    }

    fn ser_clock(vv: &VersionVector) -> BTreeMap<String, i64> {
        vv.iter().map(|(k, v)| (k.to_string(), v as i64)).collect()
    }

    fn ser_state(state: &KeyState) -> SerKeyState {
        SerKeyState {
            versions: state
                .versions
                .iter()
                .map(|v| SerVersion {
                    source: v.source.clone(),
                    clock: ser_clock(&v.vv),
                    ts: v.ts,
                    op: if v.op == Op::Upsert { SerOp::Upsert } else { SerOp::Delete },
                    row: v.row.as_ref().map(|r| serde_json::to_string(r).unwrap()),
                })
                .collect(),
            fields: state.fields.as_ref().map(|f| SerFieldState {
                columns: f
                    .fields
                    .iter()
                    .map(|(c, ws)| {
                        let ws = ws
                            .iter()
                            .map(|w| SerFieldVersion {
                                source: w.source.clone(),
                                clock: ser_clock(&w.vv),
                                ts: w.ts,
                                value: w.value.to_string(),
                            })
                            .collect();
                        (c.clone(), ws)
                    })
                    .collect(),
                cleared: f.cleared.iter().map(ser_clock).collect(),
                sets: f
                    .sets
                    .iter()
                    .map(|(c, set)| {
                        let set = SerElementSet {
                            adds: set.adds.iter().map(ser_field_version).collect(),
                            removes: set.removes.iter().map(ser_field_version).collect(),
                        };
                        (c.clone(), set)
                    })
                    .collect(),
                counters: f.counters.iter().map(|(c, counter)| (c.clone(), ser_counter(counter))).collect(),
            }),
        }
    }

    /// Writes with apache-avro in blocks of one item each (negative counts with byte sizes).
    fn avro_write_blocked(state: &KeyState) -> Vec<u8> {
        let writer = GenericDatumWriter::builder(changelog_schema()).target_block_size(1).build().unwrap();
        writer.write_ser_to_vec(&ser_state(state)).unwrap()
    }

    fn with_header(datum: &[u8]) -> Vec<u8> {
        let mut bytes = CHANGELOG.header.to_vec();
        bytes.extend_from_slice(datum);
        bytes
    }

    // --- Strategies -----------------------------------------------------------

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Finite floats whose JSON text serde_json parses back exactly:
            // without its `float_roundtrip` feature its parser can be one ULP
            // off for some values, with any text format (the legacy JSON too).
            any::<f64>().prop_filter_map("finite, exactly re-parsed floats", |f| {
                let text = serde_json::to_string(&serde_json::Number::from_f64(f)?).ok()?;
                (serde_json::from_str::<f64>(&text).ok()? == f).then(|| Value::from(f))
            }),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_row() -> impl Strategy<Value = Row> {
        prop::collection::btree_map(".{0,8}", json_value(), 0..5).prop_map(|m| m.into_iter().collect())
    }

    fn arb_clock() -> impl Strategy<Value = VersionVector> {
        prop::collection::btree_map(".{0,6}", any::<u64>(), 0..4).prop_map(|m| m.into_iter().collect())
    }

    fn arb_version() -> impl Strategy<Value = Version> {
        (".{0,8}", arb_clock(), any::<i64>(), any::<bool>(), prop::option::of(arb_row())).prop_map(
            |(source, vv, ts, is_delete, row)| {
                if is_delete {
                    Version { source, vv, ts, op: Op::Delete, row: None }
                } else {
                    Version { source, vv, ts, op: Op::Upsert, row }
                }
            },
        )
    }

    fn arb_field_version() -> impl Strategy<Value = FieldVersion> {
        (".{0,8}", arb_clock(), any::<i64>(), json_value()).prop_map(|(source, vv, ts, value)| FieldVersion {
            source,
            vv,
            ts,
            value,
        })
    }

    fn arb_field_state() -> impl Strategy<Value = FieldState> {
        (
            prop::collection::btree_map(".{0,8}", prop::collection::vec(arb_field_version(), 0..3), 0..4),
            prop::collection::vec(arb_clock(), 0..3),
            prop::collection::btree_map(
                ".{0,8}",
                (prop::collection::vec(arb_field_version(), 0..3), prop::collection::vec(arb_field_version(), 0..2))
                    .prop_map(|(adds, removes)| ElementSet { adds, removes }),
                0..3,
            ),
            prop::collection::btree_map(".{0,8}", arb_counter(), 0..2),
        )
            .prop_map(|(fields, cleared, sets, counters)| FieldState {
                fields,
                cleared,
                sets,
                counters,
                ..FieldState::default()
            })
    }

    fn arb_counter() -> impl Strategy<Value = CounterState> {
        let delta = (any::<u64>(), "-?[0-9]{1,5}(\\.[0-9]{1,3})?").prop_map(|(at, amount)| Delta { at, amount });
        let tally = (arb_clock(), any::<bool>(), prop::collection::vec(delta, 0..3)).prop_map(|(seen, deleted, deltas)| Tally {
            seen,
            deleted,
            deltas,
        });
        (prop::collection::vec(arb_field_version(), 0..2), prop::collection::btree_map(".{0,8}", tally, 0..3))
            .prop_map(|(creates, tallies)| CounterState { creates, tallies })
    }

    fn arb_state() -> impl Strategy<Value = KeyState> {
        (prop::collection::vec(arb_version(), 0..4), prop::option::of(arb_field_state()))
            .prop_map(|(versions, fields)| KeyState { versions, fields })
    }

    // --- (1) Interoperability with apache-avro ---------------------------------

    #[test]
    fn hand_encoding_reads_with_apache_avro() {
        let state = sample();
        let bytes = encode_state(&state);
        assert_eq!(from_avro(&avro_read(&bytes[HEADER_LEN..])), state);
    }

    #[test]
    fn apache_avro_encodings_read_with_the_hand_decoder() {
        let state = sample();
        assert_eq!(decode_state(&with_header(&avro_write(&state))).unwrap(), state, "single blocks");
        let blocked = avro_write_blocked(&state);
        assert!(blocked.len() > avro_write(&state).len(), "the blocked encoding carries block sizes");
        assert_eq!(decode_state(&with_header(&blocked)).unwrap(), state, "one-item blocks with negative counts");
    }

    #[test]
    fn the_hand_encoding_is_the_one_apache_avro_writes() {
        // With one block per array/map and the same map order (sorted), the bytes agree exactly.
        let state = KeyState {
            versions: vec![
                upsert("eu", clock(&[("eu", 3)]), 1_700_000_000_000, json!({"id": 1})),
                delete("us", clock(&[("us", 2)]), 1),
            ],
            fields: None,
        };
        assert_eq!(&encode_state(&state)[HEADER_LEN..], avro_write(&state).as_slice());
    }

    #[test]
    fn hand_made_multi_block_and_negative_count_sequences_decode() {
        let state = sample();
        let [v0, v1, v2] = &state.versions[..] else { unreachable!() };
        let mut datum = Vec::new();
        // versions: a block of one with a negative count and its byte size,
        // then a block of two, then the end.
        let mut first = Vec::new();
        write_version(&mut first, v0);
        write_long(&mut datum, -1);
        write_len(&mut datum, first.len());
        datum.extend_from_slice(&first);
        write_long(&mut datum, 2);
        // v1 by hand, its clock map as a sized block of one entry.
        write_str(&mut datum, &v1.source);
        let mut entry = Vec::new();
        write_str(&mut entry, "us");
        write_long(&mut entry, u64::MAX as i64);
        write_long(&mut datum, -1);
        write_len(&mut datum, entry.len());
        datum.extend_from_slice(&entry);
        datum.push(0);
        write_long(&mut datum, v1.ts);
        write_op(&mut datum, v1.op);
        write_optional_row(&mut datum, v1.row.as_ref());
        write_version(&mut datum, v2);
        datum.push(0);
        // fields: the columns map as two positive blocks of one, cleared as
        // a sized block of two.
        let fields = state.fields.as_ref().unwrap();
        write_long(&mut datum, 1);
        for (column, writes) in &fields.fields {
            write_long(&mut datum, 1);
            write_str(&mut datum, column);
            write_array(&mut datum, writes, write_field_version);
        }
        datum.push(0);
        let mut cleared = Vec::new();
        for c in &fields.cleared {
            write_clock(&mut cleared, c);
        }
        write_long(&mut datum, -2);
        write_len(&mut datum, cleared.len());
        datum.extend_from_slice(&cleared);
        datum.push(0);
        // sets: one sized block per column.
        for (column, set) in &fields.sets {
            let mut entry = Vec::new();
            write_str(&mut entry, column);
            write_array(&mut entry, &set.adds, write_field_version);
            write_array(&mut entry, &set.removes, write_field_version);
            write_long(&mut datum, -1);
            write_len(&mut datum, entry.len());
            datum.extend_from_slice(&entry);
        }
        datum.push(0);
        // counters: one sized block per column.
        for (column, counter) in &fields.counters {
            let mut entry = Vec::new();
            write_str(&mut entry, column);
            write_counter(&mut entry, counter);
            write_long(&mut datum, -1);
            write_len(&mut datum, entry.len());
            datum.extend_from_slice(&entry);
        }
        datum.push(0);

        assert_eq!(decode_state(&with_header(&datum)).unwrap(), state, "the hand decoder");
        assert_eq!(from_avro(&avro_read(&datum)), state, "apache-avro agrees on what the bytes mean");
    }

    #[test]
    fn a_block_size_that_disagrees_with_its_items_is_an_error() {
        let state = KeyState { versions: vec![delete("us", clock(&[("us", 1)]), 1)], fields: None };
        let mut item = Vec::new();
        write_version(&mut item, &state.versions[0]);
        let mut datum = Vec::new();
        write_long(&mut datum, -1);
        write_len(&mut datum, item.len() + 1);
        datum.extend_from_slice(&item);
        datum.extend_from_slice(&[0, 0, 0]); // a padding byte the size claims, the array end, fields: null
        let err = decode_state(&with_header(&datum)).unwrap_err();
        assert!(matches!(err, StateDecodeError::Malformed { what: "versions", .. }), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_hand_encodings_read_with_apache_avro(state in arb_state()) {
            let bytes = encode_state(&state);
            prop_assert_eq!(from_avro(&avro_read(&bytes[HEADER_LEN..])), state);
        }

        #[test]
        fn arbitrary_apache_avro_encodings_read_with_the_hand_decoder(state in arb_state()) {
            prop_assert_eq!(&decode_state(&with_header(&avro_write(&state))).unwrap(), &state);
            prop_assert_eq!(&decode_state(&with_header(&avro_write_blocked(&state))).unwrap(), &state);
        }

        // --- (2) Round trip ---------------------------------------------------

        #[test]
        fn arbitrary_states_round_trip(state in arb_state()) {
            let bytes = encode_state(&state);
            prop_assert_eq!(&bytes[..2], &SINGLE_OBJECT_MARKER[..]);
            prop_assert_eq!(decode_state(&bytes).unwrap(), state);
        }

        // --- (4) Bad input is an error, never a panic ---------------------------

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_state(&bytes);
            let _ = decode_state(&with_header(&bytes));
        }

        #[test]
        fn corrupted_encodings_are_errors_or_states_never_panics(
            state in arb_state(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode_state(&state);
            for (at, byte) in flips {
                let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
                bytes[i] = byte;
            }
            let _ = decode_state(&bytes);
        }
    }

    #[test]
    fn the_empty_state_is_a_header_and_two_bytes() {
        let bytes = encode_state(&KeyState::default());
        assert_eq!(bytes.len(), HEADER_LEN + 2, "empty versions array, null fields");
        assert_eq!(&bytes[HEADER_LEN..], &[0, 0]);
        assert_eq!(decode_state(&bytes).unwrap(), KeyState::default());
    }

    // --- (3) Legacy JSON --------------------------------------------------------

    #[test]
    fn legacy_json_states_still_decode() {
        let state = sample();
        let legacy = serde_json::to_vec(&state).unwrap();
        assert_eq!(legacy[0], b'{');
        assert_eq!(decode_state(&legacy).unwrap(), state);
        // As the earlier code wrote it, verbatim.
        let text = br#"{"versions":[{"source":"eu","vv":{"eu":5},"ts":5,"op":"delete"}]}"#;
        assert_eq!(decode_state(text).unwrap(), KeyState { versions: vec![delete("eu", clock(&[("eu", 5)]), 5)], fields: None });
        assert!(matches!(decode_state(b"{\"versions\":"), Err(StateDecodeError::LegacyJson(_))));
    }

    // --- (4) Truncation and garbage ---------------------------------------------

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_state(&sample());
        for len in 0..bytes.len() {
            let result = decode_state(&bytes[..len]);
            assert!(result.is_err(), "a value cut to {len} of {} bytes decoded", bytes.len());
        }
        let err = decode_state(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(matches!(err, StateDecodeError::Truncated { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode_state(&sample());
        bytes.push(0);
        let err = decode_state(&bytes).unwrap_err();
        assert!(matches!(err, StateDecodeError::TrailingBytes { count: 1, .. }), "{err}");
    }

    #[test]
    fn errors_name_what_was_found() {
        assert!(matches!(decode_state(b""), Err(StateDecodeError::Empty)));
        let err = decode_state(b"\x00\x01garbage").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a key state: expected the Avro single-object marker C3 01 or a legacy JSON object, found bytes 00 01 67 61 72 62 61 67 65"
        );
        let mut other = encode_state(&sample());
        other[9] ^= 0xFF;
        let err = decode_state(&other).unwrap_err();
        assert!(matches!(err, StateDecodeError::UnknownFingerprint { .. }), "{err}");
        assert!(err.to_string().contains(&hex(&other[2..10])), "{err}");
        let err = decode_state(&[0xC3, 0x01, 0xB0]).unwrap_err();
        assert!(matches!(err, StateDecodeError::Truncated { what: "the single-object header", .. }), "{err}");
        // A union branch the schema does not have.
        let err = decode_state(&with_header(&[0, 4])).unwrap_err();
        assert!(matches!(err, StateDecodeError::BadIndex { what: "fields", index: 2, .. }), "{err}");
        // An eleven-byte varint.
        let err = decode_state(&with_header(&[0xFF; 11])).unwrap_err();
        assert!(matches!(err, StateDecodeError::Malformed { what: "versions", .. }), "{err}");
        // A row whose JSON text is not an object.
        let mut datum = vec![2];
        write_str(&mut datum, "eu");
        datum.push(0);
        write_long(&mut datum, 1);
        write_long(&mut datum, 0);
        write_long(&mut datum, 1);
        write_str(&mut datum, "[1]");
        datum.extend_from_slice(&[0, 0]);
        let err = decode_state(&with_header(&datum)).unwrap_err();
        assert!(matches!(err, StateDecodeError::Json { what: "a version's row", .. }), "{err}");
    }

    // --- (5) The header -----------------------------------------------------------

    #[test]
    fn the_header_carries_the_fingerprint_of_the_schema_file() {
        let bytes = encode_state(&sample());
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        // apache-avro's CRC-64-AVRO of the file (without logical types: see
        // `spec_fingerprint`), computed here from scratch.
        let mut json: Value = serde_json::from_str(CHANGELOG_SCHEMA_JSON).unwrap();
        remove_logical_types(&mut json);
        assert!(!json.to_string().contains("logicalType"));
        let parsed = Schema::parse(&json).unwrap();
        assert_eq!(bytes[2..HEADER_LEN], parsed.fingerprint::<Rabin>().bytes[..]);
        assert_eq!(changelog_fingerprint()[..], bytes[2..HEADER_LEN]);
        // apache-avro's own single-object header builder agrees.
        use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
        assert_eq!(RabinFingerprintHeader::from_schema(&parsed).build_header(), bytes[..HEADER_LEN]);
    }

    #[test]
    fn the_fingerprint_is_the_specifications_and_pinned() {
        // Computed independently: fastavro's Parsing Canonical Form of the
        // file and its CRC-64-AVRO (also by a from-the-spec Rabin in Python).
        // A schema change that alters the canonical form makes every stored
        // state undecodable until code that reads the old schema exists, so
        // it must be deliberate: update this value only together with that code.
        // (Versions 1 and 2 are `V1_FINGERPRINT` and `V2_FINGERPRINT`, still read.)
        assert_eq!(changelog_fingerprint(), [0xBB, 0xC7, 0x92, 0xD3, 0x9F, 0x0D, 0x47, 0x59]);
    }

    /// An older version of the schema: the file without its last `FieldState` fields.
    fn older_schema_json(dropped: &[&str]) -> String {
        let mut json: Value = serde_json::from_str(CHANGELOG_SCHEMA_JSON).unwrap();
        let field_state = &mut json["fields"][1]["type"][1]["fields"];
        let fields = field_state.as_array_mut().unwrap();
        for name in dropped {
            assert_eq!(fields.pop().unwrap()["name"], *name);
        }
        json.to_string()
    }

    /// Version 1 of the schema: the file without `FieldState.sets` (nor `counters`).
    fn v1_schema_json() -> String {
        older_schema_json(&["counters", "sets"])
    }

    #[test]
    fn version_1_is_the_file_without_sets_and_its_fingerprint_is_pinned() {
        assert_eq!(spec_fingerprint(&v1_schema_json()), V1_FINGERPRINT);
        assert_ne!(changelog_fingerprint(), V1_FINGERPRINT);
    }

    #[test]
    fn version_2_is_the_file_without_counters_and_its_fingerprint_is_pinned() {
        assert_eq!(spec_fingerprint(&older_schema_json(&["counters"])), V2_FINGERPRINT);
        assert_ne!(changelog_fingerprint(), V2_FINGERPRINT);
    }

    #[test]
    fn version_2_values_still_decode() {
        let mut state = sample();
        state.fields.as_mut().unwrap().counters.clear();
        // apache-avro writing with the version 2 schema, framed with its fingerprint.
        let v2 = Schema::parse_str(&older_schema_json(&["counters"])).unwrap();
        let datum =
            GenericDatumWriter::builder(&v2).build().unwrap().write_value_to_vec(to_avro_older(&state, &["counters"])).unwrap();
        let mut bytes = single_object_header(&V2_FINGERPRINT).to_vec();
        bytes.extend_from_slice(&datum);
        assert_eq!(decode_state(&bytes).unwrap(), state);
        // The same state in version 3 is one byte longer: the empty `counters` map.
        assert_eq!(encode_state(&state).len(), bytes.len() + 1);
        // A version 2 value with union sets, as the previous build wrote it.
        assert!(!state.fields.as_ref().unwrap().sets.is_empty());
        let plain = KeyState { versions: state.versions.clone(), fields: None };
        let mut v2_plain = single_object_header(&V2_FINGERPRINT).to_vec();
        v2_plain.extend_from_slice(&encode_state(&plain)[HEADER_LEN..]);
        assert_eq!(decode_state(&v2_plain).unwrap(), plain);
    }

    #[test]
    fn version_1_values_still_decode() {
        let mut state = sample();
        state.fields.as_mut().unwrap().sets.clear();
        state.fields.as_mut().unwrap().counters.clear();
        // apache-avro writing with the version 1 schema, framed with its fingerprint.
        let v1 = Schema::parse_str(&v1_schema_json()).unwrap();
        let datum = GenericDatumWriter::builder(&v1).build().unwrap().write_value_to_vec(to_avro_v1(&state)).unwrap();
        let mut bytes = single_object_header(&V1_FINGERPRINT).to_vec();
        bytes.extend_from_slice(&datum);
        assert_eq!(decode_state(&bytes).unwrap(), state);
        // The same state in version 3 is two bytes longer: the empty `sets` and `counters` maps.
        assert_eq!(encode_state(&state).len(), bytes.len() + 2);
        // Without column state the two versions' datums are the same.
        let plain = KeyState { versions: state.versions.clone(), fields: None };
        let mut v1_plain = single_object_header(&V1_FINGERPRINT).to_vec();
        v1_plain.extend_from_slice(&encode_state(&plain)[HEADER_LEN..]);
        assert_eq!(decode_state(&v1_plain).unwrap(), plain);
    }

    /// apache-avro's generic view of a state in version 1 of the schema.
    fn to_avro_v1(state: &KeyState) -> Avro {
        to_avro_older(state, &["counters", "sets"])
    }

    /// apache-avro's generic view of a state in an older version of the
    /// schema: without the last `FieldState` fields, `dropped`.
    fn to_avro_older(state: &KeyState, dropped: &[&str]) -> Avro {
        let Avro::Record(mut fields) = to_avro(state) else { unreachable!() };
        if let Avro::Union(1, field_state) = &mut fields[1].1 {
            let Avro::Record(parts) = &mut **field_state else { unreachable!() };
            for name in dropped {
                assert_eq!(parts.pop().unwrap().0, *name);
            }
        }
        Avro::Record(fields)
    }

    #[test]
    fn the_fingerprint_ignores_logical_types_as_the_specification_says() {
        // [PRIMITIVES] and [STRIP]: a logical-typed long canonicalizes to "long".
        let with =
            r#"{"type":"record","name":"R","fields":[{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
        let without = r#"{"type":"record","name":"R","fields":[{"name":"t","type":"long"}]}"#;
        assert_eq!(spec_fingerprint(with), spec_fingerprint(without));
    }
}
