//! The admin port served for real on a loopback port and asked with an HTTP
//! client: routes, status codes, the token, pause and resume, and the
//! connection limits.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::http::HeaderValue;

use super::auth::TOKEN_OFF;
use super::*;

const TOKEN: &str = "s3cret-admin-token-0123456789";

#[test]
fn the_token_comes_from_the_environment_or_a_file_and_is_never_shown() {
    let text = "[output]\ntopic = \"o\"\n[[sources]]\nname = \"a\"\ntopic = \"t\"\n";
    let env = [("TRIBUTARY_ADMIN__TOKEN".to_string(), TOKEN.to_string())];
    let config = crate::config::Config::parse(text, "test", env).unwrap();
    assert_eq!(config.admin.resolve_token().unwrap().as_deref(), Some(TOKEN));
    let dump = config.to_redacted_toml();
    assert!(!dump.contains(TOKEN) && dump.contains("token = \"<redacted>\""), "{dump}");
    assert!(!format!("{config:?}").contains(TOKEN), "nor in the configuration's Debug");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let with_file = format!("[admin]\ntoken_file = \"{}\"\n{text}", file.display());
    let config = crate::config::Config::parse(&with_file, "test", std::iter::empty()).unwrap();
    assert_eq!(config.admin.resolve_token().unwrap().as_deref(), Some(TOKEN), "the file's newline is not part of it");
    assert!(!config.to_redacted_toml().contains(TOKEN));

    std::fs::write(&file, "\n").unwrap();
    assert_eq!(config.admin.resolve_token().unwrap_err(), "admin.token_file: the token is empty");
    std::fs::remove_file(&file).unwrap();
    let missing = config.admin.resolve_token().unwrap_err();
    assert!(missing.starts_with(&format!("admin.token_file: cannot read {}: ", file.display())), "{missing}");

    let env = [("TRIBUTARY_ADMIN__TOKEN".to_string(), TOKEN.to_string())];
    let both = crate::config::Config::parse(&with_file, "test", env).unwrap_err().to_string();
    assert!(both.contains("admin.token and admin.token_file: set one, not both"), "{both}");
    let env = [("TRIBUTARY_ADMIN__TOKEN".to_string(), "short".to_string())];
    let short = crate::config::Config::parse(text, "test", env).unwrap_err().to_string();
    assert!(short.contains("admin.token: the token has 5 characters; use at least 16"), "{short}");
    let env = [("TRIBUTARY_ADMIN__TOKEN".to_string(), "with a space in the middle".to_string())];
    let spaced = crate::config::Config::parse(text, "test", env).unwrap_err().to_string();
    assert!(spaced.contains("admin.token: the token holds ' '"), "{spaced}");
    let none = crate::config::Config::parse(text, "test", std::iter::empty()).unwrap();
    assert_eq!(none.admin.resolve_token(), Ok(None));
}

fn answer(status: u16, body: &str) -> StateQuery {
    let body = body.to_string();
    Arc::new(move |_: Option<&str>, _: &str| (status, body.clone()))
}

/// The processor's side of pause and resume, kept in memory: requests
/// are applied at once unless `busy` (the processing thread restoring).
struct Switch {
    sources: Mutex<Vec<SourceStatus>>,
    ticket: AtomicU64,
    applied: AtomicU64,
    busy: AtomicBool,
}

impl Switch {
    fn new() -> Arc<Switch> {
        let source = |name: &str| SourceStatus {
            name: name.into(),
            topic: format!("db.{name}.customers"),
            paused: false,
            paused_partitions: vec![],
        };
        Arc::new(Switch {
            sources: Mutex::new(vec![source("eu"), source("us")]),
            ticket: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        })
    }
}

impl SourceSwitch for Switch {
    fn list(&self) -> Vec<SourceStatus> {
        self.sources.lock().unwrap().clone()
    }
    fn request(&self, name: &str, paused: bool) -> Option<u64> {
        let mut sources = self.sources.lock().unwrap();
        let source = sources.iter_mut().find(|s| s.name == name)?;
        source.paused = paused;
        let ticket = self.ticket.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.busy.load(Ordering::SeqCst) {
            source.paused_partitions = if paused { vec![0, 1] } else { vec![] };
            self.applied.store(ticket, Ordering::SeqCst);
        }
        Some(ticket)
    }
    fn applied(&self, ticket: u64) -> bool {
        self.applied.load(Ordering::SeqCst) >= ticket
    }
}

fn endpoints(state: StateQuery, token: Option<&str>) -> (Endpoints, Arc<Switch>) {
    let switch = Switch::new();
    (Endpoints { state: Some(state), sources: Some(switch.clone()), token: token.map(AdminToken::new) }, switch)
}

async fn start(endpoints: Endpoints, limits: Limits) -> (String, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let addr = serve_with("127.0.0.1:0", metrics.clone(), endpoints, limits).await.expect("bind");
    (format!("http://{addr}"), metrics)
}

/// Served with the right token and every endpoint.
async fn start_open(state: StateQuery, limits: Limits) -> String {
    start(endpoints(state, Some(TOKEN)).0, limits).await.0
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    authorized(reqwest::Client::new().get(format!("{base}{path}"))).await
}

async fn authorized(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.bearer_auth(TOKEN).send().await.expect("answer")
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string()
}

#[tokio::test]
async fn routes_status_codes_and_bodies() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let state: StateQuery = Arc::new(move |table: Option<&str>, key: &str| {
        seen.lock().unwrap().push(match table {
            Some(t) => format!("{t}|{key}"),
            None => key.to_string(),
        });
        (404, r#"{"error":"no state"}"#.to_string())
    });
    let (base, metrics) = start(endpoints(state, Some(TOKEN)).0, LIMITS).await;
    metrics.consumed("t", "eu");

    let r = get(&base, "/metrics").await;
    assert_eq!((r.status(), content_type(&r)), (StatusCode::OK, "text/plain; version=0.0.4".into()));
    assert!(r.text().await.unwrap().contains("tributary_records_consumed_total{source=\"eu\",table=\"t\"} 1"));

    let r = get(&base, "/healthz").await;
    assert_eq!((r.status(), content_type(&r)), (StatusCode::OK, "text/plain".into()));
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let r = get(&base, "/readyz").await;
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: joining the group or restoring state\n".into())
    );
    metrics.set_ready(true);
    assert_eq!(get(&base, "/readyz").await.text().await.unwrap(), "ready\n");
    metrics.set_down();
    let r = get(&base, "/healthz").await;
    assert_eq!(
        (r.status(), r.text().await.unwrap()),
        (StatusCode::SERVICE_UNAVAILABLE, "the processor hit a fatal error\n".into())
    );

    // The query's own status and body; the key decoded, the query string ignored.
    let r = get(&base, "/state/%7B%22id%22%3A42%7D?pretty").await;
    assert_eq!((r.status(), content_type(&r)), (StatusCode::NOT_FOUND, "application/json".into()));
    assert_eq!(r.text().await.unwrap(), r#"{"error":"no state"}"#);
    assert_eq!(get(&base, "/state/a/b%2Fc").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&base, "/state/").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(*keys.lock().unwrap(), [r#"{"id":42}"#, "a|b/c", ""]);

    let r = get(&base, "/nothing/here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.text().await.unwrap(),
        "not found: try /metrics, /healthz, /readyz, /state/{key}, /sources, /sources/{name}/pause, /sources/{name}/resume\n"
    );
}

/// Every endpoint without a token, with a wrong one and with the right
/// one; and with no token configured, the guarded ones are off.
#[tokio::test]
async fn state_and_pause_resume_need_the_token_the_rest_is_open() {
    let asked = Arc::new(AtomicU64::new(0));
    let counter = asked.clone();
    let state: StateQuery = Arc::new(move |_: Option<&str>, _: &str| {
        counter.fetch_add(1, Ordering::SeqCst);
        (200, "{}".to_string())
    });
    let client = reqwest::Client::new();
    let guarded = [("GET", "/state/%7B%22id%22%3A1%7D"), ("POST", "/sources/eu/pause"), ("POST", "/sources/eu/resume")];
    let open = [("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/sources")];
    let request = |base: &str, method: &str, path: &str| client.request(method.parse().unwrap(), format!("{base}{path}"));

    let (with_token, switch) = endpoints(state.clone(), Some(TOKEN));
    let (base, metrics) = start(with_token, LIMITS).await;
    metrics.set_ready(true);
    for (method, path) in guarded {
        let r = request(&base, method, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path} without a token");
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"tributary\"", "{method} {path}");
        assert_eq!(r.text().await.unwrap(), "this endpoint needs `Authorization: Bearer <token>` with the admin token\n");

        for wrong in ["wrong-token-0123456789", &TOKEN[..TOKEN.len() - 1], &format!("{TOKEN}0")] {
            let r = request(&base, method, path).bearer_auth(wrong).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path} with the wrong token {wrong}");
            assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"tributary\", error=\"invalid_token\"");
            assert_eq!(r.text().await.unwrap(), "the bearer token is not the configured one\n");
        }
        let r = request(&base, method, path).basic_auth("admin", Some(TOKEN)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}: the token as a password is not a bearer token");
    }
    assert_eq!(asked.load(Ordering::SeqCst), 0, "no state query ran without the token");
    assert!(switch.list().iter().all(|s| !s.paused), "nothing was paused without the token");
    for (method, path) in guarded {
        let r = authorized(request(&base, method, path)).await;
        assert_eq!(r.status(), StatusCode::OK, "{method} {path} with the token");
    }
    let r = request(&base, "GET", "/state/k").header(header::AUTHORIZATION, format!("bearer {TOKEN}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the scheme is case-insensitive");
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    for (method, path) in open {
        let r = request(&base, method, path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{method} {path} is open");
        let r = request(&base, method, path).bearer_auth("wrong-token-0123456789").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{method} {path} ignores a token");
    }

    let (no_token, switch) = endpoints(state, None);
    let (base, metrics) = start(no_token, LIMITS).await;
    metrics.set_ready(true);
    for (method, path) in guarded {
        for token in [None, Some(TOKEN)] {
            let mut r = request(&base, method, path);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path} is off without a configured token");
            assert_eq!(r.text().await.unwrap(), TOKEN_OFF);
        }
    }
    assert_eq!(asked.load(Ordering::SeqCst), 2, "no state query ran while the endpoint is off");
    assert!(switch.list().iter().all(|s| !s.paused));
    for (method, path) in open {
        assert_eq!(request(&base, method, path).send().await.unwrap().status(), StatusCode::OK, "{method} {path}");
    }
    assert!(TOKEN_OFF.contains("token_file") && TOKEN_OFF.contains("TRIBUTARY_ADMIN__TOKEN"));
}

#[tokio::test]
async fn pause_resume_and_the_source_list() {
    let (e, switch) = endpoints(answer(200, "{}"), Some(TOKEN));
    let (base, _) = start(e, LIMITS).await;
    let client = reqwest::Client::new();
    let post = |path: &str| authorized(client.post(format!("{base}{path}")));

    let r = post("/sources/eu/pause").await;
    assert_eq!((r.status(), content_type(&r)), (StatusCode::OK, "application/json".into()));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"source": "eu", "paused": true, "applied": true, "paused_partitions": [0, 1]}));
    let list: serde_json::Value = reqwest::get(format!("{base}/sources")).await.unwrap().json().await.unwrap();
    assert_eq!(
        list,
        serde_json::json!({"sources": [
            {"name": "eu", "topic": "db.eu.customers", "paused": true, "paused_partitions": [0, 1]},
            {"name": "us", "topic": "db.us.customers", "paused": false, "paused_partitions": []},
        ]})
    );

    let r = post("/sources/nope/pause").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no source named \"nope\"; the configured sources are eu, us");
    assert_eq!(body["sources"], serde_json::json!(["eu", "us"]));

    // The processing thread busy: recorded, 202, applied later.
    switch.busy.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let limits = Limits { apply: Duration::from_millis(300), ..LIMITS };
    let (e2, busy) = endpoints(answer(200, "{}"), Some(TOKEN));
    busy.busy.store(true, Ordering::SeqCst);
    let (base2, _) = start(e2, limits).await;
    let r = authorized(client.post(format!("{base2}/sources/us/pause"))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited for the processing thread first");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!((&body["paused"], &body["applied"]), (&serde_json::json!(true), &serde_json::json!(false)));
    assert!(body["note"].as_str().unwrap().starts_with("recorded"));
    assert!(busy.list()[1].paused);

    switch.busy.store(false, Ordering::SeqCst);
    let r = post("/sources/eu/resume").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(switch.list().iter().all(|s| !s.paused && s.paused_partitions.is_empty()));
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let base = start_open(answer(200, "{}"), LIMITS).await;
    let client = reqwest::Client::new();
    for (path, allow) in
        [("/metrics", "GET,HEAD"), ("/healthz", "GET,HEAD"), ("/state/%7B%7D", "GET,HEAD"), ("/sources", "GET,HEAD")]
    {
        let r = authorized(client.post(format!("{base}{path}")).body("x")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(r.headers()[header::ALLOW], allow, "{path}");
        assert_eq!(r.text().await.unwrap(), "this method is not served here; the Allow header lists those that are\n");
    }
    let r = authorized(client.get(format!("{base}/sources/eu/pause"))).await;
    assert_eq!((r.status(), &r.headers()[header::ALLOW]), (StatusCode::METHOD_NOT_ALLOWED, &HeaderValue::from_static("POST")));
    let r = client.delete(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The method is checked before the token: a method no one may use is 405 for everyone.
    let r = client.post(format!("{base}/state/%7B%7D")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(client.get(format!("{base}/state/%7B%7D")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

/// `tributary sink` serves the probes only.
#[tokio::test]
async fn without_state_and_sources_only_the_probes_are_served() {
    let (base, _) = start(Endpoints::default(), LIMITS).await;
    assert_eq!(get(&base, "/metrics").await.status(), StatusCode::OK);
    for path in ["/state/k", "/sources", "/sources/eu/pause"] {
        let r = get(&base, path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.text().await.unwrap(), "not found: try /metrics, /healthz, /readyz\n");
    }
}

/// A bare HTTP/1.1 client that reads until the server closes (as `curl
/// --http1.1 -N`, shell scripts and older probes do) gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_per_connection() {
    let base = start_open(answer(200, "{}"), LIMITS).await;
    let host = base.trim_start_matches("http://").to_string();
    let raw = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(stream, "GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("the server closes the connection after its answer");
        text
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("connection: close\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nok\n"), "{raw}");
}

/// A state query that blocks does not hold up the runtime: on a
/// single-threaded runtime, /healthz answers while it waits.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_state_query_runs_off_the_runtime() {
    let slow: StateQuery = Arc::new(|_: Option<&str>, _: &str| {
        std::thread::sleep(Duration::from_millis(1500));
        (200, "{}".to_string())
    });
    let base = start_open(slow, LIMITS).await;
    let base2 = base.clone();
    let query = tokio::spawn(async move {
        let r = get(&base2, "/state/k").await;
        (r.status(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = get(&base, "/healthz").await.status();
    let healthy_at = Instant::now();
    let (status, answered_at) = query.await.unwrap();
    assert_eq!((health, status), (StatusCode::OK, StatusCode::OK));
    assert!(healthy_at < answered_at, "/healthz waited for the state query");
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_503() {
    let stuck: StateQuery = Arc::new(|_: Option<&str>, _: &str| {
        std::thread::sleep(Duration::from_secs(2));
        (200, "{}".to_string())
    });
    let limits = Limits { request: Duration::from_millis(300), ..LIMITS };
    let base = start_open(stuck, limits).await;
    let r = get(&base, "/state/k").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text().await.unwrap(), "no answer within 300ms; try again\n");
}

/// With every connection slot taken, a new client waits until one
/// closes; a client that sends no request head is closed after the
/// header deadline, so idle clients cannot hold the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_and_idle_ones_closed() {
    let limits = Limits { connections: 1, header_read: Duration::from_secs(2), ..LIMITS };
    let base = start_open(answer(200, "{}"), limits).await;
    let host = base.trim_start_matches("http://").to_string();
    let idle = tokio::net::TcpStream::connect(&host).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn({
        let base = base.clone();
        async move { get(&base, "/healthz").await.status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a second connection was served while the only slot was taken");
    drop(idle);
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap(), StatusCode::OK);

    let mut silent = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut silent, &mut buf)).await;
    assert!(closed.is_ok(), "a connection without a request head stayed open past the header deadline");
    assert_eq!(get(&base, "/healthz").await.status(), StatusCode::OK);
}
