//! The admin HTTP port: `/metrics` (Prometheus), `/healthz`, `/readyz` and
//! `GET /state/{key}`, routed by axum and served by hyper's HTTP/1.1
//! connection. It serves operators and scrapers, not traffic: one request per
//! connection (answers say `connection: close`, so a client that reads to the
//! end of the stream gets its answer), a bounded number of connections and a
//! deadline on every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Answers `GET /state/{key}`: status code and JSON body. It may block (the
/// processor's query waits for a gap between cycle steps), so it runs on
/// tokio's blocking pool, never on the runtime's own threads.
pub type StateQuery = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

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
}

const LIMITS: Limits = Limits {
    connections: 64,
    header_read: Duration::from_secs(10),
    request: Duration::from_secs(10),
    connection: Duration::from_secs(30),
};

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    state: StateQuery,
}

/// Binds `listen` and serves until the process ends. Returns the bound address.
pub async fn serve(listen: &str, metrics: Arc<Metrics>, state: StateQuery) -> std::io::Result<SocketAddr> {
    serve_with(listen, metrics, state, LIMITS).await
}

async fn serve_with(listen: &str, metrics: Arc<Metrics>, state: StateQuery, limits: Limits) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin HTTP listening (/metrics, /healthz, /readyz, /state/{{key}})");
    let app = router(Shared { metrics, state }, limits.request);
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
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/state/", get(state))
        .route("/state/{*key}", get(state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .with_state(shared)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body.into()).into_response()
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

/// The key is the rest of the path, percent-decoded (keys are JSON:
/// `/state/%7B%22id%22%3A42%7D`); a query string is ignored.
async fn state(State(s): State<Shared>, uri: Uri) -> Response {
    let key = percent_decode(uri.path().strip_prefix("/state/").unwrap_or_default());
    let query = s.state.clone();
    match tokio::task::spawn_blocking(move || query(&key)).await {
        Ok((status, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => {
            tracing::warn!("admin /state query failed: {e}");
            let body = serde_json::json!({"error": format!("the state query failed: {e}")}).to_string();
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /state/{key}\n")
}

/// The router adds `Allow: GET,HEAD`.
async fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n")
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
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%7B%22id%22%3A42%7D"), r#"{"id":42}"#);
        assert_eq!(percent_decode("plain%2"), "plain%2");
        assert_eq!(percent_decode("%a\u{e9}x"), "%a\u{e9}x", "no panic on a multi-byte character after %");
        assert_eq!(percent_decode("a+b%2Fc"), "a+b/c", "a path, not a form: + stays");
    }

    fn answer(status: u16, body: &str) -> StateQuery {
        let body = body.to_string();
        Arc::new(move |_: &str| (status, body.clone()))
    }

    async fn start(state: StateQuery, limits: Limits) -> (String, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let addr = serve_with("127.0.0.1:0", metrics.clone(), state, limits).await.expect("bind");
        (format!("http://{addr}"), metrics)
    }

    async fn get(base: &str, path: &str) -> reqwest::Response {
        reqwest::get(format!("{base}{path}")).await.expect("answer")
    }

    fn content_type(r: &reqwest::Response) -> String {
        r.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn routes_status_codes_and_bodies() {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let seen = keys.clone();
        let state: StateQuery = Arc::new(move |key: &str| {
            seen.lock().unwrap().push(key.to_string());
            (404, r#"{"error":"no state"}"#.to_string())
        });
        let (base, metrics) = start(state, LIMITS).await;
        metrics.consumed("eu");

        let r = get(&base, "/metrics").await;
        assert_eq!((r.status(), content_type(&r)), (StatusCode::OK, "text/plain; version=0.0.4".into()));
        assert!(r.text().await.unwrap().contains("tributary_records_consumed_total{source=\"eu\"} 1"));

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
        assert_eq!(*keys.lock().unwrap(), [r#"{"id":42}"#, "a/b/c", ""]);

        let r = get(&base, "/nothing/here").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.text().await.unwrap(), "not found: try /metrics, /healthz, /readyz or /state/{key}\n");
    }

    #[tokio::test]
    async fn other_methods_get_405_with_allow() {
        let (base, _) = start(answer(200, "{}"), LIMITS).await;
        let client = reqwest::Client::new();
        for path in ["/metrics", "/healthz", "/state/%7B%7D"] {
            let r = client.post(format!("{base}{path}")).body("x").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(r.headers()[header::ALLOW], "GET,HEAD", "{path}");
            assert_eq!(r.text().await.unwrap(), "only GET is served here\n");
        }
        let r = client.delete(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    /// A bare HTTP/1.1 client that reads until the server closes (as `curl
    /// --http1.1 -N`, shell scripts and older probes do) gets its answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_request_per_connection() {
        let (base, _) = start(answer(200, "{}"), LIMITS).await;
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
        let slow: StateQuery = Arc::new(|_: &str| {
            std::thread::sleep(Duration::from_millis(1500));
            (200, "{}".to_string())
        });
        let (base, _) = start(slow, LIMITS).await;
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
        let stuck: StateQuery = Arc::new(|_: &str| {
            std::thread::sleep(Duration::from_secs(2));
            (200, "{}".to_string())
        });
        let limits = Limits { request: Duration::from_millis(300), ..LIMITS };
        let (base, _) = start(stuck, limits).await;
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
        let (base, _) = start(answer(200, "{}"), limits).await;
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
