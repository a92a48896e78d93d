//! Small JSON helpers shared by the input formats, the Avro codec and the
//! merge: below all of them, so none imports another for these.

use serde::Deserialize;
use serde_json::Value;

/// `serde_json::from_slice`, faster on valid input.
///
/// Input that is valid UTF-8 (as JSON must be) is checked once, as a
/// whole, and read as text. serde_json's byte reader checks every string
/// on its own instead, which was a fifth of the instructions of decoding,
/// merging and encoding a Debezium record (callgrind,
/// `process/debezium-json/lww/3src` in `benches/merge.rs`: 56 checks per
/// record). Input that is not valid UTF-8 goes to the byte reader, so
/// what is accepted, and every error, stays as it was.
#[inline]
pub(crate) fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// [`from_bytes`] without the check that nothing but whitespace follows
/// the value: the first JSON value of `bytes`.
#[inline]
pub(crate) fn first_value<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => T::deserialize(&mut serde_json::Deserializer::from_str(text)),
        Err(_) => T::deserialize(&mut serde_json::Deserializer::from_slice(bytes)),
    }
}

/// A value's JSON type in words, for error messages ("found a string").
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::json_kind;
    use serde_json::json;

    #[test]
    fn bytes_read_as_text_or_as_bytes_alike() {
        use super::{first_value, from_bytes};
        use serde::Deserialize;
        use serde_json::Value;
        let cases: [&[u8]; 7] = [
            br#"{"a": "x\u00e9y", "b": [1, 2.5, null]}"#,
            "{\"name\": \"Zo\u{eb}\"}".as_bytes(),
            b"{\"a\": 1} trailing",
            b"{\"a\": \"\xff\"}",
            b"{\"a\": 1, \"\xc3\": 2}",
            b"{\"a\": 1, }",
            b"",
        ];
        for bytes in cases {
            let fast = from_bytes::<Value>(bytes).map_err(|e| e.to_string());
            let slow = serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string());
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(bytes));
            let first = first_value::<Value>(bytes).map_err(|e| e.to_string());
            let reference = Value::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(|e| e.to_string());
            assert_eq!(first, reference, "{}", String::from_utf8_lossy(bytes));
        }
        // Borrowed strings still borrow from the input.
        let borrowed: std::collections::BTreeMap<&str, &str> = first_value(br#"{"k": "v"}"#).unwrap();
        assert_eq!(borrowed["k"], "v");
    }

    #[test]
    fn kinds_read_as_words() {
        let kinds: Vec<&str> =
            [json!(null), json!(true), json!(1.5), json!("x"), json!([1]), json!({"a": 1})].iter().map(json_kind).collect();
        assert_eq!(kinds, ["null", "a boolean", "a number", "a string", "an array", "an object"]);
    }
}
