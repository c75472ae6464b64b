//! Inside a container on regfs layers: whiteouts and opaque directories
//! applied, writes in the local upper dir; `ctr snapshots rm` and `ctr image
//! rm` clean up regfs's snapshots.

use crate::daemon::{python_rpulled, serial, stdout_ok, tools_ready, wait_for};

const PROBE: &str = "for p in /usr/lib/python3.11/antigravity.py /usr/lib/python3.11/pydoc_data \
  /etc/issue.net /etc/issue /opt/lab/old /opt/lab/numbers.txt; do \
  if [ -e $p ]; then echo present $p; else echo absent $p; fi; done; \
  ls -A /opt/lab | wc -l; cat /opt/lab/sub/file.txt; \
  find /etc /opt /usr/lib/python3.11 -name '.wh.*' | wc -l";

const EXPECTED: &str = "absent /usr/lib/python3.11/antigravity.py
absent /usr/lib/python3.11/pydoc_data
absent /etc/issue.net
present /etc/issue
absent /opt/lab/old
present /opt/lab/numbers.txt
4
layer 4
0";

#[test]
fn whiteouts_upper_dir_and_cleanup() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let (regfs, ctd, image) = python_rpulled(&[]);

    let out = stdout_ok(
        &ctd.run(&image, "probe", &["sh", "-c", PROBE]),
        "probe",
        &ctd,
    );
    assert_eq!(out.trim(), EXPECTED);

    // A write lands in the active snapshot's upper dir on local disk.
    ctd.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "regfs",
        &image,
        "writer",
        "sh",
        "-c",
        "echo written > /etc/regfs-written; sleep 600",
    ]);
    let upper_file = || {
        regfs
            .snapshot_dirs()
            .iter()
            .map(|d| d.join("fs/etc/regfs-written"))
            .find(|p| std::fs::symlink_metadata(p).is_ok())
    };
    wait_for(
        || upper_file().is_some(),
        "the container's write in an upper dir",
    );
    let f = upper_file().unwrap();
    assert!(
        !std::fs::symlink_metadata(f.parent().unwrap().parent().unwrap())
            .unwrap()
            .is_symlink(),
        "the upper dir is local, not a remote layer: {f:?}"
    );
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "written\n");
    assert_eq!(
        ctd.snapshots().iter().filter(|s| s.2 == "Active").count(),
        1,
        "{:?}",
        ctd.snapshots()
    );
    ctd.ctr(&["task", "kill", "-s", "SIGKILL", "writer"]);
    wait_for(
        || ctd.ctr_output(&["task", "rm", "writer"]).status.success(),
        "the writer task to stop",
    );
    ctd.ctr(&["container", "rm", "writer"]);
    // containerd's garbage collector removes it from regfs soon after.
    wait_for(
        || upper_file().is_none(),
        "the upper dir to go with its container",
    );

    // ctr snapshots prepare / rm on top of the image's top layer.
    let snaps = ctd.snapshots();
    let top = snaps
        .iter()
        .find(|s| !snaps.iter().any(|c| c.1 == s.0))
        .expect("a top snapshot")
        .0
        .clone();
    ctd.ctr(&[
        "snapshots",
        "--snapshotter",
        "regfs",
        "prepare",
        "extra",
        &top,
    ]);
    assert!(ctd
        .snapshots()
        .iter()
        .any(|s| s.0 == "extra" && s.2 == "Active"));
    let dirs = regfs.snapshot_dirs().len();
    ctd.ctr(&["snapshots", "--snapshotter", "regfs", "rm", "extra"]);
    assert!(!ctd.snapshots().iter().any(|s| s.0 == "extra"));
    // containerd removes it from regfs in its next garbage collection.
    wait_for(
        || regfs.snapshot_dirs().len() == dirs - 1,
        "the removed snapshot's directory to go",
    );

    // Removing the image collects its snapshots, in regfs too.
    ctd.ctr(&["image", "rm", "--sync", &image]);
    wait_for(
        || ctd.snapshots().is_empty(),
        "the snapshots to be collected",
    );
    wait_for(
        || regfs.snapshot_dirs().is_empty(),
        "regfs's snapshot directories to go",
    );
    let meta = std::fs::read_to_string(regfs.root.join("metadata.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["snapshots"].as_object().unwrap().len(), 0, "{meta}");
}
