//! Messages between the supervisor and its server: one JSON value per
//! `SOCK_SEQPACKET` message, with at most one descriptor beside it
//! (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest control message.
const MAX_MESSAGE: usize = 64 * 1024;

/// A request of the server to its supervisor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Ask {
    /// "Do you hold the connection of this mountpoint?" Answered with
    /// [`Answer::Resumed`] and the socket to serve, or [`Answer::Mount`].
    Attach {
        /// The mountpoint, absolute.
        mountpoint: String,
    },
    /// "I mounted it: here is its `/dev/fuse`." Answered with
    /// [`Answer::Serve`] and the socket to serve.
    Adopt {
        /// The mountpoint, absolute.
        mountpoint: String,
    },
    /// "Do you hold the connection of this mountpoint?" (before the server
    /// looks at the mountpoint: a held one would wait for the server itself).
    Holds {
        /// The mountpoint, absolute.
        mountpoint: String,
    },
    /// "Replace me with a new server" (`regfs restart`).
    Restart,
}

/// The supervisor's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The connection is live: serve the socket sent with this answer.
    Resumed,
    /// No such connection: mount it and send [`Ask::Adopt`].
    Mount,
    /// Serve the socket sent with this answer.
    Serve,
    /// The restart is under way: this server is asked to go once its
    /// requests are answered.
    Restarting,
    /// The answer to [`Ask::Holds`].
    Held {
        /// Whether the supervisor holds a live connection there.
        yes: bool,
    },
    /// Refused, and why.
    Refused {
        /// The reason, for the user.
        reason: String,
    },
}

/// Send `msg` with `fd` beside it.
pub fn send<T: Serialize>(sock: RawFd, msg: &T, fd: Option<RawFd>) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: Vec<ControlMessage> = match fd {
        Some(f) => {
            fds = [f];
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => vec![],
    };
    sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receive one message and the descriptor sent beside it; `None` at the
/// peer's end.
pub fn recv<T: DeserializeOwned>(sock: RawFd) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for f in fds {
                    // SAFETY: the kernel just gave us this descriptor.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        (msg.bytes, fd)
    };
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fd)))
}

/// Receive a descriptor sent with any payload (fusermount3's protocol).
pub fn recv_fd_raw(sock: RawFd) -> io::Result<Option<RawFd>> {
    let mut buf = [0u8; 8];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            return Ok(fds.first().copied());
        }
    }
    Ok(None)
}

/// A connected pair of `SOCK_SEQPACKET` sockets, close-on-exec, with send
/// buffers large enough for the largest FUSE message (a 1 MiB write or read
/// reply and its header).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    for s in [&a, &b] {
        let size = 8 << 20;
        if setsockopt(s, sockopt::SndBufForce, &size).is_err() {
            setsockopt(s, sockopt::SndBuf, &size)?;
        }
        if setsockopt(s, sockopt::RcvBufForce, &size).is_err() {
            setsockopt(s, sockopt::RcvBuf, &size)?;
        }
    }
    Ok((a, b))
}

/// Let `fd` survive an exec (for the descriptor a child inherits).
pub fn inheritable(fd: &OwnedFd) -> io::Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    Ok(())
}
