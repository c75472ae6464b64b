//! `regfs status`: the read-only side of the answer, for people.

use crate::protocol::Status;

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
pub fn print_read_only(r: &Status) {
    println!(
        "regfs daemon {} mounting {} at {}",
        r.pid,
        r.registry,
        r.mountpoint.display()
    );
    if let (Some(g), Some(sup)) = (r.generation, r.supervisor_pid) {
        println!(
            "supervised by {sup}: server generation {g} (`regfs restart` replaces it in place)"
        );
    }
    if let Some(state) = &r.registry_state {
        println!(
            "{}",
            crate::reachability::describe(state, std::time::SystemTime::now())
        );
    }
    let c = &r.cache;
    println!(
        "cache: {} of {} in {} (hits {}, misses {}, evictions {})",
        human(c.size),
        human(c.limit),
        c.dir.display(),
        c.hits,
        c.misses,
        c.evictions,
    );
    println!(
        "fetches in flight: {}; registry: {} requests, {} received",
        r.fetches_in_flight,
        r.requests,
        human(r.bytes_received),
    );
    println!("images in use: {}", r.images.len());
    for i in &r.images {
        let mut trees = Vec::new();
        if i.rootfs {
            trees.push("rootfs".to_string());
        }
        for l in &i.layers {
            trees.push(format!("layer {l}"));
        }
        println!(
            "  {}@{}  {} ({} nodes)",
            i.repo,
            i.digest,
            trees.join(", "),
            i.nodes,
        );
    }
    println!("layers in use by containers: {}", r.layers_in_use.len());
    for l in &r.layers_in_use {
        println!(
            "  {}@{}  diff_id {}  ({} {})",
            l.repo,
            l.digest,
            l.diff_id,
            l.users,
            if l.users == 1 { "use" } else { "uses" },
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
