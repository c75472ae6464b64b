//! Issue 7: faults between regfs and the real registry (through the fault
//! proxy), daemon death, hostile manifests and safe defaults.
//!
//! Every read is compared byte for byte with the oracle (the lab layout's
//! blob, or `umoci unpack`), runs on its own thread with a deadline (a hang
//! fails the test instead of blocking it), and after every failure the cache
//! must hold nothing unverified. Mounts use `--timeout 3 --retries 2`.
//!
//! Each test prints one `FAULT|…` line (fault, what the reader saw, time,
//! recovered or not): the README table is made from them
//! (`cargo test --test faults -- --nocapture 2>&1 | grep FAULT`).

use crate::harness;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use harness::proxy::{Fault, Proxy, Rule};
use harness::*;

/// The longest a failing read may take before the reader sees the error.
const EIO_BOUND: Duration = Duration::from_secs(30);
/// The longest any read may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

fn args() -> Vec<OsString> {
    ["--plain-http", "--timeout", "3", "--retries", "2"]
        .map(OsString::from)
        .to_vec()
}

// ------------------------------------------------------------------ helpers

/// The result of one whole-file read through the mount.
struct Outcome {
    /// The bytes, or the errno.
    result: Result<Vec<u8>, i32>,
    /// What had been read before an error.
    partial: Vec<u8>,
    elapsed: Duration,
}

impl Outcome {
    fn seen(&self) -> String {
        match &self.result {
            Ok(b) => format!("correct bytes ({} B)", b.len()),
            Err(e) => errno_name(*e).to_string(),
        }
    }
}

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EIO => "EIO",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::ENOTCONN => "ENOTCONN",
        _ => "other errno",
    }
}

/// Opens and reads `path` whole on another thread; panics if that takes
/// longer than [`HANG`] (a reader stuck in the kernel).
fn read_deadline(path: &Path) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let start = Instant::now();
    std::thread::spawn(move || {
        let mut partial = Vec::new();
        let r = (|| -> std::io::Result<()> {
            let mut f = fs::File::open(&p)?;
            let mut buf = vec![0u8; 128 * 1024];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                partial.extend_from_slice(&buf[..n]);
            }
        })();
        let _ = tx.send((r.map_err(|e| e.raw_os_error().unwrap_or(-1)), partial));
    });
    match rx.recv_timeout(HANG) {
        Ok((r, partial)) => Outcome {
            elapsed: start.elapsed(),
            result: match r {
                Ok(()) => Ok(partial.clone()),
                Err(e) => Err(e),
            },
            partial,
        },
        Err(_) => panic!("reading {} hangs (> {HANG:?})", path.display()),
    }
}

/// `readlink` with a deadline.
fn readlink_deadline(path: &Path) -> (Result<PathBuf, i32>, Duration) {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(fs::read_link(&p).map_err(|e| e.raw_os_error().unwrap_or(-1)));
    });
    match rx.recv_timeout(HANG) {
        Ok(r) => (r, start.elapsed()),
        Err(_) => panic!("readlink {} hangs (> {HANG:?})", path.display()),
    }
}

/// Never a wrong byte: a success is exactly the oracle, a failure read a
/// prefix of it at most.
#[track_caller]
fn assert_no_wrong_byte(o: &Outcome, oracle: &[u8], what: &str) {
    match &o.result {
        Ok(b) => assert!(
            b == oracle,
            "{what}: read {} bytes that differ from the oracle ({} bytes)",
            b.len(),
            oracle.len()
        ),
        Err(_) => assert!(
            o.partial.len() <= oracle.len() && o.partial == oracle[..o.partial.len()],
            "{what}: bytes read before the error differ from the oracle"
        ),
    }
}

/// The blob `digest` from the lab layout (what the registry serves).
fn oracle_blob(digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let b = fs::read(lab_images().join("oci/blobs/sha256").join(hex)).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest_bytes(&b)), hex);
    b
}

trait DigestBytes {
    fn digest_bytes(b: &[u8]) -> Vec<u8>;
}
impl DigestBytes for sha2::Sha256 {
    fn digest_bytes(b: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(b).to_vec()
    }
}

/// The cache holds only verified content: every blob and layer file hashes
/// to its name, every index has its layer, `tmp/` is empty, and (when given)
/// nothing named `digest` is there at all.
#[track_caller]
fn assert_cache_clean(cache: &Path, digest: Option<&str>) {
    for kind in ["blobs", "layers", "index"] {
        let dir = cache.join(kind).join("sha256");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(d) = digest {
                assert!(
                    !d.ends_with(&name),
                    "{kind}/sha256/{name} is in the cache after a failed read"
                );
            }
            match kind {
                "index" => assert!(
                    cache.join("layers/sha256").join(&name).exists(),
                    "index/{name} without its layer"
                ),
                _ => assert_eq!(
                    sha256_file(&e.path()),
                    name,
                    "{kind}/sha256/{name} does not hash to its name"
                ),
            }
        }
    }
    let tmp = cache.join("tmp");
    if let Ok(entries) = fs::read_dir(&tmp) {
        let left: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "tmp/ holds {left:?} after the read ended");
    }
}

/// A mount of `lab/busybox:latest` through a fresh proxy, the image resolved.
struct Setup {
    proxy: Proxy,
    m: Mount,
    /// `MNT/lab/busybox@sha256:…`
    img: PathBuf,
    config: String,
    layer: String,
}

fn setup(reg: &Registry) -> Setup {
    setup_image(reg, "lab/busybox:latest")
}

/// [`setup`] for another image (`layer` is its largest layer).
fn setup_image(reg: &Registry, image: &str) -> Setup {
    let proxy = Proxy::start(&reg.host_port());
    let m = Mount::with_args(&proxy.addr(), args(), None);
    let target = fs::read_link(m.path().join(image)).unwrap();
    let img = m.path().join("lab").join(target);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    Setup {
        proxy,
        m,
        img,
        config,
        layer,
    }
}

fn report(fault: &str, target: &str, o: &Outcome, recovered: &str) {
    eprintln!(
        "FAULT|{fault}|{target}|{}|{:.1} s|{recovered}",
        o.seen(),
        o.elapsed.as_secs_f64()
    );
}

// ------------------------------------------------------------------ transient faults

/// A fault that happens once must be absorbed by the client's retries.
fn transient(name: &str, rule: Rule, expect_resume: bool) -> (Setup, Outcome) {
    let s = setup(lab().image("busybox"));
    s.proxy.set(rule);
    let path = s.img.join("blobs").join(&s.layer);
    let o = read_deadline(&path);
    report(name, "blobs/<layer> (1 MB)", &o, "yes (retry)");
    let oracle = oracle_blob(&s.layer);
    assert_no_wrong_byte(&o, &oracle, name);
    assert!(
        o.result.is_ok(),
        "{name}: not recovered: {}\n{:#?}\n--- log ---\n{}",
        o.seen(),
        s.proxy.seen(),
        s.m.log()
    );
    assert!(o.elapsed < EIO_BOUND);
    let gets = s.proxy.seen_path(&s.layer);
    assert!(
        gets.len() >= 2,
        "{name}: the fault was not retried: {gets:#?}"
    );
    if expect_resume {
        assert!(
            gets.iter()
                .skip(1)
                .any(|g| g.range.as_deref().is_some_and(|r| r != "bytes=0-")),
            "{name}: the retry did not resume with Range: {gets:#?}"
        );
    }
    assert_cache_clean(s.m.cache_dir(), None);
    (s, o)
}

#[test]
fn reset_mid_body_once_resumes_with_range() {
    require_fuse!();
    transient(
        "connection reset mid-body (once)",
        Rule::new(Fault::ResetAfter(300_000)).blobs().times(1),
        true,
    );
}

#[test]
fn truncated_body_once_resumes_with_range() {
    require_fuse!();
    transient(
        "body truncated below Content-Length (once)",
        Rule::new(Fault::TruncateHalf).blobs().times(1),
        true,
    );
}

#[test]
fn stall_mid_body_once_resumes_after_timeout() {
    require_fuse!();
    let (_, o) = transient(
        "stall mid-body (once)",
        Rule::new(Fault::Stall(Some(200_000))).blobs().times(1),
        true,
    );
    // One attempt's share of the 3 s budget (3 attempts): 1 s without a byte.
    assert!(o.elapsed >= Duration::from_secs(1), "{:?}", o.elapsed);
}

#[test]
fn stall_before_headers_once_is_retried() {
    require_fuse!();
    transient(
        "stall, no bytes at all (once)",
        Rule::new(Fault::Stall(None)).blobs().times(1),
        false,
    );
}

#[test]
fn status_503_once_is_retried() {
    require_fuse!();
    transient(
        "503 (once)",
        Rule::new(Fault::Status(503)).blobs().times(1),
        false,
    );
}

#[test]
fn too_many_requests_honours_retry_after() {
    require_fuse!();
    let (s, _) = transient(
        "429 with Retry-After: 2 (once)",
        Rule::new(Fault::TooMany { retry_after: 2 })
            .blobs()
            .times(1),
        false,
    );
    let gets = s.proxy.seen_path(&s.layer);
    let gap = gets[1].at - gets[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, before Retry-After"
    );
}

#[test]
fn slow_drip_is_served_correctly() {
    require_fuse!();
    let s = setup(lab().image("busybox"));
    // 16 KiB every 20 ms: slow, but never idle for the timeout.
    s.proxy.set(
        Rule::new(Fault::Drip {
            chunk: 16 * 1024,
            every: Duration::from_millis(20),
        })
        .blobs(),
    );
    let o = read_deadline(&s.img.join("blobs").join(&s.layer));
    report(
        "slow drip (16 KiB / 20 ms)",
        "blobs/<layer> (1 MB)",
        &o,
        "n/a (no error)",
    );
    assert_no_wrong_byte(&o, &oracle_blob(&s.layer), "drip");
    assert!(o.result.is_ok(), "{}\n{}", o.seen(), s.m.log());
    assert!(o.elapsed >= Duration::from_millis(1000), "{:?}", o.elapsed);
}

// ------------------------------------------------------------------ persistent faults

/// A fault that persists: EIO (or `want`) within the bound, no wrong byte,
/// nothing cached; cleared, the same path reads correctly without a remount.
fn persistent(name: &str, fault: Fault, want: i32) -> (Setup, Outcome) {
    let s = setup(lab().image("busybox"));
    s.proxy.set(Rule::new(fault).blobs());
    let path = s.img.join("blobs").join(&s.layer);
    let oracle = oracle_blob(&s.layer);
    let o = read_deadline(&path);
    report(
        name,
        "blobs/<layer> (1 MB)",
        &o,
        "no (EIO); reads after clear",
    );
    assert_no_wrong_byte(&o, &oracle, name);
    assert_eq!(
        o.result.as_ref().err().copied(),
        Some(want),
        "{name}: wanted {}, got {}\n--- log ---\n{}",
        errno_name(want),
        o.seen(),
        s.m.log()
    );
    assert!(o.elapsed < EIO_BOUND, "{name}: {:?} to fail", o.elapsed);
    assert_cache_clean(s.m.cache_dir(), Some(&s.layer));
    // The daemon logged why.
    let log = s.m.log();
    assert!(
        log.contains("fuse op failed") && !log.contains("panicked"),
        "{name}: no log line for the failure:\n{log}"
    );
    s.proxy.clear();
    let again = read_deadline(&path);
    assert!(
        again.result.as_ref().is_ok_and(|b| *b == oracle),
        "{name}: after the fault cleared: {}\n{}",
        again.seen(),
        s.m.log()
    );
    assert_cache_clean(s.m.cache_dir(), None);
    (s, o)
}

#[test]
fn reset_every_time_is_eio() {
    require_fuse!();
    let (s, _) = persistent(
        "connection reset mid-body (always)",
        Fault::ResetAfter(300_000),
        libc::EIO,
    );
    // Each retry resumed where the last one stopped.
    let ranges: Vec<_> = s
        .proxy
        .seen_path(&s.layer)
        .into_iter()
        .filter_map(|g| g.range)
        .collect();
    let offsets: Vec<u64> = ranges
        .iter()
        .map(|r| r["bytes=".len()..r.len() - 1].parse().unwrap())
        .collect();
    assert!(
        offsets.len() >= 2 && offsets[0] > 0 && offsets.windows(2).all(|w| w[0] < w[1]),
        "{ranges:?}"
    );
}

#[test]
fn truncated_every_time_is_eio() {
    require_fuse!();
    persistent(
        "body truncated below Content-Length (always)",
        Fault::TruncateHalf,
        libc::EIO,
    );
}

#[test]
fn stall_mid_body_every_time_is_eio() {
    require_fuse!();
    persistent(
        "stall mid-body (always)",
        Fault::Stall(Some(100_000)),
        libc::EIO,
    );
}

#[test]
fn stall_before_headers_every_time_is_eio() {
    require_fuse!();
    persistent(
        "stall, no bytes at all (always)",
        Fault::Stall(None),
        libc::EIO,
    );
}

#[test]
fn flipped_byte_is_eio_never_served() {
    require_fuse!();
    persistent("one flipped byte", Fault::FlipByte(123_457), libc::EIO);
}

#[test]
fn server_errors_are_eio() {
    require_fuse!();
    for code in [500, 502, 503] {
        persistent(
            &format!("HTTP {code} (always)"),
            Fault::Status(code),
            libc::EIO,
        );
    }
}

#[test]
fn too_many_requests_forever_is_eio() {
    require_fuse!();
    persistent(
        "429 with Retry-After: 1 (always)",
        Fault::TooMany { retry_after: 1 },
        libc::EIO,
    );
}

#[test]
fn redirect_loop_is_eio() {
    require_fuse!();
    persistent("redirect loop", Fault::RedirectLoop, libc::EIO);
}

#[test]
fn unauthorized_is_eacces() {
    require_fuse!();
    persistent("401 (no credentials)", Fault::Unauthorized, libc::EACCES);
}

/// A flipped byte in the layer behind `rootfs/`: the lookup fails, nothing
/// is cached, and once cleared the file matches umoci.
#[test]
fn flipped_byte_in_a_layer_never_reaches_rootfs() {
    require_fuse!();
    let s = setup(lab().image("busybox"));
    s.proxy
        .set(Rule::new(Fault::FlipByte(500_000)).blobs().path(&s.layer));
    let path = s.img.join("rootfs/bin/busybox");
    let oracle = fs::read(umoci_unpack("busybox").join("bin/busybox")).unwrap();
    let o = read_deadline(&path);
    report(
        "one flipped byte",
        "rootfs/bin/busybox",
        &o,
        "no (EIO); reads after clear",
    );
    assert_no_wrong_byte(&o, &oracle, "rootfs");
    assert_eq!(
        o.result.as_ref().err().copied(),
        Some(libc::EIO),
        "{}",
        o.seen()
    );
    assert_cache_clean(s.m.cache_dir(), Some(&s.layer));
    // The diff_id is not there either: no layer or index file at all.
    for kind in ["layers", "index"] {
        let n = fs::read_dir(s.m.cache_dir().join(kind).join("sha256"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(n, 0, "{kind}/ holds a file after a rejected layer");
    }
    s.proxy.clear();
    let again = read_deadline(&path);
    assert!(
        again.result.as_ref().is_ok_and(|b| *b == oracle),
        "{}",
        again.seen()
    );
}

/// A flipped byte in config.json and in the tag's manifest.
#[test]
fn flipped_config_and_manifest_are_eio() {
    require_fuse!();
    let s = setup(lab().image("busybox"));
    s.proxy
        .set(Rule::new(Fault::FlipByte(10)).blobs().path(&s.config));
    let path = s.img.join("config.json");
    let oracle = oracle_blob(&s.config);
    let o = read_deadline(&path);
    report(
        "one flipped byte",
        "config.json",
        &o,
        "no (EIO); reads after clear",
    );
    assert_no_wrong_byte(&o, &oracle, "config");
    assert_eq!(
        o.result.as_ref().err().copied(),
        Some(libc::EIO),
        "{}",
        o.seen()
    );
    assert_cache_clean(s.m.cache_dir(), Some(&s.config));
    s.proxy.clear();
    assert_eq!(read_deadline(&path).result.unwrap(), oracle);

    // A fresh mount whose first manifest GET is corrupted.
    let proxy = Proxy::start(&lab().registry().host_port());
    proxy.set(Rule::new(Fault::FlipByte(40)).manifests());
    let m = Mount::with_args(&proxy.addr(), args(), None);
    let (r, t) = readlink_deadline(&m.path().join("lab/busybox:latest"));
    eprintln!(
        "FAULT|one flipped byte|manifest (tag)|{}|{:.1} s|no (EIO); reads after clear",
        r.as_ref().map_or_else(|e| errno_name(*e), |_| "resolved"),
        t.as_secs_f64()
    );
    assert_eq!(r.err(), Some(libc::EIO));
    assert_cache_clean(m.cache_dir(), None);
    proxy.clear();
    std::thread::sleep(Duration::from_millis(100));
    let target = fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    assert_eq!(target, s.img.file_name().map(PathBuf::from).unwrap());
}

// ------------------------------------------------------------------ the registry process

/// The registry killed during a read (the read slowed down by a drip so it
/// is surely in progress; the layer is 51 MB, more than the socket buffers
/// can hold, so the kill cuts the body): the reader gets EIO within the
/// bound; after the restart the same path reads correctly.
#[test]
fn registry_killed_mid_read_then_restarted() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    let s = setup_image(&reg, "lab/python:3.11");
    let oracle = oracle_blob(&s.layer);
    assert!(oracle.len() > 30 << 20, "{} B", oracle.len());
    s.proxy.set(
        Rule::new(Fault::Drip {
            chunk: 64 * 1024,
            every: Duration::from_millis(10),
        })
        .blobs(),
    );
    let path = s.img.join("blobs").join(&s.layer);
    let p2 = path.clone();
    let reader = std::thread::spawn(move || read_deadline(&p2));
    // Wait until the body is flowing, then kill the registry.
    let t0 = Instant::now();
    while s.proxy.body_bytes() < 1_000_000 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no body flows");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    reg.stop();
    let o = reader.join().unwrap();
    let since_kill = killed.elapsed();
    eprintln!(
        "FAULT|registry killed mid-read|blobs/<layer> (51 MB)|{}|{:.1} s after the kill|no (EIO); reads after restart",
        o.seen(),
        since_kill.as_secs_f64()
    );
    assert_no_wrong_byte(&o, &oracle, "killed");
    assert_eq!(
        o.result.as_ref().err().copied(),
        Some(libc::EIO),
        "{}",
        o.seen()
    );
    assert!(since_kill < EIO_BOUND);
    assert_cache_clean(s.m.cache_dir(), Some(&s.layer));
    reg.restart();
    s.proxy.clear();
    let again = read_deadline(&path);
    assert!(
        again.result.as_ref().is_ok_and(|b| *b == oracle),
        "{}",
        again.seen()
    );
}

/// `kill -9` of the daemon: the mountpoint is stale (ENOTCONN); the next
/// `regfs mount` on it detects that and mounts; with the registry stopped,
/// what was cached is served; `regfs unmount` ends the daemon with status 0.
#[test]
fn kill9_then_remount_serves_the_cache_offline() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let mut m = Mount::new(&reg, &[]);
    let target = fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    let rel = Path::new("lab").join(&target);
    let oracle = fs::read(umoci_unpack("busybox").join("bin/busybox")).unwrap();
    assert_eq!(
        fs::read(m.path().join(&rel).join("rootfs/bin/busybox")).unwrap(),
        oracle
    );
    m.kill9();
    // stat may still be answered from the kernel's attribute cache; statfs
    // reaches the (dead) daemon.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(m.path().as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut sfs) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    reg.stop();

    // A new daemon on the same (stale) mountpoint, same cache, no registry.
    let log = tempdir("faults-log");
    let mut cmd = Command::new(regfs_bin());
    cmd.arg("mount")
        .arg(reg.host_port())
        .arg(m.path())
        .arg("--cache-dir")
        .arg(m.cache_dir())
        .args(["--plain-http", "--timeout", "3", "--retries", "1"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(log.path().join("out")).unwrap())
        .stderr(fs::File::create(log.path().join("err")).unwrap());
    let mut child = spawn_tied(cmd).unwrap();
    let t0 = Instant::now();
    // Ready when a FUSE mount is there and answers statfs (the dead one
    // answers ENOTCONN; once detached, the bare directory is not FUSE).
    while unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0
        || !mount_fstype(m.path()).is_some_and(|t| t.starts_with("fuse"))
    {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "second mount exited ({st}):\n{}",
                fs::read_to_string(log.path().join("err")).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "second mount never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err_log = fs::read_to_string(log.path().join("err")).unwrap_or_default();
    assert!(err_log.contains("stale mount"), "{err_log}");
    let o = read_deadline(&m.path().join(&rel).join("rootfs/bin/busybox"));
    eprintln!(
        "FAULT|daemon kill -9, remount, registry down|rootfs/bin/busybox (cached)|{}|{:.1} s|n/a (served from the cache)",
        o.seen(),
        o.elapsed.as_secs_f64()
    );
    assert!(
        o.result.as_ref().is_ok_and(|b| *b == oracle),
        "{}\n--- log ---\n{}",
        o.seen(),
        fs::read_to_string(log.path().join("err")).unwrap_or_default()
    );
    // Unmount: the daemon exits cleanly.
    run(Command::new(regfs_bin()).arg("unmount").arg(m.path()));
    let st = wait_timeout(&mut child, Duration::from_secs(10)).expect("daemon did not exit");
    assert!(st.success(), "daemon exit status {st}");
    assert!(mount_fstype(m.path()).is_none());
}

// ------------------------------------------------------------------ hostile manifests

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as DigestBytes>::digest_bytes(b))
}

/// Hand-made manifests served for `lab/busybox:<tag>` through the proxy:
/// every one is an error (EIO, EINVAL or ENOENT) within the bound, with a
/// log line, no panic, no hang, and the mount keeps working.
#[test]
fn hostile_manifests_are_errors_not_panics() {
    require_fuse!();
    let reg = lab().image("busybox");
    let s = setup(reg);
    let real: serde_json::Value =
        serde_json::from_slice(&fs::read(s.img.join("manifest.json")).unwrap()).unwrap();
    let real_digest = s
        .img
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split_once('@')
        .unwrap()
        .1
        .to_string();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = real.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let mut big = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":""#.to_vec();
    big.resize(5 << 20, b'a');
    big.extend_from_slice(br#""}}"#);
    let index_of = |digests: &[String]| {
        let m: Vec<_> = digests
            .iter()
            .map(|d| {
                serde_json::json!({"mediaType": OCI_INDEX, "digest": d, "size": 100,
                    "platform": {"os": "linux", "architecture": "amd64"}})
            })
            .collect();
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": m}),
        )
        .unwrap()
    };
    let many: Vec<String> = (0..5000)
        .map(|i| format!("sha256:{}", sha256_hex(&[i as u8, (i >> 8) as u8])))
        .collect();
    // An index whose only entry claims to be the index itself: served under
    // that digest it cannot hash to it.
    let self_digest = format!("sha256:{}", "ab".repeat(32));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "invalid JSON",
            br#"{"schemaVersion":2,"layers":["#.to_vec(),
            OCI_MANIFEST,
        ),
        (
            "not JSON at all",
            b"\x00\xff\xfe garbage".to_vec(),
            OCI_MANIFEST,
        ),
        ("oversized (5 MiB)", big, OCI_MANIFEST),
        (
            "mediaType field says index, content is a manifest",
            with(&|v| v["mediaType"] = OCI_INDEX.into()),
            OCI_MANIFEST,
        ),
        (
            "Content-Type says index, content is a manifest",
            with(&|_| {}),
            OCI_INDEX,
        ),
        (
            "unknown digest algorithm",
            with(&|v| v["layers"][0]["digest"] = "sha999:0123456789abcdef".into()),
            OCI_MANIFEST,
        ),
        (
            "digest not hex",
            with(&|v| v["config"]["digest"] = format!("sha256:{}", "zz".repeat(32)).into()),
            OCI_MANIFEST,
        ),
        (
            "negative size",
            with(&|v| v["layers"][0]["size"] = (-1).into()),
            OCI_MANIFEST,
        ),
        (
            "huge size (2^62)",
            with(&|v| v["layers"][0]["size"] = (1u64 << 62).into()),
            OCI_MANIFEST,
        ),
        (
            "size not a number",
            with(&|v| v["config"]["size"] = "12".into()),
            OCI_MANIFEST,
        ),
        (
            "schemaVersion 1",
            with(&|v| v["schemaVersion"] = 1.into()),
            OCI_MANIFEST,
        ),
        ("index with 5000 entries", index_of(&many), OCI_INDEX),
        (
            "index listing itself",
            index_of(std::slice::from_ref(&self_digest)),
            OCI_INDEX,
        ),
        ("empty body", Vec::new(), OCI_MANIFEST),
    ];
    for (i, (_, bytes, ct)) in cases.iter().enumerate() {
        s.proxy.add(
            Rule::new(Fault::Body {
                bytes: Arc::new(bytes.clone()),
                content_type: ct.to_string(),
            })
            .path(&format!("/manifests/evil-{i}")),
        );
    }
    // The self-listing index, served (with its own bytes) under the digest it lists.
    s.proxy.add(
        Rule::new(Fault::Body {
            bytes: Arc::new(index_of(std::slice::from_ref(&self_digest))),
            content_type: OCI_INDEX.into(),
        })
        .path(&format!("/manifests/{self_digest}")),
    );
    let ns = s.m.path().join("lab");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let link = ns.join(format!("busybox:evil-{i}"));
        let (r, t) = readlink_deadline(&link);
        let outcome = match &r {
            Ok(target) => {
                // Resolved to something: walking into it must fail cleanly.
                let dir = ns.join(target);
                let o = read_deadline(&dir.join("manifest.json"))
                    .result
                    .err()
                    .or_else(|| read_deadline(&dir.join("index.json")).result.err())
                    .or_else(|| {
                        fs::read_dir(&dir)
                            .and_then(|d| {
                                d.map(|e| e.and_then(|e| fs::read_link(e.path())))
                                    .collect::<Result<Vec<_>, _>>()
                            })
                            .err()
                            .and_then(|e| e.raw_os_error())
                    });
                format!(
                    "resolves to {}; inside: {}",
                    target.display(),
                    o.map_or("ok", errno_name)
                )
            }
            Err(e) => errno_name(*e).to_string(),
        };
        eprintln!(
            "FAULT|hostile manifest: {name}|lab/busybox:evil-{i}|{outcome}|{:.1} s|-",
            t.as_secs_f64()
        );
        assert!(t < EIO_BOUND, "{name}: {t:?}");
        match (&r, *name) {
            (Ok(target), "index listing itself") => {
                // The tag resolves to the listed digest; that manifest does not hash to it.
                let dir = ns.join(target);
                let e = list_dir(&dir).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
            }
            (Ok(target), _) => panic!("{name}: resolved to {}", target.display()),
            (Err(e), _) => assert!(
                [libc::EIO, libc::EINVAL, libc::ENOENT].contains(e),
                "{name}: errno {e}"
            ),
        }
    }
    // Nothing hostile was stored; the mount is alive and still serves the real image.
    assert_cache_clean(s.m.cache_dir(), Some(&self_digest));
    let log = s.m.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.matches("fuse op failed").count() >= cases.len() - 1,
        "{log}"
    );
    assert_eq!(
        fs::read_link(ns.join("busybox:latest")).unwrap(),
        PathBuf::from(format!("busybox@{real_digest}"))
    );
    assert_eq!(
        fs::read(s.img.join("config.json")).unwrap(),
        oracle_blob(&s.config)
    );
}

/// A descriptor whose size disagrees with the blob (a digest-valid manifest
/// whose layer size lies): the blob read is EIO, nothing cached.
#[test]
fn descriptor_size_lie_is_eio() {
    require_fuse!();
    let s = setup(lab().image("busybox"));
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(s.img.join("manifest.json")).unwrap()).unwrap();
    let size = v["layers"][0]["size"].as_u64().unwrap();
    for (i, lie) in [size - 1, size + 1, 10].into_iter().enumerate() {
        v["layers"][0]["size"] = lie.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        let tag = format!("sizelie-{i}");
        s.proxy.add(
            Rule::new(Fault::Body {
                bytes: Arc::new(bytes),
                content_type: OCI_MANIFEST.into(),
            })
            .path(&format!("/manifests/{tag}")),
        );
        let target = fs::read_link(s.m.path().join("lab").join(format!("busybox:{tag}"))).unwrap();
        let dir = s.m.path().join("lab").join(target);
        let o = read_deadline(&dir.join("blobs").join(&s.layer));
        eprintln!(
            "FAULT|descriptor size {lie} for a {size} B layer|blobs/<layer>|{}|{:.1} s|-",
            o.seen(),
            o.elapsed.as_secs_f64()
        );
        assert_no_wrong_byte(&o, &oracle_blob(&s.layer), "size lie");
        assert_eq!(
            o.result.as_ref().err().copied(),
            Some(libc::EIO),
            "{}",
            o.seen()
        );
        let r = read_deadline(&dir.join("rootfs/bin/busybox"));
        assert!(
            r.result.is_err(),
            "rootfs through a lying manifest: {}",
            r.seen()
        );
        assert_cache_clean(s.m.cache_dir(), Some(&s.layer));
    }
}

// ------------------------------------------------------------------ safe defaults

/// Without `--allow-other` the mount is nosuid, nodev, read-only and not
/// allow_other; the cache is 0700 with 0600 files.
#[test]
fn safe_defaults() {
    require_fuse!();
    let m = Mount::new(lab().image("busybox"), &[]);
    let img = m.path().join("lab/busybox:latest");
    fs::read(img.join("rootfs/bin/busybox")).unwrap();
    fs::read(img.join("config.json")).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(m.path().as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_ne!(st.f_flag & libc::ST_NOSUID, 0, "mount is not nosuid");
    assert_ne!(st.f_flag & libc::ST_NODEV, 0, "mount is not nodev");
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0, "mount is not read-only");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*m.path().to_string_lossy()))
        .unwrap();
    assert!(!line.contains("allow_other"), "{line}");
    // Cache directory and files.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(m.cache_dir()), 0o700);
    let mut files = 0;
    for kind in ["blobs", "layers", "index", "tmp"] {
        let d = m.cache_dir().join(kind);
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for e in fs::read_dir(d.join("sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
            files += 1;
        }
    }
    assert!(files >= 4, "only {files} cached files");
    // A setuid file in the image keeps its bit in the listing but cannot
    // take effect on a nosuid mount; nothing in the cache is executable.
}

#[test]
fn cache_dir_created_private() {
    require_fuse!();
    // A cache dir that does not exist yet is created 0700 (not umask-wide).
    let parent = tempdir("faults-cache");
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let cache = parent.path().join("new/cache");
    let mut a = args();
    a.push("--cache-dir".into());
    a.push(cache.clone().into());
    // Mount::with_args passes its own --cache-dir first; run the binary directly instead.
    let mp = tempdir(&format!("mnt-{}", std::process::id()));
    let mut cmd = Command::new(regfs_bin());
    cmd.arg("mount")
        .arg(lab().image("busybox").host_port())
        .arg(mp.path())
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = spawn_tied(cmd).unwrap();
    let t0 = Instant::now();
    while !mount_fstype(mp.path()).is_some_and(|t| t.starts_with("fuse")) {
        assert!(child.try_wait().unwrap().is_none(), "regfs exited");
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = fs::read(mp.path().join("lab/busybox:latest/config.json"));
    let mode = fs::metadata(&cache).unwrap().permissions().mode() & 0o7777;
    run(Command::new(regfs_bin()).arg("unmount").arg(mp.path()));
    let _ = wait_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(mode, 0o700, "new cache dir mode {mode:o}");
}

/// With the default `--timeout` (30 s) and `--retries` (3), a registry that
/// stalls forever still gives the reader EIO within 30 s: the timeout is a
/// budget shared by the first attempt and every retry.
#[test]
fn default_timeout_bounds_a_stall_forever() {
    require_fuse!();
    let reg = lab().image("busybox");
    let proxy = Proxy::start(&reg.host_port());
    let m = Mount::with_args(&proxy.addr(), vec!["--plain-http".into()], None);
    let target = fs::read_link(m.path().join("lab/busybox:latest")).unwrap();
    let img = m.path().join("lab").join(target);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    proxy.set(Rule::new(Fault::Stall(None)).blobs());
    let o = read_deadline(&img.join("blobs").join(&layer));
    report(
        "stall, no bytes (always), default flags",
        "blobs/<layer>",
        &o,
        "no (EIO)",
    );
    assert_eq!(
        o.result.as_ref().err().copied(),
        Some(libc::EIO),
        "{}",
        o.seen()
    );
    assert!(
        o.elapsed <= Duration::from_secs(31),
        "EIO after {:?}",
        o.elapsed
    );
    assert!(
        o.elapsed >= Duration::from_secs(20),
        "gave up early: {:?}",
        o.elapsed
    );
    assert!(o.partial.is_empty());
}
