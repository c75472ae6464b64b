//! Issue 6, "Seeing what it does": fetch log lines (hit and miss, never the
//! password), Prometheus metrics, `regfs status`, `regfs prefetch`, and the
//! generated completions and man page.

use crate::harness;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use harness::env_vars;
use harness::{
    free_port, lab, regfs_bin, sha256_file, umoci_unpack, Mount, Registry, RegistryKind, LAB_PASS,
    LAB_USER,
};

fn regfs(args: &[&str]) -> Output {
    Command::new(regfs_bin())
        .args(args)
        .output()
        .expect("run regfs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn check(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

fn status_json(m: &Mount) -> serde_json::Value {
    let out = check(
        regfs(&["status", m.path().to_str().unwrap(), "--json"]),
        "regfs status --json",
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `curl -s URL` (panics unless it answers 200).
fn curl(url: &str) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", url])
        .output()
        .expect("curl");
    check(o, &format!("curl {url}"))
}

/// The value of the first sample line starting with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The log without terminal colour escapes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn fetch_log_has_hits_and_misses_and_never_the_password() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::BasicAuth);
    reg.push("busybox", "lab/busybox:latest");
    let args: Vec<OsString> = ["--plain-http", "--username", LAB_USER, "--password-stdin"]
        .map(OsString::from)
        .to_vec();
    let mut m = Mount::with_env(
        &reg.host_port(),
        args,
        Some(format!("{LAB_PASS}\n")),
        env_vars([("RUST_LOG", "debug")]),
    );
    let file = m.path().join("lab/busybox:latest/rootfs/bin/busybox");
    let first = sha256_file(&file);
    // A second daemon on the same cache: everything is a hit.
    m.remount();
    assert_eq!(sha256_file(&file), first);
    let log = strip_ansi(&m.log());
    m.unmount();

    assert!(log.contains("DEBUG"), "not a debug log:\n{log}");
    for secret in [LAB_PASS, "bGFiOmxhYnBhc3M" /* base64 of lab:labpass */] {
        assert!(
            !log.contains(secret),
            "the log shows {secret:?}:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let lines = |msg: &str, cache: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains(msg) && l.contains(&format!("cache=\"{cache}\"")))
            .collect()
    };
    for (msg, cache) in [
        ("fetched layer", "miss"),
        ("fetched blob", "miss"),
        ("fetched manifest", "miss"),
        ("cache hit layer", "hit"),
        ("cache hit blob", "hit"),
        ("cache hit manifest", "hit"),
    ] {
        let found = lines(msg, cache);
        assert!(!found.is_empty(), "no {msg:?} line:\n{log}");
        for l in found {
            assert!(
                l.contains("digest=sha256:") && l.contains(" bytes=") && l.contains(" ms="),
                "{msg} line lacks digest, bytes or ms: {l}"
            );
        }
    }
}

#[test]
fn metrics_endpoint_counts_fetches_cache_and_fuse_reads() {
    require_fuse!();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(lab().image("busybox"), &["--metrics-addr", &addr]);
    let url = format!("http://{addr}/metrics");
    let before = curl(&url);
    assert_eq!(
        sample(&before, "regfs_cache_misses_total"),
        Some(0.0),
        "{before}"
    );
    let file = m.path().join("lab/busybox:latest/rootfs/bin/busybox");
    let want = sha256_file(&umoci_unpack("busybox").join("bin/busybox"));
    assert_eq!(sha256_file(&file), want);
    let after = curl(&url);

    let bytes = sample(&after, "regfs_registry_bytes_total").unwrap_or(0.0);
    assert!(bytes > 100_000.0, "registry bytes {bytes}:\n{after}");
    assert!(
        sample(&after, "regfs_registry_requests_total{status=\"200\"}").unwrap_or(0.0) >= 3.0,
        "{after}"
    );
    assert!(
        sample(&after, "regfs_cache_misses_total").unwrap_or(0.0) >= 1.0,
        "{after}"
    );
    for name in [
        "regfs_cache_hits_total",
        "regfs_cache_evictions_total",
        "regfs_cache_size_bytes",
        "regfs_verification_failures_total",
        "regfs_fetches_in_flight",
    ] {
        // Verification failures appear once one happens; the rest always.
        if name != "regfs_verification_failures_total" {
            assert!(sample(&after, name).is_some(), "no {name}:\n{after}");
        }
    }
    let reads = sample(&after, "regfs_fuse_op_duration_seconds_count{op=\"read\"}").unwrap_or(0.0);
    assert!(reads >= 1.0, "no FUSE read latency:\n{after}");
    assert!(
        after.contains("regfs_fuse_op_duration_seconds_bucket{op=\"read\",le=\"0.001\"}"),
        "read latency is not a histogram:\n{after}"
    );
    assert!(
        after.contains("# TYPE regfs_fuse_op_duration_seconds histogram"),
        "{after}"
    );
    let (code, _) = http_status(&format!("http://{addr}/nope"));
    assert_eq!(code, 404);
}

fn http_status(url: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .expect("curl");
    (stdout(&o).trim().parse().unwrap_or(0), stdout(&o))
}

#[test]
fn status_shows_images_cache_and_fetches() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &["--cache-size", "1G"]);
    let s = status_json(&m);
    assert_eq!(s["images"].as_array().map(Vec::len), Some(0), "{s}");
    assert_eq!(s["cache"]["limit"].as_u64(), Some(1 << 30), "{s}");
    assert_eq!(s["cache"]["size"].as_u64(), Some(0), "{s}");
    assert_eq!(s["export"].as_bool(), Some(false), "{s}");

    let digest = reg.manifest_digest("lab/busybox", "latest");
    let file = m.path().join("lab/busybox:latest/rootfs/bin/busybox");
    fs::read(&file).unwrap();
    let s = status_json(&m);
    let images = s["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{s}");
    assert_eq!(images[0]["repo"], "lab/busybox");
    assert_eq!(images[0]["digest"].as_str(), Some(digest.as_str()));
    assert_eq!(images[0]["rootfs"].as_bool(), Some(true));
    assert!(s["cache"]["size"].as_u64().unwrap() > 100_000, "{s}");
    assert!(s["cache"]["misses"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["fetches_in_flight"].as_u64(), Some(0), "{s}");

    let human = check(
        regfs(&["status", m.path().to_str().unwrap()]),
        "regfs status",
    );
    assert!(human.contains("images in use: 1"), "{human}");
    assert!(human.contains(&digest), "{human}");
    assert!(human.contains("of 1.0 GiB"), "{human}");
    assert!(human.contains("fetches in flight: 0"), "{human}");

    // Not a regfs mount: a clear error.
    let o = regfs(&["status", "/tmp"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a regfs mountpoint"),
        "{o:?}"
    );
}

#[test]
fn prefetch_then_read_with_the_registry_down() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let digest = reg.manifest_digest("lab/busybox", "latest");
    let m = Mount::new(&reg, &[]);
    let gets_before = reg.blob_gets(None);
    let out = check(
        regfs(&["prefetch", m.path().to_str().unwrap(), "lab/busybox:latest"]),
        "regfs prefetch",
    );
    assert!(
        out.contains("prefetched lab/busybox:latest") && out.contains(&digest),
        "{out}"
    );
    let gets_prefetch = reg.blob_gets(None);
    assert!(gets_prefetch > gets_before, "prefetch fetched no blob");
    let s = status_json(&m);
    assert!(s["cache"]["size"].as_u64().unwrap() > 100_000, "{s}");

    reg.stop();
    let img = m.path().join(format!("lab/busybox@{digest}"));
    let oracle = umoci_unpack("busybox");
    for f in ["bin/busybox", "etc/passwd"] {
        let (got, want) = (img.join("rootfs").join(f), oracle.join(f));
        if want.exists() {
            assert_eq!(sha256_file(&got), sha256_file(&want), "{f}");
        }
    }
    assert!(fs::read(img.join("config.json")).unwrap().len() > 100);
    assert!(!list(&img.join("rootfs/bin")).is_empty());
    assert_eq!(
        reg.blob_gets(None),
        gets_prefetch,
        "blob GETs after the prefetch"
    );

    // A prefetch of an unknown image fails with a message (the registry is down: an error either way).
    let o = regfs(&["prefetch", m.path().to_str().unwrap(), "lab/nope:1", "-q"]);
    assert!(!o.status.success(), "{o:?}");
}

fn list(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn completions_manpage_and_examples() {
    for shell in ["bash", "zsh", "fish"] {
        let out = check(regfs(&["completions", shell]), shell);
        assert!(
            out.contains("mount") && out.contains("cache-size") && out.contains("prefetch"),
            "{shell} completions:\n{out}"
        );
        assert!(out.lines().count() > 50, "{shell}: {out}");
    }
    assert!(!regfs(&["completions", "tcsh"]).status.success());

    let man = check(regfs(&["manpage"]), "manpage");
    assert!(
        man.starts_with(".ie") || man.contains("\n.TH regfs 1"),
        "{man}"
    );
    assert!(man.contains(".TH regfs 1"), "{man}");
    for want in [
        "regfs\\-mount",
        "\\-\\-cache\\-size",
        "regfs\\-prefetch",
        "Examples:",
    ] {
        assert!(man.contains(want), "man page lacks {want}");
    }

    for sub in [
        "mount",
        "unmount",
        "commit",
        "export",
        "status",
        "prefetch",
        "completions",
        "manpage",
    ] {
        let help = check(regfs(&[sub, "--help"]), sub);
        assert!(help.contains("Examples:"), "regfs {sub} --help:\n{help}");
    }
    let help = check(regfs(&["mount", "--help"]), "mount --help");
    assert!(help.contains("--metrics-addr <HOST:PORT>"), "{help}");
}

#[test]
fn prefetch_of_an_estargz_image_fetches_every_chunk() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push_with(
        "python-3.11-esgz",
        "lab/python:3.11-esgz",
        &["--preserve-digests"],
    );
    let digest = reg.manifest_digest("lab/python", "3.11-esgz");
    let m = Mount::new(&reg, &[]);
    let out = check(
        regfs(&[
            "prefetch",
            m.path().to_str().unwrap(),
            &format!("lab/python@{digest}"),
            "--quiet",
        ]),
        "regfs prefetch (eStargz)",
    );
    assert!(out.contains(" lazy)"), "no layer was served lazily: {out}");
    let chunks = fs::read_dir(m.cache_dir().join("chunks/sha256"))
        .unwrap()
        .count();
    assert!(chunks > 100, "{chunks} chunks cached");
    let gets = reg.blob_gets(None);

    reg.stop();
    let rootfs = m.path().join(format!("lab/python@{digest}/rootfs"));
    let oracle = umoci_unpack("python-3.11");
    for f in ["usr/bin/python3.11", "usr/lib/python3.11/os.py"] {
        assert_eq!(
            sha256_file(&rootfs.join(f)),
            sha256_file(&oracle.join(f)),
            "{f}"
        );
    }
    assert_eq!(reg.blob_gets(None), gets, "blob GETs after the prefetch");
}

/// Absent names in an image's immutable trees are remembered by the kernel
/// (a negative entry), so asking again costs no FUSE round trip; absent
/// names in a namespace only for the tag TTL, so a tag pushed later is found.
#[test]
fn absent_names_are_cached_in_images_and_for_the_ttl_in_namespaces() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = Mount::new(&reg, &["--metrics-addr", &addr, "--tag-ttl", "1"]);
    let url = format!("http://{addr}/metrics");
    let lookups = || {
        sample(
            &curl(&url),
            "regfs_fuse_op_duration_seconds_count{op=\"lookup\"}",
        )
        .unwrap_or(0.0)
    };
    let absent = m
        .path()
        .join("lab/busybox:latest/rootfs/usr/lib/python3.11/os.py");
    assert!(!absent.exists());
    let before = lookups();
    for _ in 0..20 {
        assert!(!absent.exists());
        assert!(!m.path().join("lab/busybox:latest/rootfs/etc/nope").exists());
    }
    assert!(!m.path().join("lab/busybox:latest/rootfs/etc/nope").exists());
    let after = lookups();
    // One new lookup at most (the first `etc/nope`), not 40.
    assert!(after - before <= 2.0, "{before} -> {after}");
    // A tag that is absent, then pushed: found once the TTL has passed.
    let tag = m.path().join("lab/busybox:later");
    assert!(fs::symlink_metadata(&tag).is_err());
    reg.push("busybox", "lab/busybox:later");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(fs::symlink_metadata(&tag).is_ok(), "{}", m.log());
}
