//! `transform.compute`: a column from others (`concat`, `coalesce`, and
//! `add`/`sub`/`mul`/`div` over columns and literal numbers).

use serde_json::{Number, Value};

use super::{ComputeSpec, TransformError};
use crate::merge::Row;

/// An operand of arithmetic: a column or a literal number.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Column(String),
    Literal(Number),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// A compiled `transform.compute` entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Compute {
    Concat { columns: Vec<String>, sep: String },
    Coalesce { columns: Vec<String>, default: Value },
    Arith { op: Arith, operands: Vec<Operand> },
}

/// Checks a `transform.compute` entry; the message names what is wrong.
pub(super) fn compile_compute(c: &ComputeSpec) -> Result<Compute, String> {
    let ops: Vec<&str> = [
        ("concat", c.concat.is_some()),
        ("coalesce", c.coalesce.is_some()),
        ("add", c.add.is_some()),
        ("sub", c.sub.is_some()),
        ("mul", c.mul.is_some()),
        ("div", c.div.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect();
    if ops.len() != 1 {
        return Err(format!(
            "needs exactly one of concat, coalesce, add, sub, mul, div (found {})",
            if ops.is_empty() { "none".to_string() } else { ops.join(", ") }
        ));
    }
    if c.sep.is_some() && c.concat.is_none() {
        return Err("sep only applies to concat".into());
    }
    if c.default.is_some() && c.coalesce.is_none() {
        return Err("default only applies to coalesce".into());
    }
    let columns = |list: &Vec<String>, op: &str| -> Result<Vec<String>, String> {
        if list.is_empty() || list.iter().any(String::is_empty) {
            return Err(format!("{op} needs at least one column name"));
        }
        Ok(list.clone())
    };
    if let Some(list) = &c.concat {
        return Ok(Compute::Concat { columns: columns(list, "concat")?, sep: c.sep.clone().unwrap_or_default() });
    }
    if let Some(list) = &c.coalesce {
        return Ok(Compute::Coalesce { columns: columns(list, "coalesce")?, default: c.default.clone().unwrap_or(Value::Null) });
    }
    let (op, name, list) = match (&c.add, &c.sub, &c.mul, &c.div) {
        (Some(l), ..) => (Arith::Add, "add", l),
        (_, Some(l), ..) => (Arith::Sub, "sub", l),
        (_, _, Some(l), _) => (Arith::Mul, "mul", l),
        (.., Some(l)) => (Arith::Div, "div", l),
        _ => unreachable!("one op is set"),
    };
    if list.len() < 2 {
        return Err(format!("{name} needs at least two operands"));
    }
    let operands = list
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.is_empty() => Ok(Operand::Column(s.clone())),
            Value::Number(n) => Ok(Operand::Literal(n.clone())),
            other => Err(format!("{name}[{i}]: expected a column name or a number, found {}", crate::json::json_kind(other))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Compute::Arith { op, operands })
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The value of computed column `column` on `row`.
pub(super) fn compute(column: &str, c: &Compute, row: &Row) -> Result<Value, TransformError> {
    match c {
        Compute::Concat { columns, sep } => {
            let parts: Vec<String> = columns.iter().filter_map(|c| row.get(c).and_then(text_of)).collect();
            Ok(if parts.is_empty() { Value::Null } else { Value::String(parts.join(sep)) })
        }
        Compute::Coalesce { columns, default } => {
            Ok(columns.iter().filter_map(|c| row.get(c)).find(|v| !v.is_null()).cloned().unwrap_or_else(|| default.clone()))
        }
        Compute::Arith { op, operands } => {
            let mut values = Vec::with_capacity(operands.len());
            for operand in operands {
                match operand {
                    Operand::Literal(n) => values.push(n.clone()),
                    Operand::Column(c) => match row.get(c) {
                        // Null in, null out, as in SQL.
                        None | Some(Value::Null) => return Ok(Value::Null),
                        Some(Value::Number(n)) => values.push(n.clone()),
                        Some(other) => {
                            return Err(TransformError::new(
                                c,
                                other,
                                format!("`{column}` computes with it, but it is not a number (cast it first)"),
                            ))
                        }
                    },
                }
            }
            arith(*op, &values).ok_or_else(|| TransformError {
                column: column.to_string(),
                value: Some(values.iter().map(Number::to_string).collect::<Vec<_>>().join(", ")),
                problem: match op {
                    Arith::Div => "division by zero or a result out of range".into(),
                    _ => "the result is out of range".into(),
                },
            })
        }
    }
}

/// Integers stay integers (add, sub, mul) while they fit; otherwise floats.
fn arith(op: Arith, values: &[Number]) -> Option<Value> {
    if op != Arith::Div {
        if let Some(ints) = values.iter().map(Number::as_i64).collect::<Option<Vec<i64>>>() {
            let (first, rest) = ints.split_first()?;
            let result = rest.iter().try_fold(*first, |acc, x| match op {
                Arith::Add => acc.checked_add(*x),
                Arith::Sub => acc.checked_sub(*x),
                _ => acc.checked_mul(*x),
            });
            return result.map(Value::from);
        }
    }
    let floats: Vec<f64> = values.iter().map(|n| n.as_f64()).collect::<Option<_>>()?;
    let (first, rest) = floats.split_first()?;
    let mut acc = *first;
    for x in rest {
        match op {
            Arith::Add => acc += x,
            Arith::Sub => acc -= x,
            Arith::Mul => acc *= x,
            Arith::Div if *x == 0.0 => return None,
            Arith::Div => acc /= x,
        }
    }
    Number::from_f64(acc).map(Value::Number)
}
