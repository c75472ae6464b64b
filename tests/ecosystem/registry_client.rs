//! The registry client against a real distribution registry.
//!
//! Every test starts the registries it needs through the shared harness
//! (`tests/harness/`): the per-binary lab registry (plain HTTP, lab images pushed on
//! demand), a basic-auth one, a TLS one and a scratch one for pushes. Nothing is
//! skipped: a missing `docker-registry` or `skopeo` fails the test.

use crate::harness;

use std::time::Duration;

use regfs::digest::Digest;
use regfs::reference::{Registry, Selector};
use regfs::registry::{Client, ClientOptions, Credentials};
use regfs::Error;

use harness::{lab, Registry as TestRegistry, RegistryKind, LAB_PASS, LAB_USER};

fn options(hostport: &str) -> ClientOptions {
    let (reg, scheme) = Registry::parse(hostport).unwrap();
    let mut o = ClientOptions::new(reg);
    o.force_https = scheme == Some(false);
    o.plain_http = scheme == Some(true);
    o.timeout = Duration::from_secs(10);
    // Never pick up the developer's docker config.
    o.docker_config_dir = Some(std::env::temp_dir().join("regfs-test-no-docker-config"));
    o
}

/// A client of the lab registry, with every standard image pushed.
fn plain() -> Client {
    Client::new(options(&lab().all().host_port())).unwrap()
}

fn tag(t: &str) -> Selector {
    Selector::Tag(t.into())
}

/// The config and layer descriptors (digest, size) of an image manifest.
fn descriptors(manifest: &[u8]) -> Vec<(Digest, u64)> {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![];
    let config = &v["config"];
    out.push((
        config["digest"].as_str().unwrap().parse().unwrap(),
        config["size"].as_u64().unwrap(),
    ));
    for l in v["layers"].as_array().unwrap() {
        out.push((
            l["digest"].as_str().unwrap().parse().unwrap(),
            l["size"].as_u64().unwrap(),
        ));
    }
    out
}

async fn read_all(c: &Client, repo: &str, d: &Digest, size: Option<u64>) -> regfs::Result<Vec<u8>> {
    let mut s = c.blob(repo, d, size).await?;
    let mut out = Vec::new();
    while let Some(chunk) = s.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    assert_eq!(s.received(), out.len() as u64);
    Ok(out)
}

#[tokio::test]
async fn ping_catalog_tags() {
    let c = plain();
    c.ping().await.unwrap();
    let repos = c.catalog().await.unwrap();
    for r in ["lab/busybox", "lab/debian", "lab/multi", "lab/python"] {
        assert!(repos.iter().any(|x| x == r), "{r} missing from {repos:?}");
    }
    // One repository per page: Link is followed to the end.
    let paged = c.catalog_paged(1).await.unwrap();
    assert_eq!(paged, repos);
    let tags = c.tags("lab/busybox").await.unwrap();
    assert!(
        tags.contains(&"latest".into()) && tags.contains(&"v2s2".into()),
        "{tags:?}"
    );
    assert_eq!(c.tags_paged("lab/busybox", Some(1)).await.unwrap(), tags);
    match c.tags("lab/no-such-repo").await {
        Err(Error::NotFound(m)) => assert!(m.contains("lab/no-such-repo"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(c.stats().requests >= 6);
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let c = plain();
    let m = c.manifest("lab/busybox", &tag("latest")).await.unwrap();
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m.digest, Digest::sha256_of(&m.bytes));
    let again = c
        .manifest("lab/busybox", &Selector::Digest(m.digest.clone()))
        .await
        .unwrap();
    assert_eq!(again.bytes, m.bytes);
    assert_eq!(again.digest, m.digest);

    let m = c.manifest("lab/busybox", &tag("v2s2")).await.unwrap();
    assert_eq!(
        m.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let m = c.manifest("lab/multi", &tag("latest")).await.unwrap();
    assert_eq!(m.media_type, "application/vnd.oci.image.index.v1+json");
    let m = c.manifest("lab/multi", &tag("v2s2")).await.unwrap();
    assert_eq!(
        m.media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );

    match c.manifest("lab/busybox", &tag("no-such-tag")).await {
        Err(Error::NotFound(msg)) => {
            assert!(
                msg.contains("lab/busybox:no-such-tag") && msg.contains("MANIFEST_UNKNOWN"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    let absent = Digest::sha256_of(b"no such manifest");
    assert!(matches!(
        c.manifest("lab/busybox", &Selector::Digest(absent)).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn blobs_stream_verified_and_ranges() {
    let c = plain();
    let repo = "lab/python";
    let m = c.manifest(repo, &tag("3.11")).await.unwrap();
    let descs = descriptors(&m.bytes);
    assert_eq!(descs.len(), 5, "config + 4 layers");
    let before = c.stats().bytes_received;
    let mut total = 0;
    for (d, size) in &descs {
        let data = read_all(&c, repo, d, Some(*size)).await.unwrap();
        assert_eq!(data.len() as u64, *size);
        assert_eq!(&Digest::sha256_of(&data), d);
        assert_eq!(c.blob_size(repo, d).await.unwrap(), Some(*size));
        total += size;
    }
    assert!(c.stats().bytes_received - before >= total);

    // Ranges of the largest layer: start, middle, end, and past the end.
    let (d, size) = descs.iter().max_by_key(|(_, s)| *s).unwrap().clone();
    let whole = read_all(&c, repo, &d, None).await.unwrap();
    for (off, len) in [
        (0u64, 1u64),
        (0, 4096),
        (size / 2, 65536),
        (size - 10, 10),
        (size - 1, 1),
    ] {
        let got = c.blob_range(repo, &d, off, len).await.unwrap();
        assert_eq!(
            &got[..],
            &whole[off as usize..(off + len) as usize],
            "range {off}+{len}"
        );
    }
    let tail = c.blob_range(repo, &d, size - 5, 100).await.unwrap();
    assert_eq!(&tail[..], &whole[size as usize - 5..]);
    assert!(c.blob_range(repo, &d, size + 10, 5).await.is_err());
    assert!(c.blob_range(repo, &d, 3, 0).await.unwrap().is_empty());

    // Wrong size and unknown blobs.
    match read_all(&c, repo, &d, Some(size + 1)).await {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    let absent = Digest::sha256_of(b"no such blob");
    assert_eq!(c.blob_size(repo, &absent).await.unwrap(), None);
    match c.blob(repo, &absent, None).await {
        Err(Error::NotFound(m)) => assert!(m.contains(&absent.to_string()), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn basic_auth() {
    let reg = TestRegistry::start(RegistryKind::BasicAuth);
    reg.push("busybox", "lab/busybox:latest");
    let h = reg.host_port();
    let mut o = options(&h);
    o.credentials = Some(Credentials {
        username: LAB_USER.into(),
        password: LAB_PASS.into(),
    });
    let c = Client::new(o).unwrap();
    c.ping().await.unwrap();
    assert!(c
        .tags("lab/busybox")
        .await
        .unwrap()
        .contains(&"latest".into()));
    let m = c.manifest("lab/busybox", &tag("latest")).await.unwrap();
    let (d, size) = descriptors(&m.bytes).pop().unwrap();
    assert_eq!(
        read_all(&c, "lab/busybox", &d, Some(size))
            .await
            .unwrap()
            .len() as u64,
        size
    );

    let mut o = options(&h);
    o.credentials = Some(Credentials {
        username: "lab".into(),
        password: "wrong-password".into(),
    });
    let bad = Client::new(o).unwrap();
    match bad.ping().await {
        Err(Error::Unauthorized(m)) => {
            assert!(
                m.contains("\"lab\"") && !m.contains("wrong-password"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bad.tags("lab/busybox").await,
        Err(Error::Unauthorized(_))
    ));

    let anon = Client::new(options(&h)).unwrap();
    match anon.ping().await {
        Err(Error::Unauthorized(m)) => assert!(m.contains("no credentials"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Credentials from a docker config.json.
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("lab:labpass");
    let (reg, _) = Registry::parse(&h).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.name),
    )
    .unwrap();
    let mut o = options(&h);
    o.docker_config_dir = Some(dir.path().to_path_buf());
    let from_config = Client::new(o).unwrap();
    from_config.ping().await.unwrap();
    assert!(!from_config.catalog().await.unwrap().is_empty());
}

#[tokio::test]
async fn tls_with_ca() {
    let reg = TestRegistry::start(RegistryKind::Tls);
    reg.push("busybox", "lab/busybox:latest");
    let (h, ca) = (reg.host_port(), reg.ca_cert().unwrap());
    let https = format!("https://{h}");
    let mut o = options(&https);
    o.ca_certs = vec![ca];
    let c = Client::new(o).unwrap();
    assert_eq!(c.base_url().scheme(), "https");
    c.ping().await.unwrap();
    let m = c.manifest("lab/busybox", &tag("latest")).await.unwrap();
    assert_eq!(m.digest, Digest::sha256_of(&m.bytes));

    // Without the CA the certificate is refused (and not retried forever).
    let mut o = options(&https);
    o.retries = 0;
    let untrusted = Client::new(o).unwrap();
    match untrusted.ping().await {
        Err(e @ Error::Tls(_)) => assert!(!e.is_transient(), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut o = options(&https);
    o.insecure_skip_verify = true;
    Client::new(o).unwrap().ping().await.unwrap();
}

#[tokio::test]
async fn unreachable_registry_is_a_network_error() {
    // A port nothing listens on (we only assume loopback works).
    let mut o = options("127.0.0.1:9");
    o.retries = 1;
    let c = Client::new(o).unwrap();
    let t = std::time::Instant::now();
    match c.ping().await {
        Err(e @ Error::Network(_)) => assert!(e.is_transient()),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.stats().requests, 2, "one retry");
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn stream_of(
    data: &[u8],
    piece: usize,
) -> impl futures_util::Stream<Item = regfs::Result<bytes::Bytes>> + Send {
    let pieces: Vec<regfs::Result<bytes::Bytes>> = data
        .chunks(piece)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(pieces)
}

/// Pushes go to a scratch registry of their own, never the shared lab storage.
#[tokio::test]
async fn push_blobs_mount_and_manifest() {
    let scratch = TestRegistry::start(RegistryKind::Plain);
    let c = Client::new(options(&scratch.host_port())).unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let repo = "regfs-test/push";

    // Small blob: one PUT.
    let small = pseudo_random(3000, seed);
    let ds = Digest::sha256_of(&small);
    assert!(!c.blob_exists(repo, &ds).await.unwrap());
    c.push_blob(repo, &ds, small.len() as u64, stream_of(&small, 1000))
        .await
        .unwrap();
    assert!(c.blob_exists(repo, &ds).await.unwrap());
    assert_eq!(read_all(&c, repo, &ds, Some(3000)).await.unwrap(), small);
    // Pushing again is a no-op.
    c.push_blob(repo, &ds, small.len() as u64, stream_of(&small, 1000))
        .await
        .unwrap();

    // Large blob: chunked PATCHes (20 MiB > the monolithic limit).
    let large = pseudo_random(20 * 1024 * 1024 + 123, seed + 1);
    let dl = Digest::sha256_of(&large);
    c.push_blob(repo, &dl, large.len() as u64, stream_of(&large, 1 << 20))
        .await
        .unwrap();
    assert_eq!(
        c.blob_size(repo, &dl).await.unwrap(),
        Some(large.len() as u64)
    );
    assert_eq!(
        read_all(&c, repo, &dl, Some(large.len() as u64))
            .await
            .unwrap(),
        large
    );

    // Wrong digest or size: refused, nothing committed.
    let other = pseudo_random(100, seed + 2);
    let wrong = Digest::sha256_of(b"something else entirely");
    assert!(matches!(
        c.push_blob(repo, &wrong, 100, stream_of(&other, 10)).await,
        Err(Error::DigestMismatch { .. })
    ));
    assert!(!c.blob_exists(repo, &wrong).await.unwrap());
    let d_other = Digest::sha256_of(&other);
    assert!(matches!(
        c.push_blob(repo, &d_other, 99, stream_of(&other, 10)).await,
        Err(Error::DigestMismatch { .. })
    ));

    // Cross-repository mount, and a refused one (blob absent from the source).
    let repo2 = "regfs-test/mounted";
    assert!(c.mount_blob(repo2, &ds, repo).await.unwrap());
    assert!(c.blob_exists(repo2, &ds).await.unwrap());
    assert!(!c.mount_blob(repo2, &d_other, repo).await.unwrap());

    // A manifest naming both blobs, by tag, then fetched back by digest.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let dc = Digest::sha256_of(config);
    c.push_blob(repo, &dc, config.len() as u64, stream_of(config, 64))
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc.to_string(), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ds.to_string(), "size": small.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dl.to_string(), "size": large.len()},
        ],
    });
    let mbytes = bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let tag_name = format!("t{seed}");
    let dm = c
        .put_manifest(
            repo,
            &tag(&tag_name),
            "application/vnd.oci.image.manifest.v1+json",
            mbytes.clone(),
        )
        .await
        .unwrap();
    assert_eq!(dm, Digest::sha256_of(&mbytes));
    let back = c
        .manifest(repo, &Selector::Digest(dm.clone()))
        .await
        .unwrap();
    assert_eq!(back.bytes, mbytes);
    assert!(c.tags(repo).await.unwrap().contains(&tag_name));
    // By digest too; a digest that does not match the bytes is refused before sending.
    c.put_manifest(
        repo,
        &Selector::Digest(dm.clone()),
        "application/vnd.oci.image.manifest.v1+json",
        mbytes.clone(),
    )
    .await
    .unwrap();
    assert!(matches!(
        c.put_manifest(
            repo,
            &Selector::Digest(dc),
            "application/vnd.oci.image.manifest.v1+json",
            mbytes
        )
        .await,
        Err(Error::DigestMismatch { .. })
    ));
}

/// What the fault proxy does with one connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forward both ways.
    Pass,
    /// Forward, but close after this many bytes from the registry.
    CutAfter(usize),
    /// Forward this many bytes from the registry, then go silent (keep the socket open).
    StallAfter(usize),
    /// Answer 503 with `Retry-After: 0` without contacting the registry.
    Unavailable,
}

/// A TCP proxy in front of the real registry; connection `i` gets `faults[i]`
/// (later ones pass). Returns its `host:port`.
async fn fault_proxy(upstream: String, faults: Vec<Fault>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut i = 0;
        while let Ok((mut down, _)) = l.accept().await {
            let fault = faults.get(i).copied().unwrap_or(Fault::Pass);
            i += 1;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Fault::Unavailable = fault {
                    let mut buf = [0u8; 4096];
                    let _ = down.read(&mut buf).await;
                    let _ = down
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut dr, &mut uw).await;
                });
                let limit = match fault {
                    Fault::CutAfter(n) | Fault::StallAfter(n) => n,
                    _ => usize::MAX,
                };
                let mut sent = 0;
                let mut buf = vec![0u8; 16384];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = n.min(limit - sent);
                    if dw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                    if sent >= limit {
                        if let Fault::StallAfter(_) = fault {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn blob_stream_resumes_after_faults() {
    let upstream = lab().image("python:3.11").host_port();
    let direct = Client::new(options(&upstream)).unwrap();
    let repo = "lab/python";
    let m = direct.manifest(repo, &tag("3.11")).await.unwrap();
    let (d, size) = descriptors(&m.bytes)
        .into_iter()
        .max_by_key(|(_, s)| *s)
        .unwrap();
    assert!(size > 1_000_000);

    // Connection 0: cut mid-body; connection 1: 503; then a stall mid-body; then pass.
    let faults = vec![
        Fault::CutAfter(300_000),
        Fault::Unavailable,
        Fault::StallAfter(200_000),
    ];
    let proxy = fault_proxy(upstream.clone(), faults).await;
    let mut o = options(&proxy);
    o.timeout = Duration::from_secs(1);
    o.retries = 4;
    let c = Client::new(o).unwrap();
    let data = read_all(&c, repo, &d, Some(size)).await.unwrap();
    assert_eq!(data.len() as u64, size);
    assert_eq!(Digest::sha256_of(&data), d);
    let st = c.stats();
    assert!(st.requests >= 4, "{st:?}");
    assert!(st.retries >= 3, "{st:?}");

    // Without retries a cut body is an error, never a silently short blob.
    let proxy = fault_proxy(upstream, vec![Fault::CutAfter(300_000)]).await;
    let mut o = options(&proxy);
    o.retries = 0;
    let c = Client::new(o).unwrap();
    match read_all(&c, repo, &d, Some(size)).await {
        Err(e @ Error::Network(_)) => assert!(e.is_transient()),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
}
