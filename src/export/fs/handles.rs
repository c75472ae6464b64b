//! Open files: handles, reads, writes, fsync and statfs.

use super::*;

impl ExportFs {
    pub(super) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    /// Open `ino` (copying it up first when opened for writing).
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let p = match self.path_of(ino) {
            Ok(p) => p,
            // Unlinked, and open: opened again through `/proc/PID/fd/N`.
            Err(e) => return self.reopen(ino, flags).ok_or(e)?,
        };
        let (entry, rel) = match locate(&p)? {
            Loc::Control => return Ok(self.add_handle(Handle::Control(self.status_text()))),
            Loc::Entry { entry, rel } => (entry, rel),
            _ => return Err(err(libc::EISDIR)),
        };
        let acc = flags & libc::O_ACCMODE;
        let writing = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let view = self.view(&entry)?;
        let obj = view.resolve(&rel)?;
        if view.is_dir(&obj) {
            return Err(err(libc::EISDIR));
        }
        let real = match (&obj, writing) {
            (Obj::Base { node, .. }, false) => {
                let base = view.base.clone().ok_or_else(|| err(libc::EIO))?;
                return Ok(self.add_handle(Handle::Base(base, *node)));
            }
            (Obj::Upper { path, .. }, _) => path.clone(),
            (Obj::Base { .. }, true) => {
                let _g = self.tree_lock.lock().unwrap();
                view.copy_up(&rel)?
            }
        };
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .truncate(flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY)
            .custom_flags(flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOFOLLOW))
            .open(&*short(&real)?)?;
        if flags & libc::O_TRUNC != 0 && acc == libc::O_RDONLY {
            f.set_len(0)?;
        }
        Ok(self.add_handle(Handle::File(Arc::new(f), ino)))
    }

    /// Read from open file `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f, i)) => Handle::File(f.clone(), *i),
            Some(Handle::Base(b, n)) => Handle::Base(b.clone(), *n),
            Some(Handle::Control(t)) => Handle::Control(t.clone()),
            None => return Err(err(libc::EBADF)),
        };
        let mut buf = vec![0u8; size as usize];
        let got = match h {
            Handle::File(f, _) => crate::layer::read_full_at(&*f, &mut buf, offset)?,
            Handle::Base(b, n) => {
                crate::layer::read_content(b.tree.node(n), &b.files, offset, &mut buf)?
            }
            Handle::Control(t) => {
                let start = (offset as usize).min(t.len());
                let end = (start + buf.len()).min(t.len());
                buf[..end - start].copy_from_slice(&t[start..end]);
                end - start
            }
        };
        buf.truncate(got);
        Ok(buf)
    }

    /// Write to open file `fh` (on the control file: run the commands written).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let f = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f, _)) => f.clone(),
            Some(Handle::Control(_)) => {
                self.control(data)?;
                return Ok(data.len() as u32);
            }
            Some(Handle::Base(..)) => return Err(err(libc::EBADF)),
            None => return Err(err(libc::EBADF)),
        };
        f.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    /// `fallocate` on open file `fh`: modes that only allocate (`0`,
    /// `FALLOC_FL_KEEP_SIZE`); punching holes and the rest: `EOPNOTSUPP`.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(err(libc::EOPNOTSUPP));
        }
        let f = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f, _)) => f.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        let (off, len) = (offset as libc::off_t, length as libc::off_t);
        // SAFETY: a plain system call on a descriptor we own.
        if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&*f), mode, off, len) } < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// `fsync` / `fdatasync` of open file `fh`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let f = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f, _)) => f.clone(),
            _ => return Ok(()),
        };
        if datasync {
            f.sync_data()?;
        } else {
            f.sync_all()?;
        }
        Ok(())
    }

    /// `fsync` of directory `ino` (its upper directory, if any).
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let p = self.path_of(ino)?;
        if let Loc::Entry { entry, rel } = locate(&p)? {
            if let Obj::Upper { path, .. } = self.view(&entry)?.resolve(&rel)? {
                File::open(&*short(&path)?)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Forget open file `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Filesystem numbers of the staging directory.
    pub fn statfs(&self) -> Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(self.exp.staging().dir()).map_err(io::Error::from)?;
        Ok(StatFs {
            blocks: s.blocks() as u64,
            bfree: s.blocks_free() as u64,
            bavail: s.blocks_available() as u64,
            files: s.files() as u64,
            ffree: s.files_free() as u64,
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }
}
