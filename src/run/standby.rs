//! Standby replicas (`[runtime] standby_replicas = N`): warm copies of
//! tasks this instance does not own, kept by tailing their changelog
//! partitions into the local store, so that taking such a task over (its
//! owner died or left) restores only the tail instead of the whole changelog.
//!
//! **Placement.** Every few seconds each instance reads the group's members
//! and their assignments (DescribeGroups). Members are ordered by member id;
//! a task's standbys are the N members that follow its owner in that order,
//! wrapping around. Every member computes the same placement from the same
//! answer, so each task gets N copies (fewer when the group has fewer other
//! members). While the group rebalances nothing changes, and a copy is
//! never dropped for want of an answer: a rebalance after its owner died is
//! exactly when it is needed.
//!
//! **Continuity.** A copy is a task keyspace with a checkpoint, as an owned
//! task's: it resumes from its checkpoint only where the same rules allow
//! ([`discontinuity`]: the same changelog, the checkpoint within it and
//! recent enough), else it is wiped and read from the changelog's start. It
//! reads committed records only, stores them as they are (like a restore),
//! and its checkpoint is the consumer's position, which librdkafka moves past
//! transaction markers and aborted records once it has handed over everything
//! before them: a copy that has caught up has its checkpoint at the high
//! watermark. Taking a task over first hands its copy over ([`Standbys::release`]:
//! the records read are written and the checkpoint stored), then opens the
//! task as always, which then reads only what the copy had not read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::clients::FETCH_QUEUE_BACKOFF_MS;
use super::group::GroupConsumer;
use super::quiet::QuietContext;
use super::tasks::discontinuity;
use super::{client_config, RunError};
use crate::config::Config;
use crate::events::{ChangelogRecordSkipped, StandbyLag};
use crate::metrics::Metrics;
use crate::normalize::MAX_KEY_BYTES;
use crate::store::{StateDb, TaskStore};

/// How often the group's membership is read.
const PLACEMENT_INTERVAL: Duration = Duration::from_secs(2);
/// How often each copy's lag is measured (one watermark request per copy).
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// A copy's records are written (and its checkpoint stored) once this many
/// bytes are buffered or [`WRITE_INTERVAL`] passed. A takeover writes what
/// is buffered first, so these bound memory and the progress a crash of
/// this instance loses, not what a takeover reads.
const WRITE_BYTES: usize = 4 << 20;
const WRITE_INTERVAL: Duration = Duration::from_secs(10);
/// Records taken from the consumer before they are applied under the lock.
const POLL_BATCH: usize = 2_000;
/// The consumer's prefetch: copies read while the instance processes, so
/// they get less than the restore consumer.
const QUEUE_KBYTES: &str = "8192";
const FETCH_MAX_BYTES: &str = "8388608";
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a copy needs to know of one table.
pub(super) struct StandbyTable {
    pub(super) name: String,
    /// The name of its keyspaces in the local store (`None`: the default table).
    pub(super) store_name: Option<String>,
    pub(super) changelog: String,
    pub(super) changelog_id: String,
    pub(super) changelog_delete_retention_ms: i64,
    /// Topics a task of the table consumes: a member assigned partition p
    /// of one of them owns the table's task p.
    pub(super) topics: BTreeSet<String>,
}

/// The standby copies of one instance, kept up to date on a thread of their own.
pub(super) struct Standbys {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Reads the copies' changelog partitions (`read_committed`).
    consumer: BaseConsumer<QuietContext>,
    /// Reads high watermarks (`read_uncommitted`) and the group's membership.
    meta: BaseConsumer<QuietContext>,
    group: String,
    replicas: usize,
    db: StateDb,
    metrics: Arc<Metrics>,
    stop: AtomicBool,
    shutdown: Arc<AtomicBool>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tables: Vec<StandbyTable>,
    /// Changelog topic → table.
    by_changelog: HashMap<String, usize>,
    /// This instance's member id in the group (known once assigned).
    member: Option<String>,
    /// Tasks this instance owns: never kept as copies.
    owned: BTreeSet<(usize, i32)>,
    /// Copies kept now.
    warm: BTreeMap<(usize, i32), Warm>,
    /// Copies that failed (a record the store refused): not started again;
    /// taking the task over meets the same record and says what it is.
    failed: BTreeSet<(usize, i32)>,
}

struct Warm {
    task: TaskStore,
    /// The next changelog offset to read.
    next: i64,
    /// The changelog's high watermark when last measured.
    high: i64,
    caught_up: bool,
    written: Instant,
}

impl Standbys {
    /// Starts the thread keeping `config.runtime.standby_replicas` copies;
    /// `None` when that is 0.
    pub(super) fn start(
        config: &Config,
        db: StateDb,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Option<Standbys>, RunError> {
        let replicas = config.runtime.standby_replicas as usize;
        if replicas == 0 {
            return Ok(None);
        }
        let consumer: BaseConsumer<QuietContext> = client_config(
            config,
            &[
                ("isolation.level", "read_committed"),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("group.id", "tributary-standby"),
                ("queued.max.messages.kbytes", QUEUE_KBYTES),
                ("fetch.max.bytes", FETCH_MAX_BYTES),
                // Without it a full queue stops fetching for librdkafka's 1 s:
                // copies caught up at a fifth of a restore's rate.
                ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ],
        )
        .create_with_context(QuietContext)
        .map_err(|e| RunError::kafka("create standby consumer", e))?;
        let meta: BaseConsumer<QuietContext> =
            client_config(config, &[("isolation.level", "read_uncommitted"), ("group.id", "tributary-standby")])
                .create_with_context(QuietContext)
                .map_err(|e| RunError::kafka("create standby watermark client", e))?;
        let shared = Arc::new(Shared {
            consumer,
            meta,
            group: config.kafka.group_id.clone(),
            replicas,
            db,
            metrics,
            stop: AtomicBool::new(false),
            shutdown,
            state: Mutex::default(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("standby".into()).spawn(move || shared.run()).expect("a thread starts")
        };
        tracing::info!(replicas, "standby replicas: keeping warm copies of tasks other members own");
        Ok(Some(Standbys { shared, thread: Some(thread) }))
    }

    /// A table whose tasks may be kept as copies (in the worker's table order).
    pub(super) fn add_table(&self, table: StandbyTable) {
        let mut s = self.shared.lock();
        let index = s.tables.len();
        s.by_changelog.insert(table.changelog.clone(), index);
        s.tables.push(table);
    }

    /// Notes this instance's member id after a rebalance.
    pub(super) fn set_member(&self, consumer: &GroupConsumer) {
        let id = member_id(consumer);
        self.shared.lock().member = id;
    }

    /// The tasks (table, partition) are this instance's now: their copies,
    /// if kept, are written out with their checkpoints and stopped, before
    /// the tasks open (and read their checkpoints).
    pub(super) fn release(&self, tasks: &[(usize, i32)]) {
        let mut s = self.shared.lock();
        for &key in tasks {
            s.owned.insert(key);
            if let Some(warm) = s.warm.remove(&key) {
                let at = warm.next;
                let table = s.tables[key.0].name.clone();
                self.shared.stop_copy(&s, key, warm);
                tracing::info!(table = %table, partition = key.1, at, "standby copy handed over to the task");
            }
        }
    }

    /// The tasks are no longer this instance's (they may become copies).
    pub(super) fn revoked(&self, tasks: &[(usize, i32)]) {
        let mut s = self.shared.lock();
        for key in tasks {
            s.owned.remove(key);
        }
    }
}

impl Drop for Standbys {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.shutdown.load(Ordering::Relaxed)
    }

    fn run(&self) {
        let mut placed = Instant::now() - PLACEMENT_INTERVAL;
        let mut measured = Instant::now();
        let mut last_warning = Instant::now() - Duration::from_secs(60);
        while !self.stopping() {
            if placed.elapsed() >= PLACEMENT_INTERVAL {
                self.place();
                placed = Instant::now();
            }
            let mut batch = Vec::new();
            if let Some(first) = self.consumer.poll(Duration::from_millis(100)) {
                batch.push(first);
                while batch.len() < POLL_BATCH {
                    match self.consumer.poll(Duration::ZERO) {
                        Some(m) => batch.push(m),
                        None => break,
                    }
                }
            }
            let mut s = self.lock();
            for m in batch {
                match m {
                    Ok(m) => self.apply(&mut s, &m),
                    Err(KafkaError::PartitionEOF(_)) => {}
                    Err(e) => {
                        if last_warning.elapsed() > Duration::from_secs(10) {
                            tracing::warn!("standby copies: reading the changelogs: {e}; retrying");
                            last_warning = Instant::now();
                        }
                    }
                }
            }
            self.follow_positions(&mut s);
            let keys: Vec<(usize, i32)> = s.warm.keys().copied().collect();
            for key in keys {
                self.write_if_due(&mut s, key);
            }
            drop(s);
            if measured.elapsed() >= LAG_INTERVAL {
                self.measure();
                measured = Instant::now();
            }
        }
        let mut s = self.lock();
        let keys: Vec<(usize, i32)> = s.warm.keys().copied().collect();
        for key in keys {
            let warm = s.warm.remove(&key).expect("a copy");
            self.stop_copy(&s, key, warm);
        }
    }

    /// Reads the group's membership and starts or stops copies to match.
    fn place(&self) {
        let wanted = match self.wanted() {
            Ok(Some(w)) => w,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("standby placement: describing group {}: {e}", self.group);
                return;
            }
        };
        let mut s = self.lock();
        let stale: Vec<(usize, i32)> = s.warm.keys().filter(|k| !wanted.contains(k) || s.owned.contains(k)).copied().collect();
        for key in stale {
            let warm = s.warm.remove(&key).expect("a copy");
            let table = s.tables[key.0].name.clone();
            self.stop_copy(&s, key, warm);
            tracing::info!(table = %table, partition = key.1, "standby copy stopped: another member keeps it now");
        }
        let starting: Vec<((usize, i32), String)> = wanted
            .into_iter()
            .filter(|k| !(s.owned.contains(k) || s.warm.contains_key(k) || s.failed.contains(k)))
            .map(|k| (k, s.tables[k.0].changelog.clone()))
            .collect();
        drop(s);
        for (key, changelog) in starting {
            // Asked without the lock: a takeover waits for it, not for the broker.
            let watermarks = self.meta.fetch_watermarks(&changelog, key.1, TIMEOUT);
            let mut s = self.lock();
            if s.owned.contains(&key) || s.warm.contains_key(&key) {
                continue;
            }
            let started = watermarks
                .map_err(|e| format!("watermarks of {changelog} partition {}: {e}", key.1))
                .and_then(|(low, high)| self.start_copy(&mut s, key, low, high));
            if let Err(e) = started {
                let table = &s.tables[key.0].name;
                tracing::warn!(table = %table, partition = key.1, "standby copy not started: {e}; trying again later");
            }
        }
    }

    /// The tasks this instance should keep copies of, from the group's
    /// membership now; `None` while that cannot say (rebalancing, this
    /// instance not yet a member).
    fn wanted(&self) -> Result<Option<BTreeSet<(usize, i32)>>, KafkaError> {
        let (me, topics) = {
            let s = self.lock();
            let Some(me) = s.member.clone() else { return Ok(None) };
            let topics: HashMap<String, usize> =
                s.tables.iter().enumerate().flat_map(|(i, t)| t.topics.iter().map(move |topic| (topic.clone(), i))).collect();
            (me, topics)
        };
        let list = self.meta.fetch_group_list(Some(&self.group), TIMEOUT)?;
        let Some(group) = list.groups().iter().find(|g| g.name() == self.group) else { return Ok(None) };
        if group.state() != "Stable" {
            return Ok(None);
        }
        let mut members: Vec<(String, Vec<(String, i32)>)> = group
            .members()
            .iter()
            .map(|m| (m.id().to_string(), m.assignment().map(parse_assignment).unwrap_or_default()))
            .collect();
        if !members.iter().any(|(id, _)| *id == me) {
            return Ok(None);
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
        let mut owners: BTreeMap<(usize, i32), usize> = BTreeMap::new();
        for (i, (_, assigned)) in members.iter().enumerate() {
            for (topic, p) in assigned {
                if let Some(&t) = topics.get(topic) {
                    owners.entry((t, *p)).or_insert(i);
                }
            }
        }
        Ok(Some(
            owners
                .into_iter()
                .filter(|(_, owner)| standbys_of(*owner, ids.len(), self.replicas).any(|i| ids[i] == me))
                .map(|(k, _)| k)
                .collect(),
        ))
    }

    /// Starts a copy of `key` whose changelog partition spans `low..high`.
    fn start_copy(&self, s: &mut State, key: (usize, i32), low: i64, high: i64) -> Result<(), String> {
        let (ti, p) = key;
        let table = &s.tables[ti];
        let mut task = self.db.standby_task(table.store_name.as_deref(), p).map_err(|e| e.to_string())?;
        task.bind_changelog(&table.changelog_id);
        if let Some(why) = discontinuity(&table.changelog_id, table.changelog_delete_retention_ms, &task, low, high) {
            let removed = task.wipe().map_err(|e| e.to_string())?;
            tracing::info!(table = %table.name, partition = p, removed, "local copy of task {p} not trusted, reading the changelog from its start: {why}");
        }
        let next = task.checkpoint().max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&table.changelog, p, Offset::Offset(next)).map_err(|e| e.to_string())?;
        self.consumer.incremental_assign(&tpl).map_err(|e| format!("assign {} partition {p}: {e}", table.changelog))?;
        tracing::info!(table = %table.name, partition = p, from = next, to = high, "standby copy started");
        StandbyLag { table: &table.name, partition: p, lag: high - next }.emit(&self.metrics);
        s.warm.insert(key, Warm { task, next, high, caught_up: false, written: Instant::now() });
        Ok(())
    }

    /// Writes out what a copy read, stops reading its partition and forgets
    /// its lag; its keyspace and checkpoint stay for later.
    fn stop_copy(&self, s: &State, key: (usize, i32), mut warm: Warm) {
        let table = &s.tables[key.0];
        if let Err(e) = warm.task.commit(warm.next) {
            tracing::warn!(table = %table.name, partition = key.1, "writing the standby copy: {e}");
        }
        warm.task.release_restore_buffer();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&table.changelog, key.1);
        if let Err(e) = self.consumer.incremental_unassign(&tpl) {
            tracing::warn!(table = %table.name, partition = key.1, "stop reading the changelog for the standby copy: {e}");
        }
        self.metrics.forget_standby(&table.name, key.1);
    }

    fn apply(&self, s: &mut State, m: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(&ti) = s.by_changelog.get(m.topic()) else { return };
        let key = (ti, m.partition());
        let Some(warm) = s.warm.get_mut(&key) else { return };
        if m.offset() < warm.next {
            return; // read before a seek
        }
        let k = m.key().unwrap_or_default();
        if (1..=MAX_KEY_BYTES).contains(&k.len()) {
            if let Err(e) = warm.task.put_restored_bytes(k, m.payload()) {
                let warm = s.warm.remove(&key).expect("a copy");
                tracing::warn!(
                    table = %s.tables[ti].name,
                    partition = key.1,
                    offset = m.offset(),
                    "standby copy stopped at a changelog record the store refuses (taking the task over will stop at it too): {e}"
                );
                self.stop_copy(s, key, warm);
                s.failed.insert(key);
                return;
            }
        } else {
            ChangelogRecordSkipped { table: &s.tables[ti].name, partition: key.1, offset: m.offset(), key_bytes: k.len() }.emit();
        }
        warm.next = m.offset() + 1;
    }

    /// Moves each copy's next offset to the consumer's position: past
    /// transaction markers and aborted records, which are never handed over.
    fn follow_positions(&self, s: &mut State) {
        if s.warm.is_empty() {
            return;
        }
        let Ok(positions) = self.consumer.position() else { return };
        for el in positions.elements() {
            let (Some(&ti), Offset::Offset(at)) = (s.by_changelog.get(el.topic()), el.offset()) else { continue };
            if let Some(warm) = s.warm.get_mut(&(ti, el.partition())) {
                warm.next = warm.next.max(at);
            }
        }
    }

    fn write_if_due(&self, s: &mut State, key: (usize, i32)) {
        let Some(warm) = s.warm.get_mut(&key) else { return };
        let behind = warm.next > warm.task.checkpoint();
        if !(warm.task.restored_bytes() >= WRITE_BYTES || (behind && warm.written.elapsed() >= WRITE_INTERVAL)) {
            return;
        }
        if let Err(e) = warm.task.commit(warm.next) {
            tracing::warn!(table = %s.tables[key.0].name, partition = key.1, "writing the standby copy: {e}; trying again");
        }
        warm.written = Instant::now();
    }

    /// Measures each copy's lag (the high watermarks asked without the lock).
    fn measure(&self) {
        let copies: Vec<((usize, i32), String)> = {
            let s = self.lock();
            s.warm.keys().map(|k| (*k, s.tables[k.0].changelog.clone())).collect()
        };
        for (key, changelog) in copies {
            let high = self.meta.fetch_watermarks(&changelog, key.1, TIMEOUT).ok().map(|(_, h)| h);
            let mut s = self.lock();
            let State { tables, warm, .. } = &mut *s;
            let Some(warm) = warm.get_mut(&key) else { continue };
            let table = &tables[key.0].name;
            if let Some(high) = high {
                warm.high = high;
            }
            let lag = warm.high - warm.next;
            StandbyLag { table, partition: key.1, lag }.emit(&self.metrics);
            if lag <= 0 && !warm.caught_up {
                warm.caught_up = true;
                tracing::info!(table = %table, partition = key.1, at = warm.next, "standby caught up");
            }
        }
    }
}

/// Members (indexes into the members ordered by id) that keep copies of the
/// tasks of member `owner`: the `replicas` that follow it, wrapping around.
fn standbys_of(owner: usize, members: usize, replicas: usize) -> impl Iterator<Item = usize> {
    (1..members).take(replicas).map(move |d| (owner + d) % members)
}

/// The partitions of a member's assignment in the consumer protocol's
/// encoding (`ConsumerProtocolAssignment`: version, then per topic its name
/// and partitions, then user data); what cannot be read is left out.
fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let mut r = Reader(bytes);
    let (Some(_version), Some(topics)) = (r.i16(), r.i32()) else { return out };
    for _ in 0..topics.max(0) {
        let Some(len) = r.i16() else { return out };
        let Some(name) = r.take(len.max(0) as usize).map(|b| String::from_utf8_lossy(b).into_owned()) else { return out };
        let Some(n) = r.i32() else { return out };
        for _ in 0..n.max(0) {
            let Some(p) = r.i32() else { return out };
            out.push((name.clone(), p));
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The group consumer's member id (`None` before it joined): librdkafka
/// has it (`rd_kafka_memberid`), the Rust wrapper does not expose it.
fn member_id(consumer: &GroupConsumer) -> Option<String> {
    use rdkafka::bindings as rd;
    // SAFETY: the handle is the live consumer's; the returned string is
    // copied and then freed with librdkafka's allocator, as documented.
    unsafe {
        let raw = rd::rd_kafka_memberid(consumer.client().native_ptr());
        if raw.is_null() {
            return None;
        }
        let id = std::ffi::CStr::from_ptr(raw).to_string_lossy().into_owned();
        rd::rd_kafka_mem_free(consumer.client().native_ptr(), raw.cast());
        Some(id).filter(|id| !id.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(1i16.to_be_bytes());
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[test]
    fn assignments_are_read_from_the_consumer_protocol_encoding() {
        let bytes = assignment(&[("g.eu.customers", &[0, 2]), ("g.us.customers", &[1])], b"x");
        assert_eq!(
            parse_assignment(&bytes),
            vec![("g.eu.customers".into(), 0), ("g.eu.customers".into(), 2), ("g.us.customers".into(), 1)]
        );
        assert_eq!(parse_assignment(&bytes[..bytes.len() - 9]), vec![("g.eu.customers".into(), 0), ("g.eu.customers".into(), 2)]);
        assert!(parse_assignment(&[]).is_empty());
    }

    #[test]
    fn standbys_follow_the_owner_and_never_include_it() {
        assert_eq!(standbys_of(0, 3, 1).collect::<Vec<_>>(), vec![1]);
        assert_eq!(standbys_of(2, 3, 1).collect::<Vec<_>>(), vec![0]);
        assert_eq!(standbys_of(1, 3, 2).collect::<Vec<_>>(), vec![2, 0]);
        // More replicas than other members: every other member, once.
        assert_eq!(standbys_of(1, 3, 5).collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(standbys_of(0, 1, 1).count(), 0);
    }
}
