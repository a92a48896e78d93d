//! Sources that are not co-partitioned with their table: each record is
//! re-keyed by its canonical key into the table's repartition topic for the
//! source, inside the open cycle's transaction (so exactly once), and comes
//! back from there co-partitioned. Consumed repartition records are deleted
//! from time to time (`DeleteRecords` up to the committed offsets), as Kafka
//! Streams does, so the detour holds only what is not merged yet.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::quiet::QuietContext;
use super::{RunError, Worker};
use crate::events::{RecordRepartitioned, RegistryCall, RegistryUnavailable};
use crate::normalize::InputRecord;

impl Worker {
    /// Re-keys `record` of a source of table `table` into its repartition
    /// topic; a record that cannot be keyed goes to the dead letters.
    pub(super) fn repartition(
        &mut self,
        msg: &BorrowedMessage<'_>,
        record: &InputRecord<'_>,
        table: usize,
        source: &str,
    ) -> Result<(), RunError> {
        let route = self.routes.get(msg.topic()).and_then(|r| r.rekey.as_ref()).expect("a re-keyed route");
        match route.rekeyer.rekey(record) {
            Ok(rekeyed) => {
                let mut headers = OwnedHeaders::new_with_capacity(rekeyed.headers.len());
                for (k, v) in &rekeyed.headers {
                    headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
                }
                let out = BaseRecord::to(route.topic.as_str())
                    .partition(rekeyed.partition)
                    .key(rekeyed.key.as_slice())
                    .headers(headers);
                let out = match &rekeyed.value {
                    Some(v) => out.payload(v.as_slice()),
                    None => out,
                };
                let out = match msg.timestamp().to_millis() {
                    Some(ts) => out.timestamp(ts),
                    None => out,
                };
                self.send(out)?;
                self.cycle_bytes += rekeyed.key.len() + rekeyed.value.as_ref().map_or(0, Vec::len);
                RecordRepartitioned { table: &self.tables[table].name, source }.emit(&self.metrics);
                Ok(())
            }
            Err(e) if e.is_retriable() => {
                RegistryUnavailable { call: RegistryCall::Decode }.emit(&self.metrics);
                Err(RunError::RegistryUnavailable {
                    topic: msg.topic().to_string(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    source: super::RegistryBlocked::Rekey(Box::new(e)),
                })
            }
            Err(e) => {
                let dead = e.into_dead_letter(record);
                self.dead_letter(msg, &dead, table)
            }
        }
    }
}

/// Deletes consumed records of the repartition topics.
pub(super) struct Purge {
    /// The repartition topics.
    topics: HashSet<String>,
    /// Committed offsets not yet purged up to.
    pending: HashMap<(String, i32), i64>,
    last: Instant,
    every: Duration,
    admin: Option<Arc<AdminClient<QuietContext>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Purge {
    /// Purges every `every` (Kafka Streams: `repartition.purge.interval.ms`, 30 s).
    pub(super) fn new(admin: Option<Arc<AdminClient<QuietContext>>>, every: Duration) -> Self {
        Self {
            topics: HashSet::new(),
            pending: HashMap::new(),
            last: Instant::now(),
            every,
            admin,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// `topic` is a repartition topic whose consumed records are purged.
    pub(super) fn watch(&mut self, topic: &str) {
        self.topics.insert(topic.to_string());
    }

    /// A cycle committed `positions` (next offsets): records below them in
    /// the repartition topics are no longer needed by anyone (a task moved
    /// elsewhere starts from these committed offsets too).
    pub(super) fn committed(&mut self, positions: &HashMap<(String, i32), i64>) {
        if self.topics.is_empty() {
            return;
        }
        for ((topic, p), offset) in positions {
            if self.topics.contains(topic) {
                self.pending.insert((topic.clone(), *p), *offset);
            }
        }
        self.tick();
    }

    /// The offsets to delete up to, once the interval since the last purge
    /// is up and a commit left some.
    fn due(&mut self) -> Option<TopicPartitionList> {
        if self.pending.is_empty() || self.last.elapsed() < self.every {
            return None;
        }
        self.last = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), offset) in self.pending.drain() {
            let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(offset));
        }
        Some(tpl)
    }

    /// Purges what commits left pending once the interval is up; called
    /// after every commit and from the idle loop too, so the records of the
    /// last busy cycle are deleted even when nothing else arrives (as Kafka
    /// Streams purges on a timer).
    pub(super) fn tick(&mut self) {
        let Some(tpl) = self.due() else { return };
        let (Some(admin), Some(runtime)) = (&self.admin, &self.runtime) else { return };
        let admin = admin.clone();
        // Off the processing thread: a slow or failed purge only leaves
        // records for the next one (retention bounds them anyway).
        runtime.spawn(async move {
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            match admin.delete_records(&tpl, &opts).await {
                Ok(result) => {
                    for el in result.elements().iter().filter(|e| e.error().is_err()) {
                        tracing::debug!(
                            topic = el.topic(),
                            partition = el.partition(),
                            "purging repartition records: {:?}",
                            el.error()
                        );
                    }
                }
                Err(e) => tracing::debug!("purging repartition records: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(tpl: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        let mut v: Vec<_> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v
    }

    /// The last busy cycle's records are purged by the timer alone: an idle
    /// processor commits nothing more, and must not keep them for 7 days.
    #[test]
    fn records_of_the_last_commit_are_purged_on_the_timer_without_another_commit() {
        let mut purge = Purge::new(None, Duration::from_millis(50));
        purge.watch("g-t-erp-repartition");
        let positions: HashMap<(String, i32), i64> =
            [(("g-t-erp-repartition".to_string(), 0), 10), (("eu".to_string(), 0), 99)].into();
        // Right after a purge: the commit's offsets wait for the interval.
        purge.last = Instant::now();
        purge.committed(&positions);
        assert!(purge.due().is_none(), "not before the interval");
        std::thread::sleep(Duration::from_millis(60));
        // No further commit: the idle loop's tick finds them due.
        let due = purge.due().expect("due on the timer");
        assert_eq!(offsets(&due), [("g-t-erp-repartition".to_string(), 0, Offset::Offset(10))], "only repartition topics");
        assert!(purge.due().is_none(), "purged once");
    }
}
