//! The service driven in-process over a directory laid out like a regfs
//! mount: both label families, tag pinning, indexes, the fallback, mounts
//! and the gRPC codes containerd tells apart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::{Code, Request};

use super::*;

const REG: &str = "127.0.0.1:5000";
const M: &str = "sha256:1111";
const A: &str = "sha256:aaaa";
const B: &str = "sha256:bbbb";
const I: &str = "sha256:2222";
const C: &str = "sha256:3333";
const X: &str = "sha256:xxxx";

/// `lab/python:3.11` → `python@M` (layers A, B); `lab/multi:latest` → an
/// index `multi@I` whose `linux-amd64` is `multi@C` (layer X).
fn fake_mount(mnt: &Path) {
    let lab = mnt.join("lab");
    std::fs::create_dir_all(lab.join(format!("python@{M}/layers/1-{A}"))).unwrap();
    std::fs::create_dir_all(lab.join(format!("python@{M}/layers/2-{B}"))).unwrap();
    std::os::unix::fs::symlink(format!("python@{M}"), lab.join("python:3.11")).unwrap();
    std::fs::create_dir_all(lab.join(format!("multi@{C}/layers/1-{X}"))).unwrap();
    std::fs::create_dir_all(lab.join(format!("multi@{I}"))).unwrap();
    std::os::unix::fs::symlink(
        format!("../multi@{C}"),
        lab.join(format!("multi@{I}/linux-amd64")),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("multi@{I}"), lab.join("multi:latest")).unwrap();
}

fn service(dir: &Path) -> Service {
    let mnt = dir.join("mnt");
    fake_mount(&mnt);
    let store = Arc::new(Store::open(&dir.join("root"), &mnt).unwrap());
    Service::new(store, Arc::new(Resolver::new(&mnt, REG)))
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn stargz(target: &str, image: &str, layer: &str) -> HashMap<String, String> {
    labels(&[
        (labels::SNAPSHOT_REF, target),
        ("containerd.io/snapshot/remote/stargz.reference", image),
        ("containerd.io/snapshot/remote/stargz.digest", layer),
    ])
}

async fn prepare(
    svc: &Service,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Vec<crate::proto::containerd::types::Mount>, Status> {
    svc.prepare(Request::new(pb::PrepareSnapshotRequest {
        snapshotter: "regfs".into(),
        key: key.into(),
        parent: parent.into(),
        labels,
    }))
    .await
    .map(|r| r.into_inner().mounts)
}

async fn stat(svc: &Service, key: &str) -> Result<pb::Info, Status> {
    svc.stat(Request::new(pb::StatSnapshotRequest {
        snapshotter: "regfs".into(),
        key: key.into(),
    }))
    .await
    .map(|r| r.into_inner().info.unwrap())
}

fn link(svc: &Service, name: &str) -> String {
    let id = svc.store.stat(name).unwrap().id;
    std::fs::read_link(svc.store.layout().fs(id))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn remote_layers_from_both_label_families() {
    let d = tempfile::tempdir().unwrap();
    let svc = service(d.path());
    let mnt = d.path().join("mnt");

    // CRI labels, with the manifest digest.
    let cri = labels(&[
        (labels::SNAPSHOT_REF, "chain-a"),
        (
            "containerd.io/snapshot/cri.image-ref",
            &format!("{REG}/lab/python:3.11"),
        ),
        ("containerd.io/snapshot/cri.layer-digest", A),
        ("containerd.io/snapshot/cri.manifest-digest", M),
    ]);
    let e = prepare(&svc, "extract-1", "", cri).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let info = stat(&svc, "chain-a").await.unwrap();
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    assert_eq!(info.labels[labels::SNAPSHOT_REF], "chain-a");
    assert!(info.labels.contains_key(labels::REMOTE));
    assert_eq!(
        stat(&svc, "extract-1").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        link(&svc, "chain-a"),
        mnt.join(format!("lab/python@{M}/layers/1-{A}"))
            .to_string_lossy()
    );

    // rpull's labels name a tag: pinned to the manifest it resolves to.
    let e = prepare(
        &svc,
        "extract-2",
        "chain-a",
        stargz("chain-b", &format!("{REG}/lab/python:3.11"), B),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(stat(&svc, "chain-b").await.unwrap().parent, "chain-a");
    assert!(link(&svc, "chain-b").ends_with(&format!("lab/python@{M}/layers/2-{B}")));

    // Asked again (another namespace, a retry): still "already exists".
    let e = prepare(
        &svc,
        "extract-3",
        "chain-a",
        stargz("chain-b", &format!("{REG}/lab/python:3.11"), B),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // An index: the platform manifest that lists the layer.
    let e = prepare(
        &svc,
        "extract-4",
        "",
        stargz("chain-x", &format!("{REG}/lab/multi:latest"), X),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(link(&svc, "chain-x").ends_with(&format!("lab/multi@{C}/layers/1-{X}")));

    // A container on top: overlay, remote lowerdirs by colon-free paths.
    let mounts = prepare(&svc, "ctr", "chain-b", HashMap::new())
        .await
        .unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].r#type, "overlay");
    let lower = mounts[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    let layout = svc.store.layout();
    let ids = |n: &str| {
        layout
            .fs(svc.store.stat(n).unwrap().id)
            .display()
            .to_string()
    };
    assert_eq!(lower, format!("{}:{}", ids("chain-b"), ids("chain-a")));
    assert!(mounts[0].options.iter().any(|o| o.starts_with("upperdir=")));
    assert!(mounts[0].options.iter().any(|o| o.starts_with("workdir=")));
    // A view of one layer is a read-only bind.
    let view = svc
        .view(Request::new(pb::ViewSnapshotRequest {
            key: "v".into(),
            parent: "chain-a".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(
        (view[0].r#type.as_str(), view[0].options[0].as_str()),
        ("bind", "ro")
    );
}

#[tokio::test]
async fn unservable_layers_fall_back_to_an_active_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let svc = service(d.path());
    for (n, image, layer) in [
        (
            "1",
            format!("{REG}/lab/python:3.11"),
            "sha256:notinmanifest",
        ),
        ("2", "other.example.com/lab/python:3.11".to_string(), A),
        ("3", format!("{REG}/lab/nothere:1"), A),
    ] {
        let key = format!("extract-{n}");
        let mounts = prepare(&svc, &key, "", stargz(&format!("chain-{n}"), &image, layer))
            .await
            .unwrap();
        assert_eq!(mounts[0].r#type, "bind", "{image} {layer}");
        assert_eq!(
            stat(&svc, &key).await.unwrap().kind,
            pb::Kind::Active as i32
        );
        assert_eq!(
            stat(&svc, &format!("chain-{n}")).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    // The ordinary path: containerd unpacks, then commits.
    svc.commit(Request::new(pb::CommitSnapshotRequest {
        name: "chain-1".into(),
        key: "extract-1".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(
        stat(&svc, "chain-1").await.unwrap().kind,
        pb::Kind::Committed as i32
    );
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    r.unwrap_err().code()
}

#[tokio::test]
async fn errors_carry_containerds_codes() {
    let d = tempfile::tempdir().unwrap();
    let svc = service(d.path());
    prepare(&svc, "a", "", HashMap::new()).await.unwrap();
    assert_eq!(
        code(prepare(&svc, "a", "", HashMap::new()).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(prepare(&svc, "b", "none", HashMap::new()).await),
        Code::NotFound
    );
    assert_eq!(
        code(prepare(&svc, "b", "a", HashMap::new()).await),
        Code::FailedPrecondition
    );
    svc.commit(Request::new(pb::CommitSnapshotRequest {
        name: "base".into(),
        key: "a".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let commit_again = svc
        .commit(Request::new(pb::CommitSnapshotRequest {
            name: "base2".into(),
            key: "base".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(commit_again), Code::FailedPrecondition);
    prepare(&svc, "child", "base", HashMap::new())
        .await
        .unwrap();
    let rm = svc
        .remove(Request::new(pb::RemoveSnapshotRequest {
            key: "base".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(rm), Code::FailedPrecondition);
    let mounts = svc
        .mounts(Request::new(pb::MountsRequest {
            key: "base".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(mounts), Code::FailedPrecondition);
    let update = svc
        .update(Request::new(pb::UpdateSnapshotRequest {
            info: Some(pb::Info {
                name: "base".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["kind".into()],
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(update), Code::InvalidArgument);
    let usage = svc
        .usage(Request::new(pb::UsageRequest {
            key: "nope".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(usage), Code::NotFound);
}
