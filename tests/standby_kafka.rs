//! Standby replicas (`[runtime] standby_replicas`) on a real Apache Kafka
//! 4.x broker: each member keeps warm copies of the tasks the other owns, so
//! that when the owner is killed the survivor takes its tasks over without
//! restoring their changelogs, and goes on to the output replay gives.
//!
//! Needs a broker: `TRIBUTARY_TEST_BOOTSTRAP=host:port cargo test --test standby_kafka`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::kafka::{admin_addr, metric, metrics_of, produce, Processor};
use common::setup::{Conf, Setup, PARTITIONS};
use common::views::{assert_state_matches, history, wait_for_view};

const KEYS: u64 = 300;

/// A killed member leaves the group after 6 s (the broker's smallest
/// session timeout) instead of librdkafka's 45 s.
const SESSION: &str = "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n";

fn config(s: &Setup, state: &str, replicas: u32) -> PathBuf {
    let runtime = format!("standby_replicas = {replicas}");
    s.config_with(state, &Conf { runtime: &runtime, tables: SESSION, ..Conf::default() })
}

/// The processor's standby copies: partition → records behind.
fn copies(p: &Processor) -> BTreeMap<i32, f64> {
    metrics_of(p)
        .lines()
        .filter(|l| l.starts_with("tributary_standby_lag_records{"))
        .map(|l| {
            let at = l.find("partition=\"").expect("a partition label") + "partition=\"".len();
            let partition = l[at..].split('"').next().unwrap().parse().unwrap();
            (partition, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect()
}

/// The lines of `log` after byte `from` that contain `what`, by partition.
fn lines_by_partition(log: &str, from: usize, what: &str) -> BTreeMap<i32, String> {
    log[from..]
        .lines()
        .filter(|l| l.contains(what))
        .map(|l| {
            let at = l.find("partition=").expect("a partition field") + "partition=".len();
            (l[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap(), l.to_string())
        })
        .collect()
}

/// Waits until each member keeps a caught-up copy of exactly the tasks the
/// other owns; returns the copies of each (partition → records behind).
fn wait_for_copies(a: &Processor, b: &Processor) -> (BTreeMap<i32, f64>, BTreeMap<i32, f64>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ca, cb) = (copies(a), copies(b));
        let all: BTreeSet<i32> = ca.keys().chain(cb.keys()).copied().collect();
        let disjoint = ca.keys().all(|p| !cb.contains_key(p));
        if !ca.is_empty()
            && !cb.is_empty()
            && disjoint
            && all.len() == PARTITIONS as usize
            && ca.values().chain(cb.values()).all(|v| *v == 0.0)
        {
            return (ca, cb);
        }
        assert!(Instant::now() < deadline, "no caught-up standby copies of every task within 120 s: A {ca:?}, B {cb:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `b` opened every task of `kept` after byte `mark` of its
/// log (the other member was killed); returns those `task opened` lines.
fn wait_for_takeover(b: &Processor, mark: usize, kept: &BTreeMap<i32, f64>) -> BTreeMap<i32, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let opened = lines_by_partition(&b.log_text(), mark, "task opened");
        if kept.keys().all(|p| opened.contains_key(p)) {
            return opened;
        }
        assert!(Instant::now() < deadline, "B did not take over the tasks {kept:?} within 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `p` consumed `n` records.
fn wait_consumed(p: &Processor, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&metrics_of(p), "tributary_records_consumed_total", &[]).unwrap_or(0.0) < n as f64 {
        assert!(Instant::now() < deadline, "not every event consumed within 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two members with one standby each: every task is owned by one and kept
/// warm by the other. Killing one (SIGKILL) hands its tasks to the other,
/// which opens them from its copies: no changelog record read again. Without
/// standbys the survivor restores each of them from the changelog's start
/// (and before the feature no copy existed: the wait for them fails).
#[test]
fn killed_owner_is_taken_over_from_warm_copies_without_a_restore() {
    let s = Setup::new("standby");
    let first = history(&s, KEYS, 0..3);
    produce(&first);
    let a = Processor::start(&config(&s, "a", 1), &s.log("a"));
    wait_consumed(&a, first.len());
    let b = Processor::start(&config(&s, "b", 1), &s.log("b"));

    let (kept_by_a, kept_by_b) = wait_for_copies(&a, &b);
    assert!(b.log_text().contains("standby caught up"), "{}", b.log_text());
    let mark = b.log_text().len();
    a.kill9();
    let opened = wait_for_takeover(&b, mark, &kept_by_b);
    let log = b.log_text();
    let handed = lines_by_partition(&log, mark, "standby copy handed over");
    let restoring = lines_by_partition(&log, mark, "restoring state from the changelog");
    for p in kept_by_b.keys() {
        assert!(opened[p].contains("restored=0 "), "task {p} read its changelog again: {}", opened[p]);
        assert!(handed.contains_key(p), "task {p} opened without its copy: {log}");
        assert!(!restoring.contains_key(p), "task {p} restored: {}", restoring[p]);
    }
    assert!(!kept_by_a.is_empty());

    // B alone now: no copies, and the merge goes on from the copies' states
    // to exactly what replay makes of every event.
    let second = history(&s, KEYS, 3..5);
    produce(&second);
    let (_, replay) = wait_for_view(&s, "", Duration::from_secs(120));
    assert_state_matches(&admin_addr(&b), &replay, 20);
    assert!(copies(&b).is_empty(), "B keeps copies with no other member: {:?}", copies(&b));
    assert!(b.stop().success());
}

/// Copies follow the continuity rules of owned tasks. The same two state
/// directories serve a second application (another group, so another
/// changelog) over the same keys: each copy finds a keyspace whose
/// checkpoint belongs to the first application's changelog, wipes it and
/// reads its own changelog from the start, and the takeover then reads
/// nothing. With the check left out, a copy read the new changelog over the
/// first application's states; here the takeover caught it (the copy's
/// checkpoint, an offset of the first changelog, lay past the new one's
/// end) and restored from scratch, failing `restored=0`; an offset below the
/// new end would have had the stale states taken as they were.
#[test]
fn copies_do_not_trust_local_state_of_another_changelog() {
    let old = Setup::new("standby-old");
    let first = history(&old, KEYS, 0..4);
    produce(&first);
    let a = Processor::start(&config(&old, "a", 1), &old.log("a"));
    wait_consumed(&a, first.len());
    let b = Processor::start(&config(&old, "b", 1), &old.log("b"));
    wait_for_copies(&a, &b);
    assert!(a.stop().success());
    assert!(b.stop().success());

    // The second application, on the first one's state directories.
    let new = Setup::new("standby-new");
    let state = |name: &str| old.dir.path().join(name).display().to_string();
    let second = history(&new, KEYS, 0..2);
    produce(&second);
    let a = Processor::start(&config(&new, &state("a"), 1), &new.log("a"));
    wait_consumed(&a, second.len());
    let b = Processor::start(&config(&new, &state("b"), 1), &new.log("b"));
    let (_, kept_by_b) = wait_for_copies(&a, &b);
    let log = b.log_text();
    let distrusted = lines_by_partition(&log, 0, "local copy of task");
    for p in kept_by_b.keys() {
        assert!(distrusted.get(p).is_some_and(|l| l.contains("not trusted")), "copy {p} trusted the old state: {log}");
    }
    let mark = b.log_text().len();
    a.kill9();
    let opened = wait_for_takeover(&b, mark, &kept_by_b);
    for p in kept_by_b.keys() {
        assert!(opened[p].contains("restored=0 "), "task {p} read its changelog again: {}", opened[p]);
    }
    let (_, replay) = wait_for_view(&new, "", Duration::from_secs(120));
    assert_state_matches(&admin_addr(&b), &replay, 20);
    assert!(b.stop().success());
}
