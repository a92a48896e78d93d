//! Small Kafka primitives with no client in them, shared by the processor,
//! the tests and the benches.

pub mod partitioner;

pub use partitioner::{murmur2, murmur2_partition};
