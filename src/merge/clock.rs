//! Version vectors: a map from source name to the number of that source's
//! updates a version has seen. Missing entries count as zero, and zero entries
//! are never stored, so two clocks that mean the same thing compare and
//! serialize the same.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use super::Version;
use serde::{Deserialize, Deserializer, Serialize};
use smallvec::SmallVec;

/// How two version vectors relate in the causal (pointwise) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Every entry is equal.
    Equal,
    /// Every entry of the left is ≤ the right, one strictly less: the left happened before.
    Before,
    /// The left dominates the right: the right happened before.
    After,
    /// Neither dominates: concurrent updates.
    Concurrent,
}

/// Room for the relations of one event to each member of a version set,
/// on the stack for the usual handful of members: an insert compares each
/// member once and keeps the relations for its `retain` pass.
pub(super) struct Relations {
    stack: [Causality; Relations::ON_STACK],
    heap: Vec<Causality>,
}

impl Relations {
    const ON_STACK: usize = 8;

    pub(super) fn new() -> Self {
        Self { stack: [Causality::Concurrent; Self::ON_STACK], heap: Vec::new() }
    }

    /// A slice of `n` relations (initially `Concurrent`).
    #[inline]
    pub(super) fn of(&mut self, n: usize) -> &mut [Causality] {
        if n <= Self::ON_STACK {
            &mut self.stack[..n]
        } else {
            self.heap.resize(n, Causality::Concurrent);
            &mut self.heap
        }
    }
}

/// A version vector (source name → counter), ordered pointwise.
///
/// The entries are kept sorted by source name in a small vector that holds
/// one entry inline, and a source name of up to 22 bytes is held in
/// the entry itself: a derived clock (one entry) of such a source costs no
/// allocation at all, and comparing two clocks reads no memory beyond them,
/// where a `BTreeMap` allocated a whole node (about 400 bytes per clock,
/// most of a cached state's memory) and a boxed name cost a cache miss per
/// comparison of cold states.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(SmallVec<[(Name, u64); 1]>);

/// A source name inside a clock: inline when it is short (as source names
/// are), else on the heap. Ordered and compared as its text.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Name {
    /// `len` bytes of UTF-8 at the start of `bytes`, the rest zero.
    Inline { len: u8, bytes: [u8; Name::INLINE] },
    /// A name longer than [`Name::INLINE`] bytes.
    Heap(Box<str>),
}

impl Name {
    /// The longest name held inline (the entry stays 32 bytes).
    const INLINE: usize = 22;

    fn new(name: &str) -> Name {
        match name.len() {
            len @ 0..=Name::INLINE => {
                let mut bytes = [0; Name::INLINE];
                bytes[..len].copy_from_slice(name.as_bytes());
                Name::Inline { len: len as u8, bytes }
            }
            _ => Name::Heap(name.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Name::Heap(name) => name.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("made from a str by `Name::new`")
            }
            Name::Heap(name) => name,
        }
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    /// As the names' text (byte order is `str` order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl VersionVector {
    /// The empty clock: nothing seen from any source.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock with a single entry, as derived clocks are.
    pub fn single(source: &str, counter: u64) -> Self {
        let mut vv = Self::new();
        vv.set(source, counter);
        vv
    }

    /// Where `source`'s entry is, or would be inserted.
    #[inline]
    fn find(&self, source: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_bytes().cmp(source.as_bytes()))
    }

    /// The entry for `source` (zero when absent).
    pub fn get(&self, source: &str) -> u64 {
        self.find(source).map_or(0, |i| self.0[i].1)
    }

    /// Sets the entry for `source`; zero removes it.
    pub fn set(&mut self, source: &str, counter: u64) {
        match (self.find(source), counter) {
            (Ok(i), 0) => {
                self.0.remove(i);
            }
            (Ok(i), _) => self.0[i].1 = counter,
            (Err(_), 0) => {}
            (Err(i), _) => self.0.insert(i, (Name::new(source), counter)),
        }
    }

    /// Number of sources with an entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no source has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates the non-zero entries in source-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Heap bytes of the entry array: zero while the one inline slot holds
    /// the clock (the allocations of names too long to be inline are not
    /// included).
    pub fn entries_heap_bytes(&self) -> usize {
        if self.0.spilled() {
            self.0.capacity() * std::mem::size_of::<(Name, u64)>()
        } else {
            0
        }
    }

    /// The lengths of the names too long to be held inline, each an
    /// allocation of its own.
    pub fn heap_name_lengths(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().filter_map(|(name, _)| match name {
            Name::Heap(name) => Some(name.len()),
            Name::Inline { .. } => None,
        })
    }

    /// Becomes a copy of `other`, in place when both have the same sources
    /// (no allocation: the usual case for one source's successive writes).
    pub fn assign(&mut self, other: &VersionVector) {
        if self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.0 == b.0) {
            for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
                mine.1 = theirs.1;
            }
        } else {
            self.0.clone_from(&other.0);
        }
    }

    /// Pointwise maximum with `other`, in place.
    pub fn join(&mut self, other: &VersionVector) {
        for (source, counter) in other.iter() {
            if counter > self.get(source) {
                self.set(source, counter);
            }
        }
    }

    /// Compares two clocks in the causal order.
    pub fn causality(&self, other: &VersionVector) -> Causality {
        // Derived clocks have one entry: compare them without walking.
        if let ([(a, x)], [(b, y)]) = (self.0.as_slice(), other.0.as_slice()) {
            return if a != b {
                Causality::Concurrent
            } else {
                match x.cmp(y) {
                    Ordering::Less => Causality::Before,
                    Ordering::Greater => Causality::After,
                    Ordering::Equal => Causality::Equal,
                }
            };
        }
        // Walk both sorted entry lists at once: one pass, no allocation.
        let (a, b) = (self.0.as_slice(), other.0.as_slice());
        let (mut i, mut j) = (0, 0);
        let mut less = false;
        let mut greater = false;
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
                (None, None) => unreachable!("the loop condition"),
            };
            let (x, y) = match order {
                Ordering::Less => {
                    i += 1;
                    (a[i - 1].1, 0)
                }
                Ordering::Greater => {
                    j += 1;
                    (0, b[j - 1].1)
                }
                Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (a[i - 1].1, b[j - 1].1)
                }
            };
            match x.cmp(&y) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// A total order on clocks (entry by entry, in source-name order), for
    /// keeping sets of them in one canonical order; unrelated to causality.
    pub fn total_cmp(&self, other: &VersionVector) -> Ordering {
        self.0.as_slice().cmp(other.0.as_slice())
    }

    /// True when `self < other` strictly in the causal order.
    pub fn happened_before(&self, other: &VersionVector) -> bool {
        self.causality(other) == Causality::Before
    }

    /// The clock as a compact JSON object, e.g. `{"eu":3,"us":5}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a map of integers always serializes")
    }
}

impl Serialize for VersionVector {
    /// As a JSON object in source-name order, e.g. `{"eu":3,"us":5}`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VersionVector(")?;
        f.debug_map().entries(self.iter()).finish()?;
        f.write_str(")")
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl FromIterator<(String, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (k, v) in iter {
            vv.set(&k, v);
        }
        vv
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Go through `set` so stored zero entries are dropped.
        let map = BTreeMap::<String, u64>::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

/// The merged clock of a version set: the pointwise maximum of its clocks.
/// Nothing is built until asked: the output wants it as JSON text, which
/// [`to_json`](Self::to_json) writes straight from the versions' clocks
/// (the map [`to_vv`](Self::to_vv) builds costs an allocation per source).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergedClock<'a> {
    versions: &'a [Version],
}

impl<'a> MergedClock<'a> {
    /// The merged clock of `versions`.
    pub fn of(versions: &'a [Version]) -> Self {
        Self { versions }
    }

    /// The merged clock as a clock.
    pub fn to_vv(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for v in self.versions {
            vv.join(&v.vv);
        }
        vv
    }

    /// The same text as `self.to_vv().to_json()`: `{"source":counter,...}`
    /// in source order, without whitespace. Derived clocks give a handful of
    /// entries, gathered on the stack; only the text is allocated.
    pub fn to_json(&self) -> String {
        const ON_STACK: usize = 8;
        let total: usize = self.versions.iter().map(|v| v.vv.len()).sum();
        let mut stack = [("", 0u64); ON_STACK];
        let mut heap = Vec::new();
        let entries: &mut [(&str, u64)] = if total <= ON_STACK {
            let mut n = 0;
            for entry in self.versions.iter().flat_map(|v| v.vv.iter()) {
                stack[n] = entry;
                n += 1;
            }
            &mut stack[..n]
        } else {
            heap.extend(self.versions.iter().flat_map(|v| v.vv.iter()));
            &mut heap
        };
        // By source, the largest counter first; the first of each source is kept.
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
        let mut text = String::with_capacity(2 + entries.iter().map(|(s, _)| s.len() + 24).sum::<usize>());
        text.push('{');
        let mut last: Option<&str> = None;
        for &(source, counter) in entries.iter() {
            if last == Some(source) {
                continue;
            }
            if last.is_some() {
                text.push(',');
            }
            last = Some(source);
            if source.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
                text.push('"');
                text.push_str(source);
                text.push('"');
            } else {
                text.push_str(&serde_json::to_string(source).expect("a string serializes"));
            }
            text.push(':');
            push_decimal(&mut text, counter);
        }
        text.push('}');
        text
    }
}

/// Appends `n` in decimal.
fn push_decimal(text: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    text.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

impl Serialize for MergedClock<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_vv().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn compares_pointwise() {
        assert_eq!(vv(&[("a", 1)]).causality(&vv(&[("a", 1)])), Causality::Equal);
        assert_eq!(vv(&[("a", 1)]).causality(&vv(&[("a", 2)])), Causality::Before);
        assert_eq!(vv(&[("a", 2)]).causality(&vv(&[("a", 1)])), Causality::After);
        assert_eq!(vv(&[("a", 1)]).causality(&vv(&[("b", 1)])), Causality::Concurrent);
        assert_eq!(vv(&[("a", 1)]).causality(&vv(&[("a", 1), ("b", 1)])), Causality::Before);
        assert_eq!(vv(&[("a", 2), ("b", 1)]).causality(&vv(&[("a", 1), ("b", 2)])), Causality::Concurrent);
        assert_eq!(vv(&[]).causality(&vv(&[("z", 1)])), Causality::Before);
        assert_eq!(vv(&[("a", 2)]).causality(&vv(&[("a", 2)])), Causality::Equal);
        assert_eq!(vv(&[("a", 3)]).causality(&vv(&[("b", 3)])), Causality::Concurrent);
    }

    #[test]
    fn zero_entries_mean_absent() {
        assert_eq!(vv(&[("a", 0), ("b", 1)]), vv(&[("b", 1)]));
        let parsed: VersionVector = serde_json::from_str(r#"{"a":0,"b":1}"#).unwrap();
        assert_eq!(parsed.to_json(), r#"{"b":1}"#);
    }

    #[test]
    fn long_and_short_names_order_and_read_as_their_text() {
        // Around the inline limit, with a prefix shared by an inline and a
        // heap name, and a multi-byte character.
        let names = ["", "a", "ab", "é", "region-eu-west-1", &"x".repeat(22), &"x".repeat(23), &"x".repeat(40), "xy"];
        for a in names {
            for b in names {
                let (va, vb) = (VersionVector::single(a, 1), VersionVector::single(b, 1));
                assert_eq!(va.total_cmp(&vb), a.cmp(b), "{a:?} {b:?}");
                assert_eq!(va == vb, a == b, "{a:?} {b:?}");
                let want = if a == b { Causality::Equal } else { Causality::Concurrent };
                assert_eq!(va.causality(&vb), want, "{a:?} {b:?}");
            }
            if !a.is_empty() {
                let v = VersionVector::single(a, 7);
                assert_eq!(v.iter().collect::<Vec<_>>(), vec![(a, 7)]);
                assert_eq!(v.get(a), 7);
                assert_eq!(v.to_json(), serde_json::json!({ a: 7 }).to_string());
                assert_eq!(v.heap_name_lengths().collect::<Vec<_>>(), if a.len() > 22 { vec![a.len()] } else { vec![] });
            }
        }
        let mut many = VersionVector::new();
        for (i, name) in names.iter().enumerate().skip(1) {
            many.set(name, i as u64 + 1);
        }
        let mut sorted: Vec<&str> = names[1..].to_vec();
        sorted.sort();
        assert_eq!(many.iter().map(|(k, _)| k).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn join_is_pointwise_max() {
        let mut a = vv(&[("a", 3), ("b", 1)]);
        a.join(&vv(&[("b", 4), ("c", 2)]));
        assert_eq!(a, vv(&[("a", 3), ("b", 4), ("c", 2)]));
    }
}
