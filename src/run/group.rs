//! The consumer group's context: rebalance callbacks that open and close
//! tasks, and statistics that feed the lag gauge.

use std::sync::{Arc, Mutex};

use crate::events::Rebalanced;
use crate::metrics::Metrics;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use super::pause::SourceControl;
use super::{quiet, Worker};

pub(super) struct GroupContext {
    pub(super) worker: Arc<Mutex<Worker>>,
    pub(super) metrics: Arc<Metrics>,
    /// Topic → (table, source) of every consumed topic.
    pub(super) labels: super::Labels,
    /// Paused sources: their partitions are paused again on every assignment.
    pub(super) control: Arc<SourceControl>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        quiet::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        quiet::error(&error, reason);
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        let labels = self.labels.read().expect("labels");
        for (topic, t) in &stats.topics {
            let Some((table, source)) = labels.get(topic) else { continue };
            for (p, part) in &t.partitions {
                if *p < 0 {
                    continue;
                }
                if !part.desired {
                    self.metrics.forget_lag(table, source, *p);
                    continue;
                }
                if let Some(lag) = partition_lag(part) {
                    self.metrics.lag(table, source, *p, lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            Rebalanced::Revoke.emit(&self.metrics);
            let mut w = self.worker.lock().expect("worker");
            if let Err(e) = w.on_revoke(consumer, tpl) {
                w.fatal.get_or_insert(e);
            }
            if let Err(e) = self.control.revoke(consumer, tpl) {
                tracing::warn!("resuming revoked partitions of paused sources: {e}");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            Rebalanced::Assign.emit(&self.metrics);
            let mut w = self.worker.lock().expect("worker");
            // Before the next poll hands over a record of a paused source.
            if let Err(e) = self.control.apply_to(consumer, tpl) {
                tracing::warn!("pausing the assigned partitions of paused sources: {e}");
            }
            match w.on_assign(consumer, tpl) {
                Ok(()) => self.metrics.set_ready(true),
                Err(e) => {
                    w.fatal.get_or_insert(e);
                }
            }
        }
    }
}

pub(super) type GroupConsumer = BaseConsumer<GroupContext>;

/// A partition's consumer lag: from the consumer's position to the
/// partition's end, which for a `read_committed` consumer is the last stable
/// offset. librdkafka's own `consumer_lag` counts from the committed offset
/// it knows, which offsets committed through transactions never update, and
/// is absent until the group has committed once.
pub(super) fn partition_lag(part: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
    let position = [part.app_offset, part.committed_offset, part.next_offset, part.lo_offset].into_iter().find(|o| *o >= 0)?;
    (end >= 0).then(|| (end - position).max(0))
}

/// Consumer errors after which the member cannot go on (fenced static member,
/// librdkafka's fatal state).
pub(super) fn is_fatal_consumer_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::FencedInstanceId | RDKafkaErrorCode::InvalidGroupId)
    )
}
