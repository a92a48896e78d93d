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
    /// Highest delivered offset per topic and partition (the cycle reads
    /// its changelogs' from it).
    pub(super) delivered: HashMap<String, HashMap<i32, i64>>,
    /// Delivery failures (the cycle must not commit).
    pub(super) failures: Vec<String>,
}

pub(super) struct DeliveryTracker {
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
            Ok(m) => {
                let offsets = match st.delivered.get_mut(m.topic()) {
                    Some(o) => o,
                    None => st.delivered.entry(m.topic().to_string()).or_default(),
                };
                let e = offsets.entry(m.partition()).or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Err((e, m)) => st.failures.push(format!("{} partition {}: {e}", m.topic(), m.partition())),
        }
    }
}

pub(super) type Producer_ = BaseProducer<DeliveryTracker>;
