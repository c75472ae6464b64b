//! [`Served`]: a running `docker-registry serve` and its log, the process
//! handling that [`super::registry::Registry`] and [`super::configured::ConfiguredRegistry`]
//! share.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::process::{lock, spawn_tied, terminate};

/// How long a registry may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A registry process (at most one at a time) writing to one log file.
/// Stopped on drop.
pub struct Served {
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Served {
    /// Nothing running yet; output will be appended to `log`.
    pub fn new(log: PathBuf) -> Served {
        Served {
            log,
            child: Mutex::new(None),
        }
    }

    /// Runs `docker-registry serve CONFIG` (without the caller's `REGISTRY_*`
    /// variables, which the registry reads as overrides) and waits until
    /// `ready()` (20 s). On failure the process is gone and the error
    /// carries the log.
    pub fn spawn_and_wait(&self, config: &Path, ready: impl Fn() -> bool) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("registry log {}: {e}", self.log.display()))?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, _) in std::env::vars_os() {
            if k.as_bytes().starts_with(b"REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = spawn_tied(cmd).map_err(|e| {
            format!("cannot run docker-registry ({e}); install the Debian package docker-registry (scripts/test does)")
        })?;
        *lock(&self.child) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready() {
                return Ok(());
            }
            let exited = lock(&self.child)
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                lock(&self.child).take();
                return Err(format!("registry exited ({status}); log:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "registry not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Requests from the access log (combined format: one line per request,
    /// written when the response completes).
    pub fn requests(&self) -> Vec<Request> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// Is the process running?
    pub fn is_running(&self) -> bool {
        lock(&self.child)
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops it (SIGTERM, SIGKILL after 2 s).
    pub fn stop(&self) {
        if let Some(mut c) = lock(&self.child).take() {
            terminate(&mut c, Duration::from_secs(2));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `count()` once it reaches `at_least`, or its value after 5 s. For counts
/// read from an access log: the registry writes a request's line after the
/// response, and a pull-through cache stores a blob after serving it.
pub fn count_reaching(at_least: usize, count: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = count();
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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
