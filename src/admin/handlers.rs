//! What each endpoint answers: the probes, the state query and pausing or
//! resuming a source. Apart from the server and its routing (`mod.rs`), so
//! the answers a client sees can be read without the connection handling.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{json, text, Shared};

pub(super) async fn metrics(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

pub(super) async fn healthz(State(s): State<Shared>) -> Response {
    if s.metrics.is_up() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "the processor hit a fatal error\n")
    }
}

pub(super) async fn readyz(State(s): State<Shared>) -> Response {
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
pub(super) async fn state(State(s): State<Shared>, uri: Uri) -> Response {
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

pub(super) async fn list_sources(State(s): State<Shared>) -> Response {
    let sources = s.endpoints.sources.clone().expect("routed only with sources");
    json(StatusCode::OK, serde_json::json!({ "sources": sources.list() }))
}

pub(super) async fn pause(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    switch(s, name, true).await
}

pub(super) async fn resume(State(s): State<Shared>, Path(name): Path<String>) -> Response {
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

/// Decodes `%XX` escapes; malformed escapes and invalid UTF-8 are kept as
/// they are (lossily), so the state query reports the key it was given.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%7B%22id%22%3A42%7D"), r#"{"id":42}"#);
        assert_eq!(percent_decode("plain%2"), "plain%2");
        assert_eq!(percent_decode("%a\u{e9}x"), "%a\u{e9}x", "no panic on a multi-byte character after %");
        assert_eq!(percent_decode("a+b%2Fc"), "a+b/c", "a path, not a form: + stays");
    }
}
