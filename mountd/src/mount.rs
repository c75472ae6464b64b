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
use regfs::registry::router::ANY_REGISTRY;
use regfs::registry::{Client, ClientOptions, Credentials, RegistryApi, RegistryRouter};

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

/// What a mount serves.
enum Source {
    /// One registry, and the scheme its argument gave (`Some(true)`: http).
    One(Registry, Option<bool>),
    /// Every registry, named by the first path component (`--any-registry`).
    Any,
}

/// The source and the mountpoint from the positional arguments:
/// `REGISTRY MOUNTPOINT`, or with `--any-registry` `MOUNTPOINT` (or
/// `any MOUNTPOINT`, as mount(8) passes an fstab line).
fn source_and_mountpoint(args: &MountArgs) -> anyhow::Result<(Source, PathBuf)> {
    match (&args.mountpoint, args.any_registry) {
        (Some(m), false) => {
            let (registry, scheme) = Registry::parse(&args.registry)?;
            Ok((Source::One(registry, scheme), m.clone()))
        }
        (None, true) => Ok((Source::Any, PathBuf::from(&args.registry))),
        (Some(m), true) if args.registry == "any" => Ok((Source::Any, m.clone())),
        (Some(_), true) => bail!(
            "--any-registry serves every registry: give only the mountpoint (or `any MOUNTPOINT`), not {:?}",
            args.registry
        ),
        (None, false) => bail!(
            "missing MOUNTPOINT: regfs mount REGISTRY MOUNTPOINT (or regfs mount --any-registry MOUNTPOINT)"
        ),
    }
}

/// The client settings the flags give, for `registry`.
fn client_options(
    args: &MountArgs,
    registry: Registry,
    scheme: Option<bool>,
) -> anyhow::Result<ClientOptions> {
    let mut opts = ClientOptions::new(registry);
    opts.plain_http = args.plain_http || scheme == Some(true);
    // A CA certificate only makes sense over TLS, loopback or not.
    opts.force_https = scheme == Some(false) || !args.ca_cert.is_empty();
    opts.ca_certs = args.ca_cert.clone();
    opts.insecure_skip_verify = args.insecure_skip_verify;
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        opts.client_cert = Some((cert.clone(), key.clone()));
    }
    opts.timeout = Duration::from_secs(args.timeout.max(1));
    opts.retries = args.retries;
    Ok(opts)
}

/// A registry name for the template of `--any-registry`'s clients.
fn registry_placeholder() -> Registry {
    Registry {
        name: ANY_REGISTRY.to_string(),
        api_host: String::new(),
    }
}

/// The settings of registry `r` under `--any-registry`: the flags' settings,
/// and the mirrors of `hosts_dir/<r>/hosts.toml`; credentials come from the
/// auth files, as for any registry.
fn options_for(
    template: &ClientOptions,
    r: Registry,
    hosts_dir: Option<&std::path::Path>,
) -> regfs::Result<ClientOptions> {
    let mut opts = template.clone();
    opts.registry = r;
    if let Some(dir) = hosts_dir {
        opts.mirrors = regfs::registry::hosts::load(dir, &opts.registry.name)?;
    }
    Ok(opts)
}

/// Whether this process is a server started by a supervisor (`--supervise`).
pub fn is_supervised_server() -> bool {
    std::env::var_os(regfs::handover::link::FD_ENV).is_some()
}

/// Run `regfs mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let link = regfs::handover::link::Link::from_env()
        .context("the supervisor's link")?
        .map(Arc::new);
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

    let (source, mountpoint) = source_and_mountpoint(&args)?;
    let mountpoint = std::path::absolute(&mountpoint)?;
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    // A connection the supervisor holds is served by this process: looking
    // at the mountpoint now would wait for ourselves.
    let resuming = match &link {
        Some(l) => l.holds(&mountpoint).context("asking the supervisor")?,
        None => false,
    };
    if !resuming {
        unmount::clear_stale(&mountpoint)?;
        let md = std::fs::metadata(&mountpoint)
            .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
        if !md.is_dir() {
            bail!("mountpoint {} is not a directory", mountpoint.display());
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("regfs-worker")
        .enable_all()
        .build()?;
    let mut warnings = Vec::new();
    let als_registry = match &source {
        Source::Any => registry_placeholder(),
        Source::One(r, _) => r.clone(),
    };
    let registry_name = als_registry.name.clone();
    let (api, reachability, fs_name): (Arc<dyn RegistryApi>, _, _) = match source {
        Source::Any => {
            let template = client_options(&args, registry_placeholder(), None)?;
            let hosts_dir = args.hosts_dir.clone();
            let router = RegistryRouter::new(Box::new(move |r: &Registry| {
                let opts = options_for(&template, r.clone(), hosts_dir.as_deref())?;
                tracing::info!(registry = %r, "registry opened");
                Ok(Arc::new(Client::new(opts)?) as Arc<dyn RegistryApi>)
            }));
            let reachability = Reachability::new(ANY_REGISTRY, None);
            (Arc::new(router), reachability, "regfs:any".to_string())
        }
        Source::One(registry, scheme) => {
            let mut opts = client_options(&args, registry.clone(), scheme)?;
            crate::endpoints::apply(&args, &mut opts)?;
            if let (Some(u), Some(p)) = (&args.username, password) {
                opts.credentials = Some(Credentials {
                    username: u.clone(),
                    password: p,
                });
            }
            let client = Client::new(opts)?;
            // Unreachable (refused, no such name, timeouts, 5xx): mount anyway, serve
            // what the cache holds, say so on the terminal and in the log, and keep
            // checking in the background. Anything else (credentials, TLS) fails now.
            // A server taking over a live mount does not wait for the
            // registry: readers are paused until it serves (the watcher
            // below finds out soon enough).
            let checked = if resuming {
                Ok(())
            } else {
                rt.block_on(client.ping())
            };
            let reachability = match checked {
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
            reachability.watch(client.clone(), rt.handle(), resuming);
            (Arc::new(client), reachability, format!("regfs:{registry}"))
        }
    };

    let cache_dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let store = Arc::new(
        Store::open(&cache_dir, args.cache_size)
            .with_context(|| format!("cache {}", cache_dir.display()))?,
    );
    let mut content = Content::new(api, store, 4_000_000, Limits::default());
    content.set_publish_indexes(args.publish_indexes);
    content.set_use_published_indexes(
        args.use_published_indexes,
        Duration::from_secs(args.published_index_check_delay),
    );
    content.set_lazy_options(LazyOptions {
        background_fetch: args.background_fetch,
        background_bandwidth: args.background_bandwidth,
        ..LazyOptions::default()
    });
    let export_platform = platform.clone();
    let mut fs = Fs::new(
        content,
        FsConfig {
            platform,
            tag_ttl: Duration::from_secs(args.tag_ttl),
            mount_time: SystemTime::now(),
        },
    );
    if let Some(l) = &link {
        regfs::handover::check_state(l.state_dir()).map_err(anyhow::Error::msg)?;
        fs = fs
            .with_restart_state(l.state_dir(), l.generation())
            .context("the inode journal")?;
    }
    let fs = Arc::new(fs);
    {
        // The first lookups of namespaces need not wait for the catalog.
        let fs = fs.clone();
        rt.spawn(async move { fs.warm_catalog().await });
    }
    if args.use_published_indexes {
        let fs = fs.clone();
        rt.spawn(async move { fs.content().check_published_forever().await });
    }
    if args.publish_indexes {
        let fs = fs.clone();
        rt.spawn(async move { fs.content().publish_queued_forever().await });
    }
    if let Some((addr, handle)) = metrics {
        crate::metrics::serve(&addr, handle, fs.clone(), rt.handle())?;
    }
    let ctx = control::Context {
        fs: fs.clone(),
        exporter: None,
        mountpoint: std::path::absolute(&mountpoint)?,
        cache_dir: cache_dir.clone(),
        reachability,
        link: link.clone(),
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
    let als = crate::als::start(&args, fs.clone(), als_registry, &rt, &socket, link.clone())?;
    let on_remote = warm_on_remote(fs.clone(), rt.handle().clone());
    let session = FuseFs::new(fs, rt.handle().clone())
        .with_control_socket(&socket)
        .mount(
            &mountpoint,
            &MountConfig {
                allow_other: args.allow_other,
                fs_name: fs_name.clone(),
                threads: args.threads,
                link: link.clone(),
            },
        )
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    tracing::info!(source = %fs_name, mountpoint = %mountpoint.display(), cache = %cache_dir.display(), "mounted");
    // After the mount: remote snapshots resolve through it.
    let snapshotter = match &args.snapshotter {
        Some(socket) => Some(
            regfs_snapshotter::serve(
                &regfs_snapshotter::Config {
                    socket: socket.clone(),
                    root: args
                        .snapshotter_root
                        .clone()
                        .unwrap_or_else(|| cache_dir.join("snapshotter")),
                    mount_root: std::path::absolute(&mountpoint)?,
                    registry: registry_name.clone(),
                    on_remote: Some(on_remote),
                },
                rt.handle(),
            )
            .context("starting the snapshotter")?,
        ),
        None => None,
    };
    readiness::notify_ready(ready, &warnings);

    // The session thread ends when the kernel drops the mount (regfs unmount,
    // umount -l); a signal makes us detach it ourselves.
    let mut handed_over = false;
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
                // Under a supervisor the session also ends when the
                // supervisor hands the connection to the next server; it
                // still holds the mount then.
                if link.as_ref().is_some_and(|l| l.holds(&mountpoint).unwrap_or(false)) {
                    // The supervisor took the connections for the next
                    // server: leave every mount as it is.
                    tracing::info!("handed over to the next server");
                    handed_over = true;
                    return anyhow::Ok(());
                }
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
    if let Some(s) = snapshotter {
        s.close();
    }
    if let Some(e) = export {
        if handed_over {
            e.handed_over();
        } else {
            e.stop();
        }
    }
    if let Some(a) = als {
        if handed_over {
            a.session.detached();
        } else {
            a.stop();
        }
    }
    if own_socket {
        let _ = std::fs::remove_file(&socket);
    }
    // Do not wait for in-flight network tasks: the mount is gone.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The snapshotter's hook: a remote snapshot of image directory
/// `REPO@sha256:…` means containerd is about to start it, so its start-up
/// files are warmed (`Fs::warm_entrypoint_in_background`).
fn warm_on_remote(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> regfs_snapshotter::resolve::OnRemote {
    Arc::new(move |image_dir: &str| {
        let Some((repo, digest)) = image_dir.rsplit_once('@') else {
            return;
        };
        if let Ok(digest) = digest.parse::<regfs::digest::Digest>() {
            let _guard = rt.enter();
            fs.warm_entrypoint_in_background(repo, &digest);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> anyhow::Result<(Source, PathBuf)> {
        let cli = crate::cli::Cli::try_parse_from(argv)?;
        let crate::cli::Command::Mount(args) = cli.command else {
            panic!("not a mount")
        };
        source_and_mountpoint(&args)
    }

    #[test]
    fn positional_arguments_name_the_source_and_the_mountpoint() {
        let (s, m) = parse(&["regfs", "mount", "localhost:5000", "/mnt/reg"]).unwrap();
        assert!(matches!(s, Source::One(r, None) if r.name == "localhost:5000"));
        assert_eq!(m, PathBuf::from("/mnt/reg"));
        let (s, m) = parse(&["regfs", "mount", "--any-registry", "/mnt/reg"]).unwrap();
        assert!(matches!(s, Source::Any));
        assert_eq!(m, PathBuf::from("/mnt/reg"));
        // As mount(8) passes an fstab line: `any /mnt/reg fuse.regfs any_registry`.
        let argv = crate::argv::rewrite(
            [
                "/sbin/mount.fuse.regfs",
                "any",
                "/mnt/reg",
                "-o",
                "any_registry",
            ]
            .map(std::ffi::OsString::from)
            .to_vec(),
        )
        .unwrap();
        let argv: Vec<String> = argv
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .filter(|a| a != "--daemon")
            .collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (s, m) = parse(&argv).unwrap();
        assert!(matches!(s, Source::Any));
        assert_eq!(m, PathBuf::from("/mnt/reg"));
        for bad in [
            &[
                "regfs",
                "mount",
                "localhost:5000",
                "/mnt/reg",
                "--any-registry",
            ][..],
            &["regfs", "mount", "localhost:5000"][..],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
