//! The merge engine's data: events, versions, a key's state, what applying
//! and resolving give back, and the settings.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{ColumnRule, FieldState, LazyRow, MergedClock, MergedRow, Row, VersionVector};

/// Whether an event writes or removes the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Debezium `c`, `u` or `r`: the entity exists with the `after` image.
    Upsert,
    /// Debezium `d`: the entity is gone.
    Delete,
}

/// A normalized change event: what every input format is turned into.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The configured source name.
    pub source: String,
    /// The canonical key (sorted-field JSON object, no whitespace).
    pub key: String,
    /// Upsert or delete.
    pub op: Op,
    /// The `after` image (upserts only). In carried mode the clock column
    /// is removed. A map, or the canonical text the decoder wrote when
    /// nothing before the merge reads the columns ([`CanonicalRow`](super::CanonicalRow)).
    pub row: Option<LazyRow>,
    /// The `before` image, when the source sent one. When [`changed`](Self::changed)
    /// is set, only the before values of the changed columns (those the
    /// image had).
    pub before: Option<Row>,
    /// True for `c`/`r` events and whenever no `before` image came: every field
    /// of `row` counts as written (used by `field-lww`).
    pub full_image: bool,
    /// Which columns of `row` the update changed, when the decoder compared
    /// the two images itself (`field-lww` on Debezium JSON, where building
    /// the whole `before` map only to compare it cost a sixth of an event);
    /// `None`: compare `row` with `before`.
    pub changed: Option<ChangedColumns>,
    /// Source commit time in milliseconds since the epoch.
    pub ts: i64,
    /// The event's version vector.
    pub vv: VersionVector,
}

impl ChangeEvent {
    /// Whether the event writes `name` (the `index`-th column of `row` in
    /// name order, with `value`): every column of a full image, else those
    /// whose value differs from the `before` image's (or that it lacks).
    pub fn writes_column(&self, index: usize, name: &str, value: &serde_json::Value) -> bool {
        if self.full_image {
            return true;
        }
        match &self.changed {
            Some(changed) => changed.contains(index),
            None => self.before.as_ref().is_none_or(|before| before.get(name) != Some(value)),
        }
    }

    /// An update's `before` value of a column of `row`: `Some(None)` when
    /// the before image lacks it, `None` when the decoder found it
    /// unchanged and kept no copy (it is the after value).
    pub fn before_value(&self, name: &str) -> Option<Option<&serde_json::Value>> {
        if let (Some(changed), Some(row)) = (&self.changed, &self.row) {
            if row.keys().position(|k| k == name).is_some_and(|i| !changed.contains(i)) {
                return None;
            }
        }
        Some(self.before.as_ref().and_then(|b| b.get(name)))
    }
}

/// The columns an update changed, as bits over its after image's columns
/// in name order (images of up to [`ChangedColumns::MAX`] columns; wider
/// ones are compared as maps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangedColumns([u64; 2]); // not a u128: that would align the event to 16 bytes

impl ChangedColumns {
    /// The most columns an after image may have.
    pub const MAX: usize = 128;

    /// Marks the `index`-th column changed.
    pub fn insert(&mut self, index: usize) {
        self.set(self.bits() | 1 << index);
    }

    /// Whether the `index`-th column changed.
    pub fn contains(&self, index: usize) -> bool {
        index < Self::MAX && self.bits() & (1 << index) != 0
    }

    /// Forgets the `index`-th column, which was taken out of the image: the
    /// columns after it move down by one.
    pub fn remove(&mut self, index: usize) {
        if index >= Self::MAX {
            return;
        }
        let bits = self.bits();
        let below = bits & ((1u128 << index) - 1);
        let above = if index + 1 >= Self::MAX { 0 } else { (bits >> (index + 1)) << index };
        self.set(below | above);
    }

    fn bits(&self) -> u128 {
        u128::from(self.0[0]) | u128::from(self.0[1]) << 64
    }

    fn set(&mut self, bits: u128) {
        self.0 = [bits as u64, (bits >> 64) as u64];
    }
}

/// How the merged output is chosen from a key's version set (`[merge] policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Last writer wins by source commit time (ties: priority, name, own clock entry, content).
    #[default]
    Lww,
    /// Larger source priority wins, then as `lww`.
    SourcePriority,
    /// Column-level merge: every field resolves by `lww` among its own writes.
    FieldLww,
}

/// How deletes compete with concurrent updates (`[merge] deletes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeletePolicy {
    /// A delete is a version like any other.
    #[default]
    Lww,
    /// Any delete in the set makes the entity deleted.
    DeleteWins,
    /// The entity is deleted only when every version in the set is a delete.
    UpdateWins,
}

impl Policy {
    /// The configuration spelling (`lww`, `source-priority`, `field-lww`).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::SourcePriority => "source-priority",
            Policy::FieldLww => "field-lww",
        }
    }
}

impl DeletePolicy {
    /// The configuration spelling (`lww`, `delete-wins`, `update-wins`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeletePolicy::Lww => "lww",
            DeletePolicy::DeleteWins => "delete-wins",
            DeletePolicy::UpdateWins => "update-wins",
        }
    }
}

/// One maximal version of a key, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The source that wrote it.
    pub source: String,
    /// Its version vector.
    pub vv: VersionVector,
    /// Source commit time (ms).
    pub ts: i64,
    /// Upsert or delete.
    pub op: Op,
    /// The row image (upserts); `None` for deletes. A decoded state keeps
    /// it as its JSON text until it is used ([`LazyRow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<LazyRow>,
}

/// Everything stored for one key.
///
/// Change it through [`MergeEngine::apply`](super::MergeEngine::apply) only: under `field-lww` it
/// also holds the row last rendered ([`FieldState`]), which `resolve` lends
/// out and a direct change of the fields would leave stale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// The antichain of maximal versions, sorted winner-first by the `lww` order.
    pub versions: Vec<Version>,
    /// Column state, kept only under `field-lww`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldState>,
}

impl KeyState {
    /// True when nothing is stored (such a state need not be kept).
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.fields.is_none()
    }

    /// The merged clock: pointwise maximum over the version set.
    pub fn merged_clock(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for v in &self.versions {
            vv.join(&v.vv);
        }
        vv
    }
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed: a new output record is due.
    Changed,
    /// A stored version supersedes the event: nothing changes.
    Stale,
    /// The same clock and content is stored already (a redelivery or an echo of
    /// a merged record): nothing is emitted.
    Duplicate,
    /// A column rule cannot take the event ([`ApplyReport::refused`](super::ApplyReport::refused) says
    /// why): nothing changes, and the record belongs on the dead-letter topic.
    Refused,
}

/// The merged view of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<'a> {
    /// The merged row, or `None` when the entity resolves to deleted.
    pub row: Option<MergedRow<'a>>,
    /// Pointwise maximum over the version set, worked out when asked.
    pub vv: MergedClock<'a>,
    /// The winning source (row-level policies only).
    pub winner: Option<&'a str>,
    /// The number of versions in the set.
    pub siblings: usize,
}

impl Resolved<'_> {
    /// More than one version: concurrent updates are live.
    pub fn conflict(&self) -> bool {
        self.siblings > 1
    }
}

/// The merge settings: policy, delete policy, source priorities, clock column.
#[derive(Debug, Clone, Default)]
pub struct MergeSettings {
    /// Row or column resolution policy.
    pub policy: Policy,
    /// Delete policy.
    pub deletes: DeletePolicy,
    /// Source priorities (absent sources count as 0).
    pub priorities: HashMap<String, i64>,
    /// In carried mode, the output row's clock column (set to the merged clock).
    pub clock_field: Option<String>,
    /// How long a deleted key's state is kept, in milliseconds.
    pub tombstone_retention_ms: i64,
    /// Column rules (`field-lww` only); columns not listed take `lww`.
    pub columns: BTreeMap<String, ColumnRule>,
}
