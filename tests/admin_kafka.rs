//! The admin port of `tributary run` on the real broker: the bearer token
//! read from a file (as a mounted Kubernetes secret), and pausing and
//! resuming one source while the others go on, across a rebalance.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kafka::{admin_addr, compacted, http_client, produce, read_topic, wait_for_records, Processor, Rec};
use common::setup::{Conf, Setup, PARTITIONS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

const TOKEN: &str = "pause-test-token-7f3a9c1e5b20d4";
const EU: usize = 0;
const US: usize = 1;

/// The test's configuration with the token file under `[admin]`, and `admin` lines after it.
fn config(s: &Setup, state: &str, token_file: &Path, admin: &str) -> PathBuf {
    let inline = format!("token = \"{}\"\n", common::kafka::ADMIN_TOKEN);
    let text =
        s.config_text(state, &Conf::default()).replace(&inline, &format!("token_file = \"{}\"\n{admin}\n", token_file.display()));
    assert!(text.contains("token_file"), "the setup's configuration has a token to replace");
    common::write(s.dir.path(), &format!("{state}.toml"), &text)
}

/// Upserts of `ids` by one source, `round` in the row; keys differ per
/// source, so an output record's winner says whose record it was.
fn round(s: &Setup, source: usize, ids: std::ops::Range<u64>, round: i64) -> Vec<Rec> {
    ids.map(|id| {
        let after = json!({"id": id, "name": format!("n{id}"), "round": round});
        let op = if round == 0 { "c" } else { "u" };
        s.rec(source, id, None, json!({"before": null, "after": after, "op": op, "source": {"ts_ms": s.epoch_ms + round * 1000}}))
    })
    .collect()
}

fn request(method: &str, addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut r = http_client().request(method.parse().unwrap(), format!("http://{addr}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    (r.status().as_u16(), r.text().unwrap())
}

fn post(addr: &str, path: &str) -> Value {
    let (status, body) = request("POST", addr, path, Some(TOKEN));
    assert_eq!(status, 200, "POST {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `GET /sources` (open), the entry of `name`.
fn source(addr: &str, name: &str) -> Value {
    let (status, body) = request("GET", addr, "/sources", None);
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    list["sources"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap()
}

fn paused_metric(addr: &str, name: &str) -> i64 {
    let (_, text) = request("GET", addr, "/metrics", None);
    let line = format!("tributary_source_paused{{source=\"{name}\"}} ");
    let value = text.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or_else(|| panic!("no {line} in\n{text}"));
    value.parse().unwrap()
}

/// Waits until `GET /sources` on `addr` shows `name` with these paused partitions.
fn wait_paused_partitions(addr: &str, name: &str, partitions: &[i64], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = source(addr, name);
        if s["paused_partitions"] == json!(partitions) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} has paused partitions {} rather than {partitions:?}", s["paused_partitions"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn winners(output: &[Value], source: &str) -> usize {
    output.iter().filter(|r| common::header(r, "tributary.winner").as_deref() == Some(source)).count()
}

/// The group's committed offsets of `topic`, summed over its partitions.
fn committed(s: &Setup, topic: &str) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &s.bootstrap).set("group.id", &s.group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let tpl = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    tpl.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum()
}

/// Output records after the ones already seen stay at `n` for a few commit intervals.
fn assert_stays(s: &Setup, n: usize) -> Vec<Value> {
    std::thread::sleep(Duration::from_secs(3));
    let output = read_topic(&s.output, true);
    assert_eq!(output.len(), n, "records of the paused source came out");
    output
}

#[test]
fn the_token_guards_state_and_a_paused_source_stays_paused_across_a_rebalance() {
    let s = Setup::new("pause");
    let token_file = common::write(s.dir.path(), "admin-token", &format!("{TOKEN}\n"));
    let (eu, us) = (0..20, 100..120);
    produce(&[round(&s, EU, eu.clone(), 0), round(&s, US, us.clone(), 0)].concat());
    let a = Processor::start(&config(&s, "a", &token_file, ""), &s.log("a"));
    let addr = admin_addr(&a);
    assert_eq!(wait_for_records(&s.output, 40, Duration::from_secs(90)).len(), 40);
    assert!(!a.log_text().contains(TOKEN), "the token reached the log");

    // The token: missing or wrong → 401 and nothing happens; /sources, /metrics are open.
    let state_path = "/state/%7B%22id%22%3A1%7D";
    for token in [None, Some("wrong-token-0123456789")] {
        assert_eq!(request("GET", &addr, state_path, token).0, 401);
        assert_eq!(request("POST", &addr, "/sources/eu/pause", token).0, 401);
    }
    assert_eq!(source(&addr, "eu")["paused"], false);
    let (status, body) = request("GET", &addr, state_path, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["row"]["round"], 0);
    let (status, body) = request("POST", &addr, "/sources/nope/pause", Some(TOKEN));
    assert_eq!(status, 404);
    assert!(body.contains("no source named \\\"nope\\\"; the configured sources are eu, us, ap"), "{body}");

    // Pause eu: applied to all of its partitions (this instance owns them all).
    let answer = post(&addr, "/sources/eu/pause");
    assert_eq!(answer, json!({"source": "eu", "paused": true, "applied": true, "paused_partitions": [0, 1, 2]}));
    assert_eq!((paused_metric(&addr, "eu"), paused_metric(&addr, "us")), (1, 0));
    produce(&[round(&s, EU, eu.clone(), 1), round(&s, US, us.clone(), 1)].concat());
    assert_eq!(wait_for_records(&s.output, 60, Duration::from_secs(60)).len(), 60);
    let output = assert_stays(&s, 60);
    assert_eq!((winners(&output, "eu"), winners(&output, "us")), (20, 40), "us went on, eu did not");
    assert_eq!(committed(&s, &s.topics[EU]), 20, "eu's offsets stay where the pause found them");
    let (_, body) = request("GET", &addr, state_path, Some(TOKEN));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["row"]["round"], 0, "eu's state is its round 0");

    // A second instance joins (told to keep eu paused, as every instance
    // must be), takes some partitions, and leaves: two rebalances for `a`.
    let b = Processor::start(&config(&s, "b", &token_file, "start_paused = [\"eu\"]"), &s.log("b"));
    let addr_b = admin_addr(&b);
    let deadline = Instant::now() + Duration::from_secs(90);
    while source(&addr_b, "eu")["paused_partitions"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the second instance got no partitions");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(paused_metric(&addr_b, "eu"), 1);
    produce(&[round(&s, EU, eu.clone(), 2), round(&s, US, us.clone(), 2)].concat());
    assert_eq!(wait_for_records(&s.output, 80, Duration::from_secs(60)).len(), 80);
    assert!(b.stop().success());
    wait_paused_partitions(&addr, "eu", &[0, 1, 2], Duration::from_secs(60));
    assert_eq!(paused_metric(&addr, "eu"), 1);
    produce(&[round(&s, EU, eu.clone(), 3), round(&s, US, us.clone(), 3)].concat());
    assert_eq!(wait_for_records(&s.output, 100, Duration::from_secs(60)).len(), 100);
    let output = assert_stays(&s, 100);
    assert_eq!((winners(&output, "eu"), winners(&output, "us")), (20, 80), "eu stayed paused through both rebalances");
    assert_eq!(committed(&s, &s.topics[EU]), 20);

    // Resume: everything eu wrote arrives, and the output is what replay makes of all records.
    let answer = post(&addr, "/sources/eu/resume");
    assert_eq!(answer, json!({"source": "eu", "paused": false, "applied": true, "paused_partitions": []}));
    assert_eq!(paused_metric(&addr, "eu"), 0);
    let output = wait_for_records(&s.output, 160, Duration::from_secs(90));
    assert_eq!(output.len(), 160, "one output record per eu update of rounds 1 to 3");
    let replay = s.replay();
    assert_eq!(compacted(&output), compacted(&replay));
    assert_eq!(committed(&s, &s.topics[EU]), 80);
    let log = a.log_text();
    assert!(log.contains("source paused") && log.contains("source resumed"), "{log}");
    assert!(!log.contains(TOKEN) && !b_log(&s).contains(TOKEN), "the token reached a log");
    assert!(a.stop().success());
}

fn b_log(s: &Setup) -> String {
    std::fs::read_to_string(s.log("b")).unwrap_or_default()
}

/// Without a configured token, `/state` and pause are off (403 saying how
/// to turn them on) and the start-up log says so; the probes stay open.
#[test]
fn without_a_token_state_and_pause_are_off() {
    let s = Setup::new("notoken");
    let text = s.config_text("a", &Conf::default()).replace(&format!("token = \"{}\"\n", common::kafka::ADMIN_TOKEN), "");
    assert!(!text.contains("token ="));
    let p = Processor::start(&common::write(s.dir.path(), "a.toml", &text), &s.log("a"));
    let addr = admin_addr(&p);
    for (method, path) in [("GET", "/state/%7B%22id%22%3A1%7D"), ("POST", "/sources/eu/pause"), ("POST", "/sources/eu/resume")] {
        for token in [None, Some(TOKEN)] {
            let (status, body) = request(method, &addr, path, token);
            assert_eq!(status, 403, "{method} {path}");
            assert!(body.contains("no admin token is configured") && body.contains("token_file"), "{body}");
        }
    }
    assert_eq!(request("GET", &addr, "/metrics", None).0, 200);
    assert_eq!(request("GET", &addr, "/healthz", None).0, 200);
    assert_eq!(source(&addr, "eu")["paused"], false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.log_text().contains("admin: no token configured") {
        assert!(Instant::now() < deadline, "the start-up log does not say the endpoints are off");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopped once start-up is over (a signal during start-up exits with 130).
    let deadline = Instant::now() + Duration::from_secs(60);
    while request("GET", &addr, "/readyz", None).0 != 200 {
        assert!(Instant::now() < deadline, "the processor did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.stop().success());
}
