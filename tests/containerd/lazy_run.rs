//! `ctr-remote image rpull` through regfs fetches no gzip layer byte (and of
//! an eStargz / zstd:chunked layer at most its TOC); `ctr run` then runs
//! python from the lazily fetched, verified layers.

use crate::daemon::{layer_bytes, layers, serial, stdout_ok, tools_ready, Containerd, Regfs};
use crate::harness::lab;

const PY: &[&str] = &["python3", "-c", "import json, sqlite3; print(1)"];

/// rpull + run of `lab/python:TAG`; returns (layer bytes fetched, image size).
fn rpull_and_run(group: &str, tag: &str) -> (u64, u64) {
    let reg = lab().image(group);
    let regfs = Regfs::new(reg);
    let ctd = Containerd::start(&regfs.socket);
    let layers = layers(reg, "lab/python", tag);
    let size: u64 = layers.iter().map(|(_, s)| s).sum();
    let image = format!("{}/lab/python:{tag}", reg.host_port());
    let before = layer_bytes(reg, &layers);

    ctd.rpull(&image);
    let (after, _) = layer_bytes(reg, &layers);
    if group == "python" {
        assert_eq!(after, before.0, "rpull of {image} fetched gzip layer bytes");
    } else {
        // At most the TOCs and the image's start-up files (python3.11, its
        // loader and libraries), which regfs fetches as the snapshots are made.
        assert!(
            (after - before.0) * 10 < size,
            "rpull of {image} fetched {} layer bytes",
            after - before.0
        );
    }
    let snaps = ctd.snapshots();
    assert_eq!(
        snaps.iter().filter(|s| s.2 == "Committed").count(),
        layers.len(),
        "one committed snapshot per layer: {snaps:?}"
    );
    // Each is a remote snapshot: its fs is a symlink into the mount.
    let links: Vec<_> = regfs
        .snapshot_dirs()
        .iter()
        .filter_map(|d| std::fs::read_link(d.join("fs")).ok())
        .collect();
    assert_eq!(links.len(), layers.len(), "{links:?}");
    for (l, (digest, _)) in links.iter().zip(&layers) {
        assert!(l.starts_with(regfs.mount.path()), "{l:?}");
        let _ = digest;
    }
    for (digest, _) in &layers {
        assert!(
            links
                .iter()
                .any(|l| l.to_string_lossy().ends_with(&format!("-{digest}"))),
            "no snapshot links layer {digest}: {links:?}"
        );
    }

    let out = stdout_ok(&ctd.run(&image, "py", PY), "ctr run python3", &ctd);
    assert_eq!(out.trim(), "1");
    if group != "python" {
        // The remote snapshots told regfs to warm the image's start-up files.
        let log = regfs.mount.log();
        let warmed = log
            .lines()
            .find(|l| l.contains("warmed the image's start-up files"))
            .unwrap_or_else(|| panic!("{image}: no start-up files warmed:\n{log}"));
        // python3's loader and C library among them, found through /lib64 and /lib.
        assert!(
            warmed.contains("ld-linux") && warmed.contains("libc.so.6"),
            "{warmed}"
        );
    }
    let (fetched, _) = layer_bytes(reg, &layers);
    (fetched - before.0, size)
}

#[test]
fn gzip_rpull_fetches_no_layer_and_python_runs() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let (fetched, size) = rpull_and_run("python", "3.11");
    eprintln!("gzip: {fetched} of {size} layer bytes fetched by the run");
    assert!(fetched > 0, "the run read nothing from the registry?");
}

#[test]
fn estargz_and_zstdchunked_run_fetching_far_below_image_size() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    for tag in ["3.11-esgz", "3.11-zstdchunked"] {
        let (fetched, size) = rpull_and_run("esgz", tag);
        eprintln!("{tag}: {fetched} of {size} layer bytes fetched by the run");
        assert!(
            fetched > 0,
            "{tag}: the run read nothing from the registry?"
        );
        assert!(
            fetched * 5 < size,
            "{tag}: fetched {fetched} of {size} bytes, not far below the image size"
        );
    }
}
