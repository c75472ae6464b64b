//! `convert` against the in-process registry: what is pushed, and that a
//! wrong diff_id stops it before any manifest.

use super::*;
use crate::registry::memory::{LayerBlob, MemoryRegistry};

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn opts(codec: Codec) -> ConvertOptions {
    ConvertOptions {
        codec,
        prefetch: Vec::new(),
        tmp_dir: std::env::temp_dir(),
    }
}

async fn run(reg: &MemoryRegistry, codec: Codec) -> Result<Converted> {
    let ep = Endpoints {
        src: reg,
        src_repo: "lab/app",
        dst: reg,
        dst_repo: "lab/out",
    };
    convert(
        &ep,
        &Selector::Tag("1".into()),
        "conv",
        &opts(codec),
        &|_| {},
    )
    .await
}

#[tokio::test]
async fn config_keeps_its_fields_with_the_new_diff_ids() {
    let reg = MemoryRegistry::new("memory.test");
    let layers = [
        LayerBlob::gzip(&tar_of(&[("a.txt", b"a")])),
        LayerBlob::gzip(&tar_of(&[("b.txt", b"bb")])),
    ];
    reg.add_image("lab/app", "1", &layers);
    let out = run(&reg, Codec::ZstdChunked).await.unwrap();
    assert_eq!(out.layers, 2);
    let m = reg
        .manifest("lab/out", &Selector::Tag("conv".into()))
        .await
        .unwrap();
    assert_eq!(m.digest, out.digest);
    let Manifest::Image(img) = Manifest::parse(&m.bytes, &m.media_type).unwrap() else {
        panic!("not an image");
    };
    assert_eq!(img.media_type, mt::OCI_MANIFEST);
    let config = layer::read_blob(&reg, "lab/out", &img.config, MAX_CONFIG_SIZE)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(v["created"], "2024-01-01T00:00:00Z", "fields kept");
    let ids = ImageConfig::parse(&config).unwrap().diff_ids;
    for (l, id) in img.layers.iter().zip(&ids) {
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        let blob = reg.blob_bytes("lab/out", &l.digest).unwrap();
        let tar = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(&Digest::sha256_of(&tar), id, "diff_id of the new tar");
    }
}

#[tokio::test]
async fn a_wrong_diff_id_fails_before_any_manifest_is_pushed() {
    let reg = MemoryRegistry::new("memory.test");
    let mut bad = LayerBlob::gzip(&tar_of(&[("a.txt", b"a")]));
    bad.diff_id = Digest::sha256_of(b"another tar");
    reg.add_image("lab/app", "1", &[bad.clone()]);
    for codec in [Codec::Estargz, Codec::ZstdChunked] {
        let e = run(&reg, codec).await.unwrap_err();
        let msg = e.chain();
        assert!(
            matches!(e.root(), Error::DigestMismatch { .. }),
            "{codec:?}: {msg}"
        );
        assert!(msg.contains("diff_id"), "{msg}");
        assert!(msg.contains(&bad.diff_id.to_string()), "{msg}");
        let tag = reg.manifest("lab/out", &Selector::Tag("conv".into())).await;
        assert!(matches!(tag, Err(Error::NotFound(_))), "{codec:?}: {tag:?}");
    }
}
