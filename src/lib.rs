//! Tributary: multi-source replication over Kafka.
//!
//! The data path reads top to bottom: [`normalize`] turns a source record
//! into a [`merge::ChangeEvent`] (the row mapped and filtered by the
//! source's `transform` on the way), [`merge`] applies it to the key's state
//! (pure, no I/O), `output` encodes the merged record, and [`pipeline`]
//! strings them together. Every front end drives the same
//! [`pipeline::Pipeline`]: [`replay`] from a dump file, [`run`] from the
//! consumer group with the on-disk `store` beside it. [`sink`] writes the
//! output topic into a table.
//!
//! A module is `pub` only where the binary (`src/main.rs`), the integration
//! tests or the benches use it; the others stay private so that the compiler
//! reports what nothing uses.
#![deny(missing_docs)]

mod admin;
pub mod avro;
pub mod config;
pub mod demo;
mod events;
mod json;
pub mod kafka;
pub mod load;
pub mod merge;
mod metrics;
pub mod normalize;
mod output;
pub mod pipeline;
pub mod repartition;
pub mod replay;
mod retry;
pub mod run;
pub mod sink;
pub mod store;
pub mod time;
mod transform;
