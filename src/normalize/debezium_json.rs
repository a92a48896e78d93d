//! Debezium's JSON envelope, with or without the `schema`/`payload` wrapper
//! that the JSON converter adds when `schemas.enable=true`.
//!
//! The envelope is decoded in one pass that builds only what is used: the
//! `after` image, `source.ts_ms` (the whole `source` block only when a
//! sequence path is configured) and the `before` image only when the caller
//! needs it (always for deletes). What is skipped is still checked exactly as
//! if it were built ([`SkippedRow`], [`SourceTs`]), so the same records are
//! accepted and rejected. Only a rejected record is decoded a second time,
//! with the full envelope and the field path tracked, to word the error.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{Format, InputRecord, NormalizeErrorKind, Parsed, RawChange, RawOp};
use crate::merge::{CanonicalRow, ChangedColumns, ColumnTexts, LazyRow, Row};

/// The `debezium-json` format.
#[derive(Debug, Clone, Copy, Default)]
pub struct DebeziumJson;

/// The envelope fields Tributary reads; the rest (e.g. `transaction`) is
/// skipped without building values for it. `S` is how `source` is read
/// ([`Row`] or [`SourceTs`]), `B` how `before` is read ([`Row`] or
/// [`SkippedRow`]), `A` how `after` is read ([`Row`] or [`CanonicalRow`]);
/// `Envelope<Row, Row, Row>` is the complete envelope.
#[derive(Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de>, B: Deserialize<'de>, A: Deserialize<'de>"))]
struct Envelope<'a, S, B, A = Row> {
    #[serde(default)]
    schema: Option<IgnoredAny>,
    #[serde(default)]
    payload: Option<Box<Envelope<'a, S, B, A>>>,
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(default)]
    before: Option<B>,
    #[serde(default)]
    after: Option<A>,
    #[serde(default)]
    source: Option<S>,
    #[serde(default)]
    ts_ms: Option<i64>,
}

/// How the `source` block is kept.
trait SourceBlock {
    /// `source.ts_ms`, as a JSON value.
    fn ts_ms(&self) -> Option<&Value>;
    /// Takes a field out (for the sequence path).
    fn take(&mut self, field: &str) -> Option<Value>;
}

impl SourceBlock for Row {
    fn ts_ms(&self) -> Option<&Value> {
        self.get("ts_ms")
    }
    fn take(&mut self, field: &str) -> Option<Value> {
        self.remove(field)
    }
}

/// The `source` block when only `ts_ms` is used: the other fields are
/// checked as a [`Row`] would check them, but not kept.
struct SourceTs {
    ts_ms: Option<Value>,
}

impl SourceBlock for SourceTs {
    fn ts_ms(&self) -> Option<&Value> {
        self.ts_ms.as_ref()
    }
    fn take(&mut self, _field: &str) -> Option<Value> {
        None
    }
}

/// How the `before` image is kept.
trait BeforeImage {
    /// True when the image is built.
    const KEPT: bool;
    /// The image to pass on, and which columns of `after` differ from it
    /// when that is worked out here.
    fn finish(self, after: Option<&LazyRow>) -> (Option<Row>, Option<ChangedColumns>);
}

impl BeforeImage for Row {
    const KEPT: bool = true;
    fn finish(self, _: Option<&LazyRow>) -> (Option<Row>, Option<ChangedColumns>) {
        (Some(self), None)
    }
}

/// The `before` image read into its column values and compared with
/// `after`: passed on are only the before values of the columns that changed (see
/// [`ChangeEvent::changed`](crate::merge::ChangeEvent::changed)).
impl BeforeImage for ColumnTexts<'_> {
    const KEPT: bool = false;
    fn finish(mut self, after: Option<&LazyRow>) -> (Option<Row>, Option<ChangedColumns>) {
        match after.and_then(|after| self.changes(after)) {
            Some((before, changed)) => (Some(before), Some(changed)),
            None => (Some(self.into_row()), None),
        }
    }
}

/// How the `after` image is kept.
trait AfterImage {
    fn into_lazy(self) -> LazyRow;
}

impl AfterImage for Row {
    fn into_lazy(self) -> LazyRow {
        LazyRow::from(self)
    }
}

impl AfterImage for CanonicalRow {
    fn into_lazy(self) -> LazyRow {
        self.0
    }
}

/// A row image that was checked like a [`Row`] (same accepted inputs, same
/// errors) but not built.
struct SkippedRow;

impl BeforeImage for SkippedRow {
    const KEPT: bool = false;
    fn finish(self, _: Option<&LazyRow>) -> (Option<Row>, Option<ChangedColumns>) {
        (None, None)
    }
}

/// The expectation of [`Row`]'s own visitor, so type errors read the same.
const A_MAP: &str = "a map";

impl<'de> Deserialize<'de> for SkippedRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = SkippedRow;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(A_MAP)
            }
            fn visit_unit<E: de::Error>(self) -> Result<SkippedRow, E> {
                Ok(SkippedRow) // as `Row` (an empty map)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<SkippedRow, M::Error> {
                while map.next_key::<CheckedKey>()?.is_some() {
                    map.next_value::<CheckedValue>()?;
                }
                Ok(SkippedRow)
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

impl<'de> Deserialize<'de> for SourceTs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SourceTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(A_MAP)
            }
            fn visit_unit<E: de::Error>(self) -> Result<SourceTs, E> {
                Ok(SourceTs { ts_ms: None })
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<SourceTs, M::Error> {
                let mut ts_ms = None;
                while let Some(CheckedKey(is_ts_ms)) = map.next_key()? {
                    if is_ts_ms {
                        // A repeated field: the last one counts, as in a `Row`.
                        ts_ms = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<CheckedValue>()?;
                    }
                }
                Ok(SourceTs { ts_ms })
            }
        }
        d.deserialize_map(SourceVisitor)
    }
}

/// A map key, read as a `Row` reads it; true when it is `ts_ms`.
struct CheckedKey(bool);

impl<'de> Deserialize<'de> for CheckedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = CheckedKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckedKey, E> {
                Ok(CheckedKey(v == "ts_ms"))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, read as a [`Value`] reads it (the parser does every
/// check: syntax, UTF-8, escapes, number range, nesting depth), not built.
struct CheckedValue;

impl<'de> Deserialize<'de> for CheckedValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = CheckedValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_unit<E: de::Error>(self) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_none<E: de::Error>(self) -> Result<CheckedValue, E> {
        Ok(CheckedValue)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<CheckedValue, D::Error> {
        CheckedValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CheckedValue, A::Error> {
        while seq.next_element::<CheckedValue>()?.is_some() {}
        Ok(CheckedValue)
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<CheckedValue, M::Error> {
        while map.next_key::<CheckedKey>()?.is_some() {
            map.next_value::<CheckedValue>()?;
        }
        Ok(CheckedValue)
    }
}

impl DebeziumJson {
    /// Parses `bytes` with `source` read as `S`, `before` as `B` and `after` as `A`.
    fn parse_as<'a, S, B, A>(bytes: &'a [u8], sequence: Option<&[String]>) -> Result<Option<Parsed>, NormalizeErrorKind>
    where
        S: SourceBlock + Deserialize<'a>,
        B: BeforeImage + Deserialize<'a>,
        A: AfterImage + Deserialize<'a>,
    {
        // No trailing-bytes check: only the envelope value is read.
        let mut env = crate::json::first_value::<Envelope<S, B, A>>(bytes).map_err(|e| describe_error(bytes, e))?;
        if env.op.is_none() {
            match env.payload.take() {
                Some(inner) => env = *inner,
                // `{"schema": …, "payload": null}`: a tombstone with the wrapper.
                None if env.schema.is_some() => return Ok(None),
                None => return Err(NormalizeErrorKind::MissingOp),
            }
        }
        let op = match env.op.as_deref() {
            Some("c") => RawOp::Create,
            Some("u") => RawOp::Update,
            Some("r") => RawOp::Read,
            Some("d") => RawOp::Delete,
            Some("t") => return Err(NormalizeErrorKind::Truncate),
            Some(other) => return Err(NormalizeErrorKind::UnsupportedOp(other.to_string())),
            None => return Err(NormalizeErrorKind::MissingOp),
        };
        if op == RawOp::Delete && !B::KEPT {
            // A delete's before image is its key and its carried clock: read
            // the record again, keeping it (deletes are the minority).
            return Self::parse_as::<S, Row, A>(bytes, sequence);
        }
        let source_ts = match env.source.as_ref().and_then(S::ts_ms) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| NormalizeErrorKind::BadTimestamp {
                path: "source.ts_ms".into(),
                problem: format!("{v} is not an integer number of milliseconds"),
            })?),
        };
        // The sequence path starts at `source` (e.g. `source.lsn`); the
        // configuration rejects other roots, which deletes could not carry.
        let sequence = sequence.and_then(|path| match path {
            [first, second, rest @ ..] if first == "source" => {
                let top = env.source.as_mut()?.take(second)?;
                if rest.is_empty() {
                    Some(top)
                } else {
                    super::lookup(&top, rest).cloned()
                }
            }
            _ => None,
        });
        let had_before = env.before.is_some();
        let after = env.after.map(A::into_lazy);
        let (before, changed) = match env.before {
            Some(before) => before.finish(after.as_ref()),
            None => (None, None),
        };
        Ok(Some(Parsed {
            changed,
            raw: RawChange { op, before, after, ts: source_ts.or(env.ts_ms), sequence, key: None },
            had_before,
        }))
    }
}

impl DebeziumJson {
    /// [`Format::parse_lean`] with the `after` image read as `A`.
    fn parse_after_as<'a, A>(
        record: &InputRecord<'a>,
        sequence: Option<&[String]>,
        before: Before,
    ) -> Result<Option<Parsed>, NormalizeErrorKind>
    where
        A: AfterImage + Deserialize<'a>,
    {
        let Some(bytes) = record.value.filter(|v| !v.is_empty()) else {
            return Ok(None); // Debezium's tombstone after a delete.
        };
        // The whole `source` block only when a sequence path reads from it.
        match (sequence.is_some(), before) {
            (true, Before::Kept) => Self::parse_as::<Row, Row, A>(bytes, sequence),
            (true, Before::Compared) => Self::parse_as::<Row, ColumnTexts, A>(bytes, sequence),
            (true, Before::Skipped) => Self::parse_as::<Row, SkippedRow, A>(bytes, sequence),
            (false, Before::Kept) => Self::parse_as::<SourceTs, Row, A>(bytes, sequence),
            (false, Before::Compared) => Self::parse_as::<SourceTs, ColumnTexts, A>(bytes, sequence),
            (false, Before::Skipped) => Self::parse_as::<SourceTs, SkippedRow, A>(bytes, sequence),
        }
    }
}

/// What becomes of an upsert's `before` image.
#[derive(Clone, Copy)]
enum Before {
    /// Decoded into a map.
    Kept,
    /// Compared with the `after` image ([`Format::parse_changes`]).
    Compared,
    /// Checked, not kept.
    Skipped,
}

impl Before {
    fn kept(upsert_before: bool) -> Before {
        if upsert_before {
            Before::Kept
        } else {
            Before::Skipped
        }
    }
}

/// The message for a record the envelope decoder rejected: decoded again as
/// the complete envelope with the field path tracked, so it names the
/// offending field (`payload.ts_ms: invalid type…`).
#[cold]
fn describe_error(bytes: &[u8], first: serde_json::Error) -> NormalizeErrorKind {
    let bad = |detail: String| NormalizeErrorKind::BadValue { format: "debezium-json", detail };
    let full = serde_path_to_error::deserialize::<_, Envelope<'_, Row, Row>>(&mut serde_json::Deserializer::from_slice(bytes));
    match full {
        Err(e) => match e.path().to_string().as_str() {
            "." | "?" => bad(e.inner().to_string()),
            path => bad(format!("{path}: {}", e.inner())),
        },
        // Unreachable: the lean decoders accept exactly what the full one accepts.
        Ok(_) => bad(first.to_string()),
    }
}

impl Format for DebeziumJson {
    fn name(&self) -> &'static str {
        "debezium-json"
    }

    fn parse(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind> {
        Ok(self.parse_lean(record, sequence, true)?.map(|p| p.raw))
    }

    fn parse_lean(
        &self,
        record: &InputRecord<'_>,
        sequence: Option<&[String]>,
        upsert_before: bool,
    ) -> Result<Option<Parsed>, NormalizeErrorKind> {
        Self::parse_after_as::<Row>(record, sequence, Before::kept(upsert_before))
    }

    fn parse_changes(&self, record: &InputRecord<'_>, sequence: Option<&[String]>) -> Result<Option<Parsed>, NormalizeErrorKind> {
        Self::parse_after_as::<Row>(record, sequence, Before::Compared)
    }

    fn parse_text(
        &self,
        record: &InputRecord<'_>,
        sequence: Option<&[String]>,
        upsert_before: bool,
    ) -> Result<Option<Parsed>, NormalizeErrorKind> {
        Self::parse_after_as::<CanonicalRow>(record, sequence, Before::kept(upsert_before))
    }
}
