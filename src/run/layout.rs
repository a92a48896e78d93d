//! What start-up learns about the topics: per table, its partition count,
//! which sources are re-keyed, its output, changelog and repartition topics;
//! for every table together, the dead-letter and audit topics and the
//! largest record every written topic takes.

use std::collections::{BTreeMap, BTreeSet};

use super::startup::Probe;
use super::{
    conflicts_topic, dlq_topic, table_changelog_topic, topics, RunError, LIBRDKAFKA_MESSAGE_MAX_BYTES, MAX_RECORD_BYTES,
    RECORD_OVERHEAD, TIMEOUT,
};
use crate::config::{Config, Repartition, TableConfig};

/// What start-up learned about a table's topics.
pub(super) struct TableLayout {
    pub(super) name: String,
    pub(super) store_name: Option<String>,
    /// The table's configuration as its tasks consume it: a repartitioned
    /// source's topic is its repartition topic.
    pub(super) config: Config,
    /// The table's configuration with the sources' own topics (re-keying
    /// reads those).
    pub(super) original: Config,
    pub(super) partitions: i32,
    pub(super) changelog: String,
    pub(super) changelog_id: String,
    pub(super) changelog_delete_retention_ms: i64,
    /// Sources not co-partitioned with the table: (source, its topic, the
    /// repartition topic).
    pub(super) rekeyed: Vec<(String, String, String)>,
}

impl TableLayout {
    /// (source name, topic) of every topic the table consumes, for pausing.
    pub(super) fn switches(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self.config.sources.iter().map(|s| (s.name.clone(), s.topic.clone())).collect();
        out.extend(self.rekeyed.iter().map(|(source, topic, _)| (source.clone(), topic.clone())));
        out
    }
}

/// The table's partition count and which sources are re-keyed: sources
/// with `repartition = "always"`, and `auto` ones whose partition count is
/// not the table's. The table's count is the one its `never` sources have
/// (they must agree), else the most common among the others (the larger on
/// a tie), else (every source re-keyed) the largest.
pub(super) fn plan_partitions(table: &TableConfig, counts: &BTreeMap<String, i32>) -> Result<(i32, Vec<usize>), RunError> {
    let count = |s: &crate::config::SourceConfig| counts.get(&s.topic).copied().unwrap_or(0);
    let never: BTreeSet<i32> = table.sources.iter().filter(|s| s.repartition == Repartition::Never).map(count).collect();
    let listing = || RunError::CoPartitioning { counts: table.sources.iter().map(|s| (s.topic.clone(), count(s))).collect() };
    if never.len() > 1 {
        return Err(listing());
    }
    let partitions = match never.first() {
        Some(n) => *n,
        None => {
            let mut freq: BTreeMap<i32, usize> = BTreeMap::new();
            for s in table.sources.iter().filter(|s| s.repartition != Repartition::Always) {
                *freq.entry(count(s)).or_default() += 1;
            }
            match freq.iter().max_by_key(|(n, f)| (**f, **n)) {
                Some((n, _)) => *n,
                None => table.sources.iter().map(count).max().unwrap_or(1),
            }
        }
    };
    let mut rekeyed = Vec::new();
    for (i, s) in table.sources.iter().enumerate() {
        let differs = count(s) != partitions;
        match s.repartition {
            Repartition::Never if differs => return Err(listing()),
            Repartition::Always => rekeyed.push(i),
            Repartition::Auto if differs => rekeyed.push(i),
            _ => {}
        }
    }
    Ok((partitions, rekeyed))
}

/// Reads the sources' partition counts, plans the repartitioning, creates
/// or validates the table's output, changelog and repartition topics
/// (unless the caller manages them) and reads the changelog's identity.
pub(super) async fn prepare_table(
    config: &Config,
    table: &TableConfig,
    kafka: &Probe,
    manage_topics: bool,
) -> Result<TableLayout, RunError> {
    let source_topics: Vec<String> = table.sources.iter().map(|s| s.topic.clone()).collect();
    let counts = topics::partition_counts(&kafka.consumer, &source_topics, TIMEOUT)?;
    let (partitions, rekeyed_idx) = plan_partitions(table, &counts)?;
    let group = &config.kafka.group_id;
    let store_name = (!table.is_default()).then(|| table.name.clone());
    let changelog = table_changelog_topic(group, store_name.as_deref());
    let original = config.for_table(table);
    let mut consumed = original.clone();
    let mut rekeyed = Vec::new();
    for i in rekeyed_idx {
        let source = &mut consumed.sources[i];
        let topic = crate::repartition::repartition_topic(group, &table.name, &source.name);
        tracing::info!(
            table = %table.name,
            source = %source.name,
            topic = %source.topic,
            partitions = counts.get(&source.topic).copied().unwrap_or(0),
            table_partitions = partitions,
            repartition_topic = %topic,
            "source is not co-partitioned with its table: its records are re-keyed through a repartition topic"
        );
        rekeyed.push((source.name.clone(), source.topic.clone(), topic.clone()));
        source.topic = topic;
    }
    let mut specs = vec![
        topics::TopicSpec {
            name: original.output.topic.clone(),
            role: "output",
            cleanup_policy: "compact",
            // How long readers (sinks) still see a deleted key's tombstone;
            // a sink away for longer resynchronises.
            configs: vec![("delete.retention.ms", original.output_delete_retention().as_millis().to_string())],
            any_partitions: false,
        },
        topics::TopicSpec {
            name: changelog.clone(),
            role: "changelog",
            cleanup_policy: "compact",
            configs: vec![],
            any_partitions: false,
        },
    ];
    specs.extend(rekeyed.iter().map(|(_, _, topic)| topics::TopicSpec {
        name: topic.clone(),
        role: "repartition",
        cleanup_policy: "delete",
        // Consumed records are deleted after commits (run::repartition::Purge); retention only
        // bounds what a processor that stays away leaves behind.
        configs: vec![("retention.ms", REPARTITION_RETENTION_MS.to_string())],
        any_partitions: false,
    }));
    let (changelog_id, changelog_delete_retention_ms) = if manage_topics {
        ensure(config, kafka, &specs, partitions).await?;
        // What a task's checkpoint belongs to, and how long the changelog keeps
        // null records: together they decide whether local state is trusted.
        let (retention, _) = topics::retention_settings(&kafka.admin, &changelog, TIMEOUT).await?;
        (topics::topic_identity(kafka.admin.inner(), &changelog, TIMEOUT)?, retention.unwrap_or(86_400_000))
    } else {
        // librdkafka's mock cluster (the demo) has no DescribeTopics: the
        // bootstrap address stands in, as the mock lives as long as the demo.
        (format!("mock/{}", config.kafka.bootstrap_servers), 86_400_000)
    };
    tracing::debug!(table = %table.name, changelog = %changelog, identity = %changelog_id, delete_retention_ms = changelog_delete_retention_ms, "changelog");
    tracing::info!(table = %table.name, partitions, repartitioned = rekeyed.len(), "table ready");
    Ok(TableLayout {
        name: table.name.clone(),
        store_name,
        config: consumed,
        original,
        partitions,
        changelog,
        changelog_id,
        changelog_delete_retention_ms,
        rekeyed,
    })
}

/// Retention of repartition topics (7 days, as Kafka Streams sets it).
const REPARTITION_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// What every table shares.
pub(super) struct SharedLayout {
    pub(super) dlq: String,
    pub(super) audit: Option<String>,
    /// Largest merged record accepted (key plus value).
    pub(super) record_limit: usize,
    /// Partitions of the dead-letter and audit topics (the fewer of the two).
    pub(super) partitions: i32,
}

/// Creates or validates the dead-letter and audit topics that every table
/// shares, and reads the largest record every written topic takes.
pub(super) async fn prepare_shared(
    config: &Config,
    layouts: &[TableLayout],
    kafka: &Probe,
    manage_topics: bool,
) -> Result<SharedLayout, RunError> {
    let group = &config.kafka.group_id;
    let dlq = dlq_topic(group);
    let audit = config.audit.enabled.then(|| conflicts_topic(group));
    // One table: as many partitions as it has (a dead letter goes to its
    // source partition). Several: the most any table has; an existing topic
    // may have any count (records go to partition p mod n).
    let several = layouts.len() > 1 || config.tables_pattern.is_some();
    let partitions = layouts.iter().map(|l| l.partitions).max().unwrap_or(1);
    let mut specs = vec![topics::TopicSpec {
        name: dlq.clone(),
        role: "dead-letter",
        cleanup_policy: "delete",
        configs: vec![],
        any_partitions: several,
    }];
    specs.extend(audit.iter().map(|t| topics::TopicSpec {
        name: t.clone(),
        role: "conflict audit",
        cleanup_policy: "delete",
        configs: vec![],
        any_partitions: several,
    }));
    let record_limit = if manage_topics {
        ensure(config, kafka, &specs, partitions).await?;
        // The largest record the output and changelog topics take, and the
        // producer: a larger merged record is set aside before the broker
        // would refuse it (which would fail the cycle again on every retry).
        // Every topic a cycle writes to: outputs, changelogs, repartition
        // topics, dead letters, audit.
        let mut written: Vec<&str> = vec![dlq.as_str()];
        written.extend(audit.as_deref());
        for l in layouts {
            written.push(l.config.output.topic.as_str());
            written.push(l.changelog.as_str());
            written.extend(l.rekeyed.iter().map(|(_, _, t)| t.as_str()));
        }
        let topic_limit = topics::max_message_bytes(&kafka.admin, &written, TIMEOUT).await?;
        let producer_limit = config
            .kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(LIBRDKAFKA_MESSAGE_MAX_BYTES);
        topic_limit.map_or(producer_limit, |t| t.min(producer_limit)).saturating_sub(RECORD_OVERHEAD)
    } else {
        MAX_RECORD_BYTES
    };
    tracing::info!(record_limit, "largest merged record accepted (bytes)");
    let shared_partitions = if manage_topics {
        let mut names = vec![dlq.clone()];
        names.extend(audit.iter().cloned());
        topics::partition_counts(&kafka.consumer, &names, TIMEOUT)?.values().copied().min().unwrap_or(partitions)
    } else {
        partitions
    };
    Ok(SharedLayout { dlq, audit, record_limit, partitions: shared_partitions.max(1) })
}

/// Creates or validates `specs` with `partitions` partitions and the
/// configured replication factor.
async fn ensure(config: &Config, kafka: &Probe, specs: &[topics::TopicSpec], partitions: i32) -> Result<(), RunError> {
    let replication = config.kafka.replication_factor.unwrap_or(-1);
    topics::ensure_topics(&kafka.admin, &kafka.consumer, specs, partitions, replication, TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sources: &[(&str, &str)]) -> TableConfig {
        let mut text = String::from("[output]\ntopic = \"o\"\n");
        for (name, repartition) in sources {
            text.push_str(&format!("[[sources]]\nname = \"{name}\"\ntopic = \"t-{name}\"\nrepartition = \"{repartition}\"\n"));
        }
        Config::parse(&text, "test", std::iter::empty()).unwrap().tables().remove(0)
    }

    fn counts(c: &[(&str, i32)]) -> BTreeMap<String, i32> {
        c.iter().map(|(n, p)| (format!("t-{n}"), *p)).collect()
    }

    #[test]
    fn the_table_takes_the_common_count_and_re_keys_the_others() {
        let t = table(&[("eu", "auto"), ("us", "auto"), ("erp", "auto")]);
        assert_eq!(plan_partitions(&t, &counts(&[("eu", 3), ("us", 3), ("erp", 2)])).unwrap(), (3, vec![2]));
        // Co-partitioned: no detour.
        assert_eq!(plan_partitions(&t, &counts(&[("eu", 3), ("us", 3), ("erp", 3)])).unwrap(), (3, vec![]));
        // A tie goes to the larger count.
        let two = table(&[("eu", "auto"), ("erp", "auto")]);
        assert_eq!(plan_partitions(&two, &counts(&[("eu", 2), ("erp", 4)])).unwrap(), (4, vec![0]));
    }

    #[test]
    fn never_pins_the_count_and_always_re_keys_whatever_it_has() {
        let t = table(&[("eu", "never"), ("us", "auto"), ("crm", "always")]);
        assert_eq!(plan_partitions(&t, &counts(&[("eu", 2), ("us", 3), ("crm", 2)])).unwrap(), (2, vec![1, 2]));
        let clash = table(&[("eu", "never"), ("us", "never")]);
        let e = plan_partitions(&clash, &counts(&[("eu", 2), ("us", 3)])).unwrap_err();
        assert!(e.to_string().contains("co-partitioning violated") && e.to_string().contains("t-us: 3 partitions"), "{e}");
        // Every source re-keyed: the largest count.
        let all = table(&[("eu", "always"), ("us", "always")]);
        assert_eq!(plan_partitions(&all, &counts(&[("eu", 2), ("us", 5)])).unwrap(), (5, vec![0, 1]));
    }
}
