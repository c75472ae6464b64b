//! Every lab image converted to eStargz and to zstd:chunked: the converted
//! image's rootfs through a regfs mount equals `umoci unpack` of the
//! original, and its layers are served by Range requests, never whole.

use std::fs;

use crate::harness::{
    assert_same_tree, snapshot, umoci_snapshot, Mount, Registry, RegistryKind, LAB_IMAGES,
};
use crate::{convert_ok, layer_digests, manifest_json, whole_gets};

/// The umoci oracle of a lab layout tag (umoci reads neither zstd nor the
/// lazy formats: their gzip twin is the oracle; `multi` is the host's
/// busybox).
fn oracle(layout_tag: &str) -> &str {
    match layout_tag {
        t if t.starts_with("python-3.11") => "python-3.11",
        "multi" => "busybox",
        t => t,
    }
}

/// A file every lab image has, to `cat` first.
fn probe(layout_tag: &str) -> &'static str {
    if layout_tag.starts_with("busybox") || layout_tag == "multi" {
        "bin/busybox"
    } else {
        "etc/os-release"
    }
}

#[test]
fn every_lab_image_converts_and_mounts_lazily_with_the_same_rootfs() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let mut sources: Vec<(&str, &str)> = Vec::new();
    for (_, tag, dest, opts) in LAB_IMAGES {
        reg.push_with(tag, dest, opts);
        sources.push((tag, dest));
    }
    for (tag, dest) in [
        ("python-3.11-esgz", "lab/python:3.11-esgz"),
        ("python-3.11-zstdchunked", "lab/python:3.11-zstdchunked"),
    ] {
        reg.push_preserve_digests(tag, dest);
        sources.push((tag, dest));
    }
    let m = Mount::new(&reg, &[]);
    // Conversion is deterministic: equal tars give equal layers. A converted
    // image whose layers equal an already compared one's (the Docker twin,
    // the zstd twin with the same diff_ids, the index's host image) is not
    // walked again.
    let mut compared: Vec<(Vec<String>, &str)> = Vec::new();
    for (format, suffix) in [("--estargz", "esgz"), ("--zstd-chunked", "zc")] {
        for (tag, src) in &sources {
            let (repo, src_tag) = src.split_once(':').unwrap();
            let dst_tag = format!("{src_tag}-conv-{suffix}");
            let dst = format!("{repo}:{dst_tag}");
            let out = convert_ok(&reg, src, &dst, &[format]);
            assert!(out.contains("converted "), "{out}");
            eprintln!("{out}");
            let manifest = manifest_json(&reg, repo, &dst_tag);
            let v: serde_json::Value = serde_json::from_str(&manifest).unwrap();
            // An index converts every image in it; the mount shows the host's.
            let host_arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                a => a,
            };
            let images: Vec<(String, bool)> = match v["manifests"].as_array() {
                Some(children) => {
                    assert_eq!(
                        v["mediaType"], "application/vnd.oci.image.index.v1+json",
                        "{manifest}"
                    );
                    children
                        .iter()
                        .map(|c| {
                            let d = c["digest"].as_str().unwrap().to_string();
                            (d, c["platform"]["architecture"] == host_arch)
                        })
                        .collect()
                }
                None => vec![(dst_tag.clone(), true)],
            };
            let mut layers = Vec::new();
            let mut host_layers = Vec::new();
            for (i, host) in &images {
                let j: serde_json::Value =
                    serde_json::from_str(&manifest_json(&reg, repo, i)).unwrap();
                assert_eq!(j["mediaType"], "application/vnd.oci.image.manifest.v1+json");
                for l in j["layers"].as_array().unwrap() {
                    let a = &l["annotations"];
                    if suffix == "esgz" {
                        assert_eq!(
                            l["mediaType"],
                            "application/vnd.oci.image.layer.v1.tar+gzip"
                        );
                        assert!(
                            a["containerd.io/snapshot/stargz/toc.digest"].is_string(),
                            "{l}"
                        );
                        assert!(
                            a["io.containers.estargz.uncompressed-size"].is_string(),
                            "{l}"
                        );
                    } else {
                        assert_eq!(
                            l["mediaType"],
                            "application/vnd.oci.image.layer.v1.tar+zstd"
                        );
                        for k in ["manifest-checksum", "manifest-position"] {
                            assert!(
                                a[format!("io.github.containers.zstd-chunked.{k}")].is_string(),
                                "{l}"
                            );
                        }
                    }
                    let d = l["digest"].as_str().unwrap().to_string();
                    if *host {
                        host_layers.push(d.clone());
                    }
                    layers.push(d);
                }
            }
            assert!(!host_layers.is_empty(), "{dst}: no image for {host_arch}");
            let image = m.path().join(format!("{repo}:{dst_tag}"));
            // One file first: footers, TOCs and its chunks, no whole layer.
            let first = fs::read(image.join("rootfs").join(probe(tag))).unwrap();
            assert!(!first.is_empty());
            for l in &layers {
                assert_eq!(whole_gets(&reg, l), 0, "{dst}: layer {l} fetched whole");
            }
            // Then everything, against the oracle.
            if let Some((_, o)) = compared.iter().find(|(l, _)| *l == host_layers) {
                assert_eq!(
                    *o,
                    oracle(tag),
                    "{dst}: the same layers as an image of another oracle"
                );
                eprintln!("{dst}: the same layers as one compared already");
            } else {
                let actual = snapshot(&image.join("rootfs"));
                assert_same_tree(&umoci_snapshot(oracle(tag)), &actual);
                compared.push((host_layers, oracle(tag)));
            }
            for l in &layers {
                assert_eq!(whole_gets(&reg, l), 0, "{dst}: layer {l} fetched whole");
            }
            if images.len() == 1 {
                assert_eq!(layer_digests(&reg, repo, &dst_tag), layers);
            }
        }
    }
}
