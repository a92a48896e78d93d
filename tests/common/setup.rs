//! One test's world for `tributary run` on a broker: a fresh group, three
//! co-partitioned source topics, the output and changelog topics, a
//! directory for configs, state and logs, and what `tributary replay` makes
//! of the sources (the reference every run is compared with).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use tributary::config::Config;

use super::kafka::{self, create_topic_at, read_topic_at, unique, Rec};

/// Partitions of every topic a [`Setup`] creates.
pub const PARTITIONS: i32 = 3;
/// Source names; source `i` reads `topics[i]`, with priority = name length.
pub const SOURCES: [&str; 3] = ["eu", "us", "ap"];
/// Compacted as Tributary requires, with compaction held back for an hour so
/// that a test can count every record that was written.
pub const HELD_BACK: [(&str, &str); 2] = [("cleanup.policy", "compact"), ("min.compaction.lag.ms", "3600000")];

/// What a test adds to the configuration [`Setup::config_text`] writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conf<'a> {
    /// Lines under `[merge]`, after `policy = "lww"`.
    pub merge: &'a str,
    /// Lines under `[runtime]`, after `commit_interval` and `state_dir`.
    pub runtime: &'a str,
    /// Tables after the others, e.g. `[kafka.properties]`.
    pub tables: &'a str,
}

/// A test's group, topics and directory. On a panic the processes' logs
/// (`*.log` in the directory) are printed, unless the directory is
/// [kept](Setup::keep).
pub struct Setup {
    /// The broker the topics are on.
    pub bootstrap: String,
    /// Commit times start here: real epoch milliseconds, as Debezium sends
    /// (the broker applies retention and compaction lag to record times).
    pub epoch_ms: i64,
    /// Configs, state directories and logs.
    pub dir: tempfile::TempDir,
    /// The group id; every topic name starts with it.
    pub group: String,
    /// `{group}.merged`, created with [`HELD_BACK`].
    pub output: String,
    /// `{group}-state-changelog`.
    pub changelog: String,
    /// `{group}.{source}.customers`, one per [`SOURCES`] entry.
    pub topics: Vec<String>,
    kept: bool,
}

impl Setup {
    /// On the shared broker; output and changelog with [`HELD_BACK`].
    pub fn new(name: &str) -> Setup {
        Setup::with_output_config(name, &[])
    }

    /// [`new`](Setup::new), the output topic created with `extra` configs too.
    pub fn with_output_config(name: &str, extra: &[(&str, &str)]) -> Setup {
        Setup::on(&kafka::bootstrap(), name, extra, &HELD_BACK)
    }

    /// [`new`](Setup::new), the changelog created with `changelog` configs.
    pub fn with_changelog(name: &str, changelog: &[(&str, &str)]) -> Setup {
        Setup::on(&kafka::bootstrap(), name, &[], changelog)
    }

    /// Creates the topics of a fresh group named after `name` on the broker
    /// at `bootstrap`: the sources, the output ([`HELD_BACK`] and
    /// `output_extra`) and the changelog (`changelog` configs).
    pub fn on(bootstrap: &str, name: &str, output_extra: &[(&str, &str)], changelog: &[(&str, &str)]) -> Setup {
        let group = unique(name);
        let topics: Vec<String> = SOURCES.iter().map(|s| format!("{group}.{s}.customers")).collect();
        for t in &topics {
            create_topic_at(bootstrap, t, PARTITIONS, &[]);
        }
        let output = format!("{group}.merged");
        create_topic_at(bootstrap, &output, PARTITIONS, &[&HELD_BACK[..], output_extra].concat());
        let changelog_topic = format!("{group}-state-changelog");
        create_topic_at(bootstrap, &changelog_topic, PARTITIONS, changelog);
        let epoch_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        Setup {
            bootstrap: bootstrap.to_string(),
            epoch_ms,
            dir: tempfile::tempdir().unwrap(),
            group,
            output,
            changelog: changelog_topic,
            topics,
            kept: false,
        }
    }

    /// The configuration of an instance whose state lives in `state` (one
    /// per instance): every source, `lww`, 100 ms cycles, an admin port
    /// with [`kafka::ADMIN_TOKEN`].
    pub fn config_text(&self, state: &str, conf: &Conf) -> String {
        let mut text = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\n\n[output]\ntopic = \"{}\"\n\n[merge]\npolicy = \"lww\"\n{}\n\n[runtime]\ncommit_interval = \"100ms\"\nstate_dir = \"{}\"\n{}\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{}\"\n\n{}\n",
            self.bootstrap,
            self.group,
            self.output,
            conf.merge,
            self.dir.path().join(state).display(),
            conf.runtime,
            kafka::ADMIN_TOKEN,
            conf.tables,
        );
        for (s, t) in SOURCES.iter().zip(&self.topics) {
            text += &format!("\n[[sources]]\nname = \"{s}\"\ntopic = \"{t}\"\npriority = {}\n", s.len());
        }
        text
    }

    /// Writes [`config_text`](Setup::config_text) to `{state}.toml`.
    pub fn config(&self, state: &str) -> PathBuf {
        self.config_with(state, &Conf::default())
    }

    /// [`config`](Setup::config) with the test's additions.
    pub fn config_with(&self, state: &str, conf: &Conf) -> PathBuf {
        let p = self.dir.path().join(format!("{state}.toml"));
        std::fs::write(&p, self.config_text(state, conf)).unwrap();
        p
    }

    /// `{name}.log` in the directory: printed if the test panics.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Every record of the source topics, one kcat `-J` line each.
    pub fn dump(&self) -> String {
        let mut dump = String::new();
        for t in &self.topics {
            for r in read_topic_at(&self.bootstrap, t, false) {
                dump += &r.to_string();
                dump.push('\n');
            }
        }
        dump
    }

    /// What `tributary replay` makes of everything in the source topics.
    pub fn replay(&self) -> Vec<Value> {
        self.replay_with(&Conf::default())
    }

    /// [`replay`](Setup::replay) with the test's additions (its merge settings).
    pub fn replay_with(&self, conf: &Conf) -> Vec<Value> {
        self.replay_of(&self.dump(), conf)
    }

    /// What `tributary replay` makes of `dump`.
    pub fn replay_of(&self, dump: &str, conf: &Conf) -> Vec<Value> {
        let config = Config::parse(&self.config_text("replay", conf), "test", std::iter::empty()).unwrap();
        let (mut out, mut log) = (Vec::new(), Vec::new());
        tributary::replay::replay(&config, dump.as_bytes(), "dump", &mut out, None, &mut log).unwrap();
        super::json_lines(&String::from_utf8(out).unwrap())
    }

    /// A Debezium record of source `source` for key `{"id": id}`, in
    /// `partition` or where murmur2 (Debezium's Java producer) puts the key.
    pub fn rec(&self, source: usize, id: u64, partition: Option<i32>, payload: Value) -> Rec {
        let key = json!({ "id": id }).to_string();
        let partition = partition.unwrap_or_else(|| tributary::kafka::murmur2_partition(key.as_bytes(), PARTITIONS));
        Rec { topic: self.topics[source].clone(), partition, key: Some(key), value: Some(payload.to_string()) }
    }

    /// Keeps the directory after the test (for a failing test to leave its
    /// evidence); returns its path.
    pub fn keep(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.kept = true;
        self.dir.path().to_path_buf()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() || self.kept {
            return;
        }
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                print_tail(&entry.path(), 400);
            }
        }
    }
}

fn print_tail(path: &Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- {} (last {n} of {} lines) ---", path.display(), lines.len());
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{l}");
    }
}

/// Whether `topic` exists (with partitions) on the shared broker.
pub fn topic_exists(topic: &str) -> bool {
    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka::bootstrap()).create().expect("metadata client");
    let md = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}
