//! The admin HTTP port, routed by axum and served by hyper's HTTP/1.1
//! connection. Open to anyone who can reach it: `/metrics` (Prometheus),
//! `/healthz`, `/readyz` and `GET /sources`. Behind a bearer token:
//! `GET /state/{key}` (whole rows: customer data) and every endpoint that
//! changes something (`POST /sources/{name}/pause|resume`); with no token
//! configured those are off. It serves operators and scrapers, not traffic:
//! one request per connection (answers say `connection: close`, so a client
//! that reads to the end of the stream gets its answer), a bounded number of
//! connections and a deadline on every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Answers `GET /state/{key}`: status code and JSON body. It may block (the
/// processor's query waits for a gap between cycle steps), so it runs on
/// tokio's blocking pool, never on the runtime's own threads.
pub type StateQuery = Arc<dyn Fn(Option<&str>, &str) -> (u16, String) + Send + Sync>;

/// The bearer token that guards `/state` and the mutating endpoints. Its
/// `Debug` shows nothing of it, so it cannot reach a log by accident.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// A token as configured (see `AdminConfig::resolve_token`).
    pub fn new(token: &str) -> Self {
        Self(token.as_bytes().into())
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where the two differ.
    fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(&self.0, presented)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Compares every byte of `expected` whatever the outcome, so the time
/// taken tells a caller nothing about how much of a guess was right. The
/// length of `expected` is the only thing the time depends on, and that is
/// fixed for a running process.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut difference = u8::from(expected.len() != presented.len());
    for (i, e) in expected.iter().enumerate() {
        difference |= e ^ presented.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

/// One configured source as `GET /sources` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceStatus {
    /// The configured name.
    pub name: String,
    /// Its topic.
    pub topic: String,
    /// Paused by an operator (until resumed or the process restarts).
    pub paused: bool,
    /// This instance's assigned partitions of the topic that are paused now.
    pub paused_partitions: Vec<i32>,
}

/// What the admin port needs of the processor to pause and resume sources.
/// A request is recorded at once and applied by the processing thread
/// between two of its steps; the port waits a little for that.
pub trait SourceSwitch: Send + Sync {
    /// Every configured source, in configuration order.
    fn list(&self) -> Vec<SourceStatus>;
    /// Records that `name` is to be paused (or resumed). `None`: no source
    /// has that name. Otherwise a ticket for [`SourceSwitch::applied`].
    fn request(&self, name: &str, paused: bool) -> Option<u64>;
    /// Whether the request with this ticket (and every earlier one) has
    /// reached the consumer.
    fn applied(&self, ticket: u64) -> bool;
}

/// What the port serves beyond `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Default)]
pub struct Endpoints {
    /// `GET /state/{key}` (token required).
    pub state: Option<StateQuery>,
    /// `GET /sources` (open) and `POST /sources/{name}/pause|resume` (token required).
    pub sources: Option<Arc<dyn SourceSwitch>>,
    /// Without one, the endpoints that need it answer 403 saying how to turn them on.
    pub token: Option<AdminToken>,
}

/// How much the port takes on at once and how long it waits.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Open connections at most; the port shares file descriptors with
    /// librdkafka and the state store. Further clients wait in the listen
    /// backlog until a connection closes.
    connections: usize,
    /// From accepting a connection to the end of the request head.
    header_read: Duration,
    /// From the request head to the answer; then 503.
    request: Duration,
    /// Whole connection, a last resort against a client that does not read
    /// its answer.
    connection: Duration,
    /// How long a pause or resume waits for the processing thread to apply
    /// it before answering 202 (recorded, not yet applied).
    apply: Duration,
}

const LIMITS: Limits = Limits {
    connections: 64,
    header_read: Duration::from_secs(10),
    request: Duration::from_secs(10),
    connection: Duration::from_secs(30),
    apply: Duration::from_secs(5),
};

/// The answer of an endpoint that needs a token when none is configured.
const TOKEN_OFF: &str = "this endpoint is off: no admin token is configured. Set [admin] token_file (a file holding the \
token, such as a mounted Kubernetes secret) or the environment variable TRIBUTARY_ADMIN__TOKEN, restart, and send \
`Authorization: Bearer <token>`\n";

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    endpoints: Endpoints,
    apply_wait: Duration,
}

/// Binds `listen` and serves until the process ends. Returns the bound address.
pub async fn serve(listen: &str, metrics: Arc<Metrics>, endpoints: Endpoints) -> std::io::Result<SocketAddr> {
    serve_with(listen, metrics, endpoints, LIMITS).await
}

async fn serve_with(listen: &str, metrics: Arc<Metrics>, endpoints: Endpoints, limits: Limits) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let mut open = vec!["/metrics", "/healthz", "/readyz"];
    let mut guarded = vec![];
    if endpoints.state.is_some() {
        guarded.push("/state/{table}/{key}");
    }
    if endpoints.sources.is_some() {
        open.push("/sources");
        guarded.push("POST /sources/{name}/pause|resume");
    }
    let token = if guarded.is_empty() {
        ""
    } else if endpoints.token.is_some() {
        "; bearer token required for "
    } else {
        "; off (no admin token configured) "
    };
    tracing::info!(%addr, "admin HTTP listening ({}{token}{})", open.join(", "), guarded.join(", "));
    let app = router(Shared { metrics, endpoints, apply_wait: limits.apply }, limits.request);
    let slots = Arc::new(Semaphore::new(limits.connections));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(limits.connection, connection).await {
                    Ok(Err(e)) => tracing::debug!("admin connection: {e}"),
                    Err(_) => tracing::debug!("admin connection dropped after {:?}", limits.connection),
                    Ok(Ok(())) => {}
                }
                drop(permit);
            });
        }
    });
    Ok(addr)
}

fn router(shared: Shared, request_timeout: Duration) -> Router {
    let mut open = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz));
    let mut guarded = Router::new();
    if shared.endpoints.state.is_some() {
        guarded = guarded.route("/state/", get(state)).route("/state/{*key}", get(state));
    }
    if shared.endpoints.sources.is_some() {
        open = open.route("/sources", get(list_sources));
        guarded = guarded.route("/sources/{name}/pause", post(pause)).route("/sources/{name}/resume", post(resume));
    }
    if guarded.has_routes() {
        // A route layer: runs for these routes' handlers only (after the
        // method check, so a method no one may use is 405 for everyone).
        open = open.merge(guarded.route_layer(middleware::from_fn_with_state(shared.clone(), require_token)));
    }
    open.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .with_state(shared)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `Authorization: Bearer <token>` with the configured token, or 401 (403
/// when no token is configured: the endpoint is off).
async fn require_token(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let Some(token) = &s.endpoints.token else {
        return text(StatusCode::FORBIDDEN, TOKEN_OFF);
    };
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
    let error = match presented {
        Some(p) if token.matches(p) => return next.run(request).await,
        Some(_) => {
            tracing::warn!(path = %request.uri().path(), "admin: a request with a wrong bearer token was refused");
            Some("invalid_token")
        }
        None => None,
    };
    // RFC 6750: a missing token gets the challenge alone, a wrong one says so.
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"tributary\", error=\"{e}\""),
        None => "Bearer realm=\"tributary\"".to_string(),
    };
    let body = match error {
        Some(_) => "the bearer token is not the configured one\n",
        None => "this endpoint needs `Authorization: Bearer <token>` with the admin token\n",
    };
    let mut response = text(StatusCode::UNAUTHORIZED, body);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("ASCII"));
    response
}

/// The credentials of an `Authorization: Bearer …` header (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

async fn metrics(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn healthz(State(s): State<Shared>) -> Response {
    if s.metrics.is_up() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "the processor hit a fatal error\n")
    }
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.metrics.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: joining the group or restoring state\n")
    }
}

/// `/state/{table}/{key}` or `/state/{key}`: the key is the rest of the
/// path, percent-decoded (keys are JSON: `/state/%7B%22id%22%3A42%7D`); a
/// `/` in the raw path separates the table from the key (a key's own `/` is
/// sent as `%2F`, as every client encodes a path segment); a query string is
/// ignored.
async fn state(State(s): State<Shared>, uri: Uri) -> Response {
    let rest = uri.path().strip_prefix("/state/").unwrap_or_default();
    let (table, key) = match rest.split_once('/') {
        Some((table, key)) => (Some(percent_decode(table)), percent_decode(key)),
        None => (None, percent_decode(rest)),
    };
    let query = s.endpoints.state.clone().expect("routed only with a state query");
    match tokio::task::spawn_blocking(move || query(table.as_deref(), &key)).await {
        Ok((status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => {
            tracing::warn!("admin /state query failed: {e}");
            json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": format!("the state query failed: {e}")}))
        }
    }
}

async fn list_sources(State(s): State<Shared>) -> Response {
    let sources = s.endpoints.sources.clone().expect("routed only with sources");
    json(StatusCode::OK, serde_json::json!({ "sources": sources.list() }))
}

async fn pause(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    switch(s, name, true).await
}

async fn resume(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    switch(s, name, false).await
}

/// Records the request, then waits (without holding a runtime thread) until
/// the processing thread has applied it: 200 once applied, 202 when it is
/// busy for longer (restoring a task, say), which applies it afterwards.
async fn switch(s: Shared, name: String, paused: bool) -> Response {
    let sources = s.endpoints.sources.clone().expect("routed only with sources");
    let Some(ticket) = sources.request(&name, paused) else {
        let known: Vec<String> = sources.list().into_iter().map(|s| s.name).collect();
        let error = format!("no source named \"{name}\"; the configured sources are {}", known.join(", "));
        return json(StatusCode::NOT_FOUND, serde_json::json!({ "error": error, "sources": known }));
    };
    tracing::info!(source = %name, "admin: {} requested", if paused { "pause" } else { "resume" });
    let until = Instant::now() + s.apply_wait;
    while !sources.applied(ticket) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = sources.list().into_iter().find(|s| s.name == name);
    let mut body = serde_json::json!({ "source": name, "paused": paused, "applied": sources.applied(ticket) });
    if let Some(status) = status {
        body["paused_partitions"] = serde_json::json!(status.paused_partitions);
    }
    if sources.applied(ticket) {
        json(StatusCode::OK, body)
    } else {
        body["note"] =
            "recorded; the processing thread is busy (restoring or committing) and applies it when it is next free".into();
        json(StatusCode::ACCEPTED, body)
    }
}

async fn not_found(State(s): State<Shared>) -> Response {
    let mut paths = vec!["/metrics", "/healthz", "/readyz"];
    if s.endpoints.state.is_some() {
        paths.push("/state/{key}");
    }
    if s.endpoints.sources.is_some() {
        paths.extend(["/sources", "/sources/{name}/pause", "/sources/{name}/resume"]);
    }
    text(StatusCode::NOT_FOUND, format!("not found: try {}\n", paths.join(", ")))
}

/// The router adds `Allow` with the methods the path serves.
async fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "this method is not served here; the Allow header lists those that are\n")
}

async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, format!("no answer within {limit:?}; try again\n")),
    }
}

/// Decodes `%XX` escapes; malformed escapes and invalid UTF-8 are kept as
/// they are (lossily), so the state query reports the key it was given.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    const TOKEN: &str = "s3cret-admin-token-0123456789";

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%7B%22id%22%3A42%7D"), r#"{"id":42}"#);
        assert_eq!(percent_decode("plain%2"), "plain%2");
        assert_eq!(percent_decode("%a\u{e9}x"), "%a\u{e9}x", "no panic on a multi-byte character after %");
        assert_eq!(percent_decode("a+b%2Fc"), "a+b/c", "a path, not a form: + stays");
    }

    #[test]
    fn token_comparison_and_bearer_parsing() {
        let token = AdminToken::new(TOKEN);
        assert!(token.matches(TOKEN.as_bytes()));
        assert!(!token.matches(b""));
        assert!(!token.matches(&TOKEN.as_bytes()[..TOKEN.len() - 1]), "a prefix is not the token");
        assert!(!token.matches(format!("{TOKEN}x").as_bytes()), "nor is a longer string that starts with it");
        assert!(!token.matches(TOKEN.replace('0', "1").as_bytes()));
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]), "the scheme is case-insensitive");
        assert_eq!(bearer(b"Basic YWJj"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }

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
        assert_eq!(
            (r.status(), &r.headers()[header::ALLOW]),
            (StatusCode::METHOD_NOT_ALLOWED, &HeaderValue::from_static("POST"))
        );
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
}
