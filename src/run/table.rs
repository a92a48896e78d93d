//! The tables one worker merges. A task is a (table, partition): its own
//! keyspace in the local store, its partition of the table's changelog and
//! of its output topic. Tables do not share tasks, so every per-task
//! guarantee (exactly-once, restore, checkpoints) holds per table unchanged;
//! what they share is the consumer group, the producer and its transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::TaskStore;

/// Topic → (table, source), for metric labels.
pub(super) type Labels = Arc<RwLock<HashMap<String, (String, String)>>>;

/// One merged table.
pub(super) struct Table {
    /// The table's name (`default` for a single-table configuration).
    pub(super) name: String,
    /// The name its keyspaces and checkpoints carry in the local store
    /// (`None`: the default table, whose names predate tables).
    pub(super) store_name: Option<String>,
    /// The configuration with the table's output, merge settings and
    /// sources (a repartitioned source's topic is its repartition topic).
    pub(super) config: Config,
    pub(super) pipeline: Pipeline,
    /// Open tasks by partition.
    pub(super) tasks: BTreeMap<i32, TaskStore>,
    pub(super) changelog: String,
    /// The changelog's identity (`cluster/topic-id`) for checkpoints.
    pub(super) changelog_id: String,
    /// The changelog's `delete.retention.ms`: how long a null record
    /// written after a checkpoint is sure to be still there.
    pub(super) changelog_delete_retention_ms: i64,
    /// The table's partition count: of its output, changelog, co-partitioned
    /// sources and repartition topics.
    pub(super) partitions: i32,
    /// Topics a task of this table consumes: co-partitioned sources and the
    /// repartition topics of the others.
    pub(super) topics: BTreeSet<String>,
    /// Source topics whose keys are checked against murmur2 partitioning
    /// (until the first mismatch, which is logged once).
    pub(super) partitioner_unchecked: BTreeSet<String>,
}

/// What the worker does with a record of a consumed topic.
pub(super) struct Route {
    /// The table the topic feeds.
    pub(super) table: usize,
    /// The source's name.
    pub(super) source: Arc<str>,
    /// `Some`: re-key the record into the table's repartition topic for the
    /// source (it comes back from there, co-partitioned, to be merged);
    /// `None`: merge it in the task of the same partition.
    pub(super) rekey: Option<Rekey>,
}

/// A source that is not co-partitioned with its table.
pub(super) struct Rekey {
    /// The repartition topic.
    pub(super) topic: String,
    pub(super) rekeyer: crate::repartition::Rekeyer,
}
