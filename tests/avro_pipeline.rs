//! Avro end to end on a real Apache Kafka broker: Debezium-shaped Avro
//! sources (encoded by Python's fastavro, an independent implementation,
//! registered in the Schema Registry stand-in under `tests/registry/`),
//! `tributary run` with `output.format = "avro"`, and the compacted output
//! decoded by fastavro again. The merged result must equal what the JSON
//! pipeline (`replay`, the same code path as `run`) makes of the equivalent
//! Debezium JSON records. Along the way: a source adds a column (a new
//! output schema version, no crash), the registry fails for a while (the
//! processor pauses, nothing is dead-lettered for it), a record names an
//! unknown schema id (dead-lettered as an Avro envelope), and the changelog
//! reads with fastavro and `schemas/changelog-state.avsc`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka::{
    self, admin_addr, create_topic, http_get, produce_bin, read_topic, unhex, unique, wait_for_records, BinRec, Processor,
};
use common::registry::{fastavro, Registry};
use serde_json::{json, Value};
use tributary::config::Config;

const PARTITIONS: i32 = 3;
const SOURCES: [&str; 2] = ["eu", "us"];
const COLUMNS: &str = "id:int32:key,name:string:optional,balance:decimal(10,2):optional,visits:int64:optional";
const COLUMNS_V2: &str =
    "id:int32:key,name:string:optional,balance:decimal(10,2):optional,visits:int64:optional,email:string:optional";

/// A change to send: id, op, before, after, commit time offset (ms).
type Change<'a> = (i64, &'a str, Option<Value>, Option<Value>, i64);

/// One source event, kept as the JSON equivalent of what went out as Avro.
struct Event {
    topic: String,
    partition: i32,
    offset: i64,
    id: i64,
    /// The Debezium JSON value (None: the poison record's JSON stand-in).
    json: Option<Value>,
}

struct Pipeline {
    registry: Registry,
    dir: tempfile::TempDir,
    group: String,
    output: String,
    topics: Vec<String>,
    prefixes: Vec<String>,
    epoch_ms: i64,
    events: Vec<Event>,
    next_offset: BTreeMap<(String, i32), i64>,
    /// The body of the `[merge]` section.
    merge: String,
}

impl Pipeline {
    fn new() -> Pipeline {
        let group = unique("avro");
        // Debezium's topic naming: <prefix>.<schema>.<table>; the envelope's
        // namespace is the same.
        let prefixes: Vec<String> = SOURCES.iter().map(|s| format!("{}_{s}", group.replace(['-', '.'], "_"))).collect();
        let topics: Vec<String> = prefixes.iter().map(|p| format!("{p}.public.customers")).collect();
        for t in &topics {
            create_topic(t, PARTITIONS, &[]);
        }
        let output = format!("{group}.merged");
        for t in [output.clone(), format!("{group}-state-changelog")] {
            create_topic(&t, PARTITIONS, &[("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")]);
        }
        let epoch_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        Pipeline {
            registry: Registry::start(),
            dir: tempfile::tempdir().unwrap(),
            group,
            output,
            topics,
            prefixes,
            epoch_ms,
            events: Vec::new(),
            next_offset: BTreeMap::new(),
            merge: "policy = \"lww\"\n".to_string(),
        }
    }

    fn config_text(&self, avro: bool) -> String {
        let mut text = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n\n[output]\ntopic = \"{}\"\nformat = \"{}\"\n\n[merge]\n{}\n[runtime]\ncommit_interval = \"100ms\"\nstate_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n",
            kafka::bootstrap(),
            self.group,
            self.output,
            if avro { "avro" } else { "json" },
            self.merge,
            self.dir.path().join("state").display(),
            kafka::ADMIN_TOKEN
        );
        if avro {
            text += &format!("\n[schema_registry]\nurl = \"{}\"\ntimeout = \"5s\"\nmax_backoff = \"1s\"\n", self.registry.url);
        }
        for (s, t) in SOURCES.iter().zip(&self.topics) {
            text += &format!(
                "\n[[sources]]\nname = \"{s}\"\ntopic = \"{t}\"\nformat = \"{}\"\npriority = {}\n",
                if avro { "debezium-avro" } else { "debezium-json" },
                s.len()
            );
        }
        text
    }

    fn schemas(&self, source: usize, columns: &str) -> Value {
        fastavro(&["debezium-schema", "--prefix", &self.prefixes[source], "--table", "customers", "--columns", columns], &[])
            .remove(0)
    }

    /// Encodes and produces `events` (id, op, before, after, ts offset) of
    /// `source` with the key and envelope schemas of `columns`.
    fn send(&mut self, source: usize, columns: &str, events: &[Change<'_>]) {
        let schemas = self.schemas(source, columns);
        let topic = self.topics[source].clone();
        let keys: Vec<String> = events.iter().map(|(id, ..)| json!({"id": id}).to_string()).collect();
        let key_hex = fastavro(
            &[
                "encode",
                "--registry",
                &self.registry.url,
                "--subject",
                &format!("{topic}-key"),
                "--schema",
                &schemas["key"].to_string(),
            ],
            &keys,
        );
        let lines: Vec<String> = events
            .iter()
            .map(|(_, op, before, after, dt)| {
                json!({"op": op, "before": before, "after": after, "ts_ms": self.epoch_ms + dt, "lsn": 1000 + dt}).to_string()
            })
            .collect();
        let value_hex = fastavro(
            &[
                "encode",
                "--registry",
                &self.registry.url,
                "--subject",
                &format!("{topic}-value"),
                "--schema",
                &schemas["value"].to_string(),
                "--debezium",
            ],
            &lines,
        );
        let mut records = Vec::new();
        for (i, (id, op, before, after, dt)) in events.iter().enumerate() {
            let partition = (*id % i64::from(PARTITIONS)) as i32;
            let offset = self.take_offset(&topic, partition);
            records.push(BinRec {
                topic: topic.clone(),
                partition,
                key: Some(unhex(key_hex[i]["hex"].as_str().unwrap())),
                value: Some(unhex(value_hex[i]["hex"].as_str().unwrap())),
            });
            // The JSON equivalent: Debezium's JSON converter (schemas off,
            // decimal.handling.mode=string) for the same change.
            let json = json!({
                "before": before, "after": after, "op": op, "ts_ms": self.epoch_ms + dt,
                "source": {"ts_ms": self.epoch_ms + dt, "lsn": 1000 + dt},
            });
            self.events.push(Event { topic: topic.clone(), partition, offset, id: *id, json: Some(json) });
        }
        produce_bin(&records);
    }

    fn take_offset(&mut self, topic: &str, partition: i32) -> i64 {
        let o = self.next_offset.entry((topic.to_string(), partition)).or_insert(0);
        *o += 1;
        *o - 1
    }

    /// A record whose value names a schema id the registry never issued.
    fn send_unknown_schema(&mut self, source: usize, id: i64) -> Vec<u8> {
        let topic = self.topics[source].clone();
        let partition = (id % i64::from(PARTITIONS)) as i32;
        let offset = self.take_offset(&topic, partition);
        let mut value = vec![0, 0, 0x0f, 0x42, 0x40];
        value.extend_from_slice(&[2, 4, 6]);
        produce_bin(&[BinRec { topic: topic.clone(), partition, key: None, value: Some(value.clone()) }]);
        self.events.push(Event { topic, partition, offset, id, json: None });
        value
    }

    /// What the JSON pipeline makes of the equivalent records: replay over
    /// a kcat-shaped dump, rows with null columns left out.
    fn expected(&self) -> BTreeMap<String, Value> {
        let mut dump = String::new();
        for e in &self.events {
            let line = json!({
                "topic": e.topic, "partition": e.partition, "offset": e.offset, "tstype": "create",
                "ts": self.epoch_ms, "broker": 0, "headers": [],
                "key": json!({"id": e.id}).to_string(),
                "payload": e.json.as_ref().map_or_else(|| "not json: an unknown schema id in the Avro run".to_string(), Value::to_string),
            });
            dump += &format!("{line}\n");
        }
        let config = Config::parse(&self.config_text(false), "json-equivalent.toml", Vec::new()).unwrap();
        let mut out = Vec::new();
        let mut log = Vec::new();
        tributary::replay::replay(&config, dump.as_bytes(), "dump", &mut out, None, &mut log).unwrap();
        let mut view = BTreeMap::new();
        for line in String::from_utf8(out).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            let row = r["payload"].as_str().map_or(Value::Null, |p| without_nulls(serde_json::from_str(p).unwrap()));
            view.insert(r["key"].as_str().unwrap().to_string(), row);
        }
        view
    }

    /// The output topic's compacted view, keys and values decoded by fastavro.
    fn actual(&self) -> Option<BTreeMap<String, Value>> {
        let records = read_topic(&self.output, true);
        let hex_of = |field: &str| -> Vec<String> { records.iter().map(|r| json!({"hex": r[field]}).to_string()).collect() };
        let keys = fastavro(&["decode", "--registry", &self.registry.url], &hex_of("key_hex"));
        let values = fastavro(&["decode", "--registry", &self.registry.url], &hex_of("payload_hex"));
        let mut view = BTreeMap::new();
        for (k, v) in keys.into_iter().zip(values) {
            // The registry's injected outage answers this reader too: read again.
            if [&k, &v].iter().any(|x| x.get("error").and_then(Value::as_str).is_some_and(|e| e.contains("HTTP 503"))) {
                return None;
            }
            assert!(k.get("error").is_none() && v.get("error").is_none(), "fastavro could not decode the output: {k} {v}");
            view.insert(k.to_string(), without_nulls(v));
        }
        Some(view)
    }

    /// Waits until the output converges to the JSON pipeline's view.
    fn converge(&self, p: &Processor) {
        let expected = self.expected();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let actual = self.actual();
            if actual.as_ref() == Some(&expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Avro output did not converge to the JSON pipeline's view\nexpected {expected:#?}\nactual {actual:#?}\nlog:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

fn row(id: i64, name: &str, balance: &str, visits: i64) -> Option<Value> {
    Some(json!({"id": id, "name": name, "balance": balance, "visits": visits}))
}

#[test]
fn avro_sources_to_avro_output_match_the_json_pipeline() {
    let mut s = Pipeline::new();
    // Phase 1: inserts in both regions, concurrent updates, deletes.
    let eu: Vec<_> = (1..=9)
        .flat_map(|id| {
            [
                (id, "c", None, row(id, &format!("eu-{id}"), "10.50", 1), id),
                (id, "u", row(id, &format!("eu-{id}"), "10.50", 1), row(id, &format!("eu-{id}b"), "-0.07", 2), 100 + id),
            ]
        })
        .collect();
    let us: Vec<_> = (1..=9)
        .map(|id| {
            if id % 3 == 0 {
                (id, "d", row(id, "x", "1.00", 0), None, 150 + id)
            } else {
                (id, "u", None, row(id, &format!("us-{id}"), "123456.78", 7), if id % 2 == 0 { 50 } else { 200 } + id)
            }
        })
        .collect();
    s.send(0, COLUMNS, &eu);
    s.send(1, COLUMNS, &us);
    let poison = s.send_unknown_schema(0, 4);
    let config = s.dir.path().join("tributary.toml");
    std::fs::write(&config, s.config_text(true)).unwrap();
    let p = Processor::start(&config, &s.dir.path().join("run.log"));
    s.converge(&p);

    let (status, v1) = latest(&s.registry, &format!("{}-value", s.output));
    assert_eq!(status, 200, "{v1}");
    let (status, key) = latest(&s.registry, &format!("{}-key", s.output));
    assert_eq!(status, 200, "{key}");
    let key_schema: Value = serde_json::from_str(key["schema"].as_str().unwrap()).unwrap();
    assert_eq!(key_schema["fields"], json!([{"name": "id", "type": "int"}]));

    // Phase 2: us adds a column while the registry fails for a while; the
    // new schema id cannot be fetched until it recovers.
    // The fault is for the new schema's id only, so only the processor,
    // which must fetch it, meets it.
    let v2 = s.schemas(1, COLUMNS_V2);
    let v2_id = s.registry.register(&format!("{}-value", s.topics[1]), &v2["value"].to_string());
    s.registry.inject_fault(503, 6, &format!("/schemas/ids/{v2_id}"));
    let us2: Vec<_> = (1..=4)
        .map(|id| {
            let mut r = row(id, &format!("us-{id}-v2"), "5.50", 9).unwrap();
            r["email"] = json!(format!("{id}@us.example"));
            (id, "u", None, Some(r), 400 + id)
        })
        .collect();
    s.send(1, COLUMNS_V2, &us2);
    s.converge(&p);
    let log = p.log_text();
    assert!(log.contains("pausing, then retrying"), "the registry outage paused processing:\n{log}");
    let addr = admin_addr(&p);
    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l.starts_with("tributary_schema_registry_errors_total{operation=\"decode\"}")), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("tributary_dead_letters_total") && l.contains("reason=\"unknown_schema\"")),
        "{metrics}"
    );
    // The state query finds an Avro-keyed entity (its partition cannot be
    // computed from the key text, so every owned task is searched).
    let (status, body) = http_get(&addr, "/state/%7B%22id%22%3A1%7D");
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["row"]["email"], "1@us.example", "{state}");
    assert_eq!(state["partition"], 1);

    let (_, v2) = latest(&s.registry, &format!("{}-value", s.output));
    assert!(v2["version"].as_i64() > v1["version"].as_i64(), "a new output schema version: {v1} → {v2}");
    let v2_schema: Value = serde_json::from_str(v2["schema"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = v2_schema["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["id", "name", "balance", "visits", "email"]);

    // Exactly one dead letter: the unknown schema id, as an Avro envelope
    // holding the raw bytes. The registry outage dead-lettered nothing.
    let dlq = read_topic(&format!("{}-dlq", s.group), true);
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    let envelope =
        fastavro(&["decode", "--registry", &s.registry.url], &[json!({"hex": dlq[0]["payload_hex"]}).to_string()]).remove(0);
    assert_eq!(envelope["reason"], "unknown_schema", "{envelope}");
    let error = envelope["error"].as_str().unwrap();
    assert!(error.contains("unknown schema id 1000000") && error.contains(&format!("topic {}", s.topics[0])), "{error}");
    assert_eq!(envelope["topic"], s.topics[0]);
    let raw = base64_decode(envelope["value"].as_str().unwrap());
    assert_eq!(raw, poison, "the raw value is kept byte for byte");

    // The changelog reads with standard Avro tooling and the .avsc.
    let changelog = read_topic(&format!("{}-state-changelog", s.group), true);
    assert!(!changelog.is_empty());
    let lines: Vec<String> = changelog.iter().map(|r| json!({"hex": r["payload_hex"]}).to_string()).collect();
    let schema = common::root().join("schemas/changelog-state.avsc");
    for state in fastavro(&["read-single-object", "--schema", schema.to_str().unwrap()], &lines) {
        assert!(state.get("error").is_none(), "{state}");
        assert!(state["versions"].as_array().is_some_and(|v| !v.is_empty()), "{state}");
    }
    assert!(p.stop().success());

    // `tributary sink` reads the Avro output into SQLite.
    let db = s.dir.path().join("customers.db");
    let sink_config = s.dir.path().join("sink.toml");
    let sink_section = format!(
        "\n[sink]\ntarget = \"sqlite\"\nurl = \"{}\"\ntable = \"customers\"\ncolumns = [\"id bigint\", \"name text\", \"balance text\", \"visits bigint\", \"email text\"]\nkey_columns = [\"id\"]\n",
        db.display()
    );
    std::fs::write(&sink_config, s.config_text(true).replacen("[[sources]]", &format!("{sink_section}\n[[sources]]"), 1))
        .unwrap();
    let sink = Processor::start_with(&sink_config, &s.dir.path().join("sink.log"), "sink");
    let expected: BTreeMap<i64, Value> = s
        .expected()
        .into_iter()
        .filter(|(_, row)| !row.is_null())
        .map(|(k, row)| (serde_json::from_str::<Value>(&k).unwrap()["id"].as_i64().unwrap(), row))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sqlite_rows(&db);
        if rows == expected {
            break;
        }
        assert!(Instant::now() < deadline, "sink table {rows:#?}\nexpected {expected:#?}\nlog:\n{}", sink.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(sink.stop().success());
}

/// The sink's table, rows as JSON without nulls.
fn sqlite_rows(path: &std::path::Path) -> BTreeMap<i64, Value> {
    let Ok(conn) = rusqlite::Connection::open(path) else { return BTreeMap::new() };
    let Ok(mut stmt) = conn.prepare("SELECT id, name, balance, visits, email FROM customers") else { return BTreeMap::new() };
    let rows = stmt
        .query_map([], |r| {
            let id: i64 = r.get(0)?;
            let row = json!({"id": id, "name": r.get::<_, Option<String>>(1)?, "balance": r.get::<_, Option<String>>(2)?,
                "visits": r.get::<_, Option<i64>>(3)?, "email": r.get::<_, Option<String>>(4)?});
            Ok((id, without_nulls(row)))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn latest(registry: &Registry, subject: &str) -> (u16, Value) {
    registry.http("GET", &format!("/subjects/{subject}/versions/latest"), None)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        buf = (buf << 6) | ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn a_registry_down_at_start_up_is_waited_for_with_health_up() {
    let mut s = Pipeline::new();
    // Point Tributary at a port where nothing listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = s.dir.path().join("tributary.toml");
    std::fs::write(&config, s.config_text(true).replace(&s.registry.url, &format!("http://127.0.0.1:{port}"))).unwrap();
    let p = Processor::start(&config, &s.dir.path().join("run.log"));
    let addr = admin_addr(&p);
    assert_eq!(http_get(&addr, "/healthz").0, 200, "alive while waiting for the registry");
    assert_eq!(http_get(&addr, "/readyz").0, 503, "not ready while waiting");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.log_text().contains("start-up: schema registry unavailable") {
        assert!(Instant::now() < deadline, "no retry logged:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The registry comes up: Tributary goes on by itself.
    s.registry = Registry::start_on_port(port);
    s.send(0, COLUMNS, &[(1, "c", None, row(1, "eu-1", "1.00", 1), 1)]);
    s.converge(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&addr, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.stop().success());
}

/// `field-lww` with column rules and Avro output: the conflict audit records
/// are Avro and carry the per-column winners the JSON records carry, read
/// alike with the schema the registry holds (apache-avro) and with fastavro.
/// The audit subject holds the schema from before `columns` existed, so the
/// registry's BACKWARD check must accept the new one.
#[test]
fn field_lww_avro_audit_records_carry_the_column_winners() {
    let mut s = Pipeline::new();
    s.merge =
        "policy = \"field-lww\"\n[merge.columns]\nname = { rule = \"owner\", source = \"eu\" }\nvisits = { rule = \"max\" }\n"
            .to_string();
    let subject = format!("{}-conflicts-value", s.group);
    let mut old: Value = serde_json::from_str(tributary::avro::records::AUDIT_SCHEMA_JSON).unwrap();
    old["fields"].as_array_mut().unwrap().retain(|f| f["name"] != "columns");
    s.registry.register(&subject, &old.to_string());

    // Key 1: both regions insert it concurrently; us later, but eu owns
    // `name` and eu's `visits` is the larger. Key 2: eu inserts, us deletes
    // it concurrently and later, so it resolves to deleted.
    s.send(0, COLUMNS, &[(1, "c", None, row(1, "eu-1", "10.50", 5), 1), (2, "c", None, row(2, "eu-2", "1.00", 1), 1)]);
    s.send(1, COLUMNS, &[(1, "c", None, row(1, "us-1", "2.00", 3), 2), (2, "d", row(2, "x", "1.00", 0), None, 5)]);
    let config = s.dir.path().join("tributary.toml");
    std::fs::write(&config, s.config_text(true)).unwrap();
    let p = Processor::start(&config, &s.dir.path().join("run.log"));
    s.converge(&p);
    let merged = s.actual().unwrap();
    assert_eq!(merged[r#"{"id":1}"#], json!({"id": 1, "name": "eu-1", "balance": "2.00", "visits": 5}));
    let audit = wait_for_records(&format!("{}-conflicts", s.group), 2, Duration::from_secs(30));
    assert!(p.stop().success());
    assert_eq!(audit.len(), 2, "{audit:#?}");

    // The processor registered the new audit schema as a second version.
    let (status, latest) = latest(&s.registry, &subject);
    assert_eq!((status, latest["version"].as_i64()), (200, Some(2)), "{latest}");
    let registered = apache_avro::Schema::parse_str(latest["schema"].as_str().unwrap()).unwrap();
    assert_eq!(registered, *tributary::avro::records::audit_schema());

    let hex: Vec<String> = audit.iter().map(|r| json!({"hex": r["payload_hex"]}).to_string()).collect();
    let by_fastavro = fastavro(&["decode", "--registry", &s.registry.url], &hex);
    let by_key = |records: Vec<Value>| -> BTreeMap<String, Value> {
        records.into_iter().map(|r| (r["key"].as_str().unwrap_or_else(|| panic!("no key: {r}")).to_string(), r)).collect()
    };
    let by_fastavro = by_key(by_fastavro);
    let by_registered = by_key(audit.iter().map(|r| decode_with_registered_schema(&s.registry, &r["payload_hex"])).collect());
    // The two agree on every field but the versions' timestamp-millis,
    // which fastavro reads as a datetime.
    let without_ts = |records: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        let mut records = records.clone();
        for r in records.values_mut() {
            for v in r["versions"].as_array_mut().unwrap() {
                v.as_object_mut().unwrap().remove("ts");
            }
        }
        records
    };
    assert_eq!(without_ts(&by_registered), without_ts(&by_fastavro), "apache-avro and fastavro read the same records");

    let winner = |column: &str, rule: &str, source: &str, vv: Value, why: &str| json!({"column": column, "rule": rule, "source": source, "vv": vv, "why": why});
    let (eu, us) = (json!({"eu": 1}), json!({"us": 1}));
    let key1 = &by_fastavro[r#"{"id":1}"#];
    assert_eq!(
        key1["columns"],
        json!([
            winner("balance", "lww", "us", us.clone(), "latest write (lww order)"),
            winner("id", "lww", "us", us.clone(), "latest write (lww order)"),
            winner("name", "owner", "eu", eu.clone(), "the owner's latest write"),
            winner("visits", "max", "eu", eu, "largest value written"),
        ]),
        "{key1}"
    );
    assert_eq!(
        (key1["policy"].as_str(), key1["winner"].is_null(), key1["deleted"].as_bool()),
        (Some("field-lww"), true, Some(false))
    );
    let key2 = &by_fastavro[r#"{"id":2}"#];
    assert_eq!((key2["deleted"].as_bool(), &key2["columns"]), (Some(true), &Value::Null), "deleted: no column winners: {key2}");
}

/// Decodes a Confluent-framed record with apache-avro and the writer schema
/// the registry holds for its id, as JSON.
fn decode_with_registered_schema(registry: &Registry, hex: &Value) -> Value {
    let bytes = unhex(hex.as_str().unwrap());
    assert_eq!(bytes[0], 0, "Confluent framing");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
    let (status, answer) = registry.http("GET", &format!("/schemas/ids/{id}"), None);
    assert_eq!(status, 200, "{answer}");
    let schema = apache_avro::Schema::parse_str(answer["schema"].as_str().unwrap()).unwrap();
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema).build().unwrap();
    let mut body = &bytes[5..];
    let value = reader.read_value(&mut body).unwrap();
    assert!(body.is_empty(), "{} bytes left after the datum", body.len());
    Value::try_from(value).unwrap()
}
