//! The bearer token that guards `/state` and the endpoints that change
//! something. Kept apart from the routing so the one comparison of a secret,
//! and what a refused request is told, can be checked on their own.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::{text, Shared};

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

/// The answer of an endpoint that needs a token when none is configured.
pub(super) const TOKEN_OFF: &str =
    "this endpoint is off: no admin token is configured. Set [admin] token_file (a file holding the \
token, such as a mounted Kubernetes secret) or the environment variable TRIBUTARY_ADMIN__TOKEN, restart, and send \
`Authorization: Bearer <token>`\n";

/// `Authorization: Bearer <token>` with the configured token, or 401 (403
/// when no token is configured: the endpoint is off).
pub(super) async fn require_token(State(s): State<Shared>, request: Request, next: Next) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-admin-token-0123456789";

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
}
