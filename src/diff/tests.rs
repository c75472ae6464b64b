//! `diff_images` over the memory registry: gzip images (contents compared
//! by reading where layers differ) and eStargz images (by TOC digests, no
//! file read).

use std::sync::Arc;

use super::*;
use crate::cache::Store;
use crate::layer::testutil::TarW;
use crate::layer::Limits;
use crate::registry::{LayerBlob, MemoryRegistry};

/// The base layer, and a layer above it: `etc/hostname` rewritten (same
/// size), `etc/gone` deleted, `etc/new` added, `etc/keep` copied up
/// unchanged, `etc/mode` copied up with another mode.
fn layers() -> (Vec<u8>, Vec<u8>) {
    let mut base = TarW::new();
    base.dir(b"etc", 0o755)
        .file(b"etc/hostname", b"aaaa\n")
        .file(b"etc/keep", b"same\n")
        .file(b"etc/gone", b"bye\n")
        .file(b"etc/mode", b"x\n")
        .dir(b"var", 0o755)
        .file(b"var/lib", b"1\n");
    let mut top = TarW::new();
    top.file(b"etc/hostname", b"bbbb\n")
        .file(b"etc/keep", b"same\n")
        .file(b"etc/.wh.gone", b"")
        .file(b"etc/new", b"hi\n")
        .file_mode(b"etc/mode", b"x\n", 0o600)
        .dir(b"opt", 0o755)
        .file(b"opt/tool", b"t\n");
    (base.finish(), top.finish())
}

async fn diff_of(make: fn(&[u8]) -> LayerBlob) -> Report {
    let (base, top) = layers();
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let a = reg.add_image("lab/d", "a", &[make(&base)]);
    let b = reg.add_image("lab/d", "b", &[make(&base), make(&top)]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let content = Content::new(reg, store, 1_000_000, Limits::default());
    let at = |digest: Digest| ImageAt {
        repo: "lab/d".into(),
        digest,
    };
    let platform: Platform = "linux/amd64".parse().unwrap();
    let sel = Selector::Tag("a".into());
    assert_eq!(
        resolve_image(&content, "lab/d", &sel, &platform)
            .await
            .unwrap(),
        a
    );
    diff_images(&content, &at(a), &at(b)).await.unwrap()
}

fn lines(r: &Report) -> Vec<String> {
    r.changes
        .iter()
        .map(|c| format!("{} {} {}", c.change.letter(), c.path, c.what.join(",")))
        .map(|l| l.trim_end().to_string())
        .collect()
}

const WANT: [&str; 6] = [
    "D /etc/gone",
    "M /etc/hostname content",
    "M /etc/mode mode",
    "A /etc/new",
    "A /opt",
    "A /opt/tool",
];

#[tokio::test]
async fn gzip_images_differ_by_what_the_top_layer_changed() {
    let r = diff_of(LayerBlob::gzip).await;
    assert_eq!(lines(&r), WANT);
    // hostname and keep: same size, other layer, no digest: read. mode:
    // its mode differs already, its content is still compared.
    assert_eq!(r.files_read, 3);
}

#[tokio::test]
async fn estargz_images_are_compared_by_toc_digests_alone() {
    let r = diff_of(LayerBlob::estargz).await;
    assert_eq!(lines(&r), WANT);
    assert_eq!(r.files_read, 0);
}
