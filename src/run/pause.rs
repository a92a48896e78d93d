//! Pausing and resuming sources at run time (`POST /sources/{name}/pause`).
//!
//! The admin port records what an operator asked for; the processing
//! thread applies it between two steps of its loop, and again whenever the
//! group hands it partitions, so a pause survives rebalances. A paused
//! source's partitions are paused in the consumer (librdkafka stops fetching
//! them and drops what it had fetched but not yet handed over), the other
//! sources go on. A cycle in flight is not disturbed: what it consumed from
//! the paused partitions is committed with it, and their committed offsets
//! then stay where they are. Pauses live in memory: a restarted process
//! consumes every source but those of `[admin] start_paused`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;

use crate::admin::{SourceStatus, SourceSwitch};
#[cfg(test)]
use crate::config::Config;
use crate::events::SourcePause;
use crate::metrics::Metrics;

/// The pause switch of every configured source.
pub(super) struct SourceControl {
    /// Name and topic of each source, in configuration order (a source
    /// name may stand for topics of several tables: pausing `eu` pauses
    /// region eu in every table).
    sources: RwLock<Vec<(String, String)>>,
    /// Sources an operator paused, and the ticket of the latest request.
    wanted: Mutex<(BTreeSet<String>, u64)>,
    /// The ticket of the latest request the consumer has applied.
    applied: AtomicU64,
    /// Assigned partitions this process has paused in the consumer (topic,
    /// partition). librdkafka keeps a partition's pause across assignments,
    /// so a partition revoked while paused is resumed on its way out: this
    /// set is then exactly the paused partitions.
    paused: Mutex<BTreeSet<(String, i32)>>,
    metrics: Arc<Metrics>,
}

impl SourceControl {
    #[cfg(test)]
    pub(super) fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let sources: Vec<(String, String)> = config.sources.iter().map(|s| (s.name.clone(), s.topic.clone())).collect();
        Self::with_sources(sources, &config.admin.start_paused, metrics)
    }

    /// The switches of `sources` (name, topic); `start_paused` are paused
    /// from the first assignment on.
    pub(super) fn with_sources(sources: Vec<(String, String)>, start_paused: &[String], metrics: Arc<Metrics>) -> Self {
        let wanted: BTreeSet<String> = start_paused.iter().cloned().collect();
        for (name, _) in &sources {
            SourcePause { source: name, paused: wanted.contains(name), changed: None }.emit(&metrics);
        }
        if !wanted.is_empty() {
            tracing::info!(sources = ?wanted, "paused from start-up (admin.start_paused) until resumed");
        }
        // Ticket 1 stands for the start-up pauses: pending until the first assignment applies them.
        Self {
            sources: RwLock::new(sources),
            wanted: Mutex::new((wanted, 1)),
            applied: AtomicU64::new(0),
            paused: Mutex::default(),
            metrics,
        }
    }

    /// Sources of a table discovered while running: a pause of their name
    /// applies to them from their first assignment on.
    pub(super) fn add_sources(&self, more: impl IntoIterator<Item = (String, String)>) {
        let wanted = self.wanted.lock().expect("pauses").0.clone();
        let mut sources = self.sources.write().expect("sources");
        for (name, topic) in more {
            SourcePause { source: &name, paused: wanted.contains(&name), changed: None }.emit(&self.metrics);
            sources.push((name, topic));
        }
    }

    /// A request not yet applied to the consumer.
    pub(super) fn pending(&self) -> bool {
        self.applied.load(Ordering::Acquire) < self.wanted.lock().expect("pauses").1
    }

    /// Brings the consumer's paused partitions in line with what was asked,
    /// over its current assignment.
    pub(super) fn apply<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K) -> Result<(), KafkaError> {
        let assignment = consumer.assignment()?;
        self.apply_to(consumer, &assignment)
    }

    /// [`SourceControl::apply`] over `assignment` (what the group just handed over).
    pub(super) fn apply_to<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        assignment: &TopicPartitionList,
    ) -> Result<(), KafkaError> {
        let (wanted, ticket) = self.wanted.lock().expect("pauses").clone();
        let sources = self.sources.read().expect("sources");
        let paused_topics: BTreeSet<&str> =
            sources.iter().filter(|(name, _)| wanted.contains(name)).map(|(_, topic)| topic.as_str()).collect();
        let assigned: BTreeSet<(String, i32)> =
            assignment.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let mut paused = self.paused.lock().expect("pauses");
        let (to_pause, to_resume) = changes(&paused_topics, &assigned, &paused);
        // Only partitions whose state changes are touched: librdkafka
        // restarts a partition's fetch on every pause or resume call.
        if to_pause.count() > 0 {
            consumer.pause(&to_pause)?;
        }
        if to_resume.count() > 0 {
            consumer.resume(&to_resume)?;
        }
        let before = paused_sources(&sources, &paused);
        *paused = assigned.into_iter().filter(|(topic, _)| paused_topics.contains(topic.as_str())).collect();
        let after = paused_sources(&sources, &paused);
        drop(paused);
        let names: BTreeSet<&str> = sources.iter().map(|(name, _)| name.as_str()).collect();
        for name in names {
            let (was, is) = (before.get(name), after.get(name));
            let changed = if was != is { Some(is.or(was).map_or(&[][..], Vec::as_slice)) } else { None };
            SourcePause { source: name, paused: wanted.contains(name), changed }.emit(&self.metrics);
        }
        self.applied.fetch_max(ticket, Ordering::AcqRel);
        Ok(())
    }

    /// The group takes `revoked` away: paused ones among them are resumed on
    /// their way out (the pause would otherwise outlive the assignment in
    /// librdkafka) and paused again if they come back while still wanted.
    pub(super) fn revoke<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        revoked: &TopicPartitionList,
    ) -> Result<(), KafkaError> {
        let mut paused = self.paused.lock().expect("pauses");
        let mut leaving = TopicPartitionList::new();
        for e in revoked.elements() {
            if paused.remove(&(e.topic().to_string(), e.partition())) {
                leaving.add_partition(e.topic(), e.partition());
            }
        }
        if leaving.count() > 0 {
            consumer.resume(&leaving)?;
        }
        Ok(())
    }
}

/// Partitions to pause (assigned, of a paused topic, not paused yet) and to
/// resume (paused, of a topic no longer paused).
fn changes(
    paused_topics: &BTreeSet<&str>,
    assigned: &BTreeSet<(String, i32)>,
    paused: &BTreeSet<(String, i32)>,
) -> (TopicPartitionList, TopicPartitionList) {
    let mut to_pause = TopicPartitionList::new();
    let mut to_resume = TopicPartitionList::new();
    for (topic, p) in assigned {
        let want = paused_topics.contains(topic.as_str());
        let is = paused.contains(&(topic.clone(), *p));
        if want && !is {
            to_pause.add_partition(topic, *p);
        } else if !want && is {
            to_resume.add_partition(topic, *p);
        }
    }
    (to_pause, to_resume)
}

/// Source name → its paused partitions, for sources that have any.
fn paused_sources<'a>(sources: &'a [(String, String)], paused: &BTreeSet<(String, i32)>) -> BTreeMap<&'a str, Vec<i32>> {
    let mut out: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (name, topic) in sources {
        let ps: Vec<i32> = paused.iter().filter(|(t, _)| t == topic).map(|(_, p)| *p).collect();
        if !ps.is_empty() {
            out.insert(name, ps);
        }
    }
    out
}

impl SourceSwitch for SourceControl {
    fn list(&self) -> Vec<SourceStatus> {
        let wanted = self.wanted.lock().expect("pauses").0.clone();
        let paused = self.paused.lock().expect("pauses");
        let sources = self.sources.read().expect("sources");
        let by_source = paused_sources(&sources, &paused);
        sources
            .iter()
            .map(|(name, topic)| SourceStatus {
                name: name.clone(),
                topic: topic.clone(),
                paused: wanted.contains(name),
                paused_partitions: by_source.get(name.as_str()).cloned().unwrap_or_default(),
            })
            .collect()
    }

    fn request(&self, name: &str, paused: bool) -> Option<u64> {
        self.sources.read().expect("sources").iter().find(|(n, _)| n == name)?;
        let mut wanted = self.wanted.lock().expect("pauses");
        if paused {
            wanted.0.insert(name.to_string());
        } else {
            wanted.0.remove(name);
        }
        wanted.1 += 1;
        Some(wanted.1)
    }

    fn applied(&self, ticket: u64) -> bool {
        self.applied.load(Ordering::Acquire) >= ticket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::ClientConfig;

    fn config() -> Config {
        let text = "[output]\ntopic = \"o\"\n[[sources]]\nname = \"eu\"\ntopic = \"t-eu\"\n[[sources]]\nname = \"us\"\ntopic = \"t-us\"\n";
        Config::parse(text, "test", std::iter::empty()).unwrap()
    }

    fn set(items: &[(&str, i32)]) -> BTreeSet<(String, i32)> {
        items.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
        tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
    }

    #[test]
    fn start_paused_sources_are_paused_on_the_first_assignment() {
        let text = "[admin]\nstart_paused = [\"us\"]\n[output]\ntopic = \"o\"\n[[sources]]\nname = \"eu\"\ntopic = \"t-eu\"\n[[sources]]\nname = \"us\"\ntopic = \"t-us\"\n";
        let metrics = Arc::new(Metrics::new());
        let control = SourceControl::new(&Config::parse(text, "test", std::iter::empty()).unwrap(), metrics.clone());
        assert!(metrics.render().contains("tributary_source_paused{source=\"us\"} 1"));
        assert!(control.pending() && control.list()[1].paused);
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").set("group.id", "pause-test").create().unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition("t-eu", 0);
        assignment.add_partition("t-us", 0);
        control.apply_to(&consumer, &assignment).unwrap();
        assert!(!control.pending());
        assert_eq!(control.list()[1].paused_partitions, [0]);

        let unknown = Config::parse(&text.replace("[\"us\"]", "[\"erp\"]"), "test", std::iter::empty()).unwrap_err();
        assert!(
            unknown.to_string().contains("admin.start_paused: no source named \"erp\" (the sources are eu, us)"),
            "{unknown}"
        );
    }

    #[test]
    fn only_partitions_whose_state_changes_are_touched() {
        let topics: BTreeSet<&str> = ["t-eu"].into();
        let assigned = set(&[("t-eu", 0), ("t-eu", 1), ("t-us", 0), ("t-us", 1)]);
        let (pause, resume) = changes(&topics, &assigned, &set(&[("t-eu", 1), ("t-us", 0)]));
        assert_eq!(list(&pause), [("t-eu".to_string(), 0)]);
        assert_eq!(list(&resume), [("t-us".to_string(), 0)]);
        let (pause, resume) = changes(&topics, &assigned, &set(&[("t-eu", 0), ("t-eu", 1)]));
        assert_eq!((pause.count(), resume.count()), (0, 0), "nothing to do when the consumer already matches");
    }

    #[test]
    fn requests_are_recorded_named_and_applied_over_the_assignment() {
        let metrics = Arc::new(Metrics::new());
        let control = SourceControl::new(&config(), metrics.clone());
        assert!(metrics.render().contains("tributary_source_paused{source=\"eu\"} 0"));
        assert_eq!(control.request("nope", true), None, "an unknown source is refused");
        let ticket = control.request("eu", true).unwrap();
        assert!(control.pending() && !control.applied(ticket));
        assert!(control.list()[0].paused && control.list()[0].paused_partitions.is_empty(), "asked for, not applied yet");

        // A consumer that is in no group: pausing its assigned partitions
        // needs no broker.
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").set("group.id", "pause-test").create().unwrap();
        let mut assignment = TopicPartitionList::new();
        for (t, p) in [("t-eu", 0), ("t-eu", 1), ("t-us", 0), ("t-us", 1)] {
            assignment.add_partition(t, p);
        }
        consumer.assign(&assignment).unwrap();
        control.apply(&consumer).unwrap();
        assert!(!control.pending() && control.applied(ticket));
        let listed = control.list();
        assert_eq!((listed[0].paused, listed[0].paused_partitions.clone()), (true, vec![0, 1]));
        assert_eq!((listed[1].paused, listed[1].paused_partitions.clone()), (false, vec![]));
        assert!(metrics.render().contains("tributary_source_paused{source=\"eu\"} 1"));
        assert!(metrics.render().contains("tributary_source_paused{source=\"us\"} 0"));

        // A rebalance takes partition 1 away and gives it back: paused again.
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t-eu", 1);
        revoked.add_partition("t-us", 1);
        control.revoke(&consumer, &revoked).unwrap();
        assert_eq!(control.list()[0].paused_partitions, [0]);
        control.apply_to(&consumer, &assignment).unwrap();
        assert_eq!(control.list()[0].paused_partitions, [0, 1], "the pause survives the rebalance");

        let ticket = control.request("eu", false).unwrap();
        control.apply(&consumer).unwrap();
        assert!(control.applied(ticket));
        assert!(control.list().iter().all(|s| !s.paused && s.paused_partitions.is_empty()));
        assert!(metrics.render().contains("tributary_source_paused{source=\"eu\"} 0"));
    }
}
