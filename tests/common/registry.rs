//! A Schema Registry for the tests, and fastavro to cross-check Avro.
//!
//! No real Confluent Schema Registry can run where the tests run, so
//! [`Registry`] starts `tests/registry/standin.py`, a stand-in serving the
//! same REST calls (see its header for what it simplifies). [`fastavro`] runs
//! `tests/avro/fastavro_tool.py`, an independent Avro implementation; it
//! needs `pip install fastavro` and fails the test when that is missing.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use super::root;

const STANDIN: &str = "tests/registry/standin.py";
const FASTAVRO_TOOL: &str = "tests/avro/fastavro_tool.py";

/// A running schema registry stand-in; stopped when dropped.
pub struct Registry {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    child: Child,
    auth: Option<(String, String)>,
    log: tempfile::NamedTempFile,
}

impl Registry {
    /// Starts a stand-in without authentication.
    pub fn start() -> Registry {
        Registry::spawn(None)
    }

    /// Starts a stand-in that answers 401 to requests without these basic-auth credentials.
    pub fn start_with_auth(user: &str, pass: &str) -> Registry {
        Registry::spawn(Some((user.to_string(), pass.to_string())))
    }

    /// Starts a stand-in serving HTTPS with `cert`/`key`; with `client_ca`,
    /// it requires client certificates signed by it (mutual TLS).
    /// [`Registry::http`] does not trust that certificate: talk to this one
    /// through the product's client.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, client_ca: Option<&std::path::Path>) -> Registry {
        let mut extra = vec!["--tls-cert".to_string(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()];
        if let Some(ca) = client_ca {
            extra.extend(["--tls-client-ca".to_string(), ca.display().to_string()]);
        }
        Registry::spawn_with(None, &extra)
    }

    /// Starts a stand-in on a given port (a test that starts Tributary
    /// before its registry).
    pub fn start_on_port(port: u16) -> Registry {
        Registry::spawn_with(None, &["--port".to_string(), port.to_string()])
    }

    fn spawn(auth: Option<(String, String)>) -> Registry {
        Registry::spawn_with(auth, &[])
    }

    fn spawn_with(auth: Option<(String, String)>, extra: &[String]) -> Registry {
        let log = tempfile::NamedTempFile::new().expect("a log file for the registry stand-in");
        let mut cmd = Command::new("python3");
        cmd.arg(root().join(STANDIN)).args(["--port", "0", "--watch-stdin"]).args(extra);
        if let Some((u, p)) = &auth {
            cmd.arg("--basic-auth").arg(format!("{u}:{p}"));
        }
        // stdin stays open while this Registry lives: the stand-in exits when
        // it closes, so it does not outlive a test process that was killed.
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log.reopen().expect("reopen the log"));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run python3 {STANDIN}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{STANDIN} did not say where it listens within 20 s; its log:\n{}", read_log(&log));
            }
        };
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{STANDIN} did not start (first line {line:?}); its log:\n{}", read_log(&log));
        };
        Registry { url: url.to_string(), child, auth, log }
    }

    /// What the stand-in logged (one line per request).
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// One HTTP call: (status, JSON body; Null when empty). Sends the
    /// credentials the stand-in was started with. Callable from a
    /// `#[tokio::test]` too (see [`super::kafka::off_runtime`]).
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let what = format!("{method} {path}");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (status, text) = super::kafka::off_runtime(|| {
            const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
            let mut request = super::kafka::http_client()
                .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
                .header(reqwest::header::ACCEPT, MEDIA_TYPE)
                .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE);
            if let Some((user, pass)) = &self.auth {
                request = request.basic_auth(user, Some(pass));
            }
            if let Some(body) = body {
                request = request.body(body.to_string());
            }
            let response = request.send().unwrap_or_else(|e| panic!("{what} on {}: {e}", self.url));
            let status = response.status().as_u16();
            (status, response.text().unwrap_or_else(|e| panic!("{what}: body: {e}")))
        });
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: answer not JSON ({e}): {text:?}"))
        };
        (status, value)
    }

    /// Makes the next `count` requests whose path starts with `path_prefix`
    /// answer `status` (with error_code 50003 for a 5xx).
    pub fn inject_fault(&self, status: u16, count: u32, path_prefix: &str) {
        let fault = json!({"status": status, "count": count, "path_prefix": path_prefix});
        let (st, answer) = self.http("POST", "/__standin/faults", Some(&fault));
        assert_eq!(st, 200, "injecting a fault: {answer}");
    }

    /// Every API request the stand-in saw, as "METHOD path?query", in order.
    pub fn requests(&self) -> Vec<String> {
        let (st, answer) = self.http("GET", "/__standin/requests", None);
        assert_eq!(st, 200, "reading the request log: {answer}");
        answer.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }

    /// Registers an Avro schema under `subject`; returns its id (panics on refusal).
    pub fn register(&self, subject: &str, schema_json: &str) -> u32 {
        let (st, answer) = self.try_register(subject, schema_json);
        assert_eq!(st, 200, "registering under {subject}: {answer}");
        answer["id"].as_u64().expect("an id") as u32
    }

    /// Registers an Avro schema under `subject`: (status, answer).
    pub fn try_register(&self, subject: &str, schema_json: &str) -> (u16, Value) {
        let body = json!({"schema": schema_json, "schemaType": "AVRO"});
        self.http("POST", &format!("/subjects/{}/versions", subject.replace('/', "%2F")), Some(&body))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(log: &tempfile::NamedTempFile) -> String {
    std::fs::read_to_string(log.path()).unwrap_or_default()
}

/// Runs `python3 tests/avro/fastavro_tool.py ARGS` with `input_lines` on
/// stdin; returns its JSON output lines. Panics with its stderr when it
/// fails (it says `pip install fastavro` when fastavro is missing).
pub fn fastavro(args: &[&str], input_lines: &[String]) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg(root().join(FASTAVRO_TOOL))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {FASTAVRO_TOOL}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input: String = input_lines.iter().map(|l| format!("{l}\n")).collect();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("fastavro_tool.py runs");
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{FASTAVRO_TOOL} {} failed ({}):\n{stderr}", args.join(" "), out.status);
    super::json_lines(&String::from_utf8_lossy(&out.stdout))
}
