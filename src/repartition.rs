//! Re-keying for sources that are not co-partitioned with their table (the
//! pure part: no Kafka I/O). A record of such a source is written to the
//! table's repartition topic for the source, keyed by its canonical key and
//! placed by murmur2 as a Java producer would place it, so that it arrives
//! in the task that holds its key. Its value and headers travel unchanged;
//! origin headers name the original record, and the repartition topic's
//! normalizer ([`SourceNormalizer::repartitioned`]) reads them so that the
//! event it gives is the one the original record gives: same key, same
//! derived clock, same row. See doc/DESIGN.md, "Repartitioning".

use crate::config::Config;
use crate::kafka::murmur2_partition;
use crate::normalize::{InputRecord, NormalizeErrorKind, SourceNormalizer};
use crate::pipeline::{DeadLetter, DeadLetterReason};

pub use crate::normalize::{ORIGIN_KEY_HEADER, ORIGIN_OFFSET_HEADER, ORIGIN_PARTITION_HEADER, ORIGIN_TOPIC_HEADER};

/// The repartition topic of `source` in `table` (the single table of a
/// legacy configuration is `default`).
pub fn repartition_topic(group_id: &str, table: &str, source: &str) -> String {
    format!("{group_id}-{table}-{source}-repartition")
}

/// A record ready for the repartition topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rekeyed {
    /// The canonical key's bytes (as the output records of a JSON output are
    /// keyed).
    pub key: Vec<u8>,
    /// `murmur2(key) % partitions`, as the Java clients' default partitioner.
    pub partition: i32,
    /// The original value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// The original headers, then the origin headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The re-keying of one source of one table.
#[derive(Debug)]
pub struct Rekeyer {
    normalizer: SourceNormalizer,
    partitions: i32,
}

/// A [`Rekeyer`] that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RekeyerError {
    /// The configuration has no source of that name.
    #[error("no source named {0:?} in the table's configuration")]
    UnknownSource(String),
    /// A topic has at least one partition.
    #[error("the table's partition count must be positive, not {0}")]
    Partitions(i32),
}

/// A record that cannot be re-keyed: normalizing it would fail the same
/// way, so it is a dead letter of its source (or, when
/// [retriable](Self::is_retriable), waits for the schema registry).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("source {source_name}: cannot re-key the record: {kind}")]
pub struct RekeyError {
    /// The configured source.
    pub source_name: String,
    /// Why: what normalizing the record reports.
    pub kind: NormalizeErrorKind,
}

impl RekeyError {
    /// The dead-letter reason (its label is the normalization's).
    pub fn reason(&self) -> DeadLetterReason {
        DeadLetterReason::Input(self.kind.clone())
    }

    /// True when the record is not at fault (the registry is unavailable).
    pub fn is_retriable(&self) -> bool {
        self.kind.is_retriable()
    }

    /// The dead letter of `record`, the record that could not be re-keyed.
    pub fn into_dead_letter(self, record: &InputRecord<'_>) -> DeadLetter {
        DeadLetter { position: record.into(), source_name: Some(self.source_name), reason: DeadLetterReason::Input(self.kind) }
    }
}

impl Rekeyer {
    /// The re-keying of `source` in `config` (the table's configuration:
    /// its key_fields, transform and format are the source's own), into a
    /// repartition topic of `partitions` partitions. `avro`: the registry
    /// an Avro source needs, as for [`crate::pipeline::Pipeline::with_avro`].
    pub fn new(
        config: &Config,
        source: &str,
        partitions: i32,
        avro: Option<&crate::avro::AvroContext>,
    ) -> Result<Self, RekeyerError> {
        let cfg = config.sources.iter().find(|s| s.name == source).ok_or_else(|| RekeyerError::UnknownSource(source.into()))?;
        if partitions <= 0 {
            return Err(RekeyerError::Partitions(partitions));
        }
        Ok(Self { normalizer: SourceNormalizer::with_avro(cfg, config.merge.policy, avro), partitions })
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        self.normalizer.source()
    }

    /// The repartition topic's partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// `record` for the repartition topic. A record that merges nothing (a
    /// tombstone, one the `where` filter drops) goes too, keyed as well as
    /// it can be: read back, it is ignored or counted by the filter as it
    /// would have been, wherever it lands.
    pub fn rekey(&self, record: &InputRecord<'_>) -> Result<Rekeyed, RekeyError> {
        let key = match self.normalizer.canonical_key(record) {
            Ok(Some(key)) => key.into_bytes(),
            Ok(None) => record.key.unwrap_or_default().to_vec(),
            Err(kind) => return Err(RekeyError { source_name: self.normalizer.source().to_string(), kind }),
        };
        let mut headers = Vec::with_capacity(record.headers.len() + 4);
        headers.extend(record.headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())));
        headers.push((ORIGIN_TOPIC_HEADER.to_string(), record.topic.as_bytes().to_vec()));
        headers.push((ORIGIN_PARTITION_HEADER.to_string(), record.partition.to_string().into_bytes()));
        headers.push((ORIGIN_OFFSET_HEADER.to_string(), record.offset.to_string().into_bytes()));
        // A null key has no header: read back, the key is null again.
        if let Some(k) = record.key {
            headers.push((ORIGIN_KEY_HEADER.to_string(), k.to_vec()));
        }
        Ok(Rekeyed { partition: murmur2_partition(&key, self.partitions), key, value: record.value.map(<[u8]>::to_vec), headers })
    }
}

#[cfg(test)]
mod tests;
