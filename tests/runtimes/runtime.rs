//! A private podman: its own storage (graphroot, runroot, temporary
//! directory) and configuration files, so tests run side by side and leave
//! nothing behind; optionally with a regfs layer store configured.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use crate::harness;

/// One test of this binary at a time: they count the traffic of one shared
/// registry (a test reading a layer would show in another's count), and
/// each is a few hundred MB of I/O on a small machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when podman can be used; otherwise prints SKIP and returns false,
/// or panics under `REGFS_REQUIRE_FUSE=1` (as `require_fuse!` does).
pub fn podman_ready() -> bool {
    if !harness::fuse_ready() {
        return false;
    }
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("REGFS_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("podman is required (REGFS_REQUIRE_FUSE=1) but cannot be run");
        }
        eprintln!("SKIP: podman is not installed");
    }
    ok
}

/// Return from the test when podman (or FUSE) is missing.
#[macro_export]
macro_rules! require_podman {
    () => {
        if !$crate::runtime::podman_ready() {
            return;
        }
    };
}

/// One podman installation in a temporary directory.
pub struct Podman {
    dir: tempfile::TempDir,
}

/// containers.conf: cgroupfs and a file event log (no systemd here), runc,
/// and rlimits that root without CAP_SYS_RESOURCE may set (podman's
/// defaults make runc fail with "error setting rlimit").
fn containers_conf(tmp: &Path) -> String {
    format!(
        "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
         tmp_dir = \"{}\"\n\
         [containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n",
        tmp.display()
    )
}

impl Podman {
    /// A podman whose storage uses `layer_store` (a regfs `--layer-store`
    /// directory) as an additional layer store, or ordinary storage (`None`).
    pub fn new(layer_store: Option<&Path>) -> Podman {
        let dir = harness::tempdir("podman");
        let d = dir.path();
        for sub in ["graph", "run", "tmp"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let mut storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d.join("graph").display(),
            d.join("run").display()
        );
        if let Some(als) = layer_store {
            storage += &format!(
                "[storage.options]\nadditionallayerstores = [\"{}:ref\"]\n",
                als.display()
            );
        }
        fs::write(d.join("storage.conf"), storage).unwrap();
        fs::write(d.join("containers.conf"), containers_conf(&d.join("tmp"))).unwrap();
        Podman { dir }
    }

    /// `podman ARGS…` with this installation's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .args(args);
        c
    }

    /// Run `podman ARGS…` and return its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    /// Run `podman ARGS…`, panicking unless it succeeds; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The graph root (for checks on what podman stored).
    pub fn graphroot(&self) -> PathBuf {
        self.dir.path().join("graph")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f"]).status;
        let _ = self.run(&["rmi", "-a", "-f"]).status;
        // Whatever podman left mounted under its directory (innermost first).
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&root))
            .collect();
        ours.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in ours {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}

/// A tag in the registry as podman names it: `HOST:PORT/lab/NAME:TAG`.
pub fn image_ref(reg: &harness::Registry, name_tag: &str) -> String {
    format!("{}/lab/{name_tag}", reg.host_port())
}
