//! containerd: regfs as a remote (proxy) snapshotter under a real containerd
//! 1.6 with runc, started by the test with its own root, state and socket —
//! lazy `ctr-remote image rpull` and `ctr run` for gzip, eStargz and
//! zstd:chunked images (`lazy_run`), whiteouts, upper dirs and clean-up
//! (`lifecycle`), restarts of either daemon (`restarts`), and a corrupted
//! layer (`corrupt`), and layers regfs does not serve, unpacked by
//! containerd into ordinary snapshots (`fallback`). `daemon` runs containerd and the commands.

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod corrupt;
mod daemon;
mod fallback;
mod lazy_run;
mod lifecycle;
mod restarts;
