//! Restored changelog records: buffered per task as they are (no decode, no
//! encode), and written by ingestion, on the task's thread at its commit or
//! from another thread while the restore goes on reading.

use std::collections::BTreeMap;

use fjall::Keyspace;

use super::{now_ms, Checkpoint, StateDb, StoreError, TaskStore};

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
    /// Writes `batch` (see `ingest`), then the checkpoint `offset` it
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
    // sort). The keys' first 16 bytes and their length decide most
    // comparisons without reading the buffer again, and all of them for
    // keys of up to 16 bytes (`{"id":12345}`): two such keys with the
    // same zero-padded head differ at most by trailing zero bytes, so the
    // shorter sorts first, and they are equal when their lengths are.
    let head = |key: &[u8]| {
        let mut head = [0u8; 16];
        let n = key.len().min(16);
        head[..n].copy_from_slice(&key[..n]);
        (u128::from_be_bytes(head), key.len() as u32)
    };
    let order_of =
        |a: &(u128, u32, u32), b: &(u128, u32, u32)| {
            a.0.cmp(&b.0).then_with(|| {
                if a.1 <= 16 && b.1 <= 16 {
                    a.1.cmp(&b.1)
                } else {
                    r.key(a.2 as usize).cmp(r.key(b.2 as usize))
                }
            })
        };
    let mut order: Vec<(u128, u32, u32)> = (0..r.records.len())
        .map(|i| {
            let (h, len) = head(r.key(i));
            (h, len, i as u32)
        })
        .collect();
    order.sort_by(order_of);
    let mut ingestion = keyspace.start_ingestion().map_err(err)?;
    for (n, this) in order.iter().enumerate() {
        let i = this.2;
        let key = r.key(i as usize);
        if order.get(n + 1).is_some_and(|next| order_of(this, next) == std::cmp::Ordering::Equal) {
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

/// Changelog records of a restore not written yet, in changelog order:
/// keys and values in one buffer, kept from commit to commit (a restore
/// fills it many times; allocating each record would fault fresh memory in
/// every time).
#[derive(Default)]
pub(super) struct Restored {
    pub(super) bytes: Vec<u8>,
    /// Per record: where its key starts in `bytes`, the key's length, and
    /// the value's length (it follows the key; `None`: the key was removed).
    records: Vec<(usize, u32, Option<u32>)>,
}

impl Restored {
    pub(super) fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
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

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Gives the key and value buffer room for `bytes` in one allocation.
    fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes.saturating_sub(self.bytes.len()));
    }

    pub(super) fn len_bytes(&self) -> usize {
        self.bytes.len() + self.records.len() * std::mem::size_of::<(usize, u32, Option<u32>)>()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }
}

impl TaskStore {
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
                self.clean.take(k);
                self.encoded.remove(k);
                self.cache.remove(k);
            }
        }
        self.restored.push(key, value);
        Ok(())
    }

    /// Makes room for about `bytes` of restored records before a batch
    /// fills: a buffer grown by doubling instead copies what it holds at
    /// every step and faults fresh pages in each time (a tenth of a
    /// restore's CPU). Pages are only touched as records arrive.
    pub fn reserve_restored(&mut self, bytes: usize) {
        self.restored.reserve(bytes);
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

    pub(super) fn ingest_restored(&mut self) -> Result<(), StoreError> {
        ingest(&self.db, &self.keyspace, &self.restored)?;
        self.restored.clear();
        Ok(())
    }
}
