//! One consumed record through the pipeline: merged output, changelog
//! entry and conflict audit record into the open cycle.

use std::time::Duration;

use crate::events::{
    At, AuditRecordTooLarge, Dropped, EventDropped, PrimaryKeyChanged, RecordConsumed, RecordEmitted, RegistryCall,
    RegistryUnavailable,
};
use crate::normalize::InputRecord;
use crate::pipeline::{DeadLetterReason, ProcessError, Step};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

use super::audit::{audit_record, AuditSource, Merged};
use super::TABLE_HEADER;
use super::{now_ms, RegistryBlocked, RunError, Worker};

/// Events between two servings of the delivery reports that are ready.
/// Served only at the commit, the cycle's records stay in librdkafka's
/// memory until then; served along the way they are freed sooner (about
/// 9 MB less peak for 50 000 keys, same throughput). A thread of its own
/// serving them was slower on two cores (doc/benchmarks.md, "Delivery
/// reports during the cycle").
const SERVE_DELIVERIES_EVERY: usize = 256;

impl Worker {
    /// Serves the delivery reports that are ready, without waiting.
    pub(super) fn serve_ready_deliveries(&self) {
        let mut in_flight = self.producer.in_flight_count();
        loop {
            self.producer.poll(Duration::ZERO);
            let now = self.producer.in_flight_count();
            if now == in_flight || now == 0 {
                return;
            }
            in_flight = now;
        }
    }

    pub(super) fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), RunError> {
        crate::kafka::send_waiting(&self.producer, record, Duration::from_millis(20))
            .map_err(|(e, r)| RunError::kafka(format!("produce to {}", r.topic), e))
    }

    pub(super) fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), RunError> {
        self.begin()?;
        self.cycle_events += 1;
        if self.cycle_events.is_multiple_of(SERVE_DELIVERIES_EVERY) {
            self.serve_ready_deliveries();
        }
        let partition = msg.partition();
        let Some(route) = self.routes.get(msg.topic()) else {
            return Err(RunError::UnknownTopic { topic: msg.topic().to_string(), partition });
        };
        let (ti, source_label, rekey) = (route.table, route.source.clone(), route.rekey.is_some());
        RecordConsumed { table: &self.tables[ti].name, source: &source_label }.emit(&self.metrics, &mut self.counters);
        let headers: Vec<(&str, &[u8])> = msg
            .headers()
            .map_or_else(Vec::new, |h| rdkafka::message::Headers::iter(h).filter_map(|h| Some((h.key, h.value?))).collect());
        let record = InputRecord {
            topic: msg.topic(),
            partition,
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key(),
            value: msg.payload(),
            headers: &headers,
        };
        if self.tables[ti].partitioner_unchecked.contains(msg.topic()) {
            self.check_partitioner(ti, msg);
        }
        if rekey {
            self.repartition(msg, &record, ti, &source_label)?;
            self.positions.insert((msg.topic().to_string(), partition), msg.offset() + 1);
            return Ok(());
        }
        let table = &mut self.tables[ti];
        let Some(task) = table.tasks.get_mut(&partition) else {
            return Err(RunError::TaskNotOpen { topic: msg.topic().to_string(), partition, table: table.name.clone() });
        };
        let step = table.pipeline.process(&record, task);
        let table_name = table.name.clone();
        match step {
            Ok(Step::Emitted { record: out, winner, state, siblings, source, event_ts }) => {
                if let Some(task) = self.tables[ti].tasks.get_mut(&partition) {
                    task.observe_event_time(msg.topic(), event_ts);
                }
                if let Some(change) = record.key_change() {
                    PrimaryKeyChanged { table: &table_name, source: &source, at: At::of(msg), change: &change }
                        .emit(&self.metrics);
                }
                // The pipeline has checked the size against the record limit.
                let state = state.expect("the processor's pipeline has a record limit");
                let header_bytes: usize = out.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
                let bytes = out.key_bytes().len() + header_bytes + state.len().max(out.value.as_ref().map_or(0, Vec::len));
                let table = &self.tables[ti];
                let audit = match &self.audit {
                    Some(topic) if siblings > 1 => {
                        let key_state = table
                            .tasks
                            .get(&partition)
                            .and_then(|t| t.cached(&out.key))
                            .expect("an emitting update leaves a state");
                        let columns = table.pipeline.engine().explain(key_state);
                        let merged = Merged { out: &out, winner: winner.as_deref(), state: key_state };
                        let event = AuditSource { table: &table.name, source: &source_label, msg };
                        let body = audit_record(&table.config, &merged, &event, self.avro_records, &columns);
                        if out.key.len() + body.len() > self.record_limit {
                            // The audit topic would refuse it and fail the
                            // cycle on every retry: the output goes on without it.
                            let (bytes, limit) = (body.len(), self.record_limit);
                            AuditRecordTooLarge { table: &table.name, source: &source, at: At::of(msg), bytes, limit }
                                .emit(&self.metrics);
                            None
                        } else {
                            Some((topic, body))
                        }
                    }
                    _ => None,
                };
                let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
                for (k, v) in &out.headers {
                    headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
                }
                let output = BaseRecord::to(&table.config.output.topic)
                    .partition(out.partition)
                    .key(out.key_bytes())
                    .timestamp(out.timestamp)
                    .headers(headers);
                let output = match &out.value {
                    Some(v) => output.payload(v.as_slice()),
                    None => output,
                };
                self.send(output)?;
                // At-least-once: the changelog goes out at the commit, after
                // every output record of the cycle is acknowledged (see
                // `commit_at_least_once`), so a crash can repeat outputs but
                // never store a state whose output was lost.
                if self.exactly_once {
                    self.send(BaseRecord::to(&table.changelog).partition(partition).key(out.key.as_bytes()).payload(&state))?;
                }
                if let Some((topic, body)) = audit {
                    let headers = OwnedHeaders::new_with_capacity(1)
                        .insert(Header { key: TABLE_HEADER, value: Some(table.name.as_bytes()) });
                    self.send(
                        BaseRecord::to(topic.as_str())
                            .partition(partition % self.shared_partitions)
                            .key(out.key.as_bytes())
                            .payload(body.as_slice())
                            .headers(headers),
                    )?;
                }
                let policy = table.config.merge.policy.as_str();
                self.cycle_bytes += bytes;
                if let Some(task) = self.tables[ti].tasks.get_mut(&partition) {
                    task.remember_encoded(&out.key, state);
                }
                let skew_ms = msg.timestamp().to_millis().map(|t| t - event_ts);
                let (age_ms, winner) = (now_ms() - event_ts, winner.as_deref());
                let event = RecordEmitted {
                    table: &table_name,
                    source: &source,
                    at: At::of(msg),
                    siblings,
                    age_ms,
                    skew_ms,
                    policy,
                    winner,
                };
                event.emit(&self.metrics, &mut self.counters);
            }
            Ok(Step::Stale { source }) => {
                EventDropped { table: &table_name, source: &source, why: Dropped::Stale }.emit(&self.metrics, &mut self.counters)
            }
            Ok(Step::Duplicate { source }) => EventDropped { table: &table_name, source: &source, why: Dropped::Duplicate }
                .emit(&self.metrics, &mut self.counters),
            Ok(Step::Ignored { source }) => EventDropped { table: &table_name, source: &source, why: Dropped::Ignored }
                .emit(&self.metrics, &mut self.counters),
            // The registry is unavailable: not the record's fault. The
            // cycle is aborted and the record comes back after a wait.
            Err(ProcessError::Rejected(e)) if e.reason.is_retriable() => {
                let (topic, offset) = (msg.topic().to_string(), msg.offset());
                return Err(match e.reason {
                    DeadLetterReason::Output(error) => {
                        RegistryUnavailable { call: RegistryCall::Register }.emit(&self.metrics);
                        let source = RegistryBlocked::Register(Box::new(error));
                        RunError::RegistryUnavailable { topic, partition, offset, source }
                    }
                    _ => {
                        RegistryUnavailable { call: RegistryCall::Decode }.emit(&self.metrics);
                        RunError::RegistryUnavailable { topic, partition, offset, source: RegistryBlocked::Decode(e) }
                    }
                });
            }
            // The key's state is as it was: the record goes to the dead
            // letters inside the open cycle, which goes on.
            Err(ProcessError::Rejected(e)) => self.dead_letter(msg, &e, ti)?,
            Err(ProcessError::Store(e)) => return Err(e.into()),
        }
        self.positions.insert((msg.topic().to_string(), partition), msg.offset() + 1);
        Ok(())
    }

    /// Co-partitioning needs every source to place a key in the same
    /// partition. Debezium (a Java producer) hashes with murmur2; a key
    /// elsewhere means a producer with another partitioner (librdkafka's
    /// default, kcat, the Python and Go clients), which breaks it: say so once.
    pub(super) fn check_partitioner(&mut self, table: usize, msg: &BorrowedMessage<'_>) {
        let Some(key) = msg.key() else { return };
        let table = &mut self.tables[table];
        let expected = crate::kafka::murmur2_partition(key, table.partitions);
        if expected != msg.partition() {
            tracing::warn!(
                topic = msg.topic(),
                partition = msg.partition(),
                offset = msg.offset(),
                murmur2_partition = expected,
                "a key is not in the partition murmur2 gives it: the topic's producer uses another partitioner (librdkafka's default consistent_random: kcat, Python, Go); co-partitioning with murmur2 sources (Debezium, Java) breaks unless every source uses the same partitioner (librdkafka: partitioner=murmur2_random). Logged once per topic"
            );
            table.partitioner_unchecked.remove(msg.topic());
        }
    }
}
