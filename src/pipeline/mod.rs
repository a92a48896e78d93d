//! The data path, front-end independent: normalize → merge → encode.
//!
//! `tributary replay` drives it from a dump file; `tributary run` will drive
//! it from a consumer. Both call [`Pipeline::process`], so what a replay
//! shows is what the processor does.

use std::collections::HashMap;
use std::convert::Infallible;

use crate::config::Config;
use crate::merge::{Applied, KeyState, MergeEngine, MergedRow};
use crate::normalize::{InputRecord, NormalizeError, NormalizeErrorKind, Normalized, RecordPosition, SourceNormalizer};
use crate::output::{encode_owned, OutputRecord};

/// What a [`StateStore::try_update`] function did with the state.
#[derive(Debug)]
pub enum Verdict<T> {
    /// Left it as it was.
    Unchanged(T),
    /// Changed it: the change is kept.
    Changed(T),
    /// Changed it, but the change must not be kept: the store puts the
    /// state back as it was before the function ran.
    Undo(T),
}

/// Where key states live. The processor's store is on disk with a
/// changelog; replay keeps them in memory.
pub trait StateStore {
    /// Store failure.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Runs `f` on the state of `key` (empty when none is stored) and keeps the
    /// result; an empty state afterwards is not kept.
    fn update<R>(&mut self, key: &str, f: impl FnOnce(&mut KeyState) -> R) -> Result<R, Self::Error>;
    /// Runs `f` on the state of `key` and keeps or undoes what it did, as its
    /// [`Verdict`] says. `may_undo` false promises no [`Verdict::Undo`]: a
    /// store that can only undo from a copy then makes none.
    fn try_update<T>(&mut self, key: &str, may_undo: bool, f: impl FnOnce(&mut KeyState) -> Verdict<T>)
        -> Result<T, Self::Error>;
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

    fn try_update<T>(&mut self, key: &str, may_undo: bool, f: impl FnOnce(&mut KeyState) -> Verdict<T>) -> Result<T, Infallible> {
        let Some(state) = self.states.get_mut(key) else {
            let mut state = KeyState::default();
            return Ok(match f(&mut state) {
                Verdict::Changed(t) | Verdict::Unchanged(t) => {
                    if !state.is_empty() {
                        self.states.insert(key.to_string(), state);
                    }
                    t
                }
                Verdict::Undo(t) => t,
            });
        };
        // Only a copy can undo here: made when an undo may come.
        let before = may_undo.then(|| state.clone());
        Ok(match f(state) {
            Verdict::Changed(t) | Verdict::Unchanged(t) => t,
            Verdict::Undo(t) => {
                *state = before.expect("an undo was announced");
                t
            }
        })
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
        /// The winning source (row-level policies).
        winner: Option<String>,
        /// The key's new state, encoded for the store and the changelog
        /// (when the pipeline has a record limit: see [`Pipeline::with_record_limit`]).
        state: Option<Vec<u8>>,
        /// Versions in the key's set after the event (> 1: a live conflict).
        siblings: usize,
        /// The event's own commit time (ms).
        event_ts: i64,
    },
}

/// Why a record goes to the dead letters (or, when
/// [retriable](DeadLetterReason::is_retriable), waits for the registry).
/// The [`reason`](Self::reason) labels are the `tributary.error.reason`
/// header and the `tributary_dead_letters_total{reason}` label values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeadLetterReason {
    /// The record cannot be normalized.
    #[error(transparent)]
    Input(#[from] NormalizeErrorKind),
    /// A column rule cannot merge the event (a `counter` column holding no
    /// number, or an update without the `before` value a counter needs).
    #[error("{0}")]
    Refused(Box<crate::merge::Refusal>),
    /// Merging the event would make the key's output or changelog record
    /// larger than a Kafka record may be.
    #[error("the merged record of key {key} would be {bytes} bytes, over the {limit}-byte record limit; the event is set aside")]
    TooLarge {
        /// The canonical key.
        key: String,
        /// The size it would have.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The merged record cannot be encoded for the Avro output (it does not
    /// fit the output schema, a schema conflict, the registry refused or is
    /// unavailable).
    #[error(transparent)]
    Output(crate::avro::output::OutputError),
}

impl DeadLetterReason {
    /// A short, bounded label for metrics and the dead-letter header.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Input(kind) => kind.reason(),
            Self::Refused(refusal) => refusal.reason(),
            Self::TooLarge { .. } => "too_large",
            Self::Output(error) => error.reason(),
        }
    }

    /// True when the record is not at fault and processing it later may
    /// succeed (the schema registry is unavailable): not a dead letter.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Input(kind) => kind.is_retriable(),
            Self::Output(error) => error.is_retriable(),
            Self::Refused(_) | Self::TooLarge { .. } => false,
        }
    }
}

/// A record the pipeline refuses: where it is, its source and why. The
/// key's state is as it was before the record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{position}: {}", Clipped(&.reason, MAX_ERROR_TEXT))]
pub struct DeadLetter {
    /// The record's position.
    pub position: RecordPosition,
    /// The configured source name, when the topic belongs to one.
    pub source_name: Option<String>,
    /// Why.
    pub reason: DeadLetterReason,
}

/// The most bytes of a dead letter's reason that its text (the
/// `tributary.error` header, the log line) carries. Some reasons quote the
/// input (an unsupported `op`, a bad value): a multi-megabyte quote would
/// make the dead letter itself too large for its topic, failing the cycle
/// again on every retry.
pub const MAX_ERROR_TEXT: usize = 4096;

/// Displays at most `.1` bytes of `.0` (cut at a character boundary), and
/// then how many bytes were left out.
struct Clipped<'a, T>(&'a T, usize);

impl<T: std::fmt::Display> std::fmt::Display for Clipped<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// Passes text on until `left` runs out, then counts what it drops.
        struct Limit<'a, 'b> {
            out: &'a mut std::fmt::Formatter<'b>,
            left: usize,
            dropped: usize,
        }
        impl std::fmt::Write for Limit<'_, '_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                if self.dropped > 0 || s.len() > self.left {
                    let mut cut = self.left.min(s.len());
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    self.out.write_str(&s[..cut])?;
                    self.left = 0;
                    self.dropped += s.len() - cut;
                    return Ok(());
                }
                self.left -= s.len();
                self.out.write_str(s)
            }
        }
        let mut limit = Limit { out: f, left: self.1, dropped: 0 };
        std::fmt::write(&mut limit, format_args!("{}", self.0))?;
        match limit.dropped {
            0 => Ok(()),
            n => write!(f, "… ({n} more bytes of this error left out)"),
        }
    }
}

impl From<NormalizeError> for DeadLetter {
    fn from(e: NormalizeError) -> Self {
        Self { position: e.position, source_name: e.source_name, reason: DeadLetterReason::Input(e.kind) }
    }
}

/// Why a record could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError<E: std::error::Error + 'static> {
    /// The record cannot be processed: dead-letter it and go on (or, when
    /// its reason is retriable, wait and retry).
    #[error(transparent)]
    Rejected(Box<DeadLetter>),
    /// The state store failed: not the record's fault.
    #[error("state store: {0}")]
    Store(#[source] E),
}

impl<E: std::error::Error + 'static> From<NormalizeError> for ProcessError<E> {
    fn from(e: NormalizeError) -> Self {
        Self::Rejected(Box::new(e.into()))
    }
}

impl<E: std::error::Error + 'static> From<DeadLetter> for ProcessError<E> {
    fn from(e: DeadLetter) -> Self {
        Self::Rejected(Box::new(e))
    }
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
    /// The largest output or changelog record accepted (bytes), when checked.
    record_limit: Option<usize>,
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
            record_limit: None,
        }
    }

    /// Checks every merged record against `limit` (bytes: the larger of the
    /// output value and the encoded state, plus key and headers) and
    /// returns the encoded state with it ([`Step::Emitted::state`]). A
    /// record over the limit is refused ([`DeadLetterReason::TooLarge`])
    /// and leaves the key's state as it was.
    pub fn with_record_limit(mut self, limit: usize) -> Self {
        self.record_limit = Some(limit);
        self
    }

    /// Reads the sources whose topics are `topics` as repartition topics:
    /// each record stands for the original its origin headers name (see
    /// [`crate::repartition`]). Other sources ignore such headers.
    ///
    /// # Panics
    /// When a topic belongs to no source (a caller bug).
    pub fn with_repartitioned<'t>(mut self, topics: impl IntoIterator<Item = &'t str>) -> Self {
        for topic in topics {
            let normalizer =
                self.sources.remove(topic).unwrap_or_else(|| panic!("repartition topic {topic} belongs to no source"));
            self.sources.insert(topic.to_string(), normalizer.repartitioned());
        }
        self
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

    /// Processes one record against `store`: a step, or a refusal that
    /// leaves the key's state as it was.
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
        let avro = self.avro_output.as_deref();
        if let Some(avro) = avro {
            // Schemas the event brought are registered here, outside the
            // store's update; encoding inside it then finds them current.
            // A schema the output cannot take is reported by the encoding,
            // for the events whose rows need it.
            if let Err(error) = avro.refresh() {
                if error.is_retriable() {
                    return Err(DeadLetter {
                        position: record.into(),
                        source_name: Some(source),
                        reason: DeadLetterReason::Output(error),
                    }
                    .into());
                }
            }
        }
        // `apply` does not read the key: move it out, to end in the output record.
        let key = std::mem::take(&mut event.key);
        let event_ts = event.ts;
        let engine = &self.engine;
        let emit = Emit { engine, avro, limit: self.record_limit, key: &key, partition: record.partition, event_ts };
        let foreign = &self.foreign_owner_writes;
        // A refusal takes the change back: the engine does it for the
        // row-level policies (no copy); under `field-lww` the store does.
        let may_refuse = avro.is_some() || self.record_limit.is_some();
        let may_undo = may_refuse && !engine.undoes_without_copy();
        let step = store
            .try_update(&key, may_undo, |state| {
                let (report, undo) =
                    if may_refuse { engine.apply_undoable(state, event) } else { (engine.apply_reported(state, event), None) };
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
                        Verdict::Unchanged(Err((source, DeadLetterReason::Refused(Box::new(refusal)))))
                    }
                    Applied::Stale => Verdict::Unchanged(Ok(Step::Stale { source })),
                    Applied::Duplicate => Verdict::Unchanged(Ok(Step::Duplicate { source })),
                    Applied::Changed => match emitted(&emit, source, state) {
                        Ok(step) => Verdict::Changed(Ok(step)),
                        Err(refused) => match undo {
                            Some(undo) => {
                                engine.undo(state, undo);
                                Verdict::Unchanged(Err(refused))
                            }
                            None => Verdict::Undo(Err(refused)),
                        },
                    },
                }
            })
            .map_err(ProcessError::Store)?
            .map_err(|(source_name, reason)| DeadLetter { position: record.into(), source_name: Some(source_name), reason })?;
        Ok(match step {
            Step::Emitted { source, mut record, winner, state, siblings, event_ts } => {
                record.key = key;
                Step::Emitted { source, record, winner, state, siblings, event_ts }
            }
            other => other,
        })
    }
}

/// The pipeline's parts that turn a changed state into a [`Step::Emitted`].
struct Emit<'a> {
    engine: &'a MergeEngine,
    avro: Option<&'a crate::avro::output::AvroOutput>,
    limit: Option<usize>,
    key: &'a str,
    partition: i32,
    event_ts: i64,
}

/// The step of `source`'s event that changed `state` (the output record's
/// key left empty: the caller fills it in), or why the change cannot be
/// kept.
fn emitted(e: &Emit<'_>, source: String, state: &KeyState) -> Result<Step, (String, DeadLetterReason)> {
    match emitted_record(e, state) {
        Ok((record, winner, siblings, state)) => {
            Ok(Step::Emitted { source, record, winner, state, siblings, event_ts: e.event_ts })
        }
        Err(reason) => Err((source, reason)),
    }
}

type EmittedRecord = (OutputRecord, Option<String>, usize, Option<Vec<u8>>);

/// The output record, the winner, the number of versions and, with a
/// record limit, the encoded state.
fn emitted_record(e: &Emit<'_>, state: &KeyState) -> Result<EmittedRecord, DeadLetterReason> {
    let Emit { engine, avro, limit, key, partition, .. } = *e;
    let resolved = engine.resolve(state);
    // The newest commit time in the set: a function of the state,
    // so the last record per key is the same in every interleaving.
    let ts = state.versions.iter().map(|v| v.ts).max().unwrap_or(0).max(0);
    let out = match avro {
        None => encode_owned(partition, String::new(), &resolved, ts),
        Some(avro) => {
            let mut out = crate::output::without_value(partition, String::new(), &resolved, ts);
            let (k, v) = avro.encode(key, resolved.row.as_deref()).map_err(DeadLetterReason::Output)?;
            out.key_bytes = Some(k);
            out.value = v;
            out
        }
    };
    let winner = resolved.winner.map(str::to_string);
    let siblings = resolved.siblings;
    // The JSON output of a stored row unchanged is that row's text: the
    // state encoding below writes it rather than serializing the row again.
    let known = match (&resolved.row, avro, &out.value) {
        (Some(MergedRow::Stored(row)), None, Some(text)) => Some((*row, text.as_slice())),
        _ => None,
    };
    let Some(limit) = limit else { return Ok((out, winner, siblings, None)) };
    let encoded = crate::avro::state::encode_state_knowing(state, known);
    let key_len = out.key_bytes.as_ref().map_or(key.len(), Vec::len);
    let header_bytes: usize = out.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    let bytes = key_len + header_bytes + encoded.len().max(out.value.as_ref().map_or(0, Vec::len));
    if bytes > limit {
        return Err(DeadLetterReason::TooLarge { key: key.to_string(), bytes, limit });
    }
    Ok((out, winner, siblings, Some(encoded)))
}

#[cfg(test)]
mod tests;
