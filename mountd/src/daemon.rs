//! `--daemon`: run the mount in a detached child and return once it is ready.
//!
//! The parent re-executes itself without a terminal (new session, log to a
//! file), hands over the password through a pipe on the child's stdin, and
//! waits on a readiness pipe ([`crate::readiness`]): the child writes `ok`
//! (and any warnings, a line each, which the parent prints) once the kernel
//! mount answers, or exits with an error the parent reports.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

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
        .env(crate::readiness::READY_FD_ENV, w.as_raw_fd().to_string())
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
