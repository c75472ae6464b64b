//! Issue 2: the mount's lifetime: `regfs unmount`, SIGTERM / SIGINT, `--daemon`.

use crate::harness;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{lab, mount_fstype, regfs_bin, tempdir, Mount};

fn wait_unmounted(m: &Mount) {
    let start = Instant::now();
    while m.is_mounted() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still mounted after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unmount_command_detaches_and_the_daemon_exits_zero() {
    require_fuse!();
    let mut m = Mount::new(lab().image("busybox"), &[]);
    fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    let st = m.unmount().expect("daemon exited");
    assert!(st.success(), "{st}");
    assert!(!m.is_mounted());
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    require_fuse!();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut m = Mount::new(lab().image("busybox"), &[]);
        // A file held open across the signal: the lazy detach must not hang on it.
        let open = fs::File::open(m.path().join("lab/busybox:latest/manifest.json")).unwrap();
        assert_eq!(unsafe { libc::kill(m.pid() as i32, sig) }, 0);
        wait_unmounted(&m);
        drop(open);
        let st = m.unmount().expect("daemon exited");
        assert!(st.success(), "signal {sig}: {st}; log:\n{}", m.log());
    }
}

#[test]
fn daemon_mode_returns_once_mounted() {
    require_fuse!();
    let reg = lab().image("busybox");
    let mp = tempdir("mnt");
    let cache = tempdir("cache");
    let log = cache.path().join("daemon.log");
    let started = Instant::now();
    let out = Command::new(regfs_bin())
        .arg("mount")
        .arg(reg.host_port())
        .arg(mp.path())
        .arg("--cache-dir")
        .arg(cache.path().join("c"))
        .args(["--plain-http", "--daemon", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mounted_now = mount_fstype(mp.path());
    let cleanup = || {
        let _ = Command::new(regfs_bin())
            .arg("unmount")
            .arg(mp.path())
            .status();
    };
    if !out.status.success() || mounted_now.is_none() {
        cleanup();
        panic!(
            "--daemon: {:?}, mounted: {mounted_now:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid: i32 = text
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    assert!(fs::read_link(mp.path().join("lab/busybox:latest")).is_ok());
    let st = Command::new(regfs_bin())
        .arg("unmount")
        .arg(mp.path())
        .status()
        .unwrap();
    assert!(st.success());
    // The detached daemon notices and exits.
    let start = Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon {pid} still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(mount_fstype(mp.path()).is_none());
}

/// Whether `pid` runs (a zombie waiting for its reaper has exited).
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
