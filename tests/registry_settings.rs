//! The product's registry client (`tributary::avro::registry::Registry`)
//! with the `[schema_registry]` settings a deployment uses: basic auth, TLS
//! with a private CA, mutual TLS, timeouts, and how each failure is sorted
//! (retry later vs the record's fault). Against the stand-in under
//! `tests/registry/`, with certificates made by the `openssl` CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::Registry as StandIn;
use tributary::avro::registry::{Registry, RegistryError};
use tributary::config::SchemaRegistryConfig;

const SCHEMA: &str = r#"{"type":"record","name":"Value","namespace":"t","fields":[{"name":"id","type":"int"}]}"#;

fn settings(url: &str) -> SchemaRegistryConfig {
    SchemaRegistryConfig {
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_secs(1),
        ..SchemaRegistryConfig::new(url)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// all signed by the CA. Returns the directory holding them.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tributary-test-ca",
        ],
    );
    std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
        openssl(d, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN={who}")]);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        // PKCS#8, as `key_location` documents.
        openssl(d, &["pkcs8", "-topk8", "-nocrypt", "-in", &key, "-out", &format!("{who}.p8")]);
    }
    dir
}

fn path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn basic_auth_credentials_are_sent_and_a_refusal_is_retriable() {
    let standin = StandIn::start_with_auth("tributary", "s3cret");
    let mut ok = settings(&standin.url);
    ok.basic_auth_user = Some("tributary".into());
    ok.basic_auth_password = Some("s3cret".into());
    let registry = Registry::new(&ok).unwrap();
    let id = registry.register("t-value", SCHEMA).unwrap();
    assert_eq!(registry.schema(id).unwrap().id, id);
    assert_eq!(registry.latest("t-value").unwrap().map(|s| s.id), Some(id));

    let mut wrong = ok.clone();
    wrong.basic_auth_password = Some("nope".into());
    let e = Registry::new(&wrong).unwrap().register("t-value", SCHEMA).unwrap_err();
    // Credentials can be fixed (rotated secret) without touching records:
    // the processor pauses and retries rather than dead-lettering.
    assert!(e.is_retriable(), "{e}");
    assert!(e.to_string().contains("401"), "{e}");
    assert_eq!(e.failure().status, Some(401), "{e:?}");
}

#[test]
fn tls_with_a_private_ca_and_mutual_tls() {
    let certs = certificates();
    let standin = StandIn::start_tls(&path(&certs, "server.pem"), &path(&certs, "server.key"), None);
    assert!(standin.url.starts_with("https://"), "{}", standin.url);

    // Without the CA the server is not trusted: unavailable, not the record's fault.
    let e = Registry::new(&settings(&standin.url)).unwrap().register("t-value", SCHEMA).unwrap_err();
    assert!(e.is_retriable(), "{e}");
    let mut trusted = settings(&standin.url);
    trusted.ca_location = Some(path(&certs, "ca.pem"));
    let id = Registry::new(&trusted).unwrap().register("t-value", SCHEMA).unwrap();
    assert!(Registry::new(&trusted).unwrap().schema(id).is_ok());
    drop(standin);

    let mtls = StandIn::start_tls(&path(&certs, "server.pem"), &path(&certs, "server.key"), Some(&path(&certs, "ca.pem")));
    let e = Registry::new(&trusted).unwrap().register("t-value", SCHEMA).unwrap_err();
    assert!(e.is_retriable(), "no client certificate: {e}");
    let mut with_cert = trusted.clone();
    with_cert.url = mtls.url.clone();
    with_cert.certificate_location = Some(path(&certs, "client.pem"));
    with_cert.key_location = Some(path(&certs, "client.p8"));
    let registry = Registry::new(&with_cert).unwrap();
    let id = registry.register("t-value", SCHEMA).unwrap();
    assert_eq!(registry.schema(id).unwrap().id, id);

    // A key file that is not PEM is a start-up error naming the setting.
    let mut bad = with_cert.clone();
    bad.key_location = Some(path(&certs, "ca.pem"));
    let e = Registry::new(&bad).unwrap_err().to_string();
    assert!(e.contains("schema_registry.certificate_location/key_location"), "{e}");
}

#[test]
fn timeouts_unknown_ids_and_several_urls() {
    let standin = StandIn::start();
    let mut fast = settings(&standin.url);
    fast.timeout = Duration::from_millis(500);
    let registry = Registry::new(&fast).unwrap();
    let id = registry.register("t-value", SCHEMA).unwrap();

    // An unknown id is the record's fault, named as such.
    match registry.schema(id + 1000) {
        Err(RegistryError::NotFound(d)) => {
            assert!(d.detail().contains(&format!("{}", id + 1000)), "{d}");
            assert_eq!((d.schema_id, d.status), (Some(id + 1000), Some(404)), "{d:?}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let framed = tributary::avro::registry::frame(id + 1000, &[2]);
    match registry.decode(&framed) {
        Err(RegistryError::NotFound(d)) => assert!(d.detail().contains(&format!("unknown schema id {}", id + 1000)), "{d}"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // A registry that does not answer for 20 s: with a 500 ms timeout the
    // call gives up long before (the bound is loose: shared machines).
    let fresh = Registry::new(&fast).unwrap();
    standin.http(
        "POST",
        "/__standin/faults",
        Some(&serde_json::json!({"status": 200, "count": 1, "path_prefix": "/schemas/ids", "delay_ms": 20000})),
    );
    let started = Instant::now();
    let e = fresh.schema(id).unwrap_err();
    assert!(e.is_retriable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout applies: {:?}", started.elapsed());

    // Several URLs are tried in order: a dead first one does not matter.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let both = settings(&format!("http://{dead}, {}", standin.url));
    assert_eq!(Registry::new(&both).unwrap().schema(id).unwrap().id, id);
    // None reachable: unavailable.
    let e = Registry::new(&settings(&format!("http://{dead}"))).unwrap().schema(id).unwrap_err();
    assert!(e.is_retriable(), "{e}");
}
