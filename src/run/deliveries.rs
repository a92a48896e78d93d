//! The transactional producer's context: delivery reports of the open
//! cycle (changelog records acknowledged, failures) for the cycle to check.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use super::quiet;

/// Counts the delivery reports of the open cycle.
#[derive(Default)]
pub(super) struct Deliveries {
    /// Highest delivered changelog offset per partition.
    pub(super) changelog: HashMap<i32, i64>,
    /// Delivery failures (the cycle must not commit).
    pub(super) failures: Vec<String>,
}

pub(super) struct DeliveryTracker {
    pub(super) changelog_topic: String,
    pub(super) state: Mutex<Deliveries>,
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        quiet::log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        quiet::error(&error, reason);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut st = self.state.lock().expect("delivery state");
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let e = st.changelog.entry(m.partition()).or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Ok(_) => {}
            Err((e, m)) => st.failures.push(format!("{} partition {}: {e}", m.topic(), m.partition())),
        }
    }
}

pub(super) type Producer_ = BaseProducer<DeliveryTracker>;
