//! A mount that says what it is doing: an unreachable registry still mounts,
//! with a clear warning on the terminal and in the log, `regfs status` shows
//! the registry's state, and a background check notices when it comes back.
//! Normal operation logs no warnings: `regfs unmount` (no second unmount by
//! fuser) and ioctls (ENOTTY, quietly).

use crate::harness;

use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use harness::*;

fn regfs(args: &[&str]) -> Output {
    Command::new(regfs_bin())
        .args(args)
        .output()
        .expect("run regfs")
}

fn status_json(mountpoint: &Path) -> serde_json::Value {
    let o = regfs(&["status", mountpoint.to_str().unwrap(), "--json"]);
    assert!(
        o.status.success(),
        "regfs status --json: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

/// Forward `127.0.0.1:port` to `upstream` from now on: "the registry comes
/// back on the port the mount was given". The accept loop lives as long as the
/// test process.
fn forward(port: u16, upstream: String) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the forwarder port");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let pipe = |mut a: TcpStream, mut b: TcpStream| {
                std::thread::spawn(move || {
                    let _ = io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unreachable_registry_mounts_warns_and_comes_back() {
    require_fuse!();
    let reg = lab().image("busybox");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let logdir = tempdir("reach-log");
    let log_file = logdir.path().join("regfs.log");
    let m = Mount::with_args(
        &addr,
        vec![
            "--plain-http".into(),
            "--retries".into(),
            "0".into(),
            "--log-file".into(),
            log_file.clone().into(),
        ],
        None,
    );
    let warning = format!("registry {addr} unreachable: ");
    let tail = "; serving from the cache, retrying";
    // The terminal (the daemon's stderr; the log goes to --log-file).
    let terminal = m.log();
    assert!(
        terminal.contains(&format!("regfs: warning: {warning}")) && terminal.contains(tail),
        "no warning on the terminal:\n{terminal}"
    );
    let logged = fs::read_to_string(&log_file).unwrap();
    assert!(
        logged.contains(&warning) && logged.contains(tail) && logged.contains("WARN"),
        "no warning in the log file:\n{logged}"
    );
    assert!(
        logged.to_lowercase().contains("connection refused"),
        "the warning names the cause:\n{logged}"
    );

    let st = status_json(m.path());
    let state = &st["registry_state"];
    assert_eq!(state["reachable"], false, "{st}");
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("connection refused")),
        "{st}"
    );
    let text = regfs(&["status", m.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("registry state: unreachable since"), "{text}");

    // The registry appears on that port: the background check flips the state
    // (backoff 1, 2, 4, 8 s: within 20 s) and logs it once.
    forward(port, reg.host_port());
    wait_for("status to say reachable", Duration::from_secs(40), || {
        status_json(m.path())["registry_state"]["reachable"] == true
    });
    let logged = fs::read_to_string(&log_file).unwrap();
    assert_eq!(
        logged.matches("reachable again").count(),
        1,
        "one line when it comes back:\n{logged}"
    );
    let text = regfs(&["status", m.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("registry state: reachable"));
    // And the mount serves from it.
    let busybox = m.path().join("lab/busybox:latest/rootfs/bin/busybox");
    wait_for("busybox through the mount", Duration::from_secs(15), || {
        fs::metadata(&busybox).is_ok_and(|md| md.len() > 100_000)
    });
}

/// Unmounts a `--daemon` mount when dropped (the daemon is not our child).
struct DaemonMount {
    mountpoint: PathBuf,
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        let _ = regfs(&["unmount", self.mountpoint.to_str().unwrap()]);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .output();
    }
}

#[test]
fn daemon_mount_prints_the_warning_on_the_terminal() {
    require_fuse!();
    let addr = format!("127.0.0.1:{}", free_port());
    let mnt = tempdir(&format!("mnt-{}", std::process::id()));
    let cache = tempdir("cache");
    let logdir = tempdir("reach-log");
    let log_file = logdir.path().join("regfs.log");
    let out = regfs(&[
        "mount",
        &addr,
        mnt.path().to_str().unwrap(),
        "--daemon",
        "--plain-http",
        "--retries",
        "0",
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--log-file",
        log_file.to_str().unwrap(),
    ]);
    let _guard = DaemonMount {
        mountpoint: mnt.path().to_path_buf(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "regfs mount --daemon failed: {stderr}"
    );
    assert!(
        stderr.contains(&format!("regfs: warning: registry {addr} unreachable: "))
            && stderr.contains("; serving from the cache, retrying"),
        "no warning on the terminal: {stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("regfs: mounted"));
    assert_eq!(
        status_json(mnt.path())["registry_state"]["reachable"],
        false
    );
}

#[test]
fn unmount_and_ioctl_log_no_warnings() {
    require_fuse!();
    let reg = lab().image("busybox");
    let mut m = Mount::new(reg, &[]);
    let f = fs::File::open(m.path().join("lab/busybox:latest/rootfs/etc/passwd")).unwrap();
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: TCGETS writes one termios into the buffer we own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
    let err = io::Error::last_os_error();
    assert_eq!(rc, -1);
    assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
    drop(f);
    let status = m.unmount();
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit: {status:?}"
    );
    let log = m.log();
    assert!(
        !log.contains("WARN"),
        "warnings in normal operation:\n{log}"
    );
    assert!(!log.contains("Not Implemented"), "{log}");
    assert!(!log.contains("Unmount failed"), "{log}");
}
