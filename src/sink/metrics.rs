//! The sink's metrics, served on `[sink] admin_listen` next to
//! `tributary_up` and `tributary_ready` (through `crate::admin`, as `run`
//! does). One method per happening, which counts and, where it matters, logs.

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

use crate::metrics::Metrics;

/// Every metric of `tributary sink`.
pub struct SinkMetrics {
    /// The shared registry, with the admin port's `up` and `ready`.
    pub base: Arc<Metrics>,
    applied: IntCounterVec,
    dead: IntCounterVec,
    batch_records: HistogramVec,
    batch_seconds: HistogramVec,
    lag: IntGaugeVec,
}

impl SinkMetrics {
    /// Registers the sink's metrics.
    pub fn new() -> SinkMetrics {
        let base = Arc::new(Metrics::base());
        let r = base.registry();
        // `table`: the configured tables ([sink] or [[sink.tables]]), a
        // bounded set.
        let applied = IntCounterVec::new(
            Opts::new(
                "tributary_sink_records_applied_total",
                "Records the sink committed to the database (rows upserted or deleted, dead rows included)",
            ),
            &["table"],
        )
        .expect("valid metric");
        let dead = IntCounterVec::new(
            Opts::new(
                "tributary_sink_dead_rows_total",
                "Records that did not fit the table and went to tributary_sink_dead_letters",
            ),
            &["table"],
        )
        .expect("valid metric");
        let batch_records = HistogramVec::new(
            HistogramOpts::new("tributary_sink_batch_records", "Records per database transaction")
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 8).expect("buckets")),
            &["table"],
        )
        .expect("valid metric");
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new("tributary_sink_batch_duration_seconds", "Time to apply and commit one batch")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets")),
            &["table"],
        )
        .expect("valid metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "tributary_sink_lag_records",
                "Records of the topic not yet in the database, per partition (high watermark minus the sink's position, plus records read but not committed)",
            ),
            &["table", "partition"],
        )
        .expect("valid metric");
        for m in [
            Box::new(applied.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dead.clone()),
            Box::new(batch_records.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(lag.clone()),
        ] {
            r.register(m).expect("registered once");
        }
        base.set_ready(false);
        SinkMetrics { base, applied, dead, batch_records, batch_seconds, lag }
    }

    /// A batch of `table` was committed.
    pub fn batch(&self, table: &str, records: usize, dead: usize, seconds: f64) {
        self.applied.with_label_values(&[table]).inc_by(records as u64);
        self.dead.with_label_values(&[table]).inc_by(dead as u64);
        self.batch_records.with_label_values(&[table]).observe(records as f64);
        self.batch_seconds.with_label_values(&[table]).observe(seconds);
        tracing::debug!(table, records, dead, seconds, "sink batch committed");
    }

    /// A resync of `table` applied `records` (of which `dead` dead rows)
    /// before the sink went on.
    pub fn resynced(&self, table: &str, records: u64, dead: u64) {
        self.applied.with_label_values(&[table]).inc_by(records);
        self.dead.with_label_values(&[table]).inc_by(dead);
    }

    /// A partition's lag.
    pub fn lag(&self, table: &str, partition: i32, records: i64) {
        self.lag.with_label_values(&[table, &partition.to_string()]).set(records.max(0));
    }
}

impl Default for SinkMetrics {
    fn default() -> Self {
        Self::new()
    }
}
