//! Prometheus metrics. The naming rule (see doc/operations.md, "Metrics"):
//! `tributary_<noun>_<unit>[_total]`, labels of bounded cardinality only
//! (`table`, `source`, `partition`, `outcome`, `policy`, `winner`, `reason`,
//! `kind`), never a key. `table` is bounded by the tables one process merges
//! (at most 200, see doc/configuration.md "Many tables"). The methods here count;
//! call sites go through `crate::events`, which logs and counts each happening
//! once.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric Tributary exports.
pub struct Metrics {
    registry: Registry,
    consumed: IntCounterVec,
    emitted: IntCounterVec,
    dropped: IntCounterVec,
    conflicts: IntCounterVec,
    dead_letters: IntCounterVec,
    siblings: Histogram,
    cycle: Histogram,
    event_age: HistogramVec,
    lag: IntGaugeVec,
    skew: prometheus::GaugeVec,
    state_keys: IntGaugeVec,
    restore_remaining: IntGaugeVec,
    restore_rate: prometheus::GaugeVec,
    standby_lag: IntGaugeVec,
    transactions: IntCounterVec,
    rebalances: IntCounterVec,
    registry_errors: IntCounterVec,
    foreign_owner_writes: IntCounterVec,
    state_reads: IntCounterVec,
    filter_records: IntCounterVec,
    primary_key_changes: IntCounterVec,
    source_paused: IntGaugeVec,
    repartitioned: IntGaugeVec,
    repartitioned_records: IntCounterVec,
    tombstones_dropped: IntCounterVec,
    tables: IntGauge,
    ready: IntGauge,
    up: Gauge,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The standard process metrics, with `process_cpu_seconds_total` in
/// fractions of a second: the prometheus crate's collector counts whole
/// seconds (an integer counter), so a process that used less than a second
/// of CPU, or the fraction of every second, read as 0.
#[cfg(target_os = "linux")]
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        if let Some(seconds) = process_cpu_seconds() {
            for family in families.iter_mut().filter(|f| f.name() == "process_cpu_seconds_total") {
                for m in family.mut_metric().iter_mut() {
                    let mut counter = prometheus::proto::Counter::default();
                    counter.set_value(seconds);
                    m.set_counter(counter);
                }
            }
        }
        families
    }
}

/// User plus system CPU time of this process, from `/proc/self/stat` (in
/// clock ticks of USER_HZ, which Linux fixes at 100 for that file).
#[cfg(target_os = "linux")]
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

impl Metrics {
    /// Registers every metric (and the process collector) in a fresh registry.
    pub fn new() -> Metrics {
        Self::build(true)
    }

    /// Only the process metrics, `tributary_up` and `tributary_ready` are
    /// served: for `tributary sink`, which adds its own, so its `/metrics`
    /// shows no processor series sitting at zero.
    pub fn base() -> Metrics {
        Self::build(false)
    }

    fn build(processor: bool) -> Metrics {
        let r = Registry::new();
        let unserved = Registry::new();
        let p = if processor { &r } else { &unserved };
        #[cfg(target_os = "linux")]
        r.register(Box::new(ProcessMetrics(prometheus::process_collector::ProcessCollector::for_self())))
            .expect("process metrics");
        let siblings = Histogram::with_opts(
            HistogramOpts::new(
                "tributary_siblings",
                "Versions in a key's set after each emitted event (more than 1: a live conflict)",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0]),
        )
        .expect("valid metric");
        p.register(Box::new(siblings.clone())).expect("registered once");
        let cycle = Histogram::with_opts(
            HistogramOpts::new("tributary_cycle_duration_seconds", "Time to commit one processing cycle (one transaction)")
                .buckets(prometheus::exponential_buckets(0.002, 2.0, 12).expect("buckets")),
        )
        .expect("valid metric");
        p.register(Box::new(cycle.clone())).expect("registered once");
        let event_age = HistogramVec::new(
            HistogramOpts::new(
                "tributary_event_age_seconds",
                "Age of an event when its merged record is emitted: now minus the source commit time",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.5, 14).expect("buckets")),
            &["table", "source"],
        )
        .expect("valid metric");
        p.register(Box::new(event_age.clone())).expect("registered once");
        let ready =
            IntGauge::new("tributary_ready", "1 when every assigned task is restored and processing").expect("valid metric");
        r.register(Box::new(ready.clone())).expect("registered once");
        let up = Gauge::new("tributary_up", "1 while the processor runs; 0 after a fatal error").expect("valid metric");
        r.register(Box::new(up.clone())).expect("registered once");
        up.set(1.0);
        Metrics {
            consumed: counter(p, "tributary_records_consumed_total", "Source records consumed", &["table", "source"]),
            emitted: counter(p, "tributary_records_emitted_total", "Merged records written to the output topic", &["table", "source"]),
            dropped: counter(p, "tributary_events_dropped_total", "Events that changed nothing (stale, duplicate) or were ignored (Debezium tombstones)", &["table", "source", "outcome"]),
            conflicts: counter(p, "tributary_conflicts_total", "State-changing events that left more than one version", &["table", "policy", "winner"]),
            dead_letters: counter(p, "tributary_dead_letters_total", "Records sent to the dead-letter topic", &["table", "source", "reason"]),
            siblings,
            cycle,
            event_age,
            lag: gauge(p, "tributary_consumer_lag_records", "Records between the consumer's position and the partition's end (the last stable offset under read_committed), per source partition", &["table", "source", "partition"]),
            skew: float_gauge(p, "tributary_clock_skew_seconds", "Kafka record time minus source commit time, last seen per source", &["table", "source"]),
            state_keys: gauge(p, "tributary_state_keys", "Keys in a task's local state (approximate)", &["table", "partition"]),
            restore_remaining: gauge(p, "tributary_restore_remaining_records", "Changelog records left to restore", &["table", "partition"]),
            restore_rate: float_gauge(p, "tributary_restore_rate_records_per_second", "Restore speed", &["table", "partition"]),
            standby_lag: gauge(
                p,
                "tributary_standby_lag_records",
                "Changelog records a standby copy of a task this instance does not own is behind (one series per task kept warm)",
                &["table", "partition"],
            ),
            transactions: counter(p, "tributary_transactions_total", "Processing cycles by outcome", &["outcome"]),
            rebalances: counter(p, "tributary_rebalances_total", "Group rebalance callbacks", &["kind"]),
            registry_errors: counter(
                p,
                "tributary_schema_registry_errors_total",
                "Schema Registry calls that failed while it was unavailable (processing paused and retried)",
                &["operation"],
            ),
            filter_records: counter(
                p,
                "tributary_source_filter_records_total",
                "Records tested by a source's `where` filter, by outcome (matched: kept, dropped)",
                &["table", "source", "outcome"],
            ),
            foreign_owner_writes: counter(
                p,
                "tributary_owner_foreign_writes_total",
                "Writes to a column with rule \"owner\" by a source that does not own it (used only while the owner has written nothing)",
                &["table", "source"],
            ),
            state_reads: counter(
                p,
                "tributary_state_reads_total",
                "Keys' states events found, by where: cycle (changed earlier in the open cycle), cache (the decoded-state cache, runtime.state_cache_bytes), store (read from disk and decoded)",
                &["table", "from"],
            ),
            primary_key_changes: counter(
                p,
                "tributary_primary_key_changes_total",
                "Primary-key changes merged (Debezium's delete of the old key and create of the new one), counted once, on the create",
                &["table", "source"],
            ),
            source_paused: gauge(
                p,
                "tributary_source_paused",
                "1 while an operator has paused the source (POST /sources/{name}/pause): its partitions are not fetched",
                &["source"],
            ),
            repartitioned: gauge(
                p,
                "tributary_repartitioned_sources",
                "1 for a source whose records are re-keyed through the table's repartition topic (not co-partitioned with the table)",
                &["table", "source"],
            ),
            repartitioned_records: counter(
                p,
                "tributary_repartitioned_records_total",
                "Records of a source that is not co-partitioned with its table, re-keyed into the table's repartition topic",
                &["table", "source"],
            ),
            tombstones_dropped: counter(
                p,
                "tributary_tombstones_dropped_total",
                "Deleted keys dropped from the state and the changelog after tombstone_retention",
                &["table"],
            ),
            tables: {
                let g = IntGauge::new("tributary_tables", "Tables this process merges (discovered ones included)").expect("valid metric");
                p.register(Box::new(g.clone())).expect("registered once");
                g
            },
            ready,
            up,
            registry: r,
        }
    }

    /// The registry, for a component that adds its own metrics (`tributary sink`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }

    /// The value of the series `name` whose labels are exactly `labels`
    /// (a histogram's: its count of observations), for tests and the demo
    /// that check what happened by the numbers.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.registry.gather().into_iter().find(|f| f.name() == name)?;
        let metric = family.get_metric().iter().find(|m| {
            m.get_label().len() == labels.len()
                && labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v))
        })?;
        Some(match family.get_field_type() {
            prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
            prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
            prometheus::proto::MetricType::HISTOGRAM => metric.get_histogram().get_sample_count() as f64,
            _ => return None,
        })
    }

    /// A source record was consumed.
    pub fn consumed(&self, table: &str, source: &str) {
        self.consumed.with_label_values(&[table, source]).inc();
    }

    /// A merged record was emitted for an event of `source`.
    pub fn emitted(&self, table: &str, source: &str, siblings: usize, age_ms: i64, skew_ms: Option<i64>) {
        self.emitted.with_label_values(&[table, source]).inc();
        self.siblings.observe(siblings as f64);
        self.event_age.with_label_values(&[table, source]).observe(age_ms.max(0) as f64 / 1000.0);
        if let Some(skew) = skew_ms {
            self.skew.with_label_values(&[table, source]).set(skew as f64 / 1000.0);
        }
    }

    /// An event was dropped (`stale`, `duplicate`) or ignored (`ignored`).
    pub fn dropped(&self, table: &str, source: &str, outcome: &str) {
        self.dropped.with_label_values(&[table, source, outcome]).inc();
    }

    /// An accepted event left a conflict.
    pub fn conflict(&self, table: &str, policy: &str, winner: &str) {
        self.conflicts.with_label_values(&[table, policy, winner]).inc();
    }

    /// A Schema Registry call failed as unavailable (`operation`: decode, register, startup).
    pub fn registry_error(&self, operation: &str) {
        self.registry_errors.with_label_values(&[operation]).inc();
    }

    /// Records a source's `where` filter kept (`matched`) and dropped.
    pub fn filter_records(&self, table: &str, source: &str, matched: u64, dropped: u64) {
        self.filter_records.with_label_values(&[table, source, "matched"]).inc_by(matched);
        self.filter_records.with_label_values(&[table, source, "dropped"]).inc_by(dropped);
    }

    /// Writes to `owner` columns by a source that does not own them.
    pub fn foreign_owner_writes(&self, table: &str, source: &str, n: u64) {
        self.foreign_owner_writes.with_label_values(&[table, source]).inc_by(n);
    }

    /// Where a table's events found their keys' states, since the last call.
    pub fn state_reads(&self, table: &str, reads: crate::store::StateReads) {
        for (from, n) in [("cycle", reads.cycle), ("cache", reads.cache), ("store", reads.store)] {
            self.state_reads.with_label_values(&[table, from]).inc_by(n);
        }
    }

    /// One half of a primary-key change was merged. A change counts once, on
    /// its create half (the record with `__debezium.oldkey`), so the count
    /// is the number of changes whatever happens to the delete half.
    pub fn primary_key_change(&self, table: &str, source: &str, change: &crate::normalize::KeyChange) {
        if matches!(change, crate::normalize::KeyChange::NewKeyCreated { .. }) {
            self.primary_key_changes.with_label_values(&[table, source]).inc();
        }
    }

    /// A record went to the dead-letter topic.
    pub fn dead_letter(&self, table: &str, source: &str, reason: &str) {
        self.dead_letters.with_label_values(&[table, source, reason]).inc();
    }

    /// A cycle ended.
    pub fn cycle(&self, committed: bool, seconds: f64) {
        self.transactions.with_label_values(&[if committed { "committed" } else { "aborted" }]).inc();
        if committed {
            self.cycle.observe(seconds);
        }
    }

    /// A rebalance callback ran (`assign` or `revoke`).
    pub fn rebalance(&self, kind: &str) {
        self.rebalances.with_label_values(&[kind]).inc();
    }

    /// Consumer lag of one source partition.
    pub fn lag(&self, table: &str, source: &str, partition: i32, lag: i64) {
        self.lag.with_label_values(&[table, source, &partition.to_string()]).set(lag.max(0));
    }

    /// A source partition this instance no longer consumes has no lag here.
    pub fn forget_lag(&self, table: &str, source: &str, partition: i32) {
        let _ = self.lag.remove_label_values(&[table, source, &partition.to_string()]);
    }

    /// Keys in a task's state.
    pub fn state_keys(&self, table: &str, partition: i32, keys: usize) {
        self.state_keys.with_label_values(&[table, &partition.to_string()]).set(keys as i64);
    }

    /// Restore progress of a task.
    pub fn restore(&self, table: &str, partition: i32, remaining: i64, rate: f64) {
        let p = partition.to_string();
        self.restore_remaining.with_label_values(&[table, &p]).set(remaining.max(0));
        self.restore_rate.with_label_values(&[table, &p]).set(rate);
    }

    /// How far a standby copy of a task is behind its changelog's end.
    pub fn standby_lag(&self, table: &str, partition: i32, lag: i64) {
        self.standby_lag.with_label_values(&[table, &partition.to_string()]).set(lag.max(0));
    }

    /// A task no longer kept warm here (taken over, or its standby moved).
    pub fn forget_standby(&self, table: &str, partition: i32) {
        let _ = self.standby_lag.remove_label_values(&[table, &partition.to_string()]);
    }

    /// A source's pause state (`paused`: its partitions are not fetched).
    pub fn source_paused(&self, source: &str, paused: bool) {
        self.source_paused.with_label_values(&[source]).set(i64::from(paused));
    }

    /// A source of `table` is re-keyed through a repartition topic.
    pub fn repartitioned(&self, table: &str, source: &str) {
        self.repartitioned.with_label_values(&[table, source]).set(1);
    }

    /// A record was re-keyed into a repartition topic.
    pub fn repartitioned_record(&self, table: &str, source: &str) {
        self.repartitioned_records.with_label_values(&[table, source]).inc();
    }

    /// Deleted keys past `tombstone_retention` left the state.
    pub fn tombstones_dropped(&self, table: &str, keys: usize) {
        self.tombstones_dropped.with_label_values(&[table]).inc_by(keys as u64);
    }

    /// How many tables the process merges.
    pub fn tables(&self, n: usize) {
        self.tables.set(n as i64);
    }

    /// Readiness: every assigned task restored and processing.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// True when ready.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// A fatal error: the process is about to stop.
    pub fn set_down(&self) {
        self.up.set(0.0);
        self.ready.set(0);
    }

    /// False after a fatal error.
    pub fn is_up(&self) -> bool {
        self.up.get() > 0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_bounded_labels() {
        let m = Metrics::new();
        m.consumed("t", "eu");
        m.emitted("t", "eu", 2, 1500, Some(-20));
        m.dropped("t", "eu", "stale");
        m.conflict("t", "lww", "eu");
        m.dead_letter("t", "eu", "bad_value");
        m.cycle(true, 0.01);
        m.cycle(false, 0.0);
        m.rebalance("assign");
        m.lag("t", "eu", 0, 7);
        m.state_keys("t", 0, 3);
        m.restore("t", 0, 0, 0.0);
        m.source_paused("eu", true);
        m.set_ready(true);
        let text = m.render();
        for name in [
            "tributary_records_consumed_total{source=\"eu\",table=\"t\"} 1",
            "tributary_records_emitted_total{source=\"eu\",table=\"t\"} 1",
            "tributary_events_dropped_total{outcome=\"stale\",source=\"eu\",table=\"t\"} 1",
            "tributary_conflicts_total{policy=\"lww\",table=\"t\",winner=\"eu\"} 1",
            "tributary_dead_letters_total{reason=\"bad_value\",source=\"eu\",table=\"t\"} 1",
            "tributary_siblings_count 1",
            "tributary_event_age_seconds_count{source=\"eu\",table=\"t\"} 1",
            "tributary_clock_skew_seconds{source=\"eu\",table=\"t\"} -0.02",
            "tributary_consumer_lag_records{partition=\"0\",source=\"eu\",table=\"t\"} 7",
            "tributary_transactions_total{outcome=\"aborted\"} 1",
            "tributary_rebalances_total{kind=\"assign\"} 1",
            "tributary_source_paused{source=\"eu\"} 1",
            "tributary_ready 1",
        ] {
            assert!(text.contains(name), "missing `{name}` in\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn a_primary_key_change_counts_once_on_its_create_half() {
        use crate::normalize::KeyChange;
        let m = Metrics::new();
        m.primary_key_change("t", "eu", &KeyChange::OldKeyDeleted { new_key: r#"{"id":2}"#.into() });
        assert!(!m.render().contains("tributary_primary_key_changes_total{"), "the delete half is not counted");
        m.primary_key_change("t", "eu", &KeyChange::NewKeyCreated { old_key: r#"{"id":1}"#.into() });
        assert!(m.render().contains("tributary_primary_key_changes_total{source=\"eu\",table=\"t\"} 1"), "{}", m.render());
    }
}
