//! The order of JSON values (`max`/`min`, `union`) and JSON equality.

use super::*;

#[test]
fn value_order_is_total_and_null_loses() {
    use std::cmp::Ordering::*;
    for (a, b, want) in [
        (json!(2), json!(10), Less),
        (json!(-1), json!(18446744073709551615u64), Less),
        (json!(1.5), json!(1), Greater),
        (json!(1), json!(1.0), Less), // equal numbers: canonical text decides
        (json!("b"), json!("ab"), Greater),
        (json!(999), json!("1"), Less), // numbers before strings
        (json!(true), json!(false), Greater),
    ] {
        assert_eq!(value_rank(&ColumnRule::Max, &a, &b), want, "{a} vs {b}");
        assert_eq!(value_rank(&ColumnRule::Min, &a, &b), want.reverse(), "{a} vs {b}");
    }
    assert_eq!(value_rank(&ColumnRule::Max, &json!(null), &json!(-5)), Less);
    assert_eq!(value_rank(&ColumnRule::Min, &json!(null), &json!(-5)), Less);
}

#[test]
fn same_json_is_equality_of_canonical_text() {
    let text_eq = |a: &Value, b: &Value| serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap();
    let values = [
        json!(0.0),
        json!(-0.0),
        json!(1),
        json!(1.0),
        json!(-1),
        json!(u64::MAX),
        json!("1"),
        json!([0.0, {"a": -0.0}]),
        json!([-0.0, {"a": -0.0}]),
        json!([0.0, {"a": 0.0}]),
        json!({"a": 1, "b": [true, null]}),
        json!({"a": 1, "b": [true, null], "c": 2}),
        json!({"a": 1.0, "b": [true, null]}),
        json!(null),
    ];
    for a in &values {
        for b in &values {
            assert_eq!(same_json(a, b), text_eq(a, b), "{a} vs {b}");
        }
    }
}

/// JSON values with the spellings that compare equal or nearly:
/// integers and floats of one value, both zeros, repeated strings, nesting.
fn close_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..3).prop_map(Value::from),
        prop::sample::select(vec![-0.0, 0.0, 1.0, 2.5, -2.0, 1e300]).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        prop::sample::select(vec!["a", "b", "1", ""]).prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec(("[ab]", inner), 0..3).prop_map(|e| Value::Object(e.into_iter().collect())),
        ]
    })
}

proptest! {
    /// The `union` rule looks elements up in lists sorted by `value_cmp`:
    /// that order must hold two values equal exactly when `same_json` does.
    #[test]
    fn value_order_equality_is_same_json(a in close_values(), b in close_values()) {
        prop_assert_eq!(value_cmp(&a, &b) == std::cmp::Ordering::Equal, same_json(&a, &b), "{} against {}", a, b);
        prop_assert_eq!(value_cmp(&a, &b), value_cmp(&b, &a).reverse());
    }
}
