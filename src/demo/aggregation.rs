//! The `aggregation` scenario's systems, as in `examples/aggregation/`: the
//! CRM (`crm`: name, email, tags, first seen, a copy of the balance that
//! sales can edit, and campaign bonus points), billing (`billing`: the
//! balance, its own tags and email, and customers the CRM never has) and the
//! login services of two regions (`eu`, `us`: when a customer was first seen
//! and last logged in, and points per login) feed one `customers` table, and
//! every column resolves by its own rule.
//!
//! The clocks are derived (the default): each system's writes are ordered
//! by its topic's offsets, and writes of different systems are always
//! concurrent, since no system sees another's. So every customer written by
//! two systems is a live conflict, and the column rules decide the row.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::scenario::SourceSpec;
use super::sources::{key_of, Kind, Rng, Simulation, Write_};

/// Customers 1..=CRM_CUSTOMERS are the CRM's; billing also has the rest.
pub(super) const CRM_CUSTOMERS: u64 = 100;
pub(super) const CUSTOMERS: u64 = 120;

pub(super) const SOURCES: [SourceSpec; 4] = [
    SourceSpec { name: "crm", topic: "crm.public.customers", priority: 0, clock_field: None },
    SourceSpec { name: "billing", topic: "billing.public.customers", priority: 0, clock_field: None },
    SourceSpec { name: "eu", topic: "eu.public.customers", priority: 0, clock_field: None },
    SourceSpec { name: "us", topic: "us.public.customers", priority: 0, clock_field: None },
];
const CRM: usize = 0;
const BILLING: usize = 1;
/// Share of the writes per source, in percent.
const WEIGHTS: [u64; 4] = [30, 30, 20, 20];

/// The sink's columns: the union of the systems' columns.
pub(super) const COLUMNS: [&str; 8] = [
    "id bigint",
    "name text",
    "email text",
    "balance bigint",
    "tags json",
    "first_seen date",
    "last_login text",
    "loyalty_points bigint",
];

/// A column rule of `[merge.columns]`: column, rule (TOML), what it means here.
pub(super) struct Rule {
    pub column: &'static str,
    pub toml: &'static str,
    pub meaning: &'static str,
}

pub(super) const RULES: [Rule; 7] = [
    Rule {
        column: "email",
        toml: r#"{ rule = "owner", source = "crm" }"#,
        meaning: "the CRM's latest email; another system's only while the CRM has none",
    },
    Rule {
        column: "balance",
        toml: r#"{ rule = "owner", source = "billing" }"#,
        meaning: "billing's latest balance; the CRM's copy (edited by sales) only while billing has none",
    },
    Rule {
        column: "last_login",
        toml: r#"{ rule = "max" }"#,
        meaning: "the latest login any region reported, whenever it was sent",
    },
    Rule { column: "first_seen", toml: r#"{ rule = "min" }"#, meaning: "the earliest date any system saw the customer" },
    Rule {
        column: "tags",
        toml: r#"{ rule = "union" }"#,
        meaning: "every system's tags; a removal takes away only the additions its writer had seen",
    },
    Rule {
        column: "loyalty_points",
        toml: r#"{ rule = "counter" }"#,
        meaning: "every system's points added up: the initial value plus each system's own changes (after - before)",
    },
    Rule { column: "name", toml: "", meaning: "no rule: the latest write (lww order), as every column without one" },
];

/// `[merge]` and `[merge.columns]` as a user would write them.
pub(super) fn merge_section() -> String {
    let mut s = String::from("[merge]\npolicy = \"field-lww\"\ndeletes = \"update-wins\"\n\n[merge.columns]\n");
    for r in RULES.iter().filter(|r| !r.toml.is_empty()) {
        s.push_str(&format!("{} = {}\n", r.column, r.toml));
    }
    s
}

/// The rules in a few words, for the start-up lines.
pub(super) fn rules_in_brief() -> String {
    RULES
        .iter()
        .filter(|r| !r.toml.is_empty())
        .map(|r| {
            let rule = r.toml.split('"').nth(1).unwrap_or("?");
            match r.toml.split('"').nth(3) {
                Some(owner) => format!("{} {rule} {owner}", r.column),
                None => format!("{} {rule}", r.column),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const FIRST: [&str; 12] =
    ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Radia", "Hedy", "Karen", "Niklaus", "Leslie"];
const LAST: [&str; 12] =
    ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Perlman", "Lamarr", "Jones", "Wirth", "Lamport"];
const CRM_TAGS: [&str; 4] = ["newsletter", "trial", "b2b", "events"];
const BILLING_TAGS: [&str; 4] = ["vip", "paper-invoice", "annual", "overdue"];

pub(super) struct Sim {
    rng: Rng,
    /// Each system's own copy of its rows (None: deleted there).
    rows: [HashMap<u64, Option<Map<String, Value>>>; 4],
    lsn: [u64; 4],
}

fn date(rng: &mut Rng) -> String {
    format!("2025-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28))
}

fn name(id: u64) -> (&'static str, &'static str) {
    (FIRST[(id % 12) as usize], LAST[((id / 12 + id * 5) % 12) as usize])
}

fn add_points(row: &mut Map<String, Value>, n: i64) {
    let points = row.get("loyalty_points").and_then(Value::as_i64).unwrap_or(0);
    row.insert("loyalty_points".into(), (points + n).into());
}

impl Sim {
    pub(super) fn new() -> Sim {
        Sim { rng: Rng::new(0xa66e_6a7e_0c0f_fee5), rows: Default::default(), lsn: [20_000_000; 4] }
    }

    fn pick_source(&mut self) -> usize {
        let mut roll = self.rng.below(100);
        for (i, w) in WEIGHTS.iter().enumerate() {
            if roll < *w {
                return i;
            }
            roll -= w;
        }
        WEIGHTS.len() - 1
    }

    /// A login `ago_s` seconds before `wall_ms`: regions report logins late,
    /// so the latest report is not always the latest login.
    fn login(&mut self, wall_ms: i64) -> String {
        let ago = Duration::from_secs(self.rng.below(600));
        let at = UNIX_EPOCH + Duration::from_millis(wall_ms.max(0) as u64) - ago;
        humantime::format_rfc3339_seconds(at).to_string()
    }

    /// A new row of system `s`.
    fn insert(&mut self, s: usize, id: u64, wall_ms: i64) -> Map<String, Value> {
        let (first, last) = name(id);
        let mut row = Map::new();
        row.insert("id".into(), id.into());
        match s {
            CRM => {
                row.insert("name".into(), format!("{first} {last}").into());
                row.insert("email".into(), format!("{}.{}@crm.example", first.to_lowercase(), last.to_lowercase()).into());
                row.insert("balance".into(), 0.into());
                row.insert("tags".into(), json!([self.rng.pick(&CRM_TAGS)]));
                row.insert("first_seen".into(), date(&mut self.rng).into());
                row.insert("loyalty_points".into(), 0.into());
            }
            BILLING => {
                row.insert("name".into(), format!("{first} {last}").into());
                row.insert("email".into(), format!("{}@billing.example", last.to_lowercase()).into());
                row.insert("balance".into(), (10 * self.rng.below(50)).into());
                row.insert("tags".into(), json!([self.rng.pick(&BILLING_TAGS)]));
            }
            _ => {
                row.insert("first_seen".into(), date(&mut self.rng).into());
                let at = self.login(wall_ms);
                row.insert("last_login".into(), at.into());
                row.insert("loyalty_points".into(), 0.into());
            }
        }
        row
    }

    /// System `s` changes one column of `row`.
    fn update(&mut self, s: usize, id: u64, row: &mut Map<String, Value>, wall_ms: i64) {
        let roll = self.rng.below(100);
        let toggle = |rng: &mut Rng, row: &mut Map<String, Value>, pool: &[&'static str]| {
            let tag = Value::from(rng.pick(pool));
            let mut tags: Vec<Value> = row.get("tags").and_then(Value::as_array).cloned().unwrap_or_default();
            match tags.iter().position(|t| *t == tag) {
                Some(i) if tags.len() > 1 => {
                    tags.remove(i);
                }
                Some(_) => tags.push(Value::from(rng.pick(pool))),
                None => tags.push(tag),
            }
            tags.dedup();
            row.insert("tags".into(), Value::Array(tags));
        };
        match s {
            CRM if roll < 30 => {
                let (first, last) = name(id);
                let email = format!("{}.{}{}@crm.example", first.to_lowercase(), last.to_lowercase(), self.rng.below(100));
                row.insert("email".into(), email.into());
            }
            CRM if roll < 55 => toggle(&mut self.rng, row, &CRM_TAGS),
            // Sales edits the CRM's copy of the balance: billing owns the column.
            CRM if roll < 75 => {
                row.insert("balance".into(), (5 * self.rng.below(40)).into());
            }
            // A campaign bonus, while the regions add points for logins.
            CRM if roll < 90 => add_points(row, 25 * (1 + self.rng.below(4) as i64)),
            CRM => {
                let (first, _) = name(id);
                row.insert("name".into(), format!("{first} {}", self.rng.pick(&LAST)).into());
            }
            BILLING if roll < 65 => {
                row.insert("balance".into(), (10 * self.rng.below(50)).into());
            }
            BILLING => toggle(&mut self.rng, row, &BILLING_TAGS),
            _ if roll < 90 => {
                let at = self.login(wall_ms);
                row.insert("last_login".into(), at.into());
                add_points(row, 10);
            }
            _ => {
                row.insert("first_seen".into(), date(&mut self.rng).into());
            }
        }
    }
}

impl Simulation for Sim {
    fn advance(&mut self, _: Instant) {}

    /// `loyalty_points` of every customer: the sum of what each system that
    /// has the row holds (each started it at 0), which the counter rule
    /// promises whatever the order the systems' events arrive in.
    fn expected(&self) -> BTreeMap<u64, Map<String, Value>> {
        let mut out: BTreeMap<u64, Map<String, Value>> = BTreeMap::new();
        for rows in &self.rows {
            for (id, row) in rows {
                let Some(points) = row.as_ref().and_then(|r| r.get("loyalty_points")).and_then(Value::as_i64) else { continue };
                let slot = out.entry(*id).or_default().entry("loyalty_points").or_insert(0.into());
                *slot = (slot.as_i64().unwrap_or(0) + points).into();
            }
        }
        out
    }

    fn write(&mut self, _: Instant, wall_ms: i64) -> Write_ {
        let s = self.pick_source();
        let id = match s {
            CRM => 1 + self.rng.below(CRM_CUSTOMERS),
            _ => 1 + self.rng.below(CUSTOMERS),
        };
        let current = self.rows[s].get(&id).cloned().flatten();
        let (kind, op, before, after) = match current {
            // The CRM closes an account now and then; the others keep it
            // (deletes = update-wins), and the CRM may open it again.
            Some(row) if s == CRM && self.rng.chance(0.04) => (Kind::Delete, "d", Some(row), None),
            Some(row) => {
                let mut new = row.clone();
                while new == row {
                    self.update(s, id, &mut new, wall_ms);
                }
                (Kind::Update, "u", Some(row), Some(new))
            }
            None => (Kind::Insert, "c", None, Some(self.insert(s, id, wall_ms))),
        };
        let name = SOURCES[s].name;
        self.lsn[s] += 40 + self.rng.below(400);
        let envelope = json!({
            "before": before,
            "after": after,
            "source": {
                "version": "2.7.3.Final", "connector": "postgresql", "name": name,
                "ts_ms": wall_ms, "snapshot": "false", "db": name, "schema": "public", "table": "customers",
                "txId": self.lsn[s] / 64, "lsn": self.lsn[s],
            },
            "op": op,
            "ts_ms": wall_ms,
            "transaction": null,
        });
        let key = key_of(id);
        let mut records = vec![(key.clone(), Some(envelope.to_string()))];
        if kind == Kind::Delete {
            records.push((key, None));
        }
        self.rows[s].insert(id, after);
        Write_ { source: s, id, kind, records }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_system_writes_only_its_own_columns() {
        let mut sim = Sim::new();
        let now = Instant::now();
        let mut kinds = [[0u64; 3]; 4];
        for i in 0..4000 {
            let w = sim.write(now, 1_700_000_000_000 + i);
            kinds[w.source][w.kind as usize] += 1;
            let v: Value = serde_json::from_str(w.records[0].1.as_deref().unwrap()).unwrap();
            let image = if v["op"] == "d" { &v["before"] } else { &v["after"] };
            let columns: Vec<&str> = image.as_object().unwrap().keys().map(String::as_str).collect();
            let allowed: &[&str] = match w.source {
                CRM => &["id", "name", "email", "balance", "tags", "first_seen", "loyalty_points"],
                BILLING => &["id", "name", "email", "balance", "tags"],
                _ => &["id", "first_seen", "last_login", "loyalty_points"],
            };
            assert!(columns.iter().all(|c| allowed.contains(c)), "{}: {columns:?}", SOURCES[w.source].name);
            if w.source == CRM {
                assert!(w.id <= CRM_CUSTOMERS);
            }
            if v["op"] == "u" {
                assert_ne!(v["before"], v["after"]);
            }
            assert_eq!(w.records.len(), if v["op"] == "d" { 2 } else { 1 });
        }
        // Only the CRM deletes; everyone inserts and updates.
        assert!(kinds[CRM].iter().all(|n| *n > 0), "{kinds:?}");
        assert!(kinds[1..].iter().all(|k| k[0] > 0 && k[1] > 0 && k[2] == 0), "{kinds:?}");
    }

    #[test]
    fn the_rules_read_as_toml() {
        let section = merge_section();
        let parsed: toml::Table = section.parse().unwrap();
        assert_eq!(parsed["merge"]["columns"]["balance"]["source"].as_str(), Some("billing"));
        assert_eq!(
            rules_in_brief(),
            "email owner crm, balance owner billing, last_login max, first_seen min, tags union, loyalty_points counter"
        );
    }
}
