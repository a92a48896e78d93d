//! Small Kafka utilities shared by the processor, the sink, `load`, the
//! tests and the benches: the Java clients' partitioner, and the rule for
//! which librdkafka log lines and errors are expected conditions.

pub mod partitioner;
pub mod quiet;

pub use partitioner::{murmur2, murmur2_partition};
