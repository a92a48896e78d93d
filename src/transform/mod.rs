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
//!
//! This file holds the specs, the compiled mapping and its order of steps;
//! `cast`, `compute` and `filter` hold those operations' rules.

mod cast;
mod compute;
mod filter;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use self::cast::Cast;
use self::compute::{compile_compute, compute, Compute};
pub use self::filter::Filter;
use crate::merge::Row;

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

#[cfg(test)]
mod tests;
