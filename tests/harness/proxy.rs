//! A fault-injecting HTTP/1.1 proxy on loopback, between regfs and the real
//! registry (plain std threads, no async runtime).
//!
//! ```ignore
//! let proxy = Proxy::start(&reg.host_port());
//! let m = Mount::with_args(&proxy.addr(), args, None);
//! proxy.set(Rule::new(Fault::ResetAfter(100_000)).blobs().times(1));
//! // … read through the mount …
//! proxy.clear();
//! ```
//!
//! Each client request is forwarded on a fresh upstream connection as
//! HTTP/1.0 (so the registry never chunks and closes at the end of the body);
//! the answer goes back as HTTP/1.1 with `Content-Length` framing, so the
//! client keeps its connection alive like with the real registry. Rules are
//! checked in order; the first that matches a request applies its fault, the
//! rest pass through. Rules can be changed at any time, from any thread.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What happens to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward unchanged.
    Pass,
    /// Forward the headers and this many body bytes, then reset the
    /// connection (RST, not FIN).
    ResetAfter(u64),
    /// Forward the headers and this many body bytes (`None`: send nothing
    /// at all, not even headers), then keep the socket open and silent for
    /// `STALL_FOR`.
    Stall(Option<u64>),
    /// Forward, writing `chunk` body bytes every `every`.
    Drip { chunk: usize, every: Duration },
    /// Forward the headers (full `Content-Length`) and only the first half
    /// of the body, then close cleanly (FIN).
    TruncateHalf,
    /// Forward with the body byte at this offset (modulo the body length)
    /// XORed with 0x01.
    FlipByte(u64),
    /// Answer with this status, without asking the registry.
    Status(u16),
    /// Answer 429 with `Retry-After: <secs>`.
    TooMany { retry_after: u64 },
    /// Answer 307 to the same path with a new query, forever.
    RedirectLoop,
    /// Answer 401 with a Basic challenge.
    Unauthorized,
    /// Answer 200 with this body and `Content-Type` (and no
    /// `Docker-Content-Digest`), without asking the registry.
    Body {
        bytes: Arc<Vec<u8>>,
        content_type: String,
    },
}

/// How long [`Fault::Stall`] holds a connection silent.
pub const STALL_FOR: Duration = Duration::from_secs(60);

/// Which requests a fault applies to.
#[derive(Clone, Debug)]
pub struct Rule {
    pub fault: Fault,
    /// Only `GET`/`HEAD` … of this method (default: `GET`).
    pub method: Option<String>,
    /// Only paths containing `/blobs/`.
    pub blobs_only: bool,
    /// Only paths containing `/manifests/`.
    pub manifests_only: bool,
    /// Only paths containing this string (a digest, a tag, a repository).
    pub path_contains: Option<String>,
    /// Let this many matching requests pass first.
    pub skip: u64,
    /// Apply to at most this many matching requests (after `skip`), then pass.
    pub times: Option<u64>,
    matched: u64,
}

impl Rule {
    /// `fault` for every GET.
    pub fn new(fault: Fault) -> Rule {
        Rule {
            fault,
            method: Some("GET".into()),
            blobs_only: false,
            manifests_only: false,
            path_contains: None,
            skip: 0,
            times: None,
            matched: 0,
        }
    }
    /// Only blob requests.
    pub fn blobs(mut self) -> Rule {
        self.blobs_only = true;
        self
    }
    /// Only manifest requests.
    pub fn manifests(mut self) -> Rule {
        self.manifests_only = true;
        self
    }
    /// Only paths containing `s` (e.g. a digest).
    pub fn path(mut self, s: &str) -> Rule {
        self.path_contains = Some(s.to_string());
        self
    }
    /// At most `n` matching requests.
    pub fn times(mut self, n: u64) -> Rule {
        self.times = Some(n);
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && (!self.blobs_only || path.contains("/blobs/"))
            && (!self.manifests_only || path.contains("/manifests/"))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|s| path.contains(s))
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The fault applied (`Pass` when no rule matched).
    pub fault: String,
    /// When it arrived.
    pub at: Instant,
}

struct Shared {
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    requests: AtomicU64,
    body_bytes: AtomicU64,
    stop: AtomicBool,
}

/// The proxy; stops accepting on drop.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = serve(&s, conn);
                    });
                }
            })
            .expect("start the proxy thread");
        Proxy { addr, shared }
    }

    /// `127.0.0.1:PORT`, to give regfs instead of the registry.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Replace all rules with `rule`.
    pub fn set(&self, rule: Rule) {
        *lock(&self.shared.rules) = vec![rule];
    }

    /// Add `rule` after the existing ones.
    pub fn add(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Pass everything through from now on.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Response body bytes sent to the client so far.
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::Relaxed)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// Requests so far whose path contains `s`.
    pub fn seen_path(&self, s: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|r| r.path.contains(s))
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr); // wake accept()
    }
}

/// A parsed request or response head.
struct Head {
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn content_length(&self) -> Option<u64> {
        self.get("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Reads a head (request or status line and headers); `None` at a clean EOF.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut first = String::new();
    loop {
        first.clear();
        if r.read_line(&mut first)? == 0 {
            return Ok(None);
        }
        if !first.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        first: first.trim_end().to_string(),
        headers,
    }))
}

fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "proxy-connection",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn reset(conn: &TcpStream) {
    // SO_LINGER with a zero timeout: close() sends RST.
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn pick(s: &Shared, method: &str, path: &str) -> Fault {
    let mut rules = lock(&s.rules);
    for r in rules.iter_mut() {
        if !r.matches(method, path) {
            continue;
        }
        r.matched += 1;
        if r.matched <= r.skip {
            return Fault::Pass;
        }
        if r.times.is_some_and(|t| r.matched - r.skip > t) {
            continue;
        }
        return r.fault.clone();
    }
    Fault::Pass
}

fn canned(conn: &mut TcpStream, status: &str, extra: &str, body: &[u8]) -> io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    conn.flush()
}

/// Serves one client connection (many requests, keep-alive).
fn serve(s: &Shared, conn: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    while let Some(req) = read_head(&mut reader)? {
        let mut parts = req.first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut body = vec![0u8; req.content_length().unwrap_or(0) as usize];
        reader.read_exact(&mut body)?;
        s.requests.fetch_add(1, Ordering::Relaxed);
        let fault = pick(s, &method, &path);
        lock(&s.seen).push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: req.get("range").map(str::to_string),
            fault: format!("{fault:?}").chars().take(80).collect(),
            at: Instant::now(),
        });
        let keep = match &fault {
            Fault::Status(code) => {
                let body = format!(
                    r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {code}"}}]}}"#
                );
                canned(
                    &mut conn,
                    &format!("{code} Injected"),
                    "Content-Type: application/json\r\n",
                    body.as_bytes(),
                )?;
                true
            }
            Fault::TooMany { retry_after } => {
                canned(
                    &mut conn,
                    "429 Too Many Requests",
                    &format!("Retry-After: {retry_after}\r\n"),
                    b"",
                )?;
                true
            }
            Fault::RedirectLoop => {
                let base = path.split('?').next().unwrap_or("/");
                let n = s.requests.load(Ordering::Relaxed);
                canned(
                    &mut conn,
                    "307 Temporary Redirect",
                    &format!("Location: {base}?loop={n}\r\n"),
                    b"",
                )?;
                true
            }
            Fault::Unauthorized => {
                canned(
                    &mut conn,
                    "401 Unauthorized",
                    "WWW-Authenticate: Basic realm=\"injected\"\r\nContent-Type: application/json\r\n",
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"injected"}]}"#,
                )?;
                true
            }
            Fault::Body {
                bytes,
                content_type,
            } => {
                let b: &[u8] = if method == "HEAD" { b"" } else { bytes };
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    bytes.len()
                )?;
                conn.write_all(b)?;
                s.body_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                true
            }
            Fault::Stall(None) => {
                stall(s, &conn);
                false
            }
            _ => forward(s, &mut conn, &req, &method, &path, &body, &fault)?,
        };
        if !keep {
            break;
        }
    }
    Ok(())
}

fn stall(s: &Shared, _conn: &TcpStream) {
    let until = Instant::now() + STALL_FOR;
    while Instant::now() < until && !s.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Forwards one request upstream and streams the answer back, applying
/// `fault`. Returns whether the client connection may carry another request.
fn forward(
    s: &Shared,
    conn: &mut TcpStream,
    req: &Head,
    method: &str,
    path: &str,
    body: &[u8],
    fault: &Fault,
) -> io::Result<bool> {
    let Ok(mut up) = TcpStream::connect(&s.upstream) else {
        // The registry is down: the client sees its connection dropped.
        reset(conn);
        return Ok(false);
    };
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = format!("{method} {path} HTTP/1.0\r\n");
    for (k, v) in &req.headers {
        if !hop_by_hop(k) {
            out += &format!("{k}: {v}\r\n");
        }
    }
    out += "Connection: close\r\n\r\n";
    up.write_all(out.as_bytes())?;
    up.write_all(body)?;
    up.flush()?;
    let mut ur = BufReader::with_capacity(64 * 1024, up);
    let Some(resp) = read_head(&mut ur)? else {
        reset(conn);
        return Ok(false);
    };
    let status_rest = resp
        .first
        .split_once(' ')
        .map_or("502 Bad Gateway", |x| x.1);
    let code: u16 = status_rest
        .split(' ')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(502);
    let no_body = method == "HEAD" || code == 204 || code == 304 || (100..200).contains(&code);
    let len = if no_body {
        Some(0)
    } else {
        resp.content_length()
    };
    let mut head = format!("HTTP/1.1 {status_rest}\r\n");
    for (k, v) in &resp.headers {
        if !hop_by_hop(k) {
            head += &format!("{k}: {v}\r\n");
        }
    }
    if len.is_none() {
        head += "Connection: close\r\n";
    }
    head += "\r\n";
    conn.write_all(head.as_bytes())?;
    conn.flush()?;
    if no_body {
        return Ok(true);
    }
    // The body, fault applied.
    let total = len;
    let cut = match fault {
        Fault::ResetAfter(n) => Some(*n),
        Fault::Stall(Some(n)) => Some(*n),
        Fault::TruncateHalf => Some(total.unwrap_or(0) / 2),
        _ => None,
    };
    let flip = match fault {
        Fault::FlipByte(at) => Some(at % total.unwrap_or(1).max(1)),
        _ => None,
    };
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if total.is_some_and(|t| sent >= t) {
            break;
        }
        let want = match total {
            Some(t) => ((t - sent) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = match ur.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                if total.is_some() {
                    // The registry died mid-body: so does the client's connection.
                    reset(conn);
                }
                return Ok(false);
            }
            Ok(n) => n,
        };
        let mut chunk = &mut buf[..n];
        if let Some(c) = cut {
            let room = c.saturating_sub(sent) as usize;
            if chunk.len() > room {
                chunk = &mut chunk[..room];
            }
        }
        if let Some(at) = flip {
            if at >= sent && at < sent + chunk.len() as u64 {
                chunk[(at - sent) as usize] ^= 0x01;
            }
        }
        match fault {
            Fault::Drip { chunk: c, every } => {
                for piece in chunk.chunks((*c).max(1)) {
                    conn.write_all(piece)?;
                    conn.flush()?;
                    s.body_bytes
                        .fetch_add(piece.len() as u64, Ordering::Relaxed);
                    std::thread::sleep(*every);
                }
            }
            _ => {
                conn.write_all(chunk)?;
                s.body_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        sent += chunk.len() as u64;
        if cut.is_some_and(|c| sent >= c) {
            conn.flush()?;
            match fault {
                Fault::ResetAfter(_) => reset(conn),
                Fault::Stall(_) => stall(s, conn),
                _ => {
                    let _ = conn.shutdown(Shutdown::Both);
                }
            }
            return Ok(false);
        }
    }
    conn.flush()?;
    Ok(total.is_some())
}
