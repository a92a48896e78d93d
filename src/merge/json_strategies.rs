//! Test strategies for JSON values, and spellings of them other than
//! serde_json's (shared by the canonical-text and image-comparison tests).

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, with the strings, numbers and nesting that spelling
/// tells apart.
pub(super) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-c\u{e9}\"\\\\/\n\t\u{1}\u{7f}\u{1f600}]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("[a-d\"\u{e9}]{0,3}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// A spelling of `v` other than serde_json's: entries in the given
/// order, with repeats, spaces, escapes and number spellings varied.
pub(super) fn respell(v: &Value, salt: &mut u64, out: &mut String) {
    *salt = salt.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let choice = (*salt >> 33) % 4;
    match v {
        Value::Object(map) => {
            out.push_str("{ ");
            let mut entries: Vec<_> = map.iter().collect();
            if choice % 2 == 1 {
                entries.reverse();
            }
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,");
                }
                if choice == 3 {
                    // A repeated key: the earlier value is replaced.
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(":[0],");
                }
                if choice == 2 {
                    out.push('"');
                    for c in k.chars() {
                        match c as u32 {
                            small @ ..0x10000 => out.push_str(&format!("\\u{small:04x}")),
                            _ => out.push(c),
                        }
                    }
                    out.push('"');
                } else {
                    out.push_str(&serde_json::to_string(k).unwrap());
                }
                out.push_str(" : ");
                respell(v, salt, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                respell(item, salt, out);
            }
            out.push(']');
        }
        Value::Number(n) if choice == 1 && n.is_f64() => out.push_str(&format!("{:e}", n.as_f64().unwrap())),
        Value::Number(n) if choice == 2 && n.is_u64() => out.push_str(&format!("{}.0e0", n)),
        Value::String(s) if choice == 3 => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '/' => out.push_str("\\/"),
                    c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}
