//! Tests of the pipeline: processing, dead letters and the state stores.

use serde_json::json;

use super::*;
use crate::store::{decode_state, StateDb, TaskStore};

const CONFIG: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "g"
[output]
topic = "customers.merged"
[merge]
policy = "lww"
[[sources]]
name = "eu"
topic = "eu.customers"
[[sources]]
name = "us"
topic = "us.customers"
"#;

/// Limits fitting small rows but not a 5 000-character one.
const LIMIT: usize = 4_000;

fn pipeline(limit: Option<usize>) -> Pipeline {
    pipeline_of(CONFIG, limit)
}

fn pipeline_of(config: &str, limit: Option<usize>) -> Pipeline {
    let config = Config::parse(config, "test.toml", []).unwrap();
    let p = Pipeline::new(&config);
    match limit {
        Some(l) => p.with_record_limit(l),
        None => p,
    }
}

/// A Debezium create of key `{"id": 1}` from `topic` at `offset`.
fn process<S: StateStore>(
    p: &Pipeline,
    store: &mut S,
    topic: &str,
    offset: i64,
    after: serde_json::Value,
) -> Result<Step, ProcessError<S::Error>> {
    let value = json!({"before": null, "after": after, "op": "c", "source": {"ts_ms": 1_000 + offset}}).to_string();
    let key = json!({"id": 1}).to_string();
    let record = InputRecord {
        topic,
        partition: 0,
        offset,
        timestamp: None,
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
        headers: &[],
    };
    p.process(&record, store)
}

fn too_large<E: std::error::Error>(r: Result<Step, ProcessError<E>>) -> Box<DeadLetter> {
    match r {
        Err(ProcessError::Rejected(d)) => d,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn big() -> serde_json::Value {
    json!({"id": 1, "blob": "x".repeat(5_000)})
}

#[test]
fn an_emitted_step_carries_the_typed_winner_and_the_encoded_state() {
    let p = pipeline(Some(LIMIT));
    let mut store = MemoryStore::default();
    process(&p, &mut store, "eu.customers", 0, json!({"id": 1, "name": "a"})).unwrap();
    let Step::Emitted { record, winner, state, siblings, .. } =
        process(&p, &mut store, "us.customers", 0, json!({"id": 1, "name": "b"})).unwrap()
    else {
        panic!("not emitted")
    };
    assert_eq!(siblings, 2);
    let header = record.headers.iter().find(|(k, _)| *k == crate::output::HEADER_WINNER).map(|(_, v)| v.clone());
    assert_eq!(winner, header);
    assert!(winner.is_some());
    let key = json!({"id": 1}).to_string();
    assert_eq!(&decode_state(&state.expect("a record limit: the state comes encoded")).unwrap(), store.get(&key).unwrap());
    // Without a limit (replay, benches) nothing is encoded for a store.
    let p = pipeline(None);
    let step = process(&p, &mut MemoryStore::default(), "eu.customers", 0, json!({"id": 1})).unwrap();
    assert!(matches!(step, Step::Emitted { state: None, .. }), "{step:?}");
}

/// The row-level policies undo in the engine, `field-lww` in the store.
const POLICIES: [&str; 2] = ["lww", "field-lww"];

fn pipeline_under(policy: &str, limit: Option<usize>) -> Pipeline {
    pipeline_of(&CONFIG.replace("policy = \"lww\"", &format!("policy = \"{policy}\"")), limit)
}

#[test]
fn a_merged_record_over_the_limit_is_refused_and_the_state_stays_as_it_was() {
    for policy in POLICIES {
        refused_under(policy);
    }
}

fn refused_under(policy: &str) {
    let p = pipeline_under(policy, Some(LIMIT));
    let mut store = MemoryStore::default();
    let key = json!({"id": 1}).to_string();
    process(&p, &mut store, "eu.customers", 0, json!({"id": 1, "name": "a"})).unwrap();
    let before = store.get(&key).unwrap().clone();
    let d = too_large(process(&p, &mut store, "us.customers", 7, big()));
    assert!(matches!(d.reason, DeadLetterReason::TooLarge { limit: LIMIT, .. }), "{d:?}");
    assert_eq!(d.reason.reason(), "too_large");
    assert_eq!(d.source_name.as_deref(), Some("us"));
    let text = d.to_string();
    assert!(text.starts_with("topic us.customers partition 0 offset 7: the merged record of key"), "{text}");
    assert!(text.contains(&format!("over the {LIMIT}-byte record limit")), "{text}");
    assert_eq!(store.get(&key), Some(&before), "the refused event left no trace");
    // A first event that is too large leaves no state at all.
    let mut empty = MemoryStore::default();
    too_large(process(&p, &mut empty, "us.customers", 0, big()));
    assert!(empty.is_empty());
}

#[test]
fn the_task_store_undoes_a_refused_record_in_every_case() {
    for policy in POLICIES {
        task_store_undoes_under(policy);
    }
}

fn task_store_undoes_under(policy: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(dir.path()).unwrap();
    let mut task: TaskStore = db.task(0).unwrap();
    let p = pipeline_under(policy, Some(LIMIT));
    let key = json!({"id": 1}).to_string();
    let emit = |task: &mut TaskStore, topic: &str, offset: i64, after: serde_json::Value| {
        let step = process(&p, task, topic, offset, after).unwrap();
        let Step::Emitted { record, state, .. } = step else { panic!("not emitted: {step:?}") };
        // As the processor does: the change's encoding is remembered.
        task.remember_encoded(&record.key, state.unwrap());
    };
    // A key changed in the open transaction: put back from its remembered encoding.
    emit(&mut task, "eu.customers", 0, json!({"id": 1, "name": "a"}));
    let changed = task.cached(&key).unwrap().clone();
    too_large(process(&p, &mut task, "us.customers", 1, big()));
    assert_eq!(task.cached(&key), Some(&changed));
    // A stale event keeps the encoding; a refusal after it still undoes.
    let stale = process(&p, &mut task, "eu.customers", 0, json!({"id": 1, "name": "a"})).unwrap();
    assert!(matches!(stale, Step::Stale { .. } | Step::Duplicate { .. }), "{stale:?}");
    too_large(process(&p, &mut task, "us.customers", 2, big()));
    assert_eq!(task.cached(&key), Some(&changed));
    // The commit writes the state as it was before the refused events.
    task.commit(1).unwrap();
    assert_eq!(task.get(&key).unwrap().as_ref(), Some(&changed));
    // A committed key loaded for the refused event: the store's undo
    // does not cache it (it is read again); the engine's undo leaves it
    // as loaded, and cached.
    too_large(process(&p, &mut task, "us.customers", 3, big()));
    let cached = if p.engine().undoes_without_copy() { Some(&changed) } else { None };
    assert_eq!(task.cached(&key), cached, "{policy}");
    assert_eq!(task.get(&key).unwrap().as_ref(), Some(&changed));
    // A key loaded by a stale event (no encoding remembered): undone from a copy.
    process(&p, &mut task, "eu.customers", 0, json!({"id": 1, "name": "a"})).unwrap();
    too_large(process(&p, &mut task, "us.customers", 4, big()));
    assert_eq!(task.cached(&key), Some(&changed));
    task.commit(2).unwrap();
    assert_eq!(task.get(&key).unwrap().as_ref(), Some(&changed));
}

#[test]
fn a_column_rule_refusal_is_a_dead_letter_with_the_rule_reason() {
    let config = CONFIG.replace("policy = \"lww\"", "policy = \"field-lww\"\n[merge.columns]\nvisits = { rule = \"counter\" }");
    let p = pipeline_of(&config, Some(LIMIT));
    let mut store = MemoryStore::default();
    let d = too_large(process(&p, &mut store, "eu.customers", 0, json!({"id": 1, "visits": "many"})));
    assert!(matches!(d.reason, DeadLetterReason::Refused(_)), "{d:?}");
    assert!(!d.reason.is_retriable());
    assert!(store.is_empty());
}

#[test]
fn a_dead_letter_quoting_huge_input_carries_a_bounded_text() {
    let position = RecordPosition { topic: "t".into(), partition: 2, offset: 9 };
    let letter = |op: String| DeadLetter {
        position: position.clone(),
        source_name: None,
        reason: DeadLetterReason::Input(NormalizeErrorKind::UnsupportedOp(op)),
    };
    // Short: as it was.
    assert_eq!(letter("z".into()).to_string(), "topic t partition 2 offset 9: unsupported op `z` (expected c, u, r or d)");
    // Huge, with multi-byte characters at the cut: the start, cut at a
    // character boundary, and how much was left out.
    let text = letter("é".repeat(1_000_000)).to_string();
    assert!(text.len() < MAX_ERROR_TEXT + 200, "{}", text.len());
    assert!(text.starts_with("topic t partition 2 offset 9: unsupported op `éé"), "{}", &text[..60]);
    let full = format!("unsupported op `{}` (expected c, u, r or d)", "é".repeat(1_000_000));
    let kept = text.split_once(": ").unwrap().1.split('…').next().unwrap().len();
    assert!((MAX_ERROR_TEXT - 1..=MAX_ERROR_TEXT).contains(&kept), "{kept}");
    assert!(
        text.ends_with(&format!("… ({} more bytes of this error left out)", full.len() - kept)),
        "{}",
        &text[text.len() - 80..]
    );
}
