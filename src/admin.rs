//! The admin HTTP port: `/metrics` (Prometheus), `/healthz`, `/readyz` and
//! `GET /state/{key}`. A deliberately small HTTP/1.1 server (GET only, one
//! request per connection): it serves operators and scrapers, not traffic.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// Answers `GET /state/{key}`: status code and JSON body.
pub type StateQuery = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// Binds `listen` and serves until the process ends. Returns the bound address.
pub async fn serve(listen: &str, metrics: Arc<Metrics>, state: StateQuery) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin HTTP listening (/metrics, /healthz, /readyz, /state/{{key}})");
    // At most 64 connections at once: the port shares file descriptors with
    // librdkafka and the state store.
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
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
            let (metrics, state) = (metrics.clone(), state.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), handle(stream, &metrics, &state)).await;
                drop(permit);
            });
        }
    });
    Ok(addr)
}

async fn handle(mut stream: TcpStream, metrics: &Arc<Metrics>, state: &StateQuery) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = if method != "GET" {
        (405, "text/plain", "only GET is served here\n".to_string())
    } else if path.starts_with("/state/") {
        // A state query may wait for the processing thread: off the runtime's threads.
        let (path, metrics, state) = (path.to_string(), metrics.clone(), state.clone());
        tokio::task::spawn_blocking(move || route(&path, &metrics, &state)).await.map_err(std::io::Error::other)?
    } else {
        route(path, metrics, state)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(path: &str, metrics: &Metrics, state: &StateQuery) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" if metrics.is_up() => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "the processor hit a fatal error\n".into()),
        "/readyz" if metrics.is_ready() => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not ready: joining the group or restoring state\n".into()),
        p if p.starts_with("/state/") => {
            let key = percent_decode(&p["/state/".len()..]);
            let (status, body) = state(&key);
            (status, "application/json", body)
        }
        _ => (404, "text/plain", "not found: try /metrics, /healthz, /readyz or /state/{key}\n".into()),
    }
}

/// Decodes `%XX` escapes (keys are JSON: `/state/%7B%22id%22%3A42%7D`).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kafka's murmur2 partitioner (Java clients, Debezium, Kafka Connect): the
/// partition a key's bytes land in.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's own partitioner tests (Utils.murmur2 & 0x7fffffff).
        assert_eq!(murmur2_partition(b"21", 1 << 30), (-973932308i32 & 0x7fff_ffff) % (1 << 30));
        assert_eq!(murmur2_partition(b"foobar", 1 << 30), (-790332482i32 & 0x7fff_ffff) % (1 << 30));
        assert_eq!(murmur2_partition(b"a-little-bit-long-string", 1 << 30), (-985981536i32 & 0x7fff_ffff) % (1 << 30));
        assert_eq!(
            murmur2_partition(b"a-little-bit-longer-string", 1 << 30),
            661178819 /* (-1486304829 & 0x7fff_ffff) % 2^30 */
        );
        assert_eq!(
            murmur2_partition(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 1 << 30),
            (-58897971i32 & 0x7fff_ffff) % (1 << 30)
        );
        assert_eq!(murmur2_partition(b"abc", 1 << 30), 479_470_107);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%7B%22id%22%3A42%7D"), r#"{"id":42}"#);
        assert_eq!(percent_decode("plain%2"), "plain%2");
        assert_eq!(percent_decode("%a\u{e9}x"), "%a\u{e9}x", "no panic on a multi-byte character after %");
    }
}
