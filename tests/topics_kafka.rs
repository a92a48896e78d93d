//! Topic management at start-up on a real Apache Kafka 4.x broker: a topic
//! Tributary has just created is usable at once. The broker answers
//! CreateTopics when the controller has recorded the topic, but its metadata
//! cache learns of it a moment later; start-up reads the new changelog's
//! identity right away, which failed with UNKNOWN_TOPIC_OR_PART in CI
//! (tables_kafka, a table found by pattern).

mod common;

use std::time::Duration;

use common::kafka::{self, unique};
use rdkafka::admin::AdminClient;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use tributary::run::quiet::QuietContext;
use tributary::run::topics::{ensure_topics, topic_identity, TopicSpec};

const TIMEOUT: Duration = Duration::from_secs(10);

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka::bootstrap()).set("group.id", unique("topics-probe"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_just_created_has_an_identity_at_once() {
    let admin: AdminClient<QuietContext> = client_config().create_with_context(QuietContext).unwrap();
    let consumer: BaseConsumer<QuietContext> = client_config().create_with_context(QuietContext).unwrap();
    let prefix = unique("fresh-changelog");
    let mut identities = std::collections::BTreeSet::new();
    // The race is short: many fresh topics make it likely that some identity
    // is asked for before the broker's metadata has the topic.
    for i in 0..30 {
        let name = format!("{prefix}-{i}");
        let spec = TopicSpec {
            name: name.clone(),
            role: "changelog",
            cleanup_policy: "compact",
            configs: vec![],
            any_partitions: false,
        };
        ensure_topics(&admin, &consumer, &[spec], 3, 1, TIMEOUT).await.unwrap();
        let id = topic_identity(admin.inner(), &name, TIMEOUT).unwrap_or_else(|e| panic!("identity of {name}: {e}"));
        identities.insert(id);
    }
    assert_eq!(identities.len(), 30, "every topic has its own identity");
}
