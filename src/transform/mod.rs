//! Per-source transformations and filters: a source row → the target
//! table's shape, before merging.
//!
//! A `[sources.transform]` table ([`TransformSpec`]) is compiled once at
//! start-up into a [`Transform`]; a `[sources.where]` table ([`FilterSpec`])
//! into a [`Filter`]. Both are pure functions of a row (no Kafka, no I/O), so
//! the normalizer, `replay`, `transform-test` and the benches share them.
//!
//! Operations run in a fixed order, each naming columns as the previous left
//! them: `rename` → `required` → `cast` → `map` → `compute` → `set` → `drop`
//! / `keep`. The filter reads the source row as it arrives (source column
//! names), so records the target does not want are never transformed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::merge::Row;
use crate::time;

/// `[sources.transform]` as written in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Source column → target column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Columns an upsert's row must hold, non-null (target names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Column → cast name (see [`Cast`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cast: BTreeMap<String, String>,
    /// Column → code table (source value as text → target value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, BTreeMap<String, Value>>,
    /// Column → computed value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compute: BTreeMap<String, ComputeSpec>,
    /// Column → constant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, Value>,
    /// Columns to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// When set, the only columns kept (an allow-list: a column the source
    /// adds later does not leak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Vec<String>>,
}

/// One computed column: exactly one of the operations. Operands that are
/// strings name columns; numbers are literals.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    /// The columns' text joined with `sep`; null columns are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<Vec<String>>,
    /// Separator of `concat` (default empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sep: Option<String>,
    /// The first non-null column, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<Vec<String>>,
    /// `coalesce`'s value when every column is null or missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Sum of the operands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Vec<Value>>,
    /// First operand minus the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<Vec<Value>>,
    /// Product of the operands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mul: Option<Vec<Value>>,
    /// First operand divided by the others (a float).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub div: Option<Vec<Value>>,
}

/// `[sources.where]`: column (source name) → condition; every condition must
/// hold. A condition is a value (equality) or a table of `eq`, `ne`, `in`,
/// `not_in`, `lt`, `le`, `gt`, `ge`, `present`.
pub type FilterSpec = BTreeMap<String, Value>;

/// A configuration problem in a mapping or filter: the key under the
/// source's table (`transform.cast.balance`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// The key, relative to the source (`transform.cast.balance`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A record the transformation cannot handle: the column, its value and
/// what is wrong. It becomes a dead letter with reason `transform`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`{}: {problem}", value.as_ref().map(|v| format!(" value {v}")).unwrap_or_default())]
pub struct TransformError {
    /// The column (target name).
    pub column: String,
    /// The offending value as JSON text; `None` when the column is missing.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl TransformError {
    fn new(column: &str, value: &Value, problem: impl Into<String>) -> Self {
        Self { column: column.to_string(), value: Some(short_json(value)), problem: problem.into() }
    }
}

/// A value's JSON text, cut to a length a dead-letter header can carry.
fn short_json(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 120 {
        return text;
    }
    let mut end = 117;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A cast: what the source value is, turned into the target type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    /// Any scalar → its text.
    String,
    /// A whole number (or a string of one) → integer.
    Int,
    /// A number (or a string of one) → float.
    Float,
    /// Integer cents (or a string of them) → a decimal number with 2 places.
    Cents,
    /// `true`/`false`, `t`/`f`, `yes`/`no`, `y`/`n`, `1`/`0`, `on`/`off` → boolean.
    Bool,
    /// Epoch seconds → the timestamp form.
    EpochSeconds,
    /// Epoch milliseconds → the timestamp form.
    EpochMillis,
    /// Epoch microseconds → the timestamp form.
    EpochMicros,
    /// ISO-8601 text → the timestamp form.
    Iso8601,
}

impl Cast {
    const NAMES: &'static [(&'static str, Cast)] = &[
        ("string", Cast::String),
        ("int", Cast::Int),
        ("float", Cast::Float),
        ("cents", Cast::Cents),
        ("bool", Cast::Bool),
        ("epoch-seconds", Cast::EpochSeconds),
        ("epoch-millis", Cast::EpochMillis),
        ("epoch-micros", Cast::EpochMicros),
        ("iso8601", Cast::Iso8601),
    ];

    fn parse(name: &str) -> Option<Cast> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, c)| *c == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Casts one non-null value.
    fn apply(self, column: &str, value: &Value) -> Result<Value, TransformError> {
        let fail = |problem: String| TransformError::new(column, value, format!("cannot cast to {}: {problem}", self.name()));
        match self {
            Cast::String => match value {
                Value::String(_) => Ok(value.clone()),
                Value::Number(n) => Ok(Value::String(n.to_string())),
                Value::Bool(b) => Ok(Value::String(b.to_string())),
                _ => Err(fail(format!("{} has no text form", crate::json::json_kind(value)))),
            },
            Cast::Int => integer(value).map(Value::from).map_err(fail),
            Cast::Float => {
                let f = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
                    _ => None,
                };
                f.and_then(Number::from_f64).map(Value::Number).ok_or_else(|| fail("not a finite number".into()))
            }
            Cast::Cents => {
                let cents = integer(value).map_err(fail)?;
                if cents.unsigned_abs() > 1 << 53 {
                    return Err(fail("too large for an exact decimal".into()));
                }
                // Both operands are exact, and the division is correctly
                // rounded: the shortest text of the result is the decimal.
                Ok(Value::Number(Number::from_f64(cents as f64 / 100.0).expect("finite")))
            }
            Cast::Bool => match value {
                Value::Bool(_) => Ok(value.clone()),
                Value::Number(n) if n.as_i64() == Some(1) => Ok(Value::Bool(true)),
                Value::Number(n) if n.as_i64() == Some(0) => Ok(Value::Bool(false)),
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "t" | "yes" | "y" | "1" | "on" => Ok(Value::Bool(true)),
                    "false" | "f" | "no" | "n" | "0" | "off" => Ok(Value::Bool(false)),
                    _ => Err(fail("not a boolean spelling (true/false, t/f, yes/no, y/n, 1/0, on/off)".into())),
                },
                _ => Err(fail("not a boolean spelling (true/false, t/f, yes/no, y/n, 1/0, on/off)".into())),
            },
            Cast::EpochSeconds | Cast::EpochMillis | Cast::EpochMicros => {
                let scale: i64 = match self {
                    Cast::EpochSeconds => 1_000_000,
                    Cast::EpochMillis => 1_000,
                    _ => 1,
                };
                let micros = integer(value).map_err(fail)?.checked_mul(scale).ok_or_else(|| fail("out of range".into()))?;
                time::format_micros(micros).map(Value::String).ok_or_else(|| fail("outside the years 1 to 9999".into()))
            }
            Cast::Iso8601 => {
                let Value::String(s) = value else {
                    return Err(fail(format!("expected a string, found {}", crate::json::json_kind(value))));
                };
                let micros = time::parse_iso8601(s).map_err(fail)?;
                time::format_micros(micros).map(Value::String).ok_or_else(|| fail("outside the years 1 to 9999".into()))
            }
        }
    }
}

/// A whole number from a JSON number (`42`, `42.0`) or text (`"0042"`).
fn integer(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64))
            .ok_or_else(|| "not a whole number in range".into()),
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| "not a whole number".into()),
        other => Err(format!("expected a number or a string, found {}", crate::json::json_kind(other))),
    }
}

/// An operand of arithmetic: a column or a literal number.
#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Column(String),
    Literal(Number),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, PartialEq)]
enum Compute {
    Concat { columns: Vec<String>, sep: String },
    Coalesce { columns: Vec<String>, default: Value },
    Arith { op: Arith, operands: Vec<Operand> },
}

/// Which image a transformation is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// An upsert's `after` image: every operation, `required` checked.
    After,
    /// A `before` image: every operation but `required` (a delete's before
    /// image may hold the key columns only).
    Before,
    /// A record key's fields: `rename`, `cast` and `map` only, so the key
    /// names and types match the rows'.
    Key,
}

/// A compiled `[sources.transform]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    rename: Vec<(String, String)>,
    /// Whether a rename's target is also renamed (a swap or a chain): then
    /// every renamed column is taken out before any is put back.
    rename_overlaps: bool,
    required: Vec<String>,
    cast: Vec<(String, Cast)>,
    /// Code tables are short: a linear search beats hashing the code.
    map: Vec<(String, Vec<(String, Value)>)>,
    compute: Vec<(String, Compute)>,
    set: Vec<(String, Value)>,
    drop: Vec<String>,
    keep: Option<HashSet<String>>,
}

impl Transform {
    /// Compiles a mapping; every problem is listed with its key
    /// (`transform.cast.balance`).
    pub fn compile(spec: &TransformSpec) -> Result<Self, Vec<SpecProblem>> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(SpecProblem { key, message });
        let mut targets: HashMap<&str, &str> = HashMap::new();
        for (from, to) in &spec.rename {
            if from.is_empty() || to.is_empty() {
                problem(format!("transform.rename.{from}"), "column names must not be empty".into());
            } else if let Some(other) = targets.insert(to, from) {
                problem(format!("transform.rename.{from}"), format!("\"{to}\" is also the new name of \"{other}\""));
            }
        }
        let mut cast = Vec::new();
        for (column, name) in &spec.cast {
            match Cast::parse(name) {
                Some(c) => cast.push((column.clone(), c)),
                None => problem(
                    format!("transform.cast.{column}"),
                    format!(
                        "unknown cast \"{name}\" (expected one of {})",
                        Cast::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }
        let mut map = Vec::new();
        for (column, table) in &spec.map {
            if table.is_empty() {
                problem(format!("transform.map.{column}"), "the code table is empty".into());
            }
            map.push((column.clone(), table.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()));
        }
        let mut compute = Vec::new();
        for (column, c) in &spec.compute {
            let key = format!("transform.compute.{column}");
            match compile_compute(c) {
                Ok(c) => compute.push((column.clone(), c)),
                Err(message) => problem(key, message),
            }
        }
        if let Some(keep) = &spec.keep {
            if keep.is_empty() {
                problem("transform.keep".into(), "an empty list would drop every column".into());
            }
            if !spec.drop.is_empty() {
                problem("transform.drop".into(), "set together with keep; list the columns to keep, or those to drop".into());
            }
        }
        for (i, c) in spec.required.iter().enumerate() {
            if c.is_empty() {
                problem(format!("transform.required[{i}]"), "column names must not be empty".into());
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            rename: spec.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            rename_overlaps: spec.rename.values().any(|to| spec.rename.contains_key(to)),
            required: spec.required.clone(),
            cast,
            map,
            compute,
            set: spec.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            drop: spec.drop.clone(),
            keep: spec.keep.as_ref().map(|k| k.iter().cloned().collect()),
        })
    }

    /// Whether `column` survives `drop`/`keep` (for the checks of key and
    /// clock columns).
    pub fn keeps(&self, column: &str) -> bool {
        !self.drop.iter().any(|d| d == column) && self.keep.as_ref().is_none_or(|k| k.contains(column))
    }

    /// Applies the mapping to one image, in place. On error the row is left
    /// part-way: the caller sets the record aside.
    pub fn apply(&self, row: &mut Row, image: Image) -> Result<(), TransformError> {
        if !self.rename_overlaps {
            for (from, to) in &self.rename {
                if let Some(v) = row.remove(from) {
                    row.insert(to.clone(), v);
                }
            }
        } else {
            // Take every renamed column out first, so swaps (a → b, b → a) work.
            let moved: Vec<(&str, Value)> =
                self.rename.iter().filter_map(|(from, to)| row.remove(from).map(|v| (to.as_str(), v))).collect();
            for (to, v) in moved {
                row.insert(to.to_string(), v);
            }
        }
        if image == Image::After {
            for column in &self.required {
                match row.get(column) {
                    Some(Value::Null) => {
                        return Err(TransformError::new(column, &Value::Null, "required, but null"));
                    }
                    Some(_) => {}
                    None => {
                        return Err(TransformError {
                            column: column.clone(),
                            value: None,
                            problem: "required, but missing from the row".into(),
                        })
                    }
                }
            }
        }
        for (column, cast) in &self.cast {
            if let Some(v) = row.get_mut(column) {
                if !v.is_null() {
                    *v = cast.apply(column, v)?;
                }
            }
        }
        for (column, table) in &self.map {
            if let Some(v) = row.get_mut(column) {
                let find = |code: &str| table.iter().find(|(k, _)| k == code).map(|(_, v)| v);
                let code = match v {
                    Value::Null => continue,
                    Value::String(s) => find(s),
                    Value::Number(_) | Value::Bool(_) => find(&v.to_string()),
                    _ => None,
                };
                match code {
                    Some(mapped) => *v = mapped.clone(),
                    None => {
                        let mut known: Vec<&str> = table.iter().map(|(k, _)| k.as_str()).collect();
                        known.sort_unstable();
                        return Err(TransformError::new(
                            column,
                            v,
                            format!("no entry in the code table (known: {})", known.join(", ")),
                        ));
                    }
                }
            }
        }
        if image == Image::Key {
            return Ok(());
        }
        for (column, c) in &self.compute {
            let value = compute(column, c, row)?;
            row.insert(column.clone(), value);
        }
        for (column, v) in &self.set {
            row.insert(column.clone(), v.clone());
        }
        for column in &self.drop {
            row.remove(column);
        }
        if let Some(keep) = &self.keep {
            row.retain(|k, _| keep.contains(k));
        }
        Ok(())
    }

    /// The name `rename` gives `column` (the column itself when it is not renamed).
    pub fn renamed<'a>(&'a self, column: &'a str) -> &'a str {
        self.rename.iter().find(|(from, _)| from == column).map_or(column, |(_, to)| to.as_str())
    }

    /// The number of operations (one per column and step), for reports.
    pub fn operations(&self) -> usize {
        self.rename.len()
            + self.required.len()
            + self.cast.len()
            + self.map.len()
            + self.compute.len()
            + self.set.len()
            + self.drop.len()
            + usize::from(self.keep.is_some())
    }
}

fn compile_compute(c: &ComputeSpec) -> Result<Compute, String> {
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

fn compute(column: &str, c: &Compute, row: &Row) -> Result<Value, TransformError> {
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

#[cfg(test)]
mod tests;
