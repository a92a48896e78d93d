//! The local state store: one fjall keyspace per task (partition number),
//! with an in-memory write-back cache for the open transaction.
//!
//! Nothing reaches disk until [`TaskStore::commit`] is called, which the
//! processor does only after the Kafka transaction that carried the same
//! changes (as changelog records) has committed. An aborted transaction just
//! drops the cache. Every commit also stores the task's *checkpoint*: the
//! changelog offset up to which the local keyspace is known to be complete,
//! so a restart restores only what came after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::merge::KeyState;
use crate::pipeline::{StateStore, Verdict};

/// A state store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store failed.
    #[error("state store at {path}: {source}")]
    Db {
        /// The state directory.
        path: String,
        /// fjall's error.
        source: fjall::Error,
    },
    /// Another process holds the state directory.
    #[error("state store at {path} is locked: another tributary instance is using this directory; give every instance its own [runtime] state_dir")]
    Locked {
        /// The state directory.
        path: String,
    },
    /// A stored value does not decode (disk corruption or an incompatible version).
    #[error("state store: the stored state of key {key} in partition {partition} does not decode: {source}")]
    Decode {
        /// Task partition.
        partition: i32,
        /// The key.
        key: String,
        /// The decoder's error.
        source: crate::avro::state::StateDecodeError,
    },
}

/// Encodes a key state for the store and the changelog: Avro single-object
/// encoding of `schemas/changelog-state.avsc` (see [`crate::avro::state`]).
pub fn encode_state(state: &KeyState) -> Vec<u8> {
    crate::avro::state::encode_state(state)
}

/// Decodes a key state from the store or the changelog; values written in
/// the earlier JSON encoding still decode, so existing stores keep working.
pub fn decode_state(bytes: &[u8]) -> Result<KeyState, crate::avro::state::StateDecodeError> {
    crate::avro::state::decode_state(bytes)
}

/// What a task's local keyspace is complete up to, and what it belongs to.
///
/// A restart or a partition coming back trusts the local keyspace only when
/// this proves that reading the changelog from `offset` on brings it up to
/// date: the same changelog topic (`changelog`, cluster and topic id), and
/// written recently enough that compaction cannot have removed a null
/// record written after it (see `tributary run`'s restore).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The changelog offset the keyspace is complete up to (the next offset
    /// to read).
    pub offset: i64,
    /// The changelog's identity (`cluster/topic-id`) when this was written;
    /// `None` for checkpoints of earlier versions.
    #[serde(default)]
    pub changelog: Option<String>,
    /// When this was written (epoch ms).
    #[serde(default)]
    pub written_ms: i64,
    /// The task's stream time: the newest event time seen per source topic.
    #[serde(default)]
    pub stream_time: BTreeMap<String, i64>,
}

impl Checkpoint {
    fn decode(bytes: &[u8]) -> Checkpoint {
        // Earlier versions stored the offset alone, as 8 big-endian bytes.
        if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
            return Checkpoint { offset: i64::from_be_bytes(raw), ..Checkpoint::default() };
        }
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

/// The on-disk database holding every task's keyspace.
#[derive(Clone)]
pub struct StateDb {
    db: Database,
    meta: Keyspace,
    path: String,
    /// Bytes of decoded committed states all tasks together may keep.
    cache_budget: usize,
    /// Tasks open now: each gets an equal share of the budget.
    open_tasks: Arc<AtomicUsize>,
}

/// Default for [`StateDb::open`]'s decoded-state cache.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// fjall's block cache (its default is 32 MiB). Hot states are served by
/// the task caches above it (`runtime.state_cache_bytes`), so the block
/// cache only needs the index and filter blocks and a few data blocks; the
/// operating system's page cache holds the files anyway. With this, 4 MiB
/// memtables and the smaller runtime defaults of 2026-12-02, a 50 000-key
/// run's peak fell from 225-237 to 160-169 MB at the same events/s
/// (doc/benchmarks.md, "Memory").
const BLOCK_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest memtable of a task's keyspace before fjall flushes it to a
/// segment (its default is 64 MiB per keyspace, so 64 MiB per task: most of
/// the memory of a process with a few tasks). States are written once per
/// cycle, in batches, so small memtables cost little throughput; a full one
/// is flushed in the background while a new one fills.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

impl StateDb {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<StateDb, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store under `dir`, keeping at most about
    /// `cache_bytes` of committed states decoded in memory.
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<StateDb, StoreError> {
        let path = dir.display().to_string();
        let err = |source| StoreError::Db { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(|e| err(fjall::Error::from(e)))?;
        let db = Database::builder(dir).cache_size(BLOCK_CACHE_BYTES).open().map_err(|e| match e {
            fjall::Error::Locked => StoreError::Locked { path: path.clone() },
            e => err(e),
        })?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(err)?;
        Ok(StateDb { db, meta, path, cache_budget: cache_bytes, open_tasks: Arc::default() })
    }

    /// Opens the task store of partition `p` of the single (default) table.
    pub fn task(&self, partition: i32) -> Result<TaskStore, StoreError> {
        self.table_task(None, partition)
    }

    /// Opens the task store of (`table`, `partition`); `None` is the default
    /// table of a single-table configuration, whose keyspaces keep the names
    /// they had before tables existed (`task-<p>`), so upgrading keeps the state.
    pub fn table_task(&self, table: Option<&str>, partition: i32) -> Result<TaskStore, StoreError> {
        let task = self.open_task(table, partition, true)?;
        self.open_tasks.fetch_add(1, Ordering::Relaxed);
        Ok(task)
    }

    /// Opens the task store of (`table`, `partition`) to keep a standby copy
    /// of a task another instance owns up to date: written like a restore,
    /// it takes no share of the decoded-state cache.
    pub fn standby_task(&self, table: Option<&str>, partition: i32) -> Result<TaskStore, StoreError> {
        self.open_task(table, partition, false)
    }

    fn open_task(&self, table: Option<&str>, partition: i32, counted: bool) -> Result<TaskStore, StoreError> {
        let (name, checkpoint_key) = match table {
            None => (format!("task-{partition}"), checkpoint_key(partition)),
            Some(t) => (format!("task-{t}-{partition}"), format!("checkpoint/{t}/{partition}")),
        };
        let keyspace = self
            .db
            .keyspace(&name, || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))
            .map_err(|source| StoreError::Db { path: self.path.clone(), source })?;
        let checkpoint = self
            .meta
            .get(&checkpoint_key)
            .map_err(|source| StoreError::Db { path: self.path.clone(), source })?
            .map(|v| Checkpoint::decode(&v))
            .unwrap_or_default();
        Ok(TaskStore {
            db: self.clone(),
            counted,
            keyspace,
            partition,
            checkpoint_key,
            changelog: checkpoint.changelog.clone(),
            checkpoint,
            cache: HashMap::new(),
            encoded: HashMap::new(),
            clean: HashMap::new(),
            clean_bytes: 0,
            sweep_cursor: None,
            restored: Restored::default(),
        })
    }

    /// Makes every committed write durable (on shutdown).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(|source| StoreError::Db { path: self.path.clone(), source })
    }
}

/// Restored changelog records taken from a task ([`TaskStore::take_restored`]).
pub struct RestoredBatch(Restored);

/// Writes a task's restored records from another thread than the task's,
/// so that reading the changelog and writing the store overlap. Batches of
/// one task must be written in the order they were taken.
pub struct RestoreWriter {
    db: StateDb,
    keyspace: Keyspace,
    checkpoint_key: String,
    changelog: Option<String>,
    stream_time: BTreeMap<String, i64>,
}

impl RestoreWriter {
    /// Writes `batch` (see [`ingest`]), then the checkpoint `offset` it
    /// completes the keyspace up to. The task's own view of its
    /// checkpoint catches up at its next commit.
    pub fn write(&self, batch: &mut RestoredBatch, offset: i64) -> Result<(), StoreError> {
        ingest(&self.db, &self.keyspace, &batch.0)?;
        batch.0.clear();
        let checkpoint =
            Checkpoint { offset, changelog: self.changelog.clone(), written_ms: now_ms(), stream_time: self.stream_time.clone() };
        let bytes = serde_json::to_vec(&checkpoint).expect("checkpoints serialize");
        self.db
            .meta
            .insert(self.checkpoint_key.as_str(), bytes)
            .map_err(|source| StoreError::Db { path: self.db.path.clone(), source })
    }
}

/// Writes restored records, sorted by key and the last per key only,
/// straight into new tables of the keyspace (fjall's ingestion: no journal,
/// no memtable), above everything written before. Not atomic with the
/// checkpoint written next: a crash between leaves the keyspace ahead of
/// its checkpoint, and reading the changelog again from the checkpoint
/// rewrites the same last values.
fn ingest(db: &StateDb, keyspace: &Keyspace, r: &Restored) -> Result<(), StoreError> {
    if r.records.is_empty() {
        return Ok(());
    }
    let err = |source| StoreError::Db { path: db.path.clone(), source };
    // By key, and in changelog order among a key's records (a stable
    // sort); the keys' first 16 bytes decide most comparisons without
    // reading the buffer again.
    let prefix = |key: &[u8]| {
        let mut head = [0u8; 16];
        let n = key.len().min(16);
        head[..n].copy_from_slice(&key[..n]);
        u128::from_be_bytes(head)
    };
    let mut order: Vec<(u128, u32)> = (0..r.records.len()).map(|i| (prefix(r.key(i)), i as u32)).collect();
    order.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| r.key(a.1 as usize).cmp(r.key(b.1 as usize))));
    let mut ingestion = keyspace.start_ingestion().map_err(err)?;
    for (n, &(head, i)) in order.iter().enumerate() {
        let key = r.key(i as usize);
        if order.get(n + 1).is_some_and(|&(h, next)| h == head && r.key(next as usize) == key) {
            continue; // a later record of the key follows
        }
        match r.value(i as usize) {
            Some(v) => ingestion.write(key, v),
            None => ingestion.write_tombstone(key),
        }
        .map_err(err)?;
    }
    ingestion.finish().map_err(err)
}

fn checkpoint_key(partition: i32) -> String {
    format!("checkpoint/{partition}")
}

/// One task's slice of the store plus the open transaction's changes.
pub struct TaskStore {
    db: StateDb,
    /// Whether it takes a share of the cache budget (an owned task) or not
    /// (a standby copy).
    counted: bool,
    keyspace: Keyspace,
    partition: i32,
    /// Where the checkpoint lives in the meta keyspace.
    checkpoint_key: String,
    /// What the keyspace is complete up to (as last committed, plus the
    /// stream time of the open cycle).
    checkpoint: Checkpoint,
    /// The changelog's identity that the next commit records.
    changelog: Option<String>,
    /// Changes of the open transaction: key → new state (`None`: removed).
    cache: HashMap<String, Option<KeyState>>,
    /// Encodings of cached states already made for the changelog, reused at commit.
    encoded: HashMap<String, Vec<u8>>,
    /// Committed states kept decoded for the next cycles, so hot keys skip
    /// the disk read and the decode; each with its estimated size.
    clean: HashMap<String, (KeyState, usize)>,
    /// Estimated bytes held by `clean`.
    clean_bytes: usize,
    /// Where the tombstone sweep goes on from (`None`: the start).
    sweep_cursor: Option<Vec<u8>>,
    /// Changelog records of a restore, written as they are (no decode, no
    /// encode) by the next commit.
    restored: Restored,
}

/// Changelog records of a restore not written yet, in changelog order:
/// keys and values in one buffer, kept from commit to commit (a restore
/// fills it many times; allocating each record would fault fresh memory in
/// every time).
#[derive(Default)]
struct Restored {
    bytes: Vec<u8>,
    /// Per record: where its key starts in `bytes`, the key's length, and
    /// the value's length (it follows the key; `None`: the key was removed).
    records: Vec<(usize, u32, Option<u32>)>,
}

impl Restored {
    fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(key);
        if let Some(v) = value {
            self.bytes.extend_from_slice(v);
        }
        self.records.push((at, key.len() as u32, value.map(|v| v.len() as u32)));
    }

    fn key(&self, i: usize) -> &[u8] {
        let (at, k, _) = self.records[i];
        &self.bytes[at..at + k as usize]
    }

    fn value(&self, i: usize) -> Option<&[u8]> {
        let (at, k, v) = self.records[i];
        v.map(|v| &self.bytes[at + k as usize..at + k as usize + v as usize])
    }

    fn len_bytes(&self) -> usize {
        self.bytes.len() + self.records.len() * std::mem::size_of::<(usize, u32, Option<u32>)>()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

/// Heap bytes an allocation costs beyond what was asked for: the
/// allocator's size-class rounding and bookkeeping, on average.
const ALLOCATION_OVERHEAD: usize = 16;
/// Entries a B-tree node of std's `BTreeMap` holds at most.
const BTREE_CAPACITY: usize = 11;
/// Memory per encoded byte of the column-level part of a state
/// (`field-lww`: column writes, stamps, sets, counters and the rendered
/// row), measured by `tests/state_memory.rs` on the merge bench's rows.
const FIELD_STATE_PER_ENCODED_BYTE: usize = 4;

/// Estimated memory a decoded state holds in a task's cache: its map entry,
/// the key, and what the state allocates (versions, clocks, rows, and for
/// column-level policies a share proportional to `encoded_len`). It bounds
/// the decoded-state cache (`runtime.state_cache_bytes`) in bytes; an
/// estimate that counted only the encoding undercounted by more than two
/// times, so the cache held over twice its budget.
pub fn decoded_bytes(key: &str, state: &KeyState, encoded_len: usize) -> usize {
    // The cache's hash-map slot (key, state, size) at hashbrown's 7/8 load,
    // plus the key's own allocation.
    let slot = (std::mem::size_of::<(String, (KeyState, usize))>() + 1) * 8 / 7;
    let mut bytes = slot + heap(key.len());
    bytes += heap(state.versions.capacity() * std::mem::size_of::<crate::merge::Version>());
    for v in &state.versions {
        bytes += heap(v.source.capacity()) + clock_bytes(&v.vv);
        if let Some(row) = &v.row {
            bytes += map_bytes(row);
        }
    }
    if state.fields.is_some() {
        bytes += encoded_len * FIELD_STATE_PER_ENCODED_BYTE;
    }
    bytes
}

fn heap(requested: usize) -> usize {
    if requested == 0 {
        0
    } else {
        requested + ALLOCATION_OVERHEAD
    }
}

/// The nodes of a `BTreeMap` of `len` entries whose leaf node is
/// `leaf` bytes: one leaf up to its capacity, then (as maps filled in key
/// order leave them) about half-full leaves and their parents.
fn btree_nodes(len: usize, leaf: usize) -> usize {
    match len {
        0 => 0,
        n if n <= BTREE_CAPACITY => heap(leaf),
        n => {
            let leaves = n.div_ceil(BTREE_CAPACITY / 2 + 1);
            let internal = leaves.div_ceil(BTREE_CAPACITY / 2 + 1);
            leaves * heap(leaf) + internal * heap(leaf + (BTREE_CAPACITY + 1) * 8)
        }
    }
}

fn btree_leaf<K, V>() -> usize {
    // Parent pointer, parent index and length, then the keys and values.
    16 + BTREE_CAPACITY * (std::mem::size_of::<K>() + std::mem::size_of::<V>())
}

fn clock_bytes(vv: &crate::merge::VersionVector) -> usize {
    let mut n = 0;
    let mut bytes = 0;
    for (source, _) in vv.iter() {
        n += 1;
        bytes += heap(source.len());
    }
    bytes + btree_nodes(n, btree_leaf::<String, u64>())
}

fn map_bytes(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    let mut bytes = btree_nodes(map.len(), btree_leaf::<String, serde_json::Value>());
    for (k, v) in map {
        bytes += heap(k.capacity()) + value_bytes(v);
    }
    bytes
}

fn value_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::String(s) => heap(s.capacity()),
        Value::Array(items) => {
            heap(items.capacity() * std::mem::size_of::<Value>()) + items.iter().map(value_bytes).sum::<usize>()
        }
        Value::Object(map) => map_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

impl Drop for TaskStore {
    fn drop(&mut self) {
        if self.counted {
            self.db.open_tasks.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl TaskStore {
    /// The task's partition number.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The changelog offset the local keyspace is complete up to.
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint.offset
    }

    /// The full checkpoint (what it belongs to, when it was written).
    pub fn checkpoint_info(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Records the changelog's identity with every following commit.
    pub fn bind_changelog(&mut self, identity: &str) {
        self.changelog = Some(identity.to_string());
    }

    /// Notes an event time seen from `topic` (the task's stream time).
    pub fn observe_event_time(&mut self, topic: &str, ts: i64) {
        match self.checkpoint.stream_time.get_mut(topic) {
            Some(t) => *t = (*t).max(ts),
            None => {
                self.checkpoint.stream_time.insert(topic.to_string(), ts);
            }
        }
    }

    /// The task's stream time: the oldest of the newest event times seen
    /// from each of `topics`; `None` until every one of them has shown an
    /// event (a source partition not heard from may still hold anything).
    pub fn stream_time(&self, topics: &BTreeSet<String>) -> Option<i64> {
        topics.iter().map(|t| self.checkpoint.stream_time.get(t).copied()).try_fold(i64::MAX, |m, t| t.map(|t| m.min(t)))
    }

    /// Removes every state of the task and resets its checkpoint: the
    /// keyspace is then restored from the changelog's start. In bounded
    /// batches, the last one also writing the new checkpoint.
    pub fn wipe(&mut self) -> Result<u64, StoreError> {
        let err = |source| StoreError::Db { path: self.db.path.clone(), source };
        self.cache.clear();
        self.encoded.clear();
        self.clean.clear();
        self.clean_bytes = 0;
        self.sweep_cursor = None;
        self.restored = Restored::default();
        let mut removed = 0u64;
        loop {
            let keys: Vec<fjall::Slice> =
                self.keyspace.iter().take(10_000).map(|kv| kv.key().map_err(err)).collect::<Result<_, _>>()?;
            let done = keys.len() < 10_000;
            let mut batch = self.db.db.batch();
            for k in &keys {
                batch.remove(&self.keyspace, k.clone());
            }
            removed += keys.len() as u64;
            if done {
                self.checkpoint = Checkpoint { changelog: self.changelog.clone(), ..Checkpoint::default() };
                let bytes = serde_json::to_vec(&self.checkpoint).expect("checkpoints serialize");
                batch.insert(&self.db.meta, self.checkpoint_key.as_str(), bytes);
                batch.commit().map_err(err)?;
                return Ok(removed);
            }
            batch.commit().map_err(err)?;
        }
    }

    /// The state of `key`, as the open transaction sees it.
    #[cfg(test)]
    pub fn get(&mut self, key: &str) -> Result<Option<KeyState>, StoreError> {
        if let Some(cached) = self.cache.get(key) {
            return Ok(cached.clone());
        }
        if let Some((state, _)) = self.clean.get(key) {
            return Ok(Some(state.clone()));
        }
        self.load(key)
    }

    /// The committed state of `key`: what the output topic reflects, without
    /// the open transaction's changes (for the state query).
    pub fn get_committed(&self, key: &str) -> Result<Option<KeyState>, StoreError> {
        if let Some((state, _)) = self.clean.get(key) {
            return Ok(Some(state.clone()));
        }
        self.read(key)
    }

    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StoreError> {
        if let Some(state) = self.forget_clean(key) {
            return Ok(Some(state));
        }
        self.read(key)
    }

    fn forget_clean(&mut self, key: &str) -> Option<KeyState> {
        let (state, size) = self.clean.remove(key)?;
        self.clean_bytes -= size;
        Some(state)
    }

    /// The state on disk.
    fn read(&self, key: &str) -> Result<Option<KeyState>, StoreError> {
        let bytes = self.keyspace.get(key).map_err(|source| StoreError::Db { path: self.db.path.clone(), source })?;
        bytes
            .map(|b| {
                decode_state(&b).map_err(|source| StoreError::Decode { partition: self.partition, key: key.to_string(), source })
            })
            .transpose()
    }

    /// The state the cache holds for `key` (after an update in the open transaction).
    pub fn cached(&self, key: &str) -> Option<&KeyState> {
        self.cache.get(key).and_then(Option::as_ref)
    }

    /// Puts a restored changelog value (`None`: the key was removed) into the
    /// next commit as it is: the restore neither decodes nor re-encodes it.
    /// Only its header is checked here; the state decodes when first read.
    pub fn put_restored_bytes(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        if let Some(v) = value {
            crate::avro::state::check_state_header(v).map_err(|source| StoreError::Decode {
                partition: self.partition,
                key: String::from_utf8_lossy(key).into_owned(),
                source,
            })?;
        }
        // Nothing is cached while a task opens: no lookups per record then.
        if !(self.clean.is_empty() && self.encoded.is_empty() && self.cache.is_empty()) {
            if let Ok(k) = std::str::from_utf8(key) {
                self.forget_clean(k);
                self.encoded.remove(k);
                self.cache.remove(k);
            }
        }
        self.restored.push(key, value);
        Ok(())
    }

    /// Bytes of restored changelog records the next commit writes.
    pub fn restored_bytes(&self) -> usize {
        self.restored.len_bytes()
    }

    /// Takes the restored records not written yet, for a [`RestoreWriter`]
    /// (on another thread); `spare` (a batch written before, emptied) takes
    /// their place, so a restore reuses its buffers.
    pub fn take_restored(&mut self, spare: Option<RestoredBatch>) -> RestoredBatch {
        let mut next = spare.map(|b| b.0).unwrap_or_default();
        next.clear();
        RestoredBatch(std::mem::replace(&mut self.restored, next))
    }

    /// Writes batches of this task's restored records from another thread.
    pub fn restore_writer(&self) -> RestoreWriter {
        RestoreWriter {
            db: self.db.clone(),
            keyspace: self.keyspace.clone(),
            checkpoint_key: self.checkpoint_key.clone(),
            changelog: self.changelog.clone(),
            stream_time: self.checkpoint.stream_time.clone(),
        }
    }

    /// Lets go of the memory a restore used (once it is over).
    pub fn release_restore_buffer(&mut self) {
        self.restored = Restored::default();
    }

    fn ingest_restored(&mut self) -> Result<(), StoreError> {
        ingest(&self.db, &self.keyspace, &self.restored)?;
        self.restored.clear();
        Ok(())
    }

    /// Remembers the encoding of `key`'s cached state (made for the
    /// changelog) so the commit writes the same bytes without encoding again.
    pub fn remember_encoded(&mut self, key: &str, bytes: Vec<u8>) {
        self.encoded.insert(key.to_string(), bytes);
    }

    /// Writes the open transaction's changes and the new checkpoint
    /// atomically, then clears the cache. Call only after the Kafka
    /// transaction carrying the same changes committed.
    pub fn commit(&mut self, checkpoint: i64) -> Result<(), StoreError> {
        if !self.restored.records.is_empty() {
            self.ingest_restored()?;
        }
        let mut batch = self.db.db.batch();
        let mut committed = Vec::with_capacity(self.cache.len());
        let mut added = 0;
        for (key, state) in self.cache.drain() {
            let size = match &state {
                Some(s) => {
                    let bytes = self.encoded.remove(&key).unwrap_or_else(|| encode_state(s));
                    let size = decoded_bytes(&key, s, bytes.len());
                    batch.insert(&self.keyspace, key.as_str(), bytes);
                    size
                }
                None => {
                    batch.remove(&self.keyspace, key.as_str());
                    0
                }
            };
            added += size;
            committed.push((key, state, size));
        }
        self.encoded.clear();
        let mut next = Checkpoint {
            offset: checkpoint.max(self.checkpoint.offset),
            changelog: self.changelog.clone(),
            written_ms: now_ms(),
            stream_time: std::mem::take(&mut self.checkpoint.stream_time),
        };
        let bytes = serde_json::to_vec(&next).expect("checkpoints serialize");
        batch.insert(&self.db.meta, self.checkpoint_key.as_str(), bytes);
        if let Err(source) = batch.commit() {
            self.checkpoint.stream_time = std::mem::take(&mut next.stream_time);
            return Err(StoreError::Db { path: self.db.path.clone(), source });
        }
        self.checkpoint = next;
        // Each open task may keep an equal share of the cache budget; past
        // it the decoded states are let go (they are on disk).
        let share = self.db.cache_budget / self.db.open_tasks.load(Ordering::Relaxed).max(1);
        if self.clean_bytes + added > share {
            self.clean.clear();
            self.clean_bytes = 0;
        }
        for (key, state, size) in committed {
            if let Some(s) = state {
                if size > share {
                    continue;
                }
                if let Some((_, old)) = self.clean.insert(key, (s, size)) {
                    self.clean_bytes -= old;
                }
                self.clean_bytes += size;
            }
        }
        Ok(())
    }

    /// The open transaction's changes, encoded for the changelog: key and
    /// state bytes (`None`: the key is removed). Encodings made earlier are
    /// remembered for the commit.
    pub fn pending_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::with_capacity(self.cache.len());
        for (key, state) in &self.cache {
            let bytes = state.as_ref().map(|s| match self.encoded.get(key) {
                Some(b) => b.clone(),
                None => encode_state(s),
            });
            out.push((key.clone(), bytes));
        }
        out
    }

    /// Removes `key`'s state in the open transaction (tombstone collection).
    pub fn remove(&mut self, key: &str) {
        self.forget_clean(key);
        self.encoded.remove(key);
        self.cache.insert(key.to_string(), None);
    }

    /// Looks at up to `limit` stored keys, going on from where the previous
    /// call stopped and wrapping around at the end, and returns those whose
    /// state (as the open transaction sees it) `expired` says may be dropped.
    /// A state that does not decode is skipped with a warning: reading it
    /// for an event reports it properly.
    pub fn sweep(&mut self, limit: usize, expired: impl Fn(&KeyState) -> bool) -> Result<Vec<String>, StoreError> {
        use std::ops::Bound;
        let iter = match &self.sweep_cursor {
            Some(c) => self.keyspace.range::<&[u8], _>((Bound::Excluded(c.as_slice()), Bound::Unbounded)),
            None => self.keyspace.iter(),
        };
        let mut found = Vec::new();
        let mut seen = 0;
        let mut last = None;
        for item in iter.take(limit) {
            let (k, v) = item.into_inner().map_err(|source| StoreError::Db { path: self.db.path.clone(), source })?;
            seen += 1;
            let key = String::from_utf8_lossy(&k).into_owned();
            let state = match self.cache.get(&key) {
                Some(cached) => cached.clone(),
                None => match decode_state(&v) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(partition = self.partition, key = %key, "tombstone sweep: skipping a state that does not decode: {e}");
                        None
                    }
                },
            };
            if state.as_ref().is_some_and(&expired) {
                found.push(key);
            }
            last = Some(k.to_vec());
        }
        self.sweep_cursor = if seen < limit { None } else { last };
        Ok(found)
    }

    /// Drops the open transaction's changes (after an abort).
    pub fn abort(&mut self) {
        self.cache.clear();
        self.encoded.clear();
        self.restored.clear();
    }

    /// Number of keys on disk (approximate; for metrics and logs).
    pub fn approximate_keys(&self) -> usize {
        self.keyspace.approximate_len()
    }
}

impl StateStore for TaskStore {
    type Error = StoreError;

    fn update<R>(&mut self, key: &str, f: impl FnOnce(&mut KeyState) -> R) -> Result<R, StoreError> {
        if !self.encoded.is_empty() {
            self.encoded.remove(key); // the state is about to change
        }
        if let Some(Some(state)) = self.cache.get_mut(key) {
            return Ok(f(state));
        }
        let mut state = match self.cache.get(key) {
            Some(None) => KeyState::default(),
            _ => self.load(key)?.unwrap_or_default(),
        };
        // Cached even when `f` changed nothing (a stale event): rewriting
        // the same state at commit is harmless and saves a comparison per event.
        let r = f(&mut state);
        let keep = if state.is_empty() { None } else { Some(state) };
        self.cache.insert(key.to_string(), keep);
        Ok(r)
    }

    /// An undo puts back the state the open transaction had: from the
    /// encoding remembered for it (`remember_encoded`, which the processor
    /// calls for every change), else from a copy made before `f`; a state
    /// loaded for `f` is simply not cached (disk still has it).
    fn try_update<T>(&mut self, key: &str, may_undo: bool, f: impl FnOnce(&mut KeyState) -> Verdict<T>) -> Result<T, StoreError> {
        let before = if self.encoded.is_empty() { None } else { self.encoded.remove(key) };
        if let Some(Some(state)) = self.cache.get_mut(key) {
            let copy = (may_undo && before.is_none()).then(|| state.clone());
            return match f(state) {
                Verdict::Changed(t) => Ok(t),
                Verdict::Unchanged(t) => {
                    if let Some(bytes) = before {
                        self.encoded.insert(key.to_string(), bytes);
                    }
                    Ok(t)
                }
                Verdict::Undo(t) => {
                    *state = match (before, copy) {
                        (_, Some(copy)) => copy,
                        (Some(bytes), None) => {
                            let restored = decode_state(&bytes).map_err(|source| StoreError::Decode {
                                partition: self.partition,
                                key: key.to_string(),
                                source,
                            })?;
                            self.encoded.insert(key.to_string(), bytes);
                            restored
                        }
                        (None, None) => unreachable!("an undo without may_undo"),
                    };
                    Ok(t)
                }
            };
        }
        let removed = matches!(self.cache.get(key), Some(None));
        let mut state = if removed { KeyState::default() } else { self.load(key)?.unwrap_or_default() };
        match f(&mut state) {
            Verdict::Changed(t) | Verdict::Unchanged(t) => {
                self.cache.insert(key.to_string(), if state.is_empty() { None } else { Some(state) });
                Ok(t)
            }
            // A key removed in this transaction stays removed; one loaded
            // from the committed states is read again when next needed.
            Verdict::Undo(t) => Ok(t),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Op, Version, VersionVector};

    fn state(n: u64) -> KeyState {
        KeyState {
            versions: vec![Version {
                source: "eu".into(),
                vv: VersionVector::single("eu", n),
                ts: n as i64,
                op: Op::Delete,
                row: None,
            }],
            fields: None,
        }
    }

    #[test]
    fn a_state_dir_in_use_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateDb::open(dir.path()).unwrap();
        let e = StateDb::open(dir.path()).err().expect("a second open fails").to_string();
        assert!(e.contains("is locked: another tributary instance") && e.contains(&dir.path().display().to_string()), "{e}");
    }

    #[test]
    fn writes_reach_disk_only_on_commit_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = StateDb::open(dir.path()).unwrap();
            let mut t = db.task(3).unwrap();
            assert_eq!(t.checkpoint(), 0);
            t.update("k1", |s| *s = state(1)).unwrap();
            t.update("k2", |s| *s = state(2)).unwrap();
            t.abort();
            assert_eq!(t.get("k1").unwrap(), None, "an abort drops the cache");
            t.update("k1", |s| *s = state(5)).unwrap();
            assert_eq!(t.cached("k1"), Some(&state(5)));
            t.commit(42).unwrap();
            db.persist().unwrap();
        }
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(3).unwrap();
        assert_eq!(t.checkpoint(), 42);
        assert_eq!(t.get("k1").unwrap(), Some(state(5)));
        assert_eq!(t.get("k2").unwrap(), None);
        assert_eq!(db.task(4).unwrap().checkpoint(), 0, "tasks are separate keyspaces");
    }

    #[test]
    fn the_committed_view_ignores_the_open_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(1).unwrap();
        t.update("k", |s| *s = state(1)).unwrap();
        assert_eq!(t.get_committed("k").unwrap(), None, "not committed yet");
        t.commit(1).unwrap();
        t.update("k", |s| *s = state(2)).unwrap();
        assert_eq!(t.get_committed("k").unwrap(), Some(state(1)));
        assert_eq!(t.get("k").unwrap(), Some(state(2)));
        t.remove("k");
        assert_eq!(t.get_committed("k").unwrap(), Some(state(1)));
        t.commit(2).unwrap();
        assert_eq!(t.get_committed("k").unwrap(), None);
    }

    #[test]
    fn sweeps_go_round_the_keyspace_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(2).unwrap();
        for i in 0..5 {
            t.update(&format!("k{i}"), |s| *s = state(i)).unwrap();
        }
        t.commit(1).unwrap();
        let odd = |s: &KeyState| s.versions[0].ts % 2 == 1;
        let mut found = t.sweep(2, odd).unwrap();
        found.extend(t.sweep(2, odd).unwrap());
        found.extend(t.sweep(2, odd).unwrap());
        assert_eq!(found, ["k1", "k3"]);
        // Wrapped around: the next sweep starts again at the beginning, and
        // the open cycle's view counts (k1 removed, k2 changed).
        t.remove("k1");
        t.update("k2", |s| s.versions[0].ts = 7).unwrap();
        assert_eq!(t.sweep(10, odd).unwrap(), ["k2", "k3"]);
    }

    #[test]
    fn states_are_stored_avro_single_object_encoded() {
        let bytes = encode_state(&state(1));
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(decode_state(&bytes).unwrap(), state(1));
    }

    #[test]
    fn states_stored_as_json_by_earlier_versions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(0).unwrap();
        // The value the earlier serde_json encoding left on disk.
        t.keyspace.insert("k", serde_json::to_vec(&state(3)).unwrap()).unwrap();
        assert_eq!(t.get("k").unwrap(), Some(state(3)));
        // Updated and committed, it is rewritten in the new encoding.
        t.update("k", |s| s.versions[0].ts = 4).unwrap();
        t.commit(1).unwrap();
        let stored = t.keyspace.get("k").unwrap().unwrap();
        assert_eq!(&stored[..2], &[0xC3, 0x01]);
    }

    #[test]
    fn restored_values_are_stored_as_they_are_and_decode_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(2).unwrap();
        t.update("old", |s| *s = state(1)).unwrap();
        t.commit(10).unwrap();
        // A restore: one new key, one key overwritten, one removed.
        t.put_restored_bytes(b"new", Some(&encode_state(&state(7)))).unwrap();
        t.put_restored_bytes(b"old", None).unwrap();
        t.put_restored_bytes(b"json", Some(serde_json::to_string(&state(3)).unwrap().as_bytes())).unwrap();
        assert_eq!(t.keyspace.get("new").unwrap(), None, "nothing is written before the commit");
        t.commit(20).unwrap();
        assert_eq!(t.checkpoint(), 20);
        assert_eq!(t.keyspace.get("new").unwrap().as_deref(), Some(encode_state(&state(7)).as_slice()), "the very bytes");
        assert_eq!(t.get("new").unwrap(), Some(state(7)));
        assert_eq!(t.get("old").unwrap(), None);
        assert_eq!(t.get("json").unwrap(), Some(state(3)), "earlier encodings are kept and read as before");
        // A value this version cannot read stops the restore, naming the key.
        let err = t.put_restored_bytes(b"bad", Some(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9])).unwrap_err();
        assert!(matches!(&err, StoreError::Decode { partition: 2, key, .. } if key == "bad"), "{err}");
        assert!(t.put_restored_bytes(b"bad", Some(b"")).is_err());
        // An abort drops restored records not yet committed.
        t.put_restored_bytes(b"gone", Some(&encode_state(&state(9)))).unwrap();
        t.abort();
        t.commit(30).unwrap();
        assert_eq!(t.get("gone").unwrap(), None);
    }

    #[test]
    fn restores_in_several_commits_keep_the_last_value_per_key_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = StateDb::open(dir.path()).unwrap();
            let mut t = db.task(1).unwrap();
            t.update("k0", |s| *s = state(1)).unwrap();
            t.commit(5).unwrap();
            // Two chunks of a restore, the later ones written above the earlier.
            for (i, n) in [(0, 2), (1, 3), (0, 4)] {
                t.put_restored_bytes(format!("k{i}").as_bytes(), Some(&encode_state(&state(n)))).unwrap();
            }
            assert!(t.restored_bytes() > 0);
            t.commit(8).unwrap();
            assert_eq!(t.restored_bytes(), 0);
            t.put_restored_bytes(b"k1", None).unwrap();
            t.put_restored_bytes(b"k2", Some(&encode_state(&state(6)))).unwrap();
            t.commit(10).unwrap();
            // Processing after the restore writes above it.
            t.update("k2", |s| *s = state(7)).unwrap();
            t.commit(11).unwrap();
            db.persist().unwrap();
        }
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(1).unwrap();
        assert_eq!(t.checkpoint(), 11);
        assert_eq!(t.get("k0").unwrap(), Some(state(4)));
        assert_eq!(t.get("k1").unwrap(), None);
        assert_eq!(t.get("k2").unwrap(), Some(state(7)));
    }

    #[test]
    fn a_restore_keeps_the_last_record_of_keys_sharing_long_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(0).unwrap();
        let long = |i: u64| format!("{{\"id\":\"a shared prefix longer than sixteen bytes {i}\"}}");
        let keys: Vec<String> = ["a", "a\0", "ab"].iter().map(|k| k.to_string()).chain((0..30).map(long)).collect();
        // Each key three times, interleaved; the third value is the last.
        for round in 1..=3 {
            for (i, k) in keys.iter().enumerate() {
                let gone = round == 3 && i % 7 == 0;
                t.put_restored_bytes(k.as_bytes(), (!gone).then(|| encode_state(&state(round * 100 + i as u64))).as_deref())
                    .unwrap();
            }
        }
        t.commit(1).unwrap();
        for (i, k) in keys.iter().enumerate() {
            let expected = (i % 7 != 0).then(|| state(300 + i as u64));
            assert_eq!(t.get(k).unwrap(), expected, "key {k:?}");
        }
    }

    #[test]
    fn undecodable_values_are_decode_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(5).unwrap();
        t.keyspace.insert("bad", vec![0xC3, 0x01, 0x00]).unwrap();
        let err = t.get("bad").unwrap_err();
        assert!(matches!(&err, StoreError::Decode { partition: 5, key, .. } if key == "bad"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn remembered_encodings_are_dropped_when_the_state_changes_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let mut t = db.task(0).unwrap();
        t.update("k", |s| *s = state(1)).unwrap();
        t.remember_encoded("k", encode_state(&state(1)));
        t.update("k", |s| *s = state(2)).unwrap();
        t.commit(1).unwrap();
        // From the decoded cache of committed states, then from disk.
        assert_eq!(t.get("k").unwrap(), Some(state(2)));
        let mut fresh = db.task(0).unwrap();
        assert_eq!(fresh.get("k").unwrap(), Some(state(2)), "disk holds the new state, not the remembered bytes");
        // An update after commit starts from the committed state.
        t.update("k", |s| s.versions[0].ts += 10).unwrap();
        t.abort();
        assert_eq!(t.get("k").unwrap(), Some(state(2)), "an abort falls back to the committed state");
    }
}
