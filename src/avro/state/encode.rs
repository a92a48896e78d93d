//! The writer of key states: straight into one buffer, by hand, because
//! every change of a key goes through it (see the parent module for the
//! layout). Apart from the decoder, which accepts more than this writes.

use serde::Serialize;

use super::{CHANGELOG, HEADER_LEN};
use crate::avro::binary::{write_bytes, write_len, write_long, write_str};
use crate::merge::{ColumnWrite, CounterState, Delta, FieldState, FieldVersion, KeyState, LazyRow, Op, Version, VersionVector};

/// Initial buffer room per stored version: a source name, a small clock and a
/// row of a few hundred bytes of JSON, so most states encode without regrowing.
const RESERVE_PER_VERSION: usize = 256;
/// Encodes a key state for the store and the changelog (single-object Avro).
pub fn encode_state(state: &KeyState) -> Vec<u8> {
    encode_state_knowing(state, None)
}

/// [`encode_state`], given the compact JSON text of one of the state's
/// rows (`row` is a reference into `state.versions`), which is then written
/// as it is rather than serialized again: the output record of a row-level
/// policy holds exactly that text.
pub fn encode_state_knowing(state: &KeyState, known: Option<(&LazyRow, &[u8])>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + RESERVE_PER_VERSION * (state.versions.len() + 1));
    buf.extend_from_slice(&CHANGELOG.header);
    write_array(&mut buf, &state.versions, |buf, version| match (known, version.row.as_ref()) {
        (Some((row, text)), Some(own)) if std::ptr::eq(row, own) => {
            debug_assert!(
                own.json_text()
                    .map_or_else(|| serde_json::to_vec(&**own).expect("rows serialize") == text, |t| t.as_bytes() == text),
                "the known text is the row's"
            );
            write_version_head(buf, version);
            write_long(buf, 1);
            write_bytes(buf, text);
        }
        _ => write_version(buf, version),
    });
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
pub(super) fn write_array<T>(buf: &mut Vec<u8>, items: &[T], mut write_item: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        write_len(buf, items.len());
        for item in items {
            write_item(buf, item);
        }
    }
    buf.push(0);
}

/// A version vector as an Avro `map<long>` (one block).
pub(super) fn write_clock(buf: &mut Vec<u8>, clock: &VersionVector) {
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
pub(super) fn write_op(buf: &mut Vec<u8>, op: Op) {
    write_long(buf, op_index(op));
}

/// The symbol index of `op` in `Op`'s `symbols`.
pub(super) fn op_index(op: Op) -> i64 {
    match op {
        Op::Upsert => 0,
        Op::Delete => 1,
    }
}

/// `["null", "string"]` with the row as JSON text: the text it was decoded
/// from, while unchanged, else the map serialized.
pub(super) fn write_optional_row(buf: &mut Vec<u8>, row: Option<&LazyRow>) {
    match row {
        None => write_long(buf, 0),
        Some(row) => {
            write_long(buf, 1);
            match row.json_text() {
                Some(text) => write_str(buf, text),
                None => write_json(buf, &**row),
            }
        }
    }
}

/// One `Version` record.
pub(super) fn write_version(buf: &mut Vec<u8>, version: &Version) {
    write_version_head(buf, version);
    write_optional_row(buf, version.row.as_ref());
}

/// A `Version` record's fields before its row.
fn write_version_head(buf: &mut Vec<u8>, version: &Version) {
    write_str(buf, &version.source);
    write_clock(buf, &version.vv);
    write_long(buf, version.ts);
    write_op(buf, version.op);
}

/// `["null", FieldState]`.
pub(super) fn write_optional_field_state(buf: &mut Vec<u8>, fields: Option<&FieldState>) {
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
pub(super) fn write_counter(buf: &mut Vec<u8>, counter: &CounterState) {
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
pub(super) fn write_field_version(buf: &mut Vec<u8>, write: &FieldVersion) {
    write_str(buf, &write.source);
    write_clock(buf, &write.vv);
    write_long(buf, write.ts);
    write_json(buf, &write.value);
}
