//! [`Mount`]: the `regfs` binary mounted on a fresh mountpoint with a fresh
//! cache dir, always unmounted on drop; the FUSE skip rule
//! ([`require_fuse!`]); and where the binary and a mount's type are found.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process::{spawn_tied, tempdir, wait_timeout};
use super::registry::{Registry, RegistryKind, LAB_PASS, LAB_USER};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// `regfs ARGS`, which must succeed: its standard output.
pub fn run_regfs(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(regfs_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "regfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    /// Extra environment for the daemon ([`Mount::with_env`]).
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

    /// Like [`Mount::with_args`], with `env` added to the daemon's environment
    /// (later entries win; `RUST_LOG` here overrides the harness default):
    /// `PATH` with a credential helper, `DOCKER_CONFIG`, `REGISTRY_AUTH_FILE`,
    /// `HTTPS_PROXY`…, without touching the test process's environment.
    pub fn with_env(
        addr: &str,
        args: Vec<OsString>,
        stdin: Option<String>,
        env: Vec<(OsString, OsString)>,
    ) -> Mount {
        // The pid lets scripts/test tell stale mounts from live ones.
        let mountpoint = tempdir(&format!("mnt-{}", std::process::id()));
        let cache = tempdir("cache");
        let logdir = tempdir("mountlog");
        let mut full: Vec<OsString> = vec!["mount".into(), addr.into(), mountpoint.path().into()];
        full.push("--cache-dir".into());
        full.push(cache.path().into());
        full.extend(args);
        let mut m = Mount {
            args: full,
            stdin,
            env,
            child: None,
            log_path: logdir.path().join("regfs.log"),
            mountpoint,
            cache,
            logdir,
        };
        m.start();
        m
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

/// `(key, value)` pairs as `OsString`s, for [`Mount::with_env`].
pub fn env_vars<K: Into<OsString>, V: Into<OsString>>(
    vars: impl IntoIterator<Item = (K, V)>,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}
