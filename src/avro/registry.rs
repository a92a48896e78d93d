//! The Schema Registry client: `schema_registry_converter` underneath, a
//! blocking face for the processing thread, and errors sorted into what the
//! processor can do about them.
//!
//! The processing thread is synchronous (it owns the consumer and the
//! transactional producer), so registry calls run on a small runtime owned
//! here. Schemas are cached by the converter; a cached lookup completes
//! without touching that runtime at all (`now_or_never`), which keeps the
//! per-record cost of Avro decoding to the decoding itself.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use futures::FutureExt;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_subject_and_version, is_compatible_schema, post_schema, SrSettings, SrSettingsBuilder,
};
use schema_registry_converter::avro_common::AvroSchema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SuppliedSchema};

use crate::config::SchemaRegistryConfig;
use crate::retry::Backoff;

/// What went wrong talking to the registry, sorted by what to do about it.
/// Each variant carries the [`Failure`]: the call, the HTTP status and the
/// converter's error (whose source is the `reqwest` error of a failed
/// connection).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// The registry cannot answer now (unreachable, timeout, 5xx, refused
    /// credentials): pause and retry; the records are not at fault.
    #[error("schema registry unavailable: {0}")]
    Unavailable(#[source] Box<Failure>),
    /// The registry answered that the schema (id or subject) does not exist:
    /// the record that names it is at fault.
    #[error("{0}")]
    NotFound(#[source] Box<Failure>),
    /// The registry refused a schema as incompatible with the subject's
    /// earlier versions (HTTP 409).
    #[error("schema registry refused the schema as incompatible: {0}")]
    Incompatible(#[source] Box<Failure>),
    /// The schema or the bytes are invalid (not Avro, cannot be parsed or
    /// decoded): the record is at fault.
    #[error("{0}")]
    Invalid(#[source] Box<Failure>),
}

impl RegistryError {
    /// True when retrying later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The failed call.
    pub fn failure(&self) -> &Failure {
        match self {
            Self::Unavailable(f) | Self::NotFound(f) | Self::Incompatible(f) | Self::Invalid(f) => f,
        }
    }
}

/// One failed registry call or payload: what was asked and what came back.
/// Its text is the call and the answer ("schema id 7: HTTP request to schema
/// registry failed with status 404 Not Found: error_code: 40403, ...").
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The subject asked about, when the call named one.
    pub subject: Option<String>,
    /// The schema id asked about or named by the payload.
    pub schema_id: Option<u32>,
    /// The registry's HTTP status, when it answered.
    pub status: Option<u16>,
    /// The registry's error code (40403: schema not found, 409: incompatible,
    /// 422xx: invalid schema), when it answered with one.
    pub error_code: Option<u32>,
    /// The converter's error; its source is the registry's answer or the
    /// `reqwest` error of a call that got none.
    pub cause: Option<SRCError>,
    detail: String,
}

impl Failure {
    /// A problem of the payload itself, no registry call involved.
    fn payload(schema_id: Option<u32>, detail: impl Into<String>) -> Box<Self> {
        Box::new(Self { subject: None, schema_id, status: None, error_code: None, cause: None, detail: detail.into() })
    }

    /// The same failure with `prefix: ` before its text.
    fn prefixed(mut self: Box<Self>, prefix: &str) -> Box<Self> {
        self.detail = format!("{prefix}: {}", self.detail);
        self
    }

    /// Its text, as shown.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What a registry call was about, for [`classify`].
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    Id(u32),
    Subject(&'a str),
    Register(&'a str),
    Compatible(&'a str),
}

impl std::fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Id(id) => write!(f, "schema id {id}"),
            Call::Subject(s) => write!(f, "subject {s}"),
            Call::Register(s) => write!(f, "register under subject {s}"),
            Call::Compatible(s) => write!(f, "compatibility under subject {s}"),
        }
    }
}

/// The HTTP status of a converter error: the `reqwest` error's, else the
/// one the converter wrote into its message ("failed with status 404 Not
/// Found"), the only place it keeps it.
fn http_status(e: &SRCError) -> Option<u16> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(status) = s.downcast_ref::<reqwest::Error>().and_then(reqwest::Error::status) {
            return Some(status.as_u16());
        }
        source = s.source();
    }
    let (_, rest) = e.error.split_once("failed with status ")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Sorts a converter error. The converter marks only 502/503 retriable; a
/// 500, a connection failure, a timeout and a refused credential are
/// retriable too from where the processor stands (nothing a record did), and
/// "not found" and "cannot decode" are the record's.
fn classify(e: &SRCError, call: Call<'_>) -> RegistryError {
    let detail = match &e.cause {
        Some(c) => format!("{call}: {}: {c}", e.error),
        None => format!("{call}: {}", e.error),
    };
    let mut failure = Box::new(Failure {
        subject: match call {
            Call::Id(_) => None,
            Call::Subject(s) | Call::Register(s) | Call::Compatible(s) => Some(s.to_string()),
        },
        schema_id: match call {
            Call::Id(id) => Some(id),
            _ => None,
        },
        status: http_status(e),
        error_code: None,
        cause: Some(e.clone()),
        detail,
    });
    if e.retriable {
        return RegistryError::Unavailable(failure);
    }
    // The first answer or connection error in the chain decides.
    let mut source = std::error::Error::source(e);
    let mut connection = false;
    while let Some(s) = source {
        if let Some(raw) = s.downcast_ref::<RawError>() {
            failure.error_code = Some(raw.error_code);
            break;
        }
        if s.downcast_ref::<reqwest::Error>().is_some() {
            connection = true;
            break;
        }
        source = s.source();
    }
    match (failure.error_code, failure.status) {
        (Some(40401..=40403), _) => RegistryError::NotFound(failure),
        (Some(409), _) => RegistryError::Incompatible(failure),
        (Some(42201..=42299 | 422), _) => RegistryError::Invalid(failure),
        (Some(_), _) => RegistryError::Unavailable(failure),
        _ if connection => RegistryError::Unavailable(failure),
        // No registry answer to go by: the HTTP status, or a schema/bytes problem.
        (None, Some(404)) => RegistryError::NotFound(failure),
        (None, Some(409)) => RegistryError::Incompatible(failure),
        (None, Some(422)) => RegistryError::Invalid(failure),
        (None, Some(_)) => RegistryError::Unavailable(failure),
        (None, None) => RegistryError::Invalid(failure),
    }
}

/// Why the registry client could not be built from `[schema_registry]`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `schema_registry.url` lists no URL.
    #[error("schema_registry.url: no URL")]
    NoUrl,
    /// A TLS file could not be read.
    #[error("schema_registry.{key} {}: {source}", path.display())]
    ReadFile {
        /// The setting naming the file (`ca_location`, `certificate_location`, `key_location`).
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// `schema_registry.ca_location` holds no PEM certificates.
    #[error("schema_registry.ca_location {}: not PEM certificates: {source}", path.display())]
    NotPem {
        /// The file.
        path: std::path::PathBuf,
        /// The TLS library's complaint.
        #[source]
        source: reqwest::Error,
    },
    /// The client certificate and key do not make a TLS identity.
    #[error("schema_registry.certificate_location/key_location: {source}")]
    Identity {
        /// The TLS library's complaint.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be built.
    #[error("schema registry client: {source}")]
    Client {
        /// The converter's error.
        #[source]
        source: SRCError,
    },
    /// The registry's runtime could not start.
    #[error("schema registry runtime: {source}")]
    Runtime {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// A registered schema as read back from a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectSchema {
    /// Global schema id.
    pub id: u32,
    /// Version under the subject.
    pub version: Option<u32>,
    /// The schema text.
    pub schema: String,
}

/// A connection to the Schema Registry.
pub struct Registry {
    settings: SrSettings,
    decoder: AvroDecoder,
    /// Always `Some` until dropped (see [`Drop`]).
    runtime: Option<tokio::runtime::Runtime>,
    urls: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("urls", &self.urls).finish_non_exhaustive()
    }
}

impl Registry {
    /// Builds the client from `[schema_registry]`. Reads the TLS files.
    pub fn new(config: &SchemaRegistryConfig) -> Result<Arc<Self>, ClientError> {
        let urls = config.urls();
        let (first, rest) = urls.split_first().ok_or(ClientError::NoUrl)?;
        let mut builder: SrSettingsBuilder = SrSettings::new_builder(first.clone());
        for u in rest {
            builder.add_url(u.clone());
        }
        if let Some(user) = &config.basic_auth_user {
            builder.set_basic_authorization(user, config.basic_auth_password.as_deref());
        }
        builder.set_timeout(config.timeout);
        let mut client = reqwest::Client::builder().connect_timeout(config.timeout);
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ClientError::ReadFile { key, path: path.to_path_buf(), source })
        };
        if let Some(ca) = &config.ca_location {
            let pem = read("ca_location", ca)?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| ClientError::NotPem { path: ca.clone(), source })?;
            for c in certs {
                client = client.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&config.certificate_location, &config.key_location) {
            let cert_pem = read("certificate_location", cert)?;
            let key_pem = read("key_location", key)?;
            let identity =
                reqwest::Identity::from_pkcs8_pem(&cert_pem, &key_pem).map_err(|source| ClientError::Identity { source })?;
            client = client.identity(identity);
        }
        let settings = builder.build_with(client).map_err(|source| ClientError::Client { source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("tributary-registry")
            .build()
            .map_err(|source| ClientError::Runtime { source })?;
        Ok(Arc::new(Self { decoder: AvroDecoder::new(settings.clone()), settings, runtime: Some(runtime), urls }))
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the registry")
    }

    /// The configured URLs (for messages).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Runs a registry future: at once when it needs no I/O (a cache hit),
    /// else on the registry's runtime.
    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        let mut f = Box::pin(f);
        // The first poll may start I/O and timers: they must belong to this
        // runtime, whichever thread (and runtime context) calls.
        let first = {
            let _context = self.runtime().enter();
            f.as_mut().now_or_never()
        };
        match first {
            Some(out) => out,
            None => self.runtime().block_on(f),
        }
    }

    /// Decodes a Confluent-framed Avro payload: magic byte 0, a 4-byte
    /// big-endian schema id, the Avro body. Returns the writer schema and
    /// the value.
    pub fn decode(&self, framed: &[u8]) -> Result<(Arc<AvroSchema>, Value), RegistryError> {
        let id = frame_id(framed)?;
        let result = self.block(self.decoder.decode_with_schema(Some(framed)));
        match result {
            Ok(Some(d)) => Ok((d.schema, d.value)),
            Ok(None) => Err(RegistryError::Invalid(Failure::payload(Some(id), "empty payload"))),
            Err(e) => {
                let err = classify(&e, Call::Id(id));
                if err.is_retriable() {
                    // The converter caches errors it thinks final; this one is not.
                    self.decoder.remove_errors_from_cache();
                }
                Err(match err {
                    RegistryError::NotFound(d) => RegistryError::NotFound(d.prefixed(&unknown_id(id))),
                    other => other,
                })
            }
        }
    }

    /// The schema with this id (cached).
    pub fn schema(&self, id: u32) -> Result<Arc<AvroSchema>, RegistryError> {
        self.block(self.decoder.get_schema(id)).map_err(|e| match classify(&e, Call::Id(id)) {
            RegistryError::NotFound(d) => RegistryError::NotFound(d.prefixed(&unknown_id(id))),
            err => {
                if err.is_retriable() {
                    self.decoder.remove_errors_from_cache();
                }
                err
            }
        })
    }

    /// The latest schema registered under `subject`, `None` when the subject
    /// does not exist.
    pub fn latest(&self, subject: &str) -> Result<Option<SubjectSchema>, RegistryError> {
        let fut = get_schema_by_subject_and_version(&self.settings, subject, None);
        match self.block(fut) {
            Ok(s) => Ok(Some(SubjectSchema { id: s.id, version: s.version, schema: s.schema })),
            Err(e) => match classify(&e, Call::Subject(subject)) {
                RegistryError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Whether `schema` is compatible with what `subject` holds, by the
    /// subject's compatibility level (`NotFound` when there is no subject).
    pub fn compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        self.block(is_compatible_schema(&self.settings, subject.to_string(), supplied))
            .map_err(|e| classify(&e, Call::Compatible(subject)))
    }

    /// Registers `schema` (Avro JSON text) under `subject` and returns its
    /// global id (the existing id when it is registered already).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        self.block(post_schema(&self.settings, subject.to_string(), supplied))
            .map(|r| r.id)
            .map_err(|e| classify(&e, Call::Register(subject)))
    }
}

/// Reads Confluent-framed Avro into JSON by [`crate::avro::value`]'s
/// mapping, one [`Shape`](crate::avro::value::Shape) per schema id (used by
/// `tributary sink` on Avro output).
#[derive(Debug)]
pub struct JsonReader {
    registry: Arc<Registry>,
    shapes: std::collections::HashMap<u32, crate::avro::value::Shape>,
}

impl JsonReader {
    /// A reader over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry, shapes: Default::default() }
    }

    /// Decodes one payload.
    pub fn read(&mut self, framed: &[u8]) -> Result<serde_json::Value, RegistryError> {
        let (schema, value) = self.registry.decode(framed)?;
        let shape = self.shapes.entry(schema.id).or_insert_with(|| {
            let names =
                apache_avro::schema::ResolvedSchema::try_from(&schema.parsed).map(|r| r.get_names().clone()).unwrap_or_default();
            crate::avro::value::Shape::of(&schema.parsed, &names)
        });
        shape
            .to_json(&value)
            .map_err(|e| RegistryError::Invalid(Failure::payload(Some(schema.id), format!("schema id {}: {e}", schema.id))))
    }

    /// [`read`](Self::read), waiting out an unavailable registry (with
    /// `unavailable_backoff`, up to `max_backoff` between tries) until `stop` is set.
    pub fn read_patiently(
        &mut self,
        framed: &[u8],
        max_backoff: Duration,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<serde_json::Value, RegistryError> {
        let mut backoff = unavailable_backoff(max_backoff);
        loop {
            match self.read(framed) {
                Err(e) if e.is_retriable() && !stop.load(std::sync::atomic::Ordering::Relaxed) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(attempt = backoff.attempts(), wait_ms = wait.as_millis() as u64, "{e}; retrying");
                    crate::retry::sleep(wait, stop);
                }
                other => return other,
            }
        }
    }
}

impl Drop for Registry {
    /// Dropping a runtime from async code panics (the processor's start-up
    /// can fail, and drop this, inside its async task): let it go in the
    /// background instead.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The schema id of a Confluent-framed payload.
pub fn frame_id(framed: &[u8]) -> Result<u32, RegistryError> {
    match framed {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [] => Err(RegistryError::Invalid(Failure::payload(None, "empty payload"))),
        [m, ..] if framed.len() >= 5 => Err(RegistryError::Invalid(Failure::payload(
            None,
            format!("not Confluent-framed Avro: the first byte is {m:#04x}, expected the magic byte 0x00"),
        ))),
        _ => Err(RegistryError::Invalid(Failure::payload(
            None,
            format!("not Confluent-framed Avro: {} bytes, shorter than the 5-byte header", framed.len()),
        ))),
    }
}

/// The start of the text of an id the registry does not have.
fn unknown_id(id: u32) -> String {
    format!("unknown schema id {id} (the registry does not have it)")
}

/// Frames an Avro body: magic byte 0, the schema id big-endian, the body.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The waits while the registry is unavailable: doubling from 100 ms up to
/// `max` (`schema_registry.max_backoff`).
pub(crate) fn unavailable_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(100), max, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_bad_frames_are_named() {
        let f = frame(258, &[1, 2]);
        assert_eq!(f, vec![0, 0, 0, 1, 2, 1, 2]);
        assert_eq!(frame_id(&f), Ok(258));
        assert!(frame_id(b"{\"a\":1}").unwrap_err().to_string().contains("magic byte"));
        assert!(frame_id(&[0, 1]).unwrap_err().to_string().contains("shorter than the 5-byte header"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(5);
        let mut b = unavailable_backoff(max);
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(40), max);
    }

    fn raw(code: u32, message: &str) -> RawError {
        serde_json::from_value(serde_json::json!({"error_code": code, "message": message})).unwrap()
    }

    #[test]
    fn converter_errors_are_sorted() {
        let e = SRCError::retryable_with_cause(raw(50003, "x"), "status 503");
        assert!(classify(&e, Call::Id(1)).is_retriable());
        let e = SRCError::non_retryable_with_cause(
            raw(40403, "Schema 7 not found"),
            "HTTP request to schema registry failed with status 404 Not Found",
        );
        assert!(matches!(classify(&e, Call::Id(7)), RegistryError::NotFound(_)));
        let e = SRCError::non_retryable_with_cause(
            raw(50001, "store"),
            "HTTP request to schema registry failed with status 500 Internal Server Error",
        );
        assert!(classify(&e, Call::Id(7)).is_retriable(), "a 500 is the registry's problem, not the record's");
        let e = SRCError::non_retryable_with_cause(raw(401, "Unauthorized"), "status 401");
        assert!(classify(&e, Call::Id(7)).is_retriable());
        let e = SRCError::non_retryable_without_cause("Could not transform bytes using schema");
        assert!(matches!(classify(&e, Call::Id(7)), RegistryError::Invalid(_)));
        // Without the registry's answer, the status in the converter's message decides.
        let e = SRCError::non_retryable_without_cause("HTTP request to schema registry failed with status 409 Conflict");
        assert!(matches!(classify(&e, Call::Register("t-value")), RegistryError::Incompatible(_)));
    }

    #[test]
    fn a_failure_carries_the_call_the_status_and_the_answer() {
        let e = SRCError::non_retryable_with_cause(
            raw(40403, "Schema 7 not found"),
            "HTTP request to schema registry failed with status 404 Not Found",
        );
        let err = classify(&e, Call::Id(7));
        let f = err.failure();
        assert_eq!((f.schema_id, f.subject.as_deref(), f.status, f.error_code), (Some(7), None, Some(404), Some(40403)));
        assert_eq!(
            err.to_string(),
            "schema id 7: HTTP request to schema registry failed with status 404 Not Found: error_code: 40403, message: Schema 7 not found"
        );
        // The chain reaches the registry's answer: RegistryError → Failure → SRCError → RawError.
        let answer = std::error::Error::source(&err).and_then(|f| f.source()).and_then(|c| c.source());
        assert!(answer.is_some_and(|a| a.downcast_ref::<RawError>().is_some()), "{answer:?}");
        let e = SRCError::retryable_with_cause(raw(50003, "x"), "status 503");
        let err = classify(&e, Call::Subject("t-value"));
        assert_eq!(err.failure().subject.as_deref(), Some("t-value"));
        assert_eq!(err.to_string(), "schema registry unavailable: subject t-value: status 503: error_code: 50003, message: x");
    }
}
