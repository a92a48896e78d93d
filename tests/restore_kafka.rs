//! Restoring a lost state directory on a real broker: every assigned
//! changelog partition is read at once, the restored state equals the state
//! that processing left, and a normal restore logs no error.
//!
//! Needs a broker: `TRIBUTARY_TEST_BOOTSTRAP=host:port cargo test --test restore_kafka`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::{admin_addr, http_get, metric, metrics_of, produce, Processor, Rec};
use common::setup::{Setup, PARTITIONS, SOURCES};
use serde_json::json;

/// Keys, and events per key (one source after another): enough changelog
/// records per partition (about 11 000) for a restore that takes several
/// fetches and several intermediate commits of the task store.
const KEYS: u64 = 4_000;
const EVENTS_PER_KEY: u64 = 8;

/// Debezium events: key k's j-th event comes from source j mod 3; every
/// fifth key's last event deletes it.
fn events(s: &Setup) -> Vec<Rec> {
    let mut out = Vec::new();
    for j in 0..EVENTS_PER_KEY {
        for k in 0..KEYS {
            let si = (j as usize) % SOURCES.len();
            let ts = s.epoch_ms + (j * KEYS + k) as i64;
            let row = json!({"id": k, "name": format!("customer {k}"), "round": j, "by": SOURCES[si]});
            let payload = if j == EVENTS_PER_KEY - 1 && k % 5 == 0 {
                json!({"before": row, "after": null, "op": "d", "source": {"ts_ms": ts}, "ts_ms": ts})
            } else {
                json!({"before": null, "after": row, "op": "u", "source": {"ts_ms": ts}, "ts_ms": ts})
            };
            out.push(s.rec(si, k, None, payload));
        }
    }
    out
}

fn wait_ready(p: &Processor) -> String {
    let addr = admin_addr(p);
    let deadline = Instant::now() + Duration::from_secs(120);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "not ready within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    addr
}

/// Every key's committed state as the state query shows it (merged row,
/// version set, winners); `None` for a key without state.
fn states(addr: &str) -> BTreeMap<u64, Option<String>> {
    (0..KEYS)
        .map(|k| {
            let key = json!({ "id": k }).to_string();
            let path = format!("/state/{}", key.replace('{', "%7B").replace('}', "%7D").replace('"', "%22").replace(':', "%3A"));
            let (status, body) = http_get(addr, &path);
            match status {
                200 => (k, Some(body)),
                404 => (k, None),
                _ => panic!("GET {path}: {status} {body}"),
            }
        })
        .collect()
}

/// The partition of the log lines in `lines` that contain `what`.
fn partitions_logged(lines: &[&str], what: &str) -> Vec<i32> {
    lines
        .iter()
        .filter(|l| l.contains(what))
        .map(|l| {
            let at = l.find("partition=").expect("a partition field") + "partition=".len();
            l[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn all_partitions_restore_at_once_to_the_state_processing_left() {
    let s = Setup::new("prestore");
    let config = s.config("a");
    let records = events(&s);
    produce(&records);

    // Processing: until every event is consumed; SIGTERM commits the last cycle.
    let p = Processor::start(&config, &s.log("process"));
    let deadline = Instant::now() + Duration::from_secs(180);
    while metric(&metrics_of(&p), "tributary_records_consumed_total", &[]).unwrap_or(0.0) < records.len() as f64 {
        assert!(Instant::now() < deadline, "not every event consumed within 180 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.stop().success());

    // A clean restart restores nothing: its states are the ones processing left.
    let p = Processor::start(&config, &s.log("reopen"));
    let processed = states(&wait_ready(&p));
    assert!(p.stop().success());
    let reopened = std::fs::read_to_string(s.log("reopen")).unwrap();
    assert!(!reopened.contains("restoring state from the changelog"), "{reopened}");
    let live = processed.values().filter(|v| v.is_some()).count();
    assert_eq!(live as u64, KEYS, "every key has a state (deleted ones keep their delete version)");

    // The state directory lost: every task restores from the changelog.
    std::fs::remove_dir_all(s.dir.path().join("a")).unwrap();
    let p = Processor::start(&config, &s.log("restore"));
    let restored = states(&wait_ready(&p));
    assert!(p.stop().success());
    let log = std::fs::read_to_string(s.log("restore")).unwrap();
    let lines: Vec<&str> = log.lines().collect();

    let differing: Vec<_> = processed.iter().filter(|(k, v)| restored.get(k) != Some(v)).map(|(k, _)| *k).collect();
    assert!(
        differing.is_empty(),
        "{} of {KEYS} keys differ after the restore, e.g. key {}: processed {:?}, restored {:?}",
        differing.len(),
        differing[0],
        processed[&differing[0]],
        restored.get(&differing[0])
    );

    // Every partition restored, each one's restore started before the first
    // task was ready (one after another, the second would start after the
    // first task opened).
    let mut started = partitions_logged(&lines, "restoring state from the changelog");
    started.sort();
    assert_eq!(started, (0..PARTITIONS).collect::<Vec<_>>(), "{log}");
    let first_open = lines.iter().position(|l| l.contains("task opened")).expect("a task opened");
    let last_start = lines.iter().rposition(|l| l.contains("restoring state from the changelog")).unwrap();
    assert!(last_start < first_open, "the partitions are restored one after another:\n{log}");
    for l in lines.iter().filter(|l| l.contains("task opened")) {
        assert!(!l.contains("restored=0 "), "a task restored nothing: {l}");
    }
    // librdkafka's end-of-partition, which a restore waits for, is no error.
    let errors: Vec<&&str> = lines.iter().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).collect();
    assert!(errors.is_empty(), "a normal restore logged errors or warnings: {errors:#?}");
}
