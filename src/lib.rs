//! Tributary: multi-source replication over Kafka.
//!
//! The data path reads top to bottom: [`normalize`] turns a source record
//! into a [`merge::ChangeEvent`], [`merge`] applies it to the key's state
//! (pure, no I/O), [`output`] encodes the merged record, and [`pipeline`]
//! strings them together for every front end (`replay` now, `run` later).
#![deny(missing_docs)]

pub mod admin;
pub mod avro;
pub mod config;
pub mod demo;
pub mod load;
pub mod merge;
pub mod metrics;
pub mod normalize;
pub mod output;
pub mod pipeline;
pub mod replay;
pub mod run;
pub mod sink;
pub mod store;
