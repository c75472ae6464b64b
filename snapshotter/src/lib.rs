//! A containerd remote (proxy) snapshotter over a regfs mount.
//!
//! containerd talks to it over gRPC (`containerd.services.snapshots.v1.Snapshots`
//! on a unix socket). Ordinary snapshots are directories on local disk, as in
//! containerd's overlayfs snapshotter; a layer that the regfs mount can serve
//! becomes a committed *remote* snapshot whose `fs` is a symlink to the mount's
//! `…/layers/N-<digest>` directory, so containerd neither downloads nor unpacks
//! it and every byte is fetched lazily and verified by regfs.
//!
//! * [`store`]: the snapshot metadata (containerd's metastore semantics),
//!   persisted in [`meta`], with the directories of [`layout`].
//! * [`labels`] / [`resolve`]: which layer a `Prepare` asks for, and where the
//!   mount serves it.
//! * [`mounts`]: the mounts containerd gets for a snapshot.
//! * [`service`] / [`server`]: the gRPC service and its socket.

pub mod error;
pub mod labels;
pub mod layout;
pub mod meta;
pub mod mounts;
pub mod resolve;
pub mod server;
pub mod service;
pub mod store;

/// The containerd API, generated from the vendored protos in `snapshotter/proto`
/// by `scripts/gen-snapshotter-protos` (committed, so building needs no protoc).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    /// `containerd.*`.
    pub mod containerd {
        /// `containerd.types`: `Mount`.
        pub mod types {
            include!("proto/containerd.types.rs");
        }
        /// `containerd.services.*`.
        pub mod services {
            /// `containerd.services.snapshots`.
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`: the Snapshots service.
                pub mod v1 {
                    include!("proto/containerd.services.snapshots.v1.rs");
                }
            }
        }
    }
}

pub use error::Error;
pub use server::{serve, Config};
