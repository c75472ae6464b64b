//! `regfs mount`: build the client, the store and the filesystem, mount, and
//! serve until unmounted or signalled.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use regfs::cache::Store;
use regfs::content::{Content, LazyOptions};
use regfs::fs::{Fs, FsConfig};
use regfs::fuse::{FuseFs, MountConfig};
use regfs::image::Platform;
use regfs::layer::Limits;
use regfs::reference::Registry;
use regfs::registry::{Client, ClientOptions, Credentials};

use crate::cli::MountArgs;
use crate::reachability::{self, Reachability};
use crate::{control, daemon, logging, readiness, unmount};

pub(crate) fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("regfs");
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/regfs");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/regfs"),
        None => PathBuf::from("/tmp/regfs-cache"),
    }
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        bail!("--password-stdin: standard input was empty");
    }
    Ok(pw)
}

/// Run `regfs mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let password = if args.password_stdin {
        Some(read_password()?)
    } else {
        None
    };
    let ready = readiness::ready_pipe();
    if args.daemon && ready.is_none() {
        let hint = args
            .log_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "--log-file (the daemon's log is discarded without it)".into());
        return daemon::spawn(password.as_deref(), &hint);
    }
    logging::init(args.log_file.as_deref())?;
    // Before anything records: the recorder is global.
    let metrics = match &args.metrics_addr {
        Some(a) => Some((a.clone(), crate::metrics::install()?)),
        None => None,
    };

    let (registry, scheme) = Registry::parse(&args.registry)?;
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    let mountpoint = args.mountpoint.clone();
    unmount::clear_stale(&mountpoint)?;
    let md = std::fs::metadata(&mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !md.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }

    let mut opts = ClientOptions::new(registry.clone());
    opts.plain_http = args.plain_http || scheme == Some(true);
    // A CA certificate only makes sense over TLS, loopback or not.
    opts.force_https = scheme == Some(false) || !args.ca_cert.is_empty();
    opts.ca_certs = args.ca_cert.clone();
    opts.insecure_skip_verify = args.insecure_skip_verify;
    crate::endpoints::apply(&args, &mut opts)?;
    opts.timeout = Duration::from_secs(args.timeout.max(1));
    opts.retries = args.retries;
    if let (Some(u), Some(p)) = (&args.username, password) {
        opts.credentials = Some(Credentials {
            username: u.clone(),
            password: p,
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("regfs-worker")
        .enable_all()
        .build()?;
    let client = Client::new(opts)?;
    // Unreachable (refused, no such name, timeouts, 5xx): mount anyway, serve
    // what the cache holds, say so on the terminal and in the log, and keep
    // checking in the background. Anything else (credentials, TLS) fails now.
    let mut warnings = Vec::new();
    let reachability = match rt.block_on(client.ping()) {
        Ok(()) => Reachability::new(&registry.name, None),
        Err(e) if e.is_transient() => {
            let msg = reachability::warning(&registry.name, &e.to_string());
            tracing::warn!(%registry, "{msg}");
            // Without a log file the line above is already on the terminal.
            if args.log_file.is_some() && ready.is_none() {
                eprintln!("regfs: warning: {msg}");
            }
            warnings.push(msg);
            Reachability::new(&registry.name, Some(e.to_string()))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("registry {registry}"))),
    };
    reachability.watch(client.clone(), rt.handle());

    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let store = Arc::new(
        Store::open(&cache_dir, args.cache_size)
            .with_context(|| format!("cache {}", cache_dir.display()))?,
    );
    let mut content = Content::new(Arc::new(client), store, 4_000_000, Limits::default());
    content.set_lazy_options(LazyOptions {
        background_fetch: args.background_fetch,
        background_bandwidth: args.background_bandwidth,
        ..LazyOptions::default()
    });
    let export_platform = platform.clone();
    let fs = Arc::new(Fs::new(
        content,
        FsConfig {
            platform,
            tag_ttl: Duration::from_secs(args.tag_ttl),
            mount_time: SystemTime::now(),
        },
    ));
    if let Some((addr, handle)) = metrics {
        crate::metrics::serve(&addr, handle, fs.clone(), rt.handle())?;
    }
    let ctx = control::Context {
        fs: fs.clone(),
        exporter: None,
        mountpoint: std::path::absolute(&mountpoint)?,
        cache_dir: cache_dir.clone(),
        reachability,
    };
    let export = crate::export::start(
        &args,
        fs.clone(),
        &rt,
        &cache_dir,
        export_platform,
        ctx.clone(),
    )?;
    // One control socket per daemon: the export side's, else our own.
    let (socket, own_socket) = match &export {
        Some(e) => (e.socket().to_path_buf(), false),
        None => {
            let p = control::default_socket(&cache_dir);
            let _guard = rt.enter();
            control::serve(&p, ctx, rt.handle())?;
            (p, true)
        }
    };
    let als = crate::als::start(&args, fs.clone(), registry.clone(), &rt, &socket)?;
    let session = FuseFs::new(fs, rt.handle().clone())
        .with_control_socket(&socket)
        .mount(
            &mountpoint,
            &MountConfig {
                allow_other: args.allow_other,
                fs_name: format!("regfs:{registry}"),
                threads: args.threads,
            },
        )
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    tracing::info!(%registry, mountpoint = %mountpoint.display(), cache = %cache_dir.display(), "mounted");
    readiness::notify_ready(ready, &warnings);

    // The session thread ends when the kernel drops the mount (regfs unmount,
    // umount -l); a signal makes us detach it ourselves.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = session.join();
        let _ = tx.send(r);
    });
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = rx => {
                tracing::info!("unmounted");
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "session ended with an error");
                }
                return anyhow::Ok(());
            }
            _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
            _ = int.recv() => tracing::info!("SIGINT: unmounting"),
        }
        if let Err(e) = unmount::detach(&mountpoint) {
            tracing::warn!(error = %e, "detach failed");
        }
        Ok(())
    })?;
    if let Some(e) = export {
        e.stop();
    }
    if let Some(a) = als {
        a.stop();
    }
    if own_socket {
        let _ = std::fs::remove_file(&socket);
    }
    // Do not wait for in-flight network tasks: the mount is gone.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
