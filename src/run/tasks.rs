//! Tasks: opened on assignment (restored from the changelog when local
//! state does not provably continue it) and closed on revocation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{ChangelogRecordSkipped, RestoreProgress};
use crate::normalize::MAX_KEY_BYTES;
use crate::store::{RestoreWriter, RestoredBatch, StoreError, TaskStore};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::group::{is_fatal_consumer_error, GroupConsumer};
use super::{now_ms, RunError, Worker, TIMEOUT};

impl Worker {
    pub(super) fn on_revoke(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        self.commit(consumer)?;
        let revoked = self.tasks_of(tpl);
        if let Some(standby) = &self.standby {
            let tasks: Vec<(usize, i32)> = revoked.iter().flat_map(|(t, ps)| ps.keys().map(|p| (*t, *p))).collect();
            standby.revoked(&tasks);
        }
        for (ti, partitions) in revoked {
            let table = &mut self.tables[ti];
            for p in partitions.into_keys() {
                if table.tasks.remove(&p).is_some() {
                    tracing::info!(table = %table.name, partition = p, "task closed (revoked)");
                }
            }
        }
        Ok(())
    }

    /// The (table, partitions) pairs whose tasks `tpl` names: partitions of
    /// the topics a table's tasks consume (a source re-keyed into a
    /// repartition topic is consumed outside the tasks).
    fn tasks_of(&self, tpl: &TopicPartitionList) -> BTreeMap<usize, BTreeMap<i32, BTreeSet<String>>> {
        let mut out: BTreeMap<usize, BTreeMap<i32, BTreeSet<String>>> = BTreeMap::new();
        for el in tpl.elements() {
            match self.routes.get(el.topic()) {
                Some(route) if route.rekey.is_none() => {
                    out.entry(route.table).or_default().entry(el.partition()).or_default().insert(el.topic().to_string());
                }
                _ => {}
            }
        }
        out
    }

    pub(super) fn on_assign(&mut self, consumer: &GroupConsumer, tpl: &TopicPartitionList) -> Result<(), RunError> {
        let assigned = self.tasks_of(tpl);
        if let Some(standby) = &self.standby {
            standby.set_member(consumer);
        }
        let mut new: Vec<(usize, i32)> = Vec::new();
        for (ti, partitions) in &assigned {
            let table = &self.tables[*ti];
            for (p, topics) in partitions {
                if topics != &table.topics {
                    return Err(RunError::SplitTask {
                        table: table.name.clone(),
                        partition: *p,
                        assigned: topics.clone(),
                        missing: table.topics.difference(topics).cloned().collect(),
                    });
                }
                if !table.tasks.contains_key(p) {
                    new.push((*ti, *p));
                }
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        if let Some(standby) = &self.standby {
            // Their copies written out first: the tasks then open from there.
            standby.release(&new);
        }
        // The group's committed offsets first: with read_committed this
        // fetch waits until no transactional offset commit of the group is
        // pending (KIP-447), so the previous owner's last transaction is
        // complete, and every changelog record it wrote lies below the high
        // watermarks read next. Restoring up to those brings the state up to
        // the offsets the consumer will start from.
        let mut wanted = TopicPartitionList::new();
        for (ti, p) in &new {
            for topic in &self.tables[*ti].topics {
                wanted.add_partition(topic, *p);
            }
        }
        consumer
            .committed_offsets(wanted, TIMEOUT)
            .map_err(|e| RunError::kafka("read the group's committed offsets of the assigned partitions", e))?;
        let started = Instant::now();
        let mut opening = Vec::with_capacity(new.len());
        for (ti, p) in new {
            let table = &self.tables[ti];
            let mut task = self.db.table_task(table.store_name.as_deref(), p)?;
            task.bind_changelog(&table.changelog_id);
            opening.push(Opening::new(ti, task));
        }
        self.restore(&mut opening)?;
        for o in opening {
            let table = &mut self.tables[o.table];
            tracing::info!(
                table = %table.name,
                partition = o.task.partition(),
                restored = o.restored,
                checkpoint = o.task.checkpoint(),
                elapsed_ms = o.done.unwrap_or_else(Instant::now).duration_since(started).as_millis() as u64,
                "task opened"
            );
            table.tasks.insert(o.task.partition(), o.task);
        }
        Ok(())
    }

    /// Brings each task's keyspace up to its changelog partition's high
    /// watermark: from its checkpoint when the local keyspace provably
    /// continues the changelog, otherwise wiped and from the changelog's
    /// start. Every partition to restore is read at once by the one restore
    /// consumer (one changelog per partition number at a time: librdkafka's
    /// end-of-partition event names the partition, not the topic). Reads
    /// committed records only, and does not stop at an end that an open
    /// transaction pins (the last stable offset) below the high watermark:
    /// it waits until everything up to the high watermark is decided.
    fn restore(&self, opening: &mut [Opening]) -> Result<(), RunError> {
        // A checkpoint counts the commit marker of this instance's last
        // transaction, which the broker may still be writing when the
        // partition comes straight back (commit returns before every marker
        // is written): give it a moment before calling the checkpoint
        // "past the end".
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut waiting: BTreeMap<i32, VecDeque<usize>> = BTreeMap::new();
        for (i, o) in opening.iter_mut().enumerate() {
            if self.plan(o, deadline)? {
                waiting.entry(o.task.partition()).or_default().push_back(i);
            } else {
                o.done = Some(Instant::now());
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        let result = self.read_changelogs(opening, waiting);
        let _ = self.restorer.unassign();
        result
    }

    /// Sets where the task's restore starts and ends, wiping a keyspace
    /// that cannot be trusted to continue the changelog. False: nothing to
    /// restore (the checkpoint is stored as the task's start).
    fn plan(&self, o: &mut Opening, deadline: Instant) -> Result<bool, RunError> {
        let p = o.task.partition();
        let table = &self.tables[o.table];
        let changelog = table.changelog.as_str();
        let watermarks = || {
            self.watermarks
                .fetch_watermarks(changelog, p, TIMEOUT)
                .map_err(|e| RunError::kafka(format!("watermarks of {changelog} partition {p}"), e))
        };
        let (mut low, mut high) = watermarks()?;
        while o.task.checkpoint() > high && Instant::now() < deadline && !self.shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            (low, high) = watermarks()?;
        }
        if let Some(why) = discontinuity(&table.changelog_id, table.changelog_delete_retention_ms, &o.task, low, high) {
            let removed = o.task.wipe()?;
            tracing::info!(
                table = %table.name,
                partition = p,
                removed,
                "local state of task {p} not trusted, restoring it from the changelog's start: {why}"
            );
        }
        let start = o.task.checkpoint().max(low);
        if start >= high {
            o.task.commit(start)?;
            RestoreProgress { table: &table.name, partition: p, remaining: 0, rate: 0.0 }.emit(&self.metrics);
            return Ok(false);
        }
        (o.next, o.high) = (start, high);
        // Asked before the restore consumer fetches (its answer waits behind
        // a fetch). Most often nothing is open on the changelog: then the
        // first end-of-partition is the end, found without a seek.
        if self.settled(o)? {
            o.confirmed = Some(Instant::now());
        }
        Ok(true)
    }

    /// Starts reading a task's changelog partition (added to what the
    /// restore consumer reads).
    fn start_reading(&self, o: &mut Opening) -> Result<(), RunError> {
        let table = &self.tables[o.table];
        let p = o.task.partition();
        tracing::info!(table = %table.name, partition = p, from = o.next, to = o.high, "restoring state from the changelog");
        o.began = Instant::now();
        o.writer = Some(Arc::new(o.task.restore_writer()));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&table.changelog, p, Offset::Offset(o.next)).map_err(|e| RunError::kafka("restore", e))?;
        self.restorer
            .incremental_assign(&tpl)
            .map_err(|e| RunError::kafka(format!("assign {} partition {p}", table.changelog), e))
    }

    /// Stops reading a task's changelog partition, everything up to the
    /// high watermark read (what lies between the last record and it is
    /// markers or aborted records), and hands the last records to the writer.
    fn finish_reading(&self, o: &mut Opening, writes: &Writes) -> Result<(), RunError> {
        let table = &self.tables[o.table];
        let p = o.task.partition();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&table.changelog, p);
        self.restorer
            .incremental_unassign(&tpl)
            .map_err(|e| RunError::kafka(format!("unassign {} partition {p}", table.changelog), e))?;
        writes.send(o, o.high)
    }

    /// Reads the changelog partitions of `waiting` (partition number →
    /// tasks, in turn) into their tasks, up to each one's high watermark.
    /// The records go to the store on a thread of their own, so reading
    /// and writing overlap; each task completes (its checkpoint the high
    /// watermark) once everything is written.
    fn read_changelogs(&self, opening: &mut [Opening], waiting: BTreeMap<i32, VecDeque<usize>>) -> Result<(), RunError> {
        // One batch queued while one is written: memory stays bounded.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(Arc<RestoreWriter>, RestoredBatch, i64)>(1);
        let (spares_back, spares) = std::sync::mpsc::channel::<RestoredBatch>();
        let (read, wrote) = std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("restore-writer".into())
                .spawn_scoped(scope, move || -> Result<(), StoreError> {
                    for (to, mut batch, offset) in queue {
                        to.write(&mut batch, offset)?;
                        let _ = spares_back.send(batch);
                    }
                    Ok(())
                })
                .expect("a thread starts");
            let read = self.read_loop(opening, waiting, &Writes { jobs, spares });
            (read, writer.join().expect("the restore writer does not panic"))
        });
        // The writer's error explains a read that stopped because it did.
        wrote?;
        read?;
        for o in opening.iter_mut().filter(|o| o.writer.is_some()) {
            let table = &self.tables[o.table];
            o.task.commit(o.high)?;
            o.task.release_restore_buffer();
            let rate = o.restored as f64 / o.began.elapsed().as_secs_f64().max(1e-3);
            RestoreProgress { table: &table.name, partition: o.task.partition(), remaining: 0, rate }.emit(&self.metrics);
            o.done = Some(Instant::now());
        }
        Ok(())
    }

    fn read_loop(
        &self,
        opening: &mut [Opening],
        mut waiting: BTreeMap<i32, VecDeque<usize>>,
        writes: &Writes,
    ) -> Result<(), RunError> {
        // The task whose changelog partition is being read, per partition number.
        let mut active: BTreeMap<i32, usize> = BTreeMap::new();
        for (p, queue) in &mut waiting {
            if let Some(i) = queue.pop_front() {
                self.start_reading(&mut opening[i])?;
                active.insert(*p, i);
            }
        }
        let mut last_log = Instant::now();
        let mut last_check = Instant::now();
        // Records since the clocks were last read (reading them for every
        // record costs more than storing it).
        let mut unclocked = 0u32;
        while !active.is_empty() {
            if self.shutdown.load(Ordering::Relaxed) {
                return Err(RunError::Interrupted);
            }
            let mut ended = None;
            let mut check = false;
            match self.restorer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let Some(&i) = active.get(&m.partition()) else { continue };
                    let o = &mut opening[i];
                    if m.topic() != self.tables[o.table].changelog || m.offset() < o.next {
                        continue; // a partition read before, or a record before a seek
                    }
                    if m.offset() >= o.high {
                        ended = Some(m.partition());
                    } else {
                        // Stored as it is: the state decodes when first read.
                        let key = m.key().unwrap_or_default();
                        if o.task.restored_bytes() == 0 {
                            // The batch's share in one allocation (plus the
                            // record that crosses it).
                            o.task.reserve_restored(RESTORE_BUFFER_BYTES / active.len() + (1 << 20));
                        }
                        if (1..=MAX_KEY_BYTES).contains(&key.len()) {
                            o.task.put_restored_bytes(key, m.payload())?;
                        } else {
                            let table = &self.tables[o.table].name;
                            ChangelogRecordSkipped { table, partition: m.partition(), offset: m.offset(), key_bytes: key.len() }
                                .emit();
                        }
                        o.next = m.offset() + 1;
                        o.restored += 1;
                        o.at_end = false;
                        if o.task.restored_bytes() > RESTORE_BUFFER_BYTES / active.len() {
                            // Bounded memory, and progress that survives a crash.
                            writes.send(o, o.next)?;
                        }
                        if o.restored.is_multiple_of(1000) {
                            let table = &self.tables[o.table];
                            let rate = o.restored as f64 / o.began.elapsed().as_secs_f64().max(1e-3);
                            let remaining = o.high - o.next;
                            RestoreProgress { table: &table.name, partition: m.partition(), remaining, rate }.emit(&self.metrics);
                        }
                        if o.next >= o.high {
                            ended = Some(m.partition());
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(&i) = active.get(&p) {
                        let o = &mut opening[i];
                        if o.confirmed.is_some() {
                            ended = Some(p);
                        } else {
                            o.at_end = true;
                            check = true;
                        }
                    }
                }
                None => {
                    // Nothing arrived from any partition for a while: each
                    // may be at its end.
                    for &i in active.values() {
                        opening[i].at_end = true;
                    }
                    check = true;
                }
                // The broker away for a while (a restart): librdkafka
                // reconnects by itself; the restore waits, as the main loop does.
                Some(Err(e)) if !is_fatal_consumer_error(&e) => {
                    if last_log.elapsed() > Duration::from_secs(5) {
                        tracing::warn!("restoring from the changelogs: {e}; retrying");
                        last_log = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(RunError::kafka("restore from the changelogs", e)),
            }
            if let Some(p) = ended {
                let i = active.remove(&p).expect("an active partition");
                self.finish_reading(&mut opening[i], writes)?;
                if let Some(next) = waiting.get_mut(&p).and_then(VecDeque::pop_front) {
                    self.start_reading(&mut opening[next])?;
                    active.insert(p, next);
                }
            }
            unclocked += 1;
            if !check && unclocked < 1000 {
                continue;
            }
            unclocked = 0;
            if check || last_check.elapsed() > Duration::from_millis(200) {
                for &i in active.values() {
                    self.check_end(&mut opening[i])?;
                }
                last_check = Instant::now();
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                for &i in active.values() {
                    let o = &opening[i];
                    let (table, p) = (&self.tables[o.table].name, o.task.partition());
                    if o.at_end && o.confirmed.is_none() {
                        tracing::info!(
                            table = %table,
                            partition = p,
                            at = o.next,
                            to = o.high,
                            "waiting for an open transaction on the changelog partition to finish before the task starts"
                        );
                    } else {
                        tracing::info!(table = %table, partition = p, at = o.next, to = o.high, restored = o.restored, "restoring");
                    }
                }
                last_log = Instant::now();
            }
        }
        Ok(())
    }

    /// Whether the last stable offset (LSO) of the task's changelog
    /// partition has reached `high`: then past the last committed record
    /// below `high` lie only transaction markers and aborted records.
    fn settled(&self, o: &Opening) -> Result<bool, RunError> {
        let changelog = self.tables[o.table].changelog.as_str();
        let p = o.task.partition();
        match self.restorer.fetch_watermarks(changelog, p, TIMEOUT) {
            Ok((_, stable)) => Ok(stable >= o.high),
            // Not known now (the broker away): not settled; asked again.
            Err(e) if !is_fatal_consumer_error(&e) => {
                tracing::debug!(partition = p, "last stable offset of {changelog}: {e}");
                Ok(false)
            }
            Err(e) => Err(RunError::kafka(format!("last stable offset of {changelog} partition {p}"), e)),
        }
    }

    /// For a task whose changelog partition may be at its end below the
    /// high watermark. An end-of-partition seen before the LSO reached the
    /// high watermark may be at an older LSO; so once it has, the restore
    /// seeks to `next` again (the LSO never goes back) and takes the next
    /// end-of-partition as the end.
    fn check_end(&self, o: &mut Opening) -> Result<(), RunError> {
        if !o.at_end {
            return Ok(());
        }
        // A seek whose end-of-partition librdkafka does not report again
        // (it was reported already) is repeated.
        let again = o.confirmed.is_some_and(|at| at.elapsed() > Duration::from_secs(3));
        if (o.confirmed.is_none() && self.settled(o)?) || again {
            let changelog = self.tables[o.table].changelog.as_str();
            let p = o.task.partition();
            self.restorer
                .seek(changelog, p, Offset::Offset(o.next), TIMEOUT)
                .map_err(|e| RunError::kafka(format!("seek {changelog} partition {p}"), e))?;
            o.confirmed = Some(Instant::now());
        }
        Ok(())
    }
}

/// Why the task's local keyspace cannot be taken to continue at its
/// checkpoint within the changelog partition spanning `low..high`
/// (`None`: it can). Owned tasks and standby copies alike.
pub(super) fn discontinuity(
    changelog_id: &str,
    delete_retention_ms: i64,
    task: &TaskStore,
    low: i64,
    high: i64,
) -> Option<String> {
    let cp = task.checkpoint_info();
    if cp.offset == 0 && task.approximate_keys() == 0 {
        return None;
    }
    match &cp.changelog {
        None => return Some("the checkpoint does not say which changelog it belongs to (written by an earlier version)".into()),
        Some(id) if *id != changelog_id => {
            return Some(format!("the changelog is not the one the checkpoint belongs to (it was {id}, now {}): deleted and created again, or another cluster", changelog_id))
        }
        Some(_) => {}
    }
    if cp.offset > high {
        return Some(format!("the checkpoint {} is past the changelog's end {high}", cp.offset));
    }
    if cp.offset < low {
        return Some(format!("the checkpoint {} is below the changelog's start {low}", cp.offset));
    }
    let age = now_ms() - cp.written_ms;
    if cp.offset < high && age >= delete_retention_ms {
        // Another owner wrote after the checkpoint; a null record it
        // wrote (a key deleted and collected) may have been compacted
        // away since, and the local keyspace would keep that key.
        return Some(format!(
            "the checkpoint was written {} s ago, longer than the changelog's delete.retention.ms ({} s): null records written since may be compacted away",
            age / 1000,
            delete_retention_ms / 1000
        ));
    }
    None
}

/// Restored records the tasks being restored hold together before each
/// writes its share to the store (sorted, the last per key; each commit also
/// stores the checkpoint, so a crash keeps the progress). Larger shares
/// write fewer, larger tables and drop more overwritten values.
const RESTORE_BUFFER_BYTES: usize = 64 << 20;

/// The way restored records go to the restore's writer thread.
struct Writes {
    jobs: SyncSender<(Arc<RestoreWriter>, RestoredBatch, i64)>,
    /// Batches written, to be filled again.
    spares: Receiver<RestoredBatch>,
}

impl Writes {
    /// Hands the task's records read so far to the writer, with the
    /// checkpoint they complete.
    fn send(&self, o: &mut Opening, checkpoint: i64) -> Result<(), RunError> {
        let batch = o.task.take_restored(self.spares.try_recv().ok());
        let writer = o.writer.clone().expect("a task being read has a writer");
        // Refused only once the writer stopped, on an error it returns.
        self.jobs.send((writer, batch, checkpoint)).map_err(|_| RunError::Interrupted)
    }
}

/// A task being opened, and where its restore stands.
struct Opening {
    table: usize,
    task: TaskStore,
    /// The next changelog offset to read.
    next: i64,
    /// Where the restore ends: the changelog's high watermark when it began.
    high: i64,
    restored: u64,
    began: Instant,
    /// When the task was ready.
    done: Option<Instant>,
    /// The changelog partition may be at its end (an end-of-partition, or
    /// nothing read for a while) below `high`.
    at_end: bool,
    /// When the restore, with the last stable offset at `high`, sought back
    /// to `next`: the next end-of-partition is the end.
    confirmed: Option<Instant>,
    /// Writes the records read to the task's keyspace (set once reading starts).
    writer: Option<Arc<RestoreWriter>>,
}

impl Opening {
    fn new(table: usize, task: TaskStore) -> Self {
        Opening {
            table,
            task,
            next: 0,
            high: 0,
            restored: 0,
            began: Instant::now(),
            done: None,
            at_end: false,
            confirmed: None,
            writer: None,
        }
    }
}
