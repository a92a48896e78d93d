//! What a schema is to the codecs: a [`Shape`], built once per schema
//! (named references resolved, logical types and decimal scales read off the
//! schema), then used for every record without looking anything up.
//!
//! A shape converts in two ways: through apache-avro's values
//! ([`super::value`]: `to_json`, `to_avro`), and directly between Avro binary
//! and JSON ([`super::decode`]: `decode_json`, `encode_json`, `skip`), the
//! per-record path for every shape it handles (`is_direct`).

use std::collections::HashMap;

use apache_avro::schema::{InnerDecimalSchema, Name, Schema, UuidSchema};
use serde_json::Value as Json;

/// Named types by full name.
pub type Names<'s> = HashMap<Name, &'s Schema>;

/// How deep named references are followed before a (recursive) schema is
/// converted without its type information.
const MAX_DEPTH: usize = 32;

/// Nodes one shape may have before the rest is left opaque.
const MAX_NODES: usize = 100_000;

/// A schema, reduced to what converting values needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `null`.
    Null,
    /// `boolean`.
    Boolean,
    /// `int` and the int-based logical types.
    Int(IntKind),
    /// `long` and the long-based logical types.
    Long(LongKind),
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `bytes`.
    Bytes,
    /// `fixed` of this size.
    Fixed(usize),
    /// `enum` with these symbols.
    Enum(Vec<String>),
    /// `decimal` with this scale, in bytes or a fixed of this size.
    Decimal {
        /// Digits after the point.
        scale: usize,
        /// `Some(size)` for a fixed-based decimal.
        fixed: Option<usize>,
    },
    /// `big-decimal`.
    BigDecimal,
    /// `uuid`.
    Uuid,
    /// `duration`.
    Duration,
    /// `array`.
    Array(Box<Shape>),
    /// `map`.
    Map(Box<Shape>),
    /// `union`.
    Union(Vec<Shape>),
    /// `record`: fields in order, with their defaults.
    Record(Vec<FieldShape>),
    /// A reference nested too deep (a recursive schema): converted by the
    /// value's own variant.
    Opaque,
}

/// The logical type over an `int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    /// Plain int.
    Plain,
    /// `date` (days since the epoch).
    Date,
    /// `time-millis`.
    TimeMillis,
}

/// The logical type over a `long`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongKind {
    /// Plain long.
    Plain,
    /// `time-micros`.
    TimeMicros,
    /// `timestamp-millis`.
    TimestampMillis,
    /// `timestamp-micros`.
    TimestampMicros,
    /// `timestamp-nanos`.
    TimestampNanos,
    /// `local-timestamp-millis`.
    LocalTimestampMillis,
    /// `local-timestamp-micros`.
    LocalTimestampMicros,
    /// `local-timestamp-nanos`.
    LocalTimestampNanos,
}

/// One record field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldShape {
    /// Field name.
    pub name: String,
    /// Its type.
    pub shape: Shape,
    /// Its default, as JSON (Avro's default notation).
    pub default: Option<Json>,
}

impl Shape {
    /// The shape of `schema`, references resolved through `names`. A
    /// reference to a type being expanded (a recursive schema) becomes
    /// [`Shape::Opaque`], and so does everything past a node budget, so a
    /// forged schema cannot make this take long.
    pub fn of(schema: &Schema, names: &Names<'_>) -> Shape {
        let mut budget = MAX_NODES;
        Self::build(schema, names, 0, &mut Vec::new(), &mut budget)
    }

    fn build<'s>(schema: &'s Schema, names: &Names<'s>, depth: usize, open: &mut Vec<&'s Name>, budget: &mut usize) -> Shape {
        if depth > MAX_DEPTH || *budget == 0 {
            return Shape::Opaque;
        }
        *budget -= 1;
        match schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            Schema::Int => Shape::Int(IntKind::Plain),
            Schema::Date => Shape::Int(IntKind::Date),
            Schema::TimeMillis => Shape::Int(IntKind::TimeMillis),
            Schema::Long => Shape::Long(LongKind::Plain),
            Schema::TimeMicros => Shape::Long(LongKind::TimeMicros),
            Schema::TimestampMillis => Shape::Long(LongKind::TimestampMillis),
            Schema::TimestampMicros => Shape::Long(LongKind::TimestampMicros),
            Schema::TimestampNanos => Shape::Long(LongKind::TimestampNanos),
            Schema::LocalTimestampMillis => Shape::Long(LongKind::LocalTimestampMillis),
            Schema::LocalTimestampMicros => Shape::Long(LongKind::LocalTimestampMicros),
            Schema::LocalTimestampNanos => Shape::Long(LongKind::LocalTimestampNanos),
            Schema::Float => Shape::Float,
            Schema::Double => Shape::Double,
            Schema::String => Shape::String,
            Schema::Bytes => Shape::Bytes,
            Schema::Fixed(f) => Shape::Fixed(f.size),
            Schema::Enum(e) => Shape::Enum(e.symbols.clone()),
            Schema::Decimal(d) => Shape::Decimal {
                scale: d.scale,
                fixed: match &d.inner {
                    InnerDecimalSchema::Bytes => None,
                    InnerDecimalSchema::Fixed(f) => Some(f.size),
                },
            },
            Schema::BigDecimal => Shape::BigDecimal,
            Schema::Uuid(u) => match u {
                UuidSchema::String => Shape::Uuid,
                UuidSchema::Bytes => Shape::Bytes,
                UuidSchema::Fixed(f) => Shape::Fixed(f.size),
            },
            Schema::Duration(_) => Shape::Duration,
            Schema::Array(a) => Shape::Array(Box::new(Self::build(&a.items, names, depth + 1, open, budget))),
            Schema::Map(m) => Shape::Map(Box::new(Self::build(&m.types, names, depth + 1, open, budget))),
            Schema::Union(u) => {
                Shape::Union(u.variants().iter().map(|s| Self::build(s, names, depth + 1, open, budget)).collect())
            }
            Schema::Record(r) => {
                open.push(&r.name);
                let fields = r
                    .fields
                    .iter()
                    .map(|f| FieldShape {
                        name: f.name.clone(),
                        shape: Self::build(&f.schema, names, depth + 1, open, budget),
                        default: f.default.clone(),
                    })
                    .collect();
                open.pop();
                Shape::Record(fields)
            }
            Schema::Ref { name } if open.contains(&name) => Shape::Opaque,
            Schema::Ref { name } => match names.get(name) {
                Some(s) => Self::build(s, names, depth + 1, open, budget),
                None => Shape::Opaque,
            },
        }
    }

    /// The shape of a record field, when this is a record (or a union with
    /// one record branch, as Debezium's `before`/`after`).
    pub fn field(&self, name: &str) -> Option<(usize, &Shape)> {
        match self {
            Shape::Record(fields) => fields.iter().enumerate().find(|(_, f)| f.name == name).map(|(i, f)| (i, &f.shape)),
            _ => None,
        }
    }

    /// A short description, for messages.
    pub fn describe(&self) -> String {
        match self {
            Shape::Null => "null".into(),
            Shape::Boolean => "boolean".into(),
            Shape::Int(_) => "int".into(),
            Shape::Long(_) => "long".into(),
            Shape::Float => "float".into(),
            Shape::Double => "double".into(),
            Shape::String => "string".into(),
            Shape::Bytes => "bytes".into(),
            Shape::Fixed(n) => format!("fixed({n})"),
            Shape::Enum(_) => "enum".into(),
            Shape::Decimal { scale, .. } => format!("decimal(scale {scale})"),
            Shape::BigDecimal => "big-decimal".into(),
            Shape::Uuid => "uuid".into(),
            Shape::Duration => "duration".into(),
            Shape::Array(i) => format!("array<{}>", i.describe()),
            Shape::Map(i) => format!("map<{}>", i.describe()),
            Shape::Union(b) => format!("union[{}]", b.iter().map(Shape::describe).collect::<Vec<_>>().join(", ")),
            Shape::Record(_) => "record".into(),
            Shape::Opaque => "a recursive type".into(),
        }
    }
}
