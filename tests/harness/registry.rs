//! [`Registry`]: a real CNCF distribution registry (`docker-registry serve`)
//! on a free loopback port with its own storage, plain, basic-auth or TLS;
//! images pushed into it with skopeo from the lab layouts; and [`lab()`], the
//! one shared registry per test binary filled with the standard images.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::configured::pki;
use super::images::{lab_images, layout_for};
use super::process::{free_port, lock, run};
use super::served::{Request, Served};

/// User name of [`RegistryKind::BasicAuth`] registries.
pub const LAB_USER: &str = "lab";
/// Password of [`RegistryKind::BasicAuth`] registries.
pub const LAB_PASS: &str = "labpass";

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

/// A running `docker-registry serve` child process with its own storage.
/// Killed (and its directory removed) on drop.
pub struct Registry {
    kind: RegistryKind,
    port: u16,
    dir: PathBuf,
    served: Served,
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
                served: Served::new(dir.join("registry.log")),
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

    /// Flip one byte in the middle of blob `digest` in the registry's own
    /// storage (it then serves bytes that do not match the digest).
    pub fn corrupt_blob(&self, digest: &str) {
        let p = self.blob_path(digest);
        let mut data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let i = data.len() / 2;
        data[i] ^= 0x55;
        fs::write(&p, data).unwrap();
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

    /// [`Registry::blob_traffic`] once it shows a GET of `digest` beyond
    /// `before` (the registry writes its access log after the response, so
    /// a reader can finish before the line is there), or after 3 s.
    pub fn blob_traffic_since(
        &self,
        digest: &str,
        before: (usize, u64, usize),
    ) -> (usize, u64, usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let now = self.blob_traffic(digest);
            if now.0 > before.0 || std::time::Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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

    /// Stops the registry and removes its directory (storage, log, config):
    /// what drop does, and what the shared [`lab()`] registry does at exit.
    fn stop_and_remove(&self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
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
        self.stop_and_remove();
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

/// A private CA (`ca.crt`, also alone in `certs.d/` for skopeo) and a
/// server certificate it signs for 127.0.0.1 / localhost, in `t`.
fn make_tls(t: &Path) {
    fs::create_dir_all(t.join("certs.d")).unwrap();
    let (ca_key, ca_crt) = pki::self_signed(t, "ca", "regfs test CA");
    pki::signed(
        t,
        "server",
        (&ca_key, &ca_crt),
        "DNS:localhost,IP:127.0.0.1",
        "serverAuth",
    );
    fs::copy(&ca_crt, t.join("certs.d/ca.crt")).unwrap();
}

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
                lab.registry.stop_and_remove();
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
