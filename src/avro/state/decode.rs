//! The reader of key states: the header's fingerprint picks the schema
//! version, then the records are read with the cursor of `reader.rs`. Also
//! reads the legacy JSON encoding.

use std::collections::BTreeMap;

use serde_json::Value;

use super::reader::{Decoded, Reader};
use super::{
    changelog_fingerprint, StateDecodeError, CHANGELOG, HEADER_LEN, SINGLE_OBJECT_MARKER, V1_FINGERPRINT, V2_FINGERPRINT,
};
use crate::merge::{CounterState, Delta, ElementVersions, FieldState, FieldVersion, KeyState, Op, Tally, Version};

/// Decodes a key state from the store or the changelog: single-object Avro,
/// or the legacy JSON encoding (a value starting with `{`).
pub fn decode_state(bytes: &[u8]) -> Result<KeyState, StateDecodeError> {
    if bytes.starts_with(&SINGLE_OBJECT_MARKER) {
        decode_single_object(bytes)
    } else if bytes.starts_with(b"{") {
        let state: KeyState = serde_json::from_slice(bytes).map_err(StateDecodeError::LegacyJson)?;
        match state.versions.iter().any(|v| (v.op == Op::Upsert) != v.row.is_some()) {
            true => Err(upsert_row_error(0)),
            false => Ok(state),
        }
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

/// Gives the rows of `state` that are maps their JSON text from `bytes`,
/// the state's own encoding ([`encode_state`](super::encode_state) of this
/// very state), and drops the maps: a state kept decoded for later events
/// then holds each row as text, a fraction of the memory, and writes it
/// back as it is. Reads only the Avro structure (no JSON). Returns false,
/// changing nothing, when `bytes` is not a single-object encoding with a
/// row exactly where `state` has one.
pub fn keep_row_texts(state: &mut KeyState, bytes: &[u8]) -> bool {
    if !state.versions.iter().any(|v| v.row.as_ref().is_some_and(|r| r.json_text().is_none())) {
        return true;
    }
    if !bytes.starts_with(&CHANGELOG.header) {
        return false;
    }
    let mut reader = Reader { bytes, pos: HEADER_LEN };
    let mut texts = Vec::with_capacity(state.versions.len());
    let walked = reader.blocks("versions", |r| {
        r.str("a version's source")?;
        r.blocks("a version's clock", |r| r.str("a clock's source").and_then(|_| r.long("a clock's counter")).map(drop))?;
        r.long("a version's ts")?;
        r.op("a version's op")?;
        texts.push(if r.present("a version's row")? { Some(r.str("a version's row")?) } else { None });
        Ok(())
    });
    let lines_up =
        texts.len() == state.versions.len() && state.versions.iter().zip(&texts).all(|(v, t)| v.row.is_some() == t.is_some());
    if walked.is_err() || !lines_up {
        return false;
    }
    for (v, text) in state.versions.iter_mut().zip(texts) {
        if let (Some(row), Some(text)) = (v.row.as_mut(), text) {
            row.keep_text(text);
        }
    }
    true
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

/// What every reader of a state relies on: an upsert carries its row and a
/// delete none. A value that breaks it (written by hand, or corrupted) is
/// refused when decoded, not met as a panic when the key is next merged.
fn upsert_row_error(offset: usize) -> StateDecodeError {
    StateDecodeError::Malformed { what: "a version's row", offset, problem: "an upsert must carry a row and a delete none" }
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
    let at = r.pos;
    let row = if r.present("a version's row")? { Some(r.json_row("a version's row")?) } else { None };
    if (op == Op::Upsert) != row.is_some() {
        return Err(upsert_row_error(at));
    }
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
