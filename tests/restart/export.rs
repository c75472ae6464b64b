//! The export mount under `--supervise`: a writer keeps writing and reading
//! back files, and appends to one file it holds open, while the server is
//! restarted 5 times and killed twice; the entry then commits and the
//! pushed image holds exactly what was written.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::export::{pull_unpack, ExportMount};
use crate::harness::*;

fn server_pid(mnt: &std::path::Path) -> Option<u64> {
    let out = Command::new(regfs_bin())
        .args(["status", "--json"])
        .arg(mnt)
        .output()
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?["pid"].as_u64()
}

#[test]
fn writes_to_the_export_survive_restarts_and_kills() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &["--supervise"]);
    let entry = em.entry("restarted:1");
    std::fs::create_dir(&entry).unwrap();
    std::fs::create_dir(entry.join("data")).unwrap();
    let log_path = entry.join("data/appended.log");
    let held = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&log_path)
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, entry) = (stop.clone(), entry.clone());
        std::thread::spawn(move || {
            let mut held = held;
            let mut written = 0u64;
            let mut errors = Vec::new();
            let mut appended = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let name = entry.join(format!("data/file-{}", written % 50));
                let body = format!("round {written}\n").repeat(100);
                // Create-or-truncate and write: the same result if a request
                // is given to the next server again after a kill.
                let r = std::fs::write(&name, &body).and_then(|()| std::fs::read(&name));
                match r {
                    Ok(b) if b == body.as_bytes() => {}
                    Ok(_) => errors.push(format!("{}: wrong bytes", name.display())),
                    Err(e) => errors.push(format!("{}: {e}", name.display())),
                }
                let line = format!("line {written}\n");
                if let Err(e) = held.write_all(line.as_bytes()) {
                    errors.push(format!("append: {e}"));
                } else {
                    appended.extend_from_slice(line.as_bytes());
                }
                let mut back = vec![0u8; appended.len()];
                if let Err(e) = held.read_exact_at(&mut back, 0) {
                    errors.push(format!("read back the held file: {e}"));
                } else if back != appended {
                    errors.push("the held file reads back wrong".into());
                }
                written += 1;
            }
            (written, errors, appended)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mnt = em.mount.path().to_path_buf();
    for i in 0..7 {
        let old = server_pid(&mnt).expect("the server's pid");
        if i == 2 || i == 5 {
            // SAFETY: a plain kill(2).
            unsafe { libc::kill(old as i32, libc::SIGKILL) };
        } else {
            let out = em.regfs(&["restart", mnt.to_str().unwrap()]);
            assert!(out.status.success(), "{out:?}\n{}", em.mount.log());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while server_pid(&mnt).is_none_or(|p| p == old) {
            assert!(
                Instant::now() < deadline,
                "no new server\n{}",
                em.mount.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let (written, errors, appended) = writer.join().unwrap();
    assert!(errors.is_empty(), "{errors:#?}\n{}", em.mount.log());
    assert!(written > 20, "the writer went on: {written} rounds");

    em.commit("restarted:1");
    let (_keep, rootfs) = pull_unpack(&reg, "restarted:1");
    assert_eq!(
        std::fs::read(rootfs.join("data/appended.log")).unwrap(),
        appended
    );
    let last = written - 1;
    let newest = rootfs.join(format!("data/file-{}", last % 50));
    assert_eq!(
        std::fs::read_to_string(newest).unwrap(),
        format!("round {last}\n").repeat(100)
    );
}

/// A commit in flight when the server is killed fails with an error (no
/// hang), nothing staged is lost, and the same commit run again on the next
/// server pushes the entry; `regfs restart` refuses while a commit runs.
#[test]
fn a_commit_cut_by_a_kill_fails_cleanly_and_runs_again() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &["--supervise"]);
    let entry = em.entry("cut:1");
    std::fs::create_dir(&entry).unwrap();
    // Enough incompressible bytes that the commit takes a while.
    let mut big = vec![0u8; 48 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(entry.join("big.bin"), &big).unwrap();
    let mnt = em.mount.path().to_path_buf();
    let old = server_pid(&mnt).unwrap();
    let commit = Command::new(regfs_bin())
        .args(["commit", "-q"])
        .arg(&entry)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the commit is under way, then try a restart and kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = em.regfs(&["status", "--json", mnt.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["in_flight"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the commit never showed as in flight"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = em.regfs(&["restart", mnt.to_str().unwrap()]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in flight"),
        "{refused:?}"
    );
    // SAFETY: a plain kill(2).
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let out = commit.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the cut commit says it failed: {out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_pid(&mnt).is_none_or(|p| p == old) {
        assert!(Instant::now() < deadline, "no new server");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read(entry.join("big.bin")).unwrap(),
        big,
        "nothing staged lost"
    );
    em.commit("cut:1");
    let (_keep, rootfs) = pull_unpack(&reg, "cut:1");
    assert_eq!(std::fs::read(rootfs.join("big.bin")).unwrap(), big);
}
