//! Applying an event to a key's `field-lww` state: the row-existence
//! register, each written column's set of writes under its rule, and the
//! stamps of the events behind them.

use std::cell::Cell;
use std::cmp::Ordering;

use serde_json::Value;
use smallvec::{smallvec, SmallVec};

use super::{count_uses, seek, settle_stamps, ColumnWrite, FieldState, StampRef, Stamps, Written};
use crate::merge::clock::Relations;
use crate::merge::{
    assign_value, same_json, value_cmp, value_rank, Applied, ApplyReport, Causality, ChangeEvent, ColumnRule, Insert, KeyState,
    MergeEngine, Op, Row, Version, VersionVector,
};

impl MergeEngine {
    /// The columns with rule `counter`.
    pub(in crate::merge) fn counter_columns(&self) -> impl Iterator<Item = &str> {
        self.settings.columns.iter().filter(|(_, r)| **r == ColumnRule::Counter).map(|(c, _)| c.as_str())
    }

    /// `field-lww`: the row-existence register plus one set of writes per column.
    pub(in crate::merge) fn apply_fields(&self, state: &mut KeyState, event: ChangeEvent) -> ApplyReport {
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
        let FieldState { stamps, fields: columns, sets, uses, .. } = fields;
        if uses.len() != stamps.len() {
            count_uses(uses, stamps.len(), columns, sets);
        }
        let me = StampRef { source: &event.source, vv: &event.vv, ts: event.ts };
        const ON_STACK: usize = 16;
        let (mut stack, mut stack_ranks) = ([Causality::Concurrent; ON_STACK], [Ordering::Equal; ON_STACK]);
        let (mut heap, mut heap_ranks) = (Vec::new(), Vec::new());
        let (relations, ranks): (&mut [Causality], &mut [Ordering]) = if stamps.len() <= ON_STACK {
            (&mut stack[..stamps.len()], &mut stack_ranks[..stamps.len()])
        } else {
            heap.resize(stamps.len(), Causality::Concurrent);
            heap_ranks.resize(stamps.len(), Ordering::Equal);
            (&mut heap, &mut heap_ranks)
        };
        // The event's stamp: the stored one it equals, else a free slot,
        // else a new slot at the end.
        let (mut same, mut free) = (None, None);
        for (i, (stamp, (relation, rank))) in stamps.iter().zip(relations.iter_mut().zip(ranks.iter_mut())).enumerate() {
            if uses[i] == 0 {
                free = free.or(Some(i));
                continue;
            }
            *relation = stamp.vv.causality(&event.vv);
            if *relation == Causality::Equal && stamp.ts == event.ts && stamp.source == event.source {
                same = Some(i);
            }
            *rank = self.lww_event_cmp((me.ts, me.source, me.vv), (stamp.ts, &stamp.source, &stamp.vv));
        }
        let event_id = same.or(free).unwrap_or(stamps.len());
        if event_id == stamps.len() {
            uses.push(0);
        }
        let counts = Cell::from_mut(&mut uses[..]).as_slice_of_cells();
        let ctx = Stamps { stored: stamps, event: me, event_id, relations, ranks, uses: counts };
        // The row, the rules and the column map are all sorted by column
        // name: walked together, no column is looked up.
        let mut rules = self.settings.columns.iter().peekable();
        let mut known = columns.iter_mut().peekable();
        let mut new_columns = Vec::new();
        for (index, (name, value)) in row.iter().enumerate() {
            if !event.writes_column(index, name, value) {
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
        settle_stamps(stamps, uses, me, event_id, same.is_none());
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
    pub(in crate::merge) fn insert_column_write(
        &self,
        set: &mut Vec<ColumnWrite>,
        stamps: &Stamps<'_>,
        rule: Option<&ColumnRule>,
        value: &Value,
    ) -> Insert {
        // Each member is compared once: the relations are kept for the
        // `retain` below (on the stack for the usual handful of members).
        let mut room = Relations::new();
        let relations = room.of(set.len());
        let mut superseded = 0;
        for (w, relation) in set.iter().zip(relations.iter_mut()) {
            let clocks = stamps.relation(w.stamp);
            *relation = match rule {
                None => clocks,
                // Every rule keeps concurrent writes apart.
                Some(_) if clocks == Causality::Concurrent => Causality::Concurrent,
                Some(_) => rule_relation(rule, clocks, stamps.get(w.stamp).source, &w.value, stamps.event.source, value),
            };
            match *relation {
                Causality::After => return Insert::Stale,
                Causality::Equal => {
                    let (v, e) = (stamps.written(w), Written { stamp: stamps.event, value });
                    if self.equal_clock_cmp(&v, &e) != Ordering::Less {
                        return if same_json(v.value, value) { Insert::Duplicate } else { Insert::Stale };
                    }
                    superseded += 1;
                }
                Causality::Before => superseded += 1,
                Causality::Concurrent => {}
            }
        }
        let is_superseded = |r: &Causality| matches!(r, Causality::Before | Causality::Equal);
        let at = match relations.iter().position(is_superseded) {
            Some(first) => {
                stamps.release(set[first].stamp);
                stamps.acquire();
                set[first].stamp = stamps.event_id;
                assign_value(&mut set[first].value, value);
                if superseded > 1 {
                    for (w, _) in set.iter().zip(relations.iter()).skip(first + 1).filter(|(_, r)| is_superseded(r)) {
                        stamps.release(w.stamp);
                    }
                    let mut relation = relations.iter().enumerate();
                    set.retain(|_| relation.next().is_some_and(|(i, r)| i == first || !is_superseded(r)));
                }
                first
            }
            None => {
                stamps.acquire();
                set.push(ColumnWrite { stamp: stamps.event_id, value: value.clone() });
                set.len() - 1
            }
        };
        // The other writes are in order (winner first, and `retain` kept
        // it); the new one moves to its place, found by bisection: a
        // `union` column holds a write per element, thousands of them, and
        // walking there compared (by their JSON text) with every one. How
        // it ranks against another write is mostly decided by their events,
        // compared once per event; the values decide the rest.
        let wins = |other: &ColumnWrite, new: &ColumnWrite| match stamps.rank(other.stamp) {
            Ordering::Equal => self.lww_cmp(&stamps.written(new), &stamps.written(other)),
            decided => decided,
        };
        if set.len() > 16 {
            let new = set.remove(at);
            let place = set.partition_point(|other| wins(other, &new) == Ordering::Less);
            set.insert(place, new);
            return Insert::Added;
        }
        // A handful (a plain column's concurrent writes): walked there.
        let mut at = at;
        while at > 0 && wins(&set[at - 1], &set[at]) == Ordering::Greater {
            set.swap(at, at - 1);
            at -= 1;
        }
        while at + 1 < set.len() && wins(&set[at + 1], &set[at]) == Ordering::Less {
            set.swap(at, at + 1);
            at += 1;
        }
        Insert::Added
    }
}

impl MergeEngine {
    /// [`insert_column_write`](Self::insert_column_write) of the event's
    /// write of each of `elements` (distinct, in [`value_cmp`] order) into
    /// a `union` column's additions or removals, all at once: the same
    /// writes kept and the same order as inserting them one by one, in
    /// time linear in the writes rather than in writes times elements (a
    /// snapshot of a row with thousands of tags writes every one). Returns
    /// whether any write was added.
    pub(in crate::merge) fn insert_union_writes(
        &self,
        set: &mut Vec<ColumnWrite>,
        stamps: &Stamps<'_>,
        elements: &[&Value],
    ) -> bool {
        if elements.is_empty() {
            return false;
        }
        // One element (a scalar value, or an update that adds or removes
        // one): the plain insert, which reuses the superseded write's value.
        #[cfg(test)]
        let one_by_one = ONE_BY_ONE.with(Cell::get);
        #[cfg(not(test))]
        let one_by_one = false;
        if one_by_one || elements.len() == 1 {
            let rule = Some(&ColumnRule::Union);
            let mut added = false;
            for x in elements {
                added |= self.insert_column_write(set, stamps, rule, x) == Insert::Added;
            }
            return added;
        }
        // Writes of one element are related by their clocks; writes of
        // different elements never are. An element some stored write of
        // which is causally later (or an equal clock that ranks first) is
        // not written at all, and supersedes nothing.
        let mut refused: SmallVec<[bool; 8]> = smallvec![false; elements.len()];
        let mut superseded: SmallVec<[(usize, usize); 4]> = SmallVec::new(); // (write, element)
        for (i, w) in set.iter().enumerate() {
            let clocks = stamps.relation(w.stamp);
            if clocks == Causality::Concurrent {
                continue;
            }
            let Ok(k) = elements.binary_search_by(|x| value_cmp(x, &w.value)) else { continue };
            match clocks {
                Causality::After => refused[k] = true,
                Causality::Equal => {
                    let (v, e) = (stamps.written(w), Written { stamp: stamps.event, value: elements[k] });
                    if self.equal_clock_cmp(&v, &e) == Ordering::Less {
                        superseded.push((i, k));
                    } else {
                        refused[k] = true;
                    }
                }
                Causality::Before => superseded.push((i, k)),
                Causality::Concurrent => {}
            }
        }
        // Superseded writes go (in ascending order, as found).
        let mut gone = superseded.iter().filter(|(_, k)| !refused[*k]).map(|(i, _)| *i).peekable();
        if gone.peek().is_some() {
            let mut at = 0;
            set.retain(|w| {
                let keep = gone.next_if_eq(&at).is_none();
                if !keep {
                    stamps.release(w.stamp);
                }
                at += 1;
                keep
            });
        }
        let mut new: SmallVec<[ColumnWrite; 2]> = elements
            .iter()
            .zip(&refused)
            .filter(|(_, refused)| !**refused)
            .map(|(x, _)| {
                stamps.acquire();
                ColumnWrite { stamp: stamps.event_id, value: (*x).clone() }
            })
            .collect();
        if new.is_empty() {
            return false;
        }
        // Winner first, as `insert_column_write` keeps them: the kept writes
        // are in that order already. A new write or two takes its place by
        // bisection; more are sorted and merged in.
        let wins = |other: &ColumnWrite, new: &ColumnWrite| match stamps.rank(other.stamp) {
            Ordering::Equal => self.lww_cmp(&stamps.written(new), &stamps.written(other)),
            decided => decided,
        };
        if new.len() <= 2 {
            for n in new {
                let place = set.partition_point(|other| wins(other, &n) == Ordering::Less);
                set.insert(place, n);
            }
            return true;
        }
        new.sort_by(|a, b| wins(a, b));
        let old = std::mem::take(set);
        set.reserve(old.len() + new.len());
        let mut new = new.into_iter().peekable();
        for w in old {
            while let Some(n) = new.next_if(|n| wins(&w, n) != Ordering::Less) {
                set.push(n);
            }
            set.push(w);
        }
        set.extend(new);
        true
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: [`MergeEngine::insert_union_writes`] inserts one write at a
    /// time, through `insert_column_write` (the reference it is checked
    /// against).
    pub(in crate::merge) static ONE_BY_ONE: Cell<bool> = const { Cell::new(false) };
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
