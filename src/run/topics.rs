//! Start-up checks and topic management: co-partitioning of the sources,
//! and the output, changelog and dead-letter topics (created when missing,
//! validated when present).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::quiet::QuietContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::RunError;
use crate::retry::Backoff;

/// What a topic must look like.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Its role, for messages ("output", "changelog", "dead-letter").
    pub role: &'static str,
    /// `compact` or `delete`.
    pub cleanup_policy: &'static str,
    /// Further topic configs set when Tributary creates the topic.
    pub configs: Vec<(&'static str, String)>,
    /// An existing topic may have any partition count (the shared dead-letter
    /// and audit topics of several tables: records go to partition p mod n).
    pub any_partitions: bool,
}

/// How long a source topic may be missing from metadata before start-up
/// fails: a topic created moments ago can be absent from a broker's metadata
/// for a short while, and that is not the user's mistake.
const MISSING_TOPIC_GRACE: Duration = Duration::from_secs(10);

/// Reads the partition count of every source topic and checks they agree.
/// Returns the common count.
pub fn check_co_partitioning(
    consumer: &BaseConsumer<QuietContext>,
    topics: &[String],
    timeout: Duration,
) -> Result<i32, RunError> {
    let counts = partition_counts(consumer, topics, timeout)?;
    let distinct: std::collections::BTreeSet<i32> = counts.values().copied().collect();
    if distinct.len() > 1 {
        return Err(RunError::CoPartitioning { counts: counts.into_iter().collect() });
    }
    Ok(*distinct.iter().next().expect("at least one source topic"))
}

/// The partition count of every topic of `topics`, waiting a little for
/// topics not in metadata yet.
pub fn partition_counts(
    consumer: &BaseConsumer<QuietContext>,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, RunError> {
    let deadline = std::time::Instant::now() + MISSING_TOPIC_GRACE;
    let mut counts: BTreeMap<String, Option<i32>> = BTreeMap::new();
    loop {
        for topic in topics {
            if counts.get(topic).is_some_and(|c| c.is_some()) {
                continue;
            }
            let md = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| RunError::kafka(format!("metadata of source topic {topic}"), e))?;
            let count = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .filter(|n| *n > 0);
            counts.insert(topic.clone(), count);
        }
        let missing: Vec<&str> = counts.iter().filter(|(_, c)| c.is_none()).map(|(t, _)| t.as_str()).collect();
        if missing.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(RunError::SourcesMissing { topics: missing.iter().map(|t| t.to_string()).collect(), bootstrap: None });
        }
        tracing::info!(missing = %missing.join(", "), "source topic(s) not in metadata yet; checking again");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(counts.into_iter().map(|(t, c)| (t, c.unwrap_or(0))).collect())
}

/// Creates each topic that is missing (with `partitions` partitions) and
/// validates those that exist (partition count and cleanup policy).
pub async fn ensure_topics(
    admin: &AdminClient<QuietContext>,
    consumer: &BaseConsumer<QuietContext>,
    specs: &[TopicSpec],
    partitions: i32,
    replication_factor: i32,
    timeout: Duration,
) -> Result<(), RunError> {
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    for spec in specs {
        let md = consumer
            .fetch_metadata(Some(&spec.name), timeout)
            .map_err(|e| RunError::kafka(format!("metadata of {} topic {}", spec.role, spec.name), e))?;
        let existing = md
            .topics()
            .iter()
            .find(|t| t.name() == spec.name)
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len() as i32);
        match existing {
            Some(n) if n > 0 => {
                if n != partitions && !spec.any_partitions {
                    return Err(RunError::TopicPartitions {
                        role: spec.role,
                        topic: spec.name.clone(),
                        partitions: n,
                        expected: partitions,
                    });
                }
                let described = admin
                    .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &opts)
                    .await
                    .map_err(|e| RunError::kafka(format!("describe {} topic {}", spec.role, spec.name), e))?;
                let policy = described
                    .into_iter()
                    .next()
                    .and_then(|r| r.ok())
                    .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()))
                    .unwrap_or_default();
                if spec.cleanup_policy == "compact" && !policy.split(',').any(|p| p.trim() == "compact") {
                    return Err(RunError::NotCompacted { role: spec.role, topic: spec.name.clone(), policy });
                }
                // Time-based deletion would drop the only copy of a key's
                // state that no later record replaces: a restore would then
                // silently miss keys.
                if spec.role == "changelog" && policy.split(',').any(|p| p.trim() == "delete") {
                    return Err(RunError::ChangelogDeletes { topic: spec.name.clone(), policy });
                }
            }
            _ => {
                let mut topic = NewTopic::new(&spec.name, partitions, TopicReplication::Fixed(replication_factor))
                    .set("cleanup.policy", spec.cleanup_policy);
                for (k, v) in &spec.configs {
                    topic = topic.set(k, v);
                }
                let results = admin
                    .create_topics([&topic], &opts)
                    .await
                    .map_err(|e| RunError::kafka(format!("create {} topic {}", spec.role, spec.name), e))?;
                for r in results {
                    match r {
                        Ok(_) => {
                            tracing::info!(topic = %spec.name, role = spec.role, partitions, "created topic");
                            wait_in_metadata(consumer, &spec.name, partitions, timeout)?;
                        }
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => return Err(RunError::CreateTopic { role: spec.role, topic, code }),
                    }
                }
            }
        }
    }
    Ok(())
}

/// Waits until the broker's metadata shows `topic` with `partitions`
/// partitions. CreateTopics answers once the controller has recorded the
/// topic; the broker that serves metadata learns of it a moment later, and
/// until then producing to it, assigning it or describing it fails with
/// UNKNOWN_TOPIC_OR_PART.
fn wait_in_metadata(
    consumer: &BaseConsumer<QuietContext>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), RunError> {
    let deadline = Instant::now() + MISSING_TOPIC_GRACE;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500), 2);
    loop {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| RunError::kafka(format!("metadata of topic {topic}"), e))?;
        let seen = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .is_some_and(|t| t.partitions().len() as i32 == partitions && t.partitions().iter().all(|p| p.leader() >= 0));
        if seen {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RunError::NotInMetadata { topic: topic.to_string(), waited: MISSING_TOPIC_GRACE });
        }
        std::thread::sleep(backoff.next_delay());
    }
}

/// The smallest `max.message.bytes` of `topics` (the broker's limit on one
/// record batch of each), `None` when no topic reports one.
pub async fn max_message_bytes(
    admin: &AdminClient<QuietContext>,
    topics: &[&str],
    timeout: Duration,
) -> Result<Option<usize>, RunError> {
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let specifiers: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let described = admin
        .describe_configs(specifiers.iter(), &opts)
        .await
        .map_err(|e| RunError::kafka(format!("describe topics {}", topics.join(", ")), e))?;
    Ok(described
        .into_iter()
        .filter_map(|r| r.ok())
        .filter_map(|r| r.get("max.message.bytes").and_then(|e| e.value.as_deref()).and_then(|v| v.parse::<usize>().ok()))
        .min())
}

/// The identity of `topic`: the cluster id and the topic id, as
/// `cluster/topic-id`. A topic that was deleted and created again, or one on
/// another cluster, has a different identity even where its offsets look
/// alike, so local state checkpointed against one is never taken to
/// continue the other.
pub fn topic_identity(
    client: &rdkafka::client::Client<impl rdkafka::ClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<String, RunError> {
    let cluster = client.fetch_cluster_id(timeout).ok_or_else(|| RunError::ClusterId { topic: topic.to_string() })?;
    // A topic created moments ago (by this start-up, or by whoever created
    // it just before) can be unknown to the broker's metadata for a short
    // while after CreateTopics answered.
    let deadline = Instant::now() + MISSING_TOPIC_GRACE;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500), 2);
    let id = loop {
        match describe_topic_id(client.native_ptr(), topic, timeout) {
            Ok(id) => break id,
            Err(DescribeError::UnknownTopic) if Instant::now() < deadline => {
                tracing::debug!(topic, "topic not in the broker's metadata yet; asking again");
                std::thread::sleep(backoff.next_delay());
            }
            Err(source) => return Err(RunError::DescribeTopic { topic: topic.to_string(), source }),
        }
    };
    Ok(format!("{cluster}/{id}"))
}

/// Why DescribeTopics gave no topic id.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// The broker does not know the topic (yet).
    #[error("UNKNOWN_TOPIC_OR_PART")]
    UnknownTopic,
    /// Anything else librdkafka or the broker said.
    #[error("{0}")]
    Other(String),
}

/// "topic: n partitions, ..." for a co-partitioning message.
pub(crate) fn partition_listing(counts: &[(String, i32)]) -> String {
    counts.iter().map(|(t, c)| format!("{t}: {c} partitions")).collect::<Vec<_>>().join(", ")
}

/// The topic id of `topic` through librdkafka's DescribeTopics (which the
/// Rust wrapper does not expose), base64 as Kafka's tools print it.
fn describe_topic_id(rk: *mut rdkafka::bindings::rd_kafka_t, topic: &str, timeout: Duration) -> Result<String, DescribeError> {
    use rdkafka::bindings as rd;
    use std::ffi::{CStr, CString};
    let name = CString::new(topic).map_err(|e| DescribeError::Other(e.to_string()))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every handle created here is destroyed before returning; the
    // result's strings are copied out before the event is destroyed.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        let options = rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS);
        let mut names = [name.as_ptr()];
        let collection = rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1);
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, errstr.as_mut_ptr(), errstr.len());
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1000));
        let result = if event.is_null() {
            Err(DescribeError::Other("timed out".to_string()))
        } else if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(DescribeError::Other(CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy().into_owned()))
        } else {
            let res = rd::rd_kafka_event_DescribeTopics_result(event);
            let mut n = 0usize;
            let descs = rd::rd_kafka_DescribeTopics_result_topics(res, &mut n);
            if res.is_null() || descs.is_null() || n == 0 {
                Err(DescribeError::Other("no description returned".to_string()))
            } else {
                let desc = *descs;
                let err = rd::rd_kafka_TopicDescription_error(desc);
                let code = if err.is_null() {
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                } else {
                    rd::rd_kafka_error_code(err)
                };
                if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                    Err(DescribeError::UnknownTopic)
                } else if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    Err(DescribeError::Other(CStr::from_ptr(rd::rd_kafka_error_name(err)).to_string_lossy().into_owned()))
                } else {
                    let id = rd::rd_kafka_TopicDescription_topic_id(desc);
                    if id.is_null() {
                        Err(DescribeError::Other("no topic id".to_string()))
                    } else {
                        Ok(CStr::from_ptr(rd::rd_kafka_Uuid_base64str(id)).to_string_lossy().into_owned())
                    }
                }
            }
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_TopicCollection_destroy(collection);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_queue_destroy(queue);
        result
    }
}

/// A topic's `delete.retention.ms` (how long compaction keeps a null
/// record), and whether its `cleanup.policy` includes `delete`.
pub async fn retention_settings(
    admin: &AdminClient<QuietContext>,
    topic: &str,
    timeout: Duration,
) -> Result<(Option<i64>, String), RunError> {
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
        .await
        .map_err(|e| RunError::kafka(format!("describe topic {topic}"), e))?;
    let resource = described.into_iter().next().and_then(|r| r.ok());
    let get = |k: &str| resource.as_ref().and_then(|r| r.get(k).and_then(|e| e.value.clone()));
    Ok((get("delete.retention.ms").and_then(|v| v.parse().ok()), get("cleanup.policy").unwrap_or_default()))
}
