//! `--daemon`: run the mount in a detached child and return once it is ready.
//!
//! The parent re-executes itself without a terminal (new session, log to a
//! file), hands over the password through a pipe on the child's stdin, and
//! waits on a readiness pipe: the child writes `ok` (and any warnings, a line
//! each, which the parent prints) once the kernel mount answers, or exits with
//! an error the parent reports.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub const READY_FD_ENV: &str = "REGFS_READY_FD";

/// In the daemon child: the readiness pipe, if we are one.
pub fn ready_pipe() -> Option<std::fs::File> {
    let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: the parent created this descriptor for us and nothing else owns it.
    Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Tell the parent the mount is ready, with `warnings` (one line each) for
/// it to print on its terminal: the daemon's own standard error goes nowhere.
pub fn notify_ready(pipe: Option<std::fs::File>, warnings: &[String]) {
    if let Some(mut p) = pipe {
        let mut msg = b"ok".to_vec();
        for w in warnings {
            msg.push(b'\n');
            msg.extend(w.replace('\n', " ").as_bytes());
        }
        let _ = p.write_all(&msg);
    }
}

/// Start the daemon child and wait until it is mounted (or failed).
pub fn spawn(password: Option<&str>, log_hint: &str) -> anyhow::Result<()> {
    let (r, w) = nix::unistd::pipe().context("pipe")?;
    let exe = std::env::current_exe().context("locating the regfs binary")?;
    let args: Vec<_> = crate::argv::effective()
        .iter()
        .skip(1)
        .filter(|a| *a != "--daemon")
        .collect();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(READY_FD_ENV, w.as_raw_fd().to_string())
        .stdin(if password.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let rfd = r.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::close(rfd);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    drop(w);
    if let (Some(pw), Some(mut stdin)) = (password, child.stdin.take()) {
        stdin.write_all(pw.as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let mut reader = std::fs::File::from(r);
    let mut buf = Vec::new();
    let _ = reader.read_to_end(&mut buf);
    if let Some(rest) = buf.strip_prefix(b"ok") {
        for w in String::from_utf8_lossy(rest)
            .lines()
            .filter(|l| !l.is_empty())
        {
            eprintln!("regfs: warning: {w}");
        }
        println!("regfs: mounted (daemon pid {})", child.id());
        return Ok(());
    }
    let status = child.wait()?;
    bail!("the daemon failed to mount ({status}); see {log_hint}")
}
