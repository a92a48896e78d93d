//! The merge engine: Tributary's semantics, and nothing else.
//!
//! This module knows no Kafka, no async runtime and no disk. It turns a
//! normalized [`ChangeEvent`] plus the stored [`KeyState`] of its key into a
//! new state, and renders a state into the merged record. Everything here is a
//! pure function of its inputs, which is what makes replays, restores and
//! rebalances agree (see `doc/DESIGN.md`).
//!
//! The state of a key is the *antichain* of maximal versions seen so far:
//! no stored version's clock is ≤ another's. Because "supersedes" is a strict
//! partial order, the maximal elements of a set do not depend on the order the
//! elements arrived in, so every interleaving of the same events converges.

mod canonical;
mod clock;
mod compare;
mod counter;
mod fields;
#[cfg(test)]
mod json_strategies;
mod row;
mod rules;
mod types;
mod union;

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use serde_json::Value;

pub use canonical::CanonicalRow;
use clock::Relations;
pub use clock::{Causality, MergedClock, VersionVector};
pub use compare::ColumnTexts;
pub use counter::{CounterState, Delta, Refusal, Tally};
use fields::Rendered;
pub use fields::{ColumnWinner, ColumnWrite, FieldState, FieldVersion, Stamp};
pub use row::{LazyRow, MergedRow};
pub use rules::ColumnRule;
use rules::{value_cmp, value_rank};
pub use types::{Applied, ChangeEvent, ChangedColumns, DeletePolicy, KeyState, MergeSettings, Op, Policy, Resolved, Version};
pub use union::{ElementSet, ElementVersions};

/// A row image: a flat JSON object (column → value).
pub type Row = serde_json::Map<String, Value>;

/// Anything that takes part in an antichain: versions and column writes.
trait Versioned {
    fn source(&self) -> &str;
    fn vv(&self) -> &VersionVector;
    fn ts(&self) -> i64;
    fn same_content(&self, other: &Self) -> bool;
    /// Canonical JSON of the content (sorted keys), the last tie-breaker.
    fn content_json(&self) -> String;
}

impl Versioned for Version {
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
        // Canonical text, not `Value ==` (which equates 0.0 and -0.0), so
        // equality agrees with the content order in `equal_clock_cmp`.
        self.op == other.op
            && match (&self.row, &other.row) {
                (Some(a), Some(b)) => same_row(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
    fn content_json(&self) -> String {
        // serde_json's map is a BTreeMap: keys come out sorted.
        serde_json::to_string(&self.row).expect("rows serialize")
    }
}

/// A member of an antichain that a new element can be written into.
trait Slot: Sized {
    /// Becomes `from`; `from` is left valid but unspecified.
    fn overwrite(&mut self, from: &mut Self) {
        std::mem::swap(self, from);
    }
    /// A member made of `self`, leaving `self` valid but unspecified.
    fn take(&mut self) -> Self;
}

impl Slot for Version {
    fn take(&mut self) -> Self {
        let empty = Version { source: String::new(), vv: VersionVector::new(), ts: 0, op: Op::Delete, row: None };
        std::mem::replace(self, empty)
    }
}

/// `*dst = src.clone()`, reusing `dst`'s string buffer where both are strings.
#[inline]
fn assign_value(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::String(d), Value::String(s)) => d.clone_from(s),
        (dst, src) => *dst = src.clone(),
    }
}

/// Outcome of inserting into an antichain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    Added,
    Duplicate,
    Stale,
}

/// The merge engine: applies events to key states and renders merged rows.
#[derive(Debug, Clone, Default)]
pub struct MergeEngine {
    settings: MergeSettings,
    /// Tells apart engines with different settings (clones share it), so a
    /// row rendered by one is never lent out by another. 0 is the default
    /// settings' engine.
    id: u64,
}

/// The next [`MergeEngine::id`].
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(1);

impl MergeEngine {
    /// An engine with these settings.
    pub fn new(settings: MergeSettings) -> Self {
        Self { settings, id: NEXT_ENGINE.fetch_add(1, AtomicOrdering::Relaxed) }
    }

    /// The settings in force.
    pub fn settings(&self) -> &MergeSettings {
        &self.settings
    }

    fn priority(&self, source: &str) -> i64 {
        self.settings.priorities.get(source).copied().unwrap_or(0)
    }

    /// The `lww` order: larger `ts`, then larger priority, then the source
    /// name that sorts first, then the larger own clock entry, then the larger
    /// canonical content. `Greater` means `a` wins.
    #[inline]
    fn lww_cmp<T: Versioned>(&self, a: &T, b: &T) -> Ordering {
        // Commit times almost always differ: that much inline, the rest not.
        match a.ts().cmp(&b.ts()) {
            Ordering::Equal => self.lww_tie(a, b),
            decided => decided,
        }
    }

    /// [`lww_cmp`](Self::lww_cmp) between two members with equal commit times.
    #[inline(never)]
    fn lww_tie<T: Versioned>(&self, a: &T, b: &T) -> Ordering {
        self.lww_event_cmp((a.ts(), a.source(), a.vv()), (b.ts(), b.source(), b.vv()))
            .then_with(|| a.content_json().cmp(&b.content_json()))
            // Beyond the design's order: two distinct versions of one set can
            // agree on all of the above in carried mode; the clock decides, so
            // the order is total and set order never depends on arrival.
            .then_with(|| a.vv().to_json().cmp(&b.vv().to_json()))
    }

    /// The part of the `lww` order that the writing events decide: commit
    /// time, priority, source name, own clock entry. `Equal` leaves it to
    /// the content (and then the clock).
    fn lww_event_cmp(
        &self,
        (a_ts, a, a_vv): (i64, &str, &VersionVector),
        (b_ts, b, b_vv): (i64, &str, &VersionVector),
    ) -> Ordering {
        a_ts.cmp(&b_ts)
            .then_with(|| self.priority(a).cmp(&self.priority(b)))
            .then_with(|| b.cmp(a))
            .then_with(|| a_vv.get(a).cmp(&b_vv.get(b)))
    }

    /// The order of the configured row policy. `Greater` means `a` wins.
    fn policy_cmp(&self, a: &Version, b: &Version) -> Ordering {
        match self.settings.policy {
            Policy::SourcePriority => self.priority(&a.source).cmp(&self.priority(&b.source)).then_with(|| self.lww_cmp(a, b)),
            Policy::Lww | Policy::FieldLww => self.lww_cmp(a, b),
        }
    }

    /// The order among versions with equal clocks (which only a misbehaving
    /// source or an echo of a merged record produces): the larger canonical
    /// content, then the earlier commit, then the source name that sorts
    /// first. `Greater` means `a` supersedes `b`.
    ///
    /// Content comes first so that the order is total and transitive, and
    /// the earlier copy wins among equal contents so that an echo (which
    /// commits after the record it echoes) never displaces that record:
    /// it is dropped as a duplicate and emits nothing, which stops
    /// bidirectional setups from ping-ponging. See README, "Deviations".
    fn equal_clock_cmp<T: Versioned>(&self, a: &T, b: &T) -> Ordering {
        let content = if a.same_content(b) { Ordering::Equal } else { a.content_json().cmp(&b.content_json()) };
        content.then_with(|| b.ts().cmp(&a.ts())).then_with(|| b.source().cmp(a.source()))
    }

    /// Inserts `e` into the antichain `set` (design §1, "State per key").
    fn insert<T: Versioned + Slot>(&self, set: &mut Vec<T>, e: T) -> Insert {
        self.insert_by(set, e, |v, e| v.vv().causality(e.vv()))
    }

    /// Inserts `e` into `set`, kept as the maximal elements under `order`
    /// (`order(v, e)` says how `v` relates to `e`; `Equal` members are told
    /// apart as equal clocks are). The maximal elements of a set under a
    /// partial order do not depend on arrival order, which is what makes
    /// every column rule converge.
    fn insert_by<T: Versioned + Slot>(&self, set: &mut Vec<T>, mut e: T, order: impl Fn(&T, &T) -> Causality) -> Insert {
        self.insert_into(set, &mut e, order)
    }

    /// [`insert_by`](Self::insert_by) from a place the caller keeps: when
    /// `e` supersedes a member, it is written into that member's slot
    /// ([`Slot::overwrite`], which for column writes reuses the member's
    /// allocations), else a copy is pushed ([`Slot::take`]). The set is the
    /// same either way; this only saves allocations on the hot path.
    fn insert_into<T: Versioned + Slot>(&self, set: &mut Vec<T>, e: &mut T, order: impl Fn(&T, &T) -> Causality) -> Insert {
        // Each member is compared once: the relations are kept for the
        // `retain` below (on the stack for the usual handful of members).
        let mut room = Relations::new();
        let relations = room.of(set.len());
        if let Some(refused) = self.relate(set, e, order, relations) {
            return refused;
        }
        // Nothing supersedes `e`: drop what `e` supersedes (everything before
        // it, and the equal clock it beats, if any).
        match relations.iter().position(superseded) {
            Some(first) => {
                set[first].overwrite(e);
                let mut relation = relations.iter().enumerate();
                set.retain(|_| relation.next().is_some_and(|(i, r)| i == first || !superseded(r)));
            }
            None => set.push(e.take()),
        }
        self.sort_winner_first(set);
        Insert::Added
    }

    /// Fills `relations` with how each member of `set` relates to `e`
    /// (`order(member, e)`), stopping at the first member that supersedes
    /// `e` or holds it already: then `e` is not inserted, and that is the
    /// outcome returned.
    fn relate<T: Versioned>(
        &self,
        set: &[T],
        e: &T,
        order: impl Fn(&T, &T) -> Causality,
        relations: &mut [Causality],
    ) -> Option<Insert> {
        for (v, relation) in set.iter().zip(relations.iter_mut()) {
            *relation = order(v, e);
            match *relation {
                Causality::After => return Some(Insert::Stale),
                Causality::Equal if self.equal_clock_cmp(v, e) != Ordering::Less => {
                    return Some(if v.same_content(e) { Insert::Duplicate } else { Insert::Stale });
                }
                _ => {}
            }
        }
        None
    }

    /// [`insert`](Self::insert) of a version that keeps what it displaced,
    /// so that [`undo`](Self::undo) can put the set back exactly. The set
    /// ends as `insert` leaves it: the order is total, so the place found
    /// for `e` is the place sorting would give it.
    fn insert_undoable(&self, set: &mut Vec<Version>, e: Version) -> Result<Undo, Insert> {
        let mut room = Relations::new();
        let relations = room.of(set.len());
        if let Some(refused) = self.relate(set, &e, |v, e| v.vv.causality(&e.vv), relations) {
            return Err(refused);
        }
        let mut displaced = Vec::new();
        let mut kept = 0;
        for (index, relation) in relations.iter().enumerate() {
            if superseded(relation) {
                displaced.push((index, set.remove(kept)));
            } else {
                kept += 1;
            }
        }
        let at = set.partition_point(|v| self.lww_cmp(v, &e) == Ordering::Greater);
        set.insert(at, e);
        Ok(Undo { at, displaced })
    }

    /// Puts a key's state back as it was before the
    /// [`apply_undoable`](Self::apply_undoable) that returned `undo`. Nothing
    /// is copied: the event's version is dropped and the versions it
    /// displaced return to their places.
    pub fn undo(&self, state: &mut KeyState, undo: Undo) {
        state.versions.remove(undo.at);
        // Ascending original places: each lands where it was.
        for (index, version) in undo.displaced {
            state.versions.insert(index, version);
        }
    }

    /// Keeps a set in one canonical order (winner first by `lww`), so equal
    /// sets serialize to equal bytes whatever order their members came in.
    fn sort_winner_first<T: Versioned>(&self, set: &mut [T]) {
        if set.len() > 1 {
            set.sort_by(|a, b| self.lww_cmp(b, a));
        }
    }

    /// Applies one event to the key's state.
    pub fn apply(&self, state: &mut KeyState, event: ChangeEvent) -> Applied {
        self.apply_reported(state, event).applied
    }

    /// [`apply`](Self::apply), also telling what the column rules did with
    /// the event (for metrics).
    pub fn apply_reported(&self, state: &mut KeyState, event: ChangeEvent) -> ApplyReport {
        if self.settings.policy != Policy::FieldLww {
            let version = Version { source: event.source, vv: event.vv, ts: event.ts, op: event.op, row: event.row };
            let applied = match self.insert(&mut state.versions, version) {
                Insert::Added => Applied::Changed,
                Insert::Duplicate => Applied::Duplicate,
                Insert::Stale => Applied::Stale,
            };
            return ApplyReport { applied, foreign_owner_writes: 0, refused: None };
        }
        self.apply_fields(state, event)
    }

    /// [`apply_reported`](Self::apply_reported), keeping what
    /// [`undo`](Self::undo) needs to take a change back without a copy of
    /// the state. `None` when nothing changed, and under `field-lww`, whose
    /// column state only a copy taken before can restore
    /// ([`undoes_without_copy`](Self::undoes_without_copy) is false).
    pub fn apply_undoable(&self, state: &mut KeyState, event: ChangeEvent) -> (ApplyReport, Option<Undo>) {
        if self.settings.policy == Policy::FieldLww {
            return (self.apply_fields(state, event), None);
        }
        let version = Version { source: event.source, vv: event.vv, ts: event.ts, op: event.op, row: event.row };
        let (applied, undo) = match self.insert_undoable(&mut state.versions, version) {
            Ok(undo) => (Applied::Changed, Some(undo)),
            Err(Insert::Duplicate) => (Applied::Duplicate, None),
            Err(_) => (Applied::Stale, None),
        };
        (ApplyReport { applied, foreign_owner_writes: 0, refused: None }, undo)
    }

    /// True when every change [`apply_undoable`](Self::apply_undoable)
    /// makes comes with its [`Undo`] (the row-level policies).
    pub fn undoes_without_copy(&self) -> bool {
        self.settings.policy != Policy::FieldLww
    }

    /// Picks the deciding version of the set under the delete policy, with
    /// `cmp` as the order among candidates. Returns the index.
    fn decide(&self, versions: &[Version], cmp: impl Fn(&Version, &Version) -> Ordering) -> Option<usize> {
        let best_of = |want: Option<Op>| {
            versions
                .iter()
                .enumerate()
                .filter(|(_, v)| want.is_none_or(|op| v.op == op))
                .max_by(|(_, a), (_, b)| cmp(a, b))
                .map(|(i, _)| i)
        };
        match self.settings.deletes {
            DeletePolicy::Lww => best_of(None),
            DeletePolicy::DeleteWins => best_of(Some(Op::Delete)).or_else(|| best_of(None)),
            DeletePolicy::UpdateWins => best_of(Some(Op::Upsert)).or_else(|| best_of(None)),
        }
    }

    /// Renders the merged view of a key: a pure function of its state.
    pub fn resolve<'a>(&self, state: &'a KeyState) -> Resolved<'a> {
        let vv = MergedClock::of(&state.versions);
        let siblings = state.versions.len();
        let (mut row, winner): (Option<MergedRow<'a>>, Option<&'a str>) = match self.settings.policy {
            Policy::FieldLww => match state.fields.as_ref().map(|f| &f.rendered) {
                Some(Rendered { engine, row: Some(row) }) if *engine == self.id => (row.as_ref().map(MergedRow::Borrowed), None),
                _ => (self.field_base(state).map(|base| MergedRow::Owned(self.render_fields(state, base))), None),
            },
            Policy::Lww | Policy::SourcePriority => match self.decide(&state.versions, |a, b| self.policy_cmp(a, b)) {
                Some(i) => {
                    let w = &state.versions[i];
                    let row = match w.op {
                        Op::Upsert => Some(MergedRow::Stored(w.row.as_ref().expect("upserts carry a row"))),
                        Op::Delete => None,
                    };
                    (row, Some(w.source.as_str()))
                }
                None => (None, None),
            },
        };
        if let (Some(field), Some(r)) = (&self.settings.clock_field, row.as_mut()) {
            // Carried mode: the output carries the merged clock, so a sink that
            // writes the row back into a region writes the clock with it.
            r.to_mut().insert(field.clone(), Value::String(vv.to_json()));
        }
        Resolved { row, vv, winner, siblings }
    }

    /// True when the key resolves to deleted and its newest version is older
    /// than `tombstone_retention` at `now_ms`: its state may then be dropped.
    pub fn tombstone_expired(&self, state: &KeyState, now_ms: i64) -> bool {
        let newest = state.versions.iter().map(|v| v.ts).max();
        match newest {
            None => true,
            Some(ts) => self.resolve(state).row.is_none() && ts.saturating_add(self.settings.tombstone_retention_ms) < now_ms,
        }
    }
}

/// Members an insert supersedes: everything before the new one, and the
/// equal clock it beats, if any.
fn superseded(relation: &Causality) -> bool {
    matches!(relation, Causality::Before | Causality::Equal)
}

/// What [`MergeEngine::apply_undoable`] took out of a key's state, for
/// [`MergeEngine::undo`] to put back.
#[derive(Debug)]
pub struct Undo {
    /// Where the event's version went.
    at: usize,
    /// The versions it superseded, with their places, in ascending order.
    displaced: Vec<(usize, Version)>,
}

/// What one event did, with what the column rules counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Whether the state changed.
    pub applied: Applied,
    /// Writes to `owner` columns by sources other than the owner: kept only
    /// as a fallback for while the owner has written nothing.
    pub foreign_owner_writes: u32,
    /// Why the event was refused ([`Applied::Refused`]).
    pub refused: Option<Refusal>,
}

/// Equal as canonical JSON text (unlike `Value ==`, which equates `0.0` and
/// `-0.0`), so element identity agrees with the order of `equal_clock_cmp`.
/// Compared in place: serde_json writes a float as the shortest text that
/// reads back as its bits, so equal text is equal bits.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x.is_f64() != y.is_f64() => false,
            (Some(fx), Some(fy)) if x.is_f64() => fx.to_bits() == fy.to_bits(),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => same_row(x, y),
        _ => a == b,
    }
}

/// [`same_json`] for rows: the same columns holding the same JSON text.
fn same_row(a: &Row, b: &Row) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
}

#[cfg(test)]
mod tests;
