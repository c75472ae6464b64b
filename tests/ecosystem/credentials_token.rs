//! Issue 6: credentials from every docker / podman source (credential helpers
//! over the docker-credential protocol, `credsStore`, `REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`) and token auth against the real
//! registry configured with `auth: token`, with tokens that expire while mounted
//! and identity tokens exchanged through the OAuth2 refresh flow.

use crate::harness;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::configured::ConfiguredRegistry;
use harness::env_vars;
use harness::token_server::TokenServer;
use harness::{tempdir, Mount, Registry, RegistryKind, LAB_PASS, LAB_USER};
use regfs::reference::{Registry as RegName, Selector};
use regfs::registry::{Client, ClientOptions, Credentials};
use regfs::Error;

const REFRESH: &str = "refresh-s3cr3t-token";

/// A plain registry holding busybox, and a token-auth registry serving the same
/// storage through `ts`.
fn token_registry(ts: &TokenServer) -> (Registry, ConfiguredRegistry) {
    let plain = Registry::start(RegistryKind::Plain);
    plain.push("busybox", "lab/busybox:latest");
    let storage = plain.storage_dir();
    let auth = ts.registry_auth_yaml();
    let reg = ConfiguredRegistry::start(|port, _| {
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: s-{port}\n{auth}",
            storage.display()
        )
    });
    (plain, reg)
}

fn client(addr: &str, creds: Option<(&str, &str)>, config_dir: &Path) -> Client {
    let mut o = ClientOptions::new(RegName::parse(addr).unwrap().0);
    o.timeout = Duration::from_secs(10);
    o.docker_config_dir = Some(config_dir.to_path_buf());
    o.credentials = creds.map(|(u, p)| Credentials {
        username: u.into(),
        password: p.into(),
    });
    Client::new(o).unwrap()
}

fn latest() -> Selector {
    Selector::Tag("latest".into())
}

#[tokio::test]
async fn token_auth_expiry_and_identity_token_refresh() {
    let ts = TokenServer::start(LAB_USER, LAB_PASS, REFRESH, 2);
    let (_plain, reg) = token_registry(&ts);
    let empty = tempdir("no-docker-config");

    // The registry really enforces the tokens' short life (the token server
    // compensates distribution's 60 s leeway): a token used after 3 s is refused.
    let tok = Command::new("curl")
        .args(["-sS", "-u", &format!("{LAB_USER}:{LAB_PASS}")])
        .arg(format!(
            "{}?service={}&scope=repository:lab/busybox:pull",
            ts.realm(),
            harness::token_server::SERVICE
        ))
        .output()
        .unwrap();
    let tok: serde_json::Value = serde_json::from_slice(&tok.stdout).unwrap();
    let tok = tok["token"].as_str().unwrap().to_string();
    let status = |t: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {t}"))
            .arg(format!(
                "http://{}/v2/lab/busybox/tags/list",
                reg.host_port()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        status(&tok),
        "200",
        "fresh token; registry log:\n{}",
        reg.log()
    );

    // Username and password, sent to the realm as Basic.
    let c = client(&reg.host_port(), Some((LAB_USER, LAB_PASS)), empty.path());
    c.ping().await.unwrap();
    let m = c.manifest("lab/busybox", &latest()).await.unwrap();
    let first = ts.granted();
    assert!(first >= 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(&tok), "401", "an expired token must be refused");
    // The cached token has expired: a new one is fetched without an error.
    let again = c.manifest("lab/busybox", &latest()).await.unwrap();
    assert_eq!(again.digest, m.digest);
    assert!(ts.granted() > first, "no new token after expiry");

    // Anonymous and wrong passwords are refused by the token server.
    let anon = client(&reg.host_port(), None, empty.path());
    assert!(matches!(
        anon.manifest("lab/busybox", &latest()).await,
        Err(Error::Unauthorized(_))
    ));
    let wrong = client(&reg.host_port(), Some((LAB_USER, "nope")), empty.path());
    assert!(matches!(
        wrong.manifest("lab/busybox", &latest()).await,
        Err(Error::Unauthorized(_))
    ));

    // An identity token from the docker config: OAuth2 refresh_token grant (POST).
    let dir = tempdir("docker-config");
    fs::write(
        dir.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"{REFRESH}"}}}}}}"#,
            reg.host_port()
        ),
    )
    .unwrap();
    let idt = client(&reg.host_port(), None, dir.path());
    let before = ts.requests().len();
    let m2 = idt.manifest("lab/busybox", &latest()).await.unwrap();
    assert_eq!(m2.digest, m.digest);
    let posts: Vec<_> = ts.requests()[before..]
        .iter()
        .filter(|r| r.method == "POST" && r.granted)
        .cloned()
        .collect();
    assert!(!posts.is_empty(), "{:?}", ts.requests());
    assert!(
        posts[0].body.contains("grant_type=refresh_token"),
        "{posts:?}"
    );
    assert!(
        posts[0]
            .body
            .contains("scope=repository%3Alab%2Fbusybox%3Apull"),
        "{posts:?}"
    );
    // And again after the access token expired.
    std::thread::sleep(Duration::from_secs(3));
    idt.manifest("lab/busybox", &latest()).await.unwrap();
    let posts_after = ts.requests()[before..]
        .iter()
        .filter(|r| r.method == "POST" && r.granted)
        .count();
    assert!(posts_after >= 2, "{:?}", ts.requests());
}

/// Reads through a mount keep working across several token expiries (2 s
/// tokens, reads for 8 s with a 1 s tag TTL so the registry is asked again).
#[test]
fn mounted_reads_survive_token_expiry() {
    require_fuse!();
    let ts = TokenServer::start(LAB_USER, LAB_PASS, REFRESH, 2);
    let (plain, reg) = token_registry(&ts);
    let home = tempdir("home");
    let m = Mount::with_env(
        &reg.host_port(),
        ["--username", LAB_USER, "--password-stdin", "--tag-ttl", "1"]
            .map(OsString::from)
            .to_vec(),
        Some(format!("{LAB_PASS}\n")),
        env_vars([
            ("HOME", home.path().as_os_str()),
            ("RUST_LOG", "debug".as_ref()),
        ]),
    );
    let want = plain.manifest_digest("lab/busybox", "latest");
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(m.path().join("lab/busybox:latest/manifest.json")).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let granted0 = ts.granted();
    let start = Instant::now();
    let mut reads = 0;
    let mut blob_read = false;
    while start.elapsed() < Duration::from_secs(8) {
        let link = fs::read_link(m.path().join("lab/busybox:latest"))
            .unwrap_or_else(|e| panic!("readlink after {:?}: {e}\n{}", start.elapsed(), m.log()));
        assert_eq!(link.to_str().unwrap(), format!("busybox@{want}"));
        let tags = fs::read_dir(m.path().join("lab")).unwrap().count();
        assert!(tags >= 1);
        if !blob_read && start.elapsed() > Duration::from_secs(5) {
            // A blob fetched only now, long after the first token expired.
            let b = fs::read(m.path().join(format!("lab/busybox:latest/blobs/{layer}"))).unwrap();
            assert_eq!(regfs::digest::Digest::sha256_of(&b).to_string(), layer);
            blob_read = true;
        }
        reads += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(blob_read);
    let granted = ts.granted() - granted0;
    assert!(
        granted >= 3,
        "{granted} tokens in 8 s of 2 s tokens ({reads} reads); token requests: {:?}",
        ts.requests()
    );
    let log = m.log();
    assert!(!log.contains(LAB_PASS), "password in the log:\n{log}");
}

/// Writes `docker-credential-regfstest` into `dir`: it answers `get` for
/// `server` with the lab credentials, records each call in `dir/calls`, and
/// says "credentials not found" for anything else (the protocol's way).
fn write_helper(dir: &Path, server: &str) {
    let script = format!(
        r#"#!/bin/sh
read -r addr
echo "$1 $addr" >> '{calls}'
if [ "$1" = get ] && [ "$addr" = '{server}' ]; then
  printf '{{"ServerURL":"%s","Username":"{LAB_USER}","Secret":"{LAB_PASS}"}}\n' "$addr"
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
"#,
        calls = dir.join("calls").display()
    );
    let p = dir.join("docker-credential-regfstest");
    fs::write(&p, script).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn path_with(dir: &Path) -> OsString {
    let mut p = OsString::from(dir);
    p.push(":");
    p.push(std::env::var_os("PATH").unwrap_or_default());
    p
}

fn assert_reads_busybox(m: &Mount, reg: &Registry) {
    let digest = reg.manifest_digest("lab/busybox", "latest");
    let link = fs::read_link(m.path().join("lab/busybox:latest"))
        .unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert_eq!(link.to_str().unwrap(), format!("busybox@{digest}"));
    assert!(fs::read(m.path().join("lab/busybox:latest/config.json")).is_ok());
}

#[test]
fn credential_helpers_and_creds_store() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::BasicAuth);
    reg.push("busybox", "lab/busybox:latest");
    for key in ["credHelpers", "credsStore"] {
        let bin = tempdir("helper-bin");
        write_helper(bin.path(), &reg.host_port());
        let cfg = tempdir("docker-config");
        let conf = if key == "credHelpers" {
            format!(r#"{{"credHelpers":{{"{}":"regfstest"}}}}"#, reg.host_port())
        } else {
            r#"{"credsStore":"regfstest"}"#.to_string()
        };
        fs::write(cfg.path().join("config.json"), conf).unwrap();
        let m = Mount::with_env(
            &reg.host_port(),
            vec![],
            None,
            env_vars([
                ("PATH", path_with(bin.path())),
                ("DOCKER_CONFIG", cfg.path().into()),
                ("HOME", bin.path().into()),
                ("RUST_LOG", "debug".into()),
            ]),
        );
        assert_reads_busybox(&m, &reg);
        let calls = fs::read_to_string(bin.path().join("calls")).unwrap_or_default();
        assert!(
            calls
                .lines()
                .any(|l| l == format!("get {}", reg.host_port())),
            "{key}: helper calls: {calls:?}\n{}",
            m.log()
        );
        let log = m.log();
        assert!(log.contains("DEBUG"), "RUST_LOG=debug not in effect");
        assert!(
            !log.contains(LAB_PASS),
            "{key}: password in the log:\n{log}"
        );
    }
}

#[test]
fn podman_auth_files() {
    require_fuse!();
    use base64::Engine;
    let reg = Registry::start(RegistryKind::BasicAuth);
    reg.push("busybox", "lab/busybox:latest");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{LAB_USER}:{LAB_PASS}"));
    let json = format!(
        r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        reg.host_port()
    );
    let home = tempdir("home");

    // REGISTRY_AUTH_FILE names the file directly.
    let f = tempdir("authfile");
    fs::write(f.path().join("auth.json"), &json).unwrap();
    let m = Mount::with_env(
        &reg.host_port(),
        vec![],
        None,
        env_vars([
            (
                "REGISTRY_AUTH_FILE",
                f.path().join("auth.json").into_os_string(),
            ),
            ("HOME", home.path().into()),
        ]),
    );
    assert_reads_busybox(&m, &reg);
    drop(m);

    // ${XDG_RUNTIME_DIR}/containers/auth.json, podman login's default.
    let run = tempdir("xdg-runtime");
    fs::create_dir_all(run.path().join("containers")).unwrap();
    fs::write(run.path().join("containers/auth.json"), &json).unwrap();
    let m = Mount::with_env(
        &reg.host_port(),
        vec![],
        None,
        env_vars([
            ("XDG_RUNTIME_DIR", run.path().as_os_str()),
            ("HOME", home.path().as_os_str()),
        ]),
    );
    assert_reads_busybox(&m, &reg);

    // Without any of them the mount is refused access (the test can fail).
    let out = Command::new(harness::regfs_bin())
        .arg("mount")
        .arg(reg.host_port())
        .arg(tempdir("mnt").path())
        .env("HOME", home.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no credentials"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
