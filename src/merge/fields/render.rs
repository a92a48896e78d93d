//! Rendering a key's `field-lww` row from its column state (in place where
//! the previous row fits), and explaining each column's value.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::{at, seek, ColumnWrite, FieldState};
use crate::merge::union::{present_elements, union_elements, union_value, write_union};
use crate::merge::{assign_value, value_rank, ColumnRule, KeyState, MergeEngine, Op, Policy, Row, VersionVector};

/// A `field-lww` row rendered by [`MergeEngine::apply`], so that
/// [`MergeEngine::resolve`] lends it instead of building a row per event
/// (a row is a dozen small allocations), and the next event updates it in
/// place. It is derived data: equal states are equal whatever it holds, and
/// a state that was decoded or changed other than through `apply` has none
/// (or one the engine no longer trusts) and is rendered from scratch.
#[derive(Clone, Default)]
pub(crate) struct Rendered {
    /// The [`MergeEngine::id`] that rendered it (the row depends on the settings).
    pub(in crate::merge) engine: u64,
    /// `Some(None)`: the key resolves to deleted; `None`: nothing rendered.
    pub(in crate::merge) row: Option<Option<Row>>,
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

impl MergeEngine {
    /// The rule of a column, if it has one.
    pub(in crate::merge) fn rule(&self, column: &str) -> Option<&ColumnRule> {
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
    pub(in crate::merge) fn field_base<'s>(&self, state: &'s KeyState) -> Option<&'s Row> {
        self.decide(&state.versions, |a, b| self.lww_cmp(a, b))
            .map(|i| &state.versions[i])
            .filter(|v| v.op == Op::Upsert)
            .and_then(|v| v.row.as_deref())
    }

    /// Brings the state's rendered row up to date: in place when it has the
    /// columns the new row has (the usual case: the same columns, some new
    /// values), else rendered afresh.
    pub(in crate::merge) fn rerender(&self, state: &mut KeyState) {
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
    pub(in crate::merge) fn render_in_place(&self, fields: &FieldState, base: &Row, row: &mut Row) -> bool {
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
    pub(in crate::merge) fn render_fields(&self, state: &KeyState, base: &Row) -> Row {
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
    pub(in crate::merge) fn column_winner<'s>(
        &self,
        fields: &'s FieldState,
        name: &str,
        writes: &'s [ColumnWrite],
    ) -> Option<&'s ColumnWrite> {
        self.winner_under(fields, self.rule(name), writes)
    }

    /// [`column_winner`](Self::column_winner) for a column whose rule is known.
    pub(in crate::merge) fn winner_under<'s>(
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
