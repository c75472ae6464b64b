//! Restarts: containerd restarted under a running container keeps it and
//! the snapshots; regfs restarted with no container running finds its
//! snapshots again and containers run on them.

use crate::daemon::{python_rpulled, serial, stdout_ok, tools_ready, wait_for};

#[test]
fn containerd_and_regfs_restarts_keep_snapshots() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let (mut regfs, mut ctd, image) = python_rpulled(&[]);
    ctd.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "regfs",
        &image,
        "keep",
        "sleep",
        "600",
    ]);
    let before = ctd.snapshots();
    assert_eq!(before.len(), 5, "4 layers and the container's: {before:?}");

    ctd.restart();
    assert_eq!(ctd.snapshots(), before);
    let tasks = ctd.ctr(&["task", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("keep") && l.contains("RUNNING")),
        "{tasks}"
    );
    let out = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "keep",
        "python3",
        "-c",
        "print(2)",
    ]);
    assert_eq!(out.trim(), "2");
    ctd.ctr(&["task", "kill", "-s", "SIGKILL", "keep"]);
    wait_for(
        || ctd.ctr_output(&["task", "rm", "keep"]).status.success(),
        "the task to stop",
    );
    ctd.ctr(&["container", "rm", "keep"]);
    let committed = ctd.snapshots();
    assert_eq!(committed.len(), 4, "{committed:?}");

    regfs.restart();
    assert_eq!(ctd.snapshots(), committed);
    let out = stdout_ok(
        &ctd.run(&image, "again", &["python3", "-c", "print(3)"]),
        "run after the regfs restart",
        &ctd,
    );
    assert_eq!(out.trim(), "3");
}

/// A container reading its image's files (page cache dropped before each
/// read, so every read goes through overlayfs to the regfs mount) while the
/// regfs server is replaced 5 times and killed 3 times under `--supervise`:
/// the task keeps running, every round reads the same bytes, and the
/// snapshotter answers afterwards.
#[test]
fn a_running_container_keeps_reading_across_regfs_restarts() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let (regfs, ctd, image) = python_rpulled(&["--supervise"]);
    let script = r#"
import glob, hashlib, os, time
files = sorted(glob.glob('/usr/lib/python3.11/**/*.py', recursive=True))[:300]
while True:
    h = hashlib.sha256()
    try:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            with os.fdopen(fd, 'rb') as r:
                h.update(r.read())
        line = h.hexdigest()
    except Exception as e:
        line = 'FAIL %r' % e
    with open('/tmp/rounds', 'a') as out:
        out.write(line + '\n')
    time.sleep(0.05)
"#;
    ctd.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "regfs",
        &image,
        "reader",
        "python3",
        "-c",
        script,
    ]);
    let rounds = || {
        let o = ctd.ctr_output(&[
            "task",
            "exec",
            "--exec-id",
            &format!("r{}", rand_id()),
            "reader",
            "cat",
            "/tmp/rounds",
        ]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    wait_for(|| rounds().len() >= 2, "the reader's first rounds");
    let mnt = regfs.mount.path().to_path_buf();
    let pid = |mnt: &std::path::Path| -> u64 {
        let o = std::process::Command::new(crate::harness::regfs_bin())
            .args(["status", "--json"])
            .arg(mnt)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["pid"]
            .as_u64()
            .unwrap()
    };
    let before = rounds().len();
    for i in 0..8 {
        let old = pid(&mnt);
        if i % 3 == 2 {
            // SAFETY: a plain kill(2).
            unsafe { libc::kill(old as i32, libc::SIGKILL) };
        } else {
            let o = std::process::Command::new(crate::harness::regfs_bin())
                .arg("restart")
                .arg(&mnt)
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        }
        wait_for(
            || std::panic::catch_unwind(|| pid(&mnt)).is_ok_and(|p| p != old),
            "a new regfs server",
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let all = rounds();
    assert!(
        all.len() >= before + 4,
        "the reader went on: {} rounds, {before} before",
        all.len()
    );
    assert!(
        all.iter().all(|l| l == &all[0] && !l.starts_with("FAIL")),
        "{all:#?}"
    );
    let tasks = ctd.ctr(&["task", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("reader") && l.contains("RUNNING")),
        "{tasks}"
    );
    assert_eq!(
        ctd.snapshots().len(),
        5,
        "the snapshotter answers after the restarts"
    );
    ctd.ctr(&["task", "kill", "-s", "SIGKILL", "reader"]);
    wait_for(
        || ctd.ctr_output(&["task", "rm", "reader"]).status.success(),
        "the task to stop",
    );
    ctd.ctr(&["container", "rm", "reader"]);
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
