//! `regfs trace`: the files of an image a workload opens through the
//! mount, in the order of their first open.

use std::process::Command;

use crate::harness::*;

fn regfs(args: &[&str]) -> std::process::Output {
    Command::new(regfs_bin()).args(args).output().unwrap()
}

#[test]
fn a_trace_lists_the_files_python_opened_in_order() {
    require_fuse!();
    let reg = lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let mnt = m.path().to_str().unwrap();
    let out = regfs(&["trace", "start", mnt, "lab/python:3.11"]);
    assert!(out.status.success(), "{out:?}");
    let run = Command::new("chroot")
        .arg(m.path().join("lab/python:3.11/rootfs"))
        .args(["python3", "-c", "import json; print(1)"])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    assert_eq!(run.stdout, b"1\n", "{run:?}");
    let out = regfs(&["trace", "stop", mnt, "lab/python:3.11"]);
    assert!(out.status.success(), "{out:?}");
    let paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let at = |p: &str| {
        paths
            .iter()
            .position(|x| x == p)
            .unwrap_or_else(|| panic!("{p} not in the trace: {paths:#?}"))
    };
    // python reads compiled modules; the interpreter first, then the
    // encodings it starts with, then what `import json` pulls in.
    let pyc = |m: &str| format!("usr/lib/python3.11/{m}.cpython-311.pyc");
    let json = at(&pyc("json/__pycache__/__init__"));
    assert!(at("usr/bin/python3.11") < at(&pyc("encodings/__pycache__/__init__")));
    assert!(at(&pyc("encodings/__pycache__/__init__")) < json);
    assert!(json < at(&pyc("json/__pycache__/decoder")));
    assert!(
        !paths.iter().any(|p| p.contains("sqlite3")),
        "not imported: {paths:#?}"
    );
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paths.len(), "each path once");
    // The trace is gone once stopped.
    let again = regfs(&["trace", "stop", mnt, "lab/python:3.11"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no trace"),
        "{again:?}"
    );
}
