//! Layers regfs does not serve (here: an image on another registry than the
//! mounted one) take the ordinary path: containerd downloads them and
//! unpacks them into local snapshots, which containers then run on.

use crate::daemon::{layers, serial, stdout_ok, tools_ready, Containerd, Regfs};
use crate::harness::{lab, Registry, RegistryKind};

#[test]
fn layers_of_another_registry_are_unpacked_locally() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let other = Registry::start(RegistryKind::Plain);
    other.push("busybox", "lab/busybox:latest");
    let layers = layers(&other, "lab/busybox", "latest");
    let regfs = Regfs::new(lab().registry());
    let ctd = Containerd::start(&regfs.socket);
    let image = format!("{}/lab/busybox:latest", other.host_port());

    ctd.rpull(&image);
    for (digest, size) in &layers {
        let (gets, bytes, _) = other.blob_traffic(digest);
        assert!(
            gets >= 1 && bytes >= *size,
            "containerd should have downloaded {digest}: {gets} GETs, {bytes} bytes"
        );
    }
    let dirs = regfs.snapshot_dirs();
    assert_eq!(dirs.len(), layers.len(), "{dirs:?}");
    for d in &dirs {
        let md = std::fs::symlink_metadata(d.join("fs")).unwrap();
        assert!(md.is_dir(), "{d:?}/fs is not a local directory");
        assert!(
            d.join("fs/bin/busybox").is_file(),
            "{d:?} was not unpacked into"
        );
    }
    assert!(
        regfs.mount.log().contains("not served remotely"),
        "regfs did not say why it fell back"
    );

    let out = stdout_ok(
        &ctd.run(&image, "local", &["/bin/busybox", "echo", "unpacked"]),
        "run on unpacked layers",
        &ctd,
    );
    assert_eq!(out.trim(), "unpacked");
}
