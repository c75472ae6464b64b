//! Restarts: containerd restarted under a running container keeps it and
//! the snapshots; regfs restarted with no container running finds its
//! snapshots again and containers run on them.

use crate::daemon::{serial, stdout_ok, tools_ready, wait_for, Containerd, Regfs};
use crate::harness::lab;

#[test]
fn containerd_and_regfs_restarts_keep_snapshots() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let reg = lab().image("python");
    let mut regfs = Regfs::new(reg);
    let mut ctd = Containerd::start(&regfs.socket);
    let image = format!("{}/lab/python:3.11", reg.host_port());
    ctd.rpull(&image);
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
