//! `regfs trace`: the files of an image a workload opens through the
//! mount, in the order of their first open.

use std::process::Command;

use crate::harness::*;

fn regfs(args: &[&str]) -> std::process::Output {
    Command::new(regfs_bin()).args(args).output().unwrap()
}

/// A mount of the lab's python registry with a trace of python:3.11 started.
fn traced_mount() -> (&'static Registry, Mount) {
    let reg = lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let out = regfs(&[
        "trace",
        "start",
        m.path().to_str().unwrap(),
        "lab/python:3.11",
    ]);
    assert!(out.status.success(), "{out:?}");
    (reg, m)
}

#[test]
fn a_trace_lists_the_files_python_opened_in_order() {
    require_fuse!();
    let (_, m) = traced_mount();
    let mnt = m.path().to_str().unwrap();
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

#[test]
fn a_published_trace_is_listed_next_to_the_image() {
    require_fuse!();
    let (reg, m) = traced_mount();
    let mnt = m.path().to_str().unwrap();
    let rootfs = m.path().join("lab/python:3.11/rootfs");
    std::fs::read(rootfs.join("etc/os-release")).unwrap();
    std::fs::read(rootfs.join("etc/debian_version")).unwrap();
    let out = regfs(&["trace", "stop", mnt, "lab/python:3.11", "--publish"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("published as the prefetch list"), "{said}");
    // The registry (no referrers API) lists it under the fallback tag of the
    // image's manifest, as an artifact of regfs's prefetch-list type.
    let get = |path: &str| {
        let o = Command::new("curl")
            .args(["-sf", "-H", "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"])
            .arg(format!("http://{}/v2/lab/python/{path}", reg.host_port()))
            .output()
            .unwrap();
        assert!(o.status.success(), "GET {path}: {o:?}");
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let digest = String::from_utf8_lossy(
        &Command::new("curl")
            .args(["-sfI", "-H", "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"])
            .arg(format!("http://{}/v2/lab/python/manifests/3.11", reg.host_port()))
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .find_map(|l| l.to_ascii_lowercase().strip_prefix("docker-content-digest: ").map(|d| d.trim().to_string()))
    .expect("the tag's digest");
    let tag = digest.replacen(':', "-", 1);
    let index = get(&format!("manifests/{tag}"));
    let listed = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.regfs.prefetch-list.v1")
        .unwrap_or_else(|| panic!("no prefetch list under {tag}: {index}"));
    let artifact = get(&format!("manifests/{}", listed["digest"].as_str().unwrap()));
    assert_eq!(artifact["subject"]["digest"], digest.as_str());
    let file = artifact["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let text = Command::new("curl")
        .arg("-sf")
        .arg(format!(
            "http://{}/v2/lab/python/blobs/{file}",
            reg.host_port()
        ))
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        String::from_utf8_lossy(&text),
        // os-release is a symlink to ../usr/lib/os-release: the file opened is listed.
        "usr/lib/os-release\netc/debian_version\n"
    );
}
