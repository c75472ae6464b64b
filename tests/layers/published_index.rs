//! Issue 15: gzip layer indexes published next to the image. Machine A (one
//! mount and cache, `--publish-indexes`) streams the python image and
//! publishes its indexes (`regfs index push` then finds them there);
//! distribution 2.8 has no referrers API, so the artifact is listed under
//! the `sha256-<hex>` tag. Machine B (a second mount, a fresh cache) with
//! `--use-published-indexes` lists and reads the image without a single
//! whole-layer GET until its background check streams each layer once and
//! finds the index right; the tree equals `umoci unpack`.

use crate::harness;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{
    assert_same_tree, run_regfs as regfs, snapshot, umoci_snapshot, Mount, Registry, RegistryKind,
};

/// Whole-blob (200) GETs of the layer blobs, and the bytes of all their GETs.
fn layer_gets(reg: &Registry, layers: &[String]) -> (usize, u64) {
    layers.iter().fold((0, 0), |(whole, bytes), l| {
        let (_, b, w) = reg.blob_traffic(l);
        (whole + w, bytes + b)
    })
}

/// `log` without its terminal colour sequences (`ESC [ … m`).
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The windows blobs (`sha256:…`) that span windows were fetched from, as
/// the mount's log says (`fetched span window windows=…`).
fn window_blobs(log: &str) -> std::collections::BTreeSet<String> {
    without_colours(log)
        .lines()
        .filter(|l| l.contains("fetched span window"))
        .filter_map(|l| {
            let at = l.find("windows=")? + "windows=".len();
            l[at..].split_whitespace().next().map(str::to_string)
        })
        .collect()
}

/// `ls -lR`: every entry's metadata, no file contents.
fn list_all(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        n += 1;
        if md.is_dir() {
            n += list_all(&e.path());
        }
    }
    n
}

/// Machine A: a registry with python:3.11, and a mount (`--publish-indexes`)
/// that streamed its rootfs and published its layer indexes. Returns the
/// layer digests and their total size too.
fn machine_a() -> (Registry, Mount, Vec<String>, u64) {
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    let a = Mount::new(&reg, &["--publish-indexes"]);
    let img = a.path().join("lab/python:3.11");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    let layers = m["layers"].as_array().unwrap();
    let digests = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let total = layers.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    // Machine A streams every layer once (its cache then holds the indexes).
    assert!(list_all(&img.join("rootfs")) > 1000);
    // --publish-indexes pushes them once the rootfs is streamed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.log().contains("layer indexes published") {
        assert!(Instant::now() < deadline, "not published:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    (reg, a, digests, total)
}

/// Machine B's first look at `img`: `ls -lR` of its rootfs and `cat
/// os.py`, checked; how long it took.
fn first_look(img: &Path) -> Duration {
    let t = Instant::now();
    assert!(list_all(&img.join("rootfs")) > 1000);
    let os_py = fs::read(img.join("rootfs/usr/lib/python3.11/os.py")).unwrap();
    let took = t.elapsed();
    assert!(
        os_py.starts_with(b"r\"\"\"OS routines"),
        "{:?}",
        &os_py[..40]
    );
    took
}

/// Wait (at most `limit`) until `b`'s background check found `n` layer
/// indexes right.
fn wait_for_checks(b: &Mount, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while b
        .log()
        .matches("published layer index matches the layer")
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "no check:\n{}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_machine_serves_gzip_layers_by_published_spans() {
    require_fuse!();
    let (reg, a, layers, total) = machine_a();
    // `regfs index push` finds it there: pushing twice changes nothing.
    let push = |mnt: &Path| {
        regfs(&[
            "index".as_ref(),
            "push".as_ref(),
            mnt.as_os_str(),
            "lab/python:3.11".as_ref(),
        ])
    };
    let out = push(a.path());
    assert!(
        out.starts_with("already published for lab/python:3.11"),
        "{out}"
    );
    assert!(out.contains("referrers tag sha256-"), "{out}");
    assert!(
        out.contains(&format!("{} gzip layer(s)", layers.len())),
        "{out}"
    );
    let image = reg.manifest_digest("lab/python", "3.11");
    let fallback = image.replace(':', "-");
    assert!(reg
        .manifest_digest("lab/python", &fallback)
        .starts_with("sha256:"));
    drop(a);

    // Machine B: a fresh cache. The listing and a read fetch no whole layer.
    let before = layer_gets(&reg, &layers);
    let b = Mount::new(
        &reg,
        &[
            "--use-published-indexes",
            "--published-index-check-delay",
            "5",
        ],
    );
    let img = b.path().join("lab/python:3.11");
    let cold = first_look(&img);
    let after = layer_gets(&reg, &layers);
    assert_eq!(
        after.0,
        before.0,
        "a whole-layer GET before the check:\n{}",
        b.log()
    );
    assert!(
        after.1 - before.1 < total / 5,
        "{} of {total} layer bytes fetched for ls -lR + cat",
        after.1 - before.1
    );
    assert!(
        b.log()
            .contains("serving gzip layers by published span indexes"),
        "{}",
        b.log()
    );
    // The windows are apart (index format 2): the spans that start a run
    // fetched their window by a Range request of the layer's windows blob,
    // and no windows blob was fetched whole.
    let windows = window_blobs(&b.log());
    assert!(!windows.is_empty(), "no span window fetched:\n{}", b.log());
    let mut window_bytes = 0;
    for w in &windows {
        let (gets, bytes, whole) = reg.blob_traffic(w);
        assert!(gets > 0, "{w}: no GET in the access log");
        assert_eq!(whole, 0, "windows blob {w} fetched whole");
        window_bytes += bytes;
    }
    eprintln!(
        "machine B: ls -lR + cat os.py in {cold:?}, {} layer bytes of {total}, {window_bytes} bytes of windows from {} windows blob(s)",
        after.1 - before.1,
        windows.len()
    );

    // The background check streams each layer once and finds the index right.
    wait_for_checks(&b, layers.len(), Duration::from_secs(90));
    assert!(!b.log().contains("PUBLISHED LAYER INDEX IS WRONG"));
    // And the tree equals umoci unpack.
    assert_same_tree(
        &umoci_snapshot("python-3.11"),
        &snapshot(&img.join("rootfs")),
    );
}

/// The background check streams every adopted layer whole: it goes through
/// the `--background-bandwidth` bucket, so at 8 MiB/s the check of python's
/// four layers (68 MB) cannot finish sooner than their bytes allow, while
/// the foreground reads (by spans) are not held up by it.
#[test]
fn the_check_is_paced_by_the_background_bandwidth() {
    require_fuse!();
    let (reg, a, layers, total) = machine_a();
    drop(a);

    const BANDWIDTH: u64 = 8 << 20;
    let b = Mount::new(
        &reg,
        &[
            "--use-published-indexes",
            "--published-index-check-delay",
            "0",
            "--background-bandwidth",
            "8M",
        ],
    );
    let t = Instant::now();
    // The first look adopts the indexes; the check starts at once.
    let foreground = first_look(&b.path().join("lab/python:3.11"));
    wait_for_checks(&b, layers.len(), Duration::from_secs(120));
    let checked = t.elapsed();
    // The layers are streamed one after another by the check: the time the
    // log gives each (`fetched layer … ms=`) adds up to at least their
    // bytes at the cap (less a fifth for the first chunks and rounding).
    let log = without_colours(&b.log());
    let streamed_ms: u64 = log
        .lines()
        .filter(|l| l.contains("fetched layer"))
        .filter_map(|l| {
            let at = l.find(" ms=")? + 4;
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let floor = Duration::from_secs_f64(total as f64 / BANDWIDTH as f64 * 0.8);
    eprintln!(
        "check of {total} layer bytes at {BANDWIDTH} B/s: {checked:?} after the first look \
         ({streamed_ms} ms streaming in the log; floor {floor:?}); ls -lR + cat {foreground:?}"
    );
    assert_eq!(
        log.matches("fetched layer").count(),
        layers.len(),
        "one stream per layer:\n{log}"
    );
    assert!(
        Duration::from_millis(streamed_ms) >= floor && checked >= floor,
        "the check was not held to --background-bandwidth: {streamed_ms} ms, {checked:?} < {floor:?}"
    );
    assert!(!log.contains("PUBLISHED LAYER INDEX IS WRONG"));
}
