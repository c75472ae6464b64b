//! Layers a container runtime uses are never evicted from the cache: with
//! a cache far smaller than one layer, the tar of a layer in use (announced
//! by `<key>/use`) stays while an unused one goes, until `rmdir <key>`
//! releases it.

use std::fs;
use std::io::ErrorKind;

use crate::harness::{self, lab, Mount};
use crate::runtime::serial;

#[test]
fn a_layer_in_use_survives_eviction_until_released() {
    require_fuse!();
    let _serial = serial();
    let reg = lab().image("python:3.11");
    let store = harness::tempdir("als");
    let m = Mount::new(
        reg,
        &[
            "--layer-store",
            store.path().to_str().unwrap(),
            "--cache-size",
            "1M",
        ],
    );
    let img = m.path().join("lab/python:3.11");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("config.json")).unwrap()).unwrap();
    let digest = |i: usize| {
        manifest["layers"][i]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let tar = |i: usize| {
        let d = config["rootfs"]["diff_ids"][i].as_str().unwrap();
        m.cache_dir()
            .join("layers/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let refdir = store.path().join(regfs::als::encode(&format!(
        "{}/lab/python:3.11",
        reg.host_port()
    )));
    let layer = |i: usize| refdir.join(digest(i));

    // Layer 2 (python) is in use; reading from it fetches its tar.
    let e = fs::File::create(layer(1).join("use")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    fs::read(layer(1).join("diff/usr/lib/python3.11/os.py")).unwrap();
    assert!(tar(1).exists(), "the tar of the layer in use was not kept");
    // Layer 1 (debian) is not: fetching it evicts it again, not layer 2.
    fs::read(layer(0).join("diff/etc/os-release")).unwrap();
    assert!(!tar(0).exists(), "a 1 MB cache kept an unused layer's tar");
    assert!(tar(1).exists(), "the layer in use was evicted");

    // Released, layer 2 goes with the next eviction.
    let e = fs::remove_dir(layer(1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    fs::read(layer(2).join("diff/usr/local/share/lab.txt")).unwrap();
    assert!(!tar(1).exists(), "the released layer was never evicted");
}
