//! A trace recorded on a mount (`chroot … python3 -c 'import json,
//! sqlite3'`) and converted in with `--prefetch-from`: the same command
//! on a fresh cache and a fresh mount then needs fewer Range requests than
//! on the image converted without it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::convert_ok;
use crate::harness::{regfs_bin, tempdir, Mount, Registry, RegistryKind};

const WORKLOAD: &str = "import json, sqlite3";

fn python(rootfs: &Path) {
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(["python3", "-c", WORKLOAD])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn regfs(args: &[&str]) -> String {
    let out = Command::new(regfs_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "regfs {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Range requests (206) the registry answered while `f` ran, counted once
/// the access log stops growing (a prefetch may finish after `f`), their
/// bytes, and `f`'s wall time.
fn ranges_during(reg: &Registry, f: impl FnOnce()) -> (usize, u64, Duration) {
    let before = reg.requests().len();
    let t = Instant::now();
    f();
    let took = t.elapsed();
    let mut n = reg.requests().len();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let m = reg.requests().len();
        if m == n {
            break;
        }
        n = m;
    }
    let r: Vec<_> = reg.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET" && r.status == 206)
        .cloned()
        .collect();
    (r.len(), r.iter().map(|r| r.bytes).sum(), took)
}

#[test]
fn a_traced_conversion_prefetches_what_the_workload_reads() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    convert_ok(
        &reg,
        "lab/python:3.11",
        "lab/python:plain-esgz",
        &["--estargz"],
    );
    // Record on a mount of the converted image.
    let dir = tempdir("convert-trace");
    let trace = dir.path().join("python.trace");
    {
        let m = Mount::new(&reg, &[]);
        let mnt = m.path().to_str().unwrap();
        regfs(&["trace", "start", mnt, "lab/python:plain-esgz"]);
        python(&m.path().join("lab/python:plain-esgz/rootfs"));
        let paths = regfs(&["trace", "stop", mnt, "lab/python:plain-esgz"]);
        assert!(paths.contains("usr/bin/python3.11"), "{paths}");
        assert!(paths.contains("sqlite3"), "{paths}");
        std::fs::write(&trace, paths).unwrap();
    }
    for (format, suffix) in [("--estargz", "esgz"), ("--zstd-chunked", "zc")] {
        let plain = format!("lab/python:plain-{suffix}");
        let traced = format!("lab/python:traced-{suffix}");
        if suffix != "esgz" {
            convert_ok(&reg, "lab/python:3.11", &plain, &[format]);
        }
        let out = convert_ok(
            &reg,
            "lab/python:3.11",
            &traced,
            &[format, "--prefetch-from", trace.to_str().unwrap()],
        );
        assert!(out.contains("before .prefetch.landmark"), "{out}");
        eprintln!("{out}");
        let mut runs = Vec::new();
        for image in [&plain, &traced] {
            // A fresh cache and a fresh mount each.
            let m = Mount::new(&reg, &[]);
            let rootfs = m.path().join(image).join("rootfs");
            let (n, bytes, took) = ranges_during(&reg, || python(&rootfs));
            eprintln!(
                "{image}: python3 -c '{WORKLOAD}': {n} Range requests, {bytes} bytes, {took:?}"
            );
            runs.push(n);
        }
        assert!(
            runs[1] < runs[0],
            "{format}: the traced image took {} Range requests, the plain one {}",
            runs[1],
            runs[0]
        );
    }
}
