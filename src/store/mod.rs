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
use crate::time::now_ms;

mod decoded;
mod restore;
mod size;
#[cfg(test)]
mod tests;

use decoded::DecodedCache;
pub use decoded::StateReads;
use restore::Restored;
pub use restore::{RestoreWriter, RestoredBatch};
pub use size::decoded_bytes;

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
            clean: DecodedCache::default(),
            reads: StateReads::default(),
            sweep_cursor: None,
            restored: Restored::default(),
        })
    }

    /// Makes every committed write durable (on shutdown).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(|source| StoreError::Db { path: self.path.clone(), source })
    }
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
    /// the disk read and the decode.
    clean: DecodedCache,
    /// Where the events' states came from since the last [`take_reads`](Self::take_reads).
    reads: StateReads,
    /// Where the tombstone sweep goes on from (`None`: the start).
    sweep_cursor: Option<Vec<u8>>,
    /// Changelog records of a restore, written as they are (no decode, no
    /// encode) by the next commit.
    restored: Restored,
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
        if let Some(state) = self.clean.get(key) {
            return Ok(Some(state.clone()));
        }
        self.load(key)
    }

    /// The committed state of `key`: what the output topic reflects, without
    /// the open transaction's changes (for the state query).
    pub fn get_committed(&self, key: &str) -> Result<Option<KeyState>, StoreError> {
        if let Some(state) = self.clean.get(key) {
            return Ok(Some(state.clone()));
        }
        self.read(key)
    }

    /// The committed state of `key` for an event to change: taken out of
    /// the decoded-state cache, else read from disk.
    fn load(&mut self, key: &str) -> Result<Option<KeyState>, StoreError> {
        if let Some(state) = self.clean.take(key) {
            self.reads.cache += 1;
            return Ok(Some(state));
        }
        self.reads.store += 1;
        self.read(key)
    }

    /// Where the events' states came from since the last call.
    pub fn take_reads(&mut self) -> StateReads {
        std::mem::take(&mut self.reads)
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

    /// Remembers the encoding of `key`'s cached state (made for the
    /// changelog) so the commit writes the same bytes without encoding again.
    pub fn remember_encoded(&mut self, key: &str, bytes: Vec<u8>) {
        self.encoded.insert(key.to_string(), bytes);
    }

    /// Writes the open transaction's changes and the new checkpoint
    /// atomically, then clears the cache. Call only after the Kafka
    /// transaction carrying the same changes committed.
    pub fn commit(&mut self, checkpoint: i64) -> Result<(), StoreError> {
        if !self.restored.is_empty() {
            self.ingest_restored()?;
        }
        let mut batch = self.db.db.batch();
        let mut committed = Vec::with_capacity(self.cache.len());
        for (key, mut state) in self.cache.drain() {
            let size = match &mut state {
                Some(s) => {
                    let bytes = self.encoded.remove(&key).unwrap_or_else(|| encode_state(s));
                    // Kept decoded with its rows as text: smaller, and
                    // written back as it is when the key changes again.
                    let kept = crate::avro::state::keep_row_texts(s, &bytes);
                    debug_assert!(kept, "a state's own encoding lines up with it");
                    let size = decoded_bytes(&key, s, bytes.len());
                    batch.insert(&self.keyspace, key.as_str(), bytes);
                    size
                }
                None => {
                    batch.remove(&self.keyspace, key.as_str());
                    0
                }
            };
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
        // it the states committed longest ago are let go (they are on disk).
        let share = self.db.cache_budget / self.db.open_tasks.load(Ordering::Relaxed).max(1);
        for (key, state, size) in committed {
            if let Some(s) = state {
                self.clean.keep(key, s, size, share);
            }
        }
        self.clean.shrink_to(share);
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
        self.clean.take(key);
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
            self.reads.cycle += 1;
            return Ok(f(state));
        }
        let mut state = match self.cache.get(key) {
            Some(None) => {
                self.reads.cycle += 1;
                KeyState::default()
            }
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
            self.reads.cycle += 1;
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
        self.reads.cycle += u64::from(removed);
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
