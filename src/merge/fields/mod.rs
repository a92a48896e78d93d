//! `field-lww`: the column-level state of a key. This file holds the state
//! (column writes, the stamps of the events behind them, the encoded form);
//! `write.rs` applies an event's columns to it and `render.rs` renders and
//! explains the row from it.

mod render;
mod write;

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::iter::Peekable;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use render::ColumnWinner;
pub(crate) use render::Rendered;
#[cfg(test)]
pub(in crate::merge) use write::ONE_BY_ONE;

use super::{same_json, Causality, CounterState, ElementSet, ElementVersions, Slot, VersionVector, Versioned};

/// One maximal write of a single column, with its event spelled out: the
/// encoded form of a column write or set operation (the changelog state
/// stores these), and what `counter` columns keep of their inserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldVersion {
    /// The source that wrote it.
    pub source: String,
    /// The writing event's version vector.
    pub vv: VersionVector,
    /// The writing event's commit time (ms).
    pub ts: i64,
    /// The column value.
    pub value: Value,
}

/// The event behind stored column writes: its source, clock and commit
/// time, kept once however many columns the event wrote, so that a new
/// event is compared with each stored event once rather than once per
/// column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The source that wrote it.
    pub source: String,
    /// The writing event's version vector.
    pub vv: VersionVector,
    /// The writing event's commit time (ms).
    pub ts: i64,
}

/// One maximal write of a single column (`field-lww`): the value, and the
/// event that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnWrite {
    /// The writing event: an index into [`FieldState::stamps`].
    pub stamp: usize,
    /// The column value.
    pub value: Value,
}

/// Column-level state for `field-lww`.
///
/// Serialized (the legacy JSON state) with every column write spelled out
/// as a [`FieldVersion`], as before the stamps existed.
///
/// Equality compares the writes with their events (what the encoding
/// holds), not stamp indices: see [`FieldState::stamps`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "FieldStateWire", into = "FieldStateWire")]
pub struct FieldState {
    /// The events the column writes in `fields` come from, each once. A
    /// decoded state holds them in one canonical order (newest commit
    /// first, then source name, then clock; see `stamp_order`). Applying
    /// an event never renumbers them: when every write of an event has
    /// been superseded its slot stays, free, and the next new event's
    /// stamp takes it, so an event costs no walk over every column write.
    /// A free slot is one no column write or `union` set operation refers
    /// to; its content means nothing.
    pub stamps: Vec<Stamp>,
    /// Per column, the antichain of its maximal writes, winner first.
    pub fields: BTreeMap<String, Vec<ColumnWrite>>,
    /// The antichain of delete clocks seen: a column write that happened
    /// before a delete is hidden, so a re-created row does not bring back
    /// columns of its previous life.
    pub cleared: Vec<VersionVector>,
    /// Per `union` column, its element additions and removals (their
    /// events among `stamps` too).
    pub sets: BTreeMap<String, ElementSet>,
    /// Per `counter` column, its initial values and every source's deltas.
    pub counters: BTreeMap<String, CounterState>,
    /// The merged row as last rendered: derived from the rest, never stored.
    pub(crate) rendered: Rendered,
    /// How many writes refer to each stamp: derived from the rest, never
    /// stored, counted afresh when its length is not the number of stamps
    /// (a decoded state).
    pub(crate) uses: Vec<u32>,
}

impl PartialEq for FieldState {
    /// The same writes, in the same order, by the same events: what the
    /// encoded state holds. Stamp indices do not matter.
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &[ColumnWrite], b: &[ColumnWrite]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.value == y.value && self.stamp(x) == other.stamp(y))
        };
        self.cleared == other.cleared
            && self.counters == other.counters
            && self.fields.len() == other.fields.len()
            && self.fields.iter().zip(&other.fields).all(|((c, a), (d, b))| c == d && same(a, b))
            && self.sets.len() == other.sets.len()
            && self
                .sets
                .iter()
                .zip(&other.sets)
                .all(|((c, a), (d, b))| c == d && same(&a.adds, &b.adds) && same(&a.removes, &b.removes))
    }
}

/// [`FieldState`] as serde sees it: the layout before stamps.
#[derive(Serialize, Deserialize)]
struct FieldStateWire {
    fields: BTreeMap<String, Vec<FieldVersion>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cleared: Vec<VersionVector>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sets: BTreeMap<String, ElementVersions>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    counters: BTreeMap<String, CounterState>,
}

impl From<FieldStateWire> for FieldState {
    fn from(w: FieldStateWire) -> Self {
        FieldState { cleared: w.cleared, counters: w.counters, ..FieldState::with_writes(w.fields, w.sets) }
    }
}

impl From<FieldState> for FieldStateWire {
    fn from(f: FieldState) -> Self {
        FieldStateWire { fields: f.column_versions(), sets: f.set_versions(), cleared: f.cleared, counters: f.counters }
    }
}

/// The canonical order of [`FieldState::stamps`]: the newest commit first,
/// then the source name, then the clock. Total over distinct stamps.
pub(super) fn stamp_order(a: StampRef<'_>, b: StampRef<'_>) -> Ordering {
    b.ts.cmp(&a.ts).then_with(|| a.source.cmp(b.source)).then_with(|| a.vv.total_cmp(b.vv))
}

impl FieldState {
    /// A state whose columns hold these writes, in this order; their events
    /// become the stamps (one per distinct source, clock and commit time).
    pub fn with_columns(columns: BTreeMap<String, Vec<FieldVersion>>) -> FieldState {
        FieldState::with_writes(columns, BTreeMap::new())
    }

    /// [`with_columns`](Self::with_columns), with `union` columns' sets too.
    pub fn with_writes(columns: BTreeMap<String, Vec<FieldVersion>>, sets: BTreeMap<String, ElementVersions>) -> FieldState {
        let mut stamps: Vec<Stamp> = Vec::new();
        let mut intern = |writes: Vec<FieldVersion>| -> Vec<ColumnWrite> {
            writes
                .into_iter()
                .map(|w| {
                    let found = stamps.iter().position(|s| s.ts == w.ts && s.source == w.source && s.vv == w.vv);
                    let stamp = found.unwrap_or_else(|| {
                        stamps.push(Stamp { source: w.source, vv: w.vv, ts: w.ts });
                        stamps.len() - 1
                    });
                    ColumnWrite { stamp, value: w.value }
                })
                .collect()
        };
        let mut fields: BTreeMap<String, Vec<ColumnWrite>> = columns.into_iter().map(|(c, ws)| (c, intern(ws))).collect();
        let mut sets: BTreeMap<String, ElementSet> =
            sets.into_iter().map(|(c, set)| (c, ElementSet { adds: intern(set.adds), removes: intern(set.removes) })).collect();
        let mut order: Vec<usize> = (0..stamps.len()).collect();
        order.sort_by(|&a, &b| stamp_order(stamps[a].as_ref(), stamps[b].as_ref()));
        let mut rank = vec![0; stamps.len()];
        for (new, &old) in order.iter().enumerate() {
            rank[old] = new;
        }
        let all = fields.values_mut().flatten().chain(sets.values_mut().flat_map(|s| s.adds.iter_mut().chain(&mut s.removes)));
        for w in all {
            w.stamp = rank[w.stamp];
        }
        let mut slots: Vec<Option<Stamp>> = stamps.into_iter().map(Some).collect();
        let stamps = order.iter().map(|&old| slots[old].take().expect("each stamp once")).collect();
        FieldState { stamps, fields, sets, ..FieldState::default() }
    }

    /// Every column's writes with their events spelled out, in stored order.
    pub fn column_versions(&self) -> BTreeMap<String, Vec<FieldVersion>> {
        let version = |w: &ColumnWrite| {
            let s = self.stamp(w);
            FieldVersion { source: s.source.clone(), vv: s.vv.clone(), ts: s.ts, value: w.value.clone() }
        };
        self.fields.iter().map(|(column, writes)| (column.clone(), writes.iter().map(version).collect())).collect()
    }

    /// Every `union` column's set with its events spelled out.
    pub fn set_versions(&self) -> BTreeMap<String, ElementVersions> {
        let versions = |writes: &[ColumnWrite]| -> Vec<FieldVersion> {
            writes
                .iter()
                .map(|w| {
                    let s = self.stamp(w);
                    FieldVersion { source: s.source.clone(), vv: s.vv.clone(), ts: s.ts, value: w.value.clone() }
                })
                .collect()
        };
        self.sets
            .iter()
            .map(|(c, set)| (c.clone(), ElementVersions { adds: versions(&set.adds), removes: versions(&set.removes) }))
            .collect()
    }

    /// The event that wrote `w`.
    #[inline]
    pub fn stamp(&self, w: &ColumnWrite) -> &Stamp {
        &self.stamps[w.stamp]
    }

    /// `w` with its event, for the orders that compare writes.
    #[inline]
    pub(super) fn written<'s>(&'s self, w: &'s ColumnWrite) -> Written<'s> {
        Written { stamp: self.stamp(w).as_ref(), value: &w.value }
    }

    /// True when no delete has hidden `w` (its event happened before none).
    #[inline]
    pub(super) fn visible(&self, w: &ColumnWrite) -> bool {
        // No delete recorded (the usual case): no stamp to look up.
        if self.cleared.is_empty() {
            return true;
        }
        let vv = &self.stamp(w).vv;
        !self.cleared.iter().any(|c| vv.happened_before(c))
    }
}

impl Stamp {
    #[inline]
    pub(super) fn as_ref(&self) -> StampRef<'_> {
        StampRef { source: &self.source, vv: &self.vv, ts: self.ts }
    }
}

/// A stamp, stored or the event being applied (which has none yet).
#[derive(Clone, Copy)]
pub(super) struct StampRef<'a> {
    source: &'a str,
    vv: &'a VersionVector,
    ts: i64,
}

/// A column write seen with its event.
pub(super) struct Written<'a> {
    stamp: StampRef<'a>,
    value: &'a Value,
}

impl Versioned for Written<'_> {
    fn source(&self) -> &str {
        self.stamp.source
    }
    fn vv(&self) -> &VersionVector {
        self.stamp.vv
    }
    fn ts(&self) -> i64 {
        self.stamp.ts
    }
    fn same_content(&self, other: &Self) -> bool {
        same_json(self.value, other.value)
    }
    fn content_json(&self) -> String {
        serde_json::to_string(self.value).expect("values serialize")
    }
}

/// The stamps while an event is applied: the stored ones, the event's, and
/// how each stored stamp's clock relates to the event's (computed once per
/// event, not once per column write).
pub(super) struct Stamps<'a> {
    stored: &'a [Stamp],
    event: StampRef<'a>,
    /// The event's stamp: a stored one with the same source, clock and
    /// commit time, else `stored.len()` (stored when the event is done).
    event_id: usize,
    relations: &'a [Causality],
    /// How the event ranks against each stored stamp in the `lww` order,
    /// as far as the events decide it ([`MergeEngine::lww_event_cmp`]).
    ranks: &'a [Ordering],
    /// [`FieldState::uses`], kept up to date as writes are superseded and
    /// added (one more entry when the event's stamp is new).
    uses: &'a [Cell<u32>],
}

impl<'a> Stamps<'a> {
    #[inline]
    fn get(&self, id: usize) -> StampRef<'a> {
        if id == self.event_id {
            self.event
        } else {
            self.stored[id].as_ref()
        }
    }

    #[inline]
    fn written<'w>(&self, w: &'w ColumnWrite) -> Written<'w>
    where
        'a: 'w,
    {
        Written { stamp: self.get(w.stamp), value: &w.value }
    }

    /// How the write's event relates to the event being applied.
    #[inline]
    fn relation(&self, id: usize) -> Causality {
        if id == self.event_id {
            Causality::Equal
        } else {
            self.relations[id]
        }
    }

    /// How the event's write of a column ranks against the write with
    /// stamp `id` in the `lww` order, as far as their events decide it
    /// (`Greater`: the event's write comes first); `Equal` when the values
    /// must decide, as between two writes of the event itself.
    #[inline]
    fn rank(&self, id: usize) -> Ordering {
        if id == self.event_id {
            Ordering::Equal
        } else {
            self.ranks[id]
        }
    }

    /// A write of stamp `id` has been superseded.
    #[inline]
    fn release(&self, id: usize) {
        self.uses[id].set(self.uses[id].get() - 1);
    }

    /// A write of the event has been stored.
    #[inline]
    fn acquire(&self) {
        let uses = &self.uses[self.event_id];
        uses.set(uses.get() + 1);
    }
}

impl Versioned for FieldVersion {
    fn source(&self) -> &str {
        &self.source
    }
    fn vv(&self) -> &VersionVector {
        &self.vv
    }
    fn ts(&self) -> i64 {
        self.ts
    }
    fn same_content(&self, other: &Self) -> bool {
        same_json(&self.value, &other.value)
    }
    fn content_json(&self) -> String {
        serde_json::to_string(&self.value).expect("values serialize")
    }
}

impl Slot for FieldVersion {
    /// In place: the source and clock keep their allocations (a column's
    /// next write usually comes from the same source with a clock of the
    /// same shape), and the value is swapped, so `from` holds the old one
    /// for [`assign_value`] to reuse.
    fn overwrite(&mut self, from: &mut Self) {
        if self.source != from.source {
            self.source.clone_from(&from.source);
        }
        self.vv.assign(&from.vv);
        self.ts = from.ts;
        std::mem::swap(&mut self.value, &mut from.value);
    }

    /// Keeps the source and clock, so one write template serves every
    /// column of an event.
    fn take(&mut self) -> Self {
        FieldVersion { source: self.source.clone(), vv: self.vv.clone(), ts: self.ts, value: std::mem::take(&mut self.value) }
    }
}

/// Counts the writes (and set operations) that refer to each stamp.
fn count_uses(
    uses: &mut Vec<u32>,
    stamps: usize,
    columns: &BTreeMap<String, Vec<ColumnWrite>>,
    sets: &BTreeMap<String, ElementSet>,
) {
    uses.clear();
    uses.resize(stamps, 0);
    for writes in columns.values().chain(sets.values().flat_map(|s| [&s.adds, &s.removes])) {
        for w in writes {
            uses[w.stamp] += 1;
        }
    }
}

/// After an event's column writes: stores the event's stamp in its slot
/// (`event_id`; a new one at the end when `event_id == stamps.len()`) if
/// some write refers to it and `fresh` (the slot does not hold it yet),
/// reusing the allocations of the free slot it takes.
fn settle_stamps(stamps: &mut Vec<Stamp>, uses: &mut Vec<u32>, event: StampRef<'_>, event_id: usize, fresh: bool) {
    if event_id == stamps.len() {
        if uses[event_id] > 0 {
            stamps.push(Stamp { source: event.source.to_owned(), vv: event.vv.clone(), ts: event.ts });
        } else {
            uses.pop();
        }
    } else if fresh && uses[event_id] > 0 {
        let s = &mut stamps[event_id];
        if s.source != event.source {
            s.source.clear();
            s.source.push_str(event.source);
        }
        s.vv.assign(event.vv);
        s.ts = event.ts;
    }
}

/// Advances a walk over a map sorted by column name past `name`: the
/// entry for `name`, if any (one comparison per key passed).
#[inline]
fn seek<'m, V>(map: &mut Peekable<impl Iterator<Item = (&'m String, V)>>, name: &str) -> Option<V> {
    while let Some((column, _)) = map.peek() {
        match name_cmp(column, name) {
            Ordering::Less => {
                map.next();
            }
            Ordering::Equal => return map.next().map(|(_, v)| v),
            Ordering::Greater => return None,
        }
    }
    None
}

/// Advances a walk over a map sorted by column name to `name`: its entry
/// there, if any, or `Err` when the map has a column before `name` (one the
/// walk of the other map skipped).
#[inline]
fn at<'m, V: 'm>(map: &mut Peekable<impl Iterator<Item = (&'m String, &'m V)>>, name: &str) -> Result<Option<&'m V>, ()> {
    match map.peek() {
        Some((column, _)) => match name_cmp(column, name) {
            Ordering::Less => Err(()),
            Ordering::Equal => Ok(map.next().map(|(_, v)| v)),
            Ordering::Greater => Ok(None),
        },
        None => Ok(None),
    }
}

/// `a.cmp(b)` for column names, deciding on the first byte inline where it
/// differs (most names of a row start differently) and calling `memcmp`
/// only when it does not.
#[inline]
fn name_cmp(a: &str, b: &str) -> Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}
