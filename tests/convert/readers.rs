//! The zstd:chunked output read by containers/storage's tools: `skopeo
//! copy` keeps its digests, podman 4.3's partial pull takes every layer by
//! Range requests (and its python runs).

use std::fs;
use std::process::Command;

use crate::harness::{run, tempdir, Registry, RegistryKind};
use crate::{convert_ok, layer_digests, whole_gets};

/// A registry of its own with lab/python:3.11 converted to zstd:chunked as
/// lab/python:zc, and that image's layer digests.
fn python_zstd_chunked() -> (Registry, Vec<String>) {
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    convert_ok(
        &reg,
        "lab/python:3.11",
        "lab/python:zc",
        &["--zstd-chunked"],
    );
    let layers = layer_digests(&reg, "lab/python", "zc");
    (reg, layers)
}

#[test]
fn skopeo_copies_zstd_chunked_output_keeping_its_digests() {
    let (reg, want) = python_zstd_chunked();
    let dir = tempdir("convert-skopeo");
    let layout = dir.path().join("oci");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/lab/python:zc", reg.host_port()))
        .arg(format!("oci:{}:zc", layout.display())));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(
        digest,
        reg.manifest_digest("lab/python", "zc"),
        "manifest kept"
    );
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let got: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);
    // And the blobs are what the digests say.
    for d in &want {
        let p = layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap());
        assert_eq!(
            format!("sha256:{}", crate::harness::sha256_file(&p)),
            *d,
            "{}",
            p.display()
        );
    }
}

/// podman with private storage, partial pulls on, and rlimits root without
/// CAP_SYS_RESOURCE may set.
fn podman(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    for sub in ["graph", "run", "tmp"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\
             [storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\", ostree_repos = \"\"}}\n",
            dir.join("graph").display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    fs::write(
        dir.join("containers.conf"),
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             tmp_dir = \"{}\"\n[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n",
            dir.join("tmp").display()
        ),
    )
    .unwrap();
    Command::new("podman")
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .args(args)
        .output()
        .expect("run podman")
}

#[test]
fn podman_pulls_zstd_chunked_output_partially_and_runs_it() {
    require_fuse!(); // root, as podman's overlay storage needs
    let (reg, layers) = python_zstd_chunked();
    let dir = tempdir("convert-podman");
    let image = format!("{}/lab/python:zc", reg.host_port());
    let pull = podman(
        dir.path(),
        &["--log-level=debug", "pull", "--tls-verify=false", &image],
    );
    let log = String::from_utf8_lossy(&pull.stderr);
    assert!(pull.status.success(), "podman pull failed:\n{log}");
    for l in &layers {
        assert!(
            log.contains(&format!("Retrieved partial blob {l}")),
            "layer {l} not pulled partially:\n{log}"
        );
        assert_eq!(whole_gets(&reg, l), 0, "layer {l} fetched whole");
    }
    let out = podman(
        dir.path(),
        &[
            "run",
            "--rm",
            "--network=none",
            &image,
            "python3",
            "-c",
            "import json, sqlite3; print(json.dumps([sqlite3.sqlite_version_info[0]]))",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[3]\n");
    let _ = podman(dir.path(), &["rmi", "-a", "-f"]);
}
