//! The `union` column rule: an add-wins observed-remove set of elements.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fields::Stamps;
use super::{assign_value, same_json, value_cmp, Causality, ColumnWrite, FieldState, FieldVersion, MergeEngine};

/// The state of one `union` column: an add-wins observed-remove set. Each
/// addition and removal of an element is kept with the writing event (a
/// [`ColumnWrite`] whose value is the element, pointing at the event's
/// stamp), as the maximal ones per element. An element is present when
/// some addition of it is neither followed by a removal of it (the remover
/// had seen it: the addition's clock ≤ the removal's) nor hidden by a
/// delete of the row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ElementSet {
    /// Maximal additions, per element.
    pub adds: Vec<ColumnWrite>,
    /// Maximal removals, per element.
    pub removes: Vec<ColumnWrite>,
}

/// An [`ElementSet`] with its events spelled out: the encoded form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ElementVersions {
    /// Maximal additions, per element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adds: Vec<FieldVersion>,
    /// Maximal removals, per element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removes: Vec<FieldVersion>,
}

impl MergeEngine {
    /// A `union` column's write: the elements of `after` that `before` lacks
    /// are additions, those of `before` that `after` lacks are removals.
    /// Without a `before` value (inserts, snapshots, or a source that sends
    /// no `before` image) every element is an addition and nothing is removed.
    /// Returns whether the write added or removed any element, and whether
    /// that changed the set (a redelivery does not).
    pub(super) fn apply_union(
        &self,
        set: &mut ElementSet,
        stamps: &Stamps<'_>,
        before: Option<&Value>,
        after: &Value,
    ) -> (bool, bool) {
        let (after_elements, before_elements) = (elements(after), before.map(elements).unwrap_or_default());
        if after_elements.len() <= 1 && before_elements.len() <= 1 {
            // A scalar value (or none): nothing to sort.
            let (a, b) = (after_elements.first().map(|x| &**x), before_elements.first().map(|x| &**x));
            let same = matches!((a, b), (Some(a), Some(b)) if same_json(a, b));
            let (additions, removals) = if same { (None, None) } else { (a, b) };
            let added = self.insert_union_writes(&mut set.adds, stamps, additions.as_slice());
            let removed = self.insert_union_writes(&mut set.removes, stamps, removals.as_slice());
            return (additions.is_some() || removals.is_some(), added | removed);
        }
        // Each list looked up in the other, sorted: a few comparisons per
        // element rather than one per pair (a row may hold thousands of tags).
        let (after, before) = (sorted(&after_elements), sorted(&before_elements));
        let (additions, removals) = (only(&after, &before), only(&before, &after));
        let operations = !additions.is_empty() || !removals.is_empty();
        let added = self.insert_union_writes(&mut set.adds, stamps, &additions);
        let removed = self.insert_union_writes(&mut set.removes, stamps, &removals);
        (operations, added | removed)
    }
}

/// The distinct elements of `list` that `other` lacks (both in
/// [`value_cmp`] order), in that order: a repeated element is one operation.
fn only<'v>(list: &[&'v Value], other: &[&Value]) -> Vec<&'v Value> {
    let mut only: Vec<&'v Value> =
        list.iter().copied().filter(|x| other.binary_search_by(|y| value_cmp(y, x)).is_err()).collect();
    only.dedup_by(|a, b| same_json(a, b));
    only
}

/// The elements, by reference, in [`value_cmp`] order (which holds two
/// values equal exactly when [`same_json`] does).
fn sorted<'v>(elements: &'v [Cow<'_, Value>]) -> Vec<&'v Value> {
    let mut sorted: Vec<&Value> = elements.iter().map(|e| &**e).collect();
    sorted.sort_by(|a, b| value_cmp(a, b));
    sorted
}

/// The elements a `union` column's value stands for: an array's items, the
/// items of a string holding a JSON array (Debezium sends `json`/`jsonb`
/// columns as strings), none for null, and any other value as one element.
pub(super) fn elements(value: &Value) -> Vec<Cow<'_, Value>> {
    match value {
        Value::Array(items) => items.iter().map(Cow::Borrowed).collect(),
        Value::Null => Vec::new(),
        Value::String(text) if text.starts_with('[') => match serde_json::from_str::<Vec<Value>>(text) {
            Ok(items) => items.into_iter().map(Cow::Owned).collect(),
            Err(_) => vec![Cow::Borrowed(value)],
        },
        other => vec![Cow::Borrowed(other)],
    }
}

/// A `union` column's elements in the shape the row's base has: JSON text
/// when the source sends the column as a string (`json`/`jsonb`), so a sink
/// writes it back as it came; an array otherwise.
pub(super) fn union_value(base: Option<&Value>, elements: Vec<Value>) -> Value {
    let array = Value::Array(elements);
    match base {
        Some(Value::String(_)) => Value::String(array.to_string()),
        _ => array,
    }
}

/// A `union` column's value: its present elements in [`value_cmp`] order,
/// or `None` when no operation on it is visible (a delete hid them all),
/// which leaves the column to the row's base.
pub(super) fn union_elements(fields: &FieldState, set: &ElementSet) -> Option<Vec<Value>> {
    present_elements(fields, set).map(|present| present.into_iter().cloned().collect())
}

/// [`union_elements`], borrowed from the set.
pub(super) fn present_elements<'s>(fields: &FieldState, set: &'s ElementSet) -> Option<Vec<&'s Value>> {
    let visible = |w: &ColumnWrite| fields.visible(w);
    if !set.adds.iter().chain(&set.removes).any(visible) {
        return None;
    }
    // The removals by element, so that each addition meets only the
    // removals of its own element.
    let mut removes: Vec<&ColumnWrite> = set.removes.iter().collect();
    removes.sort_by(|a, b| value_cmp(&a.value, &b.value));
    let observed = |a: &ColumnWrite| {
        let first = removes.partition_point(|r| value_cmp(&r.value, &a.value) == std::cmp::Ordering::Less);
        removes[first..]
            .iter()
            .take_while(|r| same_json(&r.value, &a.value))
            .any(|r| matches!(fields.stamp(a).vv.causality(&fields.stamp(r).vv), Causality::Before | Causality::Equal))
    };
    let mut present: Vec<&Value> = set.adds.iter().filter(|a| visible(a) && !observed(a)).map(|a| &a.value).collect();
    present.sort_by(|a, b| value_cmp(a, b));
    present.dedup_by(|a, b| same_json(a, b));
    Some(present)
}

/// `*slot = union_value(base, elements)`, reusing the slot's buffers: a
/// `union` column usually renders to the same text event after event.
pub(super) fn write_union(slot: &mut Value, base: Option<&Value>, elements: &[&Value]) {
    match (base, slot) {
        (Some(Value::String(_)), Value::String(text)) => {
            let mut bytes = std::mem::take(text).into_bytes();
            bytes.clear();
            serde_json::to_writer(&mut bytes, elements).expect("values serialize");
            *text = String::from_utf8(bytes).expect("serde_json writes UTF-8");
        }
        (Some(Value::String(_)), slot) => *slot = Value::String(serde_json::to_string(elements).expect("values serialize")),
        (_, Value::Array(items)) => {
            items.truncate(elements.len());
            for (item, element) in items.iter_mut().zip(elements) {
                assign_value(item, element);
            }
            let have = items.len();
            items.extend(elements[have..].iter().map(|e| (*e).clone()));
        }
        (_, slot) => *slot = Value::Array(elements.iter().map(|e| (*e).clone()).collect()),
    }
}
