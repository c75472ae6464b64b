//! Every operation of both mounts goes through one place that
//! times it into `regfs_fuse_op_duration_seconds{op}` (before, only the
//! read-only mount's operations were timed), and directory listings of the
//! export mount page from the filesystem with no snapshot kept by the adapter.

use crate::harness;

use std::fs;
use std::process::Command;

use harness::export::ExportMount;
use harness::{free_port, Registry, RegistryKind};

/// The value of the first sample line starting with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn metrics(addr: &str) -> String {
    let o = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("curl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn export_operations_are_timed_and_listings_page_whole() {
    require_fuse!();
    let addr = format!("127.0.0.1:{}", free_port());
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &["--metrics-addr", &addr]);
    let dir = em.entry("timed:1").join("d");
    fs::create_dir_all(&dir).unwrap();
    // Long names: several replies' worth, so the listing is paged.
    let names: Vec<String> = (0..300)
        .map(|i| format!("{i:04}-{}", "n".repeat(100)))
        .collect();
    for n in &names {
        fs::write(dir.join(n), b"x").unwrap();
    }
    let mut listed: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, names, "the export listing is whole, each name once");
    assert_eq!(fs::read(dir.join(&names[299])).unwrap(), b"x");

    let text = metrics(&addr);
    // mkdir, create and write exist only on the export mount.
    for op in ["mkdir", "create", "write", "readdir", "lookup", "read"] {
        let n = sample(
            &text,
            &format!("regfs_fuse_op_duration_seconds_count{{op=\"{op}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 1.0, "export op {op} not timed:\n{text}");
    }
}
