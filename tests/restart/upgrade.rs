//! An upgrade: the binary at the supervisor's path is replaced and `regfs
//! restart` starts the new one; a binary that cannot read the state the
//! running server keeps is refused, with a clear message, while the old
//! server keeps serving.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn status(mnt: &Path) -> serde_json::Value {
    let out = Command::new(regfs_bin())
        .args(["status", "--json"])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn restart(mnt: &Path) -> std::process::Output {
    Command::new(regfs_bin())
        .arg("restart")
        .arg(mnt)
        .output()
        .unwrap()
}

fn exe_ino(pid: u64) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/exe")).unwrap().ino()
}

#[test]
fn an_upgraded_binary_takes_over_and_an_incompatible_one_is_refused() {
    require_fuse!();
    let reg = lab().image("busybox");
    let bindir = tempdir("bin");
    let bin = bindir.path().join("regfs");
    std::fs::copy(regfs_bin(), &bin).unwrap();
    let mnt = tempdir(&format!("mnt-{}", std::process::id()));
    let cache = tempdir("cache");
    let log = cache.path().join("regfs.log");
    let als = tempdir(&format!("als-{}", std::process::id()));
    let command = || {
        let mut cmd = Command::new(&bin);
        cmd.arg("mount")
            .arg(reg.host_port())
            .arg(mnt.path())
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["--plain-http", "--supervise", "--log-file"])
            .arg(&log)
            .arg("--layer-store")
            .arg(als.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    // The copy may be open for writing in a child another test thread is
    // forking at this moment (ETXTBSY until that child execs).
    let mut tries = 0;
    let mut supervisor = loop {
        match spawn_tied(command()) {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{}: {e}", bin.display()),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while mount_fstype(mnt.path()).is_none() {
        assert!(Instant::now() < deadline, "not mounted");
        std::thread::sleep(Duration::from_millis(25));
    }
    let passwd = mnt.path().join("lab/busybox:latest/rootfs/etc/passwd");
    let want = std::fs::read(&passwd).unwrap();
    // The layer store view (a second mount of the same daemon).
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .encode(format!("{}/lab/busybox:latest", reg.host_port()));
    let layer_dir = std::fs::read_dir(als.path().join(&key))
        .expect("the layer store lists the image's layers")
        .next()
        .unwrap()
        .unwrap()
        .path();
    let info = std::fs::read(layer_dir.join("info")).unwrap();
    let first = status(mnt.path())["pid"].as_u64().unwrap();
    let first_exe = exe_ino(first);

    // Upgrade: a different file at the same path.
    let new = bindir.path().join("regfs.new");
    std::fs::copy(regfs_bin(), &new).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&new)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"upgraded"))
        .unwrap();
    std::fs::rename(&new, &bin).unwrap();
    let out = restart(mnt.path());
    assert!(out.status.success(), "{out:?}");
    let second = status(mnt.path())["pid"].as_u64().unwrap();
    assert_ne!(second, first);
    assert_ne!(exe_ino(second), first_exe, "the new binary runs");
    assert_eq!(std::fs::read(&passwd).unwrap(), want);
    assert_eq!(std::fs::read(layer_dir.join("info")).unwrap(), info);
    assert_eq!(
        std::fs::read(layer_dir.join("diff/etc/passwd")).unwrap(),
        want,
        "the layer store serves on"
    );

    // A state version the binary does not read: refused, old server serving.
    let state = cache
        .path()
        .join("run")
        .join(supervisor.id().to_string())
        .join("version");
    let kept = std::fs::read_to_string(&state).expect("the state version file");
    std::fs::write(&state, "999\n").unwrap();
    let out = restart(mnt.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("state version 999"), "{err}");
    assert_eq!(
        status(mnt.path())["pid"].as_u64().unwrap(),
        second,
        "the old server serves on"
    );
    assert_eq!(std::fs::read(&passwd).unwrap(), want);
    std::fs::write(&state, kept).unwrap();
    assert!(restart(mnt.path()).status.success());
    assert_eq!(std::fs::read(&passwd).unwrap(), want);

    let out = Command::new(regfs_bin())
        .arg("unmount")
        .arg(mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = wait_timeout(&mut supervisor, Duration::from_secs(20)).expect("the supervisor exits");
    assert!(
        st.success(),
        "{st}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(mount_fstype(mnt.path()).is_none());
    assert!(
        mount_fstype(als.path()).is_none(),
        "the layer store went with it"
    );
}
