//! `regfs status`: the read-only side of the answer, for people.

use std::time::SystemTime;

use serde_json::Value;

/// Bytes as `12.3 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Print the daemon, cache, fetch and image lines of a `status` answer.
pub fn print_read_only(r: &Value) {
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    if let Some(reg) = r["registry"].as_str() {
        println!(
            "regfs daemon {} mounting {} at {}",
            u(&r["pid"]),
            reg,
            r["mountpoint"].as_str().unwrap_or("?")
        );
    }
    if let Some(line) = crate::reachability::describe(&r["registry_state"], SystemTime::now()) {
        println!("{line}");
    }
    let c = &r["cache"];
    if c.is_object() {
        println!(
            "cache: {} of {} in {} (hits {}, misses {}, evictions {})",
            human(u(&c["size"])),
            human(u(&c["limit"])),
            c["dir"].as_str().unwrap_or("?"),
            u(&c["hits"]),
            u(&c["misses"]),
            u(&c["evictions"]),
        );
        println!(
            "fetches in flight: {}; registry: {} requests, {} received",
            u(&r["fetches_in_flight"]),
            u(&r["requests"]),
            human(u(&r["bytes_received"])),
        );
    }
    let images = r["images"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if r["images"].is_array() {
        println!("images in use: {}", images.len());
    }
    for i in images {
        let mut trees = Vec::new();
        if i["rootfs"].as_bool() == Some(true) {
            trees.push("rootfs".to_string());
        }
        for l in i["layers"].as_array().into_iter().flatten() {
            trees.push(format!("layer {}", u(l)));
        }
        println!(
            "  {}@{}  {} ({} nodes)",
            i["repo"].as_str().unwrap_or(""),
            i["digest"].as_str().unwrap_or(""),
            trees.join(", "),
            u(&i["nodes"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
