//! A private containerd (own root, state, socket and config with
//! `[proxy_plugins.regfs]`), regfs mounted with `--snapshotter`, and the
//! `ctr` / `ctr-remote` commands run against them. Tests take [`serial`]:
//! each runs containers, and two cores do not run two at once well.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::harness::{self, spawn_tied, tempdir, wait_timeout, Mount, Registry};

/// One test at a time in this group.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `containerd`, `ctr`, `ctr-remote`, `runc` installed? Otherwise `SKIP`, or
/// a panic under `REGFS_REQUIRE_FUSE=1`.
pub fn tools_ready() -> bool {
    if !harness::fuse_ready() {
        return false;
    }
    let missing: Vec<_> = ["containerd", "ctr", "ctr-remote", "runc"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("REGFS_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("containerd tests need {missing:?} (REGFS_REQUIRE_FUSE=1)");
    }
    eprintln!("SKIP: {missing:?} not installed");
    false
}

/// regfs (with `extra` arguments) serving the lab's gzip python image to a
/// containerd of its own, the image pulled remotely (`ctr-remote image
/// rpull`): regfs, containerd and the image's reference.
pub fn python_rpulled(extra: &[&str]) -> (Regfs, Containerd, String) {
    let reg = harness::lab().image("python");
    let regfs = Regfs::with_args(reg, extra);
    let ctd = Containerd::start(&regfs.socket);
    let image = format!("{}/lab/python:3.11", reg.host_port());
    ctd.rpull(&image);
    (regfs, ctd, image)
}

/// regfs mounted with a snapshotter socket, plus its snapshotter root.
pub struct Regfs {
    pub mount: Mount,
    pub socket: PathBuf,
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Regfs {
    /// `regfs mount REG MNT --snapshotter SOCK --snapshotter-root ROOT`.
    pub fn new(reg: &Registry) -> Regfs {
        Regfs::with_args(reg, &[])
    }

    /// [`Regfs::new`] with `extra` arguments (`--supervise`).
    pub fn with_args(reg: &Registry, extra: &[&str]) -> Regfs {
        let dir = tempdir("snapshotter");
        let socket = dir.path().join("regfs.sock");
        let root = dir.path().join("root");
        let mut args = vec![
            "--snapshotter",
            socket.to_str().unwrap(),
            "--snapshotter-root",
            root.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mount = Mount::new(reg, &args);
        wait_for(|| socket.exists(), "the snapshotter socket");
        Regfs {
            mount,
            socket,
            root,
            _dir: dir,
        }
    }

    /// Stop regfs and mount it again (same mountpoint, cache, snapshotter root).
    pub fn restart(&mut self) {
        self.mount.remount();
        wait_for(|| self.socket.exists(), "the snapshotter socket");
    }

    /// The snapshot ids on disk (`ROOT/snapshots/<id>`).
    pub fn snapshot_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.join("snapshots"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

/// A private containerd using regfs as the snapshotter `regfs`.
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    pub address: PathBuf,
}

impl Containerd {
    /// Start containerd with a config naming `snapshotter_socket`.
    pub fn start(snapshotter_socket: &Path) -> Containerd {
        let dir = tempdir("containerd");
        let address = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{address}"
[ttrpc]
  address = "{address}.ttrpc"
[proxy_plugins.regfs]
  type = "snapshot"
  address = "{socket}"
"#,
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                address = address.display(),
                socket = snapshotter_socket.display(),
            ),
        )
        .unwrap();
        let mut c = Containerd {
            child: None,
            dir,
            config,
            address,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(spawn_tied(cmd).expect("run containerd"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr_ok(&["version"]) {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop containerd (SIGTERM; running containers' shims stay) and start it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--address").arg(&self.address).args(args);
        cmd
    }

    fn ctr_ok(&self, args: &[&str]) -> bool {
        self.command("ctr", args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `ctr ARGS`, its output whatever the exit status.
    pub fn ctr_output(&self, args: &[&str]) -> Output {
        self.command("ctr", args).output().expect("run ctr")
    }

    /// `ctr ARGS`, which must succeed; its standard output.
    pub fn ctr(&self, args: &[&str]) -> String {
        let o = self.ctr_output(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed ({}):\n{}{}\n--- containerd log (tail) ---\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ctr-remote image rpull --plain-http --snapshotter regfs REF`.
    pub fn rpull(&self, image: &str) {
        let o = self
            .command(
                "ctr-remote",
                &[
                    "image",
                    "rpull",
                    "--plain-http",
                    "--snapshotter",
                    "regfs",
                    image,
                ],
            )
            .output()
            .expect("run ctr-remote");
        assert!(
            o.status.success(),
            "rpull {image} failed:\n{}{}\n--- containerd log (tail) ---\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            tail(&self.log(), 40)
        );
    }

    /// `ctr run --rm --snapshotter regfs IMAGE ID ARGS…`, its output.
    pub fn run(&self, image: &str, id: &str, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--snapshotter", "regfs", image, id];
        all.extend_from_slice(args);
        self.ctr_output(&all)
    }

    /// `ctr snapshots --snapshotter regfs ls`: (key, parent or "", kind).
    pub fn snapshots(&self) -> Vec<(String, String, String)> {
        self.ctr(&["snapshots", "--snapshotter", "regfs", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let parent = if f.len() == 3 { f[1] } else { "" };
                Some((
                    f.first()?.to_string(),
                    parent.to_string(),
                    f.last()?.to_string(),
                ))
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers first: their shims outlive containerd otherwise.
        for line in self
            .ctr_output(&["task", "ls", "-q"])
            .stdout
            .split(|b| *b == b'\n')
        {
            let id = String::from_utf8_lossy(line).trim().to_string();
            if !id.is_empty() {
                let _ = self.ctr_output(&["task", "kill", "-s", "SIGKILL", &id]);
                let _ = self.ctr_output(&["task", "rm", "-f", &id]);
                let _ = self.ctr_output(&["container", "rm", &id]);
            }
        }
        self.stop();
        // Anything the overlay snapshots left mounted under our root.
        let root = self.dir.path().to_string_lossy().into_owned();
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mps: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&root))
                .collect();
            mps.reverse();
            for m in mps {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait (30 s) for `f`, or panic naming `what`.
pub fn wait_for(f: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The layer digests and sizes of `repo:tag` in `reg` (its manifest).
pub fn layers(reg: &Registry, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let o = Command::new("curl")
        .args(["-fsS", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .arg(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "manifest {repo}:{tag}: {body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    m["layers"]
        .as_array()
        .expect("an image manifest")
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Bytes of `layers` GET from `reg` so far, and how many GETs.
pub fn layer_bytes(reg: &Registry, layers: &[(String, u64)]) -> (u64, usize) {
    layers.iter().fold((0, 0), |(b, n), (d, _)| {
        let (reqs, bytes, _) = reg.blob_traffic(d);
        (b + bytes, n + reqs)
    })
}

/// stdout of a successful container run, or a panic with everything.
pub fn stdout_ok(o: &Output, what: &str, ctd: &Containerd) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}{}\n--- containerd log (tail) ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        tail(&ctd.log(), 40)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
