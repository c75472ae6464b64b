//! A layer corrupted in the registry: rpull still fetches nothing, the
//! container fails with an error and nothing of the layer is served or
//! cached — once the registry has the right bytes again, it runs.

use crate::daemon::{layers, serial, stdout_ok, tools_ready, Containerd, Regfs};
use crate::harness::{Registry, RegistryKind};

#[test]
fn corrupted_layer_fails_the_container_and_is_not_cached() {
    let _s = serial();
    if !tools_ready() {
        return;
    }
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let layers = layers(&reg, "lab/busybox", "latest");
    let (digest, _) = &layers[0];
    let blob = reg.blob_path(digest);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&blob, &bad).unwrap();

    let regfs = Regfs::new(&reg);
    let ctd = Containerd::start(&regfs.socket);
    let image = format!("{}/lab/busybox:latest", reg.host_port());
    ctd.rpull(&image);
    assert_eq!(reg.blob_traffic(digest).0, 0, "rpull fetched the layer");

    for id in ["bad1", "bad2"] {
        let o = ctd.run(&image, id, &["/bin/busybox", "echo", "served"]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        eprintln!("{id}: {}", stderr.trim());
        assert!(
            !o.status.success() && !stdout.contains("served"),
            "{id}: a corrupted layer ran: {stdout}"
        );
        assert!(
            stderr.contains("input/output error"),
            "{id}: not the verification failure: {stderr}"
        );
        let _ = ctd.ctr_output(&["container", "rm", id]);
    }
    // Each attempt went back to the registry: nothing of it was kept.
    assert!(
        reg.blob_traffic(digest).0 >= 2,
        "{:?}",
        reg.blob_traffic(digest)
    );

    std::fs::write(&blob, &good).unwrap();
    let out = stdout_ok(
        &ctd.run(&image, "good", &["/bin/busybox", "echo", "served"]),
        "run once the registry is fixed",
        &ctd,
    );
    assert_eq!(out.trim(), "served");
}
