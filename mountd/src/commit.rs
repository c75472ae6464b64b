//! The client commands that talk to a daemon's control socket:
//! `regfs commit`, `regfs export new`, `regfs status`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::cli::{CommitArgs, ExportNewArgs, StatusArgs};

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

/// Send `req`, call `on_progress` for progress lines, return the result.
pub(crate) fn request(
    socket: &Path,
    req: &Value,
    on_progress: &mut dyn FnMut(&Value),
) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the regfs daemon at {}", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    for l in BufReader::new(s).lines() {
        let v: Value = serde_json::from_str(&l?)?;
        if let Some(p) = v.get("progress") {
            on_progress(p);
            continue;
        }
        if v["ok"].as_bool() == Some(true) {
            return Ok(v["result"].clone());
        }
        bail!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the daemon reported an error")
        );
    }
    bail!("the daemon closed the connection without an answer")
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// `regfs commit EXPORTDIR/NAME:TAG`.
pub fn commit(args: CommitArgs) -> anyhow::Result<()> {
    let (socket, entry) = locate(&args.path, args.control.as_deref())?;
    let req = json!({
        "op": "commit",
        "entry": entry,
        "compression": args.compression,
        "docker": args.docker.then_some(true),
        "source_date_epoch": args.source_date_epoch,
    });
    let bar = crate::prefetch::bar(args.quiet);
    let mut last_phase = String::new();
    let mut show = |p: &Value| {
        let phase = p["phase"].as_str().unwrap_or("").to_string();
        let (done, total) = if phase == "pack" {
            (
                p["packed"].as_u64().unwrap_or(0),
                p["content_total"].as_u64().unwrap_or(0),
            )
        } else {
            (
                p["sent"].as_u64().unwrap_or(0),
                p["push_total"].as_u64().unwrap_or(0),
            )
        };
        if phase != last_phase {
            if bar.is_hidden() && !args.quiet {
                // Not a terminal: one line per phase.
                eprintln!("{entry}: {phase}…");
            }
            bar.reset();
        }
        bar.set_message(format!("{entry} {phase:>4}"));
        bar.set_length(total);
        bar.set_position(done.min(total));
        last_phase = phase;
    };
    let r = request(&socket, &req, &mut show);
    bar.finish_and_clear();
    let r = r?;
    println!(
        "pushed {} {} (layer {}, {:.1} MiB; {} blob(s) uploaded, {} mounted, {} present)",
        r["reference"].as_str().unwrap_or(""),
        r["manifest"].as_str().unwrap_or(""),
        r["layer"].as_str().unwrap_or(""),
        mib(r["layer_size"].as_u64().unwrap_or(0)),
        r["uploaded"],
        r["mounted"],
        r["present"],
    );
    Ok(())
}

/// `regfs export new EXPORTDIR/NAME:TAG [--from REF]`.
pub fn export_new(args: ExportNewArgs) -> anyhow::Result<()> {
    let (socket, entry) = locate(&args.path, args.control.as_deref())?;
    let r = request(
        &socket,
        &json!({"op": "new", "entry": entry, "from": args.from}),
        &mut |_| {},
    )?;
    match r["base"]["digest"].as_str() {
        Some(d) => println!("{entry}: from {} ({d})", args.from.as_deref().unwrap_or("")),
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

/// `regfs status MOUNTPOINT|EXPORTDIR`.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let socket = socket_for(args.path.as_deref(), args.control.as_deref())?;
    let r = request(&socket, &json!({"op": "status"}), &mut |_| {})?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    crate::status::print_read_only(&r);
    if r["export"].as_bool() == Some(false) {
        return Ok(());
    }
    println!();
    println!("{:<32} {:<24} LAST COMMIT", "ENTRY", "FROM");
    for e in r["entries"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<24} {}",
            e["reference"].as_str().unwrap_or(""),
            e["from"].as_str().unwrap_or("-"),
            e["last_commit"]["manifest"].as_str().unwrap_or("-"),
        );
    }
    for p in r["in_flight"].as_array().into_iter().flatten() {
        println!(
            "committing {}: {} ({:.1}/{:.1} MiB packed, {:.1}/{:.1} MiB pushed)",
            p["entry"].as_str().unwrap_or(""),
            p["phase"].as_str().unwrap_or(""),
            mib(p["packed"].as_u64().unwrap_or(0)),
            mib(p["content_total"].as_u64().unwrap_or(0)),
            mib(p["sent"].as_u64().unwrap_or(0)),
            mib(p["push_total"].as_u64().unwrap_or(0)),
        );
    }
    Ok(())
}
