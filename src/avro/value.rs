//! Avro values ↔ the JSON rows the merge engine works on.
//!
//! Through apache-avro's values, guided by the schema's [`Shape`]
//! ([`super::shape`]); [`super::decode`] converts the same way directly on
//! the binary, for the shapes it handles.
//!
//! Avro → JSON follows what Debezium's JSON converter writes for the same
//! column, so an Avro source and a JSON source of the same table merge into
//! the same rows:
//!
//! | Avro | JSON |
//! |---|---|
//! | null, boolean, string | the same |
//! | int, long, and the date/time logical types (`date`, `time-*`, `timestamp-*`, Debezium's `io.debezium.time.*` which are plain int/long) | the number |
//! | float, double | the number; NaN and ±infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `decimal` (bytes or fixed) | the exact decimal as a string, e.g. `"12.30"` (Debezium's `decimal.handling.mode=string`) |
//! | bytes, fixed | base64 (as Kafka Connect's JSON converter) |
//! | enum | the symbol |
//! | uuid | the string |
//! | union | the branch's value |
//! | array, map, record | array, object, object |
//!
//! JSON → Avro is the inverse, guided by the target schema: a union takes
//! `null` for JSON null and otherwise its first branch that accepts the value.

use std::collections::HashMap;

use apache_avro::types::Value;
use base64::Engine as _;
use num_bigint::BigInt;
use serde_json::Value as Json;

use super::error::CodecError;
pub use super::shape::{FieldShape, IntKind, LongKind, Names, Shape};

impl Shape {
    /// Converts a decoded value to JSON.
    pub fn to_json(&self, value: &Value) -> Result<Json, CodecError> {
        Ok(match (self, value) {
            (_, Value::Union(i, inner)) => match self {
                Shape::Union(branches) => match branches.get(*i as usize) {
                    Some(b) => b.to_json(inner)?,
                    None => return Err(CodecError::UnionBranchNotInSchema(*i)),
                },
                _ => self.to_json(inner)?,
            },
            (_, Value::Null) => Json::Null,
            (_, Value::Boolean(b)) => Json::Bool(*b),
            (_, Value::Int(n) | Value::Date(n) | Value::TimeMillis(n)) => Json::from(*n),
            (
                _,
                Value::Long(n)
                | Value::TimeMicros(n)
                | Value::TimestampMillis(n)
                | Value::TimestampMicros(n)
                | Value::TimestampNanos(n)
                | Value::LocalTimestampMillis(n)
                | Value::LocalTimestampMicros(n)
                | Value::LocalTimestampNanos(n),
            ) => Json::from(*n),
            (_, Value::Float(f)) => float_json(f32_as_f64(*f)),
            (_, Value::Double(f)) => float_json(*f),
            (_, Value::String(s)) => Json::String(s.clone()),
            (Shape::Decimal { scale, .. }, Value::Bytes(b) | Value::Fixed(_, b)) => {
                Json::String(decimal_text(&BigInt::from_signed_bytes_be(b), *scale))
            }
            (_, Value::Bytes(b) | Value::Fixed(_, b)) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
            (_, Value::Enum(_, s)) => Json::String(s.clone()),
            (Shape::Decimal { scale, .. }, Value::Decimal(d)) => Json::String(decimal_text(&BigInt::from(d.clone()), *scale)),
            (_, Value::Decimal(d)) => Json::String(decimal_text(&BigInt::from(d.clone()), 0)),
            (_, Value::BigDecimal(d)) => Json::String(d.to_string()),
            (_, Value::Uuid(u)) => Json::String(u.to_string()),
            (_, Value::Duration(d)) => serde_json::json!({
                "months": u32::from(d.months()),
                "days": u32::from(d.days()),
                "millis": u32::from(d.millis()),
            }),
            (_, Value::Array(items)) => {
                let item = match self {
                    Shape::Array(s) => s.as_ref(),
                    _ => &Shape::Opaque,
                };
                Json::Array(items.iter().map(|v| item.to_json(v)).collect::<Result<_, _>>()?)
            }
            (_, Value::Map(entries)) => {
                let inner = match self {
                    Shape::Map(s) => s.as_ref(),
                    _ => &Shape::Opaque,
                };
                let mut sorted: Vec<(&String, &Value)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), inner.to_json(v)?);
                }
                Json::Object(out)
            }
            (_, Value::Record(fields)) => {
                let shapes = match self {
                    Shape::Record(s) => Some(s),
                    _ => None,
                };
                let mut out = serde_json::Map::new();
                for (i, (name, v)) in fields.iter().enumerate() {
                    let shape = shapes
                        .and_then(|s| s.get(i).filter(|f| &f.name == name).or_else(|| s.iter().find(|f| &f.name == name)))
                        .map_or(&Shape::Opaque, |f| &f.shape);
                    out.insert(name.clone(), shape.to_json(v).map_err(|e| e.in_field(name))?);
                }
                Json::Object(out)
            }
        })
    }

    /// Converts JSON to a value of this shape.
    pub fn to_avro(&self, json: &Json) -> Result<Value, CodecError> {
        let mismatch = || CodecError::Misfit { found: kind(json), expected: self.describe() };
        Ok(match self {
            Shape::Null => match json {
                Json::Null => Value::Null,
                _ => return Err(mismatch()),
            },
            Shape::Boolean => Value::Boolean(json.as_bool().ok_or_else(mismatch)?),
            Shape::Int(k) => {
                let n = json
                    .as_i64()
                    .or_else(|| json.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(mismatch)?;
                match k {
                    IntKind::Plain => Value::Int(n),
                    IntKind::Date => Value::Date(n),
                    IntKind::TimeMillis => Value::TimeMillis(n),
                }
            }
            Shape::Long(k) => {
                let n = json.as_i64().or_else(|| json.as_str().and_then(|s| s.parse().ok())).ok_or_else(mismatch)?;
                match k {
                    LongKind::Plain => Value::Long(n),
                    LongKind::TimeMicros => Value::TimeMicros(n),
                    LongKind::TimestampMillis => Value::TimestampMillis(n),
                    LongKind::TimestampMicros => Value::TimestampMicros(n),
                    LongKind::TimestampNanos => Value::TimestampNanos(n),
                    LongKind::LocalTimestampMillis => Value::LocalTimestampMillis(n),
                    LongKind::LocalTimestampMicros => Value::LocalTimestampMicros(n),
                    LongKind::LocalTimestampNanos => Value::LocalTimestampNanos(n),
                }
            }
            Shape::Float => Value::Float(json_float(json).ok_or_else(mismatch)? as f32),
            Shape::Double => Value::Double(json_float(json).ok_or_else(mismatch)?),
            Shape::String | Shape::Uuid => match json {
                Json::String(s) => Value::String(s.clone()),
                _ => return Err(mismatch()),
            },
            Shape::Bytes => Value::Bytes(base64_json(json).ok_or_else(mismatch)?),
            Shape::Fixed(size) => {
                let b = base64_json(json).ok_or_else(mismatch)?;
                if b.len() != *size {
                    return Err(CodecError::FixedSize { len: b.len(), size: *size });
                }
                Value::Fixed(*size, b)
            }
            Shape::Enum(symbols) => {
                let s = json.as_str().ok_or_else(mismatch)?;
                let i = symbols.iter().position(|x| x == s).ok_or_else(|| CodecError::NotASymbol(s.to_string()))?;
                Value::Enum(i as u32, s.to_string())
            }
            Shape::Decimal { scale, fixed } => {
                let unscaled = parse_decimal(json, *scale).ok_or_else(mismatch)?;
                let mut bytes = unscaled.to_signed_bytes_be();
                if let Some(size) = fixed {
                    if bytes.len() > *size {
                        return Err(CodecError::DecimalTooWide { len: bytes.len(), size: *size });
                    }
                    let fill = if unscaled.sign() == num_bigint::Sign::Minus { 0xff } else { 0 };
                    let mut padded = vec![fill; size - bytes.len()];
                    padded.extend_from_slice(&bytes);
                    bytes = padded;
                }
                Value::Decimal(apache_avro::Decimal::from(bytes))
            }
            Shape::BigDecimal => {
                let s = match json {
                    Json::String(s) => s.clone(),
                    Json::Number(n) => n.to_string(),
                    _ => return Err(mismatch()),
                };
                Value::BigDecimal(s.parse().map_err(|_| mismatch())?)
            }
            Shape::Duration => return Err(CodecError::Unsupported("writing the Avro duration type is not supported")),
            Shape::Array(item) => match json {
                Json::Array(items) => Value::Array(items.iter().map(|v| item.to_avro(v)).collect::<Result<_, _>>()?),
                _ => return Err(mismatch()),
            },
            Shape::Map(inner) => match json {
                Json::Object(o) => Value::Map(
                    o.iter().map(|(k, v)| Ok((k.clone(), inner.to_avro(v)?))).collect::<Result<HashMap<_, _>, CodecError>>()?,
                ),
                _ => return Err(mismatch()),
            },
            Shape::Union(branches) => {
                if json.is_null() {
                    if let Some(i) = branches.iter().position(|b| *b == Shape::Null) {
                        return Ok(Value::Union(i as u32, Box::new(Value::Null)));
                    }
                    return Err(mismatch());
                }
                let mut last = None;
                for (i, b) in branches.iter().enumerate().filter(|(_, b)| **b != Shape::Null) {
                    match b.to_avro(json) {
                        Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(mismatch));
            }
            Shape::Record(_) => {
                let Json::Object(o) = json else { return Err(mismatch()) };
                self.record_to_avro(o)?
            }
            Shape::Opaque => return Err(CodecError::Unsupported("the schema nests too deep to write")),
        })
    }

    /// A JSON object as a value of this record shape: missing fields take
    /// their default, or null.
    pub fn record_to_avro(&self, o: &serde_json::Map<String, Json>) -> Result<Value, CodecError> {
        let Shape::Record(fields) = self else {
            return Err(CodecError::Misfit { found: "an object", expected: self.describe() });
        };
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let v = match (o.get(&f.name), &f.default) {
                (Some(v), _) => f.shape.to_avro(v),
                (None, Some(d)) => f.shape.default_to_avro(d),
                (None, None) => f.shape.to_avro(&Json::Null),
            }
            .map_err(|e| e.in_field(&f.name))?;
            out.push((f.name.clone(), v));
        }
        Ok(Value::Record(out))
    }

    /// A default value in Avro's JSON notation (a union's default is of its
    /// first branch; bytes defaults are ISO-8859-1 strings).
    fn default_to_avro(&self, json: &Json) -> Result<Value, CodecError> {
        match self {
            Shape::Union(branches) => {
                let first = branches.first().ok_or(CodecError::EmptyUnion)?;
                Ok(Value::Union(0, Box::new(first.default_to_avro(json)?)))
            }
            Shape::Bytes | Shape::Fixed(_) => match json {
                Json::String(s) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())),
                _ => self.to_avro(json),
            },
            _ => self.to_avro(json),
        }
    }
}

fn kind(json: &Json) -> &'static str {
    crate::json::json_kind(json)
}

/// A `float` as the f64 of its shortest decimal form (0.1f32 → 0.1, not
/// 0.10000000149011612), as JSON converters print it.
pub(crate) fn f32_as_f64(f: f32) -> f64 {
    if f.is_finite() {
        f.to_string().parse().unwrap_or(f64::from(f))
    } else {
        f64::from(f)
    }
}

pub(crate) fn float_json(f: f64) -> Json {
    match serde_json::Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

pub(crate) fn json_float(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn base64_json(json: &Json) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(json.as_str()?).ok()
}

/// `unscaled × 10^-scale` as exact decimal text: `1230`, scale 2 → `12.30`.
pub fn decimal_text(unscaled: &BigInt, scale: usize) -> String {
    let digits = unscaled.magnitude().to_string();
    let sign = if unscaled.sign() == num_bigint::Sign::Minus { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale - digits.len() + 1)) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// The unscaled integer of a decimal given as a string or a number, at
/// `scale`; `None` when it is not a decimal or has more fractional digits
/// than `scale` (other than trailing zeros): nothing is rounded away.
pub fn parse_decimal(json: &Json, scale: usize) -> Option<BigInt> {
    let text = match json {
        Json::String(s) => s.trim().to_string(),
        Json::Number(n) => n.to_string(),
        _ => return None,
    };
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(&text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale {
        return None;
    }
    let digits = format!("{int}{frac}{}", "0".repeat(scale - frac.len()));
    let n: BigInt = digits.trim_start_matches('0').parse().unwrap_or_default();
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;
    use serde_json::json;

    fn shape(schema: &str) -> (Schema, Shape) {
        let s = Schema::parse_str(schema).unwrap();
        let resolved = apache_avro::schema::ResolvedSchema::try_from(&s).unwrap();
        let names: Names<'_> = resolved.get_names().clone();
        let shape = Shape::of(&s, &names);
        (s.clone(), shape)
    }

    #[test]
    fn decimals_are_exact_text_both_ways() {
        assert_eq!(decimal_text(&BigInt::from(1230), 2), "12.30");
        assert_eq!(decimal_text(&BigInt::from(-5), 3), "-0.005");
        assert_eq!(decimal_text(&BigInt::from(42), 0), "42");
        assert_eq!(parse_decimal(&json!("12.3"), 2), Some(BigInt::from(1230)));
        assert_eq!(parse_decimal(&json!("-0.005"), 3), Some(BigInt::from(-5)));
        assert_eq!(parse_decimal(&json!(7), 2), Some(BigInt::from(700)));
        assert_eq!(parse_decimal(&json!("1.234"), 2), None, "never rounds digits away");
        assert_eq!(parse_decimal(&json!("1.2300"), 2), Some(BigInt::from(123)));
        assert_eq!(parse_decimal(&json!("abc"), 2), None);
    }

    #[test]
    fn a_debezium_row_round_trips() {
        let (schema, shape) = shape(
            r#"{"type":"record","name":"Value","namespace":"eu.public.customers","fields":[
                {"name":"id","type":"int"},
                {"name":"name","type":["null","string"],"default":null},
                {"name":"balance","type":["null",{"type":"bytes","logicalType":"decimal","precision":10,"scale":2,"connect.name":"org.apache.kafka.connect.data.Decimal"}],"default":null},
                {"name":"updated","type":["null",{"type":"long","connect.name":"io.debezium.time.MicroTimestamp"}],"default":null},
                {"name":"born","type":["null",{"type":"int","logicalType":"date"}],"default":null},
                {"name":"photo","type":["null","bytes"],"default":null},
                {"name":"tier","type":{"type":"enum","name":"Tier","symbols":["GOLD","SILVER"]}},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"ratio","type":"double"}
            ]}"#,
        );
        let row = json!({"id": 7, "name": "Zoë", "balance": "-12.30", "updated": 1_700_000_000_000_123i64,
            "born": 19000, "photo": "AAEC", "tier": "GOLD", "tags": ["a", "b"], "ratio": "NaN"});
        let value = shape.to_avro(&row).unwrap();
        let bytes =
            apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(value).unwrap();
        let back = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        assert_eq!(shape.to_json(&back).unwrap(), row);
    }

    #[test]
    fn recursive_schemas_build_quickly() {
        // Every field refers back to the record: without a guard this
        // expands to fields^depth nodes.
        let fields: Vec<String> = (0..8).map(|i| format!(r#"{{"name":"f{i}","type":["null","R"],"default":null}}"#)).collect();
        let text = format!(r#"{{"type":"record","name":"R","fields":[{}]}}"#, fields.join(","));
        let (_, shape) = shape(&text);
        let Shape::Record(f) = &shape else { panic!("a record") };
        assert_eq!(f[0].shape, Shape::Union(vec![Shape::Null, Shape::Opaque]));
    }

    #[test]
    fn misfits_are_named() {
        let (_, shape) = shape(r#"{"type":"record","name":"R","fields":[{"name":"n","type":"int"}]}"#);
        let e = shape.to_avro(&json!({"n": "x"})).unwrap_err();
        let CodecError::InField { field, source } = &e else { panic!("{e:?}") };
        assert_eq!(field, "n");
        assert!(matches!(**source, CodecError::Misfit { found: "a string", .. }), "{e}");
        assert_eq!(e.to_string(), "n: a string does not fit int");
        let e = shape.to_avro(&json!({"n": 1u64 << 40})).unwrap_err();
        assert!(e.to_string().contains("int"), "{e}");
    }
}
