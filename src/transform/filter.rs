//! `[sources.where]`: which records a source contributes, decided on the
//! source row before any transformation.

use serde_json::Value;

use super::{FilterSpec, SpecProblem};
use crate::merge::Row;

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Lt(Value),
    Le(Value),
    Gt(Value),
    Ge(Value),
    Present(bool),
}

/// A compiled `[sources.where]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<(String, Vec<Test>)>,
}

/// Equality with numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// Order of two numbers or two strings; `None` for anything else.
fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Test {
    fn holds(&self, v: Option<&Value>) -> bool {
        let v = v.unwrap_or(&Value::Null);
        match self {
            Test::Eq(x) => same(v, x),
            Test::Ne(x) => !same(v, x),
            Test::In(xs) => xs.iter().any(|x| same(v, x)),
            Test::NotIn(xs) => !xs.iter().any(|x| same(v, x)),
            Test::Lt(x) => order(v, x).is_some_and(|o| o.is_lt()),
            Test::Le(x) => order(v, x).is_some_and(|o| o.is_le()),
            Test::Gt(x) => order(v, x).is_some_and(|o| o.is_gt()),
            Test::Ge(x) => order(v, x).is_some_and(|o| o.is_ge()),
            Test::Present(p) => v.is_null() != *p,
        }
    }
}

impl Filter {
    /// Compiles a filter; every problem is listed with its key
    /// (`where.tenant.in`).
    pub fn compile(spec: &FilterSpec) -> Result<Self, Vec<SpecProblem>> {
        let mut problems = Vec::new();
        let mut conditions = Vec::new();
        if spec.is_empty() {
            problems.push(SpecProblem { key: "where".into(), message: "an empty filter; remove it or name a column".into() });
        }
        for (column, condition) in spec {
            let key = format!("where.{column}");
            let mut tests = Vec::new();
            match condition {
                Value::Object(ops) => {
                    if ops.is_empty() {
                        problems.push(SpecProblem { key: key.clone(), message: "an empty condition".into() });
                    }
                    for (op, arg) in ops {
                        match compile_test(op, arg) {
                            Ok(t) => tests.push(t),
                            Err(message) => problems.push(SpecProblem { key: format!("{key}.{op}"), message }),
                        }
                    }
                }
                Value::Array(_) => problems.push(SpecProblem {
                    key,
                    message: "a list is ambiguous here; write { in = [...] } or { not_in = [...] }".into(),
                }),
                scalar => tests.push(Test::Eq(scalar.clone())),
            }
            conditions.push((column.clone(), tests));
        }
        if problems.is_empty() {
            Ok(Self { conditions })
        } else {
            Err(problems)
        }
    }

    /// Whether the record is kept. An upsert is tested on its `after` image.
    /// A delete is tested on its `before` image, and is kept when that image
    /// lacks a column the filter reads (a before image may hold only the key
    /// columns): dropping a delete the target needed would leave a row
    /// behind, while keeping one it did not want costs a tombstone.
    pub fn keeps(&self, row: Option<&Row>, delete: bool) -> bool {
        let Some(row) = row else { return true };
        if delete && self.conditions.iter().any(|(c, _)| row.get(c).is_none_or(Value::is_null)) {
            return true;
        }
        self.conditions.iter().all(|(column, tests)| tests.iter().all(|t| t.holds(row.get(column))))
    }
}

fn compile_test(op: &str, arg: &Value) -> Result<Test, String> {
    let scalar = |arg: &Value| match arg {
        Value::Array(_) | Value::Object(_) => Err(format!("expected a value, found {}", crate::json::json_kind(arg))),
        v => Ok(v.clone()),
    };
    let comparable = |arg: &Value| match arg {
        Value::Number(_) | Value::String(_) => Ok(arg.clone()),
        other => Err(format!("expected a number or a string, found {}", crate::json::json_kind(other))),
    };
    let list = |arg: &Value| match arg {
        Value::Array(items) if !items.is_empty() => items.iter().map(scalar).collect::<Result<Vec<_>, _>>(),
        Value::Array(_) => Err("the list is empty".to_string()),
        other => Err(format!("expected a list, found {}", crate::json::json_kind(other))),
    };
    Ok(match op {
        "eq" => Test::Eq(scalar(arg)?),
        "ne" => Test::Ne(scalar(arg)?),
        "in" => Test::In(list(arg)?),
        "not_in" => Test::NotIn(list(arg)?),
        "lt" => Test::Lt(comparable(arg)?),
        "le" => Test::Le(comparable(arg)?),
        "gt" => Test::Gt(comparable(arg)?),
        "ge" => Test::Ge(comparable(arg)?),
        "present" => Test::Present(arg.as_bool().ok_or("expected true or false")?),
        other => return Err(format!("unknown test \"{other}\" (expected eq, ne, in, not_in, lt, le, gt, ge or present)")),
    })
}
