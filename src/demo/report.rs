//! The reports printed at the end of a demo.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::observe::{KnownValues, MetricsView, ReplayCheck, Row};
use super::sources::Produced;
use super::{aggregation, regions, DemoPolicy, CATCH_UP, TABLE};
use crate::config::Config;
use crate::merge::KeyState;
use crate::pipeline::Pipeline;

/// What the demo saw, for the report.
pub(super) struct Seen<'a> {
    pub config: &'a Config,
    pub wrote_for: Duration,
    pub rate: f64,
    pub produced: &'a Produced,
    pub counts: &'a MetricsView,
    /// The processor's committed state per customer id.
    pub keys: &'a BTreeMap<u64, KeyState>,
    pub rows: &'a BTreeMap<i64, Row>,
    pub sqlite: &'a Path,
    pub metrics_url: &'a str,
    pub caught_up: bool,
    pub consumed: u64,
    pub sink_records: u64,
    pub check: Option<&'a ReplayCheck>,
    pub known: &'a KnownValues,
}

/// What the processor's state says about a key.
struct KeyView {
    deleted: bool,
    winner: Option<String>,
    siblings: usize,
    /// (source, commit time) of every version in the set.
    versions: Vec<(String, i64)>,
}

impl Seen<'_> {
    fn views(&self, pipeline: &Pipeline) -> BTreeMap<u64, KeyView> {
        self.keys
            .iter()
            .map(|(id, state)| {
                let r = pipeline.engine().resolve(state);
                let view = KeyView {
                    deleted: r.row.is_none(),
                    winner: r.winner.map(str::to_string),
                    siblings: r.siblings,
                    versions: state.versions.iter().map(|v| (v.source.clone(), v.ts)).collect(),
                };
                (*id, view)
            })
            .collect()
    }

    fn events(&self, f: &mut fmt::Formatter<'_>, names: &[&str], note: impl Fn(usize) -> String) -> fmt::Result {
        let p = self.produced;
        let width = names.iter().map(|n| n.len()).max().unwrap_or(3);
        for (i, name) in names.iter().enumerate() {
            writeln!(
                f,
                "  {name:<width$} {:>6} events: {} inserts, {} updates, {} deletes (+{} tombstones){}",
                p.events(i),
                p.inserts[i],
                p.updates[i],
                p.deletes[i],
                p.deletes[i],
                note(i)
            )?;
        }
        Ok(())
    }

    fn dropped(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.counts;
        let emitted = s.sum("tributary_records_emitted_total", &[]) as u64;
        let stale = s.sum("tributary_events_dropped_total", &[("outcome", "stale")]) as u64;
        let dup = s.sum("tributary_events_dropped_total", &[("outcome", "duplicate")]) as u64;
        let ignored = s.sum("tributary_events_dropped_total", &[("outcome", "ignored")]) as u64;
        let dead = s.sum("tributary_dead_letters_total", &[]) as u64;
        writeln!(f, "  consumed {} records, merged records emitted {emitted}", self.consumed)?;
        writeln!(f, "  dropped: {stale} stale (superseded by a causally later version already merged), {dup} duplicates, {ignored} tombstones ignored; {dead} dead letters")
    }

    fn caught_up(&self, f: &mut fmt::Formatter<'_>, live: usize) -> fmt::Result {
        if !self.caught_up {
            writeln!(f, "  warning: the processor and sink had not caught up within {} s; the table may lag", CATCH_UP.as_secs())
        } else if self.rows.len() != live {
            writeln!(f, "  warning: the table's row count differs from the live keys")
        } else {
            Ok(())
        }
    }
}

fn text(row: &Row, column: &str) -> String {
    match row.get(column) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn clock_time(ms: i64) -> String {
    let ms = ms.rem_euclid(86_400_000);
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// The `regions` scenario's report.
pub(super) struct Regions<'a>(pub &'a Seen<'a>);

impl fmt::Display for Regions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = self.0;
        let s = seen.counts;
        let (policy, deletes) = (seen.config.merge.policy.as_str(), seen.config.merge.deletes.as_str());
        let pipeline = Pipeline::new(seen.config);
        let keys = seen.views(&pipeline);
        writeln!(f)?;
        writeln!(f, "== tributary demo: 3 regions -> one merged customers table (policy {policy}, deletes {deletes}) ==")?;
        writeln!(f)?;
        writeln!(
            f,
            "Events written ({:.1} s at ~{} events/s; Debezium JSON, keys {{\"id\":N}} over {} customers):",
            seen.wrote_for.as_secs_f64(),
            seen.rate,
            regions::CUSTOMERS
        )?;
        let names: Vec<&str> = regions::SOURCES.iter().map(|r| r.name).collect();
        seen.events(f, &names, |i| {
            let skew = regions::REGIONS[i].skew_ms;
            if skew != 0 {
                format!("   (database clock {:+} s)", skew / 1000)
            } else {
                String::new()
            }
        })?;
        writeln!(f)?;
        writeln!(f, "Processor (tributary run, at-least-once: the mock cluster's transactions write no markers, so exactly-once cannot be shown here):")?;
        seen.dropped(f)?;
        let conflicts = s.sum("tributary_conflicts_total", &[]) as u64;
        let winners = s.by("tributary_conflicts_total", "winner");
        let listing: Vec<String> = winners.iter().filter(|(w, _)| *w != "-").map(|(w, n)| format!("{w} {}", *n as u64)).collect();
        let resolved =
            if listing.is_empty() { "column by column".to_string() } else { format!("winners {}", listing.join(", ")) };
        writeln!(f, "  conflicts: {conflicts} events left concurrent versions of their key; resolved by {policy}: {resolved}")?;
        let how = match policy {
            "lww" => "the version with the latest source commit time wins. ap's database clock runs 3 s behind, so its\n    concurrent edits lose to eu/us edits made up to 3 s earlier; its causally later edits (made after it\n    had replicated the other version) still win, because their version vectors dominate",
            "source-priority" => "the source with the larger priority wins (eu 3 > us 2 > ap 1), then the latest commit time",
            _ => "column by column: each column takes its latest write (no single winner, shown as \"-\")",
        };
        writeln!(f, "    {how}.")?;
        let skews: Vec<String> =
            s.by("tributary_clock_skew_seconds", "source").iter().map(|(k, v)| format!("{k} {v:+.1} s")).collect();
        if !skews.is_empty() {
            writeln!(
                f,
                "  clock skew seen (Kafka time - source commit time, tributary_clock_skew_seconds): {}",
                skews.join(", ")
            )?;
        }

        let live = keys.values().filter(|k| !k.deleted).count();
        let deleted = keys.len() - live;
        let open = keys.values().filter(|k| k.siblings > 1).count();
        writeln!(f)?;
        writeln!(
            f,
            "Merged view (the processor's state store, each key): {} keys, {live} live keys, {deleted} deleted, {open} with concurrent versions right now",
            keys.len()
        )?;
        writeln!(f, "SQLite (tributary sink, {} records applied): {} rows in table {TABLE}", seen.sink_records, seen.rows.len())?;
        writeln!(f, "  SQLite file: {}", seen.sqlite.display())?;
        // Fewer rows than customers is not data loss: say where they went.
        let unwritten = (regions::CUSTOMERS as usize).saturating_sub(keys.len());
        writeln!(
            f,
            "  {} customers, {} rows: {deleted} keys resolve to deleted under deletes = {deletes} (the sink removed their rows on the tombstone), {unwritten} customers were never written in this run",
            regions::CUSTOMERS,
            seen.rows.len(),
        )?;
        if policy == "field-lww" {
            writeln!(f, "  field-lww: a row that survives a concurrent delete starts from the surviving write's full row, so no column goes missing")?;
        }
        seen.caught_up(f, live)?;

        // A few rows: open conflicts, then keys where a causally later write
        // settled the merge (ap's among them: it wins those despite its clock).
        let regions_in = |id: u64| seen.rows.get(&(id as i64)).map_or(0, |r| text(r, "_vv").matches(':').count());
        let live_keys: Vec<(u64, &KeyView)> = keys.iter().filter(|(_, k)| !k.deleted).map(|(id, k)| (*id, k)).collect();
        let mut sample: Vec<(u64, &KeyView)> = Vec::new();
        for (pred, n) in [
            (&(|k: &KeyView| k.siblings > 1) as &dyn Fn(&KeyView) -> bool, 2),
            (&|k: &KeyView| k.siblings == 1 && k.winner.as_deref() == Some("ap"), 2),
            (&|k: &KeyView| k.siblings == 1, 6),
        ] {
            let mut picked: Vec<(u64, &KeyView)> =
                live_keys.iter().filter(|(id, k)| pred(k) && !sample.iter().any(|(s, _)| s == id)).copied().collect();
            picked.sort_by_key(|(id, k)| (std::cmp::Reverse(regions_in(*id)), std::cmp::Reverse(k.siblings), *id));
            let n = n.min(6 - sample.len().min(6));
            sample.extend(picked.into_iter().take(n));
        }
        writeln!(f)?;
        writeln!(f, "Some merged rows (table {TABLE}, _vv = the merged version vector; winner from the processor's state):")?;
        writeln!(f, "  {:>4}  {:<18} {:<32} {:<10} {:<9} {:<26} winner", "id", "name", "email", "city", "tier", "_vv")?;
        for (id, k) in sample {
            let Some(row) = seen.rows.get(&(id as i64)) else { continue };
            let versions = if k.siblings > 1 {
                let v: Vec<String> = k.versions.iter().map(|(src, ts)| format!("{src} @{}", clock_time(*ts))).collect();
                format!("  ({} concurrent: {})", k.siblings, v.join(", "))
            } else {
                String::new()
            };
            let vv = text(row, "_vv");
            writeln!(
                f,
                "  {:>4}  {:<18} {:<32} {:<10} {:<9} {:<26} {}{versions}",
                text(row, "id"),
                text(row, "name"),
                text(row, "email"),
                text(row, "city"),
                text(row, "tier"),
                if vv.is_empty() { "-" } else { vv.as_str() },
                k.winner.as_deref().unwrap_or("-")
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Metrics were served at {} (and /healthz, /readyz; /state/{{key}} needs an [admin] token) while the demo ran.",
            seen.metrics_url
        )?;
        writeln!(f, "Look at the table:   sqlite3 {} 'SELECT * FROM {TABLE} LIMIT 10'", seen.sqlite.display())?;
        writeln!(f, "Re-run with another policy or scenario (from a checkout: cargo run --release -- demo ...):")?;
        for other in DemoPolicy::ALL.iter().filter(|p| p.as_str() != policy) {
            writeln!(f, "  tributary demo --policy {other}")?;
        }
        writeln!(f, "  TRIBUTARY_MERGE__DELETES=delete-wins tributary demo --policy {policy}")?;
        writeln!(f, "  tributary demo --scenario aggregation")?;
        Ok(())
    }
}

/// The `aggregation` scenario's report: which write decided each column and why.
pub(super) struct Aggregation<'a>(pub &'a Seen<'a>);

impl fmt::Display for Aggregation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = self.0;
        let s = seen.counts;
        let deletes = seen.config.merge.deletes.as_str();
        let pipeline = Pipeline::new(seen.config);
        let engine = pipeline.engine();
        let keys = seen.views(&pipeline);
        writeln!(f)?;
        writeln!(
            f,
            "== tributary demo --scenario aggregation: crm, billing, eu, us -> one customers table (policy field-lww with column rules, deletes {deletes}) =="
        )?;
        writeln!(f)?;
        writeln!(f, "Column rules ([merge.columns]; the same as examples/aggregation/):")?;
        for r in &aggregation::RULES {
            let rule = if r.toml.is_empty() { "(none)" } else { r.toml };
            writeln!(f, "  {:<14}  {:<40}  {}", r.column, rule, r.meaning)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Events written ({:.1} s at ~{} events/s; Debezium JSON, keys {{\"id\":N}}; the CRM has customers 1-{}, billing 1-{}):",
            seen.wrote_for.as_secs_f64(),
            seen.rate,
            aggregation::CRM_CUSTOMERS,
            aggregation::CUSTOMERS
        )?;
        let names: Vec<&str> = aggregation::SOURCES.iter().map(|r| r.name).collect();
        seen.events(f, &names, |_| String::new())?;
        writeln!(f, "  No system sees another's writes (derived clocks: each topic's offsets order its own), so every")?;
        writeln!(f, "  customer written by two systems holds concurrent versions, and the column rules decide the row.")?;
        writeln!(f)?;
        writeln!(f, "Processor (tributary run, at-least-once):")?;
        seen.dropped(f)?;
        let conflicts = s.sum("tributary_conflicts_total", &[]) as u64;
        writeln!(f, "  conflicts: {conflicts} events left concurrent versions of their key; resolved column by column")?;
        let foreign: Vec<String> = s
            .by("tributary_owner_foreign_writes_total", "source")
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(src, n)| format!("{src} {}", *n as u64))
            .collect();
        writeln!(
            f,
            "  writes to an owned column by another system (tributary_owner_foreign_writes_total): {}",
            if foreign.is_empty() { "none".to_string() } else { foreign.join(", ") }
        )?;
        writeln!(f, "    such a write is used only while the owner has written nothing: sales' balance edits in the CRM never beat billing's")?;

        let live = keys.values().filter(|k| !k.deleted).count();
        let deleted = keys.len() - live;
        let open = keys.values().filter(|k| k.siblings > 1).count();
        writeln!(f)?;
        writeln!(
            f,
            "Merged view (the processor's state store, each key): {} keys, {live} live keys, {deleted} deleted, {open} with concurrent versions right now",
            keys.len()
        )?;
        let survived = seen
            .keys
            .values()
            .filter(|state| {
                state.versions.iter().any(|v| v.source == "crm" && v.op == crate::merge::Op::Delete)
                    && engine.resolve(state).row.is_some()
            })
            .count();
        writeln!(
            f,
            "  {survived} live keys hold a CRM delete: under deletes = {deletes} the row stays while another system still has it,"
        )?;
        writeln!(f, "  and the CRM's columns fall back to what the other systems wrote")?;

        // Who decided each column, over every live key.
        let mut tally: BTreeMap<String, BTreeMap<(String, &'static str), usize>> = BTreeMap::new();
        for state in seen.keys.values() {
            for w in engine.explain(state) {
                let who = w.source.clone().unwrap_or_else(|| "every system".into());
                *tally.entry(w.column.clone()).or_default().entry((who, w.why)).or_default() += 1;
            }
        }
        writeln!(f)?;
        writeln!(f, "Who decided each column, over the {live} live keys (source: number of keys, why):")?;
        let order: Vec<&str> = aggregation::RULES.iter().map(|r| r.column).collect();
        for column in order.iter().copied() {
            let Some(deciders) = tally.get(column) else { continue };
            let mut deciders: Vec<(&(String, &str), &usize)> = deciders.iter().collect();
            deciders.sort_by_key(|(who, n)| (std::cmp::Reverse(**n), who.0.clone()));
            for (i, ((who, why), n)) in deciders.iter().enumerate() {
                let label = if i == 0 { column } else { "" };
                writeln!(f, "  {label:<14}  {who:<12} {n:>4}  {why}")?;
            }
        }

        writeln!(f)?;
        writeln!(f, "SQLite (tributary sink, {} records applied): {} rows in table {TABLE}", seen.sink_records, seen.rows.len())?;
        writeln!(f, "  SQLite file: {}", seen.sqlite.display())?;
        seen.caught_up(f, live)?;

        // A few customers column by column: one of billing's own, one that
        // survived a CRM delete, and the ones most systems wrote.
        let live_ids: Vec<u64> = keys.iter().filter(|(_, k)| !k.deleted).map(|(id, _)| *id).collect();
        let systems = |id: &u64| seen.keys.get(id).map_or(0, |s| s.versions.len());
        let mut sample: Vec<u64> = Vec::new();
        if let Some(id) = live_ids.iter().filter(|id| **id > aggregation::CRM_CUSTOMERS).max_by_key(|id| (systems(id), **id)) {
            sample.push(*id);
        }
        let crm_deleted = |id: &u64| {
            seen.keys.get(id).is_some_and(|s| s.versions.iter().any(|v| v.source == "crm" && v.op == crate::merge::Op::Delete))
        };
        if let Some(id) = live_ids.iter().filter(|id| crm_deleted(id)).max_by_key(|id| (systems(id), **id)) {
            sample.push(*id);
        }
        let mut rest: Vec<u64> = live_ids.iter().copied().filter(|id| !sample.contains(id)).collect();
        // Rather one whose points moved, to show the counter at work.
        let points = |id: &u64| seen.rows.get(&(*id as i64)).and_then(|r| r.get("loyalty_points")?.as_i64()).unwrap_or(0);
        rest.sort_by_key(|id| (std::cmp::Reverse(systems(id)), points(id) == 0, *id));
        sample.extend(rest.into_iter().take(3usize.saturating_sub(sample.len()).max(1)));
        writeln!(f)?;
        writeln!(
            f,
            "Some customers column by column (value from table {TABLE}; deciding write and why from the processor's state):"
        )?;
        for id in sample {
            let (Some(row), Some(state)) = (seen.rows.get(&(id as i64)), seen.keys.get(&id)) else { continue };
            let systems: Vec<&str> = state.versions.iter().map(|v| v.source.as_str()).collect();
            let note = if crm_deleted(&id) {
                " (the CRM deleted it; the others still have it)"
            } else if id > aggregation::CRM_CUSTOMERS {
                " (billing's customer: the CRM never had it)"
            } else {
                ""
            };
            writeln!(f, "  id {id}: versions from {}{note}", systems.join(", "))?;
            for w in engine.explain(state).iter().filter(|w| w.column != "id") {
                let who = w.source.as_deref().unwrap_or("every system");
                let value = text(row, &w.column);
                writeln!(f, "    {:<14}  {:<34} {:<8} {:<13} {}", w.column, value, w.rule, who, w.why)?;
            }
        }

        writeln!(f)?;
        match seen.check {
            Some(c) if c.passed() => writeln!(
                f,
                "Replay check: {} source records replayed offline (tributary replay's path): {} keys, {} live; the output topic and the table match replay for all {} keys",
                c.records, c.keys, c.live, c.matching
            )?,
            Some(c) => {
                writeln!(
                    f,
                    "Replay check FAILED: {} source records replayed offline: {} keys, {} match, {} differ:",
                    c.records,
                    c.keys,
                    c.matching,
                    c.mismatches.len()
                )?;
                for m in c.mismatches.iter().take(10) {
                    writeln!(f, "  {m}")?;
                }
            }
            None => {}
        }
        let known = seen.known;
        let columns = known.columns.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        if known.rows > 0 && known.mismatches.is_empty() {
            writeln!(
                f,
                "Counter check: {columns} of all {} rows equals the sum of what each system's own database holds",
                known.rows
            )?;
        } else if known.rows > 0 {
            writeln!(
                f,
                "Counter check FAILED: {columns} differs from what the systems' databases hold in {} of {} rows:",
                known.mismatches.len(),
                known.rows
            )?;
            for m in known.mismatches.iter().take(10) {
                writeln!(f, "  {m}")?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "Metrics were served at {} (and /healthz, /readyz; /state/{{key}} needs an [admin] token) while the demo ran.",
            seen.metrics_url
        )?;
        writeln!(f, "Look at the table:   sqlite3 {} 'SELECT * FROM {TABLE} LIMIT 10'", seen.sqlite.display())?;
        writeln!(f, "The same rules on a fixed dump, step by step: examples/aggregation/README.md")?;
        writeln!(f, "  TRIBUTARY_MERGE__DELETES=lww tributary demo --scenario aggregation")?;
        writeln!(f, "  tributary demo                      # three regions, conflicts resolved by a policy")?;
        Ok(())
    }
}
