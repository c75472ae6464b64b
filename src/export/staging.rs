//! The durable staging area: one directory per export entry, on local disk.
//!
//! ```text
//! STATE/                        mode 0700
//!   entries/<escaped ref>/      one per entry (`team%2Ftool:latest` for `team/tool:latest`)
//!     meta.json                 EntryMeta: reference, --from base, created, last commit
//!     root/                     the upper tree: real files, plus OCI whiteouts
//!                               (`.wh.NAME`, `.wh..wh..opq`) for what was deleted from a base;
//!                               `.wh..regfs-long.<sha256>` (holding NAME) when `.wh.NAME`
//!                               would exceed NAME_MAX
//!   tmp/                        packed layers on their way to the registry
//!   control.sock                the daemon's control socket
//! ```
//!
//! Everything written through the export mount lands in `root/` at once (no
//! write-back buffer of ours), so a crash loses nothing the kernel accepted,
//! and `fsync` reaches the disk. Entries are created by renaming a complete
//! directory into place, so a crash never leaves half an entry.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::{validate_repository, validate_tag};

/// Prefix of the staged form of a whiteout whose `.wh.NAME` would not fit in
/// a name on the staging disk (NAME longer than 251 bytes): the file
/// `.wh..regfs-long.<sha256 of NAME>` holds NAME, and pack writes it into the
/// layer as `.wh.NAME`.
pub const LONG_WH: &[u8] = b".wh..regfs-long.";

/// The image an entry starts from, pinned to a manifest digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    /// Repository in the same registry (`lab/python`).
    pub repository: String,
    /// The platform manifest's digest.
    pub digest: Digest,
}

/// The last successful commit of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Manifest digest that was pushed.
    pub manifest: Digest,
    /// The new layer's blob digest.
    pub layer: Digest,
    /// Seconds since the epoch.
    pub at: u64,
    /// What the next commit needs to reuse the layer if nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<LayerRecord>,
}

/// The layer of a commit and the state of the tree it was packed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Hash of every entry's name and `lstat` (incl. inode and ctime) in the upper tree.
    pub fingerprint: Digest,
    /// Compression (`gzip`, `zstd`, `estargz`, `none`).
    pub codec: String,
    /// `--source-date-epoch` of that commit.
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
    /// diff_id.
    pub diff_id: Digest,
    /// Blob size.
    pub size: u64,
    /// Uncompressed size.
    pub tar_size: u64,
    /// eStargz TOC digest.
    #[serde(default)]
    pub toc_digest: Option<Digest>,
}

/// What `meta.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The entry's reference without registry: `team/tool:latest`.
    pub reference: String,
    /// `--from` as the user wrote it.
    #[serde(default)]
    pub from: Option<String>,
    /// The base image, resolved when the entry was made.
    #[serde(default)]
    pub base: Option<BaseRef>,
    /// Seconds since the epoch.
    pub created: u64,
    /// The last commit, if any.
    #[serde(default)]
    pub last_commit: Option<CommitRecord>,
}

impl EntryMeta {
    /// A fresh entry for `reference` (checked with [`parse_entry_ref`]).
    pub fn new(reference: &str) -> Result<EntryMeta> {
        parse_entry_ref(reference)?;
        Ok(EntryMeta {
            reference: reference.to_string(),
            from: None,
            base: None,
            created: now_secs(),
            last_commit: None,
        })
    }

    /// `(repository, tag)`.
    pub fn repo_tag(&self) -> (String, String) {
        let (r, t) = parse_entry_ref(&self.reference).expect("validated on creation");
        (r.to_string(), t.to_string())
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Split and check an entry reference `repo/path:tag` (no registry, no digest).
pub fn parse_entry_ref(s: &str) -> Result<(&str, &str)> {
    if s.contains('@') {
        return Err(Error::invalid(format!(
            "{s:?}: an export entry is pushed under a tag, not a digest"
        )));
    }
    let (repo, tag) = s
        .rsplit_once(':')
        .ok_or_else(|| Error::invalid(format!("{s:?}: expected NAME:TAG")))?;
    if repo.contains(':') {
        return Err(Error::invalid(format!(
            "{s:?}: a registry host is not part of an entry name"
        )));
    }
    validate_repository(repo).map_err(|e| Error::invalid(format!("{s:?}: {e}")))?;
    validate_tag(tag).map_err(|e| Error::invalid(format!("{s:?}: {e}")))?;
    Ok((repo, tag))
}

/// The on-disk directory name of an entry: `/` escaped as `%2F`.
pub fn escape(reference: &str) -> String {
    reference.replace('%', "%25").replace('/', "%2F")
}

/// The reverse of [`escape`].
pub fn unescape(name: &str) -> String {
    name.replace("%2F", "/").replace("%25", "%")
}

/// The staging area.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Open (creating, mode 0700) the staging area at `dir`.
    pub fn open(dir: &Path) -> Result<Staging> {
        for d in [dir.to_path_buf(), dir.join("entries"), dir.join("tmp")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        // Half-made entries and layers of a previous run.
        for e in fs::read_dir(dir.join("entries"))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".new-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(Staging {
            dir: dir.to_path_buf(),
        })
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where packed layers are written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The default control socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn entry_dir(&self, reference: &str) -> PathBuf {
        self.dir.join("entries").join(escape(reference))
    }

    /// The upper tree of entry `reference`.
    pub fn root(&self, reference: &str) -> PathBuf {
        self.entry_dir(reference).join("root")
    }

    /// All entries, sorted by reference.
    pub fn entries(&self) -> Result<Vec<EntryMeta>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.dir.join("entries"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match self.get(&unescape(&name)) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(err) => tracing::warn!(entry = %name, error = %err, "unreadable staging entry"),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The metadata of entry `reference`, if it exists.
    pub fn get(&self, reference: &str) -> Result<Option<EntryMeta>> {
        match fs::read(self.entry_dir(reference).join("meta.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::invalid(format!("staging entry {reference}: meta.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Create entry `meta.reference` with an empty tree; `EEXIST` if it exists.
    pub fn create(&self, meta: &EntryMeta) -> Result<()> {
        parse_entry_ref(&meta.reference)?;
        let dst = self.entry_dir(&meta.reference);
        if dst.exists() {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EEXIST)));
        }
        let tmp = self
            .dir
            .join("entries")
            .join(format!(".new-{}", escape(&meta.reference)));
        let _ = fs::remove_dir_all(&tmp);
        fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        fs::DirBuilder::new().mode(0o755).create(tmp.join("root"))?;
        write_durably(&tmp.join("meta.json"), &to_json(meta))?;
        fs::File::open(tmp.join("root"))?.sync_all()?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &dst)?;
        fs::File::open(self.dir.join("entries"))?.sync_all()?;
        Ok(())
    }

    /// Replace the metadata of an existing entry (atomically).
    pub fn save(&self, meta: &EntryMeta) -> Result<()> {
        let dir = self.entry_dir(&meta.reference);
        let tmp = dir.join(".meta.json.tmp");
        write_durably(&tmp, &to_json(meta))?;
        fs::rename(&tmp, dir.join("meta.json"))?;
        fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Delete entry `reference` and everything staged in it.
    pub fn remove(&self, reference: &str) -> Result<()> {
        let dir = self.entry_dir(reference);
        // Rename first so a crash mid-delete leaves no half entry behind.
        let gone = self
            .dir
            .join("entries")
            .join(format!(".new-gone-{}", escape(reference)));
        fs::rename(&dir, &gone)?;
        fs::remove_dir_all(&gone)?;
        Ok(())
    }
}

fn to_json(meta: &EntryMeta) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(meta).expect("serialisable");
    v.push(b'\n');
    v
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = Staging::open(d.path()).unwrap();
        s.create(&EntryMeta::new("team/tool:latest").unwrap())
            .unwrap();
        s.create(&EntryMeta::new("myapp:1.0").unwrap()).unwrap();
        assert!(s.create(&EntryMeta::new("myapp:1.0").unwrap()).is_err());
        fs::write(s.root("team/tool:latest").join("f"), b"x").unwrap();
        let s = Staging::open(d.path()).unwrap();
        let refs: Vec<_> = s
            .entries()
            .unwrap()
            .into_iter()
            .map(|m| m.reference)
            .collect();
        assert_eq!(refs, ["myapp:1.0", "team/tool:latest"]);
        assert_eq!(
            fs::read(s.root("team/tool:latest").join("f")).unwrap(),
            b"x"
        );
        assert!(d.path().join("entries/team%2Ftool:latest").is_dir());
        s.remove("myapp:1.0").unwrap();
        assert_eq!(s.entries().unwrap().len(), 1);
    }

    #[test]
    fn entry_references() {
        assert!(parse_entry_ref("myapp:1.0").is_ok());
        assert!(parse_entry_ref("team/tool:latest").is_ok());
        for bad in [
            "myapp",
            "MyApp:1",
            "a@sha256:00",
            "host:5000/a:b",
            "a:-x",
            ":x",
        ] {
            assert!(parse_entry_ref(bad).is_err(), "{bad}");
        }
    }
}
