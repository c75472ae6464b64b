#![allow(dead_code)]
//! The shared integration-test harness.
//!
//! Every integration test binary uses it with `mod harness;` and picks what it
//! needs:
//!
//! * [`Registry`] — a real CNCF distribution registry (`docker-registry serve`)
//!   on a free loopback port with its own storage: plain HTTP, basic auth
//!   (`lab` / `labpass`) or TLS with a private CA. Images are pushed into it
//!   with skopeo from the lab OCI layout (`$REGFS_LAB/oci`).
//! * [`lab()`] — one plain registry per test binary, filled lazily:
//!   `lab().image("python")` pushes the python tags on first use and returns
//!   the registry.
//! * [`Mount`] — the `regfs` binary mounted on a fresh mountpoint with a fresh
//!   cache dir; always unmounted on drop.
//! * The oracle: [`umoci_unpack`], [`snapshot`], [`assert_same_tree`].
//! * The skip rule: [`fuse_ready`] / [`require_fuse!`]. Without root or
//!   `/dev/fuse` a mount test prints `SKIP: …` and returns, unless
//!   `REGFS_REQUIRE_FUSE=1` (set by `scripts/test`), where it panics.
//!
//! Every child process (registry, regfs) is started from one long-lived
//! thread with `PR_SET_PDEATHSIG = SIGKILL`, so none outlives the test
//! process, even when it is killed.
//!
//! ```ignore
//! mod harness;
//! use harness::*;
//!
//! #[test]
//! fn busybox_rootfs_matches_umoci() {
//!     require_fuse!();
//!     let mnt = Mount::new(lab().image("busybox"), &[]);
//!     let expected = snapshot(&umoci_unpack("busybox"));
//!     let actual = snapshot(&mnt.path().join("lab/busybox:latest/rootfs"));
//!     assert_same_tree(&expected, &actual);
//! }
//! ```

pub mod configured;
pub mod env_mount;
pub mod export;
pub mod proxy;
pub mod served;
pub mod token_server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// User name of [`RegistryKind::BasicAuth`] registries.
pub const LAB_USER: &str = "lab";
/// Password of [`RegistryKind::BasicAuth`] registries.
pub const LAB_PASS: &str = "labpass";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------ paths

/// The repository root (the workspace directory holding `Cargo.lock`).
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join("Cargo.lock").exists() && dir.join("scripts").is_dir() {
            return dir;
        }
        if !dir.pop() {
            return PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
    }
}

/// The lab scripts in the repository, `scripts/lab` (registry.sh,
/// make-images.sh, push.sh, esgz.sh, check-rootfs.sh).
pub fn lab_dir() -> PathBuf {
    repo_root().join("scripts/lab")
}

/// The lab image folder (`$REGFS_LAB`, default `REPO/.lab/images`) holding the
/// OCI layouts `oci/` (tags `busybox`, `busybox-arm64`, `multi`,
/// `debian-bookworm`, `python-3.11`) and `oci-zstd/` (`python-3.11-zstd`).
///
/// On first call per process it runs `scripts/lib.sh`'s `ensure_images`,
/// which is a no-op (~50 ms) when the layouts are complete and otherwise
/// builds them (minutes; needs root and network for Debian packages).
pub fn lab_images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = std::env::var_os("REGFS_LAB")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".lab/images"));
        let script = format!(
            ". '{}/scripts/lib.sh' && ensure_images",
            repo_root().display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("REGFS_LAB", &dir)
            .stdin(Stdio::null())
            .output()
            .expect("run bash for ensure_images");
        assert!(
            out.status.success(),
            "ensure_images failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::canonicalize(&dir).unwrap_or(dir)
    })
}

/// The OCI layout holding `layout_tag`: `oci-zstd` for tags ending in
/// `-zstd`, `oci-esgz` for `-esgz` and `-zstdchunked`, else `oci`.
pub fn layout_for(layout_tag: &str) -> PathBuf {
    if layout_tag.ends_with("-zstd") {
        lab_images().join("oci-zstd")
    } else if layout_tag.ends_with("-esgz") || layout_tag.ends_with("-zstdchunked") {
        lab_images().join("oci-esgz")
    } else {
        lab_images().join("oci")
    }
}

/// A fresh temporary directory (`$TMPDIR/regfs-<prefix>-XXXX`), removed on drop.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("regfs-{prefix}-"))
        .tempdir()
        .expect("create a temporary directory")
}

// ------------------------------------------------------------------ child processes

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it receives SIGKILL when the test process dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and
/// libtest runs each test on its own thread; so all children are forked by one
/// thread that lives as long as the process.
pub fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1); // the parent died before prctl
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(tx)
        .send((cmd, reply_tx))
        .expect("spawner thread is gone");
    reply_rx.recv().expect("spawner thread is gone")
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps the child.
fn terminate(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if wait_timeout(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the socket).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ------------------------------------------------------------------ registry

/// Which flavour of registry [`Registry::start`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryKind {
    /// Plain HTTP, no auth.
    Plain,
    /// Plain HTTP with htpasswd basic auth ([`LAB_USER`] / [`LAB_PASS`]).
    BasicAuth,
    /// HTTPS with a server certificate signed by a private CA ([`Registry::ca_cert`]).
    Tls,
}

/// One request from the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// Path and query, e.g. `/v2/lab/busybox/blobs/sha256:…`.
    pub uri: String,
    /// HTTP status of the response.
    pub status: u16,
    /// Bytes in the response body, as the access log says.
    pub bytes: u64,
}

/// A running `docker-registry serve` child process with its own storage.
/// Killed (and its directory removed) on drop.
pub struct Registry {
    kind: RegistryKind,
    port: u16,
    dir: PathBuf,
    served: served::Served,
}

impl Registry {
    /// Starts a registry of `kind` on a free port with a fresh storage dir and
    /// waits until `GET /v2/` answers 200 or 401 (20 s, else panics with the log).
    pub fn start(kind: RegistryKind) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix(&format!("regfs-registry-{}-", std::process::id()))
            .tempdir()
            .expect("registry tempdir")
            .keep();
        Self::start_in(kind, dir)
    }

    fn start_in(kind: RegistryKind, dir: PathBuf) -> Registry {
        fs::create_dir_all(dir.join("storage")).unwrap();
        match kind {
            RegistryKind::Plain => {}
            RegistryKind::BasicAuth => {
                fs::create_dir_all(dir.join("auth")).unwrap();
                let htpasswd = run(Command::new("htpasswd").args(["-Bbn", LAB_USER, LAB_PASS]));
                fs::write(dir.join("auth/htpasswd"), htpasswd).unwrap();
            }
            RegistryKind::Tls => make_tls(&dir.join("tls")),
        }
        // A port picked by bind(0) may be taken again before the registry
        // binds it: retry with another one.
        let mut last_err = String::new();
        for _ in 0..3 {
            let reg = Registry {
                kind,
                port: free_port(),
                dir: dir.clone(),
                served: served::Served::new(dir.join("registry.log")),
            };
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(e) => {
                    last_err = e;
                    // Don't let Drop remove the shared dir; retry in it.
                    std::mem::forget(reg);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("registry did not start: {last_err}");
    }

    fn write_config(&self) -> PathBuf {
        let d = self.dir.display();
        let port = self.port;
        let mut conf = format!(
            "version: 0.1\n\
             log:\n  level: info\n  fields: {{service: registry, port: {port}}}\n\
             storage:\n  filesystem:\n    rootdirectory: {d}/storage\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging: {{enabled: false}}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: lab-secret-{port}\n\
             \x20 headers:\n    X-Content-Type-Options: [nosniff]\n"
        );
        if self.kind == RegistryKind::Tls {
            conf += &format!(
                "  tls:\n    certificate: {d}/tls/server.crt\n    key: {d}/tls/server.key\n"
            );
        }
        if self.kind == RegistryKind::BasicAuth {
            conf += &format!(
                "auth:\n  htpasswd:\n    realm: lab-registry\n    path: {d}/auth/htpasswd\n"
            );
        }
        let path = self.dir.join("config.yml");
        fs::write(&path, conf).unwrap();
        path
    }

    /// Spawns the child (log appended to `DIR/registry.log`) and waits for /v2/.
    fn spawn_and_wait(&self) -> Result<(), String> {
        let config = self.write_config();
        self.served.spawn_and_wait(&config, || {
            matches!(self.get_with("/v2/", false), Ok((200 | 401, _)))
        })
    }

    /// The registry flavour.
    pub fn kind(&self) -> RegistryKind {
        self.kind
    }

    /// `127.0.0.1:PORT`, what `regfs mount` and image references take.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.kind == RegistryKind::Tls {
            "https"
        } else {
            "http"
        }
    }

    /// `SCHEME://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme(), self.host_port(), path)
    }

    /// The registry's filesystem storage (`…/storage/docker/registry/v2/…`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Where the registry keeps blob `digest` (`sha256:…`) on disk, for
    /// tests that corrupt or inspect what it serves.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The private CA certificate (PEM) of a [`RegistryKind::Tls`] registry.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        (self.kind == RegistryKind::Tls).then(|| self.dir.join("tls/ca.crt"))
    }

    /// A directory holding only the CA, for skopeo `--dest-cert-dir`.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        (self.kind == RegistryKind::Tls).then(|| self.dir.join("tls/certs.d"))
    }

    /// Basic-auth user name, if the registry requires one.
    pub fn username(&self) -> Option<&'static str> {
        (self.kind == RegistryKind::BasicAuth).then_some(LAB_USER)
    }

    /// Basic-auth password, if the registry requires one.
    pub fn password(&self) -> Option<&'static str> {
        (self.kind == RegistryKind::BasicAuth).then_some(LAB_PASS)
    }

    /// Path of the log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.served.log_path().to_path_buf()
    }

    /// The whole registry log so far.
    pub fn log(&self) -> String {
        self.served.log()
    }

    /// Requests from the access log (combined format: one line per request,
    /// written when the response completes).
    pub fn requests(&self) -> Vec<Request> {
        self.served.requests()
    }

    /// Number of successful (2xx) `GET`s of blobs, optionally of one digest
    /// (`sha256:…`). Use it to check laziness and caching:
    /// `let before = reg.blob_gets(None); …; assert_eq!(reg.blob_gets(None), before);`
    pub fn blob_gets(&self, digest: Option<&str>) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
            .filter(|r| match r.uri.split_once("/blobs/") {
                Some((_, d)) => digest.is_none_or(|want| d.split('?').next() == Some(want)),
                None => false,
            })
            .count()
    }

    /// Successful blob GETs of `digest` (`sha256:…`): (requests, response
    /// bytes, whole-blob 200s, as opposed to 206 ranges).
    pub fn blob_traffic(&self, digest: &str) -> (usize, u64, usize) {
        let mut out = (0, 0, 0);
        for r in self.requests() {
            let d = r
                .uri
                .split('?')
                .next()
                .and_then(|u| u.rsplit_once("/blobs/"));
            if r.method == "GET"
                && (200..300).contains(&r.status)
                && d.map(|(_, d)| d) == Some(digest)
            {
                out.0 += 1;
                out.1 += r.bytes;
                out.2 += usize::from(r.status == 200);
            }
        }
        out
    }

    /// Is the registry process running?
    pub fn is_running(&self) -> bool {
        self.served.is_running()
    }

    /// Stops the registry (SIGTERM, SIGKILL after 2 s). Storage is kept; the
    /// port is left closed until [`Registry::restart`].
    pub fn stop(&self) {
        self.served.stop();
    }

    /// Starts it again (stopping it first if it runs) on the same port with
    /// the same storage; panics if it does not answer within 20 s.
    pub fn restart(&self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("registry restart on port {} failed: {e}", self.port);
        }
    }

    /// `GET path` with curl (credentials and CA as the kind needs).
    /// Returns the status and the body. Panics if curl cannot connect.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, true)
            .unwrap_or_else(|e| panic!("GET {}: {e}", self.url(path)))
    }

    /// `GET path` without credentials.
    pub fn get_anonymous(&self, path: &str) -> (u16, String) {
        self.get_with(path, false)
            .unwrap_or_else(|e| panic!("GET {}: {e}", self.url(path)))
    }

    fn get_with(&self, path: &str, creds: bool) -> Result<(u16, String), String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
        if let Some(ca) = self.ca_cert() {
            cmd.arg("--cacert").arg(ca);
        }
        if creds && self.kind == RegistryKind::BasicAuth {
            cmd.args(["-u", &format!("{LAB_USER}:{LAB_PASS}")]);
        }
        cmd.arg(self.url(path)).stdin(Stdio::null());
        let out = cmd.output().map_err(|e| format!("cannot run curl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        match code.trim().parse::<u16>() {
            Ok(c) if c != 0 && out.status.success() => Ok((c, body.to_string())),
            _ => Err(format!(
                "curl failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }

    /// skopeo destination options for this registry.
    fn dest_opts(&self) -> Vec<OsString> {
        let mut o: Vec<OsString> = Vec::new();
        match self.kind {
            RegistryKind::Plain => o.push("--dest-tls-verify=false".into()),
            RegistryKind::BasicAuth => {
                o.push("--dest-tls-verify=false".into());
                o.push("--dest-creds".into());
                o.push(format!("{LAB_USER}:{LAB_PASS}").into());
            }
            RegistryKind::Tls => {
                o.push("--dest-cert-dir".into());
                o.push(self.cert_dir().unwrap().into());
            }
        }
        o
    }

    /// `skopeo copy oci:LAYOUT:layout_tag docker://HOST:PORT/dest` plus
    /// `extra` skopeo options. The layout is `$REGFS_LAB/oci`, or
    /// `$REGFS_LAB/oci-zstd` for tags ending in `-zstd`.
    pub fn push_with(&self, layout_tag: &str, dest: &str, extra: &[&str]) {
        let src = format!("oci:{}:{layout_tag}", layout_for(layout_tag).display());
        let dst = format!("docker://{}/{dest}", self.host_port());
        run(Command::new("skopeo")
            .args(["copy", "-q", "--retry-times", "2"])
            .args(self.dest_opts())
            .args(extra)
            .arg(&src)
            .arg(&dst));
    }

    /// Pushes one image (OCI manifest as in the layout), e.g.
    /// `push("busybox", "lab/busybox:latest")`.
    pub fn push(&self, layout_tag: &str, dest: &str) {
        self.push_with(layout_tag, dest, &[]);
    }

    /// Pushes an index and every image it lists (`skopeo copy --all`).
    pub fn push_all(&self, layout_tag: &str, dest: &str) {
        self.push_with(layout_tag, dest, &["--all"]);
    }

    /// Pushes converting to Docker schema 2 (`--format v2s2`).
    pub fn push_format_v2s2(&self, layout_tag: &str, dest: &str) {
        self.push_with(layout_tag, dest, &["--format", "v2s2"]);
    }

    /// Pushes an index as a Docker manifest list (`--all --format v2s2`).
    pub fn push_all_v2s2(&self, layout_tag: &str, dest: &str) {
        self.push_with(layout_tag, dest, &["--all", "--format", "v2s2"]);
    }

    /// Pushes preserving the layout's digests (`--preserve-digests`; needed
    /// for zstd layers, which skopeo would otherwise substitute).
    pub fn push_preserve_digests(&self, layout_tag: &str, dest: &str) {
        self.push_with(layout_tag, dest, &["--preserve-digests"]);
    }

    /// Digest (`sha256:…`) of the manifest `repo:tag` as the registry serves
    /// it (HEAD with all four manifest media types).
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-I", "--max-time", "10"]);
        for t in MANIFEST_TYPES {
            cmd.args(["-H", &format!("Accept: {t}")]);
        }
        if let Some(ca) = self.ca_cert() {
            cmd.arg("--cacert").arg(ca);
        }
        if self.kind == RegistryKind::BasicAuth {
            cmd.args(["-u", &format!("{LAB_USER}:{LAB_PASS}")]);
        }
        cmd.arg(self.url(&format!("/v2/{repo}/manifests/{reference}")));
        let head = run(&mut cmd);
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no Docker-Content-Digest for {repo}:{reference}:\n{head}"))
    }
}

/// The manifest media types a client must accept (see the lab README).
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kind", &self.kind)
            .field("addr", &self.host_port())
            .field("dir", &self.dir)
            .finish()
    }
}

/// Parses `127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 200 123 "" "agent"`.
fn parse_access_line(line: &str) -> Option<Request> {
    let rest = &line[line.find("] \"")? + 3..];
    let (req, rest) = rest.split_once('"')?;
    let mut parts = req.split(' ');
    let method = parts.next()?.to_string();
    let uri = parts.next()?.to_string();
    let mut fields = rest.split_whitespace();
    let status = fields.next()?.parse().ok()?;
    let bytes = fields.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    Some(Request {
        method,
        uri,
        status,
        bytes,
    })
}

/// A private CA and a server certificate for 127.0.0.1 / localhost.
fn make_tls(t: &Path) {
    fs::create_dir_all(t.join("certs.d")).unwrap();
    let p = |name: &str| t.join(name);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .args(["-subj", "/CN=regfs test CA", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    fs::write(
        p("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .args(["-CAcreateserial", "-days", "3650", "-extfile"])
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    fs::copy(p("ca.crt"), t.join("certs.d/ca.crt")).unwrap();
}

// ------------------------------------------------------------------ the shared lab registry

/// The standard images, grouped by repository: (group, layout tag,
/// destination, skopeo options).
pub const LAB_IMAGES: &[(&str, &str, &str, &[&str])] = &[
    ("busybox", "busybox", "lab/busybox:latest", &[]),
    (
        "busybox",
        "busybox",
        "lab/busybox:v2s2",
        &["--format", "v2s2"],
    ),
    ("python", "python-3.11", "lab/python:3.11", &[]),
    (
        "python",
        "python-3.11",
        "lab/python:3.11-v2s2",
        &["--format", "v2s2"],
    ),
    (
        "python",
        "python-3.11-zstd",
        "lab/python:3.11-zstd",
        &["--preserve-digests"],
    ),
    ("multi", "multi", "lab/multi:latest", &["--all"]),
    (
        "multi",
        "multi",
        "lab/multi:v2s2",
        &["--all", "--format", "v2s2"],
    ),
    ("debian", "debian-bookworm", "lab/debian:bookworm", &[]),
    (
        "esgz",
        "python-3.11-esgz",
        "lab/python:3.11-esgz",
        &["--preserve-digests"],
    ),
    (
        "esgz",
        "python-3.11-zstdchunked",
        "lab/python:3.11-zstdchunked",
        &["--preserve-digests"],
    ),
];

/// One plain registry per test binary, filled on demand. See [`lab()`].
pub struct Lab {
    registry: Registry,
    pushed: Mutex<HashSet<&'static str>>,
}

/// The per-binary shared registry (plain HTTP), started on first call.
/// Nothing is pushed until asked for with [`Lab::image`] / [`Lab::all`].
/// It is killed and its storage removed at process exit.
pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        sweep_stale_dirs();
        lab_images();
        let lab = Lab {
            registry: Registry::start(RegistryKind::Plain),
            pushed: Mutex::new(HashSet::new()),
        };
        extern "C" fn cleanup() {
            if let Some(lab) = LAB.get() {
                lab.registry.stop();
                let _ = fs::remove_dir_all(&lab.registry.dir);
            }
        }
        unsafe { libc::atexit(cleanup) };
        lab
    })
}

impl Lab {
    /// The registry, with whatever has been pushed so far.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Makes sure `what` is in the registry and returns the registry.
    /// `what` is a group, pushing all its tags — `"busybox"` (latest, v2s2),
    /// `"python"` (3.11, 3.11-v2s2, 3.11-zstd), `"multi"` (latest, v2s2),
    /// `"debian"` (bookworm) — or one destination like `"python:3.11"`.
    /// Concurrent callers wait for the push in progress.
    pub fn image(&self, what: &str) -> &Registry {
        let wanted: Vec<_> = LAB_IMAGES
            .iter()
            .filter(|(group, _, dest, _)| *group == what || dest.strip_prefix("lab/") == Some(what))
            .collect();
        assert!(
            !wanted.is_empty(),
            "lab().image({what:?}): unknown image; see LAB_IMAGES"
        );
        let mut pushed = lock(&self.pushed);
        for (_, tag, dest, opts) in wanted {
            if !pushed.contains(dest) {
                self.registry.push_with(tag, dest, opts);
                pushed.insert(dest);
            }
        }
        &self.registry
    }

    /// Pushes the whole standard set.
    pub fn all(&self) -> &Registry {
        for g in ["busybox", "python", "multi", "debian"] {
            self.image(g);
        }
        &self.registry
    }
}

/// Removes `regfs-registry-PID-*` dirs of test processes that no longer run.
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("regfs-registry-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

// ------------------------------------------------------------------ FUSE skip rule

/// Why mounts cannot work here, if they cannot.
pub fn fuse_unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// True if FUSE mounts can run. Otherwise prints `SKIP: <reason>` and returns
/// false — or panics when `REGFS_REQUIRE_FUSE=1` (scripts/test sets it), so CI
/// never skips silently.
pub fn fuse_ready() -> bool {
    match fuse_unavailable() {
        None => true,
        Some(reason) => {
            if std::env::var("REGFS_REQUIRE_FUSE").as_deref() == Ok("1") {
                panic!("FUSE is required (REGFS_REQUIRE_FUSE=1) but {reason}");
            }
            eprintln!("SKIP: {reason}");
            false
        }
    }
}

/// `require_fuse!();` at the top of a test: returns early (after printing
/// `SKIP: …`) if FUSE mounts cannot run, see [`fuse_ready`].
#[macro_export]
macro_rules! require_fuse {
    () => {
        if !$crate::harness::fuse_ready() {
            return;
        }
    };
}

// ------------------------------------------------------------------ mount

/// The `regfs` binary: `$REGFS_BIN`, or `target/<profile>/regfs` next to the
/// test executable's `deps/` directory.
pub fn regfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REGFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .expect("test executable has a parent dir");
    let bin = profile_dir.join("regfs");
    assert!(
        bin.is_file(),
        "{} not found: build the binary first: cargo build -p regfs-mountd",
        bin.display()
    );
    bin
}

/// The filesystem type of the mount at `path`, from /proc/self/mountinfo.
pub fn mount_fstype(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mp = left.split(' ').nth(4)?;
        (unescape_mountinfo(mp) == want).then(|| right.split(' ').next().unwrap_or("").to_string())
    })
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A running `regfs mount` (foreground child) on a fresh mountpoint with a
/// fresh cache dir. Dropping it unmounts (`regfs unmount`, then
/// `fusermount3 -u`, SIGKILL and `umount -l` as needed): no mount is ever
/// left behind.
pub struct Mount {
    args: Vec<OsString>,
    stdin: Option<String>,
    /// Extra environment for the daemon (see `env_mount.rs`).
    env: Vec<(OsString, OsString)>,
    child: Option<Child>,
    log_path: PathBuf,
    // Declared last: removed after Drop::drop has unmounted.
    mountpoint: tempfile::TempDir,
    cache: tempfile::TempDir,
    logdir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `registry` with
    /// `regfs mount HOST:PORT MNT --cache-dir CACHE <access> …extra_args`
    /// where `<access>` is `--plain-http` (plain, basic auth),
    /// `--ca-cert CA` (TLS), plus `--username lab --password-stdin` for basic
    /// auth. Waits (20 s) until the mountpoint shows up as a FUSE mount.
    pub fn new(registry: &Registry, extra_args: &[&str]) -> Mount {
        let mut access: Vec<OsString> = Vec::new();
        let mut stdin = None;
        match registry.kind() {
            RegistryKind::Plain => access.push("--plain-http".into()),
            RegistryKind::BasicAuth => {
                access.extend(
                    ["--plain-http", "--username", LAB_USER, "--password-stdin"]
                        .map(OsString::from),
                );
                stdin = Some(format!("{LAB_PASS}\n"));
            }
            RegistryKind::Tls => {
                access.push("--ca-cert".into());
                access.push(registry.ca_cert().unwrap().into());
            }
        }
        access.extend(extra_args.iter().map(OsString::from));
        Self::with_args(&registry.host_port(), access, stdin)
    }

    /// Mounts an arbitrary registry address (e.g. a fault-injecting proxy)
    /// with exactly `regfs mount ADDR MNT --cache-dir CACHE …args`, writing
    /// `stdin` (if any) to the daemon's standard input.
    pub fn with_args(addr: &str, args: Vec<OsString>, stdin: Option<String>) -> Mount {
        Self::with_env(addr, args, stdin, Vec::new())
    }

    fn start(&mut self) {
        let bin = regfs_bin();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child =
            spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        if let (Some(input), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            let _ = pipe.write_all(input.as_bytes());
        }
        self.child = Some(child);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if self.is_mounted() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "regfs exited ({status}) before mounting: {:?}\n--- regfs log ---\n{}",
                    self.args,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.cleanup();
                panic!(
                    "{} not mounted after {MOUNT_TIMEOUT:?}: {:?}\n--- regfs log ---\n{log}",
                    self.path().display(),
                    self.args
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// True while the mountpoint is a FUSE mount (/proc/self/mountinfo).
    pub fn is_mounted(&self) -> bool {
        mount_fstype(self.path()).is_some_and(|t| t.starts_with("fuse"))
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// The cache dir passed with `--cache-dir`.
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// The daemon's stdout and stderr so far (all starts, appended).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The daemon's pid (0 if it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The full argument list after the binary (`mount ADDR MNT …`).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// SIGKILLs the daemon and reaps it. The mount stays, dead ("Transport
    /// endpoint is not connected"), until [`Mount::remount`] or drop.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmounts (however the daemon is doing) and mounts again with the same
    /// arguments, mountpoint and cache dir.
    pub fn remount(&mut self) {
        self.cleanup();
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .and_then(|mut f| writeln!(f, "---- harness: remount ----"));
        self.start();
    }

    /// Unmounts and stops the daemon now; returns the daemon's exit status
    /// (None if it had to be killed or was not running).
    pub fn unmount(&mut self) -> Option<ExitStatus> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Option<ExitStatus> {
        let mp = self.mountpoint.path().to_path_buf();
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        if self.is_mounted() && alive {
            let ok = Command::new(regfs_bin_or_default())
                .arg("unmount")
                .arg(&mp)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
                .and_then(|mut c| {
                    let st = wait_timeout(&mut c, EXIT_TIMEOUT);
                    if st.is_none() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    st
                })
                .is_some_and(|s| s.success());
            if !ok {
                let _ = quiet(Command::new("fusermount3").arg("-u").arg(&mp));
            }
        }
        let mut status = None;
        if let Some(mut c) = self.child.take() {
            status = wait_timeout(&mut c, EXIT_TIMEOUT);
            if status.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.is_mounted() {
            let _ = quiet(Command::new("umount").arg("-l").arg(&mp));
            if self.is_mounted() {
                let _ = quiet(Command::new("fusermount3").arg("-uz").arg(&mp));
            }
        }
        status
    }
}

fn regfs_bin_or_default() -> PathBuf {
    std::panic::catch_unwind(regfs_bin).unwrap_or_else(|_| PathBuf::from("regfs"))
}

fn quiet(cmd: &mut Command) -> io::Result<ExitStatus> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.cleanup();
        if self.is_mounted() {
            eprintln!(
                "harness: {} is still mounted; leaking the directory",
                self.path().display()
            );
            // Never let TempDir's remove_dir_all walk into a live mount.
            let mp = std::mem::replace(&mut self.mountpoint, tempdir("mnt-placeholder"));
            let _ = mp.keep();
        }
    }
}

impl fmt::Debug for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mount")
            .field("path", &self.path())
            .field("pid", &self.pid())
            .field("args", &self.args)
            .finish()
    }
}

// ------------------------------------------------------------------ oracle

/// `umoci unpack --image $REGFS_LAB/oci:TAG DIR` and returns `DIR/rootfs`.
///
/// Cached in `$REGFS_LAB/unpacked/TAG-<manifest digest>/` across tests and
/// runs (a rebuilt image gets a new directory). Treat it as read-only.
/// Only single-platform tags of `oci/` work (`busybox`, `busybox-arm64`,
/// `debian-bookworm`, `python-3.11`); umoci cannot unpack an index.
pub fn umoci_unpack(layout_tag: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = lock(&LOCK);
    let layout = lab_images().join("oci");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read oci/index.json"))
            .unwrap();
    let digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == layout_tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("tag {layout_tag} not in {}", layout.display()))
        .replace(':', "-");
    let base = lab_images().join("unpacked");
    let dir = base.join(format!("{layout_tag}-{digest}"));
    if dir.join("rootfs").is_dir() {
        return dir.join("rootfs");
    }
    fs::create_dir_all(&base).unwrap();
    // Old unpacks of the same tag.
    for e in fs::read_dir(&base).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{layout_tag}-sha256-"))
            || n.starts_with(&format!(".tmp-{layout_tag}-"))
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let tmp = base.join(format!(".tmp-{layout_tag}-{}", std::process::id()));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{layout_tag}", layout.display()))
        .arg(&tmp));
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp); // another process won the race
    }
    dir.join("rootfs")
}

/// [`snapshot`] of [`umoci_unpack`]`(layout_tag)`, computed once per process.
pub fn umoci_snapshot(layout_tag: &str) -> Arc<BTreeMap<PathBuf, EntryInfo>> {
    static CACHE: Mutex<BTreeMap<String, Arc<BTreeMap<PathBuf, EntryInfo>>>> =
        Mutex::new(BTreeMap::new());
    if let Some(s) = lock(&CACHE).get(layout_tag) {
        return s.clone();
    }
    let snap = Arc::new(snapshot(&umoci_unpack(layout_tag)));
    lock(&CACHE).insert(layout_tag.to_string(), snap.clone());
    snap
}

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// What [`snapshot`] records about one entry. Directory `nlink` is not
/// recorded (it depends on the filesystem, not on the image); hardlinks are
/// checked through `nlink` and `hardlinks` of non-directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size of regular files.
    pub size: Option<u64>,
    /// Target of symlinks, as stored.
    pub target: Option<PathBuf>,
    /// Link count of non-directories.
    pub nlink: Option<u64>,
    /// Other paths in the tree with the same inode (non-directories).
    pub hardlinks: Vec<PathBuf>,
    /// Device number of character and block devices.
    pub rdev: Option<u64>,
    /// Extended attributes (name → value), from llistxattr/lgetxattr.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Lower-case hex sha256 of a regular file's contents.
    pub sha256: Option<String>,
}

/// Walks `root` without following symlinks and records every entry, keyed
/// by its absolute path inside the tree (`/`, `/bin`, `/bin/sh`, …). Every
/// error (unreadable dir or file, failed xattr call) panics: nothing is
/// skipped silently.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, EntryInfo> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    walk(root, Path::new("/"), &mut out, &mut inodes);
    let files: Vec<PathBuf> = out
        .iter()
        .filter(|(_, e)| e.kind == Kind::File)
        .map(|(rel, _)| rel.clone())
        .collect();
    let abs: Vec<PathBuf> = files
        .iter()
        .map(|rel| root.join(rel.strip_prefix("/").unwrap()))
        .collect();
    for (rel, hash) in files.iter().zip(sha256_files(&abs)) {
        out.get_mut(rel).unwrap().sha256 = Some(hash);
    }
    for paths in inodes.values().filter(|p| p.len() > 1) {
        for p in paths {
            let others = paths.iter().filter(|o| *o != p).cloned().collect();
            out.get_mut(p).unwrap().hardlinks = others;
        }
    }
    out
}

fn walk(
    path: &Path,
    rel: &Path,
    out: &mut BTreeMap<PathBuf, EntryInfo>,
    inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>,
) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let info = EntryInfo {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (kind == Kind::File).then(|| md.size()),
        target: (kind == Kind::Symlink).then(|| {
            fs::read_link(path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
        }),
        nlink: (kind != Kind::Dir).then(|| md.nlink()),
        hardlinks: Vec::new(),
        rdev: matches!(kind, Kind::CharDevice | Kind::BlockDevice).then(|| md.rdev()),
        xattrs: xattrs(path),
        sha256: None, // filled in by snapshot(), in batches
    };
    if kind != Kind::Dir {
        inodes
            .entry((md.dev(), md.ino()))
            .or_default()
            .push(rel.to_path_buf());
    }
    out.insert(rel.to_path_buf(), info);
    if kind == Kind::Dir {
        let mut names: Vec<OsString> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
            .map(|e| {
                e.unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
                    .file_name()
            })
            .collect();
        names.sort();
        for name in names {
            walk(&path.join(&name), &rel.join(&name), out, inodes);
        }
    }
}

/// Lower-case hex sha256 of each file's contents, in order.
///
/// Uses `openssl dgst` in batches (SHA extensions, ~1 GiB/s; the sha2 crate
/// in an unoptimised test build manages ~30 MiB/s), and the sha2 crate for
/// any batch openssl does not fully answer, which panics with the path and
/// the error of a file that cannot be read.
pub fn sha256_files(paths: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::with_capacity(paths.len());
    for batch in paths.chunks(256) {
        match openssl_batch(batch) {
            Some(hashes) => out.extend(hashes),
            None => out.extend(batch.iter().map(|p| sha256_file(p))),
        }
    }
    out
}

fn openssl_batch(batch: &[PathBuf]) -> Option<Vec<String>> {
    // One output line per file only if no name holds a newline or backslash
    // (which openssl would escape).
    if batch.iter().any(|p| {
        p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| *b == b'\n' || *b == b'\\')
    }) {
        return None;
    }
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .args(batch)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hashes: Vec<String> = text
        .lines()
        .filter_map(|l| l.get(..64))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|h| h.to_ascii_lowercase())
        .collect();
    (hashes.len() == batch.len()).then_some(hashes)
}

/// List directory `path` as `ls` does: open it and read every entry. The
/// error is whichever step failed (regfs opens directories without a round
/// trip, so a listing that cannot be made fails at the first read).
pub fn list_dir(path: &Path) -> io::Result<Vec<fs::DirEntry>> {
    fs::read_dir(path)?.collect()
}

/// Lower-case hex sha256 of a file's contents (sha2 crate).
pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// All extended attributes of `path` (not following symlinks). A filesystem
/// without xattr support (ENOTSUP) gives an empty map; other errors panic.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    let names = loop {
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return out;
            }
            panic!("llistxattr {}: {e}", path.display());
        }
        let mut buf = vec![0u8; n as usize];
        if n == 0 {
            break buf;
        }
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m >= 0 {
            buf.truncate(m as usize);
            break buf;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
            panic!(
                "llistxattr {}: {}",
                path.display(),
                io::Error::last_os_error()
            );
        }
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let value = loop {
            let n = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
            if n < 0 {
                panic!(
                    "lgetxattr {} {}: {}",
                    path.display(),
                    String::from_utf8_lossy(name),
                    io::Error::last_os_error()
                );
            }
            let mut buf = vec![0u8; n as usize];
            let m = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if m >= 0 {
                buf.truncate(m as usize);
                break buf;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
                panic!(
                    "lgetxattr {}: {}",
                    path.display(),
                    io::Error::last_os_error()
                );
            }
        };
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

/// The differences between two snapshots, one readable line each.
pub fn tree_diff(
    expected: &BTreeMap<PathBuf, EntryInfo>,
    actual: &BTreeMap<PathBuf, EntryInfo>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, e) in expected {
        let Some(a) = actual.get(path) else {
            diffs.push(format!("missing  {} ({:?})", path.display(), e.kind));
            continue;
        };
        let p = path.display();
        macro_rules! field {
            ($f:ident, $fmt:literal) => {
                if e.$f != a.$f {
                    diffs.push(format!(
                        concat!(
                            "differs  {} ",
                            stringify!($f),
                            ": expected ",
                            $fmt,
                            ", got ",
                            $fmt
                        ),
                        p, e.$f, a.$f
                    ));
                }
            };
        }
        field!(kind, "{:?}");
        field!(mode, "{:o}");
        field!(uid, "{}");
        field!(gid, "{}");
        field!(size, "{:?}");
        field!(target, "{:?}");
        field!(nlink, "{:?}");
        field!(hardlinks, "{:?}");
        field!(rdev, "{:?}");
        if e.xattrs != a.xattrs {
            let show = |m: &BTreeMap<String, Vec<u8>>| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            diffs.push(format!(
                "differs  {p} xattrs: expected {{{}}}, got {{{}}}",
                show(&e.xattrs),
                show(&a.xattrs)
            ));
        }
        field!(sha256, "{:?}");
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            diffs.push(format!("extra    {} ({:?})", path.display(), a.kind));
        }
    }
    diffs
}

/// Panics with a readable list of the first 20 differences (and the total)
/// if the snapshots differ.
#[track_caller]
pub fn assert_same_tree(
    expected: &BTreeMap<PathBuf, EntryInfo>,
    actual: &BTreeMap<PathBuf, EntryInfo>,
) {
    let diffs = tree_diff(expected, actual);
    if diffs.is_empty() {
        return;
    }
    let mut msg = format!(
        "trees differ: {} difference(s) (expected {} entries, got {})\n",
        diffs.len(),
        expected.len(),
        actual.len()
    );
    for d in diffs.iter().take(20) {
        msg += "  ";
        msg += d;
        msg += "\n";
    }
    if diffs.len() > 20 {
        msg += &format!("  … and {} more\n", diffs.len() - 20);
    }
    panic!("{msg}");
}
