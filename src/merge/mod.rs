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

mod clock;
mod counter;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::iter::Peekable;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use clock::{Causality, VersionVector};
pub use counter::{CounterState, Delta, Refusal, Tally};

/// A row image: a flat JSON object (column → value).
pub type Row = serde_json::Map<String, Value>;

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
    /// The `after` image (upserts only). In carried mode the clock column is removed.
    pub row: Option<Row>,
    /// The `before` image, when the source sent one.
    pub before: Option<Row>,
    /// True for `c`/`r` events and whenever no `before` image came: every field
    /// of `row` counts as written (used by `field-lww`).
    pub full_image: bool,
    /// Source commit time in milliseconds since the epoch.
    pub ts: i64,
    /// The event's version vector.
    pub vv: VersionVector,
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

/// How one column resolves under `field-lww` (`[merge.columns]`); a column
/// without a rule takes its latest write by the `lww` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleSpelling", into = "RuleSpelling")]
pub enum ColumnRule {
    /// Only the owning source's writes count: the column takes the owner's
    /// latest write, and the latest write of any source while the owner has
    /// none (so a row inserted elsewhere is still complete).
    Owner {
        /// The owning source's configured name.
        source: String,
    },
    /// The largest value ever written (JSON numbers by value, strings by
    /// byte order; null loses to any value).
    Max,
    /// The smallest value ever written (null loses to any value).
    Min,
    /// A JSON array holding the union of the elements ever added, sorted;
    /// a removal takes away only the additions its writer had seen
    /// (add-wins observed-remove set).
    Union,
    /// A number that sources change by deltas: the initial value (the
    /// latest insert) plus every source's net `after - before`, so
    /// concurrent increments add up.
    Counter,
}

impl ColumnRule {
    /// The configuration spelling of the rule (`owner`, `max`, `min`, `union`).
    pub fn name(&self) -> &'static str {
        match self {
            ColumnRule::Owner { .. } => "owner",
            ColumnRule::Max => "max",
            ColumnRule::Min => "min",
            ColumnRule::Union => "union",
            ColumnRule::Counter => "counter",
        }
    }
}

/// A rule as written in TOML: `{ rule = "owner", source = "crm" }`. (serde's
/// internally tagged enums let unknown keys through on unit variants, so a
/// misplaced `source` would be silently ignored.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpelling {
    rule: RuleName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RuleName {
    Owner,
    Max,
    Min,
    Union,
    Counter,
}

impl TryFrom<RuleSpelling> for ColumnRule {
    type Error = String;

    fn try_from(r: RuleSpelling) -> Result<Self, String> {
        match (r.rule, r.source) {
            (RuleName::Owner, Some(source)) => Ok(ColumnRule::Owner { source }),
            (RuleName::Owner, None) => Err("rule \"owner\" needs `source`, the owning source's name".into()),
            (_, Some(_)) => Err("`source` applies to rule \"owner\" only".into()),
            (RuleName::Max, None) => Ok(ColumnRule::Max),
            (RuleName::Min, None) => Ok(ColumnRule::Min),
            (RuleName::Union, None) => Ok(ColumnRule::Union),
            (RuleName::Counter, None) => Ok(ColumnRule::Counter),
        }
    }
}

impl From<ColumnRule> for RuleSpelling {
    fn from(rule: ColumnRule) -> Self {
        match rule {
            ColumnRule::Owner { source } => RuleSpelling { rule: RuleName::Owner, source: Some(source) },
            ColumnRule::Max => RuleSpelling { rule: RuleName::Max, source: None },
            ColumnRule::Min => RuleSpelling { rule: RuleName::Min, source: None },
            ColumnRule::Union => RuleSpelling { rule: RuleName::Union, source: None },
            ColumnRule::Counter => RuleSpelling { rule: RuleName::Counter, source: None },
        }
    }
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
    /// The row image (upserts); `None` for deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<Row>,
}

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
    engine: u64,
    /// `Some(None)`: the key resolves to deleted; `None`: nothing rendered.
    row: Option<Option<Row>>,
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

/// The state of one `union` column: an add-wins observed-remove set. Each
/// addition and removal of an element is kept with the writing event's
/// clock (as a [`FieldVersion`] whose value is the element), as the maximal
/// ones per element. An element is present when some addition of it is
/// neither followed by a removal of it (the remover had seen it: the
/// addition's clock ≤ the removal's) nor hidden by a delete of the row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ElementSet {
    /// Maximal additions, per element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adds: Vec<FieldVersion>,
    /// Maximal removals, per element.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removes: Vec<FieldVersion>,
}

/// Everything stored for one key.
///
/// Change it through [`MergeEngine::apply`] only: under `field-lww` it
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
    /// A column rule cannot take the event ([`ApplyReport::refused`] says
    /// why): nothing changes, and the record belongs on the dead-letter topic.
    Refused,
}

/// The merged view of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved<'a> {
    /// The merged row, or `None` when the entity resolves to deleted.
    pub row: Option<Cow<'a, Row>>,
    /// Pointwise maximum over the version set.
    pub vv: VersionVector,
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

/// `*dst = src.clone()`, reusing `dst`'s string buffer where both are strings.
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
    fn lww_cmp<T: Versioned>(&self, a: &T, b: &T) -> Ordering {
        a.ts()
            .cmp(&b.ts())
            .then_with(|| self.priority(a.source()).cmp(&self.priority(b.source())))
            .then_with(|| b.source().cmp(a.source()))
            .then_with(|| a.vv().get(a.source()).cmp(&b.vv().get(b.source())))
            .then_with(|| a.content_json().cmp(&b.content_json()))
            // Beyond the design's order: two distinct versions of one set can
            // agree on all of the above in carried mode; the clock decides, so
            // the order is total and set order never depends on arrival.
            .then_with(|| a.vv().to_json().cmp(&b.vv().to_json()))
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
        const ON_STACK: usize = 8;
        let mut stack = [Causality::Concurrent; ON_STACK];
        let mut heap = Vec::new();
        let relations: &mut [Causality] = if set.len() <= ON_STACK {
            &mut stack[..set.len()]
        } else {
            heap.resize(set.len(), Causality::Concurrent);
            &mut heap
        };
        for (v, relation) in set.iter().zip(relations.iter_mut()) {
            *relation = order(v, e);
            match *relation {
                Causality::After => return Insert::Stale,
                Causality::Equal if self.equal_clock_cmp(v, e) != Ordering::Less => {
                    return if v.same_content(e) { Insert::Duplicate } else { Insert::Stale };
                }
                _ => {}
            }
        }
        // Nothing supersedes `e`: drop what `e` supersedes (everything before
        // it, and the equal clock it beats, if any).
        let superseded = |r: &Causality| matches!(r, Causality::Before | Causality::Equal);
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

    /// The columns with rule `counter`.
    fn counter_columns(&self) -> impl Iterator<Item = &str> {
        self.settings.columns.iter().filter(|(_, r)| **r == ColumnRule::Counter).map(|(c, _)| c.as_str())
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

    /// The order among one column's writes under its rule (see `insert_by`).
    fn column_order<'r>(&self, rule: Option<&'r ColumnRule>) -> impl Fn(&FieldVersion, &FieldVersion) -> Causality + 'r {
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
    fn apply_fields(&self, state: &mut KeyState, event: ChangeEvent) -> ApplyReport {
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
    fn write_column(
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

    /// A `union` column's write: the elements of `after` that `before` lacks
    /// are additions, those of `before` that `after` lacks are removals.
    /// Without a `before` value (inserts, snapshots, or a source that sends
    /// no `before` image) every element is an addition and nothing is removed.
    /// Returns whether the write added or removed any element, and whether
    /// that changed the set (a redelivery does not).
    /// `write` is the event's write template (source, clock, commit time).
    fn apply_union(&self, set: &mut ElementSet, write: &mut FieldVersion, before: Option<&Value>, after: &Value) -> (bool, bool) {
        let after = elements(after);
        let before = before.map(elements).unwrap_or_default();
        let contains = |list: &[Cow<'_, Value>], x: &Value| list.iter().any(|y| same_json(y, x));
        let order = self.column_order(Some(&ColumnRule::Union));
        let (mut operations, mut changed) = (false, false);
        for x in after.iter().filter(|x| !contains(&before, x)) {
            operations = true;
            assign_value(&mut write.value, x);
            changed |= self.insert_into(&mut set.adds, write, &order) == Insert::Added;
        }
        for x in before.iter().filter(|x| !contains(&after, x)) {
            operations = true;
            assign_value(&mut write.value, x);
            changed |= self.insert_into(&mut set.removes, write, &order) == Insert::Added;
        }
        (operations, changed)
    }

    /// The rule of a column, if it has one.
    fn rule(&self, column: &str) -> Option<&ColumnRule> {
        if self.settings.columns.is_empty() {
            return None;
        }
        self.settings.columns.get(column)
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
        let vv = state.merged_clock();
        let siblings = state.versions.len();
        let (mut row, winner): (Option<Cow<'a, Row>>, Option<&'a str>) = match self.settings.policy {
            Policy::FieldLww => match state.fields.as_ref().map(|f| &f.rendered) {
                Some(Rendered { engine, row: Some(row) }) if *engine == self.id => (row.as_ref().map(Cow::Borrowed), None),
                _ => (self.field_base(state).map(|base| Cow::Owned(self.render_fields(state, base))), None),
            },
            Policy::Lww | Policy::SourcePriority => match self.decide(&state.versions, |a, b| self.policy_cmp(a, b)) {
                Some(i) => {
                    let w = &state.versions[i];
                    let row = match w.op {
                        Op::Upsert => Some(Cow::Borrowed(w.row.as_ref().expect("upserts carry a row"))),
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
    fn field_base<'s>(&self, state: &'s KeyState) -> Option<&'s Row> {
        self.decide(&state.versions, |a, b| self.lww_cmp(a, b))
            .map(|i| &state.versions[i])
            .filter(|v| v.op == Op::Upsert)
            .and_then(|v| v.row.as_ref())
    }

    /// Brings the state's rendered row up to date: in place when it has the
    /// columns the new row has (the usual case: the same columns, some new
    /// values), else rendered afresh.
    fn rerender(&self, state: &mut KeyState) {
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
    fn render_in_place(&self, fields: &FieldState, base: &Row, row: &mut Row) -> bool {
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
    fn render_fields(&self, state: &KeyState, base: &Row) -> Row {
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
    fn column_winner<'s>(&self, fields: &FieldState, name: &str, writes: &'s [FieldVersion]) -> Option<&'s FieldVersion> {
        self.winner_under(fields, self.rule(name), writes)
    }

    /// [`column_winner`](Self::column_winner) for a column whose rule is known.
    fn winner_under<'s>(
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

/// Advances a walk over a map sorted by column name to `name`: its entry
/// there, if any, or `Err` when the map has a column before `name` (one the
/// walk of the other map skipped).
fn at<'m, V: 'm>(map: &mut Peekable<impl Iterator<Item = (&'m String, &'m V)>>, name: &str) -> Result<Option<&'m V>, ()> {
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

/// The elements a `union` column's value stands for: an array's items, the
/// items of a string holding a JSON array (Debezium sends `json`/`jsonb`
/// columns as strings), none for null, and any other value as one element.
fn elements(value: &Value) -> Vec<Cow<'_, Value>> {
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
fn union_value(base: Option<&Value>, elements: Vec<Value>) -> Value {
    let array = Value::Array(elements);
    match base {
        Some(Value::String(_)) => Value::String(array.to_string()),
        _ => array,
    }
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

/// A `union` column's value: its present elements in [`value_cmp`] order,
/// or `None` when no operation on it is visible (a delete hid them all),
/// which leaves the column to the row's base.
fn union_elements(fields: &FieldState, set: &ElementSet) -> Option<Vec<Value>> {
    present_elements(fields, set).map(|present| present.into_iter().cloned().collect())
}

/// [`union_elements`], borrowed from the set.
fn present_elements<'s>(fields: &FieldState, set: &'s ElementSet) -> Option<Vec<&'s Value>> {
    let visible = |w: &FieldVersion| !fields.cleared.iter().any(|c| w.vv.happened_before(c));
    if !set.adds.iter().chain(&set.removes).any(visible) {
        return None;
    }
    let observed = |a: &FieldVersion| {
        set.removes
            .iter()
            .any(|r| same_json(&r.value, &a.value) && matches!(a.vv.causality(&r.vv), Causality::Before | Causality::Equal))
    };
    let mut present: Vec<&Value> = set.adds.iter().filter(|a| visible(a) && !observed(a)).map(|a| &a.value).collect();
    present.sort_by(|a, b| value_cmp(a, b));
    present.dedup_by(|a, b| same_json(a, b));
    Some(present)
}

/// `*slot = union_value(base, elements)`, reusing the slot's buffers: a
/// `union` column usually renders to the same text event after event.
fn write_union(slot: &mut Value, base: Option<&Value>, elements: &[&Value]) {
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

/// How `a` ranks against `b` under a `max` or `min` rule: `Greater` when `a`
/// is the better value. Null loses to anything; otherwise values order by
/// kind (bool, number, string, array, object), numbers by value, strings by
/// bytes, and the rest, and equal numbers of different spelling (`1`, `1.0`),
/// by canonical JSON text, so the order is total.
fn value_rank(rule: &ColumnRule, a: &Value, b: &Value) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => {
            let order = value_cmp(a, b);
            if *rule == ColumnRule::Min {
                order.reverse()
            } else {
                order
            }
        }
    }
}

/// A total order on JSON values (see [`value_rank`]).
fn value_cmp(a: &Value, b: &Value) -> Ordering {
    fn kind(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    let text = || serde_json::to_string(a).expect("values serialize").cmp(&serde_json::to_string(b).expect("values serialize"));
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => {
            let by_value = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x.cmp(&y),
                (_, _, Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None, _, Some(_)) => Ordering::Less, // an i64 vs a u64 above i64::MAX
                (None, Some(_), Some(_), _) => Ordering::Greater,
                _ => x.as_f64().unwrap_or(f64::NAN).total_cmp(&y.as_f64().unwrap_or(f64::NAN)),
            };
            by_value.then_with(text)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => kind(a).cmp(&kind(b)).then_with(text),
    }
}

#[cfg(test)]
mod tests;
