//! `field-lww`: the column-level state of a key, how an event's columns are
//! written into it, and how the row is rendered and explained from it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::iter::Peekable;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::union::{present_elements, union_elements, union_value, write_union};
use super::{
    assign_value, same_json, value_rank, Applied, ApplyReport, Causality, ChangeEvent, ColumnRule, CounterState, ElementSet,
    Insert, KeyState, MergeEngine, Op, Policy, Row, Slot, Version, VersionVector, Versioned,
};

/// One maximal write of a single column (`field-lww`).
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

/// Column-level state for `field-lww`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldState {
    /// Per column, the antichain of its maximal writes.
    pub fields: BTreeMap<String, Vec<FieldVersion>>,
    /// The antichain of delete clocks seen: a column write that happened
    /// before a delete is hidden, so a re-created row does not bring back
    /// columns of its previous life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleared: Vec<VersionVector>,
    /// Per `union` column, its element additions and removals.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sets: BTreeMap<String, ElementSet>,
    /// Per `counter` column, its initial values and every source's deltas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, CounterState>,
    /// The merged row as last rendered: derived from the rest, never stored.
    #[serde(skip)]
    pub(crate) rendered: Rendered,
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

    /// The order among one column's writes under its rule (see `insert_by`).
    pub(super) fn column_order<'r>(
        &self,
        rule: Option<&'r ColumnRule>,
    ) -> impl Fn(&FieldVersion, &FieldVersion) -> Causality + 'r {
        move |v: &FieldVersion, e: &FieldVersion| {
            let clocks = v.vv.causality(&e.vv);
            match rule {
                None => clocks,
                // Every rule keeps concurrent writes apart: no need to look further.
                Some(_) if clocks == Causality::Concurrent => Causality::Concurrent,
                // Owner and non-owner writes are kept apart: a non-owner
                // write that saw the owner's must not displace it.
                Some(ColumnRule::Owner { source }) if (v.source == *source) != (e.source == *source) => Causality::Concurrent,
                Some(ColumnRule::Owner { .. }) => clocks,
                // Additions and removals of one element each form an antichain;
                // different elements are unrelated.
                Some(ColumnRule::Union) if !same_json(&v.value, &e.value) => Causality::Concurrent,
                Some(ColumnRule::Union | ColumnRule::Counter) => clocks,
                // A write is redundant when a causally later (or equal) write
                // holds a value at least as good: whenever a delete hides
                // the later one it hides the earlier one too.
                Some(rule @ (ColumnRule::Max | ColumnRule::Min)) => match (clocks, value_rank(rule, &v.value, &e.value)) {
                    (Causality::Equal, Ordering::Equal) => Causality::Equal,
                    (Causality::After | Causality::Equal, Ordering::Greater | Ordering::Equal) => Causality::After,
                    (Causality::Before | Causality::Equal, Ordering::Less | Ordering::Equal) => Causality::Before,
                    _ => Causality::Concurrent,
                },
            }
        }
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
        // One write template for every column of the event: its source and
        // clock are copied only where a write cannot reuse a superseded one's.
        let mut write = FieldVersion { source: event.source.clone(), vv: event.vv.clone(), ts: event.ts, value: Value::Null };
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
                    // The row, the rules and the column map are all sorted by
                    // column name: walked together, no column is looked up.
                    let mut rules = self.settings.columns.iter().peekable();
                    let FieldState { fields: columns, sets, .. } = fields;
                    let mut known = columns.iter_mut().peekable();
                    let mut new_columns = Vec::new();
                    for (name, value) in row {
                        let changed =
                            event.full_image || event.before.as_ref().is_none_or(|before| before.get(name) != Some(value));
                        if !changed {
                            continue;
                        }
                        while rules.next_if(|(column, _)| column.as_str() < name.as_str()).is_some() {}
                        let rule = rules.peek().filter(|(column, _)| *column == name).map(|(_, rule)| *rule);
                        if rule == Some(&ColumnRule::Counter) {
                            continue; // below
                        }
                        if rule == Some(&ColumnRule::Union) {
                            let before = if event.full_image { None } else { event.before.as_ref().and_then(|b| b.get(name)) };
                            let set = match sets.get_mut(name) {
                                Some(set) => set,
                                None => sets.entry(name.clone()).or_default(),
                            };
                            let (operations, changed) = self.apply_union(set, &mut write, before, value);
                            fields_changed |= changed;
                            if operations {
                                continue;
                            }
                            // The write added and removed nothing (`[]`, null, a
                            // reordering): it still says the column exists, so it
                            // is kept as a plain write, shown while no set
                            // operation is visible. Else a row whose base lacks
                            // the column would lose it.
                        }
                        while known.next_if(|(column, _)| column.as_str() < name.as_str()).is_some() {}
                        match known.next_if(|(column, _)| *column == name) {
                            Some((_, set)) => {
                                let (added, foreign) = self.write_column(set, rule, &mut write, value);
                                fields_changed |= added;
                                foreign_owner_writes += u32::from(foreign);
                            }
                            None => new_columns.push((name, rule, value)),
                        }
                    }
                    for (name, rule, value) in new_columns {
                        let set = columns.entry(name.clone()).or_default();
                        let (added, foreign) = self.write_column(set, rule, &mut write, value);
                        fields_changed |= added;
                        foreign_owner_writes += u32::from(foreign);
                    }
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

    /// Inserts one column write (`write`, the event's template, with
    /// `value`) into the column's set of writes under its rule. Returns
    /// whether the set changed, and whether that write was a foreign write
    /// to an `owner` column (counted once: a redelivery is a duplicate).
    pub(super) fn write_column(
        &self,
        set: &mut Vec<FieldVersion>,
        rule: Option<&ColumnRule>,
        write: &mut FieldVersion,
        value: &Value,
    ) -> (bool, bool) {
        assign_value(&mut write.value, value);
        // A row-stale event's column writes still apply: a later version
        // that did not change this column does not carry this write, so
        // dropping it would depend on arrival order.
        let foreign = matches!(rule, Some(ColumnRule::Owner { source }) if *source != write.source);
        let inserted = match rule {
            None | Some(ColumnRule::Union) => self.insert_into(set, write, |v, e| v.vv.causality(&e.vv)),
            Some(_) => self.insert_into(set, write, self.column_order(rule)),
        };
        let added = inserted == Insert::Added;
        (added, added && foreign)
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
            let why = match rule {
                None => "latest write (lww order)",
                Some(ColumnRule::Owner { source }) if w.source == *source => "the owner's latest write",
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
                ColumnWinner { column: column.clone(), rule, source: Some(w.source.clone()), vv: Some(w.vv.clone()), why },
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
            while rules.next_if(|(column, _)| column.as_str() < name.as_str()).is_some() {}
            let rule = rules.peek().filter(|(column, _)| *column == name).map(|(_, rule)| *rule);
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
        fields: &FieldState,
        name: &str,
        writes: &'s [FieldVersion],
    ) -> Option<&'s FieldVersion> {
        self.winner_under(fields, self.rule(name), writes)
    }

    /// [`column_winner`](Self::column_winner) for a column whose rule is known.
    pub(super) fn winner_under<'s>(
        &self,
        fields: &FieldState,
        rule: Option<&ColumnRule>,
        writes: &'s [FieldVersion],
    ) -> Option<&'s FieldVersion> {
        let visible = || writes.iter().filter(|w| !fields.cleared.iter().any(|c| w.vv.happened_before(c)));
        let latest = |a: &&FieldVersion, b: &&FieldVersion| self.lww_cmp(*a, *b);
        match rule {
            None => visible().max_by(latest),
            Some(ColumnRule::Owner { source }) => {
                visible().filter(|w| w.source == *source).max_by(latest).or_else(|| visible().max_by(latest))
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
