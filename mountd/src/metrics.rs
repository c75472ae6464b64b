//! `--metrics-addr HOST:PORT`: Prometheus text format at `/metrics`.
//!
//! The data path records through the `metrics` facade (see
//! `regfs::telemetry`); this installs the Prometheus recorder and answers
//! scrapes with a minimal HTTP/1.1 listener. Counters kept elsewhere (the
//! store's hits, misses and evictions, the client's bytes) are copied in at
//! scrape time, so a scrape is always current.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use regfs::fs::Fs;
use regfs::telemetry as t;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Install the recorder (before anything is recorded). Returns the handle
/// [`serve`] renders.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(t::FUSE_OP_SECONDS.into()), t::FUSE_BUCKETS)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    t::describe();
    Ok(handle)
}

/// Listen on `addr` (bound now, so a busy port fails the mount) and answer
/// `GET /metrics` on `rt`.
pub fn serve(
    addr: &str,
    handle: PrometheusHandle,
    fs: Arc<Fs>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("--metrics-addr {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    let listener = TcpListener::from_std(std_listener)?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let (h, fs) = (handle.clone(), fs.clone());
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), answer(s, &h, &fs)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Copy counters kept outside the recorder into it.
fn refresh(fs: &Fs) {
    let content = fs.content();
    let store = content.store();
    metrics::counter!(t::CACHE_HITS).absolute(store.stats.hits.load(Ordering::Relaxed));
    metrics::counter!(t::CACHE_MISSES).absolute(store.stats.misses.load(Ordering::Relaxed));
    metrics::counter!(t::CACHE_EVICTIONS).absolute(store.stats.evictions.load(Ordering::Relaxed));
    metrics::gauge!(t::CACHE_SIZE).set(store.size() as f64);
    metrics::gauge!(t::CACHE_LIMIT).set(store.limit() as f64);
    metrics::gauge!(t::FETCHES_IN_FLIGHT).set(content.fetches_in_flight() as f64);
    let c = content.client().stats();
    metrics::counter!(t::REGISTRY_BYTES).absolute(c.bytes_received);
    metrics::counter!(t::REGISTRY_RETRIES).absolute(c.retries);
}

async fn answer(mut s: TcpStream, handle: &PrometheusHandle, fs: &Fs) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            refresh(fs);
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}
