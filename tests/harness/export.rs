//! Export-directory helpers: a `regfs mount … --export` daemon, the `regfs`
//! client commands, and pulling a pushed image back with skopeo + umoci.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::mount::{mount_fstype, regfs_bin, Mount};
use super::process::{run, tempdir};
use super::registry::Registry;

/// A daemon serving the registry at `mount.path()` and an export directory.
pub struct ExportMount {
    /// The daemon (read-only mount + export mount).
    pub mount: Mount,
    export: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl ExportMount {
    /// `regfs mount REG MNT --export EXP --export-state STATE …extra`.
    pub fn new(reg: &Registry, extra: &[&str]) -> ExportMount {
        let export = tempdir(&format!("exp-{}", std::process::id()));
        let state = tempdir("export-state");
        let mut args: Vec<&str> = vec![
            "--export",
            export.path().to_str().unwrap(),
            "--export-state",
            state.path().to_str().unwrap(),
            "--tag-ttl",
            "1",
        ];
        args.extend_from_slice(extra);
        let mount = Mount::new(reg, &args);
        let em = ExportMount {
            mount,
            export,
            state,
        };
        em.wait_export();
        em
    }

    fn wait_export(&self) {
        for _ in 0..400 {
            if mount_fstype(self.dir()).is_some_and(|t| t.starts_with("fuse")) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("export dir not mounted\n{}", self.mount.log());
    }

    /// The export directory.
    pub fn dir(&self) -> &Path {
        self.export.path()
    }

    /// Path of entry `name` in the export directory.
    pub fn entry(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// SIGKILL the daemon; the export mount goes stale.
    pub fn kill9(&mut self) {
        self.mount.kill9();
        detach(self.dir());
    }

    /// Restart the daemon with the same arguments.
    pub fn remount(&mut self) {
        detach(self.dir());
        self.mount.remount();
        self.wait_export();
    }

    /// Run `regfs ARGS` and return its output (not checked).
    pub fn regfs(&self, args: &[&str]) -> Output {
        Command::new(regfs_bin())
            .args(args)
            .output()
            .expect("run regfs")
    }

    /// `regfs commit EXP/entry -q`, asserting success; returns stdout.
    pub fn commit(&self, entry: &str) -> String {
        let p = self.entry(entry);
        let out = self.regfs(&["commit", "-q", p.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "commit {entry} failed: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.mount.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn detach(p: &Path) {
    let _ = Command::new("umount").arg("-l").arg(p).output();
}

impl Drop for ExportMount {
    fn drop(&mut self) {
        self.mount.unmount();
        detach(self.export.path());
    }
}

/// The layer digest (`sha256:…`) in a `regfs commit` output line.
pub fn layer_of(commit_output: &str) -> String {
    let i = commit_output.find("(layer ").expect("layer in output") + 7;
    commit_output[i..]
        .split([',', ' '])
        .next()
        .unwrap()
        .to_string()
}

/// `skopeo copy` `repo:tag` from `reg` to a fresh OCI layout and
/// `umoci unpack` it; returns (tempdir, rootfs path).
pub fn pull_unpack(reg: &Registry, reference: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempdir("pulled");
    let layout = d.path().join("oci");
    let mut src_opts: Vec<OsString> = vec!["--src-tls-verify=false".into()];
    if let (Some(u), Some(p)) = (reg.username(), reg.password()) {
        src_opts.push("--src-creds".into());
        src_opts.push(format!("{u}:{p}").into());
    }
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .args(&src_opts)
        .arg(format!("docker://{}/{reference}", reg.host_port()))
        .arg(format!("oci:{}:x", layout.display())));
    let bundle = d.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:x", layout.display()))
        .arg(&bundle));
    (d, bundle.join("rootfs"))
}
