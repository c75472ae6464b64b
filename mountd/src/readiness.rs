//! The readiness pipe between a `--daemon` parent and its child: the parent
//! passes the pipe's descriptor in [`READY_FD_ENV`]; the child writes `ok`
//! (then any warnings, a line each) once its mount answers.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

/// The environment variable naming the readiness pipe's descriptor.
pub const READY_FD_ENV: &str = "REGFS_READY_FD";

/// Whether this process is a `--daemon` child (its arguments are already
/// the effective ones).
pub fn is_daemon_child() -> bool {
    std::env::var_os(READY_FD_ENV).is_some()
}

/// In the daemon child: the readiness pipe, if we are one.
pub fn ready_pipe() -> Option<std::fs::File> {
    let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: the parent created this descriptor for us and nothing else owns it.
    Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// In a supervisor: the readiness pipe's descriptor, to hand to its first
/// server (which says when the mount is ready), removed from the environment.
pub fn ready_fd() -> Option<OwnedFd> {
    ready_pipe().map(OwnedFd::from)
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
