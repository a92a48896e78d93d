use serde_json::json;

use super::*;

fn row(v: Value) -> Row {
    v.as_object().expect("an object").clone()
}

fn spec(toml_text: &str) -> TransformSpec {
    toml::from_str(toml_text).expect("valid TOML")
}

fn compile(toml_text: &str) -> Transform {
    Transform::compile(&spec(toml_text)).expect("compiles")
}

fn problems(toml_text: &str) -> Vec<String> {
    Transform::compile(&spec(toml_text)).expect_err("does not compile").iter().map(ToString::to_string).collect()
}

fn after(t: &Transform, v: Value) -> Result<Value, TransformError> {
    let mut r = row(v);
    t.apply(&mut r, Image::After).map(|()| Value::Object(r))
}

#[test]
fn rename_moves_columns_and_swaps() {
    let t = compile("rename = { cust_no = \"id\", EMAIL_ADDR = \"email\" }");
    assert_eq!(after(&t, json!({"cust_no": 7, "EMAIL_ADDR": "a@x", "n": 1})).unwrap(), json!({"id": 7, "email": "a@x", "n": 1}));
    // A missing source column is no error.
    assert_eq!(after(&t, json!({"n": 1})).unwrap(), json!({"n": 1}));
    let swap = compile("rename = { a = \"b\", b = \"a\" }");
    assert_eq!(after(&swap, json!({"a": 1, "b": 2})).unwrap(), json!({"a": 2, "b": 1}));
}

#[test]
fn required_columns_fail_when_missing_or_null_in_after_images_only() {
    let t = compile("rename = { cust_no = \"id\" }\nrequired = [\"id\"]");
    assert!(after(&t, json!({"cust_no": 1})).is_ok());
    let missing = after(&t, json!({"x": 1})).unwrap_err();
    assert_eq!(missing.column, "id");
    assert_eq!(missing.value, None);
    assert_eq!(missing.to_string(), "column `id`: required, but missing from the row");
    let null = after(&t, json!({"cust_no": null})).unwrap_err();
    assert_eq!(null.to_string(), "column `id` value null: required, but null");
    // Before images and keys may be partial.
    let mut before = row(json!({"x": 1}));
    t.apply(&mut before, Image::Before).unwrap();
    let mut key = row(json!({"cust_no": 1}));
    t.apply(&mut key, Image::Key).unwrap();
    assert_eq!(Value::Object(key), json!({"id": 1}));
}

#[test]
fn casts_convert_each_type() {
    let t = compile(
        r#"
        [cast]
        s = "string"
        i = "int"
        f = "float"
        c = "cents"
        b = "bool"
        es = "epoch-seconds"
        em = "epoch-millis"
        eu = "epoch-micros"
        iso = "iso8601"
        "#,
    );
    let out = after(
        &t,
        json!({"s": 42, "i": " 0042 ", "f": "2.5", "c": "12345", "b": "Y", "es": 1709287200, "em": "1709287200123",
               "eu": 1709287200123456i64, "iso": "2024-03-01T11:00:00+01:00", "other": "x"}),
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"s": "42", "i": 42, "f": 2.5, "c": 123.45, "b": true, "es": "2024-03-01T10:00:00.000000Z",
               "em": "2024-03-01T10:00:00.123000Z", "eu": "2024-03-01T10:00:00.123456Z",
               "iso": "2024-03-01T10:00:00.000000Z", "other": "x"})
    );
    // Nulls stay null, missing columns stay missing.
    assert_eq!(after(&t, json!({"i": null})).unwrap(), json!({"i": null}));
    // Already the target type: unchanged.
    assert_eq!(
        after(&t, json!({"i": 5, "s": "x", "b": false, "f": 1})).unwrap(),
        json!({"i": 5, "s": "x", "b": false, "f": 1.0})
    );
    assert_eq!(after(&t, json!({"i": 5.0, "c": -5, "b": 0})).unwrap(), json!({"i": 5, "c": -0.05, "b": false}));
}

#[test]
fn bool_spellings() {
    let t = compile("cast = { b = \"bool\" }");
    for (input, want) in [
        (json!("true"), true),
        (json!("T"), true),
        (json!("yes"), true),
        (json!("1"), true),
        (json!("on"), true),
        (json!(1), true),
        (json!("false"), false),
        (json!("f"), false),
        (json!("NO"), false),
        (json!("n"), false),
        (json!("0"), false),
        (json!("off"), false),
        (json!(0), false),
    ] {
        assert_eq!(after(&t, json!({ "b": input })).unwrap(), json!({ "b": want }), "{input}");
    }
}

#[test]
fn failing_casts_name_the_column_the_value_and_the_cast() {
    let t = compile(
        r#"cast = { i = "int", f = "float", c = "cents", b = "bool", e = "epoch-millis", iso = "iso8601", s = "string" }"#,
    );
    for (input, message) in [
        (json!({"i": "12x"}), "column `i` value \"12x\": cannot cast to int: not a whole number"),
        (json!({"i": 1.5}), "column `i` value 1.5: cannot cast to int: not a whole number in range"),
        (json!({"i": true}), "column `i` value true: cannot cast to int: expected a number or a string, found a boolean"),
        (json!({"f": "NaN"}), "column `f` value \"NaN\": cannot cast to float: not a finite number"),
        (json!({"c": "12.30"}), "column `c` value \"12.30\": cannot cast to cents: not a whole number"),
        (json!({"b": "maybe"}), "column `b` value \"maybe\": cannot cast to bool: not a boolean spelling"),
        (json!({"b": 2}), "column `b` value 2: cannot cast to bool: not a boolean spelling"),
        (json!({"e": i64::MAX}), "column `e` value 9223372036854775807: cannot cast to epoch-millis: out of range"),
        (json!({"e": 300_000_000_000_000i64}), "cannot cast to epoch-millis: outside the years 1 to 9999"),
        (
            json!({"iso": "01/03/2024"}),
            "column `iso` value \"01/03/2024\": cannot cast to iso8601: expected 4 digits of the year",
        ),
        (json!({"iso": 5}), "cannot cast to iso8601: expected a string, found a number"),
        (json!({"s": [1]}), "column `s` value [1]: cannot cast to string: an array has no text form"),
    ] {
        let err = after(&t, input.clone()).unwrap_err().to_string();
        assert!(err.starts_with(message) || err.contains(message), "{input}: {err}");
    }
}

#[test]
fn cents_are_exact_decimals() {
    let t = compile("cast = { c = \"cents\" }");
    for (cents, text) in [(1, "0.01"), (10, "0.1"), (199, "1.99"), (12345, "123.45"), (100000001, "1000000.01"), (-250, "-2.5")] {
        let out = after(&t, json!({ "c": cents })).unwrap();
        assert_eq!(out["c"].to_string(), text);
    }
    assert!(after(&t, json!({"c": 1i64 << 60})).unwrap_err().to_string().contains("too large for an exact decimal"));
}

#[test]
fn code_tables_map_values_and_reject_unknown_codes() {
    let t = compile("[map.status]\nA = \"active\"\nI = \"inactive\"\n[map.tier]\n1 = \"gold\"\n2 = \"silver\"");
    assert_eq!(after(&t, json!({"status": "A", "tier": 2})).unwrap(), json!({"status": "active", "tier": "silver"}));
    assert_eq!(after(&t, json!({"status": null})).unwrap(), json!({"status": null}));
    let err = after(&t, json!({"status": "X"})).unwrap_err();
    assert_eq!(err.to_string(), "column `status` value \"X\": no entry in the code table (known: A, I)");
    let err = after(&t, json!({"tier": 3})).unwrap_err();
    assert_eq!(err.to_string(), "column `tier` value 3: no entry in the code table (known: 1, 2)");
}

#[test]
fn computed_columns() {
    let t = compile(
        r#"
        [compute]
        name = { concat = ["first", "last"], sep = " " }
        contact = { coalesce = ["mobile", "phone"], default = "none" }
        total = { mul = ["qty", "price"] }
        net = { sub = ["gross", "tax", 1] }
        sum = { add = ["qty", 10] }
        ratio = { div = ["qty", 4] }
        "#,
    );
    let out =
        after(&t, json!({"first": "Ada", "last": "Lovelace", "phone": "555", "qty": 3, "price": 2.5, "gross": 10, "tax": 2}))
            .unwrap();
    assert_eq!(out["name"], json!("Ada Lovelace"));
    assert_eq!(out["contact"], json!("555"));
    assert_eq!(out["total"], json!(7.5));
    assert_eq!(out["net"], json!(7));
    assert_eq!(out["sum"], json!(13));
    assert_eq!(out["ratio"], json!(0.75));
    // Nulls: concat skips them, coalesce falls through, arithmetic gives null.
    let out = after(&t, json!({"first": null, "last": "Hopper", "mobile": null, "qty": null})).unwrap();
    assert_eq!(out["name"], json!("Hopper"));
    assert_eq!(out["contact"], json!("none"));
    assert_eq!(out["total"], Value::Null);
    assert_eq!(out["ratio"], Value::Null);
    let out = after(&t, json!({})).unwrap();
    assert_eq!(out["name"], Value::Null);
    // Numbers concatenate as text.
    let c = compile("compute = { code = { concat = [\"cc\", \"n\"], sep = \"-\" } }");
    assert_eq!(after(&c, json!({"cc": "DE", "n": 7})).unwrap()["code"], json!("DE-7"));
}

#[test]
fn computed_column_errors() {
    let t = compile("compute = { total = { mul = [\"qty\", \"price\"] } }");
    let err = after(&t, json!({"qty": "3", "price": 1})).unwrap_err();
    assert_eq!(err.to_string(), "column `qty` value \"3\": `total` computes with it, but it is not a number (cast it first)");
    let t = compile("compute = { ratio = { div = [\"qty\", \"zero\"] } }");
    let err = after(&t, json!({"qty": 3, "zero": 0})).unwrap_err();
    assert_eq!(err.column, "ratio");
    assert!(err.to_string().contains("division by zero"), "{err}");
    let big = compile("compute = { x = { mul = [\"a\", \"a\"] } }");
    let err = after(&big, json!({"a": i64::MAX})).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn set_drop_and_keep() {
    let t = compile("set = { region = \"legacy\", version = 2 }\ndrop = [\"secret\", \"absent\"]");
    assert_eq!(
        after(&t, json!({"id": 1, "secret": "x", "region": "old"})).unwrap(),
        json!({"id": 1, "region": "legacy", "version": 2})
    );
    let k = compile("keep = [\"id\", \"email\"]");
    assert_eq!(after(&k, json!({"id": 1, "email": "e", "ssn": "123", "new_column": 5})).unwrap(), json!({"id": 1, "email": "e"}));
    assert!(k.keeps("id") && !k.keeps("ssn"));
    assert!(t.keeps("id") && !t.keeps("secret"));
}

#[test]
fn operations_run_in_the_documented_order() {
    // rename → cast → map → compute → set → drop: compute sees the cast and
    // mapped values under their new names, drop removes its inputs after.
    let t = compile(
        r#"
        rename = { AMT = "amount_cents", ST = "status" }
        cast = { amount_cents = "int" }
        map = { status = { A = "active" } }
        compute = { label = { concat = ["status", "amount_cents"], sep = ":" }, amount = { div = ["amount_cents", 100] } }
        set = { source_system = "erp" }
        drop = ["amount_cents"]
        "#,
    );
    assert_eq!(
        after(&t, json!({"AMT": "250", "ST": "A"})).unwrap(),
        json!({"status": "active", "label": "active:250", "amount": 2.5, "source_system": "erp"})
    );
    assert_eq!(t.operations(), 8);
}

#[test]
fn key_images_get_rename_cast_and_map_only() {
    let t = compile("rename = { cust_no = \"id\" }\ncast = { id = \"int\" }\nset = { region = \"x\" }\ndrop = [\"id\"]");
    let mut key = row(json!({"cust_no": "0042"}));
    t.apply(&mut key, Image::Key).unwrap();
    assert_eq!(Value::Object(key), json!({"id": 42}));
    let mut before = row(json!({"cust_no": "0042", "n": 1}));
    t.apply(&mut before, Image::Before).unwrap();
    assert_eq!(Value::Object(before), json!({"n": 1, "region": "x"}));
}

#[test]
fn compile_errors_name_the_key() {
    assert_eq!(
        problems("cast = { balance = \"money\" }"),
        ["transform.cast.balance: unknown cast \"money\" (expected one of string, int, float, cents, bool, epoch-seconds, epoch-millis, epoch-micros, iso8601)"]
    );
    assert_eq!(problems("rename = { a = \"x\", b = \"x\" }"), ["transform.rename.b: \"x\" is also the new name of \"a\""]);
    assert_eq!(problems("map = { status = {} }"), ["transform.map.status: the code table is empty"]);
    assert_eq!(problems("compute = { t = { add = [\"a\"] } }"), ["transform.compute.t: add needs at least two operands"]);
    assert_eq!(
        problems("compute = { t = { add = [\"a\", true] } }"),
        ["transform.compute.t: add[1]: expected a column name or a number, found a boolean"]
    );
    assert_eq!(
        problems("compute = { t = { add = [\"a\", 1], mul = [\"a\", 2] } }"),
        ["transform.compute.t: needs exactly one of concat, coalesce, add, sub, mul, div (found add, mul)"]
    );
    assert_eq!(
        problems("compute = { t = { sep = \",\" } }"),
        ["transform.compute.t: needs exactly one of concat, coalesce, add, sub, mul, div (found none)"]
    );
    assert_eq!(
        problems("compute = { t = { coalesce = [\"a\"], sep = \",\" } }"),
        ["transform.compute.t: sep only applies to concat"]
    );
    assert_eq!(problems("compute = { t = { concat = [] } }"), ["transform.compute.t: concat needs at least one column name"]);
    assert_eq!(
        problems("keep = []\ndrop = [\"a\"]"),
        [
            "transform.keep: an empty list would drop every column",
            "transform.drop: set together with keep; list the columns to keep, or those to drop"
        ]
    );
    assert_eq!(problems("required = [\"\"]"), ["transform.required[0]: column names must not be empty"]);
    // Unknown keys are the TOML parser's to reject.
    assert!(toml::from_str::<TransformSpec>("renames = {}").unwrap_err().to_string().contains("unknown field `renames`"));
}

fn filter(toml_text: &str) -> Filter {
    Filter::compile(&toml::from_str(toml_text).expect("valid TOML")).expect("compiles")
}

#[test]
fn filters_test_every_condition() {
    let f = filter(
        r#"
        tenant = "acme"
        is_test = { ne = true }
        tier = { in = [1, 2] }
        country = { not_in = ["XX"] }
        score = { ge = 10, lt = 100 }
        email = { present = true }
        "#,
    );
    let base = json!({"tenant": "acme", "is_test": false, "tier": 1.0, "country": "DE", "score": 10, "email": "e"});
    assert!(f.keeps(Some(&row(base.clone())), false));
    for (column, value) in [
        ("tenant", json!("other")),
        ("is_test", json!(true)),
        ("tier", json!(3)),
        ("country", json!("XX")),
        ("score", json!(100)),
        ("score", json!(9.5)),
        ("score", json!("50")),
        ("email", Value::Null),
    ] {
        let mut r = row(base.clone());
        r.insert(column.into(), value.clone());
        assert!(!f.keeps(Some(&r), false), "{column} = {value}");
    }
    let mut r = row(base);
    r.remove("email");
    assert!(!f.keeps(Some(&r), false), "a missing column is null");
    let le = filter("n = { le = 5, gt = \"a\" }");
    assert!(!le.keeps(Some(&row(json!({"n": 5}))), false), "a number is not greater than a string");
    let absent = filter("deleted_at = { present = false }");
    assert!(absent.keeps(Some(&row(json!({"id": 1}))), false));
    assert!(!absent.keeps(Some(&row(json!({"deleted_at": 5}))), false));
}

#[test]
fn deletes_without_the_filtered_columns_are_kept() {
    let f = filter("tenant = \"acme\"");
    assert!(!f.keeps(Some(&row(json!({"id": 1, "tenant": "other"}))), true));
    assert!(f.keeps(Some(&row(json!({"id": 1, "tenant": "acme"}))), true));
    // A before image with the key only (REPLICA IDENTITY DEFAULT), or none.
    assert!(f.keeps(Some(&row(json!({"id": 1}))), true));
    assert!(f.keeps(Some(&row(json!({"id": 1, "tenant": null}))), true));
    assert!(f.keeps(None, true));
}

#[test]
fn filter_compile_errors_name_the_key() {
    let err = |t: &str| -> Vec<String> {
        Filter::compile(&toml::from_str(t).unwrap()).unwrap_err().iter().map(ToString::to_string).collect()
    };
    assert_eq!(err("tenant = [\"a\"]"), ["where.tenant: a list is ambiguous here; write { in = [...] } or { not_in = [...] }"]);
    assert_eq!(
        err("tenant = { like = \"a%\" }"),
        ["where.tenant.like: unknown test \"like\" (expected eq, ne, in, not_in, lt, le, gt, ge or present)"]
    );
    assert_eq!(err("tenant = { in = [] }"), ["where.tenant.in: the list is empty"]);
    assert_eq!(err("tenant = { in = \"a\" }"), ["where.tenant.in: expected a list, found a string"]);
    assert_eq!(err("n = { lt = true }"), ["where.n.lt: expected a number or a string, found a boolean"]);
    assert_eq!(err("n = { present = 1 }"), ["where.n.present: expected true or false"]);
    assert_eq!(err("n = {}"), ["where.n: an empty condition"]);
    assert_eq!(err(""), ["where: an empty filter; remove it or name a column"]);
}
