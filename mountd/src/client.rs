//! The control-socket client: finding a daemon's socket from a path, sending
//! a [`Request`] and reading its typed answer ([`crate::protocol`]); and the
//! commands that are one request each: `regfs commit`, `regfs export new`,
//! `regfs status`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use regfs::export::EntryMeta;
use serde::de::DeserializeOwned;

use crate::cli::{CommitArgs, ExportNewArgs, RestartArgs, StatusArgs, TraceArgs, TraceStopArgs};
use crate::protocol::{Answer, CommitOutcome, CommitProgress, Line, Request, Status};

/// The xattr of an export mount's top directory that names its socket.
const SOCKET_XATTR: &str = "user.regfs.control";

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of buf.len() bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// Split `EXPORTDIR/team/tool:latest` into (socket, "team/tool:latest") by
/// finding the export mount's top directory among the ancestors. With
/// `--control SOCKET`, a path outside any export directory is taken as the
/// entry name itself.
fn locate(path: &Path, control: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    let abs = std::path::absolute(path)?;
    let comps: Vec<_> = abs.components().collect();
    for i in (1..comps.len()).rev() {
        let dir: PathBuf = comps[..i].iter().collect();
        if let Some(b) = getxattr(&dir, SOCKET_XATTR) {
            let rest: PathBuf = comps[i..].iter().collect();
            let entry = rest
                .to_str()
                .ok_or_else(|| anyhow!("{}: not UTF-8", path.display()))?
                .to_string();
            let socket = control
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(std::ffi::OsStr::from_bytes(&b)));
            return Ok((socket, entry));
        }
    }
    if let (Some(c), Some(name)) = (control, path.to_str()) {
        return Ok((c.to_path_buf(), name.to_string()));
    }
    bail!(
        "{} is not inside a regfs export directory (start one with `regfs mount REGISTRY MNT --export EXPORTDIR`)",
        path.display()
    )
}

/// The daemon closed the connection before its answer (it exited).
#[derive(Debug)]
pub(crate) struct NoAnswer;

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the daemon closed the connection without an answer")
    }
}

impl std::error::Error for NoAnswer {}

/// Send `req`, call `on_progress` for progress lines (of type `P`), return
/// the result (of type `R`).
pub(crate) fn request<P: DeserializeOwned, R: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    on_progress: &mut dyn FnMut(P),
) -> anyhow::Result<R> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the regfs daemon at {}", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    for l in BufReader::new(s).lines() {
        let l = l?;
        let line: Line<P, R> = serde_json::from_str(&l)
            .with_context(|| format!("an answer line the daemon sent: {l}"))?;
        match line {
            Line::Progress { progress } => on_progress(progress),
            Line::Answer(Answer {
                ok: true,
                result: Some(r),
                ..
            }) => return Ok(r),
            Line::Answer(a) => bail!(
                "{}",
                a.error.as_deref().unwrap_or("the daemon reported an error")
            ),
        }
    }
    Err(NoAnswer.into())
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// `regfs commit EXPORTDIR/NAME:TAG`.
pub fn commit(args: CommitArgs) -> anyhow::Result<()> {
    let (socket, entry) = locate(&args.path, args.control.as_deref())?;
    let req = Request::Commit {
        entry: entry.clone(),
        compression: args.compression.clone(),
        docker: args.docker.then_some(true),
        source_date_epoch: args.source_date_epoch,
    };
    let bar = crate::progress_bar::bar(args.quiet);
    let mut last_phase = String::new();
    let mut show = |p: CommitProgress| {
        let (done, total) = if p.phase == "pack" {
            (p.packed, p.content_total)
        } else {
            (p.sent, p.push_total)
        };
        if p.phase != last_phase {
            if bar.is_hidden() && !args.quiet {
                // Not a terminal: one line per phase.
                eprintln!("{entry}: {}…", p.phase);
            }
            bar.reset();
        }
        bar.set_message(format!("{entry} {:>4}", p.phase));
        bar.set_length(total);
        bar.set_position(done.min(total));
        last_phase = p.phase;
    };
    let r = request::<CommitProgress, CommitOutcome>(&socket, &req, &mut show);
    bar.finish_and_clear();
    let r = r?;
    println!(
        "pushed {} {} (layer {}, {:.1} MiB; {} blob(s) uploaded, {} mounted, {} present)",
        r.reference,
        r.manifest,
        r.layer,
        mib(r.layer_size),
        r.uploaded,
        r.mounted,
        r.present,
    );
    Ok(())
}

/// `regfs export new EXPORTDIR/NAME:TAG [--from REF]`.
pub fn export_new(args: ExportNewArgs) -> anyhow::Result<()> {
    let (socket, entry) = locate(&args.path, args.control.as_deref())?;
    let req = Request::New {
        entry: entry.clone(),
        from: args.from.clone(),
    };
    let r: EntryMeta = request(&socket, &req, &mut |_: ()| {})?;
    match r.base {
        Some(b) => println!(
            "{entry}: from {} ({})",
            args.from.as_deref().unwrap_or(""),
            b.digest
        ),
        None => println!("{entry}: empty"),
    }
    Ok(())
}

/// The control socket of the daemon serving `path` (a mountpoint or export
/// directory, or a path inside one), or `control` if given.
pub(crate) fn socket_for(path: Option<&Path>, control: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match (control, path) {
        (Some(c), _) => c.to_path_buf(),
        (None, Some(p)) => {
            let p = std::path::absolute(p)?;
            getxattr(&p, SOCKET_XATTR)
                .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
                .or_else(|| locate(&p.join("x"), None).ok().map(|(s, _)| s))
                .ok_or_else(|| {
                    anyhow!(
                        "{} is not a regfs mountpoint or export directory",
                        p.display()
                    )
                })?
        }
        (None, None) => {
            bail!("which daemon? give its mountpoint (regfs status MOUNTPOINT) or --control SOCKET")
        }
    })
}

/// `regfs restart MOUNTPOINT`: ask for a new server, then wait until it
/// answers (its socket is named by the mount again, with a new pid).
pub fn restart(args: RestartArgs) -> anyhow::Result<()> {
    let socket = socket_for(args.path.as_deref(), args.control.as_deref())?;
    let old = request::<(), Status>(&socket, &Request::Status, &mut |_: ()| {})?.pid;
    let t0 = std::time::Instant::now();
    match request::<(), u32>(&socket, &Request::Restart, &mut |_: ()| {}) {
        Ok(_) => {}
        // The old server may be gone before its answer is written.
        Err(e) if e.is::<NoAnswer>() => {}
        Err(e) => return Err(e),
    }
    let deadline = t0 + std::time::Duration::from_secs(60);
    loop {
        let now = socket_for(args.path.as_deref(), args.control.as_deref());
        if let Ok(s) = now {
            if let Ok(st) = request::<(), Status>(&s, &Request::Status, &mut |_: ()| {}) {
                if st.pid != old {
                    println!(
                        "regfs: restarted (server pid {old} -> {}, generation {}) in {} ms",
                        st.pid,
                        st.generation.unwrap_or(0),
                        t0.elapsed().as_millis()
                    );
                    return Ok(());
                }
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("the new server did not answer within 60 s; see the daemon's log");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `regfs trace start MOUNTPOINT REF`.
pub fn trace_start(args: TraceArgs) -> anyhow::Result<()> {
    let socket = socket_for(Some(&args.mountpoint), args.control.as_deref())?;
    let req = Request::TraceStart {
        reference: args.reference.clone(),
    };
    let digest: String = request(&socket, &req, &mut |_: ()| {})?;
    eprintln!("regfs: tracing {} ({digest})", args.reference);
    Ok(())
}

/// `regfs trace stop MOUNTPOINT REF [--publish]`: the paths, one per line,
/// on stdout; with `--publish`, also pushed next to the image.
pub fn trace_stop(args: TraceStopArgs) -> anyhow::Result<()> {
    let TraceStopArgs {
        trace: args,
        publish,
    } = args;
    let socket = socket_for(Some(&args.mountpoint), args.control.as_deref())?;
    let req = Request::TraceStop {
        reference: args.reference.clone(),
    };
    let paths: Vec<String> = request(&socket, &req, &mut |_: ()| {})?;
    let mut out = std::io::stdout().lock();
    for p in &paths {
        writeln!(out, "{p}")?;
    }
    eprintln!("regfs: {} file(s) opened", paths.len());
    if publish {
        let req = Request::PrefetchListPush {
            reference: args.reference.clone(),
            paths,
        };
        let artifact: String = request(&socket, &req, &mut |_: ()| {})?;
        eprintln!(
            "regfs: published as the prefetch list of {} (artifact {artifact})",
            args.reference
        );
    }
    Ok(())
}

/// `regfs status MOUNTPOINT|EXPORTDIR`.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let socket = socket_for(args.path.as_deref(), args.control.as_deref())?;
    let r: Status = request(&socket, &Request::Status, &mut |_: ()| {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    crate::status::print_read_only(&r);
    if !r.export {
        return Ok(());
    }
    println!();
    println!("{:<32} {:<24} LAST COMMIT", "ENTRY", "FROM");
    for e in &r.entries {
        println!(
            "{:<32} {:<24} {}",
            e.reference,
            e.from.as_deref().unwrap_or("-"),
            e.last_commit
                .as_ref()
                .map(|c| c.manifest.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    for p in &r.in_flight {
        println!(
            "committing {}: {} ({:.1}/{:.1} MiB packed, {:.1}/{:.1} MiB pushed)",
            p.entry,
            p.phase,
            mib(p.packed),
            mib(p.content_total),
            mib(p.sent),
            mib(p.push_total),
        );
    }
    Ok(())
}
