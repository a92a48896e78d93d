//! A throw-away Kafka broker for the benches and the integration tests
//! (`tests/common/kafka.rs`) that need one when `TRIBUTARY_TEST_BOOTSTRAP`
//! names none: started and stopped with the project's own
//! `scripts/kafka/kafka` (included by `#[path]`, so each bench and test
//! binary compiles its own copy of these two functions).

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka/kafka")
}

/// Starts a broker; returns its directory and its bootstrap address.
pub fn start() -> (String, String) {
    let out = Command::new(script()).arg("start").stderr(Stdio::inherit()).output().expect("scripts/kafka/kafka runs");
    assert!(out.status.success(), "could not start a Kafka broker");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    (lines[0].to_string(), lines.last().expect("a bootstrap line").trim().to_string())
}

/// Stops the broker in `dir` and removes the directory.
pub fn stop(dir: &str) {
    let _ = Command::new(script()).args(["stop", dir, "--rm"]).stdout(Stdio::null()).status();
}
