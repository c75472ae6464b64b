//! The supervisor's side: the connections it holds, by mountpoint, and its
//! answers to the server it started.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::relay::Connection;
use super::wire::{self, Answer, Ask};

/// Every connection the supervisor holds.
#[derive(Default)]
pub struct Holdings {
    conns: Mutex<HashMap<String, Arc<Connection>>>,
}

impl Holdings {
    /// The connections the kernel still holds (not unmounted).
    pub fn live(&self) -> Vec<Arc<Connection>> {
        let mut c = self.conns.lock().unwrap();
        c.retain(|_, conn| !conn.is_gone());
        c.values().cloned().collect()
    }

    fn held(&self, mountpoint: &str) -> Option<Arc<Connection>> {
        self.live()
            .into_iter()
            .find(|c| c.mountpoint() == mountpoint)
    }

    /// Answer the server on `sock` until it goes; `restart` decides on a
    /// restart request (`Err`: the reason it is refused); `attached` is
    /// called each time the server takes a connection.
    pub fn serve(
        &self,
        sock: &OwnedFd,
        restart: &dyn Fn() -> Result<(), String>,
        attached: &dyn Fn(),
    ) -> io::Result<()> {
        let fd = sock.as_raw_fd();
        while let Some((ask, dev)) = wire::recv::<Ask>(fd)? {
            match ask {
                Ask::Holds { mountpoint } => {
                    let yes = self.held(&mountpoint).is_some();
                    wire::send(fd, &Answer::Held { yes }, None)?;
                }
                Ask::Attach { mountpoint } => match self.held(&mountpoint) {
                    Some(conn) => {
                        let (ours, theirs) = wire::seqpacket_pair()?;
                        wire::send(fd, &Answer::Resumed, Some(theirs.as_raw_fd()))?;
                        conn.attach(ours)?;
                        attached();
                    }
                    None => wire::send(fd, &Answer::Mount, None)?,
                },
                Ask::Adopt { mountpoint } => {
                    let Some(dev) = dev else {
                        let reason = "adopt without a /dev/fuse descriptor".to_string();
                        wire::send(fd, &Answer::Refused { reason }, None)?;
                        continue;
                    };
                    let conn = Connection::start(mountpoint.clone(), dev);
                    self.conns.lock().unwrap().insert(mountpoint, conn.clone());
                    let (ours, theirs) = wire::seqpacket_pair()?;
                    wire::send(fd, &Answer::Serve, Some(theirs.as_raw_fd()))?;
                    conn.attach(ours)?;
                    attached();
                }
                Ask::Restart => {
                    let answer = match restart() {
                        Ok(()) => Answer::Restarting,
                        Err(reason) => Answer::Refused { reason },
                    };
                    wire::send(fd, &answer, None)?;
                }
            }
        }
        Ok(())
    }

    /// Take every connection from the server: no new requests reach it,
    /// then, once it answered what it has on every connection (at most
    /// `limit`), its sessions are ended. All connections are waited for
    /// before any session ends: the server exits when its first session
    /// does, and would cut what the others are still doing. The time
    /// waited.
    pub fn drain(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let conns = self.live();
        let socks: Vec<_> = conns.iter().map(|c| c.stop_sending()).collect();
        for c in &conns {
            c.wait_answered(t0 + limit);
        }
        let waited = t0.elapsed();
        for (c, sock) in conns.iter().zip(socks) {
            if let Some(sock) = sock {
                c.dismiss(&sock);
            }
        }
        waited
    }

    /// The server died: what it answered is passed on, the rest waits for
    /// the next one (see [`Connection::lost_server`]).
    pub fn lost_server(&self) {
        for c in self.live() {
            c.lost_server(Duration::from_secs(2));
        }
    }

    /// Requests waiting for a reply, over every connection.
    pub fn pending(&self) -> usize {
        self.live().iter().map(|c| c.pending()).sum()
    }
}
