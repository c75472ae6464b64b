//! The control socket: line-delimited JSON over a Unix socket in the export
//! state directory. One request per connection:
//!
//! ```text
//! → {"op":"commit","entry":"myapp:1.0","compression":"gzip","docker":false,"source_date_epoch":null}
//! ← {"progress":{"entry":…,"phase":"push","packed":…,"content_total":…,"sent":…,"push_total":…}}   (repeated)
//! ← {"ok":true,"result":{"reference":…,"manifest":"sha256:…",…}}   or   {"ok":false,"error":"…"}
//! → {"op":"new","entry":"myapp:2.0","from":"lab/python:3.11"}
//! → {"op":"status"}   ← {"ok":true,"result":{"entries":[…],"in_flight":[…]}}
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regfs::export::{CommitOptions, Exporter};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Commit an entry.
    Commit {
        /// The entry reference.
        entry: String,
        /// gzip, zstd, none (default: the mount's).
        #[serde(default)]
        compression: Option<String>,
        /// Docker schema 2 instead of OCI.
        #[serde(default)]
        docker: Option<bool>,
        /// Clamp mtimes and `created`.
        #[serde(default)]
        source_date_epoch: Option<i64>,
    },
    /// Make an entry, optionally from a base image.
    New {
        /// The entry reference.
        entry: String,
        /// The base.
        #[serde(default)]
        from: Option<String>,
    },
    /// Entries and commits in flight.
    Status,
}

/// Listen on `path` (replacing a stale socket), serving on `rt`.
pub fn serve(path: &Path, exp: Arc<Exporter>, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(handle(s, exp.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).expect("json");
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(s: UnixStream, exp: Arc<Exporter>) {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() {
        return;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = send(
                &mut w,
                &json!({"ok": false, "error": format!("bad request: {e}")}),
            )
            .await;
            return;
        }
    };
    let answer = match req {
        Request::Status => {
            let entries = exp.staging().entries().unwrap_or_default();
            Ok(json!({"entries": entries, "in_flight": exp.in_flight()}))
        }
        Request::New { entry, from } => exp
            .new_entry(&entry, from.as_deref())
            .await
            .map(|m| json!(m)),
        Request::Commit {
            entry,
            compression,
            docker,
            source_date_epoch,
        } => {
            let mut opts: CommitOptions = exp.defaults.clone();
            let parsed = compression.map(|c| c.parse()).transpose();
            match parsed {
                Err(e) => Err(e),
                Ok(c) => {
                    if let Some(c) = c {
                        opts.codec = c;
                    }
                    if let Some(d) = docker {
                        opts.format = if d {
                            regfs::export::ManifestFormat::Docker
                        } else {
                            regfs::export::ManifestFormat::Oci
                        };
                    }
                    if source_date_epoch.is_some() {
                        opts.source_date_epoch = source_date_epoch;
                    }
                    let exp2 = exp.clone();
                    let e2 = entry.clone();
                    let task = tokio::spawn(async move { exp2.commit(&e2, &opts).await });
                    tokio::pin!(task);
                    let mut tick = tokio::time::interval(Duration::from_millis(200));
                    loop {
                        tokio::select! {
                            r = &mut task => break r.unwrap_or_else(|e| Err(regfs::Error::Io(std::io::Error::other(e)))).map(|o| json!(o)),
                            _ = tick.tick() => {
                                if let Some(p) = exp.in_flight().into_iter().find(|p| p.entry == entry) {
                                    // The client may have gone; the commit goes on regardless.
                                    let _ = send(&mut w, &json!({"progress": p})).await;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let v = match answer {
        Ok(result) => json!({"ok": true, "result": result}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    let _ = send(&mut w, &v).await;
}
