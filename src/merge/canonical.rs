//! A row image decoded straight into its canonical JSON text: the bytes
//! that decoding it into a [`Row`] and serializing that map would give
//! (keys sorted, the last of repeated keys kept, numbers and strings as
//! serde_json writes them), without building the map.
//!
//! Under the row-level policies a row is only carried: from the source's
//! record into the state and the output record, both of which hold it as
//! this text. Decoding it into a map (some twenty allocations for a
//! ten-column row), serializing the map for the output and dropping it
//! cost more than the merge itself (doc/benchmarks.md, "Rows decoded as
//! text"). The decoder takes this path when nothing before the merge
//! reads the row's columns ([`Format::parse_text`](crate::normalize::Format::parse_text)).
//!
//! The same JSON is accepted and rejected as by `Row`'s own decoding, with
//! the same errors: every value is read through the same deserializer
//! calls `serde_json::Value` makes. A property test holds the text equal
//! to serializing the decoded map for arbitrary JSON.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use smallvec::SmallVec;

use serde_json::Value;

use super::{ChangedColumns, LazyRow, Row};

/// A row image decoded into its canonical JSON text ([`LazyRow::json_text`]).
pub struct CanonicalRow(pub LazyRow);

impl<'de> Deserialize<'de> for CanonicalRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = String::with_capacity(256);
        d.deserialize_map(Writer { out: &mut out, nested: false })?;
        Ok(CanonicalRow(LazyRow::from_canonical_text(out.into_boxed_str())))
    }
}

/// The key serde_json gives a raw value inside a `Value` map: an object
/// whose first key is this decodes, as a `Value`, into the JSON its string
/// value holds. Mirrored so that the text is the map's in that case too.
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// Writes the canonical text of one value at the end of `out`. `nested`:
/// a value inside the row (decoded as a `Value`), not the row itself
/// (decoded as a map).
struct Writer<'o> {
    out: &'o mut String,
    nested: bool,
}

impl<'de> DeserializeSeed<'de> for Writer<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Appends `s` as a JSON string the way serde_json writes it. `verbatim`:
/// `s` is the input's own text between its quotes (borrowed, so it had no
/// escapes) and goes out as it is: without a backslash, and with no
/// control character (which JSON does not allow raw), there is nothing
/// serde_json would escape.
fn push_string(out: &mut String, s: &str, verbatim: bool) {
    if verbatim {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("strings serialize"));
    }
}

impl Writer<'_> {
    /// Fails unless nested (the row itself must be a map).
    fn nested<E: de::Error>(&self, unexpected: de::Unexpected<'_>) -> Result<(), E> {
        match self.nested {
            true => Ok(()),
            false => Err(E::invalid_type(unexpected, self)),
        }
    }
}

impl<'de> Visitor<'de> for Writer<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.nested { "any valid JSON value" } else { "a map" })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.nested(de::Unexpected::Bool(v))?;
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.nested(de::Unexpected::Signed(v))?;
        write!(self.out, "{v}").map_err(E::custom) // the digits serde_json writes
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.nested(de::Unexpected::Unsigned(v))?;
        write!(self.out, "{v}").map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.nested(de::Unexpected::Float(v))?;
        // serde_json's own formatting (a number that is not finite becomes
        // `null`, as in a `Value`), through a buffer on the stack.
        let mut buf = [0u8; 40];
        let mut w = &mut buf[..];
        serde_json::to_writer(&mut w, &v).map_err(E::custom)?;
        let n = 40 - w.len();
        self.out.push_str(std::str::from_utf8(&buf[..n]).map_err(E::custom)?);
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.nested(de::Unexpected::Str(v))?;
        push_string(self.out, v, true);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.nested(de::Unexpected::Str(v))?;
        push_string(self.out, v, false);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.nested(de::Unexpected::Unit)?;
        self.out.push_str("null");
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.nested(de::Unexpected::Seq)?;
        self.out.push('[');
        let mut first = true;
        loop {
            let at = self.out.len();
            if !first {
                self.out.push(',');
            }
            if seq.next_element_seed(Writer { out: &mut *self.out, nested: true })?.is_none() {
                self.out.truncate(at);
                break;
            }
            first = false;
        }
        self.out.push(']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Each `"key":value` is written in arrival order and its place kept;
        // unless the keys arrived sorted and distinct, the object is then
        // put together again from those pieces in key order.
        let start = self.out.len();
        self.out.push('{');
        let mut entries: SmallVec<[(Cow<'de, str>, Range<usize>); 16]> = SmallVec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if self.nested && entries.is_empty() && key == RAW_VALUE_KEY {
                // `Value`'s reading of this key: the string value is JSON.
                let text: String = map.next_value()?;
                let value: serde_json::Value = serde_json::from_str(&text).map_err(de::Error::custom)?;
                self.out.truncate(start);
                self.out.push_str(&value.to_string());
                return Ok(());
            }
            if !entries.is_empty() {
                self.out.push(',');
            }
            let at = self.out.len();
            push_string(self.out, &key, matches!(key, Cow::Borrowed(_)));
            self.out.push(':');
            map.next_value_seed(Writer { out: &mut *self.out, nested: true })?;
            entries.push((key, at..self.out.len()));
        }
        self.out.push('}');
        if entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Ok(());
        }
        // Stable: among repeated keys the last stays last, and is kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let pieces = self.out.split_off(start);
        self.out.push('{');
        let mut first = true;
        for (i, (key, range)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                continue; // a later value for the same key replaces this one
            }
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(&pieces[range.start - start..range.end - start]);
        }
        self.out.push('}');
        Ok(())
    }
}

/// A row image decoded for comparing another image with it, without
/// building its map: each column's value as read (a scalar, a string
/// borrowed from the input where it has no escapes, or the canonical text
/// of an array or object), in arrival order (repeated columns included; the
/// last one counts, as in a [`Row`]). The same JSON is accepted and
/// rejected as by `Row`'s own decoding: every value is read through the
/// calls `serde_json::Value` makes.
pub struct ColumnTexts<'de> {
    /// The canonical texts of the arrays and objects.
    text: String,
    columns: SmallVec<[(Cow<'de, str>, Cell<'de>); 16]>,
}

/// One column's value in a [`ColumnTexts`].
enum Cell<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'de, str>),
    /// An array or object: its canonical text in [`ColumnTexts::text`].
    Text(Range<usize>),
}

impl Cell<'_> {
    /// The value, as decoding it into a `Value` gives it.
    fn to_value(&self, text: &str) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(*b),
            Cell::I64(i) => Value::from(*i),
            Cell::U64(u) => Value::from(*u),
            Cell::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Cell::Str(s) => Value::String(s.clone().into_owned()),
            Cell::Text(range) => serde_json::from_str(&text[range.clone()]).expect("the canonical text of a value parses"),
        }
    }

    /// Whether the value equals `value` (as `Value`s compare).
    fn equals(&self, value: &Value, text: &str, scratch: &mut Vec<u8>) -> bool {
        match (self, value) {
            (Cell::Str(s), Value::String(v)) => s == v,
            (Cell::Str(_), _) => false,
            (Cell::Text(range), _) => {
                // Equal texts are equal values; texts that differ may still
                // be (`0.0` and `-0.0` inside): compare the values then.
                let mine = &text[range.clone()];
                scratch.clear();
                serde_json::to_writer(&mut *scratch, value).expect("values serialize");
                *scratch == mine.as_bytes() || self.to_value(text) == *value
            }
            (scalar, value) => scalar.to_value(text) == *value, // no allocation
        }
    }
}

impl<'de> Deserialize<'de> for ColumnTexts<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ColumnsVisitor)
    }
}

struct ColumnsVisitor;

impl<'de> Visitor<'de> for ColumnsVisitor {
    type Value = ColumnTexts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(ColumnTexts { text: String::new(), columns: SmallVec::new() }) // as `Row`: an empty map
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut text = String::new();
        let mut columns = SmallVec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let cell = map.next_value_seed(CellSeed { text: &mut text })?;
            columns.push((key, cell));
        }
        Ok(ColumnTexts { text, columns })
    }
}

/// Reads one column's value into a [`Cell`].
struct CellSeed<'t> {
    text: &'t mut String,
}

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = Cell<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cell<'de>, E> {
        Ok(Cell::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cell<'de>, E> {
        Ok(Cell::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cell<'de>, E> {
        Ok(Cell::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cell<'de>, E> {
        Ok(Cell::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Cell<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Cell<'de>, A::Error> {
        let at = self.text.len();
        Writer { out: &mut *self.text, nested: true }.visit_seq(seq)?;
        Ok(Cell::Text(at..self.text.len()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Cell<'de>, A::Error> {
        // `Value`'s reading of a raw-value key included (it may give a scalar).
        let at = self.text.len();
        Writer { out: &mut *self.text, nested: true }.visit_map(map)?;
        Ok(Cell::Text(at..self.text.len()))
    }
}

impl ColumnTexts<'_> {
    /// Compares `after` with this image, column by column: which of
    /// `after`'s columns (in name order) differ from it or are not in it,
    /// and this image's values of those it has. `None` when `after` has
    /// more than [`ChangedColumns::MAX`] columns.
    pub fn changes(&mut self, after: &Row) -> Option<(Row, ChangedColumns)> {
        if after.len() > ChangedColumns::MAX {
            return None;
        }
        // Stable: among repeated columns the last stays last.
        if !self.columns.windows(2).all(|w| w[0].0 < w[1].0) {
            self.columns.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut mine = self.columns.iter().peekable();
        let (mut before, mut changed) = (Row::new(), ChangedColumns::default());
        let mut scratch = Vec::new();
        for (index, (name, value)) in after.iter().enumerate() {
            let mut found = None;
            while let Some((column, cell)) = mine.peek() {
                match column.as_ref().cmp(name.as_str()) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => found = Some(cell),
                    std::cmp::Ordering::Greater => break,
                }
                mine.next();
            }
            match found {
                None => changed.insert(index),
                Some(cell) if !cell.equals(value, &self.text, &mut scratch) => {
                    changed.insert(index);
                    before.insert(name.clone(), cell.to_value(&self.text));
                }
                Some(_) => {}
            }
        }
        Some((before, changed))
    }

    /// The image as a map (what decoding it as a [`Row`] gives).
    pub fn into_row(self) -> Row {
        let mut row = Row::new();
        for (name, cell) in &self.columns {
            row.insert(name.clone().into_owned(), cell.to_value(&self.text));
        }
        row
    }
}

/// A map key, borrowed from the input where it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v)) // no escapes in the input
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::merge::Row;

    /// What decoding `text` as a `Row` and serializing it gives, or its error.
    fn via_map(text: &str) -> Result<String, String> {
        serde_json::from_str::<Row>(text).map(|row| serde_json::to_string(&row).unwrap()).map_err(|e| e.to_string())
    }

    fn via_text(text: &str) -> Result<String, String> {
        serde_json::from_str::<CanonicalRow>(text)
            .map(|row| row.0.json_text().expect("decoded as text").to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn spellings_that_differ_from_the_canonical_text() {
        for text in [
            r#"{"b":1,"a":2}"#,
            r#"{ "a" : 1.50, "c": 1E2, "d": -0, "e": -0.0, "f": 1e400 }"#,
            r#"{"a":1,"a":2,"b":{"y":[1,{"z":1,"x":"\u00e9\n\/"}],"x":null}}"#,
            r#"{"\u0061":"a\u0000b","a\"":"\ud83d\ude00"}"#,
            r#"{"big":18446744073709551615,"bigger":18446744073709551616,"neg":-9223372036854775808}"#,
            r#"{"raw":{"$serde_json::private::RawValue":"{\"b\":1,\"a\":[2]}"}}"#,
            r#"{"raw":{"$serde_json::private::RawValue":"{\"b\":1","x":1}}"#,
            r#"{"raw":{"x":1,"$serde_json::private::RawValue":"7"}}"#,
            r#"{"$serde_json::private::RawValue":"7"}"#,
            "null",
            "{}",
            "[1]",
            "1",
            r#""a""#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":01}"#,
            r#"{"a":[1,]}"#,
        ] {
            assert_eq!(via_text(text), via_map(text), "{text}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-c\u{e9}\"\\\\/\n\t\u{1}\u{7f}\u{1f600}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec(("[a-d\"\u{e9}]{0,3}", inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    /// A spelling of `v` other than serde_json's: entries in the given
    /// order, with repeats, spaces, escapes and number spellings varied.
    fn respell(v: &Value, salt: &mut u64, out: &mut String) {
        *salt = salt.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let choice = (*salt >> 33) % 4;
        match v {
            Value::Object(map) => {
                out.push_str("{ ");
                let mut entries: Vec<_> = map.iter().collect();
                if choice % 2 == 1 {
                    entries.reverse();
                }
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,");
                    }
                    if choice == 3 {
                        // A repeated key: the earlier value is replaced.
                        out.push_str(&serde_json::to_string(k).unwrap());
                        out.push_str(":[0],");
                    }
                    if choice == 2 {
                        out.push('"');
                        for c in k.chars() {
                            match c as u32 {
                                small @ ..0x10000 => out.push_str(&format!("\\u{small:04x}")),
                                _ => out.push(c),
                            }
                        }
                        out.push('"');
                    } else {
                        out.push_str(&serde_json::to_string(k).unwrap());
                    }
                    out.push_str(" : ");
                    respell(v, salt, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    respell(item, salt, out);
                }
                out.push(']');
            }
            Value::Number(n) if choice == 1 && n.is_f64() => out.push_str(&format!("{:e}", n.as_f64().unwrap())),
            Value::Number(n) if choice == 2 && n.is_u64() => out.push_str(&format!("{}.0e0", n)),
            Value::String(s) if choice == 3 => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' | '\\' => {
                            out.push('\\');
                            out.push(c);
                        }
                        '/' => out.push_str("\\/"),
                        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any JSON object, however spelled: the text is serde_json's
        /// serialization of the map it decodes into.
        #[test]
        fn the_text_is_the_decoded_maps_serialization(
            entries in prop::collection::vec(("[a-e\u{e9}]{0,3}", json_value()), 0..8),
            salt in any::<u64>(),
        ) {
            let row = Value::Object(entries.into_iter().collect());
            let mut salt = salt;
            let mut text = String::new();
            respell(&row, &mut salt, &mut text);
            prop_assert_eq!(via_text(&text), via_map(&text), "{}", text);
            // And cut short anywhere: the same error.
            let cut = (salt as usize) % (text.len() + 1);
            if text.is_char_boundary(cut) {
                prop_assert_eq!(via_text(&text[..cut]), via_map(&text[..cut]), "{}", &text[..cut]);
            }
        }

        /// Two images, however spelled, with repeated columns and equal
        /// values spelled apart (`0.0` and `-0.0` among them): the columns
        /// [`ColumnTexts::changes`] finds changed are those whose decoded
        /// values differ, and it keeps their before values as decoded.
        #[test]
        fn the_changed_columns_are_those_whose_values_differ(
            before in prop::collection::vec(("[a-d]", json_value()), 0..8),
            after in prop::collection::vec(("[a-e]", 0usize..5, json_value()), 0..8),
            salt in any::<u64>(),
        ) {
            let mut salt = salt;
            let spell = |entries: &[(String, Value)], salt: &mut u64| {
                let mut text = String::from("{");
                for (i, (name, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(&serde_json::to_string(name).unwrap());
                    text.push(':');
                    respell(value, salt, &mut text);
                }
                text.push('}');
                text
            };
            // After: a column's value is the before image's (spelled anew),
            // a zero of the other sign, that value a little changed, or anything.
            let after: Vec<(String, Value)> = after
                .into_iter()
                .map(|(name, how, value)| {
                    let old = before.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
                    let value = match (how, old) {
                        (0 | 1, Some(old)) => old,
                        (2, _) => Value::from(if salt % 2 == 0 { -0.0 } else { 0.0 }),
                        (3, Some(Value::String(old))) => Value::String(old + "x"),
                        (3, Some(Value::Number(old))) => Value::from(old.as_f64().unwrap_or(0.0) + 1.0),
                        (3, Some(Value::Bool(old))) => Value::Bool(!old),
                        _ => value,
                    };
                    (name, value)
                })
                .collect();
            let before_text = spell(&before, &mut salt);
            let after_text = spell(&after, &mut salt);
            let before_map: Row = serde_json::from_str(&before_text).unwrap();
            let after_map: Row = serde_json::from_str(&after_text).unwrap();
            let mut texts: ColumnTexts<'_> = serde_json::from_str(&before_text).unwrap();
            let (kept, changed) = texts.changes(&after_map).expect("fewer than 128 columns");
            let mut want = Row::new();
            for (index, (name, value)) in after_map.iter().enumerate() {
                let differs = before_map.get(name) != Some(value);
                prop_assert_eq!(changed.contains(index), differs, "{} in {} against {}", name, after_text, before_text);
                if let (true, Some(old)) = (differs, before_map.get(name)) {
                    want.insert(name.clone(), old.clone());
                }
            }
            prop_assert_eq!(kept, want);
            prop_assert_eq!(texts.into_row(), before_map);
        }
    }

    #[test]
    fn images_wider_than_the_changed_set_are_left_to_the_maps() {
        let wide: Row = (0..=ChangedColumns::MAX).map(|i| (format!("c{i:03}"), Value::from(i))).collect();
        let text = serde_json::to_string(&wide).unwrap();
        let mut texts: ColumnTexts<'_> = serde_json::from_str(&text).unwrap();
        assert!(texts.changes(&wide).is_none());
        assert_eq!(texts.into_row(), wide);
        let narrow: Row = wide.into_iter().take(ChangedColumns::MAX).collect();
        let mut texts: ColumnTexts<'_> = serde_json::from_str(&text).unwrap();
        let (kept, changed) = texts.changes(&narrow).unwrap();
        assert!(kept.is_empty());
        assert!((0..ChangedColumns::MAX).all(|i| !changed.contains(i)));
    }

    #[test]
    fn a_changed_column_set_forgets_a_removed_column() {
        let mut changed = ChangedColumns::default();
        for i in [0, 3, 4, 127] {
            changed.insert(i);
        }
        changed.remove(3);
        let now: Vec<usize> = (0..ChangedColumns::MAX).filter(|i| changed.contains(*i)).collect();
        assert_eq!(now, [0, 3, 126]);
        changed.remove(0);
        let now: Vec<usize> = (0..ChangedColumns::MAX).filter(|i| changed.contains(*i)).collect();
        assert_eq!(now, [2, 125]);
        changed.remove(124);
        let now: Vec<usize> = (0..ChangedColumns::MAX).filter(|i| changed.contains(*i)).collect();
        assert_eq!(now, [2, 124]);
        changed.remove(127);
        assert_eq!((0..ChangedColumns::MAX).filter(|i| changed.contains(*i)).count(), 2);
    }
}
