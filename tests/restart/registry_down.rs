//! A server started while the registry is down (a restart during an
//! outage) comes up at once and serves what the cache holds; `regfs status`
//! soon says the registry is unreachable.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn a_restart_during_a_registry_outage_serves_the_cache() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let m = Mount::new(&reg, &["--supervise"]);
    let etc = m.path().join("lab/busybox:latest/rootfs/etc");
    let passwd = std::fs::read(etc.join("passwd")).unwrap();
    reg.stop();
    let t0 = Instant::now();
    let out = Command::new(regfs_bin())
        .arg("restart")
        .arg(m.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", m.log());
    println!("restart with the registry down: {:?}", t0.elapsed());
    assert_eq!(std::fs::read(etc.join("passwd")).unwrap(), passwd);
    // Not read before: from the cached layer.
    let group = std::fs::read(etc.join("group")).expect("a file of the cached layer");
    assert!(String::from_utf8_lossy(&group).starts_with("root:"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(regfs_bin())
            .args(["status", "--json"])
            .arg(m.path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["registry_state"]["reachable"] == false {
            assert_eq!(v["generation"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status still says reachable: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
