//! Issue 19: artifacts and referrers through a real registry and mount.
//! The test pushes ORAS-style artifacts over the distribution API (an empty
//! config, titled layers, a manifest with `subject`) and, since
//! distribution 2.8 has no referrers API, lists them under the subject's
//! `sha256-<hex>` tag as OCI 1.1 clients do.

use crate::harness;

use std::fs;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use harness::{dir_names, Mount, Registry, RegistryKind};
use regfs::digest::Digest;
use regfs::reference::{Registry as RegName, Selector};
use regfs::registry::{Client, ClientOptions};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A client of `reg` (plain HTTP, no docker config).
pub(crate) fn client(reg: &Registry) -> Client {
    let (name, _) = RegName::parse(&reg.host_port()).unwrap();
    let mut o = ClientOptions::new(name);
    o.plain_http = true;
    o.timeout = Duration::from_secs(10);
    o.docker_config_dir = Some(std::env::temp_dir().join("regfs-test-no-docker-config"));
    Client::new(o).unwrap()
}

pub(crate) async fn push_blob(c: &Client, repo: &str, data: Vec<u8>) -> (Digest, usize) {
    let d = Digest::sha256_of(&data);
    let n = data.len();
    let body = futures_util::stream::once(async move { Ok(Bytes::from(data)) }).boxed();
    c.push_blob(repo, &d, n as u64, body).await.unwrap();
    (d, n)
}

/// Push an artifact of `files` (title, bytes) referring to `subject`
/// (digest, size), and add it to the subject's fallback tag.
pub(crate) async fn push_artifact(
    c: &Client,
    repo: &str,
    artifact_type: &str,
    files: &[(&str, Vec<u8>)],
    subject: (&str, usize),
) -> String {
    let (config, _) = push_blob(c, repo, b"{}".to_vec()).await;
    let mut layers = Vec::new();
    for (title, data) in files {
        let (d, n) = push_blob(c, repo, data.clone()).await;
        layers.push(serde_json::json!({"mediaType": "application/octet-stream",
            "digest": d.to_string(), "size": n,
            "annotations": {"org.opencontainers.image.title": title}}));
    }
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": 2},
        "layers": layers,
        "subject": {"mediaType": MANIFEST, "digest": subject.0, "size": subject.1}});
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = Digest::sha256_of(&bytes);
    c.put_manifest(
        repo,
        &Selector::Digest(digest.clone()),
        MANIFEST,
        Bytes::from(bytes.clone()),
    )
    .await
    .unwrap();
    let tag = subject.0.replace(':', "-");
    let mut index = match c.manifest(repo, &Selector::Tag(tag.clone())).await {
        Ok(m) => serde_json::from_slice(&m.bytes).unwrap(),
        Err(_) => serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}),
    };
    index["manifests"].as_array_mut().unwrap().push(
        serde_json::json!({"mediaType": MANIFEST, "digest": digest.to_string(),
            "size": bytes.len(), "artifactType": artifact_type}),
    );
    c.put_manifest(
        repo,
        &Selector::Tag(tag),
        INDEX,
        Bytes::from(serde_json::to_vec(&index).unwrap()),
    )
    .await
    .unwrap();
    digest.to_string()
}

#[test]
fn artifacts_have_files_and_images_list_their_referrers() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let image = reg.manifest_digest("lab/busybox", "latest");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&reg);
    let size = rt
        .block_on(c.manifest("lab/busybox", &Selector::Tag("latest".into())))
        .unwrap()
        .bytes
        .len();
    let sbom_json = br#"{"spdxVersion":"SPDX-2.3","name":"busybox"}"#.to_vec();
    let sbom = rt.block_on(push_artifact(
        &c,
        "lab/busybox",
        "application/spdx+json",
        &[("sbom.spdx.json", sbom_json.clone())],
        (&image, size),
    ));
    let readme = b"# notes\n".to_vec();
    let notes = rt.block_on(push_artifact(
        &c,
        "lab/busybox",
        "application/vnd.example.notes",
        &[
            ("README.md", readme.clone()),
            ("data.bin", vec![7u8; 100_000]),
        ],
        (&image, size),
    ));

    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/busybox:latest");
    let refs = img.join("referrers");
    assert_eq!(dir_names(&refs), ["application"]);
    assert_eq!(
        dir_names(&refs.join("application")),
        ["spdx+json", "vnd.example.notes"]
    );
    let link = refs.join("application/spdx+json").join(&sbom);
    assert_eq!(
        fs::read_link(&link).unwrap().to_str().unwrap(),
        format!("../../../../busybox@{sbom}")
    );
    // Through the link: the artifact's directory, its file's bytes as pushed.
    assert_eq!(
        dir_names(&link),
        [
            "blobs",
            "config.json",
            "files",
            "manifest.json",
            "referrers"
        ]
    );
    assert_eq!(
        fs::read(link.join("files/sbom.spdx.json")).unwrap(),
        sbom_json
    );
    let art = m.path().join(format!("lab/busybox@{notes}"));
    assert_eq!(dir_names(&art.join("files")), ["README.md", "data.bin"]);
    assert_eq!(fs::read(art.join("files/README.md")).unwrap(), readme);
    assert_eq!(
        Digest::sha256_of(&fs::read(art.join("files/data.bin")).unwrap()),
        Digest::sha256_of(&[7u8; 100_000])
    );
    assert!(!art.join("rootfs").exists());
    // A flipped byte in a file's blob: EIO, not the wrong bytes.
    let d = Digest::sha256_of(&readme).to_string();
    let blob = reg.blob_path(&d);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[0] ^= 0x20;
    fs::write(&blob, &bytes).unwrap();
    let other = m.path().join(format!("lab/busybox@{sbom}"));
    assert_eq!(dir_names(&other.join("referrers")), Vec::<String>::new());
    // (README.md of `notes` is cached and verified already; a fresh mount
    // fetches it again and refuses it.)
    drop(m);
    let m2 = Mount::new(&reg, &[]);
    let err = fs::read(
        m2.path()
            .join(format!("lab/busybox@{notes}/files/README.md")),
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

/// A Helm-style chart directory as a tar.gz: (tar.gz bytes, Chart.yaml).
fn chart_tgz() -> (Vec<u8>, Vec<u8>) {
    let chart_yaml = b"apiVersion: v2\nname: demo\nversion: 0.1.0\n".to_vec();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("demo/Chart.yaml", &chart_yaml[..]),
        ("demo/templates/service.yaml", &b"kind: Service\n"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    (gz.finish().unwrap(), chart_yaml)
}

#[test]
fn a_chart_artifact_is_browsable_unpacked() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = client(&reg);
    let (tgz, chart_yaml) = chart_tgz();
    let (config, _) = rt.block_on(push_blob(&c, "lab/charts", b"{}".to_vec()));
    let (layer, n) = rt.block_on(push_blob(&c, "lab/charts", tgz.clone()));
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "digest": layer.to_string(), "size": n,
            "annotations": {"org.opencontainers.image.title": "demo-0.1.0.tgz"}}]});
    rt.block_on(c.put_manifest(
        "lab/charts",
        &Selector::Tag("demo-0.1.0".into()),
        MANIFEST,
        Bytes::from(serde_json::to_vec(&m).unwrap()),
    ))
    .unwrap();

    let mnt = Mount::new(&reg, &[]);
    let chart = mnt.path().join("lab/charts:demo-0.1.0");
    assert_eq!(
        dir_names(&chart),
        [
            "blobs",
            "config.json",
            "files",
            "manifest.json",
            "referrers",
            "unpacked"
        ]
    );
    assert_eq!(dir_names(&chart.join("unpacked")), ["demo-0.1.0.tgz"]);
    let root = chart.join("unpacked/demo-0.1.0.tgz");
    assert_eq!(fs::read(root.join("demo/Chart.yaml")).unwrap(), chart_yaml);
    assert_eq!(
        fs::read(root.join("demo/templates/service.yaml")).unwrap(),
        b"kind: Service\n"
    );
    assert_eq!(fs::read(chart.join("files/demo-0.1.0.tgz")).unwrap(), tgz);
}
