#![allow(dead_code, unused_imports)] // each test binary uses a part
//! The shared integration-test harness, one file per role. Each test crate
//! includes it once (`#[macro_use] #[path = "../harness/mod.rs"] mod harness;`
//! in `tests/GROUP/main.rs`) and its modules say `use crate::harness;`; the
//! names below are re-exported here, so tests call `harness::lab()`,
//! `harness::Mount`, … whatever file they live in.
//!
//! * [`registry`]: [`Registry`], a real CNCF distribution registry
//!   (`docker-registry serve`) on a free loopback port with its own storage —
//!   plain HTTP, basic auth (`lab` / `labpass`) or TLS with a private CA —
//!   images pushed into it with skopeo from the lab OCI layouts; and [`lab()`],
//!   one plain registry per test binary, filled lazily:
//!   `lab().image("python")` pushes the python tags on first use.
//! * [`configured`]: a registry run from a test-written config (token auth,
//!   pull-through cache, client certificates) and the test PKI; [`served`]:
//!   the registry process and its access log, which both share.
//! * [`images`]: the lab layouts on disk (`$REGFS_LAB`) and which holds a tag.
//! * [`mount`]: [`Mount`], the `regfs` binary mounted on a fresh mountpoint
//!   with a fresh cache dir, always unmounted on drop; the skip rule
//!   [`fuse_ready`] / [`require_fuse!`]: without root or `/dev/fuse` a mount
//!   test prints `SKIP: …` and returns, unless `REGFS_REQUIRE_FUSE=1` (set by
//!   `scripts/test`), where it panics.
//! * [`oracle`]: [`umoci_unpack`], [`snapshot`], [`assert_same_tree`].
//! * [`export`]: an export-directory daemon and pulling a pushed image back.
//! * [`proxy`]: a fault-injecting HTTP proxy; [`token_server`]: a docker
//!   token-auth server.
//! * [`process`]: child processes, free ports, temporary directories. Every
//!   child (registry, regfs) is started from one long-lived thread with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so none outlives the test process, even
//!   when it is killed.
//!
//! ```ignore
//! use crate::harness::*;
//!
//! #[test]
//! fn busybox_rootfs_matches_umoci() {
//!     require_fuse!();
//!     let mnt = Mount::new(lab().image("busybox"), &[]);
//!     let expected = snapshot(&umoci_unpack("busybox"));
//!     let actual = snapshot(&mnt.path().join("lab/busybox:latest/rootfs"));
//!     assert_same_tree(&expected, &actual);
//! }
//! ```

pub mod configured;
pub mod export;
pub mod images;
#[macro_use]
pub mod mount;
pub mod oracle;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod served;
pub mod token_server;

pub use images::*;
pub use mount::*;
pub use oracle::*;
pub use process::*;
pub use registry::*;
