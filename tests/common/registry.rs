//! A Schema Registry for the tests, and fastavro to cross-check Avro.
//!
//! No real Confluent Schema Registry can run where the tests run, so
//! [`Registry`] starts `tests/registry/standin.py`, a stand-in serving the
//! same REST calls (see its header for what it simplifies). [`fastavro`] runs
//! `tests/avro/fastavro_tool.py`, an independent Avro implementation; it
//! needs `pip install fastavro` and fails the test when that is missing.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
    /// it requires client certificates signed by it (mutual TLS). The
    /// harness's own HTTP helpers speak plain HTTP only: talk to this one
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
    /// credentials the stand-in was started with.
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = match &self.auth {
            Some((u, p)) => format!("Authorization: Basic {}\r\n", base64(format!("{u}:{p}").as_bytes())),
            None => String::new(),
        };
        http(&self.url, method, path, body, &auth)
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

/// A minimal HTTP/1.1 call (Connection: close) to `base` (`http://host:port`).
fn http(base: &str, method: &str, path: &str, body: Option<&Value>, extra_headers: &str) -> (u16, Value) {
    let host = base.strip_prefix("http://").expect("an http:// URL").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Accept: application/vnd.schemaregistry.v1+json\r\n\
         Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {path}: bad answer {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status in {head:?}"));
    let value = if payload.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(payload).unwrap_or_else(|e| panic!("{method} {path}: answer not JSON ({e}): {payload:?}"))
    };
    (status, value)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
