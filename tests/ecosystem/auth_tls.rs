//! Issue 2: credentials (docker config.json, --password-stdin), wrong
//! passwords, TLS with a private CA, and a stopped registry, through real mounts.

use crate::harness;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use harness::{
    env_vars, regfs_bin, tempdir, wait_timeout, Mount, Registry, RegistryKind, LAB_PASS, LAB_USER,
};

fn busybox_on(kind: RegistryKind) -> Registry {
    let reg = Registry::start(kind);
    reg.push("busybox", "lab/busybox:latest");
    reg
}

fn assert_browsable(m: &Mount, reg: &Registry) {
    let digest = reg.manifest_digest("lab/busybox", "latest");
    let link = fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    assert_eq!(link.to_str().unwrap(), format!("busybox@{digest}"));
    let out = Command::new("chroot")
        .arg(m.path().join("lab/busybox:latest/rootfs"))
        .args(["/bin/busybox", "true"])
        .status()
        .unwrap();
    assert!(out.success());
}

/// Run `regfs mount` expecting it to fail; returns its stderr.
fn mount_fails(args: &[&str], stdin: Option<&str>) -> String {
    let mp = tempdir("mnt");
    let mut child = Command::new(regfs_bin())
        .arg("mount")
        .arg(args[0])
        .arg(mp.path())
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let started = Instant::now();
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = Command::new("umount").arg("-l").arg(mp.path()).status();
        panic!("regfs mount {args:?} hung");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        !status.success(),
        "mount {args:?} should fail; stderr: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    err
}

#[test]
fn basic_auth_with_docker_config_json() {
    require_fuse!();
    let reg = busybox_on(RegistryKind::BasicAuth);
    let cfg = tempdir("docker-config");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{LAB_USER}:{LAB_PASS}"));
    fs::write(
        cfg.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host_port()
        ),
    )
    .unwrap();
    // DOCKER_CONFIG for the daemon only: the test process's environment is
    // shared with every test of the binary.
    let m = Mount::with_env(
        &reg.host_port(),
        vec!["--plain-http".into()],
        None,
        env_vars([("DOCKER_CONFIG", cfg.path())]),
    );
    assert_browsable(&m, &reg);
    assert!(!m.log().contains(LAB_PASS), "the password reached the log");
}

#[test]
fn basic_auth_with_password_stdin() {
    require_fuse!();
    let reg = busybox_on(RegistryKind::BasicAuth);
    let m = Mount::new(&reg, &["--tag-ttl", "0"]);
    assert_browsable(&m, &reg);
    assert!(!m.log().contains(LAB_PASS));
}

#[test]
fn wrong_password_is_a_clear_error_at_mount_time() {
    require_fuse!();
    let reg = busybox_on(RegistryKind::BasicAuth);
    let addr = reg.host_port();
    let err = mount_fails(
        &[
            &addr,
            "--plain-http",
            "--username",
            LAB_USER,
            "--password-stdin",
        ],
        Some("not-the-password\n"),
    );
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("not-the-password"), "password echoed: {err}");
    let err = mount_fails(&[&addr, "--plain-http"], None);
    assert!(err.contains("authentication failed"), "{err}");
}

#[test]
fn tls_with_a_private_ca() {
    require_fuse!();
    let reg = busybox_on(RegistryKind::Tls);
    let m = Mount::new(&reg, &[]); // --ca-cert CA
    assert_browsable(&m, &reg);
    drop(m);
    // Without the CA the certificate is refused, clearly.
    let https = format!("https://{}", reg.host_port());
    let err = mount_fails(&[&https], None);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // --insecure-skip-verify is the explicit way around it.
    let m = Mount::with_args(&https, vec!["--insecure-skip-verify".into()], None);
    assert_browsable(&m, &reg);
}

#[test]
fn stopped_registry_gives_eio_within_the_timeout() {
    require_fuse!();
    let reg = busybox_on(RegistryKind::Plain);
    let m = Mount::new(
        &reg,
        &["--timeout", "2", "--retries", "1", "--tag-ttl", "1"],
    );
    let img = m.path().join("lab/busybox:latest");
    fs::read(img.join("manifest.json")).unwrap();
    reg.stop();
    std::thread::sleep(Duration::from_millis(1100));
    for (what, result) in [
        ("config.json", fs::read(img.join("config.json")).map(|_| ())),
        ("rootfs", fs::read_dir(img.join("rootfs")).map(|_| ())),
        (
            "tag",
            fs::read_link(m.path().join("lab/busybox:latest")).map(|_| ()),
        ),
    ] {
        let started = Instant::now();
        let e = result.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    reg.restart();
    // Once the registry answers again, the same paths work without a remount.
    std::thread::sleep(Duration::from_millis(1100));
    fs::read(img.join("config.json")).unwrap();
}
