//! The control socket: line-delimited JSON over a Unix socket in the export
//! state directory. One request per connection:
//!
//! ```text
//! → {"op":"commit","entry":"myapp:1.0","compression":"gzip","docker":false,"source_date_epoch":null}
//! ← {"progress":{"entry":…,"phase":"push","packed":…,"content_total":…,"sent":…,"push_total":…}}   (repeated)
//! ← {"ok":true,"result":{"reference":…,"manifest":"sha256:…",…}}   or   {"ok":false,"error":"…"}
//! → {"op":"new","entry":"myapp:2.0","from":"lab/python:3.11"}
//! → {"op":"status"}   ← {"ok":true,"result":{"entries":[…],"in_flight":[…],"images":[…],"cache":{…},"fetches_in_flight":0,
//!                       "registry_state":{"reachable":false,"since":…,"last_error":"…","last_check":…,"checks":3},…}}
//! → {"op":"prefetch","reference":"lab/python:3.11"}
//! ← {"progress":{"layers_total":4,"layers_done":1,"bytes_total":…,"bytes_done":…}}   (repeated)
//! ← {"ok":true,"result":{"digest":"sha256:…","layers":4,"bytes":…,"lazy_layers":0,"ms":…}}
//! ```
//!
//! Every daemon serves one: in the export state directory with `--export`,
//! else in the runtime directory ([`default_socket`]). The root of each of its
//! mounts names it in the `user.regfs.control` xattr.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regfs::content::PrefetchProgress;
use regfs::export::{CommitOptions, Exporter};
use regfs::fs::Fs;
use regfs::reference::Reference;
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
    /// Entries and commits in flight; images in use, cache, fetches in flight.
    Status,
    /// Warm the cache for an image of the mounted registry.
    Prefetch {
        /// NAME:TAG or NAME@DIGEST.
        reference: String,
    },
}

/// What the control socket serves: the read-only side, and the export side if any.
#[derive(Clone)]
pub struct Context {
    /// The read-only filesystem.
    pub fs: Arc<Fs>,
    /// The export side (`--export`).
    pub exporter: Option<Arc<Exporter>>,
    /// The read-only mountpoint.
    pub mountpoint: std::path::PathBuf,
    /// The cache directory.
    pub cache_dir: std::path::PathBuf,
    /// Whether the registry answers.
    pub reachability: Arc<crate::reachability::Reachability>,
}

impl Context {
    fn exporter(&self) -> regfs::Result<&Arc<Exporter>> {
        self.exporter.as_ref().ok_or_else(|| {
            regfs::Error::invalid("this daemon serves no export directory (mount with --export)")
        })
    }
}

/// Where a daemon without `--export` puts its socket: `$XDG_RUNTIME_DIR/regfs`,
/// else `/run/regfs` as root, else the cache directory; named by pid.
pub fn default_socket(cache_dir: &Path) -> std::path::PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| std::path::PathBuf::from(d).join("regfs"))
        .or_else(|| {
            nix::unistd::geteuid()
                .is_root()
                .then(|| std::path::PathBuf::from("/run/regfs"))
        })
        .unwrap_or_else(|| cache_dir.to_path_buf());
    let dir = match std::fs::create_dir_all(&dir) {
        Ok(()) => dir,
        Err(_) => cache_dir.to_path_buf(),
    };
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    dir.join(format!("control-{}.sock", std::process::id()))
}

/// Listen on `path` (replacing a stale socket), serving on `rt`.
pub fn serve(path: &Path, ctx: Context, rt: &tokio::runtime::Handle) -> anyhow::Result<()> {
    let ctx = Arc::new(ctx);
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(handle(s, ctx.clone()));
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

async fn handle(s: UnixStream, ctx: Arc<Context>) {
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
        Request::Status => Ok(status(&ctx)),
        Request::Prefetch { reference } => prefetch(&ctx, &reference, &mut w).await,
        Request::New { entry, from } => match ctx.exporter() {
            Ok(exp) => exp
                .new_entry(&entry, from.as_deref())
                .await
                .map(|m| json!(m)),
            Err(e) => Err(e),
        },
        Request::Commit {
            entry,
            compression,
            docker,
            source_date_epoch,
        } => {
            let parsed = ctx
                .exporter()
                .and_then(|exp| Ok((exp, compression.map(|c| c.parse()).transpose()?)));
            match parsed {
                Err(e) => Err(e),
                Ok((exp, c)) => {
                    let mut opts: CommitOptions = exp.defaults.clone();
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

/// The `status` answer: the export side's entries and commits, plus the
/// read-only side's images, cache and fetches.
fn status(ctx: &Context) -> Value {
    let (entries, in_flight) = match &ctx.exporter {
        Some(exp) => (
            json!(exp.staging().entries().unwrap_or_default()),
            json!(exp.in_flight()),
        ),
        None => (json!([]), json!([])),
    };
    let content = ctx.fs.content();
    let store = content.store();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let client = content.client().stats();
    json!({
        "entries": entries,
        "in_flight": in_flight,
        "export": ctx.exporter.is_some(),
        "pid": std::process::id(),
        "registry": content.client().registry().name,
        "registry_state": ctx.reachability.to_json(),
        "mountpoint": ctx.mountpoint,
        "images": ctx.fs.images_in_use(),
        "cache": {
            "dir": ctx.cache_dir,
            "size": store.size(),
            "limit": store.limit(),
            "hits": load(&store.stats.hits),
            "misses": load(&store.stats.misses),
            "evictions": load(&store.stats.evictions),
        },
        "fetches_in_flight": content.fetches_in_flight(),
        "requests": client.requests,
        "bytes_received": client.bytes_received,
    })
}

/// `prefetch`: warm the cache for `reference`, sending progress every 200 ms.
async fn prefetch(
    ctx: &Arc<Context>,
    reference: &str,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> regfs::Result<Value> {
    let r: Reference = reference.parse()?;
    if let Some(reg) = &r.registry {
        if *reg != ctx.fs.content().client().registry().name {
            return Err(regfs::Error::invalid(format!(
                "{reference}: this daemon mounts {}, not {reg}",
                ctx.fs.content().client().registry()
            )));
        }
    }
    let r = r.normalized_for(ctx.fs.content().client().registry());
    let progress = Arc::new(PrefetchProgress::default());
    let (ctx2, p2) = (ctx.clone(), progress.clone());
    let task = tokio::spawn(async move {
        let fs = &ctx2.fs;
        fs.content()
            .prefetch(&r.repository, &r.selector(), fs.platform(), &p2)
            .await
    });
    tokio::pin!(task);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = &mut task => {
                let r = r.unwrap_or_else(|e| Err(regfs::Error::Io(std::io::Error::other(e))))?;
                let _ = send(w, &json!({"progress": progress.snapshot()})).await;
                return Ok(json!(r));
            }
            _ = tick.tick() => {
                // The client may have gone; the prefetch goes on regardless.
                let _ = send(w, &json!({"progress": progress.snapshot()})).await;
            }
        }
    }
}
