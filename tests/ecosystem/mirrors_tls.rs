//! Issue 6: mirrors and TLS client certificates, with real registries — a
//! pull-through cache (`proxy.remoteurl`) in front of the lab registry, read
//! through a real mount, falling back to the registry when the mirror stops;
//! and a registry that requires client certificates (`http.tls.clientcas`).

use crate::harness;

use std::ffi::OsString;
use std::fs;
use std::time::Duration;

use harness::configured::{pki, ConfiguredRegistry};
use harness::served::count_reaching;
use harness::{tempdir, Mount, Registry, RegistryKind};
use regfs::reference::{Registry as RegName, Selector};
use regfs::registry::{Client, ClientOptions};

/// GETs of URIs containing `what` in a registry's access log (read them
/// through [`count_reaching`]: the line is written after the response).
fn gets(reg: &ConfiguredRegistry, what: &str) -> usize {
    reg.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri.contains(what))
        .count()
}

/// GETs of `what` by regfs (its User-Agent) in a registry's access log.
fn regfs_gets(log: &str, what: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("\"GET ") && l.contains(what) && l.contains("\"regfs/"))
        .count()
}

fn layer_of(m: &Mount) -> String {
    let v: serde_json::Value = serde_json::from_slice(
        &fs::read(m.path().join("lab/busybox:latest/manifest.json")).unwrap(),
    )
    .unwrap();
    v["layers"][0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn mirror_serves_then_registry_takes_over() {
    require_fuse!();
    let upstream = Registry::start(RegistryKind::Plain);
    upstream.push("busybox", "lab/busybox:latest");
    let mirror = ConfiguredRegistry::pull_through(&upstream.url(""));
    let m = Mount::with_args(
        &upstream.host_port(),
        [
            "--mirror",
            &format!("http://{}", mirror.host_port()),
            "--tag-ttl",
            "1",
        ]
        .map(OsString::from)
        .to_vec(),
        None,
    );
    let digest = upstream.manifest_digest("lab/busybox", "latest");
    let link = fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    assert_eq!(link.to_str().unwrap(), format!("busybox@{digest}"));
    fs::read(m.path().join("lab/busybox:latest/config.json")).unwrap();
    // Tag and config came through the mirror.
    assert!(
        count_reaching(1, || gets(&mirror, "/manifests/latest")) >= 1,
        "{}",
        mirror.log()
    );
    assert!(
        count_reaching(1, || gets(&mirror, "/blobs/sha256:")) >= 1,
        "{}",
        mirror.log()
    );
    let upstream_blob_gets = upstream.blob_gets(None);

    // The mirror goes away: the next reads go to the registry.
    mirror.stop();
    let layer = layer_of(&m);
    let data = fs::read(m.path().join(format!("lab/busybox:latest/blobs/{layer}")))
        .unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert_eq!(regfs::digest::Digest::sha256_of(&data).to_string(), layer);
    assert!(
        count_reaching(1, || regfs_gets(&upstream.log(), &layer)) >= 1
            && upstream.blob_gets(None) > upstream_blob_gets,
        "the blob did not come from the registry:\n{}",
        upstream.log()
    );
    std::thread::sleep(Duration::from_millis(1100));
    let link = fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    assert_eq!(link.to_str().unwrap(), format!("busybox@{digest}"));
    assert!(m.log().contains("mirror failed"), "{}", m.log());
}

#[test]
fn hosts_toml_capabilities() {
    require_fuse!();
    let upstream = Registry::start(RegistryKind::Plain);
    upstream.push("busybox", "lab/busybox:latest");
    let mirror = ConfiguredRegistry::pull_through(&upstream.url(""));
    // The mirror may only serve content by digest ("pull"), not resolve tags.
    let dir = tempdir("hosts");
    let d = dir.path().join(upstream.host_port());
    fs::create_dir_all(&d).unwrap();
    fs::write(
        d.join("hosts.toml"),
        format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            mirror.host_port()
        ),
    )
    .unwrap();
    let m = Mount::with_args(
        &upstream.host_port(),
        vec!["--hosts-dir".into(), dir.path().into()],
        None,
    );
    let layer = layer_of(&m);
    let data = fs::read(m.path().join(format!("lab/busybox:latest/blobs/{layer}"))).unwrap();
    assert_eq!(regfs::digest::Digest::sha256_of(&data).to_string(), layer);
    assert_eq!(gets(&mirror, "/manifests/latest"), 0, "{}", mirror.log());
    assert!(
        count_reaching(1, || gets(&mirror, &format!("/blobs/{layer}"))) >= 1,
        "{}",
        mirror.log()
    );
    // The upstream saw the blob only from the mirror (distribution's proxy may
    // fetch it twice), never from regfs.
    assert!(upstream.blob_gets(Some(&layer)) >= 1);
    assert_eq!(regfs_gets(&upstream.log(), &layer), 0, "{}", upstream.log());
    assert!(m.log().contains("mirror"), "{}", m.log());
}

#[tokio::test]
async fn client_certificates() {
    let plain = Registry::start(RegistryKind::Plain);
    plain.push("busybox", "lab/busybox:latest");
    let pkid = tempdir("pki");
    let p = pkid.path();
    let ca = pki::self_signed(p, "ca", "regfs test CA");
    let server = pki::signed(p, "server", (&ca.0, &ca.1), "IP:127.0.0.1", "serverAuth");
    let client = pki::signed(
        p,
        "client",
        (&ca.0, &ca.1),
        "DNS:regfs-client",
        "clientAuth",
    );
    let storage = plain.storage_dir();
    let reg = ConfiguredRegistry::start_tls(
        &storage,
        "127.0.0.1",
        &server,
        &format!("    clientcas:\n      - {}\n", ca.1.display()),
    );
    let opts = |with_cert: bool| {
        let mut o = ClientOptions::new(RegName::parse(&reg.host_port()).unwrap().0);
        o.force_https = true;
        o.ca_certs = vec![ca.1.clone()];
        o.retries = 0;
        o.timeout = Duration::from_secs(5);
        o.docker_config_dir = Some(p.to_path_buf());
        if with_cert {
            o.client_cert = Some((client.1.clone(), client.0.clone()));
        }
        o
    };
    let c = Client::new(opts(true)).unwrap();
    c.ping().await.unwrap();
    let m = c
        .manifest("lab/busybox", &Selector::Tag("latest".into()))
        .await
        .unwrap();
    assert_eq!(m.digest, regfs::digest::Digest::sha256_of(&m.bytes));
    // Without the certificate the handshake is refused.
    let e = Client::new(opts(false)).unwrap().ping().await.unwrap_err();
    assert!(
        matches!(e, regfs::Error::Tls(_) | regfs::Error::Network(_)),
        "{e:?}"
    );
    // A key that does not exist is a clear configuration error.
    let mut bad = opts(true);
    bad.client_cert = Some((client.1.clone(), p.join("missing.key")));
    assert!(matches!(Client::new(bad), Err(regfs::Error::Invalid(_))));
}
