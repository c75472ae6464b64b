//! An append-only file of a table's operations, one JSON line each, so that
//! the next server of a mount (see `crate::handover`) rebuilds the table the
//! kernel still relies on: the same inode numbers for the same keys.
//!
//! Each operation is one write(2) made while the table's lock is held, in
//! the order the table applied them, before the kernel hears the result: a
//! server killed at any moment leaves a journal whose replay gives the table
//! the kernel saw. Nothing is synced to the disk: a crash of the machine
//! ends the mount as well. When the file grows past [`COMPACT_AT`], it is
//! replaced by one record of the whole table.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Size past which the journal is rewritten as one snapshot.
pub const COMPACT_AT: u64 = 64 << 20;

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    written: u64,
    /// A write failed (disk full): later restarts may lose numbers; said once.
    failed: bool,
}

impl Journal {
    /// Open `path` for appending: the records already in it, and the
    /// journal. A record cut short (a server killed mid-write: a last line
    /// without its newline, or one that does not parse) and what follows it
    /// are dropped and cut off the file, so that the next record starts a
    /// line of its own.
    pub fn open<T: DeserializeOwned>(path: &Path) -> io::Result<(Vec<T>, Journal)> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        // Bytes of whole, readable lines.
        let mut good = 0usize;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let Some(body) = line.strip_suffix(b"\n") else {
                break; // no newline: cut short
            };
            match serde_json::from_slice(body) {
                Ok(r) => records.push(r),
                Err(e) => {
                    tracing::warn!(journal = %path.display(), error = %e, "journal: unreadable record; the rest is dropped");
                    break;
                }
            }
            good += line.len();
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if good < bytes.len() {
            file.set_len(good as u64)?;
        }
        Ok((
            records,
            Journal {
                path: path.to_path_buf(),
                file,
                written: good as u64,
                failed: false,
            },
        ))
    }

    /// Append one record.
    pub fn append<T: Serialize>(&mut self, record: &T) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => return self.fail(&e.to_string()),
        };
        line.push(b'\n');
        match self.file.write_all(&line) {
            Ok(()) => self.written += line.len() as u64,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// Whether the journal is past [`COMPACT_AT`].
    pub fn wants_compaction(&self) -> bool {
        self.written > COMPACT_AT
    }

    /// Replace the file's contents with `records` (a snapshot), atomically.
    pub fn rewrite<T: Serialize>(&mut self, records: &[T]) {
        let tmp = self.path.with_extension("new");
        let res = (|| -> io::Result<File> {
            let mut f = io::BufWriter::new(File::create(&tmp)?);
            for r in records {
                serde_json::to_writer(&mut f, r)?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
            std::fs::rename(&tmp, &self.path)?;
            OpenOptions::new().append(true).open(&self.path)
        })();
        match res {
            Ok(file) => {
                self.written = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = file;
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn fail(&mut self, error: &str) {
        if !self.failed {
            self.failed = true;
            tracing::error!(journal = %self.path.display(), %error, "journal write failed: a restart of this server may lose inode numbers (ESTALE for files held open)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let (old, mut j) = Journal::open::<String>(&p).unwrap();
        assert!(old.is_empty());
        for i in 0..5 {
            j.append(&format!("r{i}"));
        }
        drop(j);
        let torn = |p: &Path, bytes: &[u8]| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap()
                .write_all(bytes)
                .unwrap()
        };
        // A record cut short: dropped, and cut off so the next one is whole.
        torn(&p, b"\"r5");
        let (back, mut j) = Journal::open::<String>(&p).unwrap();
        assert_eq!(back, ["r0", "r1", "r2", "r3", "r4"]);
        j.append(&"r6".to_string());
        drop(j);
        // A last line that parses but lacks its newline is cut short too.
        torn(&p, b"\"r7\"");
        let (back, mut j) = Journal::open::<String>(&p).unwrap();
        assert_eq!(back, ["r0", "r1", "r2", "r3", "r4", "r6"]);
        j.rewrite(&["a".to_string(), "b".to_string()]);
        j.append(&"c".to_string());
        drop(j);
        let (back, _) = Journal::open::<String>(&p).unwrap();
        assert_eq!(back, ["a", "b", "c"]);
    }
}
