//! `examples/legacy-erp` on the real broker: the dump loaded with `tributary
//! load`, merged by `tributary run`, and compared with `tributary replay` of
//! the same dump; the filter counters and the `transform` dead letters.

mod common;

use std::time::{Duration, Instant};

use common::kafka::{self, admin_addr, compacted, create_topic, http_get, unique, wait_for_records, Processor};
use common::*;
use serde_json::Value;

fn example(file: &str) -> std::path::PathBuf {
    root().join("examples/legacy-erp").join(file)
}

/// One metric's sum over the series whose labels hold `labels` (0 when none).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    common::kafka::metric(text, name, &[labels]).unwrap_or(0.0)
}

/// The example's dump on this test's topics, every time (record `ts`,
/// Debezium's `source.ts_ms` and `ts_ms`) moved to the last minute: the
/// ERP's commit times are its record times, and the broker would roll a
/// segment per record of 1970 (and compact the output at once).
fn shifted_dump(topics: &[(&str, String)]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let base = now - 60_000;
    let shift = |v: &mut Value| {
        if let Some(t) = v.as_i64() {
            *v = Value::from(t + base);
        }
    };
    let text = std::fs::read_to_string(example("dump.jsonl")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut r: Value = serde_json::from_str(line).unwrap();
        let topic = topics.iter().find(|(from, _)| r["topic"] == *from).expect("a known topic").1.clone();
        r["topic"] = Value::from(topic);
        shift(&mut r["ts"]);
        if let Some(payload) = r["payload"].as_str() {
            let mut p: Value = serde_json::from_str(payload).unwrap();
            if p.get("source").is_some() {
                shift(&mut p["source"]["ts_ms"]);
                shift(&mut p["ts_ms"]);
            }
            r["payload"] = Value::from(p.to_string());
        }
        out.push_str(&r.to_string());
        out.push('\n');
    }
    out
}

#[test]
fn legacy_erp_example_on_the_broker_matches_replay() {
    let group = unique("legacy-erp");
    let dir = tempfile::tempdir().unwrap();
    let topics = [
        ("eu.public.customers", format!("{group}.eu.customers")),
        ("us.public.customers", format!("{group}.us.customers")),
        ("erp.customers", format!("{group}.erp.customers")),
    ];
    for (_, topic) in &topics {
        create_topic(topic, 1, &[]);
    }
    let output = format!("{group}.merged");
    // The example's own file, pointed at this test's broker, names and directory.
    let mut config = std::fs::read_to_string(example("tributary.toml"))
        .unwrap()
        .replace("localhost:9092", &kafka::bootstrap())
        .replace("\"customers-merge-erp\"", &format!("\"{group}\""))
        .replace("\"customers.merged\"", &format!("\"{output}\""))
        .replace("/tmp/tributary-legacy-erp/state", &dir.path().join("state").display().to_string())
        .replace("127.0.0.1:9464", "127.0.0.1:0");
    for (from, to) in &topics {
        config = config.replace(&format!("topic = \"{from}\""), &format!("topic = \"{to}\""));
    }
    let dump = shifted_dump(&topics);
    let config_path = write(dir.path(), "tributary.toml", &config);
    let dump_path = write(dir.path(), "dump.jsonl", &dump);

    // The reference: replay of the same dump and configuration.
    let out = run(tributary().args(["replay", "-c"]).arg(&config_path).arg("-i").arg(&dump_path).args(["-o", "-"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replay = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(replay.len(), 7);

    // Load the dump as a user would, with its record times.
    let mut load = tributary();
    load.args(["load", "-c"]).arg(&config_path).arg("-i").arg(&dump_path).arg("--keep-timestamps");
    let out = run(&mut load);
    assert!(out.status.success(), "load: {}", String::from_utf8_lossy(&out.stderr));

    let p = Processor::start(&config_path, &dir.path().join("run.log"));
    let addr = admin_addr(&p);
    let live = wait_for_records(&output, 7, Duration::from_secs(90));
    let dlq = wait_for_records(&format!("{group}-dlq"), 2, Duration::from_secs(30));

    // The filter counters: 5 matched, 2 dropped (exported at each commit).
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        let counted = metric(&text, "tributary_source_filter_records_total", "outcome=\"matched\"");
        if counted >= 5.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric(&text, "tributary_source_filter_records_total", "outcome=\"matched\",source=\"erp\""), 5.0, "{text}");
    assert_eq!(metric(&text, "tributary_source_filter_records_total", "outcome=\"dropped\",source=\"erp\""), 2.0, "{text}");
    // Sources without a filter have no such series.
    assert_eq!(metric(&text, "tributary_source_filter_records_total", "source=\"eu\""), 0.0);
    assert_eq!(metric(&text, "tributary_dead_letters_total", "source=\"erp\""), 2.0, "{text}");
    assert!(p.stop().success());

    // The merged table is the replay's: same rows, clocks, winners.
    let (live_view, replay_view) = (compacted(&live), compacted(&replay));
    assert_eq!(live_view.len(), 3);
    assert_eq!(live_view, replay_view);
    let ada = &live_view[r#"{"id":1}"#].0;
    let ada: Value = serde_json::from_str(ada.as_str().unwrap()).unwrap();
    assert_eq!((ada["region"].as_str(), ada["balance"].as_f64()), (Some("eu"), Some(2500.75)));
    assert_eq!(live_view[r#"{"id":3}"#].0, Value::Null, "Cleo deleted under the transformed key");

    // The two records the mapping cannot handle, with reason `transform`.
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let mut errors: Vec<(String, String)> =
        dlq.iter().map(|r| (header(r, "tributary.error.reason").unwrap(), header(r, "tributary.error").unwrap())).collect();
    errors.sort();
    assert_eq!(errors[0].0, "transform");
    assert_eq!(errors[1].0, "transform");
    assert!(errors.iter().any(|(_, e)| e.contains("transform of source `erp`: column `balance` value \"12,50\"")), "{errors:?}");
    assert!(errors.iter().any(|(_, e)| e.contains("transform of source `erp`: column `status` value \"X\"")), "{errors:?}");
    // The source records, raw, as they were.
    assert!(dlq.iter().all(|r| r["payload"].as_str().is_some_and(|v| v.contains("CUST_NO"))));
    // Nothing else was lost or repeated: one output record per accepted
    // event (read before compaction could merge them).
    assert_eq!(live.len(), 7, "{live:?}");
}
