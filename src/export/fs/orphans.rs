//! Inodes whose last name went while the kernel still holds them (unlinked,
//! or replaced by a rename, while open): they keep their number and are
//! answered from a descriptor still open on them, or, for a fifo or socket
//! (served by the kernel, no descriptor of ours), from their last attributes.

use super::*;

impl ExportFs {
    /// `path` (an object with attributes `attr`) is gone; if that was its
    /// last name, its inode lives on as an orphan for the descriptors still
    /// open on it (a fifo, a socket: nothing else holds them).
    pub(super) fn gone(&self, path: &[u8], attr: Option<Attr>) {
        let mut t = self.inodes.lock().unwrap();
        t.remove(path);
        if let Some(a) = attr.filter(|a| t.path(a.ino).is_none()) {
            let ctime = SystemTime::now();
            let orphan = Attr {
                nlink: 0,
                ctime,
                ..a
            };
            self.orphans.lock().unwrap().insert(a.ino, orphan);
        }
    }

    /// An open descriptor of staged file `ino`, if one is open.
    pub(super) fn open_file(&self, ino: u64) -> Option<Arc<File>> {
        self.handles.lock().unwrap().values().find_map(|h| match h {
            Handle::File(f, i) if *i == ino => Some(f.clone()),
            _ => None,
        })
    }

    /// Change the remembered attributes of an orphan (an unlinked fifo or
    /// socket the kernel still holds): there is no file left to change.
    pub(super) fn set_orphan(&self, ino: u64, s: &SetAttr) -> Option<Attr> {
        let mut orphans = self.orphans.lock().unwrap();
        let a = orphans.get_mut(&ino)?;
        let now = SystemTime::now();
        let at = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        a.perm = s.mode.map_or(a.perm, |m| (m & 0o7777) as u16);
        a.uid = s.uid.unwrap_or(a.uid);
        a.gid = s.gid.unwrap_or(a.gid);
        a.mtime = s.mtime.map_or(a.mtime, at);
        a.ctime = now;
        Some(a.clone())
    }

    /// Open unlinked file `ino` again through a descriptor still open on it.
    pub(super) fn reopen(&self, ino: u64, flags: i32) -> Option<Result<u64>> {
        let f = self.open_file(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*f));
        let opened = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .truncate(flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY)
            .open(path);
        Some(match opened {
            Ok(g) => Ok(self.add_handle(Handle::File(Arc::new(g), ino))),
            Err(e) => Err(e.into()),
        })
    }
}
