//! The `.regfs-control` file: status when read, commands (`commit NAME`) when written.

use super::*;

impl ExportFs {
    /// Whether `ino` is the control file (its reads are generated, not sized).
    pub fn is_control(&self, ino: u64) -> bool {
        self.inodes.lock().unwrap().path(ino).as_deref() == Some(CONTROL_FILE)
    }

    /// What reading the control file shows.
    pub(super) fn status_text(&self) -> Vec<u8> {
        let mut s = String::new();
        if let Ok(entries) = self.exp.staging().entries() {
            for e in entries {
                s += &format!(
                    "entry {} from={} last_commit={}\n",
                    e.reference,
                    e.from.as_deref().unwrap_or("-"),
                    e.last_commit
                        .map(|c| c.manifest.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        for p in self.exp.in_flight() {
            s += &format!(
                "committing {} phase={} sent={}/{}\n",
                p.entry, p.phase, p.sent, p.push_total
            );
        }
        s += &format!("inodes {}\n", self.inode_count());
        s.into_bytes()
    }

    /// Run the commands written to the control file: `commit REF` per line.
    /// Returns once every commit is pushed; a failure is `EIO`.
    pub(super) fn control(&self, data: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(data).map_err(|_| err(libc::EINVAL))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(entry) = line.strip_prefix("commit ").map(str::trim) else {
                tracing::warn!(
                    line,
                    "control file: unknown command (expected `commit NAME:TAG`)"
                );
                return Err(err(libc::EINVAL));
            };
            if self.exp.staging().get(entry)?.is_none() {
                return Err(err(libc::ENOENT));
            }
            let opts = self.exp.defaults.clone();
            match self.rt.block_on(self.exp.commit(entry, &opts)) {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(entry, error = %e, "commit from the control file failed");
                    return Err(err(libc::EIO));
                }
            }
        }
        Ok(())
    }
}
