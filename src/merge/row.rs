//! A stored version's row image, kept as the compact JSON text it was
//! stored as until something needs its columns.
//!
//! A key's state holds one row per version (three in a three-region table),
//! and under `lww` most events read a state, supersede one version, and
//! write the state back: the other rows are only carried along. Decoding
//! them into maps and encoding them again was most of the cost of reading
//! and writing a state (doc/benchmarks.md, "Profile"): a decoded state now
//! keeps such rows as their text (checked when decoded, parsed on first
//! use) and writes the same text back.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::Row;

/// A version's row: parsed, or the JSON text of a decoded state, parsed
/// when first dereferenced. Either way it reads as a [`Row`]; changing it
/// (through `DerefMut`) drops the text.
pub struct LazyRow {
    /// The row's JSON text as stored: always one JSON object that parses
    /// into a [`Row`] (checked by [`LazyRow::from_json`]).
    text: Option<Box<str>>,
    /// The parsed row: set from the start when made from a [`Row`], else on
    /// first use.
    parsed: OnceLock<Row>,
}

impl LazyRow {
    /// A row kept as `text`, after checking that it is one JSON object
    /// that parses into a [`Row`] (the same errors as parsing it), without
    /// building the map.
    pub fn from_json(text: &str) -> serde_json::Result<LazyRow> {
        let mut de = serde_json::Deserializer::from_str(text);
        ObjectCheck.deserialize(&mut de)?;
        de.end()?;
        Ok(LazyRow { text: Some(text.into()), parsed: OnceLock::new() })
    }

    /// A row held as `text`, which must be the compact JSON that
    /// serializing its map gives ([`CanonicalRow`](super::canonical::CanonicalRow),
    /// whose property test checks it). Parsing the text back need not give
    /// that very map: serde_json takes an object whose first key is its
    /// private raw-value key as raw JSON (as it does for any stored row).
    /// (Floats read back exactly since serde_json's `float_roundtrip`
    /// feature is on; before, their last digit could differ.)
    pub(super) fn from_canonical_text(text: Box<str>) -> LazyRow {
        LazyRow { text: Some(text), parsed: OnceLock::new() }
    }

    /// The JSON text the row was decoded from, while it is unchanged.
    pub fn json_text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Whether the row has been parsed (made from a map, or used since it
    /// was decoded).
    pub fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    /// Keeps the row as `text` alone, dropping the map, when it has no
    /// text yet. `text` must be this row's compact JSON as the state
    /// encoding writes it (serde_json of the map), which is what
    /// [`keep_row_texts`](crate::avro::state::keep_row_texts) passes.
    pub(crate) fn keep_text(&mut self, text: &str) {
        if self.text.is_none() {
            debug_assert_eq!(serde_json::from_str::<Row>(text).ok().as_ref(), self.parsed.get());
            self.text = Some(text.into());
            self.parsed = OnceLock::new();
        }
    }

    /// The row as a map, parsing the text if it has not been yet.
    pub fn into_row(mut self) -> Row {
        self.force();
        self.parsed.take().expect("parsed above")
    }

    fn force(&self) -> &Row {
        self.parsed.get_or_init(|| {
            let text = self.text.as_deref().expect("a LazyRow holds its text or its map");
            serde_json::from_str(text).expect("the text was checked to parse into a row when the row was made")
        })
    }
}

impl From<Row> for LazyRow {
    fn from(row: Row) -> Self {
        LazyRow { text: None, parsed: OnceLock::from(row) }
    }
}

impl Deref for LazyRow {
    type Target = Row;

    fn deref(&self) -> &Row {
        self.force()
    }
}

impl DerefMut for LazyRow {
    fn deref_mut(&mut self) -> &mut Row {
        self.force();
        self.text = None;
        self.parsed.get_mut().expect("parsed above")
    }
}

impl Clone for LazyRow {
    /// The text alone when there is one (copying it is cheaper than
    /// copying the map, and a copy is seldom used), else the map.
    fn clone(&self) -> Self {
        match &self.text {
            Some(text) => LazyRow { text: Some(text.clone()), parsed: OnceLock::new() },
            None => LazyRow { text: None, parsed: self.parsed.clone() },
        }
    }
}

impl PartialEq for LazyRow {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PartialEq<Row> for LazyRow {
    fn eq(&self, other: &Row) -> bool {
        **self == *other
    }
}

impl fmt::Debug for LazyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for LazyRow {
    /// As the map; text not parsed yet is written as it is (serde_json's
    /// raw value: the only serializer versions meet is serde_json's), so a
    /// conflict audit record does not parse every stored row it shows.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.text, self.parsed.get()) {
            (Some(text), None) => {
                let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
            _ => (**self).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LazyRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Row::deserialize(d).map(LazyRow::from)
    }
}

/// The merged row of a key ([`Resolved::row`](super::Resolved::row)): a
/// stored version's row as it is (not parsed until read, so that its text
/// can be written out as it is), a rendered row, or a row made for this
/// view (a copy with the clock column). Reads as a [`Row`].
#[derive(Debug, Clone)]
pub enum MergedRow<'a> {
    /// The winning version's row (row-level policies), unchanged.
    Stored(&'a LazyRow),
    /// A row held elsewhere in the state (`field-lww`'s rendered row).
    Borrowed(&'a Row),
    /// A row made for this view.
    Owned(Row),
}

impl MergedRow<'_> {
    /// The row's compact JSON text, when it is a stored row that still
    /// holds the text of the state it was decoded from: the same bytes as
    /// serializing the map (the state encoding writes rows with serde_json,
    /// whose maps are sorted by key here), without parsing or serializing.
    /// A state written by anything but Tributary's encoder may spell the
    /// same JSON otherwise (spacing, key order, escapes): its row is then
    /// written in that spelling, equal as JSON.
    pub fn json_text(&self) -> Option<&str> {
        match self {
            MergedRow::Stored(row) => row.json_text(),
            _ => None,
        }
    }

    /// The row to change, copied first unless it is already this view's.
    pub fn to_mut(&mut self) -> &mut Row {
        if let MergedRow::Stored(_) | MergedRow::Borrowed(_) = self {
            *self = MergedRow::Owned((**self).clone());
        }
        match self {
            MergedRow::Owned(row) => row,
            _ => unreachable!("made owned above"),
        }
    }

    /// The row as a map of its own.
    pub fn into_owned(self) -> Row {
        match self {
            MergedRow::Owned(row) => row,
            other => (*other).clone(),
        }
    }
}

impl Deref for MergedRow<'_> {
    type Target = Row;

    fn deref(&self) -> &Row {
        match self {
            MergedRow::Stored(row) => row,
            MergedRow::Borrowed(row) => row,
            MergedRow::Owned(row) => row,
        }
    }
}

impl PartialEq for MergedRow<'_> {
    /// The same row, however it is held (as `Cow` compares).
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Serialize for MergedRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MergedRow::Stored(row) => row.serialize(s),
            other => (**other).serialize(s),
        }
    }
}

/// Checks a JSON object as deserializing it into a [`Row`] would (numbers
/// in range, strings well escaped), without keeping anything.
struct ObjectCheck;

impl<'de> DeserializeSeed<'de> for ObjectCheck {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(AnyCheck { object_only: true })
    }
}

/// Any JSON value, read and dropped; with `object_only`, only an object.
#[derive(Clone, Copy)]
struct AnyCheck {
    object_only: bool,
}

impl<'de> DeserializeSeed<'de> for AnyCheck {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl AnyCheck {
    fn scalar<E: de::Error>(self, unexpected: de::Unexpected<'_>) -> Result<(), E> {
        match self.object_only {
            true => Err(E::invalid_type(unexpected, &self)),
            false => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for AnyCheck {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.object_only { "a map" } else { "any valid JSON value" })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(de::Unexpected::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(de::Unexpected::Signed(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(de::Unexpected::Unsigned(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(de::Unexpected::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(de::Unexpected::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(de::Unexpected::Unit)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.object_only {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        while seq.next_element_seed(AnyCheck { object_only: false })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(AnyCheck { object_only: false })?.is_some() {
            map.next_value_seed(AnyCheck { object_only: false })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: serde_json::Value) -> Row {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn text_is_checked_like_parsing_a_row() {
        let cases = [
            r#"{"id":1,"name":"a\u00e9b","tags":[1,2.5,null,{"x":true}]}"#,
            r#" { } "#,
            r#"[1,2]"#,
            r#""a string""#,
            r#"{"n":1e400}"#,
            r#"{"a":1} trailing"#,
            r#"{"a":"\x"}"#,
            r#"{"a":1,}"#,
            r#"{"a":1}{"b":2}"#,
            r#"{"a":-0.0,"b":18446744073709551615,"c":-9223372036854775808}"#,
        ];
        for text in cases {
            let lazy = LazyRow::from_json(text);
            let parsed = serde_json::from_str::<Row>(text);
            match (&lazy, &parsed) {
                (Ok(l), Ok(p)) => assert_eq!(**l, *p, "{text}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{text}: lazy {lazy:?}, parsed {parsed:?}"),
            }
        }
    }

    #[test]
    fn text_is_kept_until_the_row_changes() {
        let text = r#"{"a":1,"b":"x"}"#;
        let mut lazy = LazyRow::from_json(text).unwrap();
        assert!(!lazy.is_parsed());
        assert_eq!(lazy.json_text(), Some(text));
        assert_eq!(lazy.get("a"), Some(&json!(1)));
        assert!(lazy.is_parsed());
        assert_eq!(lazy.json_text(), Some(text), "reading keeps the text");
        let copy = lazy.clone();
        lazy.insert("c".into(), json!(2));
        assert_eq!(lazy.json_text(), None, "a change drops the text");
        assert_eq!(*lazy, row(json!({"a": 1, "b": "x", "c": 2})));
        assert_eq!(copy.json_text(), Some(text));
        assert_eq!(copy.into_row(), row(json!({"a": 1, "b": "x"})));
        let made = LazyRow::from(row(json!({"z": null})));
        assert_eq!(made.json_text(), None);
        assert!(made.is_parsed());
        assert_eq!(serde_json::to_string(&made).unwrap(), r#"{"z":null}"#);
        // Unparsed text is written as it is, into text and into values alike.
        let unparsed = LazyRow::from_json(r#"{"b":[1,2],"a":"\u00e9"}"#).unwrap();
        assert_eq!(serde_json::to_string(&unparsed).unwrap(), r#"{"b":[1,2],"a":"\u00e9"}"#);
        assert_eq!(serde_json::to_value(&unparsed).unwrap(), json!({"a": "é", "b": [1, 2]}));
        assert!(!unparsed.is_parsed());
    }

    #[test]
    fn a_merged_row_compares_by_content_and_copies_before_a_change() {
        let text = r#"{"a":1,"b":"x"}"#;
        let stored = LazyRow::from_json(text).unwrap();
        let map = row(json!({"a": 1, "b": "x"}));
        let views = [MergedRow::Stored(&stored), MergedRow::Borrowed(&map), MergedRow::Owned(map.clone())];
        for a in &views {
            for b in &views {
                assert_eq!(a, b, "held differently, the same row");
            }
        }
        assert_eq!(views[0].json_text(), Some(text));
        assert_eq!(views[1].json_text(), None);
        let mut changed = MergedRow::Stored(&stored);
        changed.to_mut().insert("c".into(), json!(true));
        assert!(matches!(changed, MergedRow::Owned(_)));
        assert_eq!(changed.json_text(), None, "a changed row is not the stored text any more");
        assert_eq!(stored.json_text(), Some(text), "the stored row is untouched");
        assert_eq!(changed.into_owned(), row(json!({"a": 1, "b": "x", "c": true})));
    }
}
