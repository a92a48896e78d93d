//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub mod kafka;
pub mod registry;
pub mod setup;
pub mod views;

/// The crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `tributary` binary built for this test run, as a user would run it.
pub fn tributary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tributary"));
    // Tests choose their overrides explicitly.
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIBUTARY_") && k.contains("__") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a command and returns its output, panicking with stderr on spawn failure.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the tributary binary runs")
}

/// Parses JSON lines.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// kcat-shaped output records → the last record per key (what a compacted topic keeps).
pub fn last_per_key(records: &[Value]) -> BTreeMap<String, Value> {
    records.iter().map(|r| (r["key"].as_str().expect("a key").to_string(), r.clone())).collect()
}

/// A header's value from a kcat-shaped record.
pub fn header(record: &Value, name: &str) -> Option<String> {
    let h = record["headers"].as_array()?;
    h.chunks(2).find(|kv| kv[0] == name).and_then(|kv| kv[1].as_str().map(String::from))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p
}
