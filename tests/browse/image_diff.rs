//! Issue 19: `regfs diff` between `lab/python:3.11` (and its eStargz twin)
//! and an image made from it through the export directory with known
//! changes; for the eStargz pair, no layer blob is fetched beyond its
//! footer and TOC (the registry's access log).

use crate::harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use harness::export::ExportMount;
use harness::{regfs_bin, tempdir, Registry, RegistryKind};

/// The changes made to the image, as `regfs diff` must list them (besides
/// the directories holding them, whose mtimes move).
const CHANGES: [&str; 4] = [
    "A /etc/regfs-added",
    "M /etc/debian_version",
    "M /etc/hostname",
    "D /usr/local/share/lab.txt",
];

/// Make `name` from `base` in a fresh export daemon (`extra` flags) with
/// [`CHANGES`], and commit it.
fn derive(reg: &Registry, base: &str, name: &str, extra: &[&str]) {
    let em = ExportMount::new(reg, extra);
    fs::create_dir(em.dir().join("lab")).unwrap();
    let e = em.entry(name);
    let out = em.regfs(&["export", "new", e.to_str().unwrap(), "--from", base]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(e.join("etc/regfs-added"), b"new\n").unwrap();
    // Same size, other bytes: only a content comparison can tell.
    let v = fs::read(e.join("etc/debian_version")).unwrap();
    let flipped: Vec<u8> = v
        .iter()
        .map(|b| if *b == b'\n' { *b } else { b'9' })
        .collect();
    assert_ne!(v, flipped);
    fs::write(e.join("etc/debian_version"), &flipped).unwrap();
    fs::set_permissions(e.join("etc/hostname"), fs::Permissions::from_mode(0o600)).unwrap();
    // Its hard link lab-hardlink.txt is copied up unchanged: not a change.
    fs::remove_file(e.join("usr/local/share/lab.txt")).unwrap();
    em.commit(name);
}

/// `regfs diff` of two references of `reg` (fresh cache) with `extra`
/// flags: its lines and stderr.
fn regfs_diff(reg: &Registry, a: &str, b: &str, extra: &[&str]) -> (Vec<String>, String) {
    let cache = tempdir("diff-cache");
    let host = reg.host_port();
    let out = Command::new(regfs_bin())
        .args(["diff", &format!("{host}/{a}"), b])
        .args(extra)
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "regfs diff failed: {stderr}");
    print!(
        "regfs diff {a} {b}:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (lines, stderr)
}

/// `lines` are exactly [`CHANGES`] plus `M` lines of directories above them.
fn assert_known_changes(lines: &[String]) {
    for want in CHANGES {
        assert!(
            lines.iter().any(|l| l == want),
            "{want} missing: {lines:#?}"
        );
    }
    for l in lines {
        let dir_above = l
            .strip_prefix("M ")
            .is_some_and(|d| CHANGES.iter().any(|c| c[2..].starts_with(&format!("{d}/"))));
        assert!(
            CHANGES.contains(&l.as_str()) || dir_above,
            "unexpected change {l}: {lines:#?}"
        );
    }
    let mut sorted = lines.to_vec();
    sorted.sort_by(|x, y| x[2..].cmp(&y[2..]));
    assert_eq!(sorted, lines, "sorted by path");
}

#[test]
fn diff_of_a_gzip_image_and_one_made_from_it() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    derive(&reg, "lab/python:3.11", "lab/python:changed", &[]);
    let (lines, stderr) = regfs_diff(&reg, "lab/python:3.11", "lab/python:changed", &[]);
    assert_known_changes(&lines);
    // Only files whose layers differ and whose sizes agree were read.
    assert!(stderr.contains("compared by reading"), "{stderr}");
    // --json says what differs.
    let (json, _) = regfs_diff(&reg, "lab/python:3.11", "lab/python:changed", &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.join("\n")).unwrap();
    let what = |path: &str| {
        let c = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == path);
        c.map(|c| c["what"].clone())
    };
    assert_eq!(what("/etc/hostname"), Some(serde_json::json!(["mode"])));
    let rewritten = what("/etc/debian_version").unwrap();
    assert!(
        rewritten.as_array().unwrap().contains(&"content".into()),
        "{rewritten}"
    );
}

#[test]
fn diff_of_estargz_images_reads_only_tocs() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push_preserve_digests("python-3.11-esgz", "lab/python:3.11-esgz");
    derive(
        &reg,
        "lab/python:3.11-esgz",
        "lab/python:changed-esgz",
        &["--compression", "estargz"],
    );
    let before = reg.requests().len();
    let (lines, stderr) = regfs_diff(&reg, "lab/python:3.11-esgz", "lab/python:changed-esgz", &[]);
    assert_known_changes(&lines);
    assert!(!stderr.contains("compared by reading"), "{stderr}");
    // The diff's own requests: layer blobs only by Range (footer, TOC), no
    // whole blob; configs are small whole GETs.
    let c = crate::artifacts::client(&reg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let layers: Vec<String> = ["3.11-esgz", "changed-esgz"]
        .iter()
        .flat_map(|tag| {
            let sel = regfs::reference::Selector::Tag(tag.to_string());
            let m = rt.block_on(c.manifest("lab/python", &sel)).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
            v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut range_bytes = 0;
    for r in &reg.requests()[before..] {
        let Some((_, d)) = r
            .uri
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once("/blobs/"))
        else {
            continue;
        };
        if r.method == "GET" && layers.iter().any(|l| l == d) {
            assert_eq!(r.status, 206, "a whole layer blob was fetched: {r:?}");
            range_bytes += r.bytes;
        }
    }
    let total: u64 = layers.len() as u64;
    println!(
        "regfs diff, eStargz pair: {range_bytes} layer bytes by Range ({total} layer descriptors)"
    );
    assert!(
        range_bytes < 4 << 20,
        "{range_bytes} layer bytes: more than footers and TOCs"
    );
}
