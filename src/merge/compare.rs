//! Comparing an update's `before` image with its `after` image without
//! building the `before` map: which columns changed, and their before
//! values ([`ChangeEvent::changed`](super::ChangeEvent::changed)).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use smallvec::SmallVec;

use super::canonical::{KeySeed, Writer};
use super::{ChangedColumns, Row};

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::merge::json_strategies::{json_value, respell};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

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
