//! The snapshot records and the file that keeps them: one JSON document,
//! `ROOT/metadata.json`, rewritten atomically (temporary file, fsync, rename)
//! after every change, so that a crash leaves the old or the new state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// containerd's snapshot kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable; can be a parent.
    Committed,
}

/// A point in time, as protobuf's `Timestamp` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: i32,
}

impl Stamp {
    /// Now.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

/// Disk usage of a snapshot, as containerd's `Usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Names its directory `ROOT/snapshots/<id>`; kept through Commit.
    pub id: u64,
    /// View, Active or Committed.
    pub kind: Kind,
    /// The parent's key (a committed snapshot), if any.
    pub parent: Option<String>,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// Created.
    pub created: Stamp,
    /// Last changed.
    pub updated: Stamp,
    /// For a remote snapshot: the layer directory, relative to the regfs
    /// mount (`lab/python@sha256:…/layers/1-sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Usage measured at Commit (committed snapshots only).
    #[serde(default)]
    pub usage: Usage,
}

/// Everything `metadata.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The next snapshot id.
    pub next_id: u64,
    /// Snapshots by key (committed ones by name).
    pub snapshots: BTreeMap<String, Snapshot>,
}

/// The metadata file.
#[derive(Debug, Clone)]
pub struct MetaFile {
    path: PathBuf,
}

impl MetaFile {
    /// The file `root/metadata.json`.
    pub fn new(root: &Path) -> Self {
        MetaFile {
            path: root.join("metadata.json"),
        }
    }

    /// Read it; a missing file is an empty store.
    pub fn load(&self) -> Result<Meta> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    format!("reading {}", self.path.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta {
                next_id: 1,
                ..Meta::default()
            }),
            Err(e) => Err(Error::io(format!("reading {}", self.path.display()), e)),
        }
    }

    /// Replace it atomically with `meta`.
    pub fn save(&self, meta: &Meta) -> Result<()> {
        let ctx = || format!("writing {}", self.path.display());
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(ctx(), e))?;
        f.write_all(&bytes).map_err(|e| Error::io(ctx(), e))?;
        f.sync_all().map_err(|e| Error::io(ctx(), e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(ctx(), e))?;
        Ok(())
    }
}
