//! The canonical key: a record key's JSON object, with sorted field names
//! and no whitespace, so that every source's key of one row is the same text
//! (and the same bytes to hash when re-keying).

use serde_json::Value;

use super::{json_kind, InputRecord, NormalizeErrorKind};

/// The longest canonical key a record may have: the state store's key limit
/// (fjall panics on a longer key, which would stop the processor at every
/// restart on the same record).
pub const MAX_KEY_BYTES: usize = u16::MAX as usize;

/// `key` when the state store can hold it.
pub(super) fn within_limit(key: String) -> Result<String, NormalizeErrorKind> {
    if key.len() > MAX_KEY_BYTES {
        return Err(NormalizeErrorKind::KeyTooLarge { bytes: key.len(), limit: MAX_KEY_BYTES });
    }
    Ok(key)
}

/// The record key as a canonical JSON object (Debezium `payload` unwrapped).
pub(super) fn record_key(record: &InputRecord<'_>) -> Result<String, NormalizeErrorKind> {
    let bytes = record.key.filter(|k| !k.is_empty()).ok_or(NormalizeErrorKind::MissingKey)?;
    if let Some(key) = already_canonical(bytes) {
        return Ok(key.to_string());
    }
    canonicalize_key(bytes)
}

/// [`record_key`] the long way: parse, unwrap, re-serialize.
pub(super) fn canonicalize_key(bytes: &[u8]) -> Result<String, NormalizeErrorKind> {
    let value: Value = crate::json::from_bytes(bytes).map_err(|e| NormalizeErrorKind::BadKey(e.to_string()))?;
    let value = match value {
        Value::Object(mut o) if o.contains_key("payload") && o.contains_key("schema") => {
            o.remove("payload").unwrap_or(Value::Null)
        }
        v => v,
    };
    match value {
        // serde_json's map keeps keys sorted, and `to_string` is compact.
        Value::Object(o) if !o.is_empty() => Ok(Value::Object(o).to_string()),
        Value::Object(_) => Err(NormalizeErrorKind::BadKey("the key object has no fields".into())),
        other => Err(NormalizeErrorKind::BadKey(format!("expected an object, found {}", json_kind(&other)))),
    }
}

/// `bytes` as text when they are, byte for byte, what [`canonicalize_key`]
/// would return: a non-empty flat object without whitespace, with strictly
/// increasing field names, no `payload` field, and only values serde_json
/// writes back unchanged — `true`, `false`, `null`, integers of at most 18
/// digits without leading zeros (not `-0`), and strings of printable ASCII
/// without escapes (names likewise). `None` means "not sure": take the long way.
pub(super) fn already_canonical(bytes: &[u8]) -> Option<&str> {
    fn plain_string(b: &[u8], i: &mut usize) -> Option<usize> {
        // At the opening quote; returns the end (exclusive) of the content.
        if b.get(*i) != Some(&b'"') {
            return None;
        }
        *i += 1;
        let start = *i;
        while let Some(&c) = b.get(*i) {
            match c {
                b'"' => {
                    let end = *i;
                    *i += 1;
                    return Some(end - start);
                }
                b'\\' => return None,
                0x20..=0x7e => *i += 1,
                _ => return None,
            }
        }
        None
    }
    let (&b'{', _) = bytes.split_first()? else { return None };
    let mut i = 1;
    let mut prev: Option<&[u8]> = None;
    loop {
        let name_start = i + 1;
        let name_len = plain_string(bytes, &mut i)?;
        let name = &bytes[name_start..name_start + name_len];
        if prev.is_some_and(|p| p >= name) || name == b"payload" {
            return None;
        }
        prev = Some(name);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        match *bytes.get(i)? {
            b'"' => {
                plain_string(bytes, &mut i)?;
            }
            b't' if bytes[i..].starts_with(b"true") => i += 4,
            b'f' if bytes[i..].starts_with(b"false") => i += 5,
            b'n' if bytes[i..].starts_with(b"null") => i += 4,
            c @ (b'-' | b'0'..=b'9') => {
                if c == b'-' {
                    i += 1;
                }
                let digits_start = i;
                while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let digits = &bytes[digits_start..i];
                let ok = match digits {
                    [] => false,
                    [b'0'] => c != b'-',
                    [b'0', ..] => false,
                    _ => digits.len() <= 18,
                };
                if !ok {
                    return None;
                }
            }
            _ => return None,
        }
        match *bytes.get(i)? {
            b',' => i += 1,
            b'}' if i + 1 == bytes.len() => break,
            _ => return None,
        }
    }
    // Printable ASCII throughout, so this cannot fail.
    std::str::from_utf8(bytes).ok()
}
