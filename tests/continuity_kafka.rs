//! State continuity under faults (issue "1/7"), on a real Apache Kafka 4.x
//! broker: a task never processes records on state that is older than what
//! the group committed, and never trusts local state that does not provably
//! continue the changelog. Each test fails on the code before its fix; the
//! comment on each says how.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{
    self, admin_addr, http_get, metric, metrics_of, produce, read_topic, unique, wait_for_records, Processor, Rec,
};
use common::setup::{topic_exists, Conf, Setup, HELD_BACK, PARTITIONS};
use common::views::{assert_state_matches, history, history_of, wait_for_log, wait_for_view};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

/// A transactional producer that leaves a transaction open on every
/// partition of `topic`: the last stable offset stays pinned there until
/// [`Pin::release`] aborts it.
struct Pin(BaseProducer);

impl Pin {
    fn open(topic: &str) -> Pin {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka::bootstrap())
            .set("transactional.id", unique("pin"))
            .set("transaction.timeout.ms", "300000")
            .create()
            .unwrap();
        producer.init_transactions(Duration::from_secs(30)).unwrap();
        producer.begin_transaction().unwrap();
        for p in 0..PARTITIONS {
            producer.send(BaseRecord::to(topic).partition(p).key("pin").payload("not a state")).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        Pin(producer)
    }

    fn release(self) {
        self.0.abort_transaction(Duration::from_secs(30)).unwrap();
    }
}

/// Takeover while an open transaction pins the changelog's last stable
/// offset: B must restore everything A committed before it processes a
/// record. Before the fix B restored up to the last stable offset (below
/// all of A's states), started from A's offsets on empty state, and its
/// merged clocks diverged from replay.
#[test]
fn takeover_restores_past_a_pinned_last_stable_offset() {
    let s = Setup::with_changelog("lso-takeover", &[("cleanup.policy", "compact")]);
    let a = Processor::start(&s.config("a"), &s.log("a"));
    assert!(wait_for_log(&a, "partition=2 restored=0", Duration::from_secs(60)), "A opened its tasks: {}", a.log_text());
    // Pinned below everything A writes.
    let pin = Pin::open(&s.changelog);
    let first = history(&s, 30, 0..3);
    produce(&first);
    wait_for_records(&s.output, first.len(), Duration::from_secs(90));
    assert!(a.stop().success());

    let b = Processor::start(&s.config("b"), &s.log("b"));
    let second = history(&s, 30, 3..6);
    produce(&second);
    let waited = wait_for_log(&b, "waiting for an open transaction", Duration::from_secs(20));
    pin.release();
    let (_, replay) = wait_for_view(&s, "", Duration::from_secs(90));
    assert!(waited, "B waited for the pinned transaction: {}", b.log_text());
    assert_state_matches(&admin_addr(&b), &replay, 10);
    assert!(b.stop().success());
}

/// A partition coming back to its previous owner while the changelog's last
/// stable offset is pinned below the owner's checkpoint. Before the fix the
/// owner took its checkpoint for "past the changelog's end" and re-read the
/// changelog from its start up to the pinned offset over its newer states.
#[test]
fn partition_coming_back_does_not_reread_older_states() {
    let s = Setup::with_changelog("lso-back", &[("cleanup.policy", "compact")]);
    let a = Processor::start(&s.config("a"), &s.log("a"));
    std::thread::sleep(Duration::from_secs(3));
    let pin = Pin::open(&s.changelog);
    produce(&history(&s, 30, 0..3));
    wait_for_records(&s.output, 1, Duration::from_secs(60));
    let b = Processor::start(&s.config("b"), &s.log("b"));
    // B takes some partitions (and, with the fix, waits for the pin).
    std::thread::sleep(Duration::from_secs(4));
    produce(&history(&s, 30, 3..6));
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.stop().success());
    // eu alone: the final rows still depend on us's and ap's versions of
    // the rounds B merged.
    produce(&history_of(&s, 30, 6..8, &[0]));
    std::thread::sleep(Duration::from_secs(5));
    pin.release();
    let (_, replay) = wait_for_view(&s, "", Duration::from_secs(90));
    assert_state_matches(&admin_addr(&a), &replay, 10);
    assert!(a.stop().success());
}

/// A changelog whose cleanup.policy includes delete is refused at start-up.
#[test]
fn changelog_with_time_retention_is_refused() {
    let s = Setup::with_changelog("cl-delete", &[("cleanup.policy", "compact,delete")]);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let (status, log) = p.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("changelog topic {} has cleanup.policy=compact,delete", s.changelog)), "{log}");
}

/// A backlog whose events are an hour old, `tombstone_retention` of seconds:
/// a delete on eu, and an older concurrent update on us behind 50 000
/// filler records. Before the fix the sweep compared the delete's time with
/// the wall clock, collected it at once, and the late update brought the
/// row back where replay keeps it deleted.
#[test]
fn old_backlog_collects_tombstones_by_stream_time() {
    let s = Setup::with_changelog("streamtime", &[("cleanup.policy", "compact")]);
    let merge = "tombstone_retention = \"2s\"\n";
    let t0 = s.epoch_ms - 3_600_000;
    // Sorts first in the task's keyspace: the sweep meets it at once.
    let key = 0u64;
    let p = tributary::kafka::murmur2_partition(json!({"id": key}).to_string().as_bytes(), PARTITIONS);
    let row = |by: &str| json!({"id": key, "name": "n", "by": by});
    let mut records = vec![
        s.rec(2, key, None, json!({"before": null, "after": row("ap"), "op": "c", "source": {"ts_ms": t0 + 5}})),
        s.rec(0, key, None, json!({"before": null, "after": row("eu"), "op": "c", "source": {"ts_ms": t0 + 10}})),
        s.rec(0, key, None, json!({"before": row("eu"), "after": null, "op": "d", "source": {"ts_ms": t0 + 20}})),
    ];
    // Updates of one other key: the backlog takes a while to work through
    // while the task's keyspace stays small (the sweep meets key 0 at once).
    for i in 0..50_000u64 {
        let filler = json!({"before": null, "after": {"id": 1_000_000, "seq": i}, "op": "u", "source": {"ts_ms": t0 + 15}});
        records.push(s.rec(1, 1_000_000, Some(p), filler));
    }
    records.push(s.rec(1, key, None, json!({"before": null, "after": row("us"), "op": "u", "source": {"ts_ms": t0 + 15}})));
    produce(&records);
    let a = Processor::start(&s.config_with("a", &Conf { merge, ..Conf::default() }), &s.log("a"));
    // Every event emits: the ap and eu creates, the delete, the fillers, and
    // the us update (concurrent with the delete, which wins by time).
    let expected = records.len();
    wait_for_records(&s.output, expected, Duration::from_secs(180));
    let (live, _) = wait_for_view(&s, merge, Duration::from_secs(30));
    let last = common::last_per_key(&live);
    assert!(last[&json!({"id": key}).to_string()]["payload"].is_null(), "the key stays deleted");
    let dropped = metric(&metrics_of(&a), "tributary_tombstones_dropped_total", &[]).unwrap_or(0.0);
    assert_eq!(dropped, 0.0, "nothing is collected while stream time is an hour old");
    assert!(a.stop().success());
}

fn set_output_configs(s: &Setup, extra: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().unwrap();
    // AlterConfigs replaces the topic's dynamic configs: give them all.
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&s.output));
    for (k, v) in HELD_BACK.iter().chain(extra) {
        alter = alter.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for r in rt.block_on(admin.alter_configs([&alter], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
}

/// At-least-once: output writes fail (the output topic's record limit is
/// lowered under the running processor, so the broker refuses every batch)
/// while the changelog takes its records, then the process is killed. Before the fix the changelog
/// already held the failed cycles' states; the restart restored them, took
/// the events for stale, and their outputs were never written.
#[test]
fn at_least_once_output_failure_then_kill_9_loses_no_output() {
    let s = Setup::with_changelog("alo", &[("cleanup.policy", "compact")]);
    let cfg = s.config_with(
        "a",
        &Conf {
            runtime: "processing = \"at-least-once\"",
            tables: "[kafka.properties]\n\"message.timeout.ms\" = \"3000\"",
            ..Conf::default()
        },
    );
    let first = history(&s, 20, 0..2);
    produce(&first);
    let a = Processor::start(&cfg, &s.log("a1"));
    wait_for_records(&s.output, first.len(), Duration::from_secs(90));
    set_output_configs(&s, &[("max.message.bytes", "64")]);
    std::thread::sleep(Duration::from_secs(1));
    produce(&history(&s, 20, 2..4));
    assert!(wait_for_log(&a, "delivery failed", Duration::from_secs(60)), "the output write failed: {}", a.log_text());
    // A produce error that repeats is waited out with a growing pause
    // (0.1 s, 0.2 s, 0.4 s, … up to 10 s), not retried in a tight loop: in
    // 10 s that is at most 7 failed cycles, where retrying at once failed
    // about twice a second (and far more often with a short commit interval).
    std::thread::sleep(Duration::from_secs(10));
    let failed = a.log_text().matches("cycle failed").count();
    assert!((2..=9).contains(&failed), "{failed} failed cycles in ~10 s: {}", a.log_text());
    a.kill9();
    set_output_configs(&s, &[]);
    let a = Processor::start(&cfg, &s.log("a2"));
    wait_for_view(&s, "", Duration::from_secs(90));
    assert!(a.stop().success());
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().unwrap()
}

fn state_of(p: &Processor, id: u64) -> (u16, String) {
    let path = format!("/state/%7B%22id%22%3A{id}%7D");
    let addr = admin_addr(p);
    // Only once every task is open does a 404 mean "no such key".
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", p.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(&addr, &path);
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A partition moves to another owner, which deletes a key, collects it
/// (a null record on the changelog) and compaction then removes that null
/// record; the partition comes back to its first owner. Before the fix the
/// first owner read the changelog's tail from its checkpoint, found nothing
/// for the key, and kept it alive from its stale local state.
#[test]
fn partition_back_after_compaction_removed_a_collected_key() {
    let fast = [
        ("cleanup.policy", "compact"),
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "1000"),
        ("min.compaction.lag.ms", "0"),
    ];
    let s = Setup::with_changelog("moved-back", &fast);
    let merge = "tombstone_retention = \"1s\"\n";
    let t = s.epoch_ms;
    let key = 0u64;
    let p = tributary::kafka::murmur2_partition(json!({"id": key}).to_string().as_bytes(), PARTITIONS);
    let row = |by: &str| json!({"id": key, "name": "n", "by": by});
    // Events of another key in every source's partition p: they move the
    // task's stream time on.
    let neighbours = |ts: i64, n: u64| -> Vec<Rec> {
        (0..3)
            .map(|si| {
                s.rec(si, 999, Some(p), json!({"before": null, "after": {"id": 999, "n": n}, "op": "u", "source": {"ts_ms": ts}}))
            })
            .collect()
    };
    produce(&[s.rec(0, key, None, json!({"before": null, "after": row("eu"), "op": "c", "source": {"ts_ms": t}}))]);
    produce(&neighbours(t + 1, 0));
    let a = Processor::start(&s.config_with("a", &Conf { merge, ..Conf::default() }), &s.log("a1"));
    wait_for_records(&s.output, 4, Duration::from_secs(60));
    assert_eq!(state_of(&a, key).0, 200);
    assert!(a.stop().success());

    // B owns everything now: the delete, then stream time moves past it.
    let b = Processor::start(&s.config_with("b", &Conf { merge, ..Conf::default() }), &s.log("b"));
    produce(&[s.rec(0, key, None, json!({"before": row("eu"), "after": null, "op": "d", "source": {"ts_ms": t + 10}}))]);
    let k = json!({"id": key}).to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 1;
    let mut seen_null = false;
    // Until compaction has removed the null record B wrote for the key.
    loop {
        produce(&neighbours(t + 5_000 + n as i64, n));
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
        let changelog = read_topic(&s.changelog, true);
        let for_key: Vec<&Value> = changelog.iter().filter(|r| r["key"] == k.as_str()).collect();
        seen_null |= for_key.iter().any(|r| r["payload"].is_null());
        if seen_null && for_key.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction did not remove the key (null seen: {seen_null}): {for_key:?}\n{}",
            b.log_text()
        );
    }
    assert!(
        metric(&metrics_of(&b), "tributary_tombstones_dropped_total", &[]).unwrap_or(0.0) >= 1.0,
        "the deleted key was collected"
    );
    assert!(b.stop().success());

    let a = Processor::start(&s.config_with("a", &Conf { merge, ..Conf::default() }), &s.log("a2"));
    let (status, body) = state_of(&a, key);
    assert_eq!(status, 404, "the collected key must not come back from stale local state: {body}");
    assert!(a.log_text().contains("not trusted"), "{}", a.log_text());
    assert!(a.stop().success());
}

/// The application is reset (changelog and output topics deleted, the
/// group's offsets deleted) and started again on its old state directory.
/// Before the fix the old keyspace was kept (the checkpoint only looked
/// "past the end"), every event counted as stale and nothing came out.
#[test]
fn reset_application_with_recreated_changelog_starts_from_scratch() {
    let s = Setup::with_changelog("reset", &[("cleanup.policy", "compact")]);
    let records = history(&s, 20, 0..3);
    produce(&records);
    let cfg = s.config("a");
    let a = Processor::start(&cfg, &s.log("a1"));
    wait_for_records(&s.output, records.len(), Duration::from_secs(90));
    assert!(a.stop().success());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let admin = admin();
    for r in rt.block_on(admin.delete_topics(&[&s.changelog, &s.output], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    for r in rt.block_on(admin.delete_groups(&[&s.group], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
    // Tributary creates both topics again; wait until the old ones are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while topic_exists(&s.output) || topic_exists(&s.changelog) {
        assert!(Instant::now() < deadline, "topics not deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = Processor::start(&cfg, &s.log("a2"));
    wait_for_view(&s, "", Duration::from_secs(90));
    assert!(a.log_text().contains("not trusted"), "{}", a.log_text());
    assert!(a.stop().success());
}
