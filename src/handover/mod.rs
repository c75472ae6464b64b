//! Restart without unmounting: a small supervisor process holds each
//! mount's `/dev/fuse` and relays it to the server process that serves it
//! now, so that the server can be replaced (`regfs restart`, an upgrade)
//! or die (kill -9, a panic) while readers see at most a pause.
//!
//! ```text
//! kernel ──/dev/fuse── supervisor ──SOCK_SEQPACKET── server (fuser session)
//!                      (relay::Connection per mount)   (link::Link)
//! ```
//!
//! The server mounts as usual but hands the descriptor to the supervisor
//! ([`link::Link::connect`]) and serves the socket it gets back; fuser reads
//! it as it reads `/dev/fuse`. The supervisor keeps every request until it
//! is answered and the kernel's INIT request; a new server is given INIT
//! (its answer swallowed) and the unanswered requests. What the kernel
//! remembers across the switch (inode numbers, file handles) the server
//! recovers from its state directory (see `crate::fs::journal`) and from the
//! requests themselves. This module knows nothing of fuser.

pub mod devmount;
pub mod holdings;
pub mod link;
pub mod relay;
pub mod wire;

/// The version of what a server leaves for the next one in its state
/// directory; a server refuses a directory written with another.
pub const STATE_VERSION: u32 = 1;

/// The file in the state directory that carries [`STATE_VERSION`].
pub const VERSION_FILE: &str = "version";

/// Whether this binary can take over state directory `dir`: `Err` says why not.
pub fn check_state(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join(VERSION_FILE);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(STATE_VERSION) => Ok(()),
            Ok(other) => Err(format!(
                "the running server keeps state version {other}; this binary reads version {STATE_VERSION}: unmount and mount again to switch"
            )),
            Err(_) => Err(format!("{}: not a state version: {v:?}", path.display())),
        },
    }
}

/// Record [`STATE_VERSION`] in `dir`.
pub fn write_state_version(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(VERSION_FILE), format!("{STATE_VERSION}\n"))
}
