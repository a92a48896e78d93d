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

use super::LazyRow;

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
pub(super) struct Writer<'o> {
    pub(super) out: &'o mut String,
    pub(super) nested: bool,
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

/// A map key, borrowed from the input where it has no escapes.
pub(super) struct KeySeed;

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
    use crate::merge::json_strategies::{json_value, respell};
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
    }
}
