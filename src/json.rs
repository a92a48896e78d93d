//! Small JSON helpers shared by the input formats, the Avro codec and the
//! merge: below all of them, so none imports another for these.

use serde_json::Value;

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
    fn kinds_read_as_words() {
        let kinds: Vec<&str> =
            [json!(null), json!(true), json!(1.5), json!("x"), json!([1]), json!({"a": 1})].iter().map(json_kind).collect();
        assert_eq!(kinds, ["null", "a boolean", "a number", "a string", "an array", "an object"]);
    }
}
