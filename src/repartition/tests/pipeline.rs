//! The merge of a re-keyed source equals the direct merge: the same events
//! through [`Pipeline`] directly, and through re-keying, the repartition
//! topic's partitions and a different interleaving (each key's records in
//! their order), give the same states and the same output rows.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

const EU: &str = "eu.customers";

/// Two sources: `eu`, co-partitioned, and `erp`, a legacy system with its
/// own column names, keyed by its own record key, re-keyed.
fn table(policy: &str) -> Config {
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "k:9092"
group_id = "g"
[output]
topic = "customers.merged"
[merge]
policy = "{policy}"
[[sources]]
name = "eu"
topic = "{EU}"
[[sources]]
name = "erp"
topic = "{TOPIC}"
key_fields = ["id"]
[sources.transform]
rename = {{ cust_no = "id", EMAIL_ADDR = "email" }}
cast = {{ id = "int" }}
"#
    );
    Config::parse(&text, "test.toml", []).unwrap()
}

/// An owned record.
#[derive(Debug, Clone)]
struct Rec {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Rec {
    fn with<T>(&self, f: impl FnOnce(&InputRecord<'_>) -> T) -> T {
        let headers: Vec<(&str, &[u8])> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        f(&InputRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: Some(1),
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &headers,
        })
    }
}

/// A deterministic workload: per key, writes from both sources with
/// commit times that cross, deletes, and erp's tombstones. `eu` has one
/// partition; `erp` two, its records in partition id % 2.
fn workload() -> Vec<Rec> {
    let mut next = [0i64; 3];
    let mut seed = 7u64;
    let mut rand = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut out = Vec::new();
    for step in 0..400 {
        let id = rand(12) as i64;
        let ts = 1_000 + step + rand(40) as i64 - 20;
        let delete = rand(8) == 0;
        if rand(2) == 0 {
            let after = (!delete).then(|| json!({"id": id, "name": format!("eu-{step}"), "email": format!("{id}@eu")}));
            let before = delete.then(|| json!({"id": id}));
            let op = if delete { "d" } else { "u" };
            let value = json!({"before": before, "after": after, "op": op, "source": {"ts_ms": ts}}).to_string();
            let offset = next[0];
            next[0] += 1;
            out.push(Rec {
                topic: EU.into(),
                partition: 0,
                offset,
                key: Some(json!({"id": id}).to_string().into_bytes()),
                value: Some(value.into_bytes()),
                headers: vec![],
            });
        } else {
            let p = (id % 2) as i32;
            let cust_no = format!("{id:04}");
            let key = json!({"cust_no": cust_no}).to_string().into_bytes();
            let value = if delete {
                json!({"before": null, "after": null, "op": "d", "source": {"ts_ms": ts}}).to_string()
            } else {
                json!({"before": null, "after": {"cust_no": cust_no, "EMAIL_ADDR": format!("{id}@erp")}, "op": "u", "source": {"ts_ms": ts}})
                    .to_string()
            };
            let mut push = |value: Option<Vec<u8>>| {
                let offset = next[1 + p as usize];
                next[1 + p as usize] += 1;
                out.push(Rec { topic: TOPIC.into(), partition: p, offset, key: Some(key.clone()), value, headers: vec![] });
            };
            push(Some(value.into_bytes()));
            if delete {
                push(None);
            }
        }
    }
    out
}

/// Feeds `records` in order; returns the store and the last output record
/// (key, value) per key.
fn run(pipeline: &Pipeline, records: &[Rec]) -> (MemoryStore, BTreeMap<String, Option<Vec<u8>>>) {
    let mut store = MemoryStore::default();
    let mut rows = BTreeMap::new();
    for r in records {
        match r.with(|rec| pipeline.process(rec, &mut store)) {
            Ok(Step::Emitted { record, .. }) => {
                rows.insert(record.key.clone(), record.value.clone());
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    (store, rows)
}

#[test]
fn the_merge_through_the_repartition_topic_equals_the_direct_merge() {
    for policy in ["lww", "field-lww"] {
        let config = table(policy);
        let records = workload();
        let (direct_store, direct_rows) = run(&Pipeline::new(&config), &records);
        assert!(direct_rows.len() >= 10, "the workload touches most keys: {}", direct_rows.len());

        // erp's records, re-keyed into 3 partitions in their order.
        let rekeyer = Rekeyer::new(&config, "erp", 3, None).unwrap();
        let mut repartition: BTreeMap<i32, Vec<Rec>> = BTreeMap::new();
        for r in records.iter().filter(|r| r.topic == TOPIC) {
            let k = r.with(|rec| rekeyer.rekey(rec)).unwrap();
            let queue = repartition.entry(k.partition).or_default();
            let offset = queue.len() as i64;
            queue.push(Rec {
                topic: REPARTITION.into(),
                partition: k.partition,
                offset,
                key: Some(k.key),
                value: k.value,
                headers: k.headers,
            });
        }
        assert!(repartition.len() > 1, "keys spread over partitions");
        // Another interleaving: the repartition partitions from the last,
        // then eu's records. Each key's records keep their order.
        let mut consumed: Vec<Rec> = repartition.into_values().rev().flatten().collect();
        consumed.extend(records.iter().filter(|r| r.topic == EU).cloned());

        let mut rekeyed_config = config.clone();
        rekeyed_config.sources[1].topic = REPARTITION.into();
        let pipeline = Pipeline::new(&rekeyed_config).with_repartitioned([REPARTITION]);
        let (store, rows) = run(&pipeline, &consumed);

        assert_eq!(rows, direct_rows, "{policy}: the same output rows");
        let keys: BTreeSet<&String> = direct_rows.keys().collect();
        for key in keys {
            assert_eq!(store.get(key), direct_store.get(key), "{policy}: key {key}");
        }
        assert_eq!(store.len(), direct_store.len());
    }
}

#[test]
fn without_the_marking_the_repartition_topic_would_merge_other_clocks() {
    // The test above can fail: read as an ordinary topic, the erp events
    // get the repartition offsets as clocks and a different merge.
    let config = table("lww");
    let records = workload();
    let (_, direct_rows) = run(&Pipeline::new(&config), &records);
    let rekeyer = Rekeyer::new(&config, "erp", 3, None).unwrap();
    let mut consumed: Vec<Rec> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if r.topic == TOPIC {
            let k = r.with(|rec| rekeyer.rekey(rec)).unwrap();
            // One partition, offsets in reverse: clocks that order erp's
            // writes backwards.
            consumed.push(Rec {
                topic: REPARTITION.into(),
                partition: 0,
                offset: 10_000 - i as i64,
                key: Some(k.key),
                value: k.value,
                headers: k.headers,
            });
        } else {
            consumed.push(r.clone());
        }
    }
    let mut rekeyed_config = config.clone();
    rekeyed_config.sources[1].topic = REPARTITION.into();
    let (_, unmarked) = run(&Pipeline::new(&rekeyed_config), &consumed);
    assert_ne!(unmarked, direct_rows);
    let (_, marked) = run(&Pipeline::new(&rekeyed_config).with_repartitioned([REPARTITION]), &consumed);
    assert_eq!(marked, direct_rows);
}
