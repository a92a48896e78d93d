//! The simulated source databases' side: what a scenario's
//! [`Simulation`] writes, the producer that sends it to the sources' topics
//! at the asked rate, and the counts of what was written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::{fail, DemoError, Scenario, PARTITIONS};

/// The canonical key of customer `id`.
pub(super) fn key_of(id: u64) -> String {
    format!("{{\"id\":{id}}}")
}

/// A small deterministic generator (xorshift64*): the same writes every run.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(super) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What kind of change a simulated write was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Insert,
    Update,
    Delete,
}

/// One simulated write: which source, which customer, and the Kafka records
/// it produces (key, value; a delete is followed by its tombstone).
pub(super) struct Write_ {
    pub(super) source: usize,
    pub(super) id: u64,
    pub(super) kind: Kind,
    pub(super) records: Vec<(String, Option<String>)>,
}

/// A scenario's source databases.
pub(super) trait Simulation: Send {
    /// Lets time pass (replication between the databases, if any).
    fn advance(&mut self, now: Instant);
    /// The next write, at wall-clock time `wall_ms`.
    fn write(&mut self, now: Instant, wall_ms: i64) -> Write_;
    /// Columns whose merged value the scenario knows from its databases,
    /// per customer, to check the table against.
    fn expected(&self) -> BTreeMap<u64, serde_json::Map<String, serde_json::Value>> {
        BTreeMap::new()
    }
}

/// What the sources wrote.
#[derive(Debug, Default)]
pub(super) struct Produced {
    pub(super) inserts: Vec<u64>,
    pub(super) updates: Vec<u64>,
    pub(super) deletes: Vec<u64>,
    /// Every key written.
    pub(super) ids: BTreeSet<u64>,
    /// What [`Simulation::expected`] said at the end.
    pub(super) expected: BTreeMap<u64, serde_json::Map<String, serde_json::Value>>,
}

impl Produced {
    fn new(sources: usize) -> Produced {
        Produced {
            inserts: vec![0; sources],
            updates: vec![0; sources],
            deletes: vec![0; sources],
            ids: BTreeSet::new(),
            expected: BTreeMap::new(),
        }
    }
    fn count(&mut self, w: &Write_) {
        let slot = match w.kind {
            Kind::Insert => &mut self.inserts,
            Kind::Update => &mut self.updates,
            Kind::Delete => &mut self.deletes,
        };
        slot[w.source] += 1;
        self.ids.insert(w.id);
    }
    pub(super) fn events(&self, s: usize) -> u64 {
        self.inserts[s] + self.updates[s] + self.deletes[s]
    }
    /// Kafka records: events plus one Debezium tombstone per delete.
    pub(super) fn records(&self) -> u64 {
        (0..self.inserts.len()).map(|s| self.events(s) + self.deletes[s]).sum()
    }
}

/// Events sent so far per source, for the progress line.
pub(super) struct LiveCounts {
    pub(super) events: Vec<AtomicU64>,
}

impl LiveCounts {
    pub(super) fn new(sources: usize) -> LiveCounts {
        LiveCounts { events: (0..sources).map(|_| AtomicU64::new(0)).collect() }
    }
}

/// Counts the source records the mock cluster did not take.
struct Failures(AtomicU64);

impl ClientContext for Failures {}

impl ProducerContext for Failures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The scenario's sources writing for `duration` at `rate` events/s in total,
/// each record to the murmur2 partition of its key (as Debezium does).
pub(super) fn simulate(
    scenario: Scenario,
    bootstrap: &str,
    duration: Duration,
    rate: f64,
    live: &LiveCounts,
    stop: &AtomicBool,
) -> Result<Produced, DemoError> {
    let producer: BaseProducer<Failures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create_with_context(Failures(AtomicU64::new(0)))
        .map_err(fail("cannot create the sources' producer"))?;
    let sources = scenario.sources();
    let mut sim = scenario.simulation();
    let mut produced = Produced::new(sources.len());
    let started = Instant::now();
    let mut written: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let elapsed = now - started;
        if elapsed >= duration {
            break;
        }
        sim.advance(now);
        let due = (elapsed.as_secs_f64() * rate) as u64;
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        while written < due {
            let w = sim.write(now, wall_ms);
            let source = &sources[w.source];
            for (key, value) in &w.records {
                let partition = crate::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
                let mut record: BaseRecord<'_, str, str> = BaseRecord::to(source.topic).key(key.as_str()).partition(partition);
                if let Some(v) = value.as_deref() {
                    record = record.payload(v);
                }
                crate::kafka::send_waiting(&producer, record, Duration::from_millis(10))
                    .map_err(|(e, _)| DemoError(format!("{}: produce to {}: {e}", source.name, source.topic)))?;
            }
            produced.count(&w);
            live.events[w.source].fetch_add(1, Ordering::Relaxed);
            written += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(10)).map_err(fail("the sources' producer could not deliver everything"))?;
    let failed = producer.context().0.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(DemoError(format!("{failed} source records were not delivered to the mock cluster")));
    }
    produced.expected = sim.expected();
    Ok(produced)
}
