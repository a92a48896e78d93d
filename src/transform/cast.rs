//! `transform.cast`: a source value turned into the target type, by name
//! (`int`, `cents`, `epoch-millis`, ...). Timestamps come out in the one
//! form of [`crate::time`].

use serde_json::{Number, Value};

use super::TransformError;
use crate::time;

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
    pub(super) const NAMES: &'static [(&'static str, Cast)] = &[
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

    pub(super) fn parse(name: &str) -> Option<Cast> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, c)| *c == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Casts one non-null value.
    pub(super) fn apply(self, column: &str, value: &Value) -> Result<Value, TransformError> {
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
