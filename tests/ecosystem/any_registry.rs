//! Issue 16: one mount for many registries (`regfs mount --any-registry`).
//! Two real registries on loopback — one with basic auth, its credentials in
//! a podman auth file; one reached through a pull-through mirror named in a
//! `hosts.toml` — read through one mount as `MNT/HOST:PORT/lab/…`.

use crate::harness;

use std::ffi::OsString;
use std::fs;
use std::process::Command;

use harness::configured::ConfiguredRegistry;
use harness::registry::{LAB_PASS, LAB_USER};
use harness::served::count_reaching;
use harness::{dir_names, env_vars, regfs_bin, tempdir, Mount, Registry, RegistryKind};
use regfs::digest::Digest;

/// The config digest in `image`'s manifest.json, checked against the bytes of
/// its config.json read through the mount.
fn check_config(image: &std::path::Path) {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    let config = fs::read(image.join("config.json")).unwrap();
    assert_eq!(
        Digest::sha256_of(&config).to_string(),
        m["config"]["digest"].as_str().unwrap()
    );
}

#[test]
fn one_mount_reads_two_registries_one_with_auth_one_mirrored() {
    require_fuse!();
    use base64::Engine;
    let private = Registry::start(RegistryKind::BasicAuth);
    private.push("busybox", "lab/busybox:latest");
    let public = Registry::start(RegistryKind::Plain);
    public.push("busybox-arm64", "lab/tools:1");
    let mirror = ConfiguredRegistry::pull_through(&public.url(""));

    // Credentials of the private registry only, in a podman auth file.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{LAB_USER}:{LAB_PASS}"));
    let authdir = tempdir("authfile");
    let authfile = authdir.path().join("auth.json");
    fs::write(
        &authfile,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            private.host_port()
        ),
    )
    .unwrap();
    // The public registry's mirror, in containerd's hosts.toml layout.
    let hosts = tempdir("hosts");
    let d = hosts.path().join(public.host_port());
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("hosts.toml"),
        format!("[host.\"http://{}\"]\n", mirror.host_port()),
    )
    .unwrap();
    let home = tempdir("home");
    let m = Mount::with_env(
        "any",
        vec![
            "--any-registry".into(),
            "--tag-ttl".into(),
            "1".into(),
            "--hosts-dir".into(),
            hosts.path().into(),
        ],
        None,
        env_vars([
            ("REGISTRY_AUTH_FILE", authfile.into_os_string()),
            ("HOME", home.path().into()),
        ]),
    );
    // Nothing is listed before a registry is named; a name that is not a
    // registry is absent.
    assert!(dir_names(m.path()).is_empty());
    assert!(!m.path().join("lab").exists());

    // The private registry, with the auth file's credentials.
    let p = m.path().join(private.host_port());
    assert_eq!(dir_names(&p), vec!["lab"]);
    assert_eq!(dir_names(&p.join("lab")), vec!["busybox:latest"]);
    let digest = private.manifest_digest("lab/busybox", "latest");
    let link = fs::read_link(p.join("lab/busybox:latest")).unwrap();
    assert_eq!(link.to_str().unwrap(), format!("busybox@{digest}"));
    check_config(&p.join("lab/busybox:latest"));
    let busybox = fs::read(p.join("lab/busybox:latest/rootfs/bin/busybox")).unwrap();
    assert!(busybox.len() > 100_000, "{}", busybox.len());

    // The public registry (another image: the cache is shared by digest),
    // through its mirror.
    let q = m.path().join(public.host_port());
    check_config(&q.join("lab/tools:1"));
    let arm = fs::read(q.join("lab/tools:1/rootfs/bin/busybox")).unwrap();
    assert!(arm.len() > 100_000 && arm != busybox);
    let mirror_blob_gets = || {
        mirror
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.uri.contains("/blobs/sha256:"))
            .count()
    };
    assert!(count_reaching(2, mirror_blob_gets) >= 2, "{}", mirror.log());
    assert!(
        !public
            .log()
            .lines()
            .any(|l| l.contains("\"GET ") && l.contains("/blobs/") && l.contains("\"regfs/")),
        "regfs went to the registry, not its mirror:\n{}",
        public.log()
    );

    // Both are listed now (once the root's attributes expire, after the tag
    // TTL), and status says which registries are in use.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut want = vec![private.host_port(), public.host_port()];
    want.sort();
    assert_eq!(dir_names(m.path()), want);
    let out = Command::new(regfs_bin())
        .args(["status", m.path().to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    for host in &want {
        assert!(status.contains(host.as_str()), "{status}");
    }

    // A registry that does not resolve: an error, promptly, and the mount lives on.
    let t = std::time::Instant::now();
    assert!(fs::read_link(m.path().join("no-such-registry.invalid/lab/x:1")).is_err());
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    assert!(m.path().join(private.host_port()).join("lab").exists());
}

#[test]
fn any_registry_refuses_a_registry_argument() {
    let out = Command::new(regfs_bin())
        .args(["mount", "localhost:5000", "/tmp", "--any-registry"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only the mountpoint"), "{err}");
    let out = Command::new(regfs_bin())
        .args([OsString::from("mount"), "localhost:5000".into()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing MOUNTPOINT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
