//! Issue 4, plain gzip random access: a gzip layer streamed and verified once
//! keeps a span index; once its unpacked tar is gone from the cache, a file
//! is served by Range requests from the nearest checkpoint, each span checked
//! against its recorded sha256. Real registry, real mount, umoci oracle.

use crate::harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{regfs_bin, umoci_unpack, Mount, Registry, RegistryKind};
use regfs::layer::span::SpanIndex;
use regfs::layer::{FileData, NodeKind, Tree};

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

struct Big {
    /// 1-based layer number and its directory name under `layers/`.
    dir: String,
    blob: String,
    diff_id: String,
    size: u64,
}

/// The largest layer of the image at `img`.
fn big_layer(img: &Path) -> Big {
    let m = json(&img.join("manifest.json"));
    let c = json(&img.join("config.json"));
    let layers = m["layers"].as_array().unwrap();
    let (i, l) = layers
        .iter()
        .enumerate()
        .max_by_key(|(_, l)| l["size"].as_u64().unwrap())
        .unwrap();
    let blob = l["digest"].as_str().unwrap().to_string();
    let dir = fs::read_dir(img.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("{}-", i + 1)))
        .expect("layer directory");
    Big {
        dir,
        blob,
        diff_id: c["rootfs"]["diff_ids"][i].as_str().unwrap().to_string(),
        size: l["size"].as_u64().unwrap(),
    }
}

fn hex(d: &str) -> &str {
    d.split_once(':').unwrap().1
}

/// Where the cache keeps a verified span: `chunks/<algorithm>/<hex>`.
fn span_chunk(cache: &Path, span_digest: &str) -> PathBuf {
    let (alg, hex) = span_digest.split_once(':').unwrap();
    cache.join("chunks").join(alg).join(hex)
}

/// The stored tar index and span index of a layer.
fn indexes(cache: &Path, diff_id: &str) -> (Tree, SpanIndex) {
    let tree: Tree =
        serde_json::from_slice(&fs::read(cache.join("index/sha256").join(hex(diff_id))).unwrap())
            .unwrap();
    let stored = fs::read(cache.join("spans/sha256").join(hex(diff_id))).unwrap();
    let nl = stored.iter().position(|&c| c == b'\n').unwrap();
    (tree, SpanIndex::decode(&stored[nl + 1..]).unwrap())
}

/// Regular files of the layer (path, tar offset, size) that the oracle has
/// with the same size, sorted by tar offset.
fn candidates(tree: &Tree, oracle: &Path) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = tree
        .walk()
        .into_iter()
        .filter_map(|(p, id)| {
            let n = tree.node(id);
            let FileData::Tar { offset, .. } = n.content else {
                return None;
            };
            let p = String::from_utf8(p).ok()?;
            let p = p.trim_start_matches('/').to_string();
            let md = fs::symlink_metadata(oracle.join(&p)).ok()?;
            (n.kind == NodeKind::File
                && (20_000..2_000_000).contains(&n.size)
                && md.is_file()
                && md.len() == n.size)
                .then_some((p, offset, n.size))
        })
        .collect();
    v.sort_by_key(|c| c.1);
    v
}

fn regfs(args: &[&std::ffi::OsStr]) {
    let out = Command::new(regfs_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "regfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn evicted_gzip_layer_is_served_by_verified_spans() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push_preserve_digests("python-3.11", "lab/python:3.11");
    let oracle = umoci_unpack("python-3.11");
    let mut m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/python:3.11");
    let big = big_layer(&img);
    // Stream every layer once (verified), which stores the span indexes.
    assert!(img.join("rootfs/etc/debian_version").exists());
    let cache = m.cache_dir().to_path_buf();
    let (tree, ix) = indexes(&cache, &big.diff_id);
    assert!(
        ix.checkpoints.len() > 4,
        "{} checkpoints",
        ix.checkpoints.len()
    );
    let stored = fs::metadata(cache.join("spans/sha256").join(hex(&big.diff_id)))
        .unwrap()
        .len();
    eprintln!(
        "span index: {} checkpoints for {} uncompressed bytes, {stored} bytes stored",
        ix.checkpoints.len(),
        ix.uncompressed_size
    );
    assert_eq!(ix.compressed_size, big.size);

    // Evict the unpacked tars; the tar indexes and span indexes stay.
    m.unmount();
    for e in fs::read_dir(cache.join("layers/sha256")).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
    m.remount();
    let img = m.path().join("lab/python:3.11");
    let layer_dir = img.join("layers").join(&big.dir);

    // A file in the middle of the layer.
    let cands = candidates(&tree, &oracle);
    let mid = ix.uncompressed_size / 2;
    let pick = |avoid: Option<(usize, usize)>| {
        cands
            .iter()
            .filter(|c| {
                let s = ix.spans_covering(c.1, c.1 + c.2).unwrap();
                avoid.is_none_or(|(a, b)| s.1 + 1 < a || s.0 > b + 1)
            })
            .min_by_key(|c| c.1.abs_diff(mid))
            .cloned()
            .expect("a candidate file")
    };
    let (path, off, size) = pick(None);
    let spans = ix.spans_covering(off, off + size).unwrap();
    let (cs, ce) = ix.compressed_range(spans.0, spans.1);
    let before = reg.blob_traffic(&big.blob);
    let got = fs::read(layer_dir.join(&path)).unwrap();
    assert_eq!(got, fs::read(oracle.join(&path)).unwrap(), "{path}");
    let after = reg.blob_traffic_since(&big.blob, before);
    let bytes = after.1 - before.1;
    eprintln!(
        "span read: {path} ({size} bytes at tar offset {off}): fetched {bytes} of {} compressed bytes, spans {}..={} of {}",
        big.size,
        spans.0,
        spans.1,
        ix.checkpoints.len()
    );
    assert_eq!(after.2, before.2, "no whole-blob GET");
    assert!(bytes > 0 && bytes <= ce - cs, "{bytes} > {}", ce - cs);
    assert!(bytes < big.size / 4, "{bytes} of {}", big.size);
    assert!(m.log().contains("serving it by its span index"));
    // Verified spans are cached by digest: reading again fetches nothing.
    for i in spans.0..=spans.1 {
        let d = ix.checkpoints[i].span_digest.to_string();
        assert!(span_chunk(&cache, &d).exists());
    }

    // Export the index, import it into a fresh cache, serve the file by spans.
    let rgix = harness::tempdir("rgix");
    let file = rgix.path().join("layer.rgix");
    regfs(&[
        "index".as_ref(),
        "export".as_ref(),
        big.blob.as_ref(),
        file.as_os_str(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
    ]);
    let mut m2 = Mount::new(&reg, &[]);
    m2.unmount();
    regfs(&[
        "index".as_ref(),
        "import".as_ref(),
        file.as_os_str(),
        "--cache-dir".as_ref(),
        m2.cache_dir().as_os_str(),
    ]);
    m2.remount();
    let before = reg.blob_traffic(&big.blob);
    let img2 = m2.path().join("lab/python:3.11");
    let got = fs::read(img2.join("layers").join(&big.dir).join(&path)).unwrap();
    assert_eq!(got, fs::read(oracle.join(&path)).unwrap());
    let after = reg.blob_traffic(&big.blob);
    assert_eq!(after.2, before.2, "no whole-blob GET after import");
    assert!(after.1 - before.1 <= ce - cs);
    drop(m2);
    drop(rgix);

    // A flipped byte inside another file's spans: EIO, nothing cached.
    let (path2, off2, size2) = pick(Some(spans));
    let s2 = ix.spans_covering(off2, off2 + size2).unwrap();
    let (cs2, ce2) = ix.compressed_range(s2.0, s2.1);
    let data = reg.blob_path(&big.blob);
    let mut blob = fs::read(&data).unwrap();
    blob[((cs2 + ce2) / 2) as usize] ^= 0x20;
    fs::write(&data, &blob).unwrap();
    let err = fs::read(layer_dir.join(&path2)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{path2}: {err}");
    for i in s2.0..=s2.1 {
        let d = ix.checkpoints[i].span_digest.to_string();
        assert!(!span_chunk(&cache, &d).exists());
    }
    let log = m.log();
    assert!(
        log.lines()
            .any(|l| l.contains("span failed verification") && l.contains(&big.blob)),
        "{log}"
    );
    // The first file still reads (its spans are cached and verified).
    assert_eq!(
        fs::read(layer_dir.join(&path)).unwrap(),
        fs::read(oracle.join(&path)).unwrap()
    );
}
