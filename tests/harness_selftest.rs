//! Tests of the shared harness itself (no regfs binary, no mount needed).

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use harness::*;

#[test]
fn plain_registry_push_and_tags_list() {
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let (status, body) = reg.get("/v2/lab/busybox/tags/list");
    assert_eq!(status, 200, "{body}");
    let tags: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        tags["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "latest"),
        "{body}"
    );
    // The push shows in the access log; nothing has pulled a blob yet.
    assert!(reg.requests().iter().any(|r| r.method == "PUT"));
    assert_eq!(reg.blob_gets(None), 0);
    let digest = reg.manifest_digest("lab/busybox", "latest");
    assert!(digest.starts_with("sha256:"), "{digest}");
}

#[test]
fn restart_keeps_port_and_storage() {
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let port = reg.port();
    reg.stop();
    assert!(!reg.is_running());
    reg.restart();
    assert_eq!(reg.port(), port);
    let (status, body) = reg.get("/v2/lab/busybox/tags/list");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("latest"), "{body}");
}

#[test]
fn basic_auth_registry_requires_credentials() {
    let reg = Registry::start(RegistryKind::BasicAuth);
    let (status, _) = reg.get_anonymous("/v2/");
    assert_eq!(status, 401);
    let (status, _) = reg.get("/v2/");
    assert_eq!(status, 200);
    assert_eq!(reg.username(), Some("lab"));
}

#[test]
fn tls_registry_serves_https_with_private_ca() {
    let reg = Registry::start(RegistryKind::Tls);
    assert!(reg.ca_cert().unwrap().is_file());
    reg.push("busybox", "lab/busybox:latest");
    let (status, body) = reg.get("/v2/lab/busybox/tags/list");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn shared_lab_pushes_lazily() {
    let reg = lab().image("busybox");
    let (status, body) = reg.get("/v2/lab/busybox/tags/list");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("latest") && body.contains("v2s2"), "{body}");
    // Nothing else was pushed.
    let (status, _) = reg.get("/v2/lab/python/tags/list");
    assert_eq!(status, 404);
}

#[test]
fn umoci_snapshot_of_busybox() {
    let root = umoci_unpack("busybox");
    let snap = snapshot(&root);
    assert!(snap.len() >= 288, "only {} entries", snap.len());
    let sh = &snap[Path::new("/bin/sh")];
    assert_eq!(sh.kind, Kind::Symlink);
    assert_eq!(sh.target.as_deref(), Some(Path::new("/bin/busybox")));
    let bb = &snap[Path::new("/bin/busybox")];
    assert_eq!(bb.kind, Kind::File);
    assert_eq!(bb.mode, 0o755);
    // The batched openssl hashes agree with the sha2 crate.
    assert_eq!(bb.sha256, Some(sha256_file(&root.join("bin/busybox"))));
    assert_eq!(
        snap[Path::new("/etc/passwd")].sha256,
        Some(sha256_file(&root.join("etc/passwd")))
    );
    assert_eq!(snap[Path::new("/tmp")].mode, 0o1777);
    assert_eq!(snap[Path::new("/etc/shadow")].mode, 0o640);
    // Same tree twice: no differences.
    assert_same_tree(&snap, &snapshot(&root));
}

#[test]
fn assert_same_tree_detects_a_changed_mode() {
    let src = umoci_unpack("busybox").join("etc");
    let tmp = tempdir("selftest");
    let copy = tmp.path().join("etc");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let before = snapshot(&copy);
    assert_same_tree(&snapshot(&src), &before);
    std::fs::set_permissions(copy.join("passwd"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let after = snapshot(&copy);
    let diffs = tree_diff(&before, &after);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(diffs[0].contains("/passwd mode"), "{diffs:?}");
    let result = std::panic::catch_unwind(|| assert_same_tree(&before, &after));
    let msg = result.expect_err("assert_same_tree must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("expected 644, got 600"), "{msg}");
}

#[test]
fn skip_rule_and_mountinfo() {
    // Root and /dev/fuse are there on CI; the rule must agree with the machine.
    let unavailable = fuse_unavailable();
    if unavailable.is_none() {
        assert!(fuse_ready());
    }
    assert_eq!(mount_fstype(Path::new("/proc")).as_deref(), Some("proc"));
    assert_eq!(mount_fstype(Path::new("/nonexistent-mountpoint")), None);
}
