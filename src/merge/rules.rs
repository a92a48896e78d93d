//! Column rules (`[merge.columns]`): how they are spelled in TOML, and the
//! value order that `max` and `min` use.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::same_json;

/// How one column resolves under `field-lww` (`[merge.columns]`); a column
/// without a rule takes its latest write by the `lww` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleSpelling", into = "RuleSpelling")]
pub enum ColumnRule {
    /// Only the owning source's writes count: the column takes the owner's
    /// latest write, and the latest write of any source while the owner has
    /// none (so a row inserted elsewhere is still complete).
    Owner {
        /// The owning source's configured name.
        source: String,
    },
    /// The largest value ever written (JSON numbers by value, strings by
    /// byte order; null loses to any value).
    Max,
    /// The smallest value ever written (null loses to any value).
    Min,
    /// A JSON array holding the union of the elements ever added, sorted;
    /// a removal takes away only the additions its writer had seen
    /// (add-wins observed-remove set).
    Union,
    /// A number that sources change by deltas: the initial value (the
    /// latest insert) plus every source's net `after - before`, so
    /// concurrent increments add up.
    Counter,
}

impl ColumnRule {
    /// The configuration spelling of the rule (`owner`, `max`, `min`, `union`).
    pub fn name(&self) -> &'static str {
        match self {
            ColumnRule::Owner { .. } => "owner",
            ColumnRule::Max => "max",
            ColumnRule::Min => "min",
            ColumnRule::Union => "union",
            ColumnRule::Counter => "counter",
        }
    }
}

/// A rule as written in TOML: `{ rule = "owner", source = "crm" }`. (serde's
/// internally tagged enums let unknown keys through on unit variants, so a
/// misplaced `source` would be silently ignored.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpelling {
    rule: RuleName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RuleName {
    Owner,
    Max,
    Min,
    Union,
    Counter,
}

impl TryFrom<RuleSpelling> for ColumnRule {
    type Error = String;

    fn try_from(r: RuleSpelling) -> Result<Self, String> {
        match (r.rule, r.source) {
            (RuleName::Owner, Some(source)) => Ok(ColumnRule::Owner { source }),
            (RuleName::Owner, None) => Err("rule \"owner\" needs `source`, the owning source's name".into()),
            (_, Some(_)) => Err("`source` applies to rule \"owner\" only".into()),
            (RuleName::Max, None) => Ok(ColumnRule::Max),
            (RuleName::Min, None) => Ok(ColumnRule::Min),
            (RuleName::Union, None) => Ok(ColumnRule::Union),
            (RuleName::Counter, None) => Ok(ColumnRule::Counter),
        }
    }
}

impl From<ColumnRule> for RuleSpelling {
    fn from(rule: ColumnRule) -> Self {
        match rule {
            ColumnRule::Owner { source } => RuleSpelling { rule: RuleName::Owner, source: Some(source) },
            ColumnRule::Max => RuleSpelling { rule: RuleName::Max, source: None },
            ColumnRule::Min => RuleSpelling { rule: RuleName::Min, source: None },
            ColumnRule::Union => RuleSpelling { rule: RuleName::Union, source: None },
            ColumnRule::Counter => RuleSpelling { rule: RuleName::Counter, source: None },
        }
    }
}

/// How `a` ranks against `b` under a `max` or `min` rule: `Greater` when `a`
/// is the better value. Null loses to anything; otherwise values order by
/// kind (bool, number, string, array, object), numbers by value, strings by
/// bytes, and the rest, and equal numbers of different spelling (`1`, `1.0`),
/// by canonical JSON text, so the order is total.
pub(super) fn value_rank(rule: &ColumnRule, a: &Value, b: &Value) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => {
            let order = value_cmp(a, b);
            if *rule == ColumnRule::Min {
                order.reverse()
            } else {
                order
            }
        }
    }
}

/// A total order on JSON values (see [`value_rank`]).
pub(super) fn value_cmp(a: &Value, b: &Value) -> Ordering {
    pub(super) fn kind(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    let text = || serde_json::to_string(a).expect("values serialize").cmp(&serde_json::to_string(b).expect("values serialize"));
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let by_value = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x.cmp(&y),
                (_, _, Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None, _, Some(_)) => Ordering::Less, // an i64 vs a u64 above i64::MAX
                (None, Some(_), Some(_), _) => Ordering::Greater,
                _ => x.as_f64().unwrap_or(f64::NAN).total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
            };
            // Equal JSON text needs no serializing (the usual case when a
            // source rewrites a column with its value unchanged).
            by_value.then_with(|| if same_json(a, b) { Ordering::Equal } else { text() })
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => kind(a).cmp(&kind(b)).then_with(text),
    }
}
