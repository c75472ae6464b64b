//! Issue 19: a 256 MiB random blob artifact read lazily, still verified.
//! Machine A streams it whole once and publishes its chunk list
//! (`regfs index push`); machine B (fresh cache, `--use-published-indexes`)
//! reads 1 MiB from the middle with about 1 MiB fetched; machine C reads by
//! the list exported from A's cache and imported into its own; a byte
//! flipped in the registry's storage is EIO for its chunk only. Also
//! `user.regfs.digest` on the artifact's file.

use crate::harness;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use harness::{run_regfs as regfs, Mount, Registry, RegistryKind};
use regfs::digest::Digest;
use regfs::reference::Selector;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;

/// `SIZE` pseudo-random bytes (xorshift64, fast and repeatable).
fn random_blob() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(SIZE as usize);
    for _ in 0..SIZE / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// `len` bytes of `path` at `offset` (one pread loop, as `dd` would).
fn pread(path: &std::path::Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    File::open(path)?.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[test]
fn a_large_blob_is_read_by_published_verified_chunks() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let image = reg.manifest_digest("lab/busybox", "latest");
    let c = crate::artifacts::client(&reg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let size = rt
        .block_on(c.manifest("lab/busybox", &Selector::Tag("latest".into())))
        .unwrap()
        .bytes
        .len();
    let data = random_blob();
    let blob = Digest::sha256_of(&data).to_string();
    let art = rt.block_on(crate::artifacts::push_artifact(
        &c,
        "lab/busybox",
        "application/vnd.example.big",
        &[("big.bin", data.clone())],
        (&image, size),
    ));
    let rel = format!("lab/busybox@{art}/files/big.bin");

    // Machine A: the blob streamed whole once, then its list published.
    let a = Mount::new(&reg, &[]);
    let file_a = a.path().join(&rel);
    let x = harness::xattrs(&file_a);
    assert_eq!(
        x.get("user.regfs.digest")
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        Some(blob.clone()),
        "listed, from the descriptor"
    );
    assert_eq!(
        Digest::sha256_of(&fs::read(&file_a).unwrap()).to_string(),
        blob
    );
    let said = regfs(&[
        "index".as_ref(),
        "push".as_ref(),
        a.path().as_os_str(),
        format!("lab/busybox@{art}").as_ref(),
    ]);
    assert!(said.contains("chunk lists of 1 large blob(s)"), "{said}");
    // The list as a file, for a machine that is not to look for published ones.
    let keep = harness::tempdir("chunk-list");
    let list_file = keep.path().join("big.chunks");
    regfs(&[
        "index".as_ref(),
        "export".as_ref(),
        blob.as_ref(),
        list_file.as_os_str(),
        "--cache-dir".as_ref(),
        a.cache_dir().as_os_str(),
    ]);
    drop(a);

    // Machine B: a fresh cache; the check (which streams the blob) much later.
    let b = Mount::new(
        &reg,
        &[
            "--use-published-indexes",
            "--published-index-check-delay",
            "3600",
        ],
    );
    let file_b = b.path().join(&rel);
    let (_, before, whole_before) = reg.blob_traffic(&blob);
    let mid = 128 * MIB;
    let got = pread(&file_b, mid, MIB as usize).unwrap();
    assert!(
        got == data[mid as usize..(mid + MIB) as usize],
        "the bytes pushed"
    );
    let (_, after, whole_after) = reg.blob_traffic(&blob);
    let fetched = after - before;
    println!("1 MiB from the middle of a 256 MiB blob: {fetched} blob bytes fetched");
    assert_eq!(whole_after, whole_before, "no whole-blob GET");
    assert!(
        fetched <= 2 * MIB,
        "{fetched} blob bytes for a 1 MiB read (one chunk, two at most with read-ahead)"
    );

    // Machine C: the list imported into its cache, published lists off.
    let mut c3 = Mount::new(&reg, &[]);
    regfs(&[
        "index".as_ref(),
        "import".as_ref(),
        list_file.as_os_str(),
        "--cache-dir".as_ref(),
        c3.cache_dir().as_os_str(),
    ]);
    c3.remount();
    let (_, before, whole_before) = reg.blob_traffic(&blob);
    let at = 32 * MIB;
    let got = pread(&c3.path().join(&rel), at, MIB as usize).unwrap();
    assert!(got == data[at as usize..(at + MIB) as usize]);
    let (_, after, whole_after) = reg.blob_traffic(&blob);
    assert_eq!(
        whole_after, whole_before,
        "no whole-blob GET with an imported list"
    );
    assert!(after - before <= 2 * MIB, "{} bytes", after - before);
    drop(c3);

    // A byte flipped in the registry's storage: EIO for its chunk only.
    let flip_at = 200 * MIB + 12345;
    let stored = File::options()
        .read(true)
        .write(true)
        .open(reg.blob_path(&blob))
        .unwrap();
    let mut byte = [0u8];
    stored.read_exact_at(&mut byte, flip_at).unwrap();
    stored.write_all_at(&[byte[0] ^ 0x01], flip_at).unwrap();
    drop(stored);
    let err = pread(&file_b, 200 * MIB, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let elsewhere = pread(&file_b, 64 * MIB, MIB as usize).unwrap();
    assert!(elsewhere == data[(64 * MIB) as usize..(65 * MIB) as usize]);
    assert!(
        b.log().contains("blob chunk failed verification"),
        "{}",
        b.log()
    );
}
