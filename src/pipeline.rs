//! The data path, front-end independent: normalize → merge → encode.
//!
//! `tributary replay` drives it from a dump file; `tributary run` will drive
//! it from a consumer. Both call [`Pipeline::process`], so what a replay
//! shows is what the processor does.

use std::collections::HashMap;
use std::convert::Infallible;

use crate::config::Config;
use crate::merge::{Applied, KeyState, MergeEngine};
use crate::normalize::{InputRecord, NormalizeError, NormalizeErrorKind, Normalized, SourceNormalizer};
use crate::output::{encode_owned, OutputRecord};

/// Where key states live. The processor's store is on disk with a
/// changelog; replay keeps them in memory.
pub trait StateStore {
    /// Store failure.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Runs `f` on the state of `key` (empty when none is stored) and keeps the
    /// result; an empty state afterwards is not kept.
    fn update<R>(&mut self, key: &str, f: impl FnOnce(&mut KeyState) -> R) -> Result<R, Self::Error>;
}

/// An in-memory state store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    states: HashMap<String, KeyState>,
}

impl MemoryStore {
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The state of a key.
    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.states.get(key)
    }
}

impl StateStore for MemoryStore {
    type Error = Infallible;

    fn update<R>(&mut self, key: &str, f: impl FnOnce(&mut KeyState) -> R) -> Result<R, Infallible> {
        if let Some(state) = self.states.get_mut(key) {
            return Ok(f(state));
        }
        let mut state = KeyState::default();
        let r = f(&mut state);
        if !state.is_empty() {
            self.states.insert(key.to_string(), state);
        }
        Ok(r)
    }
}

/// What one input record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A Debezium tombstone: nothing to do.
    Ignored {
        /// Source name.
        source: String,
    },
    /// Superseded by a stored version: dropped.
    Stale {
        /// Source name.
        source: String,
    },
    /// Same clock and content as a stored version: dropped.
    Duplicate {
        /// Source name.
        source: String,
    },
    /// The state changed: a new merged record.
    Emitted {
        /// Source name.
        source: String,
        /// The record for the output topic.
        record: OutputRecord,
        /// Versions in the key's set after the event (> 1: a live conflict).
        siblings: usize,
        /// The event's own commit time (ms).
        event_ts: i64,
    },
}

/// Why a record could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError<E: std::error::Error + 'static> {
    /// The record is bad: dead-letter it and go on.
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
    /// The state store failed: not the record's fault.
    #[error("state store: {0}")]
    Store(#[source] E),
    /// The merged record could not be encoded (Avro output). The key's state
    /// has changed already: the caller must discard the open cycle.
    #[error("{position}: {error}")]
    Output {
        /// The record whose event made the output.
        position: crate::normalize::RecordPosition,
        /// The configured source name.
        source_name: String,
        /// What went wrong.
        error: crate::avro::output::OutputError,
    },
}

/// Why [`Pipeline::process`] stopped inside the store update: the source
/// name, and what went wrong.
enum Failure {
    Output(String, crate::avro::output::OutputError),
    Refused(String, crate::merge::Refusal),
}

/// Normalizers per topic plus the merge engine.
#[derive(Debug)]
pub struct Pipeline {
    sources: HashMap<String, SourceNormalizer>,
    engine: MergeEngine,
    avro_output: Option<std::sync::Arc<crate::avro::output::AvroOutput>>,
    /// Per source: writes to `owner` columns it does not own (kept only as a
    /// fallback while the owner has written nothing), not yet taken.
    foreign_owner_writes: HashMap<String, std::sync::atomic::AtomicU64>,
}

impl Pipeline {
    /// Builds the pipeline of a (validated) configuration.
    pub fn new(config: &Config) -> Self {
        Self::with_avro(config, None)
    }

    /// [`new`](Self::new) with the registry connection Avro sources and
    /// Avro output need (`output.format = "avro"` encodes with it).
    pub fn with_avro(config: &Config, avro: Option<&crate::avro::AvroContext>) -> Self {
        let avro_output = match (config.output.format, avro) {
            (crate::config::OutputFormat::Avro, Some(ctx)) => Some(std::sync::Arc::new(crate::avro::output::AvroOutput::new(
                ctx.registry.clone(),
                ctx.catalog.clone(),
                &config.output.topic,
                config.sources.iter().map(|s| s.name.clone()).collect(),
                config.sources.iter().find_map(|s| s.key_fields.clone()),
            ))),
            _ => None,
        };
        Self {
            sources: config
                .sources
                .iter()
                .map(|s| (s.topic.clone(), SourceNormalizer::with_avro(s, config.merge.policy, avro)))
                .collect(),
            engine: MergeEngine::new(config.merge_settings()),
            avro_output,
            foreign_owner_writes: config.sources.iter().map(|s| (s.name.clone(), Default::default())).collect(),
        }
    }

    /// Takes the counts of writes to `owner` columns by sources that do not
    /// own them, per source, since the last call.
    pub fn take_foreign_owner_writes(&self) -> Vec<(&str, u64)> {
        self.foreign_owner_writes
            .iter()
            .filter_map(|(s, n)| match n.swap(0, std::sync::atomic::Ordering::Relaxed) {
                0 => None,
                n => Some((s.as_str(), n)),
            })
            .collect()
    }

    /// Takes the counts of each `where` filter since the last call:
    /// (source, matched, dropped), for sources with a filter.
    pub fn take_filter_counts(&self) -> Vec<(&str, u64, u64)> {
        self.sources
            .values()
            .filter_map(|n| n.filter_counts().map(|c| c.take()).map(|(matched, dropped)| (n.source(), matched, dropped)))
            .collect()
    }

    /// The Avro output encoder, when the output is Avro.
    pub fn avro_output(&self) -> Option<&std::sync::Arc<crate::avro::output::AvroOutput>> {
        self.avro_output.as_ref()
    }

    /// The merge engine.
    pub fn engine(&self) -> &MergeEngine {
        &self.engine
    }

    /// Processes one record against `store`.
    pub fn process<S: StateStore>(&self, record: &InputRecord<'_>, store: &mut S) -> Result<Step, ProcessError<S::Error>> {
        let normalizer = self.sources.get(record.topic).ok_or_else(|| NormalizeError {
            position: record.into(),
            source_name: None,
            kind: NormalizeErrorKind::UnknownTopic,
        })?;
        let source = normalizer.source().to_string();
        let mut event = match normalizer.normalize(record)? {
            Normalized::Tombstone | Normalized::Filtered => return Ok(Step::Ignored { source }),
            Normalized::Event(e) => e,
        };
        // `apply` does not read the key: move it out, to end in the output record.
        let key = std::mem::take(&mut event.key);
        let event_ts = event.ts;
        let engine = &self.engine;
        let avro = self.avro_output.as_deref();
        let key_ref = &key;
        let foreign = &self.foreign_owner_writes;
        let step = store
            .update(&key, |state| {
                let report = engine.apply_reported(state, event);
                // Looked up only when there is something to count: no hashing per event.
                if report.foreign_owner_writes > 0 {
                    if let Some(n) = foreign.get(&source) {
                        n.fetch_add(u64::from(report.foreign_owner_writes), std::sync::atomic::Ordering::Relaxed);
                    }
                }
                match report.applied {
                    // A column rule cannot take the event: the state is as it
                    // was, and the record is a dead letter like a bad one.
                    Applied::Refused => {
                        let refusal = report.refused.expect("a refused event says why");
                        Err(Failure::Refused(source, refusal))
                    }
                    Applied::Stale => Ok(Step::Stale { source }),
                    Applied::Duplicate => Ok(Step::Duplicate { source }),
                    Applied::Changed => {
                        let resolved = engine.resolve(state);
                        // The newest commit time in the set: a function of the state,
                        // so the last record per key is the same in every interleaving.
                        let ts = state.versions.iter().map(|v| v.ts).max().unwrap_or(0).max(0);
                        // The key is filled in below, once the store has done with it.
                        let mut out = match avro {
                            None => encode_owned(record.partition, String::new(), &resolved, ts),
                            Some(_) => crate::output::without_value(record.partition, String::new(), &resolved, ts),
                        };
                        if let Some(avro) = avro {
                            match avro.encode(key_ref, resolved.row.as_deref()) {
                                Ok((k, v)) => {
                                    out.key_bytes = Some(k);
                                    out.value = v;
                                }
                                Err(error) => return Err(Failure::Output(source, error)),
                            }
                        }
                        Ok(Step::Emitted { source, record: out, siblings: resolved.siblings, event_ts })
                    }
                }
            })
            .map_err(ProcessError::Store)?
            .map_err(|failure| match failure {
                Failure::Output(source_name, error) => ProcessError::Output { position: record.into(), source_name, error },
                Failure::Refused(source_name, refusal) => ProcessError::Normalize(NormalizeError {
                    position: record.into(),
                    source_name: Some(source_name),
                    kind: NormalizeErrorKind::Refused(Box::new(refusal)),
                }),
            })?;
        Ok(match step {
            Step::Emitted { source, mut record, siblings, event_ts } => {
                record.key = key;
                Step::Emitted { source, record, siblings, event_ts }
            }
            other => other,
        })
    }
}
