//! `regfs convert`: images copied registry to registry with their layers
//! re-packed as eStargz or zstd:chunked, against a real registry, a real
//! mount and the umoci oracle (`round_trip`); the zstd:chunked output read
//! by containers/storage's tools (`readers`); a recorded trace put first
//! (`trace`); corrupted input refused (`faults`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod faults;
mod readers;
mod round_trip;
mod trace;

use std::process::{Command, Output};

use harness::{regfs_bin, Registry};

/// `regfs convert HOST/SRC HOST/DST ARGS…` on `reg`.
pub fn convert(reg: &Registry, src: &str, dst: &str, args: &[&str]) -> Output {
    let host = reg.host_port();
    Command::new(regfs_bin())
        .arg("convert")
        .arg(format!("{host}/{src}"))
        .arg(format!("{host}/{dst}"))
        .args(args)
        .output()
        .expect("run regfs convert")
}

/// [`convert`], panicking unless it succeeds; its output (both streams).
pub fn convert_ok(reg: &Registry, src: &str, dst: &str, args: &[&str]) -> String {
    let out = convert(reg, src, dst, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "regfs convert {src} {dst} {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The layer digests of `repo:tag` as the registry serves its manifest.
pub fn layer_digests(reg: &Registry, repo: &str, tag: &str) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_str(&manifest_json(reg, repo, tag)).unwrap();
    m["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{repo}:{tag} has no layers: {m}"))
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The manifest of `repo:tag` (OCI or Docker, image or index).
pub fn manifest_json(reg: &Registry, repo: &str, tag: &str) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]);
    for t in harness::MANIFEST_TYPES {
        cmd.args(["-H", &format!("Accept: {t}")]);
    }
    cmd.arg(reg.url(&format!("/v2/{repo}/manifests/{tag}")));
    harness::run(&mut cmd)
}

/// Successful GETs of blob `digest` answered whole (status 200, not a Range).
pub fn whole_gets(reg: &Registry, digest: &str) -> usize {
    reg.blob_traffic(digest).2
}
