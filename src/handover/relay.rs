//! One FUSE connection held by the supervisor, relayed to whichever server
//! process serves it now.
//!
//! Requests read from `/dev/fuse` are written whole to the server's
//! `SOCK_SEQPACKET` socket (fuser reads it as it would read `/dev/fuse`: one
//! message per read); replies come back the same way and are written to
//! `/dev/fuse`. Every request that wants a reply is kept until its reply
//! passes, so that when the server dies (or is replaced) the next one is
//! given them again, after a replay of the kernel's INIT request whose reply
//! is swallowed: the kernel sees one connection and, at worst, a pause.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, send, shutdown, MsgFlags, Shutdown};

/// `fuse_in_header`: len u32, opcode u32, unique u64, nodeid u64, uid, gid, pid u32, ...
const IN_HEADER: usize = 40;
/// `fuse_out_header`: len u32, error i32, unique u64.
const OUT_HEADER: usize = 16;
const FUSE_FORGET: u32 = 2;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_NOTIFY_REPLY: u32 = 41;
const FUSE_BATCH_FORGET: u32 = 42;
/// Big enough for any request: a 1 MiB write (the kernel's largest with
/// `max_pages` 256) and its header; fuser's buffer is larger still.
const BUF: usize = (16 << 20) + 4096;

/// A request the kernel waits on.
struct Pending {
    bytes: Arc<[u8]>,
    /// Given to the server serving now (false: queued for the next one).
    sent: bool,
}

struct State {
    /// The kernel's INIT request, replayed to every later server once
    /// answered (until then it is pending like any request).
    init: Option<Vec<u8>>,
    init_answered: bool,
    inflight: BTreeMap<u64, Pending>,
    /// Requests without a reply (forgets) that found no server.
    oneway: Vec<Arc<[u8]>>,
    server: Option<Arc<OwnedFd>>,
    /// The kernel dropped the connection (unmounted).
    gone: bool,
    /// Threads still reading replies from some server's socket.
    replying: usize,
}

/// A FUSE connection the supervisor holds for its mountpoint.
pub struct Connection {
    mountpoint: String,
    dev: File,
    state: Mutex<State>,
    changed: Condvar,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// End a server's session on `sock` the way the kernel ends one: a DESTROY
/// request for each of its dispatch threads (fuser's loop returns on it; no
/// more than [`DISMISS_THREADS`] threads are assumed). The socket stays open
/// for the answers (dropped: the kernel asked nothing) until the server
/// exits; one that does not is killed by the supervisor.
fn dismiss(sock: &OwnedFd) {
    for i in 0..DISMISS_THREADS {
        let mut m = vec![0u8; IN_HEADER];
        m[0..4].copy_from_slice(&(IN_HEADER as u32).to_ne_bytes());
        m[4..8].copy_from_slice(&FUSE_DESTROY.to_ne_bytes());
        m[8..16].copy_from_slice(&(u64::MAX - i).to_ne_bytes());
        if send(
            sock.as_raw_fd(),
            &m,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        )
        .is_err()
        {
            break;
        }
    }
}

/// Threads reading each direction of a connection: the kernel's requests
/// and a server's replies are relayed in parallel, as fuser dispatches them.
const RELAY_THREADS: usize = 1;

/// Dispatch threads a server may have (`--threads`).
const DISMISS_THREADS: u64 = 64;

impl Connection {
    /// Hold `dev`, a mount's `/dev/fuse`, and start reading it.
    pub fn start(mountpoint: String, dev: OwnedFd) -> Arc<Connection> {
        let c = Arc::new(Connection {
            mountpoint,
            dev: File::from(dev),
            state: Mutex::new(State {
                init: None,
                init_answered: false,
                inflight: BTreeMap::new(),
                oneway: Vec::new(),
                server: None,
                gone: false,
                replying: 0,
            }),
            changed: Condvar::new(),
        });
        for _ in 0..RELAY_THREADS {
            let reader = c.clone();
            std::thread::Builder::new()
                .name("regfs-relay-in".into())
                .spawn(move || reader.read_kernel())
                .expect("spawning a thread");
        }
        c
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &str {
        &self.mountpoint
    }

    /// Whether the kernel dropped the connection.
    pub fn is_gone(&self) -> bool {
        self.state.lock().unwrap().gone
    }

    /// Requests waiting for a reply.
    pub fn pending(&self) -> usize {
        self.state.lock().unwrap().inflight.len()
    }

    fn read_kernel(self: Arc<Self>) {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match (&self.dev).read(&mut buf) {
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                    _ => break, // ENODEV: unmounted
                },
            };
            if n < IN_HEADER {
                continue;
            }
            let bytes: Arc<[u8]> = buf[..n].into();
            let (opcode, unique) = (read_u32(&bytes, 4), read_u64(&bytes, 8));
            let oneway = matches!(
                opcode,
                FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_NOTIFY_REPLY
            );
            let server = {
                let mut s = self.state.lock().unwrap();
                if opcode == FUSE_INIT && s.init.is_none() {
                    s.init = Some(bytes.to_vec());
                }
                let server = s.server.clone();
                if oneway {
                    if server.is_none() && opcode != FUSE_INTERRUPT {
                        s.oneway.push(bytes.clone());
                    }
                } else {
                    s.inflight.insert(
                        unique,
                        Pending {
                            bytes: bytes.clone(),
                            sent: server.is_some(),
                        },
                    );
                }
                server
            };
            if let Some(sock) = server {
                // A dead server: the request stays pending for the next one.
                let _ = send(sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL);
            }
        }
        let mut s = self.state.lock().unwrap();
        s.gone = true;
        if let Some(sock) = s.server.take() {
            dismiss(&sock);
        }
        self.changed.notify_all();
    }

    /// Serve from `sock` from now on: replay INIT (when the kernel's INIT
    /// was already answered by an earlier server) and give it every request
    /// still waiting.
    pub fn attach(self: &Arc<Self>, sock: OwnedFd) -> io::Result<()> {
        let sock = Arc::new(sock);
        let init = {
            let s = self.state.lock().unwrap();
            s.init.clone().filter(|_| s.init_answered)
        };
        // The unique of the replayed INIT, whose answer is not passed on (0: none).
        let swallow = Arc::new(AtomicU64::new(0));
        if let Some(init) = &init {
            send(sock.as_raw_fd(), init, MsgFlags::MSG_NOSIGNAL)?;
            swallow.store(read_u64(init, 8), Ordering::SeqCst);
        }
        self.state.lock().unwrap().replying += RELAY_THREADS;
        for _ in 0..RELAY_THREADS {
            let (me, sock, swallow) = (self.clone(), sock.clone(), swallow.clone());
            std::thread::Builder::new()
                .name("regfs-relay-out".into())
                .spawn(move || me.read_server(&sock, &swallow))?;
        }
        let resend: Vec<Arc<[u8]>> = {
            let mut s = self.state.lock().unwrap();
            s.server = Some(sock.clone());
            let mut out = std::mem::take(&mut s.oneway);
            for p in s.inflight.values_mut() {
                p.sent = true;
                out.push(p.bytes.clone());
            }
            out
        };
        for r in resend {
            let _ = send(sock.as_raw_fd(), &r, MsgFlags::MSG_NOSIGNAL);
        }
        Ok(())
    }

    fn read_server(&self, sock: &Arc<OwnedFd>, swallow: &AtomicU64) {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => break,
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            if n < OUT_HEADER {
                continue;
            }
            let unique = read_u64(&buf, 8);
            if unique != 0
                && swallow
                    .compare_exchange(unique, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                // The new server's answer to the replayed INIT: the kernel
                // had its answer long ago.
                continue;
            }
            if unique != 0 {
                let mut s = self.state.lock().unwrap();
                let known = s.inflight.remove(&unique).is_some();
                if known && s.init.as_ref().is_some_and(|i| read_u64(i, 8) == unique) {
                    s.init_answered = true;
                }
                if s.inflight.values().all(|p| !p.sent) {
                    self.changed.notify_all();
                }
                if !known {
                    continue; // answered already (a request given twice)
                }
            }
            // ENOENT: the kernel gave up on the request (interrupted).
            let _ = (&self.dev).write(&buf[..n]);
        }
        let mut s = self.state.lock().unwrap();
        if s.server.as_ref().is_some_and(|c| Arc::ptr_eq(c, sock)) {
            s.server = None;
            for p in s.inflight.values_mut() {
                p.sent = false;
            }
        }
        s.replying -= 1;
        self.changed.notify_all();
    }

    /// Stop giving the server new requests: they wait for the next one.
    /// The server's socket, to [`Connection::dismiss`] once its answers are
    /// in ([`Connection::wait_answered`]).
    pub fn stop_sending(&self) -> Option<Arc<OwnedFd>> {
        self.state.lock().unwrap().server.take()
    }

    /// Wait until every request given to the server that had it is
    /// answered, until `deadline`.
    pub fn wait_answered(&self, deadline: Instant) {
        let mut s = self.state.lock().unwrap();
        while s.inflight.values().any(|p| p.sent) && !s.gone {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self.changed.wait_timeout(s, left).unwrap().0;
        }
    }

    /// End the session of the server that served `sock`; what it left
    /// unanswered goes to the next server.
    pub fn dismiss(&self, sock: &OwnedFd) {
        for p in self.state.lock().unwrap().inflight.values_mut() {
            p.sent = false;
        }
        dismiss(sock);
    }

    /// The server died. Replies it wrote before it died are still in its
    /// socket: they are passed on first (the reply threads read up to the
    /// socket's end, at most `limit`), so that only requests it never
    /// answered wait for the next server; given to it again, an answered
    /// one would be done twice.
    pub fn lost_server(&self, limit: Duration) {
        let t0 = Instant::now();
        let mut s = self.state.lock().unwrap();
        while s.replying > 0 {
            let left = limit.saturating_sub(t0.elapsed());
            if left.is_zero() {
                break;
            }
            s = self.changed.wait_timeout(s, left).unwrap().0;
        }
        if let Some(sock) = s.server.take() {
            let _ = shutdown(sock.as_raw_fd(), Shutdown::Both);
        }
        for p in s.inflight.values_mut() {
            p.sent = false;
        }
    }
}
