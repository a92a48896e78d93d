//! The admin HTTP port, routed by axum and served by hyper's HTTP/1.1
//! connection. Open to anyone who can reach it: `/metrics` (Prometheus),
//! `/healthz`, `/readyz` and `GET /sources`. Behind a bearer token:
//! `GET /state/{key}` (whole rows: customer data) and every endpoint that
//! changes something (`POST /sources/{name}/pause|resume`); with no token
//! configured those are off. It serves operators and scrapers, not traffic:
//! one request per connection (answers say `connection: close`, so a client
//! that reads to the end of the stream gets its answer), a bounded number of
//! connections and a deadline on every request.
//!
//! Here: what the processor hands the port, the limits, the accept loop and
//! the routing. The token check is in `auth.rs`, what each endpoint answers
//! in `handlers.rs`.

mod auth;
mod handlers;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

use auth::require_token;
pub use auth::AdminToken;
use handlers::{healthz, list_sources, metrics, pause, readyz, resume, state};

/// Answers `GET /state/{key}`: status code and JSON body. It may block (the
/// processor's query waits for a gap between cycle steps), so it runs on
/// tokio's blocking pool, never on the runtime's own threads.
pub type StateQuery = Arc<dyn Fn(Option<&str>, &str) -> (u16, String) + Send + Sync>;

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
