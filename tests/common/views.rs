//! What the continuity and standby tests check a run against: a history
//! of conflicting updates from every source, the live output's compacted
//! view equal to replay's, and `/state` answering what replay says.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::kafka::{compacted, http_get, read_topic, Processor, Rec};
use super::setup::{Conf, Setup, SOURCES};

/// Every source creates and updates the same keys (conflicts), round `r`
/// stamped `epoch + r * 100` ms. Derived clocks: every event emits.
pub fn history(s: &Setup, keys: u64, rounds: std::ops::Range<i64>) -> Vec<Rec> {
    history_of(s, keys, rounds, &[0, 1, 2])
}

/// [`history`] of some sources only.
pub fn history_of(s: &Setup, keys: u64, rounds: std::ops::Range<i64>, sources: &[usize]) -> Vec<Rec> {
    let mut out = Vec::new();
    for r in rounds {
        for &si in sources {
            for k in 0..keys {
                if (r as u64 + si as u64 + k).is_multiple_of(4) {
                    continue;
                }
                let ts = s.epoch_ms + r * 100 + si as i64 * 7 + (k % 5) as i64;
                let after = json!({"id": k, "name": format!("n{k}"), "round": r, "by": SOURCES[si]});
                let op = if r == 0 { "c" } else { "u" };
                out.push(s.rec(si, k, None, json!({"before": null, "after": after, "op": op, "source": {"ts_ms": ts}})));
            }
        }
    }
    out
}

/// The compacted view of the live output equals replay's, headers included
/// (the merged clock shows whether every version was in the state).
pub fn assert_same_view(live: &[Value], replay: &[Value]) {
    let (a, b) = (compacted(live), compacted(replay));
    assert_eq!(a.len(), b.len(), "keys in the output");
    for (k, v) in &b {
        assert_eq!(a.get(k), Some(v), "key {k}: live output differs from replay");
    }
}

/// Waits until the output's compacted view equals replay's (the processor
/// may still be working), then asserts it.
pub fn wait_for_view(s: &Setup, merge: &str, within: Duration) -> (Vec<Value>, Vec<Value>) {
    let replay = s.replay_with(&Conf { merge, ..Conf::default() });
    let deadline = Instant::now() + within;
    loop {
        let live = read_topic(&s.output, true);
        if compacted(&live) == compacted(&replay) || Instant::now() > deadline {
            assert_same_view(&live, &replay);
            return (live, replay);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `/state/{key}` answers what the replayed output says for some keys.
pub fn assert_state_matches(addr: &str, replay: &[Value], sample: usize) {
    for (key, (payload, headers)) in compacted(replay).into_iter().take(sample) {
        let path = format!("/state/{}", key.replace('"', "%22").replace('{', "%7B").replace('}', "%7D").replace(':', "%3A"));
        // 503 while the worker is busy (a commit, a restore): ask again.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (status, body) = loop {
            let (status, body) = http_get(addr, &path);
            if status != 503 || Instant::now() > deadline {
                break (status, body);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(status, 200, "{key}: {body}");
        let st: Value = serde_json::from_str(&body).unwrap();
        let row: Value = payload.as_str().map_or(Value::Null, |p| serde_json::from_str(p).unwrap());
        assert_eq!(st["row"], row, "{key}");
        let vv = headers.as_array().unwrap().chunks(2).find(|kv| kv[0] == "tributary.vv").map(|kv| kv[1].clone()).unwrap();
        assert_eq!(st["vv"], serde_json::from_str::<Value>(vv.as_str().unwrap()).unwrap(), "{key}");
    }
}

pub fn wait_for_log(p: &Processor, text: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if p.log_text().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
