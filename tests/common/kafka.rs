//! A real Apache Kafka broker for integration tests, and small clients.
//!
//! `TRIBUTARY_TEST_BOOTSTRAP` points the tests at a running broker
//! (`scripts/test` and `.ci/run` start one with `scripts/kafka/kafka`).
//! Without it, the first test that needs a broker starts one with the same
//! script and leaves it running for the rest of the test binary; it prints
//! the directory to stop it with `scripts/kafka/kafka stop DIR --rm`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::root;

/// The broker's bootstrap address.
pub fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            if let Ok(b) = std::env::var("TRIBUTARY_TEST_BOOTSTRAP") {
                return b;
            }
            let (dir, bootstrap) = start_broker();
            eprintln!("started a Kafka broker in {dir}; stop it with scripts/kafka/kafka stop {dir} --rm");
            bootstrap
        })
        .clone()
}

/// Starting and stopping a throw-away broker, shared with the benches.
#[path = "../../benches/support/broker.rs"]
mod broker;

/// Starts a broker with `scripts/kafka/kafka start`: its directory and bootstrap address.
fn start_broker() -> (String, String) {
    broker::start()
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Creates a topic.
pub fn create_topic(name: &str, partitions: i32, config: &[(&str, &str)]) {
    create_topic_at(&bootstrap(), name, partitions, config);
}

/// [`create_topic`] on the broker at `bootstrap`.
pub fn create_topic_at(bootstrap: &str, name: &str, partitions: i32, config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    let res = rt().block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create topics");
    for r in res {
        r.expect("topic created");
    }
    // Creation is acknowledged by the controller before every broker's
    // metadata shows the topic; wait until it does, so the process under
    // test sees what the test set up.
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("metadata client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let visible = probe.fetch_metadata(Some(name), Duration::from_secs(5)).ok().is_some_and(|md| {
            md.topics().iter().any(|t| t.name() == name && t.error().is_none() && t.partitions().len() == partitions as usize)
        });
        if visible {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} not visible in metadata after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Rec {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Key text.
    pub key: Option<String>,
    /// Value text (None: tombstone).
    pub value: Option<String>,
}

/// One record to produce, as bytes (Avro).
#[derive(Debug, Clone)]
pub struct BinRec {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (None: tombstone).
    pub value: Option<Vec<u8>>,
}

/// Produces records in order and waits until all are acknowledged.
pub fn produce(records: &[Rec]) {
    let bin: Vec<BinRec> = records
        .iter()
        .map(|r| BinRec {
            topic: r.topic.clone(),
            partition: r.partition,
            key: r.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value: r.value.as_ref().map(|v| v.as_bytes().to_vec()),
        })
        .collect();
    produce_bin(&bin);
}

/// [`produce`] for byte records.
pub fn produce_bin(records: &[BinRec]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for r in records {
        let mut rec = BaseRecord::to(&r.topic).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = rec;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Reads every record of `topic` (all partitions, from the beginning to the
/// end) in kcat `-J` shape, plus `key_hex` and `payload_hex` (binary-safe).
/// `committed` selects `read_committed`.
pub fn read_topic(topic: &str, committed: bool) -> Vec<Value> {
    read_topic_at(&bootstrap(), topic, committed)
}

/// [`read_topic`] on the broker at `bootstrap`.
pub fn read_topic_at(bootstrap: &str, topic: &str, committed: bool) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", if committed { "read_committed" } else { "read_uncommitted" })
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("group.id", unique("reader"))
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..partitions {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if hi > lo {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
            remaining += 1;
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => remaining -= 1,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let mut headers = Vec::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.push(Value::from(hd.key));
                        headers.push(hd.value.map_or(Value::Null, |v| Value::from(String::from_utf8_lossy(v).to_string())));
                    }
                }
                out.push(serde_json::json!({
                    "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                    "tstype": "create", "ts": m.timestamp().to_millis(), "broker": 0,
                    "headers": headers,
                    "key": m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    "payload": m.payload().map(|v| String::from_utf8_lossy(v).to_string()),
                    "key_hex": m.key().map(hex),
                    "payload_hex": m.payload().map(hex),
                }));
            }
        }
    }
    out
}

/// Waits until `topic` holds at least `n` committed records; returns them.
pub fn wait_for_records(topic: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_topic(topic, true);
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A running `tributary run` process whose stderr goes to a file.
pub struct Processor {
    /// The child process.
    pub child: Child,
    /// Its log file.
    pub log: std::path::PathBuf,
}

impl Processor {
    /// Starts `tributary run -c CONFIG`, logging to `LOG`.
    pub fn start(config: &Path, log: &Path) -> Processor {
        Self::start_with(config, log, "run")
    }

    /// Starts `tributary COMMAND -c CONFIG` (`run`, `sink`), logging to `LOG`.
    pub fn start_with(config: &Path, log: &Path, command: &str) -> Processor {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = super::tributary()
            .args([command, "-c"])
            .arg(config)
            .env("RUST_LOG", std::env::var("TEST_PROCESSOR_LOG").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("tributary run starts");
        Processor { child, log: log.to_path_buf() }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "tributary did not stop on SIGTERM; log: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, self.log_text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tributary did not exit; log: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The compacted view of kcat-shaped records: key → (payload, headers).
pub fn compacted(records: &[Value]) -> BTreeMap<String, (Value, Value)> {
    records.iter().map(|r| (r["key"].as_str().unwrap().to_string(), (r["payload"].clone(), r["headers"].clone()))).collect()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of lower-case or upper-case hex text.
pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

/// The tests' HTTP client (the benches use the same crate): no proxy, since
/// every server the tests talk to is local, and a deadline above the state
/// query's 3 s wait.
pub fn http_client() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().expect("HTTP client")
    })
}

/// Runs `f` on a thread of its own: `reqwest::blocking` panics when it is
/// called from inside a tokio runtime (a `#[tokio::test]`), and a plain
/// thread is outside every runtime. A panic in `f` fails the caller as it is.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// The admin token of the tests' configurations (`[admin] token`), which
/// `/state/{key}` and pause/resume require.
pub const ADMIN_TOKEN: &str = "tributary-tests-admin-token-0001";

/// `GET path` on the admin port with `Authorization: Bearer` [`ADMIN_TOKEN`]
/// (the open endpoints ignore it); returns (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let response = http_client()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_else(|e| panic!("GET {path} on {addr}: body: {e}")))
}

/// The sum of every series of metric `name` (in Prometheus' text format)
/// whose line holds each of `labels` (e.g. `source="us"`); `None` when no
/// series matches. The one reader of `/metrics` the tests share.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The processor's `/metrics` text.
pub fn metrics_of(p: &Processor) -> String {
    let (status, text) = http_get(&admin_addr(p), "/metrics");
    assert_eq!(status, 200, "GET /metrics: {text}");
    text
}

/// The admin address from the processor's log line.
pub fn admin_addr(p: &Processor) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let log = p.log_text().replace("\u{1b}", "");
        if let Some(line) = log.lines().find(|l| l.contains("admin HTTP listening")) {
            let at = line.find("addr=").expect("addr field") + "addr=".len();
            let rest = &line[at..];
            let rest = rest.trim_start_matches(|c: char| !c.is_ascii_digit());
            return rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
        }
        assert!(std::time::Instant::now() < deadline, "no admin address in the log");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A broker that one test owns, for tests that restart it (the shared broker
/// of [`bootstrap`] serves other tests meanwhile). Started with
/// `scripts/kafka/kafka start`; stopped and its directory removed on drop,
/// also when the test panics.
pub struct OwnedBroker {
    dir: std::path::PathBuf,
    bootstrap: String,
    /// The broker JVM after a [`restart`](OwnedBroker::restart): a child of
    /// this process, reaped on drop.
    relaunched: Option<Child>,
}

impl OwnedBroker {
    /// Starts a broker in a new directory and waits until it answers.
    pub fn start() -> OwnedBroker {
        let (dir, bootstrap) = start_broker();
        OwnedBroker { dir: dir.into(), bootstrap, relaunched: None }
    }

    /// `127.0.0.1:PORT`, the same across restarts.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The broker's directory (`logs/` holds its logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the broker cleanly (SIGTERM, as `scripts/kafka/kafka stop`),
    /// leaves it down for `down`, and starts it again on the same data and
    /// ports; returns once it answers. `start DIR` cannot do this: it formats a new, empty data
    /// directory on newly picked ports. So the broker JVM is launched again
    /// through `scripts/kafka/kafka run` on the same `server.properties`,
    /// with the broker's JVM options, and its pid goes to `DIR/kafka.pid`
    /// so that `stop` and `status` still find it.
    pub fn restart(&mut self, down: Duration) {
        self.stop_jvm();
        std::thread::sleep(down);
        let out = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("logs/kafka.out")).unwrap();
        let mut cmd = Command::new(root().join("scripts/kafka/kafka"));
        cmd.args(["run", "kafka.Kafka"])
            .arg(self.dir.join("server.properties"))
            .env(
                "KAFKA_TOOL_OPTS",
                "-Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true",
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Its own process group, like `start` (setsid): a Ctrl-C of the test
        // run does not reach it, the drop stops it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("scripts/kafka/kafka run starts");
        std::fs::write(self.dir.join("kafka.pid"), child.id().to_string()).unwrap();
        self.relaunched = Some(child);
        self.wait_ready(Duration::from_secs(120));
    }

    /// `scripts/kafka/kafka stop DIR`, then reaps a relaunched JVM.
    fn stop_jvm(&mut self) {
        let status = Command::new(root().join("scripts/kafka/kafka"))
            .arg("stop")
            .arg(&self.dir)
            .stderr(Stdio::inherit())
            .status()
            .expect("scripts/kafka/kafka runs");
        assert!(status.success(), "could not stop the broker in {}", self.dir.display());
        if let Some(mut child) = self.relaunched.take() {
            let _ = child.wait();
        }
    }

    fn wait_ready(&mut self, within: Duration) {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .expect("metadata client");
        let deadline = Instant::now() + within;
        loop {
            if client.fetch_metadata(None, Duration::from_secs(2)).is_ok_and(|md| !md.brokers().is_empty()) {
                return;
            }
            if let Some(status) = self.relaunched.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the restarted broker exited ({status}); see {}/logs/kafka.out", self.dir.display());
            }
            assert!(
                Instant::now() < deadline,
                "the restarted broker did not answer within {within:?}; see {}/logs",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for OwnedBroker {
    fn drop(&mut self) {
        broker::stop(&self.dir.to_string_lossy());
        if let Some(mut child) = self.relaunched.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
