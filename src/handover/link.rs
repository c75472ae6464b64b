//! The server's side: a process started by a supervisor gets its mounts'
//! connections through [`Link`], from the descriptor named by
//! [`FD_ENV`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::wire::{self, Answer, Ask};

/// The environment variable naming the server's end of the supervisor's socket.
pub const FD_ENV: &str = "REGFS_SUPERVISOR_FD";
/// The directory of state kept across servers (inode journals).
pub const STATE_ENV: &str = "REGFS_STATE_DIR";
/// Which server this is: 0 for the first, one more for each that followed.
pub const GENERATION_ENV: &str = "REGFS_GENERATION";

/// A server's connection to its supervisor.
#[derive(Debug)]
pub struct Link {
    sock: Mutex<OwnedFd>,
    generation: u64,
    state_dir: PathBuf,
}

fn env_var(name: &str) -> io::Result<String> {
    std::env::var(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{FD_ENV} is set but {name} is not"),
        )
    })
}

impl Link {
    /// The link this process was started with, if any. The variables are
    /// removed, so that processes it starts do not take them for theirs.
    pub fn from_env() -> io::Result<Option<Link>> {
        let Ok(fd) = std::env::var(FD_ENV) else {
            return Ok(None);
        };
        let fd: RawFd = fd
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{FD_ENV}={fd}")))?;
        let state_dir = PathBuf::from(env_var(STATE_ENV)?);
        let generation = env_var(GENERATION_ENV)?.parse().unwrap_or(0);
        // SAFETY: the supervisor passed this descriptor for us to own; it
        // is checked to be a socket by the first exchange.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            &sock,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        for v in [FD_ENV, STATE_ENV, GENERATION_ENV] {
            // SAFETY: called at start-up, before other threads read the environment.
            unsafe { std::env::remove_var(v) };
        }
        Ok(Some(Link {
            sock: Mutex::new(sock),
            generation,
            state_dir,
        }))
    }

    /// Which server this is (0: the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where state that outlives this process is kept.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn ask(&self, ask: &Ask, fd: Option<RawFd>) -> io::Result<(Answer, Option<OwnedFd>)> {
        let sock = self.sock.lock().unwrap();
        wire::send(sock.as_raw_fd(), ask, fd)?;
        match wire::recv(sock.as_raw_fd())? {
            Some(a) => Ok(a),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the supervisor is gone",
            )),
        }
    }

    /// Whether the supervisor holds a live connection at `mountpoint` (this
    /// process replaces one that served it): do not look at the mountpoint,
    /// it would wait on this very process.
    pub fn holds(&self, mountpoint: &Path) -> io::Result<bool> {
        let ask = Ask::Holds {
            mountpoint: mountpoint.to_string_lossy().into_owned(),
        };
        match self.ask(&ask, None)?.0 {
            Answer::Held { yes } => Ok(yes),
            other => Err(unexpected(&other)),
        }
    }

    /// The socket to serve `mountpoint` from: the live connection the
    /// supervisor holds (`true`: resumed), or a new mount made by `mount`
    /// and handed to the supervisor.
    pub fn connect(
        &self,
        mountpoint: &Path,
        mount: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<(OwnedFd, bool)> {
        let mp = mountpoint.to_string_lossy().into_owned();
        match self.ask(
            &Ask::Attach {
                mountpoint: mp.clone(),
            },
            None,
        )? {
            (Answer::Resumed, Some(sock)) => return Ok((sock, true)),
            (Answer::Mount, _) => {}
            (other, _) => return Err(unexpected(&other)),
        }
        let dev = mount()?;
        match self.ask(&Ask::Adopt { mountpoint: mp }, Some(dev.as_raw_fd()))? {
            (Answer::Serve, Some(sock)) => Ok((sock, false)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Ask for this server to be replaced by a new one (same binary path,
    /// same arguments). `Err` with the supervisor's reason if it refuses.
    pub fn restart(&self) -> io::Result<()> {
        match self.ask(&Ask::Restart, None)?.0 {
            Answer::Restarting => Ok(()),
            Answer::Refused { reason } => Err(io::Error::other(reason)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(a: &Answer) -> io::Error {
    match a {
        Answer::Refused { reason } => io::Error::other(reason.clone()),
        other => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer from the supervisor: {other:?}"),
        ),
    }
}
