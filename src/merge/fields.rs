//! `field-lww`: the column-level state of a key, how an event's columns are
//! written into it, and how the row is rendered and explained from it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::iter::Peekable;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clock::Relations;
use super::union::{present_elements, union_elements, union_value, write_union};
use super::{
    assign_value, same_json, value_rank, Applied, ApplyReport, Causality, ChangeEvent, ColumnRule, CounterState, ElementSet,
    ElementVersions, Insert, KeyState, MergeEngine, Op, Policy, Row, Slot, Version, VersionVector, Versioned,
};

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "FieldStateWire", into = "FieldStateWire")]
pub struct FieldState {
    /// The events the column writes in `fields` come from, each once, in
    /// one canonical order (newest commit first, then source name, then
    /// clock; see [`stamp_order`]): equal states hold equal vectors. Every
    /// stamp is the writer of some column write or `union` set operation.
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
    pub fn stamp(&self, w: &ColumnWrite) -> &Stamp {
        &self.stamps[w.stamp]
    }

    /// `w` with its event, for the orders that compare writes.
    pub(super) fn written<'s>(&'s self, w: &'s ColumnWrite) -> Written<'s> {
        Written { stamp: self.stamp(w).as_ref(), value: &w.value }
    }

    /// True when no delete has hidden `w` (its event happened before none).
    pub(super) fn visible(&self, w: &ColumnWrite) -> bool {
        let vv = &self.stamp(w).vv;
        !self.cleared.iter().any(|c| vv.happened_before(c))
    }
}

impl Stamp {
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
}

impl<'a> Stamps<'a> {
    fn get(&self, id: usize) -> StampRef<'a> {
        match self.stored.get(id) {
            Some(s) => s.as_ref(),
            None => self.event,
        }
    }

    fn written<'w>(&self, w: &'w ColumnWrite) -> Written<'w>
    where
        'a: 'w,
    {
        Written { stamp: self.get(w.stamp), value: &w.value }
    }

    /// How the write's event relates to the event being applied.
    fn relation(&self, id: usize) -> Causality {
        self.relations.get(id).copied().unwrap_or(Causality::Equal)
    }
}

/// A `field-lww` row rendered by [`MergeEngine::apply`], so that
/// [`MergeEngine::resolve`] lends it instead of building a row per event
/// (a row is a dozen small allocations), and the next event updates it in
/// place. It is derived data: equal states are equal whatever it holds, and
/// a state that was decoded or changed other than through `apply` has none
/// (or one the engine no longer trusts) and is rendered from scratch.
#[derive(Clone, Default)]
pub(crate) struct Rendered {
    /// The [`MergeEngine::id`] that rendered it (the row depends on the settings).
    pub(super) engine: u64,
    /// `Some(None)`: the key resolves to deleted; `None`: nothing rendered.
    pub(super) row: Option<Option<Row>>,
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.row.is_some() { "Rendered" } else { "NotRendered" })
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

impl MergeEngine {
    /// The columns with rule `counter`.
    pub(super) fn counter_columns(&self) -> impl Iterator<Item = &str> {
        self.settings.columns.iter().filter(|(_, r)| **r == ColumnRule::Counter).map(|(c, _)| c.as_str())
    }

    /// `field-lww`: the row-existence register plus one set of writes per column.
    pub(super) fn apply_fields(&self, state: &mut KeyState, event: ChangeEvent) -> ApplyReport {
        let mut foreign_owner_writes = 0;
        // Counter columns are decided first, from the state as it is: a
        // refused event changes nothing.
        let mut counter_writes = Vec::new();
        if self.settings.columns.values().any(|r| *r == ColumnRule::Counter) {
            let empty = FieldState::default();
            let fields = state.fields.as_ref().unwrap_or(&empty);
            for column in self.counter_columns() {
                match self.counter_write(fields, column, &event) {
                    Ok(write) => counter_writes.push((column, write)),
                    Err(refusal) => {
                        return ApplyReport { applied: Applied::Refused, foreign_owner_writes: 0, refused: Some(refusal) };
                    }
                }
            }
        }
        let fields = state.fields.get_or_insert_with(FieldState::default);
        let mut fields_changed = false;
        match event.op {
            Op::Delete => {
                // Every delete clock is recorded, stale at row level or not, so
                // the set of delete clocks converges like everything else.
                if !fields.cleared.iter().any(|c| matches!(c.causality(&event.vv), Causality::After | Causality::Equal)) {
                    fields.cleared.retain(|c| c.causality(&event.vv) != Causality::Before);
                    fields.cleared.push(event.vv.clone());
                    fields.cleared.sort_by_key(VersionVector::to_json);
                    fields_changed = true;
                }
            }
            Op::Upsert => {
                if let Some(row) = &event.row {
                    let (changed, foreign) = self.write_columns(fields, &event, row);
                    fields_changed |= changed;
                    foreign_owner_writes += foreign;
                }
            }
        }
        for (column, write) in counter_writes {
            fields_changed |= self.apply_counter(fields, column, &event, write);
            fields_changed |= self.compact_counter(fields, column);
        }
        let version = Version { source: event.source, vv: event.vv, ts: event.ts, op: event.op, row: event.row };
        let applied = match self.insert(&mut state.versions, version) {
            Insert::Added => Applied::Changed,
            _ if fields_changed => Applied::Changed,
            Insert::Duplicate => Applied::Duplicate,
            Insert::Stale => Applied::Stale,
        };
        let fresh = state.fields.as_ref().is_some_and(|f| f.rendered.engine == self.id && f.rendered.row.is_some());
        if applied == Applied::Changed || !fresh {
            self.rerender(state);
        }
        ApplyReport { applied, foreign_owner_writes, refused: None }
    }

    /// Writes the columns an upsert changed (all of them for a full image)
    /// into the column state. Returns whether the state changed and how
    /// many of the writes were foreign writes to `owner` columns.
    ///
    /// The event is compared with each stored stamp once, up front; each
    /// column then only looks up how its writes' events relate to it.
    fn write_columns(&self, fields: &mut FieldState, event: &ChangeEvent, row: &Row) -> (bool, u32) {
        let (mut changed_any, mut foreign_owner_writes) = (false, 0);
        let FieldState { stamps, fields: columns, sets, .. } = fields;
        let me = StampRef { source: &event.source, vv: &event.vv, ts: event.ts };
        const ON_STACK: usize = 16;
        let mut stack = [Causality::Concurrent; ON_STACK];
        let mut heap = Vec::new();
        let relations: &mut [Causality] = if stamps.len() <= ON_STACK {
            &mut stack[..stamps.len()]
        } else {
            heap.resize(stamps.len(), Causality::Concurrent);
            &mut heap
        };
        let mut event_id = stamps.len();
        for (i, (stamp, relation)) in stamps.iter().zip(relations.iter_mut()).enumerate() {
            *relation = stamp.vv.causality(&event.vv);
            if *relation == Causality::Equal && stamp.ts == event.ts && stamp.source == event.source {
                event_id = i;
            }
        }
        let ctx = Stamps { stored: stamps, event: me, event_id, relations };
        // The row, the rules and the column map are all sorted by column
        // name: walked together, no column is looked up.
        let mut rules = self.settings.columns.iter().peekable();
        let mut known = columns.iter_mut().peekable();
        let mut new_columns = Vec::new();
        for (name, value) in row {
            let changed = event.full_image || event.before.as_ref().is_none_or(|before| before.get(name) != Some(value));
            if !changed {
                continue;
            }
            let rule = seek(&mut rules, name);
            if rule == Some(&ColumnRule::Counter) {
                continue; // by the caller
            }
            if rule == Some(&ColumnRule::Union) {
                let before = if event.full_image { None } else { event.before.as_ref().and_then(|b| b.get(name)) };
                let set = match sets.get_mut(name) {
                    Some(set) => set,
                    None => sets.entry(name.clone()).or_default(),
                };
                let (operations, changed) = self.apply_union(set, &ctx, before, value);
                changed_any |= changed;
                if operations {
                    continue;
                }
                // The write added and removed nothing (`[]`, null, a
                // reordering): it still says the column exists, so it is
                // kept as a plain write, shown while no set operation is
                // visible. Else a row whose base lacks the column would lose it.
            }
            match seek(&mut known, name) {
                Some(writes) => {
                    let (added, foreign) = self.write_column(writes, &ctx, rule, value);
                    changed_any |= added;
                    foreign_owner_writes += u32::from(foreign);
                }
                None => new_columns.push((name, rule, value)),
            }
        }
        drop(known);
        for (name, rule, value) in new_columns {
            let writes = columns.entry(name.clone()).or_default();
            let (added, foreign) = self.write_column(writes, &ctx, rule, value);
            changed_any |= added;
            foreign_owner_writes += u32::from(foreign);
        }
        settle_stamps(stamps, columns, sets, me, event_id);
        (changed_any, foreign_owner_writes)
    }

    /// Inserts one column write (the event's, with `value`) into the
    /// column's set of writes under its rule. Returns whether the set
    /// changed, and whether that write was a foreign write to an `owner`
    /// column (counted once: a redelivery is a duplicate).
    fn write_column(
        &self,
        set: &mut Vec<ColumnWrite>,
        stamps: &Stamps<'_>,
        rule: Option<&ColumnRule>,
        value: &Value,
    ) -> (bool, bool) {
        // A row-stale event's column writes still apply: a later version
        // that did not change this column does not carry this write, so
        // dropping it would depend on arrival order.
        let foreign = matches!(rule, Some(ColumnRule::Owner { source }) if *source != stamps.event.source);
        // Plain writes of a `union` column are ordered by their clocks alone.
        let rule = rule.filter(|r| **r != ColumnRule::Union);
        let added = self.insert_column_write(set, stamps, rule, value) == Insert::Added;
        (added, added && foreign)
    }

    /// [`insert_into`](Self::insert_into) for a column's writes: the same
    /// antichain, with each write's clock relation to the event looked up
    /// rather than computed.
    pub(super) fn insert_column_write(
        &self,
        set: &mut Vec<ColumnWrite>,
        stamps: &Stamps<'_>,
        rule: Option<&ColumnRule>,
        value: &Value,
    ) -> Insert {
        let e = Written { stamp: stamps.event, value };
        let mut room = Relations::new();
        let relations = room.of(set.len());
        for (w, relation) in set.iter().zip(relations.iter_mut()) {
            let v = stamps.written(w);
            *relation = rule_relation(rule, stamps.relation(w.stamp), v.stamp.source, v.value, e.stamp.source, value);
            match *relation {
                Causality::After => return Insert::Stale,
                Causality::Equal if self.equal_clock_cmp(&v, &e) != Ordering::Less => {
                    return if same_json(v.value, value) { Insert::Duplicate } else { Insert::Stale };
                }
                _ => {}
            }
        }
        let superseded = |r: &Causality| matches!(r, Causality::Before | Causality::Equal);
        let mut at = match relations.iter().position(superseded) {
            Some(first) => {
                set[first].stamp = stamps.event_id;
                assign_value(&mut set[first].value, value);
                let mut relation = relations.iter().enumerate();
                set.retain(|_| relation.next().is_some_and(|(i, r)| i == first || !superseded(r)));
                first
            }
            None => {
                set.push(ColumnWrite { stamp: stamps.event_id, value: value.clone() });
                set.len() - 1
            }
        };
        // The other writes are in order (winner first, and `retain` kept
        // it); the new one moves to its place. Cheaper than a sort.
        let wins = |a: &ColumnWrite, b: &ColumnWrite| self.lww_cmp(&stamps.written(a), &stamps.written(b)) == Ordering::Greater;
        while at > 0 && wins(&set[at], &set[at - 1]) {
            set.swap(at, at - 1);
            at -= 1;
        }
        while at + 1 < set.len() && wins(&set[at + 1], &set[at]) {
            set.swap(at, at + 1);
            at += 1;
        }
        Insert::Added
    }

    /// The rule of a column, if it has one.
    pub(super) fn rule(&self, column: &str) -> Option<&ColumnRule> {
        if self.settings.columns.is_empty() {
            return None;
        }
        self.settings.columns.get(column)
    }

    /// Why each column of a `field-lww` row has its value (for `/state/{key}`
    /// and conflict audits): the rule, the write that decided it and the
    /// reason, in column order. Empty when the key resolves to deleted or
    /// under a row-level policy (the version set tells the story there).
    pub fn explain(&self, state: &KeyState) -> Vec<ColumnWinner> {
        let base = match self.settings.policy {
            Policy::FieldLww => {
                self.decide(&state.versions, |a, b| self.lww_cmp(a, b)).map(|i| &state.versions[i]).filter(|v| v.op == Op::Upsert)
            }
            Policy::Lww | Policy::SourcePriority => None,
        };
        let Some(base) = base else { return Vec::new() };
        let empty = FieldState::default();
        let fields = state.fields.as_ref().unwrap_or(&empty);
        let from_base = |column: &str, why: &'static str| ColumnWinner {
            column: column.to_owned(),
            rule: self.rule(column).map_or("lww", ColumnRule::name),
            source: Some(base.source.clone()),
            vv: Some(base.vv.clone()),
            why,
        };
        let mut out: BTreeMap<&str, ColumnWinner> = BTreeMap::new();
        for column in base.row.iter().flat_map(|r| r.keys()) {
            let why = if fields.fields.contains_key(column) || fields.sets.contains_key(column) {
                "the row's base: a delete hides every write of this column"
            } else {
                "the row's base (the full image of the version that decides the row exists): no write of this column"
            };
            out.insert(column, from_base(column, why));
        }
        for (column, writes) in &fields.fields {
            let Some(w) = self.column_winner(fields, column, writes) else { continue };
            let rule = self.rule(column);
            let stamp = fields.stamp(w);
            let why = match rule {
                None => "latest write (lww order)",
                Some(ColumnRule::Owner { source }) if stamp.source == *source => "the owner's latest write",
                Some(ColumnRule::Owner { .. }) => "latest write of any source: the owner has written none",
                Some(ColumnRule::Max) => "largest value written",
                Some(ColumnRule::Min) => "smallest value written",
                Some(ColumnRule::Union) => {
                    "latest write that added or removed no element (or from before the column had rule union)"
                }
                Some(ColumnRule::Counter) => "latest write from before the column had rule counter",
            };
            let rule = rule.map_or("lww", ColumnRule::name);
            out.insert(
                column,
                ColumnWinner {
                    column: column.clone(),
                    rule,
                    source: Some(stamp.source.clone()),
                    vv: Some(stamp.vv.clone()),
                    why,
                },
            );
        }
        for (column, set) in &fields.sets {
            if self.rule(column) == Some(&ColumnRule::Union) && union_elements(fields, set).is_some() {
                let why = "union of the additions no removal had seen";
                out.insert(column, ColumnWinner { column: column.clone(), rule: "union", source: None, vv: None, why });
            }
        }
        for column in fields.counters.keys() {
            if self.rule(column) == Some(&ColumnRule::Counter)
                && self.counter_value(fields, column, base.row.as_ref().and_then(|r| r.get(column))).is_some()
            {
                let why = "the initial value (latest visible insert) plus every source's counted deltas (after - before)";
                out.insert(column, ColumnWinner { column: column.clone(), rule: "counter", source: None, vv: None, why });
            }
        }
        out.into_values().collect()
    }

    /// The full after image of the winning existence version (`field-lww`),
    /// or `None` when the key resolves to deleted.
    pub(super) fn field_base<'s>(&self, state: &'s KeyState) -> Option<&'s Row> {
        self.decide(&state.versions, |a, b| self.lww_cmp(a, b))
            .map(|i| &state.versions[i])
            .filter(|v| v.op == Op::Upsert)
            .and_then(|v| v.row.as_ref())
    }

    /// Brings the state's rendered row up to date: in place when it has the
    /// columns the new row has (the usual case: the same columns, some new
    /// values), else rendered afresh.
    pub(super) fn rerender(&self, state: &mut KeyState) {
        let Some(fields) = state.fields.as_mut() else { return };
        let old = std::mem::take(&mut fields.rendered);
        let old = if old.engine == self.id { old.row.flatten() } else { None };
        let fields = state.fields.as_ref().expect("checked above");
        let row = self.field_base(state).map(|base| match old {
            Some(mut row) => {
                if !self.render_in_place(fields, base, &mut row) {
                    row = self.render_fields(state, base);
                }
                row
            }
            None => self.render_fields(state, base),
        });
        // Every unit test that applies an event checks the in-place render.
        #[cfg(test)]
        assert_eq!(row, self.field_base(state).map(|base| self.render_fields(state, base)), "in-place render differs");
        state.fields.as_mut().expect("checked above").rendered = Rendered { engine: self.id, row: Some(row) };
    }

    /// [`render_fields`](Self::render_fields) into `row`, the row rendered
    /// before, without allocating where the values fit: walks the row and
    /// every per-column map together (all sorted by column name). Returns
    /// false, leaving `row` unspecified, when the new row's columns are not
    /// exactly `row`'s.
    pub(super) fn render_in_place(&self, fields: &FieldState, base: &Row, row: &mut Row) -> bool {
        let mut in_base = base.iter().peekable();
        let mut writes = fields.fields.iter().peekable();
        let mut sets = fields.sets.iter().peekable();
        let mut counters = fields.counters.iter().peekable();
        let mut rules = self.settings.columns.iter().peekable();
        for (name, slot) in row.iter_mut() {
            let (Ok(from_base), Ok(written), Ok(set), Ok(counter)) =
                (at(&mut in_base, name), at(&mut writes, name), at(&mut sets, name), at(&mut counters, name))
            else {
                return false; // a column the rendered row lacks
            };
            let rule = seek(&mut rules, name);
            let mut value = written.and_then(|w| self.winner_under(fields, rule, w)).map(|w| &w.value).or(from_base);
            let mut computed = None;
            if let (Some(set), Some(ColumnRule::Union)) = (set, rule) {
                if let Some(elements) = present_elements(fields, set) {
                    write_union(slot, from_base, &elements);
                    continue;
                }
            }
            if counter.is_some() && rule == Some(&ColumnRule::Counter) {
                if let Some(v) = self.counter_value(fields, name, from_base) {
                    computed = Some(v);
                }
            }
            match computed {
                Some(v) => *slot = v,
                None => match value.take() {
                    Some(v) => assign_value(slot, v),
                    None => return false, // a column the new row lacks
                },
            }
        }
        in_base.peek().is_none() && writes.peek().is_none() && sets.peek().is_none() && counters.peek().is_none()
    }

    /// The `field-lww` row: the visible column winners laid over `base`, the
    /// full after image of the winning existence version.
    ///
    /// The base matters after a delete: the delete hides every column write
    /// it causally followed, so a concurrent update that survives it may have
    /// written only one column, and without the base the row would be that
    /// column alone (no key fields, NULL everywhere else in a sink). The
    /// surviving writer still holds the rest of its row, which is the base.
    pub(super) fn render_fields(&self, state: &KeyState, base: &Row) -> Row {
        let mut row = base.clone();
        let Some(fields) = &state.fields else { return row };
        for (name, writes) in &fields.fields {
            if let Some(w) = self.column_winner(fields, name, writes) {
                // In place when the base has the column: no new key string.
                match row.get_mut(name) {
                    Some(slot) => assign_value(slot, &w.value),
                    None => {
                        row.insert(name.clone(), w.value.clone());
                    }
                }
            }
        }
        for (name, set) in &fields.sets {
            if self.rule(name) == Some(&ColumnRule::Union) {
                if let Some(elements) = union_elements(fields, set) {
                    let value = union_value(base.get(name), elements);
                    match row.get_mut(name) {
                        Some(slot) => *slot = value,
                        None => {
                            row.insert(name.clone(), value);
                        }
                    }
                }
            }
        }
        for name in fields.counters.keys() {
            if self.rule(name) == Some(&ColumnRule::Counter) {
                if let Some(value) = self.counter_value(fields, name, base.get(name)) {
                    row.insert(name.clone(), value);
                }
            }
        }
        row
    }

    /// The write a column shows under its rule, among the writes no delete
    /// has hidden; `None` leaves the column to the base.
    pub(super) fn column_winner<'s>(
        &self,
        fields: &'s FieldState,
        name: &str,
        writes: &'s [ColumnWrite],
    ) -> Option<&'s ColumnWrite> {
        self.winner_under(fields, self.rule(name), writes)
    }

    /// [`column_winner`](Self::column_winner) for a column whose rule is known.
    pub(super) fn winner_under<'s>(
        &self,
        fields: &'s FieldState,
        rule: Option<&ColumnRule>,
        writes: &'s [ColumnWrite],
    ) -> Option<&'s ColumnWrite> {
        let visible = || writes.iter().filter(|w| fields.visible(w));
        let latest = |a: &&ColumnWrite, b: &&ColumnWrite| self.lww_cmp(&fields.written(a), &fields.written(b));
        match rule {
            None => visible().max_by(latest),
            Some(ColumnRule::Owner { source }) => {
                visible().filter(|w| fields.stamp(w).source == *source).max_by(latest).or_else(|| visible().max_by(latest))
            }
            Some(rule @ (ColumnRule::Max | ColumnRule::Min)) => {
                visible().max_by(|a, b| value_rank(rule, &a.value, &b.value).then_with(|| latest(a, b)))
            }
            // Writes that added and removed nothing, or written before the
            // column became a `union`: shown until a set operation is visible.
            // Likewise for a `counter`: until a counted write is visible.
            Some(ColumnRule::Union | ColumnRule::Counter) => visible().max_by(latest),
        }
    }
}

/// How a stored write `v` of a column relates to a new write `e` of it
/// under the column's rule, given how their clocks relate.
fn rule_relation(
    rule: Option<&ColumnRule>,
    clocks: Causality,
    v_source: &str,
    v_value: &Value,
    e_source: &str,
    e_value: &Value,
) -> Causality {
    match rule {
        None => clocks,
        // Every rule keeps concurrent writes apart: no need to look further.
        Some(_) if clocks == Causality::Concurrent => Causality::Concurrent,
        // Owner and non-owner writes are kept apart: a non-owner write that
        // saw the owner's must not displace it.
        Some(ColumnRule::Owner { source }) if (v_source == source) != (e_source == source) => Causality::Concurrent,
        Some(ColumnRule::Owner { .. }) => clocks,
        // Additions and removals of one element each form an antichain;
        // different elements are unrelated.
        Some(ColumnRule::Union) if !same_json(v_value, e_value) => Causality::Concurrent,
        Some(ColumnRule::Union | ColumnRule::Counter) => clocks,
        // A write is redundant when a causally later (or equal) write holds
        // a value at least as good: whenever a delete hides the later one it
        // hides the earlier one too.
        Some(rule @ (ColumnRule::Max | ColumnRule::Min)) => match (clocks, value_rank(rule, v_value, e_value)) {
            (Causality::Equal, Ordering::Equal) => Causality::Equal,
            (Causality::After | Causality::Equal, Ordering::Greater | Ordering::Equal) => Causality::After,
            (Causality::Before | Causality::Equal, Ordering::Less | Ordering::Equal) => Causality::Before,
            _ => Causality::Concurrent,
        },
    }
}

/// After an event's column writes: drops the stamps no write (or set
/// operation) refers to any
/// more and stores the event's (`event_id == stamps.len()`) if a write
/// refers to it, in a dropped stamp's allocations where there is one, at
/// its place in the canonical order; the writes are renumbered to match.
fn settle_stamps(
    stamps: &mut Vec<Stamp>,
    columns: &mut BTreeMap<String, Vec<ColumnWrite>>,
    sets: &mut BTreeMap<String, ElementSet>,
    event: StampRef<'_>,
    event_id: usize,
) {
    let n = stamps.len();
    const ON_STACK: usize = 16;
    let mut stack = [false; ON_STACK + 1];
    let mut heap = Vec::new();
    let used: &mut [bool] = if n < ON_STACK {
        &mut stack[..=n]
    } else {
        heap.resize(n + 1, false);
        &mut heap
    };
    for w in columns.values().flatten().chain(sets.values().flat_map(|s| s.adds.iter().chain(&s.removes))) {
        used[w.stamp] = true;
    }
    let dead = used[..n].iter().position(|u| !u);
    let new = event_id == n && used[n];
    if dead.is_none() && !new {
        return;
    }
    let fresh = new.then(|| {
        let mut s = dead.map(|d| std::mem::take(&mut stamps[d])).unwrap_or_default();
        s.source.clear();
        s.source.push_str(event.source);
        s.vv.assign(event.vv);
        s.ts = event.ts;
        s
    });
    // The stored stamps that stay keep their order; the event's goes where
    // the canonical order puts it.
    let place = fresh.as_ref().map_or(usize::MAX, |s| {
        stamps.iter().zip(used.iter()).filter(|(t, u)| **u && stamp_order(t.as_ref(), s.as_ref()) == Ordering::Less).count()
    });
    let mut stack = [0usize; ON_STACK + 1];
    let mut heap = Vec::new();
    let renumber: &mut [usize] = if n < ON_STACK {
        &mut stack[..=n]
    } else {
        heap.resize(n + 1, 0);
        &mut heap
    };
    let mut next = 0;
    for (i, u) in used[..n].iter().enumerate() {
        if *u {
            renumber[i] = if next >= place { next + 1 } else { next };
            next += 1;
        }
    }
    renumber[n] = place;
    let mut i = 0;
    stamps.retain(|_| {
        i += 1;
        used[i - 1]
    });
    if let Some(s) = fresh {
        stamps.insert(place, s);
    }
    for w in columns.values_mut().flatten().chain(sets.values_mut().flat_map(|s| s.adds.iter_mut().chain(&mut s.removes))) {
        w.stamp = renumber[w.stamp];
    }
}

/// Advances a walk over a map sorted by column name past `name`: the
/// entry for `name`, if any (one comparison per key passed).
fn seek<'m, V>(map: &mut Peekable<impl Iterator<Item = (&'m String, V)>>, name: &str) -> Option<V> {
    while let Some((column, _)) = map.peek() {
        match column.as_str().cmp(name) {
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
pub(super) fn at<'m, V: 'm>(
    map: &mut Peekable<impl Iterator<Item = (&'m String, &'m V)>>,
    name: &str,
) -> Result<Option<&'m V>, ()> {
    match map.peek() {
        Some((column, _)) => match column.as_str().cmp(name) {
            Ordering::Less => Err(()),
            Ordering::Equal => Ok(map.next().map(|(_, v)| v)),
            Ordering::Greater => Ok(None),
        },
        None => Ok(None),
    }
}

/// Why one column of a `field-lww` row has its value ([`MergeEngine::explain`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnWinner {
    /// The column.
    pub column: String,
    /// Its rule (`lww` when it has none).
    pub rule: &'static str,
    /// The source of the deciding write or of the row's base (none for `union`,
    /// whose value comes from many writes).
    pub source: Option<String>,
    /// That write's clock.
    pub vv: Option<VersionVector>,
    /// Why, in words.
    pub why: &'static str,
}
