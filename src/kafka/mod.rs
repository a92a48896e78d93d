//! Small Kafka utilities shared by the processor, the sink, `load`, the
//! demo, the tests and the benches: the Java clients' partitioner, the rule
//! for which librdkafka log lines and errors are expected conditions, and
//! producing while the producer's queue is full.

pub mod partitioner;
pub mod quiet;

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Partitioner, ProducerContext};

pub use partitioner::{murmur2, murmur2_partition};

/// A send that failed: librdkafka's error and the record, handed back as
/// rdkafka's `send` does.
pub type Unsent<'a, K, P, D> = (KafkaError, BaseRecord<'a, K, P, D>);

/// Produces `record`, serving delivery reports for `wait` at a time while
/// librdkafka's queue is full (`queue.buffering.max.messages` or `.kbytes`
/// reached): a full queue is back-pressure, not a failure, and only `poll`
/// on this producer frees room. Any other error comes back with the record.
#[allow(clippy::result_large_err)] // the record is handed back, as rdkafka's `send` does
pub fn send_waiting<'a, K, P, C, Part>(
    producer: &BaseProducer<C, Part>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    wait: Duration,
) -> Result<(), Unsent<'a, K, P, C::DeliveryOpaque>>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext<Part>,
    Part: Partitioner,
{
    loop {
        match producer.send(record) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(wait);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::Producer;

    /// A queue of one message towards a broker that never answers: the
    /// second send finds the queue full, and waits until a purge frees it
    /// instead of failing.
    #[test]
    fn a_full_queue_waits_instead_of_failing() {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "1")
            .set("message.timeout.ms", "300")
            .set("log_level", "0")
            .create()
            .expect("producer");
        send_waiting(&producer, BaseRecord::<str, str>::to("t").partition(0).payload("one"), Duration::from_millis(20))
            .map_err(|(e, _)| e)
            .expect("first");
        assert!(matches!(
            producer.send(BaseRecord::<str, str>::to("t").partition(0).payload("two")),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
        ));
        // The first record times out after 300 ms, which frees the queue.
        let started = std::time::Instant::now();
        send_waiting(&producer, BaseRecord::<str, str>::to("t").partition(0).payload("two"), Duration::from_millis(20))
            .map_err(|(e, _)| e)
            .expect("second, once the first timed out");
        assert!(started.elapsed() >= Duration::from_millis(100), "it waited for room");
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }
}
