//! `tributary run` against a real Apache Kafka 4.x broker (KRaft, started by
//! `scripts/kafka/kafka`), run as a user runs it: the binary, a config file,
//! SIGTERM and kill -9. Every test has its own topics and group.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::kafka::{
    self, admin_addr, compacted, create_topic, http_get, produce, read_topic, unique, wait_for_records, Processor, Rec,
};
use common::setup::{topic_exists, Conf, Setup, PARTITIONS, SOURCES};
use serde_json::{json, Value};

/// A deterministic multi-source history: every source creates, updates and
/// deletes the same keys (so there are conflicts), with Debezium tombstones
/// after deletes. `round` numbers continue across calls.
fn history(setup: &Setup, keys: u32, rounds: std::ops::Range<u32>, live: &mut HashMap<(usize, u32), Value>) -> Vec<Rec> {
    let mut out = Vec::new();
    for r in rounds {
        for (si, topic) in setup.topics.iter().enumerate() {
            for k in 0..keys {
                let h = (r * 31 + si as u32 * 17 + k * 7) % 11;
                if h < 3 {
                    continue;
                }
                let key = json!({ "id": k }).to_string();
                // Where Debezium (a Java producer: murmur2) puts the key.
                let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
                let before = live.get(&(si, k)).cloned();
                let ts = setup.epoch_ms + i64::from(r) * 100 + si as i64 * 7 + i64::from(k % 5);
                let (payload, tombstone) = match &before {
                    Some(b) if h == 10 => {
                        live.remove(&(si, k));
                        (json!({"before": b, "after": null, "op": "d", "source": {"ts_ms": ts}}), true)
                    }
                    _ => {
                        let after = json!({"id": k, "name": format!("n{k}"), "round": r, "by": SOURCES[si]});
                        live.insert((si, k), after.clone());
                        let op = if before.is_some() { "u" } else { "c" };
                        (json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}, "ts_ms": ts + 3}), false)
                    }
                };
                out.push(Rec { topic: topic.clone(), partition, key: Some(key.clone()), value: Some(payload.to_string()) });
                if tombstone {
                    out.push(Rec { topic: topic.clone(), partition, key: Some(key), value: None });
                }
            }
        }
    }
    out
}

/// Output records a history must produce: one per change event (derived
/// clocks never make an event stale), tombstones excluded.
fn expected_outputs(records: &[Rec]) -> usize {
    records.iter().filter(|r| r.value.as_deref().is_some_and(|v| !v.contains("\"op\":\"t\"") && v.starts_with('{'))).count()
}

fn header(r: &Value, name: &str) -> String {
    common::header(r, name).unwrap_or_default()
}

/// Exactly-once: no key carries the same merged clock twice (every accepted
/// event raises it), and the count is exact.
fn assert_exactly_once(output: &[Value], expected: usize) {
    let mut seen = BTreeSet::new();
    for r in output {
        let id = (r["key"].as_str().unwrap().to_string(), header(r, "tributary.vv"));
        assert!(seen.insert(id.clone()), "duplicate output record {id:?}");
    }
    assert_eq!(output.len(), expected, "one output record per change event");
}

fn assert_same_view(live: &[Value], replay: &[Value]) {
    let (a, b) = (compacted(live), compacted(replay));
    assert_eq!(a.len(), b.len());
    for (k, v) in &b {
        assert_eq!(a.get(k), Some(v), "key {k}");
    }
    // Outputs go to the input partition.
    let part: BTreeMap<String, i64> =
        replay.iter().map(|r| (r["key"].as_str().unwrap().into(), r["partition"].as_i64().unwrap())).collect();
    for r in live {
        assert_eq!(Some(&r["partition"].as_i64().unwrap()), part.get(r["key"].as_str().unwrap()));
    }
}

#[test]
fn three_sources_with_conflicts_match_replay() {
    let s = Setup::new("conflicts");
    let mut live = HashMap::new();
    let records = history(&s, 30, 0..6, &mut live);
    produce(&records);
    let expected = expected_outputs(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(90));
    let log = p.log_text();
    assert!(p.stop().success());
    // A clean run is quiet: no warnings, no errors, one start-up line.
    let loud: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(loud.is_empty(), "a clean run logged warnings or errors:\n{}", loud.join("\n"));
    assert_eq!(log.lines().filter(|l| l.contains(" INFO ") && l.contains("starting")).count(), 1, "{log}");
    assert!(!log.contains("Recovering LSM-tree") && !log.contains("[kafka]"), "{log}");
    let replay = s.replay();
    assert_eq!(replay.len(), expected);
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &replay);
    assert!(output.iter().any(|r| header(r, "tributary.conflict") == "true"), "the history has conflicts");
    // Output and changelog were created compacted; the changelog holds state.
    let changelog = read_topic(&s.changelog, true);
    assert_eq!(changelog.len(), expected);
}

#[test]
fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    let s = Setup::new("kill9");
    let config = s.config("a");
    let mut live = HashMap::new();
    let mut all = Vec::new();
    for (i, rounds) in [0..3, 3..6, 6..9, 9..12].into_iter().enumerate() {
        let batch = history(&s, 40, rounds, &mut live);
        produce(&batch);
        all.extend(batch);
        let p = Processor::start(&config, &s.log("a"));
        // Let it get some way into the batch, then crash it.
        let before = read_topic(&s.output, true).len();
        let _ = wait_for_records(&s.output, before + 20, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(150 * (i as u64 + 1)));
        p.kill9();
    }
    let expected = expected_outputs(&all);
    let p = Processor::start(&config, &s.log("a"));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(1));
    let output = if output.len() == expected { read_topic(&s.output, true) } else { output };
    assert!(p.stop().success());
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
    // Uncommitted work of the killed runs really reached the broker and was aborted.
    let uncommitted = read_topic(&s.output, false);
    assert!(uncommitted.len() >= output.len());
}

#[test]
fn two_instances_share_the_partitions() {
    let s = Setup::new("scaleout");
    let mut live = HashMap::new();
    let records = history(&s, 30, 0..6, &mut live);
    let a = Processor::start(&s.config("a"), &s.log("a"));
    let b = Processor::start(&s.config("b"), &s.log("b"));
    std::thread::sleep(Duration::from_secs(4));
    produce(&records);
    let expected = expected_outputs(&records);
    let output = wait_for_records(&s.output, expected, Duration::from_secs(90));
    let (la, lb) = (a.log_text(), b.log_text());
    assert!(a.stop().success());
    assert!(b.stop().success());
    assert!(la.contains("task opened") && lb.contains("task opened"), "both instances own tasks:\n{la}\n---\n{lb}");
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
}

#[test]
fn lost_state_directory_is_restored_from_the_changelog() {
    let s = Setup::new("restore");
    let config = s.config("a");
    let mut live = HashMap::new();
    let first = history(&s, 30, 0..4, &mut live);
    produce(&first);
    let p = Processor::start(&config, &s.log("a1"));
    wait_for_records(&s.output, expected_outputs(&first), Duration::from_secs(90));
    assert!(p.stop().success());
    // A clean restart reuses the local state: nothing to restore.
    let p = Processor::start(&config, &s.log("a2"));
    std::thread::sleep(Duration::from_secs(5));
    assert!(p.stop().success());
    let log2 = std::fs::read_to_string(s.log("a2")).unwrap();
    assert!(log2.contains("task opened") && !log2.contains("restoring state from the changelog"), "{log2}");

    std::fs::remove_dir_all(s.dir.path().join("a")).unwrap();
    let second = history(&s, 30, 4..8, &mut live);
    produce(&second);
    let expected = expected_outputs(&first) + expected_outputs(&second);
    let p = Processor::start(&config, &s.log("a3"));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(90));
    assert!(p.stop().success());
    let log3 = std::fs::read_to_string(s.log("a3")).unwrap();
    assert!(log3.contains("restoring state from the changelog"), "{log3}");
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
}

#[test]
fn poison_records_go_to_the_dead_letter_topic() {
    let s = Setup::new("poison");
    let mut live = HashMap::new();
    let mut records = history(&s, 12, 0..3, &mut live);
    let expected = expected_outputs(&records);
    let poison = [
        (1, r#"{"before":null,"after":{"id":1},"op":"c","#.to_string()),
        (2, r#"{"op":"t","source":{"ts_ms":5}}"#.to_string()),
        (4, r#"{"after":{"id":4},"op":"x","source":{"ts_ms":5}}"#.to_string()),
    ];
    for (i, (k, v)) in poison.iter().enumerate() {
        let at = records.len() / 2 + i;
        let key = json!({"id": k}).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
        records.insert(at, Rec { topic: s.topics[0].clone(), partition, key: Some(key), value: Some(v.clone()) });
    }
    produce(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let dlq = wait_for_records(&format!("{}-dlq", s.group), 3, Duration::from_secs(90));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(60));
    assert!(p.stop().success());
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    for (k, v) in &poison {
        let r = dlq.iter().find(|r| r["payload"].as_str() == Some(v.as_str())).expect("every poison record is in the DLQ");
        assert_eq!(r["payload"].as_str(), Some(v.as_str()), "raw value kept");
        assert_eq!(r["key"].as_str().unwrap(), json!({"id": k}).to_string());
        assert_eq!(header(r, "tributary.source.topic"), s.topics[0]);
        let partition = tributary::kafka::murmur2_partition(json!({"id": k}).to_string().as_bytes(), PARTITIONS);
        assert_eq!(header(r, "tributary.source.partition"), partition.to_string());
        let offset = header(r, "tributary.source.offset");
        assert!(header(r, "tributary.error").contains(&format!("offset {offset}")), "{r}");
    }
    let truncate = dlq.iter().find(|r| r["payload"].as_str() == Some(poison[1].1.as_str())).unwrap();
    assert_eq!(header(truncate, "tributary.error.reason"), "truncate");
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
}

/// A key longer than the state store takes (fjall: 65 535 bytes) is a dead
/// letter naming its length, not a panic at the commit that would come back
/// on every restart (a crash loop on one record).
#[test]
fn a_key_too_long_for_the_state_store_is_a_dead_letter_not_a_crash_loop() {
    let s = Setup::new("longkey");
    let mut live = HashMap::new();
    let mut records = history(&s, 6, 0..2, &mut live);
    let expected = expected_outputs(&records);
    let id = "k".repeat(70_000);
    let key = json!({"id": id}).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
    let value = json!({"before": null, "after": {"id": id}, "op": "c", "source": {"ts_ms": s.epoch_ms}}).to_string();
    records.insert(records.len() / 2, Rec { topic: s.topics[1].clone(), partition, key: Some(key.clone()), value: Some(value) });
    produce(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let dlq = wait_for_records(&format!("{}-dlq", s.group), 1, Duration::from_secs(60));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(60));
    assert!(p.stop().success(), "the processor ran to the end");
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "tributary.error.reason"), "key_too_large");
    let error = header(&dlq[0], "tributary.error");
    assert!(error.contains(&format!("{} bytes", key.len())) && error.contains("65535"), "{error}");
    assert_eq!(dlq[0]["key"].as_str(), Some(key.as_str()), "the raw key is kept");
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
}

/// A changelog record whose key the state store cannot hold (written by
/// hand here; a version before the key check could leave one behind) is
/// skipped with a warning by the restore, which would otherwise panic in
/// the store on every start.
#[test]
fn a_restore_skips_a_changelog_key_too_long_for_the_state_store() {
    let s = Setup::new("longkeyrestore");
    let config = s.config("a");
    let mut live = HashMap::new();
    let first = history(&s, 6, 0..2, &mut live);
    produce(&first);
    let p = Processor::start(&config, &s.log("a1"));
    wait_for_records(&s.output, expected_outputs(&first), Duration::from_secs(90));
    assert!(p.stop().success());
    let key = json!({"id": "k".repeat(70_000)}).to_string();
    let key_bytes = key.len();
    produce(&[Rec { topic: s.changelog.clone(), partition: 0, key: Some(key), value: None }]);
    std::fs::remove_dir_all(s.dir.path().join("a")).unwrap();
    let second = history(&s, 6, 2..4, &mut live);
    produce(&second);
    let expected = expected_outputs(&first) + expected_outputs(&second);
    let p = Processor::start(&config, &s.log("a2"));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(90));
    assert!(p.stop().success(), "the processor ran to the end");
    let log = std::fs::read_to_string(s.log("a2")).unwrap();
    assert!(log.contains("restoring state from the changelog"), "{log}");
    assert!(log.contains("changelog record skipped") && log.contains(&format!("key_bytes={key_bytes}")), "{log}");
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
}

/// With repartitioning off (`repartition = "never"`), sources of different
/// partition counts are refused at start-up, as before repartitioning existed.
#[test]
fn co_partitioning_violation_is_refused_when_repartitioning_is_off() {
    let group = unique("copart");
    let dir = tempfile::tempdir().unwrap();
    create_topic(&format!("{group}.a"), 2, &[]);
    create_topic(&format!("{group}.b"), 3, &[]);
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n[output]\ntopic = \"{group}.out\"\n[runtime]\nstate_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[sources]]\nname = \"a\"\ntopic = \"{group}.a\"\nrepartition = \"never\"\n[[sources]]\nname = \"b\"\ntopic = \"{group}.b\"\nrepartition = \"never\"\n",
            kafka::bootstrap(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let p = Processor::start(&config, &dir.path().join("log"));
    let (status, log) = p.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("co-partitioning violated"), "{log}");
    assert!(log.contains(&format!("{group}.a: 2 partitions")) && log.contains(&format!("{group}.b: 3 partitions")), "{log}");
    // Nothing was created for a refused configuration.
    assert!(!topic_exists(&format!("{group}.out")));
}

/// The value of one sample line, summed over label sets that contain `labels`.
/// One metric's sum over the series whose labels hold `labels` (0 when none).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    common::kafka::metric(text, name, &[labels]).unwrap_or(0.0)
}

#[test]
fn metrics_health_state_query_and_conflict_audit() {
    let s = Setup::new("operate");
    let mut live = HashMap::new();
    let mut records = history(&s, 20, 0..5, &mut live);
    let expected = expected_outputs(&records);
    let tombstones = records.iter().filter(|r| r.value.is_none()).count();
    for (i, bad) in ["{oops", r#"{"op":"t","source":{"ts_ms":1}}"#].iter().enumerate() {
        let key = json!({"id": 1000 + i}).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
        records.push(Rec { topic: s.topics[1].clone(), partition, key: Some(key), value: Some(bad.to_string()) });
    }
    produce(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let addr = admin_addr(&p);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let output = wait_for_records(&s.output, expected, Duration::from_secs(90));
    assert_eq!(output.len(), expected);
    // Ready once every task is restored and processing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the last cycle's bookkeeping a moment, then scrape.
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    let conflicts = output.iter().filter(|r| header(r, "tributary.conflict") == "true").count();
    assert_eq!(metric(&text, "tributary_records_consumed_total", ""), records.len() as f64, "{text}");
    assert_eq!(metric(&text, "tributary_records_emitted_total", ""), expected as f64);
    assert_eq!(metric(&text, "tributary_conflicts_total", "policy=\"lww\""), conflicts as f64);
    assert_eq!(metric(&text, "tributary_dead_letters_total", "source=\"us\""), 2.0);
    assert_eq!(metric(&text, "tributary_dead_letters_total", "reason=\"truncate\""), 1.0);
    assert_eq!(metric(&text, "tributary_events_dropped_total", "outcome=\"ignored\""), tombstones as f64);
    assert_eq!(metric(&text, "tributary_siblings_count", ""), expected as f64);
    assert_eq!(metric(&text, "tributary_ready", ""), 1.0);
    assert!(metric(&text, "tributary_transactions_total", "outcome=\"committed\"") >= 1.0);
    assert!(metric(&text, "tributary_state_keys", "") > 0.0);
    // Every event that reached the merge found its key's state somewhere
    // (dead letters and ignored tombstones read none); this run's first
    // reads of each key went to disk.
    assert_eq!(metric(&text, "tributary_state_reads_total", ""), (records.len() - tombstones - 2) as f64, "{text}");
    assert!(metric(&text, "tributary_state_reads_total", "from=\"store\"") >= 1.0);
    assert!(text.contains("process_resident_memory_bytes"));

    // The state of a key: the merged row, the version set, the winner, the partition.
    let view = compacted(&output);
    let (key, (payload, headers)) = view.iter().find(|(_, (p, _))| !p.is_null()).expect("a live key");
    let (status, body) = http_get(
        &addr,
        &format!("/state/{}", key.replace('"', "%22").replace('{', "%7B").replace('}', "%7D").replace(':', "%3A")),
    );
    assert_eq!(status, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let row: Value = serde_json::from_str(payload.as_str().unwrap()).unwrap();
    assert_eq!(st["row"], row);
    let hdr = |n: &str| headers.as_array().unwrap().chunks(2).find(|kv| kv[0] == n).map(|kv| kv[1].clone()).unwrap();
    assert_eq!(st["winner"], hdr("tributary.winner"));
    assert_eq!(st["siblings"].to_string(), hdr("tributary.siblings").as_str().unwrap());
    assert_eq!(st["vv"], serde_json::from_str::<Value>(hdr("tributary.vv").as_str().unwrap()).unwrap());
    assert_eq!(st["versions"].as_array().unwrap().len(), st["siblings"].as_u64().unwrap() as usize);
    let owner = output.iter().find(|r| r["key"] == key.as_str()).unwrap()["partition"].clone();
    assert_eq!(st["partition"], owner);
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A99999%7D");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no state for key"), "{body}");

    // One audit record per conflicting emission, with every version.
    let audit = wait_for_records(&format!("{}-conflicts", s.group), conflicts, Duration::from_secs(30));
    assert!(p.stop().success());
    assert_eq!(audit.len(), conflicts);
    for a in &audit {
        let body: Value = serde_json::from_str(a["payload"].as_str().unwrap()).unwrap();
        assert_eq!(body["policy"], "lww");
        assert!(body["versions"].as_array().unwrap().len() > 1, "{body}");
        for v in body["versions"].as_array().unwrap() {
            assert!(v["source"].is_string() && v["vv"].is_object() && v["ts"].is_i64() && v["op"].is_string(), "{v}");
        }
        assert_eq!(body["key"], a["key"]);
        assert!(body["event"]["offset"].is_i64());
    }
}

#[test]
fn an_event_whose_merged_record_is_too_large_is_set_aside_not_looped_on() {
    // The output topic takes records of at most 400 000 bytes: the limit is
    // read from the topic, not assumed.
    let s = Setup::with_output_config("toolarge", &[("max.message.bytes", "400000")]);
    let mut live = HashMap::new();
    let mut records = history(&s, 6, 0..2, &mut live);
    let expected = expected_outputs(&records);
    let key = json!({"id": 77}).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
    let huge = "x".repeat(500_000);
    let value =
        json!({"before": null, "after": {"id": 77, "blob": huge}, "op": "c", "source": {"ts_ms": s.epoch_ms}}).to_string();
    records.insert(3, Rec { topic: s.topics[0].clone(), partition, key: Some(key), value: Some(value) });
    produce(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let dlq = wait_for_records(&format!("{}-dlq", s.group), 1, Duration::from_secs(60));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(60));
    assert!(p.stop().success());
    assert_eq!(dlq.len(), 1);
    assert_eq!(header(&dlq[0], "tributary.error.reason"), "too_large");
    let error = header(&dlq[0], "tributary.error");
    assert!(error.contains("record limit") && error.contains("383616-byte"), "{error}");
    // The value would not fit the dead-letter topic either: left out, said so.
    assert!(dlq[0]["payload"].is_null(), "the value is left out");
    let omitted: usize = header(&dlq[0], "tributary.value.omitted.bytes").parse().unwrap();
    assert!(omitted > 500_000, "{omitted}");
    assert!(error.contains("is left out; read it at the source offset"), "{error}");
    assert_exactly_once(&output, expected);
}

#[test]
fn a_poison_record_quoting_huge_input_or_with_a_huge_key_is_set_aside_not_looped_on() {
    // Every topic of the run takes records of at most 400 000 bytes, the
    // dead-letter topic too; the sources take the broker's default (1 MB).
    let s = Setup::with_output_config("dlqbound", &[("max.message.bytes", "400000")]);
    create_topic(&format!("{}-dlq", s.group), PARTITIONS, &[("max.message.bytes", "400000")]);
    let mut live = HashMap::new();
    let mut records = history(&s, 6, 0..2, &mut live);
    let expected = expected_outputs(&records);
    let key = json!({"id": 78}).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
    // Text the producer's compression cannot shrink (the topic limit is on
    // compressed batches).
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| -> String {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(seed % 62) as usize])
            })
            .collect()
    };
    // An `op` of 450 000 bytes: the error quotes it.
    let op = noise(450_000);
    let value = json!({"before": null, "after": {"id": 78}, "op": op, "source": {"ts_ms": s.epoch_ms}}).to_string();
    records.insert(3, Rec { topic: s.topics[0].clone(), partition, key: Some(key), value: Some(value) });
    // A key of 450 000 bytes: over the state store's key limit, and too
    // large to go out with the dead letter.
    let huge_key = json!({"id": noise(450_000)}).to_string();
    let huge_key_len = huge_key.len();
    let value = json!({"before": null, "after": {"id": 79}, "op": "c", "source": {"ts_ms": s.epoch_ms}}).to_string();
    records.insert(5, Rec { topic: s.topics[1].clone(), partition: 0, key: Some(huge_key), value: Some(value) });
    produce(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let dlq = wait_for_records(&format!("{}-dlq", s.group), 2, Duration::from_secs(60));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(60));
    assert!(p.stop().success());
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let by_reason = |r: &str| dlq.iter().find(|d| header(d, "tributary.error.reason") == r).unwrap_or_else(|| panic!("no {r}"));
    let bad_op = by_reason("bad_op");
    let error = header(bad_op, "tributary.error");
    assert!(
        error.contains(&format!("unsupported op `{}", &op[..100])) && error.contains("more bytes of this error left out"),
        "{}",
        &error[..200]
    );
    assert!(error.len() < 5_000, "the error text is bounded: {}", error.len());
    assert!(bad_op["payload"].is_null(), "the value does not fit beside the error");
    assert!(header(bad_op, "tributary.value.omitted.bytes").parse::<usize>().unwrap() > 450_000);
    let bad_key = dlq.iter().find(|d| d["key"].is_null()).expect("the huge key is left out");
    assert_eq!(header(bad_key, "tributary.key.omitted.bytes"), huge_key_len.to_string());
    let error = header(bad_key, "tributary.error");
    assert!(error.contains("key is too large for the dead-letter topic"), "{error}");
    assert!(bad_key["payload"].as_str().unwrap().contains("\"id\":79"), "the value goes out");
    assert_exactly_once(&output, expected);
}

#[test]
fn an_oversized_merged_record_is_a_dead_letter_without_an_aborted_cycle() {
    let s = Setup::with_output_config("oversize", &[("max.message.bytes", "400000")]);
    let key = json!({"id": 5}).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
    let event = |source: usize, after: Value, at: i64| Rec {
        topic: s.topics[source].clone(),
        partition,
        key: Some(key.clone()),
        value: Some(json!({"before": null, "after": after, "op": "c", "source": {"ts_ms": s.epoch_ms + at}}).to_string()),
    };
    produce(&[
        event(0, json!({"id": 5, "by": "eu"}), 1),
        event(1, json!({"id": 5, "by": "us", "blob": "x".repeat(500_000)}), 2),
        event(1, json!({"id": 5, "by": "us"}), 3),
    ]);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let addr = admin_addr(&p);
    let dlq = wait_for_records(&format!("{}-dlq", s.group), 1, Duration::from_secs(60));
    let output = wait_for_records(&s.output, 2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let (_, text) = http_get(&addr, "/metrics");
    assert!(p.stop().success());
    assert_eq!(header(&dlq[0], "tributary.error.reason"), "too_large");
    // The other two events merged (the topics are read in either order),
    // and the refused event's cycle was not aborted.
    let last: Value = serde_json::from_str(output[1]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(last, json!({"id": 5, "by": "us"}));
    assert_eq!(header(&output[1], "tributary.siblings"), "2");
    assert_eq!(metric(&text, "tributary_transactions_total", "outcome=\"aborted\""), 0.0, "{text}");
    assert!(metric(&text, "tributary_transactions_total", "outcome=\"committed\"") >= 1.0, "{text}");
    assert_eq!(metric(&text, "tributary_dead_letters_total", "reason=\"too_large\""), 1.0, "{text}");
}

#[test]
fn deleted_keys_are_dropped_after_tombstone_retention() {
    let s = Setup::new("gc");
    let cfg = s.config_with("gc", &Conf { merge: "tombstone_retention = \"1s\"", ..Conf::default() });
    let rec = |si: usize, id: u32, payload: Value| {
        let key = json!({ "id": id }).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
        Rec { topic: s.topics[si].clone(), partition, key: Some(key), value: Some(payload.to_string()) }
    };
    let row = |id: u32, by: &str| json!({"id": id, "name": format!("n{id}"), "by": by});
    let t = s.epoch_ms;
    produce(&[
        rec(0, 1, json!({"before": null, "after": row(1, "eu"), "op": "c", "source": {"ts_ms": t}})),
        rec(0, 1, json!({"before": row(1, "eu"), "after": null, "op": "d", "source": {"ts_ms": t + 10}})),
        rec(0, 2, json!({"before": null, "after": row(2, "eu"), "op": "c", "source": {"ts_ms": t}})),
    ]);
    // Collection goes by stream time: every source's partition of key 1 must
    // show events newer than the delete plus the retention first.
    let p1 = tributary::kafka::murmur2_partition(json!({"id": 1}).to_string().as_bytes(), PARTITIONS);
    let neighbour = (3..)
        .find(|id: &u32| tributary::kafka::murmur2_partition(json!({"id": id}).to_string().as_bytes(), PARTITIONS) == p1)
        .unwrap();
    produce(
        &(0..3)
            .map(|si| {
                rec(
                    si,
                    neighbour,
                    json!({"before": null, "after": row(neighbour, SOURCES[si]), "op": "c", "source": {"ts_ms": t + 5_000}}),
                )
            })
            .collect::<Vec<_>>(),
    );
    let p = Processor::start(&cfg, &s.log("gc"));
    let changelog = s.changelog.clone();
    let key1 = json!({ "id": 1 }).to_string();
    // The deleted key's state goes: a null record on the changelog.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let records = read_topic(&changelog, true);
        if records.iter().any(|r| r["key"] == key1.as_str() && r["payload"].is_null()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no changelog tombstone for {key1}: {records:#?}\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    let addr = admin_addr(&p);
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A1%7D");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A2%7D");
    assert_eq!(status, 200, "a live key stays: {body}");

    // Past the retention a late concurrent update is no longer held back by
    // the delete (Cassandra's gc_grace): the row comes back. Before the
    // collection the delete (newer) would have kept it deleted.
    produce(&[rec(1, 1, json!({"before": null, "after": row(1, "us"), "op": "u", "source": {"ts_ms": t + 5}}))]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = common::last_per_key(&read_topic(&s.output, true));
        if out.get(&key1).is_some_and(|r| r["payload"].as_str().is_some_and(|v| v.contains("\"by\":\"us\""))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the late update did not come back: {out:#?}\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(p.log_text().contains("dropped deleted keys past tombstone_retention"));
    assert!(p.stop().success());
}

/// Lag is the consumer's position against the partition's end (the last
/// stable offset under read_committed): it shows while a backlog drains and
/// reads 0 once it has, on every partition, where librdkafka's own
/// `consumer_lag` (from a committed offset that transactions never update)
/// stayed at the backlog. Also: the CPU counter counts fractions of a
/// second, and `/state` finds a key that a non-murmur2 producer (kcat)
/// put in another partition.
#[test]
fn lag_cpu_and_state_of_a_key_from_another_partitioner() {
    let s = Setup::new("lag");
    let n = 60_000u64;
    let mut records: Vec<Rec> = (0..n)
        .map(|i| {
            let key = json!({ "id": i }).to_string();
            let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
            let si = (i % 3) as usize;
            let value = json!({"before": null, "after": {"id": i, "name": "x"}, "op": "c", "source": {"ts_ms": s.epoch_ms}});
            Rec { topic: s.topics[si].clone(), partition, key: Some(key), value: Some(value.to_string()) }
        })
        .collect();
    // As kcat (librdkafka's consistent_random) might place it: not where murmur2 does.
    let odd_key = json!({"id": 9_999_999}).to_string();
    let odd_partition = (tributary::kafka::murmur2_partition(odd_key.as_bytes(), PARTITIONS) + 1) % PARTITIONS;
    let value = json!({"before": null, "after": {"id": 9_999_999, "name": "kcat"}, "op": "c", "source": {"ts_ms": s.epoch_ms}});
    records.push(Rec {
        topic: s.topics[0].clone(),
        partition: odd_partition,
        key: Some(odd_key.clone()),
        value: Some(value.to_string()),
    });
    produce(&records);
    let cfg = s.config_with("a", &Conf { tables: "[kafka.properties]\n\"statistics.interval.ms\" = \"300\"", ..Conf::default() });
    let p = Processor::start(&cfg, &s.log("a"));
    let addr = admin_addr(&p);
    let lag = |text: &str| metric(text, "tributary_consumer_lag_records", "");
    let mut most = 0.0f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, text) = http_get(&addr, "/metrics");
        most = most.max(lag(&text));
        if metric(&text, "tributary_records_emitted_total", "") >= records.len() as f64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the backlog did not drain: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most > 0.0, "the lag showed while the backlog drained");
    // Drained: 0 on every source partition, as kafka-consumer-groups says.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (_, text) = http_get(&addr, "/metrics");
        let series = text.lines().filter(|l| l.starts_with("tributary_consumer_lag_records{")).count();
        if series == 9 && lag(&text) == 0.0 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "lag did not reach 0 on all 9 partitions: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metric(&text, "process_cpu_seconds_total", "") > 0.0, "{text}");
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A9999999%7D");
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["partition"], odd_partition, "{body}");
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A123456789%7D");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"partitioner\":\"murmur2\""), "{body}");
    let log = p.log_text();
    assert_eq!(log.matches("is not in the partition murmur2 gives it").count(), 1, "{log}");
    assert!(p.stop().success());
}

/// SIGINT stops the process during a start-up wait (here: a source topic
/// that does not exist yet), and a start-up error names the bootstrap
/// servers it tried.
#[test]
fn sigint_during_start_up_and_start_up_errors_name_the_brokers() {
    let group = unique("startup");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n[output]\ntopic = \"{group}.out\"\n[runtime]\nstate_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[sources]]\nname = \"a\"\ntopic = \"{group}.missing\"\n",
            kafka::bootstrap(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let p = Processor::start(&config, &dir.path().join("log1"));
    std::thread::sleep(Duration::from_secs(2));
    let sent = std::time::Instant::now();
    std::process::Command::new("kill").arg("-INT").arg(p.child.id().to_string()).status().unwrap();
    let (status, log) = p.wait_exit(Duration::from_secs(5));
    assert!(sent.elapsed() < Duration::from_secs(3), "stopped {:?} after SIGINT: {log}", sent.elapsed());
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("signal received during start-up"), "{log}");

    let p = Processor::start(&config, &dir.path().join("log2"));
    let (status, log) = p.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("source topic(s) do not exist: {group}.missing (bootstrap servers {})", kafka::bootstrap())),
        "{log}"
    );
}

/// Column rules on the broker: an `owner` column takes the owner's write
/// over a concurrent write of another source, which is counted; `/state`
/// and the conflict audit record say which write decided each column.
#[test]
fn owner_rule_counts_foreign_writes_and_explains_columns() {
    let s = Setup::new("owner");
    let cfg = s.dir.path().join("owner.toml");
    let text = s
        .config_text("owner", &Conf::default())
        .replace("policy = \"lww\"\n", "policy = \"field-lww\"\n[merge.columns]\nname = { rule = \"owner\", source = \"eu\" }\n");
    std::fs::write(&cfg, text).unwrap();
    let key = json!({"id": 1}).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
    let rec = |si: usize, name: &str, ts: i64| Rec {
        topic: s.topics[si].clone(),
        partition,
        key: Some(key.clone()),
        value: Some(
            json!({"before": null, "after": {"id": 1, "name": name, "city": SOURCES[si]}, "op": "c", "source": {"ts_ms": ts}})
                .to_string(),
        ),
    };
    // us writes `name` later than eu, yet eu owns it.
    produce(&[rec(0, "eu-name", s.epoch_ms), rec(1, "us-name", s.epoch_ms + 50)]);
    let p = Processor::start(&cfg, &s.log("owner"));
    let output = wait_for_records(&s.output, 2, Duration::from_secs(60));
    let last = common::last_per_key(&output);
    let row: Value = serde_json::from_str(last[&key]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(row["name"], "eu-name", "{row}");
    assert_eq!(row["city"], "us", "a column without a rule: the latest write");
    let addr = admin_addr(&p);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http_get(&addr, "/metrics");
        if metric(&text, "tributary_owner_foreign_writes_total", "source=\"us\"") >= 1.0 {
            assert_eq!(metric(&text, "tributary_owner_foreign_writes_total", "source=\"eu\""), 0.0, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the foreign write was not counted: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A1%7D");
    assert_eq!(status, 200, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let name = st["columns"].as_array().unwrap().iter().find(|c| c["column"] == "name").cloned().unwrap_or_default();
    assert_eq!((name["rule"].as_str(), name["source"].as_str()), (Some("owner"), Some("eu")), "{body}");
    let audit = wait_for_records(&format!("{}-conflicts", s.group), 1, Duration::from_secs(30));
    assert!(p.stop().success());
    let body: Value = serde_json::from_str(audit.last().unwrap()["payload"].as_str().unwrap()).unwrap();
    assert!(body["columns"].as_array().is_some_and(|c| c.iter().any(|c| c["column"] == "name" && c["source"] == "eu")), "{body}");
}

/// A commit time that is no time in milliseconds (Debezium's `ts_us` by
/// mistake; `i64::MIN`, whose age overflowed at emit and panicked the
/// worker of a debug build at every restart) is a dead letter naming the
/// field and the value; every other record is output exactly once.
#[test]
fn a_commit_time_outside_the_calendar_is_a_dead_letter() {
    let s = Setup::new("badts");
    let mut live = HashMap::new();
    let mut records = history(&s, 6, 0..2, &mut live);
    let expected = expected_outputs(&records);
    let bad = [s.epoch_ms * 1000, i64::MIN];
    for (i, ts) in bad.iter().enumerate() {
        let key = json!({"id": 900 + i}).to_string();
        let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
        let value = json!({"before": null, "after": {"id": 900 + i}, "op": "c", "source": {"ts_ms": ts}}).to_string();
        records.insert(records.len() / 2 + i, Rec { topic: s.topics[i].clone(), partition, key: Some(key), value: Some(value) });
    }
    produce(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let dlq = wait_for_records(&format!("{}-dlq", s.group), bad.len(), Duration::from_secs(60));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(60));
    assert!(p.stop().success(), "the processor ran to the end");
    assert_eq!(dlq.len(), bad.len(), "{dlq:?}");
    for ts in bad {
        let r = dlq.iter().find(|r| r["payload"].as_str().is_some_and(|v| v.contains(&ts.to_string()))).expect("in the DLQ");
        assert_eq!(header(r, "tributary.error.reason"), "bad_timestamp");
        let error = header(r, "tributary.error");
        assert!(
            error.contains(&format!("`source.ts_ms` or `ts_ms`: {ts} is not a time between the years 1 and 9999")),
            "{error}"
        );
    }
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
}

/// A commit time ahead of the broker's clock (a source whose clock runs two
/// hours fast) is merged, and its output record is written with the current
/// time: the broker refuses a timestamp more than an hour ahead
/// (`message.timestamp.after.max.ms`), which aborted every cycle of the
/// partition, again at every retry.
#[test]
fn a_commit_time_in_the_future_does_not_stall_the_output() {
    let s = Setup::new("futurets");
    let mut live = HashMap::new();
    let mut records = history(&s, 6, 0..2, &mut live);
    let key = json!({"id": 777}).to_string();
    let partition = tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS);
    let ahead = s.epoch_ms + 2 * 3_600_000;
    let value = json!({"before": null, "after": {"id": 777, "name": "ahead"}, "op": "c", "source": {"ts_ms": ahead}}).to_string();
    records.insert(records.len() / 2, Rec { topic: s.topics[1].clone(), partition, key: Some(key.clone()), value: Some(value) });
    produce(&records);
    let expected = expected_outputs(&records);
    let p = Processor::start(&s.config("a"), &s.log("a"));
    let output = wait_for_records(&s.output, expected, Duration::from_secs(60));
    let log = p.log_text();
    assert!(p.stop().success(), "the processor ran to the end");
    assert!(!log.contains("INVALID_TIMESTAMP"), "{log}");
    assert_exactly_once(&output, expected);
    assert_same_view(&output, &s.replay());
    let ahead_record = output.iter().find(|r| r["key"].as_str() == Some(key.as_str())).expect("the record is merged");
    assert!(ahead_record["ts"].as_i64().is_some_and(|t| t < ahead), "{ahead_record}");
}
