//! The control socket, the daemon's end: serves the requests of
//! [`crate::protocol`] (line-delimited JSON over a Unix socket, one request
//! per connection: `commit`, `new`, `status`, `prefetch`).
//!
//! Every daemon serves one: in the export state directory with `--export`,
//! else in the runtime directory ([`default_socket`]). The root of each of its
//! mounts names it in the `user.regfs.control` xattr.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regfs::export::{CommitOptions, Exporter};
use regfs::fs::Fs;
use regfs::reference::Reference;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::protocol::{
    Answer, CacheStatus, CommitOutcome, IndexPushed, Line, PrefetchDone, PrefetchProgress, Request,
    Status,
};

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
    /// The supervisor, under `--supervise`.
    pub link: Option<Arc<regfs::handover::link::Link>>,
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

async fn send<T: Serialize>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).expect("json");
    line.push(b'\n');
    w.write_all(&line).await
}

/// Send the last line of an answer.
async fn answer<R: Serialize>(w: &mut tokio::net::unix::OwnedWriteHalf, r: regfs::Result<R>) {
    let _ = send(w, &Line::<(), R>::Answer(Answer::of(r))).await;
}

/// Send a progress line (the client may have gone; the work goes on regardless).
async fn progress<P: Serialize>(w: &mut tokio::net::unix::OwnedWriteHalf, p: P) {
    let _ = send(w, &Line::<P, ()>::Progress { progress: p }).await;
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
            let bad = Answer::<()>::error(format!("bad request: {e}"));
            let _ = send(&mut w, &Line::<(), ()>::Answer(bad)).await;
            return;
        }
    };
    match req {
        Request::Status => answer(&mut w, Ok(status(&ctx))).await,
        Request::Restart => answer(&mut w, restart(&ctx).await).await,
        Request::TraceStart { reference } => {
            let r = match served_reference(&ctx, &reference) {
                Ok(r) => ctx
                    .fs
                    .trace_start(&r.repository, &r.selector())
                    .await
                    .map(|d| d.to_string()),
                Err(e) => Err(e),
            };
            answer(&mut w, r).await
        }
        Request::TraceStop { reference } => {
            let r = match served_reference(&ctx, &reference) {
                Ok(r) => ctx.fs.trace_stop(&r.repository, &r.selector()).await,
                Err(e) => Err(e),
            };
            answer(&mut w, r).await
        }
        Request::Prefetch { reference } => {
            let r = prefetch(&ctx, &reference, &mut w).await;
            answer(&mut w, r).await
        }
        Request::IndexPush { reference } => {
            let r = index_push(&ctx, &reference).await;
            answer(&mut w, r).await
        }
        Request::PrefetchListPush { reference, paths } => {
            let r = match served_reference(&ctx, &reference) {
                Ok(r) => match ctx
                    .fs
                    .resolve_image(&r.repository.as_str().into(), &r.selector())
                    .await
                {
                    Ok(image) => ctx
                        .fs
                        .content()
                        .publish_prefetch_list(&r.repository, &image, &paths)
                        .await
                        .map(|p| p.artifact.to_string()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            answer(&mut w, r).await
        }
        Request::New { entry, from } => {
            let r = match ctx.exporter() {
                Ok(exp) => exp.new_entry(&entry, from.as_deref()).await,
                Err(e) => Err(e),
            };
            answer(&mut w, r).await
        }
        Request::Commit {
            entry,
            compression,
            docker,
            source_date_epoch,
        } => {
            let r = commit(&ctx, &entry, compression, docker, source_date_epoch, &mut w).await;
            answer(&mut w, r).await
        }
    }
}

/// `restart`: ask the supervisor for a new server; this one goes once its
/// requests are answered. The answer is this server's pid.
async fn restart(ctx: &Context) -> regfs::Result<u32> {
    let link = ctx.link.clone().ok_or_else(|| {
        regfs::Error::invalid(
            "this daemon runs without a supervisor: mount with --supervise to restart it in place",
        )
    })?;
    if let Some(p) = ctx
        .exporter
        .as_ref()
        .and_then(|e| e.in_flight().into_iter().next())
    {
        return Err(regfs::Error::invalid(format!(
            "a commit of {} is in flight: restart when it is done",
            p.entry
        )));
    }
    regfs::blocking::run(move || link.restart().map_err(regfs::Error::Io)).await?;
    Ok(std::process::id())
}

/// `commit`: commit `entry`, sending its progress every 200 ms.
async fn commit(
    ctx: &Context,
    entry: &str,
    compression: Option<String>,
    docker: Option<bool>,
    source_date_epoch: Option<i64>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> regfs::Result<CommitOutcome> {
    let exp = ctx.exporter()?;
    let mut opts: CommitOptions = exp.defaults.clone();
    if let Some(c) = compression {
        opts.codec = c.parse()?;
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
    let (exp2, e2) = (exp.clone(), entry.to_string());
    let task = tokio::spawn(async move { exp2.commit(&e2, &opts).await });
    tokio::pin!(task);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = &mut task => {
                return r.unwrap_or_else(|e| Err(regfs::Error::Io(std::io::Error::other(e))));
            }
            _ = tick.tick() => {
                if let Some(p) = exp.in_flight().into_iter().find(|p| p.entry == entry) {
                    progress(w, p).await;
                }
            }
        }
    }
}

/// The `status` answer: the export side's entries and commits, plus the
/// read-only side's images, cache and fetches.
fn status(ctx: &Context) -> Status {
    let (entries, in_flight) = match &ctx.exporter {
        Some(exp) => (exp.staging().entries().unwrap_or_default(), exp.in_flight()),
        None => (Vec::new(), Vec::new()),
    };
    let content = ctx.fs.content();
    let store = content.store();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let client = content.client().stats();
    Status {
        entries,
        in_flight,
        export: ctx.exporter.is_some(),
        pid: std::process::id(),
        generation: ctx.link.as_ref().map(|l| l.generation()),
        supervisor_pid: ctx
            .link
            .as_ref()
            .map(|_| nix::unistd::getppid().as_raw() as u32),
        registry: match content.client().registries() {
            Some(used) if used.is_empty() => "any (none used yet)".to_string(),
            Some(used) => format!("any (used: {})", used.join(", ")),
            None => content.client().registry().name.to_string(),
        },
        registry_state: Some(ctx.reachability.state()),
        mountpoint: ctx.mountpoint.clone(),
        images: ctx.fs.images_in_use(),
        layers_in_use: ctx.fs.layers_in_use(),
        cache: CacheStatus {
            dir: ctx.cache_dir.clone(),
            size: store.size(),
            limit: store.limit(),
            hits: load(&store.stats.hits),
            misses: load(&store.stats.misses),
            evictions: load(&store.stats.evictions),
        },
        fetches_in_flight: content.fetches_in_flight(),
        requests: client.requests,
        bytes_received: client.bytes_received,
    }
}

/// `reference` as this daemon serves it: checked against the mounted
/// registry (or, with every registry served, its repository prefixed with
/// the registry it names) and normalised (Docker Hub's `library/`).
fn served_reference(ctx: &Context, reference: &str) -> regfs::Result<Reference> {
    let r: Reference = reference.parse()?;
    let client = ctx.fs.content().client();
    Ok(if client.registries().is_some() {
        // Every registry is served: the reference must name one.
        let Some(reg) = r.registry.clone() else {
            return Err(regfs::Error::invalid(format!(
                "{reference}: this daemon serves any registry; name it (localhost:5000/{reference})"
            )));
        };
        let (registry, _) = regfs::reference::Registry::parse(&reg)?;
        let mut r = r.normalized_for(&registry);
        r.repository = format!("{reg}/{}", r.repository);
        r
    } else {
        if let Some(reg) = &r.registry {
            if *reg != client.registry().name {
                return Err(regfs::Error::invalid(format!(
                    "{reference}: this daemon mounts {}, not {reg}",
                    client.registry()
                )));
            }
        }
        r.normalized_for(client.registry())
    })
}

/// `index push`: publish the layer indexes this cache holds for `reference`.
async fn index_push(ctx: &Arc<Context>, reference: &str) -> regfs::Result<IndexPushed> {
    let r = served_reference(ctx, reference)?;
    let content = ctx.fs.content();
    let info = content.resolve(&r.repository, &r.selector()).await?;
    let digest = match &info.manifest {
        regfs::image::Manifest::Image(_) => info.digest.clone(),
        regfs::image::Manifest::Index { entries, .. } => {
            regfs::image::Manifest::select_platform(entries, ctx.fs.platform())
                .ok_or_else(|| {
                    regfs::Error::NotFound(format!(
                        "{reference}: no image for platform {}",
                        ctx.fs.platform()
                    ))
                })?
                .manifest
                .digest
                .clone()
        }
    };
    // Layer indexes of an image's gzip layers; chunk lists of any large
    // blob (an artifact has only those).
    let artifact = match &content.manifest(&r.repository, &digest).await?.manifest {
        regfs::image::Manifest::Image(m) => m.is_artifact(),
        regfs::image::Manifest::Index { .. } => false,
    };
    let layers = match artifact {
        true => Err(regfs::Error::NotFound("an artifact has no layers".into())),
        false => content.publish_indexes(&r.repository, &digest).await,
    };
    let chunks = content.publish_chunk_lists(&r.repository, &digest).await;
    let (p, c) = match (layers, chunks) {
        (Err(e @ regfs::Error::NotFound(_)), Err(regfs::Error::NotFound(c))) => {
            return Err(regfs::Error::NotFound(format!("{e}; {c}")))
        }
        (Err(e), _) if !matches!(e, regfs::Error::NotFound(_)) => return Err(e),
        (_, Err(e)) if !matches!(e, regfs::Error::NotFound(_)) => return Err(e),
        (p, c) => (p.ok(), c.ok()),
    };
    Ok(IndexPushed {
        image: digest.to_string(),
        artifact: p
            .as_ref()
            .map(|p| p.artifact.to_string())
            .unwrap_or_default(),
        layers: p.as_ref().map_or(0, |p| p.layers as u64),
        missing: p.as_ref().map_or(0, |p| p.missing as u64),
        fallback_tag: p
            .as_ref()
            .or(c.as_ref())
            .and_then(|p| p.fallback_tag.clone()),
        already: p.as_ref().is_none_or(|p| p.already) && c.as_ref().is_none_or(|c| c.already),
        chunk_artifact: c.as_ref().map(|c| c.artifact.to_string()),
        chunk_lists: c.as_ref().map_or(0, |c| c.layers as u64),
    })
}

/// `prefetch`: warm the cache for `reference`, sending progress every 200 ms.
async fn prefetch(
    ctx: &Arc<Context>,
    reference: &str,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> regfs::Result<PrefetchDone> {
    let r = served_reference(ctx, reference)?;
    let p = Arc::new(regfs::content::PrefetchProgress::default());
    let snapshot = |p: &regfs::content::PrefetchProgress| {
        let s = p.snapshot();
        PrefetchProgress {
            layers_total: s.layers_total,
            layers_done: s.layers_done,
            bytes_total: s.bytes_total,
            bytes_done: s.bytes_done,
        }
    };
    let (ctx2, p2) = (ctx.clone(), p.clone());
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
                progress(w, snapshot(&p)).await;
                return Ok(PrefetchDone {
                    digest: r.digest.to_string(),
                    layers: r.layers,
                    bytes: r.bytes,
                    lazy_layers: r.lazy_layers,
                    ms: r.ms,
                });
            }
            _ = tick.tick() => progress(w, snapshot(&p)).await,
        }
    }
}
