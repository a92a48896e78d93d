//! The `regions` scenario's databases: `eu`, `us` and `ap` write one
//! `customers` table and replicate each other's writes with a lag, like a
//! multi-primary database. Each row carries its version vector in a `_vv`
//! column (carried clocks): a region that applied another's write and then
//! writes again produces a clock that dominates it, and two regions editing
//! a row within the replication lag produce concurrent versions (conflicts,
//! resolved by the configured policy). `ap`'s database clock runs 3 s behind.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::scenario::SourceSpec;
use super::sources::{key_of, Kind, Rng, Simulation, Write_};

pub(super) const CUSTOMERS: u64 = 200;
/// The first keys take a share of all writes, so regions edit them concurrently.
const HOT_KEYS: u64 = 12;

pub(super) const SOURCES: [SourceSpec; 3] = [
    SourceSpec { name: "eu", topic: "eu.public.customers", priority: 3, clock_field: Some("_vv") },
    SourceSpec { name: "us", topic: "us.public.customers", priority: 2, clock_field: Some("_vv") },
    SourceSpec { name: "ap", topic: "ap.public.customers", priority: 1, clock_field: Some("_vv") },
];

/// How each region (in [`SOURCES`] order) writes.
pub(super) struct Region {
    /// Offset of this region's database clock (`source.ts_ms`), ms.
    pub skew_ms: i64,
    /// Share of the writes, in percent.
    weight: u64,
    cities: [&'static str; 4],
}

pub(super) const REGIONS: [Region; 3] = [
    Region { skew_ms: 0, weight: 40, cities: ["Paris", "Berlin", "Lisbon", "Dublin"] },
    Region { skew_ms: 0, weight: 35, cities: ["Boston", "Denver", "Austin", "Seattle"] },
    Region { skew_ms: -3000, weight: 25, cities: ["Tokyo", "Singapore", "Sydney", "Seoul"] },
];

const FIRST: [&str; 16] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken", "Radia", "Tim", "Hedy",
    "Dennis", "Karen", "Niklaus",
];
const LAST: [&str; 16] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Hamilton", "Thompson", "Perlman", "Lee",
    "Lamarr", "Ritchie", "Jones", "Wirth",
];
const DOMAINS: [&str; 4] = ["example.com", "mail.example", "corp.example", "post.example"];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

type Vv = BTreeMap<&'static str, u64>;

fn dominated(a: &Vv, b: &Vv) -> bool {
    a.iter().all(|(k, v)| b.get(k).copied().unwrap_or(0) >= *v)
}

#[derive(Clone, PartialEq)]
struct Customer {
    first: &'static str,
    last: &'static str,
    email: String,
    city: &'static str,
    tier: &'static str,
}

/// A region's copy of a row: its image (None: deleted), clock, commit time
/// and the region that wrote it.
#[derive(Clone)]
struct Local {
    row: Option<Customer>,
    vv: Vv,
    ts: i64,
    origin: usize,
}

fn row_json(id: u64, c: &Customer, vv: &Vv) -> Value {
    json!({
        "id": id,
        "name": format!("{} {}", c.first, c.last),
        "email": c.email,
        "city": c.city,
        "tier": c.tier,
        // A json column: Debezium sends it as a string.
        "_vv": serde_json::to_string(vv).expect("a clock serializes"),
    })
}

pub(super) struct Sim {
    rng: Rng,
    locals: [HashMap<u64, Local>; 3],
    /// Replication in flight: (due, to region, key, version).
    inbox: Vec<(Instant, usize, u64, Local)>,
    lsn: [u64; 3],
}

impl Sim {
    pub(super) fn new() -> Sim {
        Sim { rng: Rng::new(0x5eed_0f7a_1b07_a41e), locals: Default::default(), inbox: Vec::new(), lsn: [10_000_000; 3] }
    }

    /// Applies replicated versions that are due: a version that dominates
    /// the local one replaces it; a concurrent one is resolved locally
    /// (later commit time wins) under the merged clock, so the region's next
    /// write dominates both.
    fn replicate(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.inbox.len() {
            if self.inbox[i].0 > now {
                i += 1;
                continue;
            }
            let (_, to, id, incoming) = self.inbox.swap_remove(i);
            let local = self.locals[to].entry(id).or_insert_with(|| incoming.clone());
            if dominated(&incoming.vv, &local.vv) {
                continue;
            }
            if dominated(&local.vv, &incoming.vv) {
                *local = incoming;
                continue;
            }
            let mut vv = local.vv.clone();
            for (k, v) in &incoming.vv {
                let e = vv.entry(k).or_insert(0);
                *e = (*e).max(*v);
            }
            if (incoming.ts, std::cmp::Reverse(incoming.origin)) > (local.ts, std::cmp::Reverse(local.origin)) {
                *local = incoming;
            }
            local.vv = vv;
        }
    }

    fn pick_region(&mut self) -> usize {
        let mut roll = self.rng.below(100);
        for (i, r) in REGIONS.iter().enumerate() {
            if roll < r.weight {
                return i;
            }
            roll -= r.weight;
        }
        REGIONS.len() - 1
    }

    fn pick_key(&mut self, r: usize) -> u64 {
        for _ in 0..4 {
            let id = if self.rng.chance(0.15) { 1 + self.rng.below(HOT_KEYS) } else { 1 + self.rng.below(CUSTOMERS) };
            // Deleted customers come back, but not at once.
            match self.locals[r].get(&id) {
                Some(Local { row: None, .. }) if self.rng.chance(0.8) => continue,
                _ => return id,
            }
        }
        1 + self.rng.below(CUSTOMERS)
    }

    /// One write by region `r`: the Debezium records it produces (key, value).
    fn write_row(&mut self, r: usize, id: u64, wall_ms: i64, now: Instant) -> Write_ {
        let (region, name) = (&REGIONS[r], SOURCES[r].name);
        let ts = wall_ms + region.skew_ms;
        let current = self.locals[r].get(&id).cloned();
        let mut vv = current.as_ref().map(|l| l.vv.clone()).unwrap_or_default();
        *vv.entry(name).or_insert(0) += 1;
        let (kind, op, before, after) = match current.and_then(|l| l.row.map(|row| (row, l.vv))) {
            Some((row, old_vv)) if self.rng.chance(0.06) => (Kind::Delete, "d", Some(row_json(id, &row, &old_vv)), None),
            Some((row, old_vv)) => {
                let mut new = row.clone();
                while new == row {
                    match self.rng.below(10) {
                        0..=2 => {
                            new.email = format!(
                                "{}.{}{}@{}",
                                new.first.to_lowercase(),
                                new.last.to_lowercase(),
                                self.rng.below(100),
                                self.rng.pick(&DOMAINS)
                            )
                        }
                        3..=5 => new.city = self.rng.pick(&region.cities),
                        6..=8 => new.tier = self.rng.pick(&TIERS),
                        _ => new.last = self.rng.pick(&LAST),
                    }
                }
                (Kind::Update, "u", Some(row_json(id, &row, &old_vv)), Some(new))
            }
            None => {
                let first = FIRST[(id % 16) as usize];
                let last = LAST[((id / 16 + id * 5) % 16) as usize];
                let new = Customer {
                    first,
                    last,
                    email: format!("{}.{}{id}@{}", first.to_lowercase(), last.to_lowercase(), DOMAINS[0]),
                    city: self.rng.pick(&region.cities),
                    tier: self.rng.pick(&TIERS),
                };
                (Kind::Insert, "c", None, Some(new))
            }
        };
        self.lsn[r] += 40 + self.rng.below(400);
        let envelope = json!({
            "before": before,
            "after": after.as_ref().map(|c| row_json(id, c, &vv)),
            "source": {
                "version": "2.7.3.Final", "connector": "postgresql", "name": name,
                "ts_ms": ts, "snapshot": "false", "db": "shop", "schema": "public", "table": "customers",
                "txId": self.lsn[r] / 64, "lsn": self.lsn[r],
            },
            "op": op,
            "ts_ms": wall_ms,
            "transaction": null,
        });
        let key = key_of(id);
        let mut records = vec![(key.clone(), Some(envelope.to_string()))];
        if op == "d" {
            records.push((key, None));
        }
        let version = Local { row: after, vv, ts, origin: r };
        for to in 0..REGIONS.len() {
            if to != r {
                let lag = Duration::from_millis(50 + self.rng.below(450));
                self.inbox.push((now + lag, to, id, version.clone()));
            }
        }
        self.locals[r].insert(id, version);
        Write_ { source: r, id, kind, records }
    }
}

impl Simulation for Sim {
    fn advance(&mut self, now: Instant) {
        self.replicate(now);
    }

    fn write(&mut self, now: Instant, wall_ms: i64) -> Write_ {
        let r = self.pick_region();
        let id = self.pick_key(r);
        self.write_row(r, id, wall_ms, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_regions_write_valid_carried_clocks() {
        let mut sim = Sim::new();
        let now = Instant::now();
        let mut kinds = [0u64; 3];
        for i in 0..2000 {
            let w = sim.write(now, 1_000 + i);
            kinds[w.kind as usize] += 1;
            for (_, v) in &w.records {
                if let Some(v) = v {
                    let v: Value = serde_json::from_str(v).unwrap();
                    let image = if v["op"] == "d" { &v["before"] } else { &v["after"] };
                    let vv: BTreeMap<String, u64> = serde_json::from_str(image["_vv"].as_str().unwrap()).unwrap();
                    // A delete's clock is the before image's plus one for the region.
                    if v["op"] == "d" {
                        assert!(!vv.is_empty());
                    } else {
                        assert!(vv[SOURCES[w.source].name] >= 1);
                    }
                }
            }
            sim.replicate(now + Duration::from_secs(2));
        }
        assert!(kinds.iter().all(|n| *n > 0), "inserts, updates, deletes: {kinds:?}");
    }
}
