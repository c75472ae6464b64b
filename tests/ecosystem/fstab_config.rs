//! Issue 6: configuration and mounting conventions — a config file with the
//! flags' keys (flags win), mount(8) `-o` option strings, and the
//! `mount.fuse.regfs` helper used by `mount -t fuse.regfs` and /etc/fstab lines.
//!
//! The helper test creates `/sbin/mount.fuse.regfs -> target/debug/regfs`
//! (only if nothing is there) and removes it afterwards.

use crate::harness;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{lab, mount_fstype, regfs_bin, tempdir, Mount};

fn mountinfo_line(mp: &Path) -> String {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
        .unwrap_or("")
        .to_string()
}

#[test]
fn config_file_and_mount_options() {
    require_fuse!();
    let reg = lab().image("busybox");
    let d = tempdir("conf");
    let from_config = d.path().join("from-config.log");
    let from_flag = d.path().join("from-flag.log");
    let conf = d.path().join("config.toml");
    // allow_other comes from the file; log_file from both: the flag (-o) wins.
    fs::write(
        &conf,
        format!(
            "log_file = \"{}\"\nallow_other = true\ntimeout = 10\n",
            from_config.display()
        ),
    )
    .unwrap();
    let opts = format!(
        "ro,tag_ttl=2,cache_size=64M,_netdev,log_file={}",
        from_flag.display()
    );
    let m = Mount::with_args(
        &reg.host_port(),
        ["--config", conf.to_str().unwrap(), "-o", &opts]
            .map(OsString::from)
            .to_vec(),
        None,
    );
    let line = mountinfo_line(m.path());
    assert!(line.contains("allow_other"), "{line}");
    assert!(fs::read_link(m.path().join("lab/busybox:latest")).is_ok());
    let logged = fs::read_to_string(&from_flag).unwrap_or_default();
    assert!(
        logged.contains("mounted"),
        "-o log_file not used: {logged:?}"
    );
    assert!(
        !from_config.exists(),
        "the config's log_file won over the flag"
    );

    // An unknown -o option is refused (the test can fail).
    let out = Command::new(regfs_bin())
        .args(["mount", &reg.host_port()])
        .arg(tempdir("mnt").path())
        .args(["-o", "no_such_option=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

struct HelperLink(PathBuf);
impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn wait_mounted(mp: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if mount_fstype(mp).is_some_and(|t| t.starts_with("fuse")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new(regfs_bin())
            .arg("unmount")
            .arg(&self.0)
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn mount_t_fuse_regfs_and_fstab() {
    require_fuse!();
    let reg = lab().image("busybox");
    let link = PathBuf::from("/sbin/mount.fuse.regfs");
    let _guard = match fs::symlink_metadata(&link) {
        Ok(_) => None, // an installed helper: use it as is
        Err(_) => {
            std::os::unix::fs::symlink(regfs_bin(), &link).unwrap();
            Some(HelperLink(link.clone()))
        }
    };
    let digest = reg.manifest_digest("lab/busybox", "latest");
    for via_fstab in [false, true] {
        let mp = tempdir("mnt-helper");
        let cache = tempdir("cache-helper");
        let log = cache.path().join("daemon.log");
        let opts = format!(
            "ro,allow_other,cache_dir={},log_file={},tag_ttl=5",
            cache.path().display(),
            log.display()
        );
        let mut cmd = Command::new("mount");
        if via_fstab {
            let fstab = cache.path().join("fstab");
            fs::write(
                &fstab,
                format!(
                    "{} {} fuse.regfs {opts},_netdev 0 0\n",
                    reg.host_port(),
                    mp.path().display()
                ),
            )
            .unwrap();
            cmd.arg("--fstab").arg(&fstab).arg(mp.path());
        } else {
            cmd.args(["-t", "fuse.regfs", &reg.host_port()])
                .arg(mp.path())
                .args(["-o", &opts]);
        }
        let _u = Unmount(mp.path().to_path_buf());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "mount (fstab: {via_fstab}): {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(wait_mounted(mp.path()), "not mounted");
        let target = fs::read_link(mp.path().join("lab/busybox:latest")).unwrap();
        assert_eq!(target.to_str().unwrap(), format!("busybox@{digest}"));
        assert!(mountinfo_line(mp.path()).contains("allow_other"));
        let st = Command::new(regfs_bin())
            .arg("unmount")
            .arg(mp.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
}
