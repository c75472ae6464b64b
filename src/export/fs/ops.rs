//! Changes to the tree: create, link, remove, rename and set attributes (copy-up from the base where needed).

use super::*;

use std::os::fd::AsRawFd;
use std::path::Path;

/// What [`ExportFs::finish_create`] made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Made {
    Dir,
    Symlink,
    Other,
}

impl ExportFs {
    /// Make a directory: a new entry or namespace at the top, else a real one.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, who: Caller) -> Result<Attr> {
        let p = self.path_of(parent)?;
        let path = join(&p, name);
        match locate(&path)? {
            Loc::Entry { entry, rel } if rel.is_empty() => {
                if let Err(e) = parse_entry_ref(&entry) {
                    tracing::warn!(name = %entry, reason = %e, "mkdir: not a valid image reference");
                    return Err(err(libc::EINVAL));
                }
                if self.exp.staging().get(&entry)?.is_some() {
                    return Err(err(libc::EEXIST));
                }
                self.exp.staging().create(&EntryMeta::new(&entry)?)?;
                let root = self.exp.staging().root(&entry);
                fs::set_permissions(&root, fs::Permissions::from_mode(mode & 0o7777))?;
                std::os::unix::fs::lchown(&root, Some(who.uid), Some(who.gid))?;
                tracing::info!(entry = %entry, "export entry created");
                self.entry_attr(&path)
            }
            Loc::Namespace(ns) => {
                let name = std::str::from_utf8(name).map_err(|_| err(libc::EINVAL))?;
                if let Err(e) = validate_component(name) {
                    tracing::warn!(name, reason = %e, "mkdir: not a valid repository name component");
                    return Err(err(libc::EINVAL));
                }
                if self.namespace_exists(&ns)? {
                    return Err(err(libc::EEXIST));
                }
                self.namespaces.lock().unwrap().insert(ns);
                self.entry_attr(&path)
            }
            Loc::Root | Loc::Control => Err(err(libc::EEXIST)),
            Loc::Entry { entry, rel } => {
                check_name(name)?;
                let _g = self.tree_lock.lock().unwrap();
                let view = self.view(&entry)?;
                let (dir, real) = self.prepare_create(&view, &rel)?;
                fs::create_dir(&*short(&real)?)?;
                self.finish_create(&dir, &real, mode, who, Made::Dir)?;
                let had_wh = view.unwhiteout(&dir, name)?;
                if had_wh || view.lower_has(&rel)? {
                    view.make_opaque(&real)?;
                }
                self.entry_attr(&path)
            }
        }
    }

    /// Check that `rel` is free and its parent is a directory; copy the parent
    /// up. Returns (upper parent dir, upper path).
    pub(super) fn prepare_create(&self, view: &View, rel: &[u8]) -> Result<(PathBuf, PathBuf)> {
        let (parent, name) = split(rel);
        let pobj = view.resolve(parent)?;
        if !view.is_dir(&pobj) {
            return Err(err(libc::ENOTDIR));
        }
        if view.child(&pobj, name)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        let dir = view.copy_up(parent)?;
        let real = dir.join(OsStr::from_bytes(name));
        Ok((dir, real))
    }

    /// Give `real`, just made in upper directory `dir`, its owner and mode:
    /// the caller's uid and gid, or the directory's gid if it is setgid (a
    /// new directory then is setgid too), as a local filesystem does.
    pub(super) fn finish_create(
        &self,
        dir: &Path,
        real: &Path,
        mode: u32,
        who: Caller,
        made: Made,
    ) -> Result<()> {
        let pmd = fs::symlink_metadata(&*short(dir)?)?;
        let setgid = pmd.mode() & libc::S_ISGID != 0;
        let gid = if setgid { pmd.gid() } else { who.gid };
        let real = short(real)?;
        std::os::unix::fs::lchown(&*real, Some(who.uid), Some(gid))?;
        if made != Made::Symlink {
            let mut m = mode & 0o7777;
            if made == Made::Dir && setgid {
                m |= libc::S_ISGID;
            }
            fs::set_permissions(&*real, fs::Permissions::from_mode(m))?;
        }
        Ok(())
    }

    /// Create and open a regular file. Returns its attributes and a handle.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, u64)> {
        check_name(name)?;
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        if let Some(existing) = view.try_resolve(&rel)? {
            if flags & libc::O_EXCL != 0 {
                return Err(err(libc::EEXIST));
            }
            if view.is_dir(&existing) {
                return Err(err(libc::EISDIR));
            }
            drop(_g);
            let a = self.attr_at(&path, false)?;
            let fh = self.open(a.ino, flags)?;
            return Ok((self.entry_attr(&path)?, fh));
        }
        let (dir, real) = self.prepare_create(&view, &rel)?;
        let acc = flags & libc::O_ACCMODE;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&*short(&real)?)?;
        self.finish_create(&dir, &real, mode, who, Made::Other)?;
        view.unwhiteout(&dir, name)?;
        let a = self.entry_attr(&path)?;
        let fh = self.add_handle(Handle::File(Arc::new(f), a.ino));
        Ok((a, fh))
    }

    /// Make a fifo, socket, device (root only) or empty regular file.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Attr> {
        check_name(name)?;
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let (dir, real) = self.prepare_create(&view, &rel)?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        match kind {
            SFlag::S_IFIFO | SFlag::S_IFREG | SFlag::S_IFSOCK => {}
            SFlag::S_IFCHR | SFlag::S_IFBLK if who.uid == 0 => {}
            SFlag::S_IFCHR | SFlag::S_IFBLK => return Err(err(libc::EPERM)),
            _ => return Err(err(libc::EPERM)),
        }
        let mode_bits = Mode::from_bits_truncate(0o600);
        nix::sys::stat::mknod(&*short(&real)?, kind, mode_bits, rdev as _)
            .map_err(io::Error::from)?;
        self.finish_create(&dir, &real, mode, who, Made::Other)?;
        view.unwhiteout(&dir, name)?;
        self.entry_attr(&path)
    }

    /// Make a symlink.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Caller) -> Result<Attr> {
        check_name(name)?;
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let (dir, real) = self.prepare_create(&view, &rel)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &*short(&real)?)?;
        self.finish_create(&dir, &real, 0, who, Made::Symlink)?;
        view.unwhiteout(&dir, name)?;
        self.entry_attr(&path)
    }

    /// Make a hard link to `ino` at `(parent, name)`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        let src = self.path_of(ino)?;
        let Loc::Entry {
            entry: se,
            rel: srel,
        } = locate(&src)?
        else {
            return Err(err(libc::EPERM));
        };
        let (entry, rel, path) = self.entry_child(parent, name)?;
        if se != entry {
            return Err(err(libc::EXDEV));
        }
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let sobj = view.resolve(&srel)?;
        if view.is_dir(&sobj) {
            return Err(err(libc::EPERM));
        }
        let (dir, real) = self.prepare_create(&view, &rel)?;
        let sreal = view.copy_up(&srel)?;
        fs::hard_link(&*short(&sreal)?, &*short(&real)?)?;
        view.unwhiteout(&dir, name)?;
        let md = fs::symlink_metadata(&*short(&real)?)?;
        if let Some(id) = view::identity(&md) {
            self.inodes.lock().unwrap().set_identity(ino, id);
        }
        self.entry_attr(&path)
    }

    /// Remove a non-directory.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let mut obj = view.resolve(&rel)?;
        if view.is_dir(&obj) {
            return Err(err(libc::EISDIR));
        }
        let lower = view.lower_has(&rel)?;
        let (parent_rel, _) = split(&rel);
        let dir = view.copy_up(parent_rel)?;
        if is_base_link(&view, &obj) {
            // One name of a base file with several: copy the file up with
            // all its names, so the others show one link fewer.
            view.copy_up(&rel)?;
            obj = view.resolve(&rel)?;
        }
        let attr = self.obj_attr(&path, &view, &obj, false);
        if let Obj::Upper { path: real, .. } = &obj {
            fs::remove_file(&*short(real)?)?;
        }
        if lower {
            view.whiteout(&dir, name)?;
        }
        self.gone(&path, Some(attr));
        Ok(())
    }

    /// Remove an empty directory (at the top: an empty entry or namespace).
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        let p = self.path_of(parent)?;
        let path = join(&p, name);
        match locate(&path)? {
            Loc::Entry { entry, rel } if rel.is_empty() => {
                let view = self.view(&entry)?;
                if !view.list(&view.root_obj()?)?.is_empty() {
                    return Err(err(libc::ENOTEMPTY));
                }
                if self.exp.progress(&entry).is_some() {
                    return Err(err(libc::EBUSY));
                }
                self.exp.staging().remove(&entry)?;
                self.inodes.lock().unwrap().remove(&path);
                tracing::info!(entry = %entry, "export entry removed");
                Ok(())
            }
            Loc::Namespace(ns) => {
                let prefix = format!("{ns}/");
                if self
                    .exp
                    .staging()
                    .entries()?
                    .iter()
                    .any(|e| e.reference.starts_with(&prefix))
                    || self
                        .namespaces
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|n| n.starts_with(&prefix))
                {
                    return Err(err(libc::ENOTEMPTY));
                }
                if !self.namespaces.lock().unwrap().remove(&ns) {
                    return Err(err(libc::ENOENT));
                }
                Ok(())
            }
            Loc::Root | Loc::Control => Err(err(libc::ENOTDIR)),
            Loc::Entry { entry, rel } => {
                let _g = self.tree_lock.lock().unwrap();
                let view = self.view(&entry)?;
                let obj = view.resolve(&rel)?;
                if !view.is_dir(&obj) {
                    return Err(err(libc::ENOTDIR));
                }
                if !view.list(&obj)?.is_empty() {
                    return Err(err(libc::ENOTEMPTY));
                }
                let lower = view.lower_has(&rel)?;
                let (parent_rel, _) = split(&rel);
                let dir = view.copy_up(parent_rel)?;
                if let Obj::Upper { path: real, .. } = &obj {
                    view.clear_whiteouts(real)?;
                    fs::remove_dir(&*short(real)?)?;
                }
                if lower {
                    view.whiteout(&dir, name)?;
                }
                self.inodes.lock().unwrap().remove(&path);
                Ok(())
            }
        }
    }

    /// Rename, replacing the target; `RENAME_NOREPLACE`: `EEXIST` instead
    /// (other flags, `RENAME_EXCHANGE` among them: `EINVAL`).
    pub fn rename(&self, p1: u64, n1: &[u8], p2: u64, n2: &[u8], flags: u32) -> Result<()> {
        let noreplace = flags == libc::RENAME_NOREPLACE;
        if flags != 0 && !noreplace {
            return Err(err(libc::EINVAL));
        }
        check_name(n2)?;
        let (from, to) = (join(&self.path_of(p1)?, n1), join(&self.path_of(p2)?, n2));
        let (Loc::Entry { entry: e1, rel: r1 }, Loc::Entry { entry: e2, rel: r2 }) =
            (locate(&from)?, locate(&to)?)
        else {
            return Err(err(libc::EPERM));
        };
        if r1.is_empty() || r2.is_empty() {
            return Err(err(libc::EPERM));
        }
        if e1 != e2 {
            return Err(err(libc::EXDEV));
        }
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&e1)?;
        let src = view.resolve(&r1)?;
        if r1 == r2 {
            return Ok(());
        }
        if r2.starts_with(&r1) && r2.get(r1.len()) == Some(&b'/') {
            return Err(err(libc::EINVAL));
        }
        let src_dir = view.is_dir(&src);
        let (p2rel, _) = split(&r2);
        let pobj = view.resolve(p2rel)?;
        if !view.is_dir(&pobj) {
            return Err(err(libc::ENOTDIR));
        }
        let mut dst = view.child(&pobj, n2)?;
        if noreplace && dst.is_some() {
            return Err(err(libc::EEXIST));
        }
        if dst.as_ref().is_some_and(|d| same_object(&src, d)) {
            return Ok(()); // two names of one file: nothing to do (POSIX)
        }
        let dst_attr = dst.as_ref().map(|d| self.obj_attr(&to, &view, d, false));
        if let Some(d) = &dst {
            match (src_dir, view.is_dir(d)) {
                (true, false) => return Err(err(libc::ENOTDIR)),
                (false, true) => return Err(err(libc::EISDIR)),
                (true, true) if !view.list(d)?.is_empty() => return Err(err(libc::ENOTEMPTY)),
                _ => {}
            }
        }
        // A directory merged with (or only in) the base cannot move in the upper
        // tree alone; like overlayfs without redirect_dir: EXDEV, and mv copies.
        let merged = match &src {
            Obj::Upper { lower, .. } => lower.is_some(),
            Obj::Base { .. } => true,
        };
        if src_dir && merged {
            return Err(err(libc::EXDEV));
        }
        if dst.as_ref().is_some_and(|d| is_base_link(&view, d)) {
            // Replacing one name of a base file with several: as unlink.
            view.copy_up(&r2)?;
            dst = view.child(&view.resolve(p2rel)?, n2)?;
        }
        let src_lower = view.lower_has(&r1)?;
        let dst_lower = view.lower_has(&r2)?;
        let sreal = view.copy_up(&r1)?;
        let ddir = view.copy_up(p2rel)?;
        let dreal = ddir.join(OsStr::from_bytes(n2));
        if let Some(Obj::Upper { path, md, .. }) = &dst {
            if md.is_dir() {
                view.clear_whiteouts(path)?;
            }
        }
        fs::rename(&*short(&sreal)?, &*short(&dreal)?)?;
        let had_wh = view.unwhiteout(&ddir, n2)?;
        if src_dir && (dst_lower || had_wh) {
            view.make_opaque(&dreal)?;
        }
        if src_lower {
            let (p1rel, _) = split(&r1);
            let sdir = view.copy_up(p1rel)?;
            view.whiteout(&sdir, n1)?;
        }
        self.gone(&to, dst_attr);
        self.inodes.lock().unwrap().rename(&from, &to);
        Ok(())
    }

    /// Real path of `ino` after copy-up (inside an entry only).
    pub(super) fn upper_of(&self, ino: u64) -> Result<(View, PathBuf)> {
        let p = self.path_of(ino)?;
        let Loc::Entry { entry, rel } = locate(&p)? else {
            return Err(err(libc::EPERM));
        };
        let view = self.view(&entry)?;
        let _g = self.tree_lock.lock().unwrap();
        let real = view.copy_up(&rel)?;
        Ok((view, real))
    }

    /// Change attributes (of a file unlinked while open: through its descriptor).
    pub fn setattr(&self, ino: u64, fh: Option<u64>, s: &SetAttr) -> Result<Attr> {
        let open = match self.path_of(ino) {
            Ok(p) => {
                if let Loc::Control = locate(&p)? {
                    return self.getattr(ino);
                }
                None
            }
            Err(e) => match self.open_file(ino) {
                Some(f) => Some(f),
                None => return self.set_orphan(ino, s).ok_or(e),
            },
        };
        let (real, follow) = match &open {
            Some(f) => (
                short(Path::new(&format!("/proc/self/fd/{}", f.as_raw_fd())))?,
                true,
            ),
            None => (short(&self.upper_of(ino)?.1)?, false),
        };
        let md = match follow {
            true => fs::metadata(&*real)?,
            false => fs::symlink_metadata(&*real)?,
        };
        // An empty request is `chown(f, -1, -1)`, which still changes ctime.
        let empty = s.mode.is_none() && s.size.is_none() && s.atime.is_none() && s.mtime.is_none();
        if s.uid.is_some() || s.gid.is_some() || empty {
            match follow {
                true => std::os::unix::fs::chown(&*real, s.uid, s.gid)?,
                false => std::os::unix::fs::lchown(&*real, s.uid, s.gid)?,
            }
        }
        if let Some(m) = s.mode {
            if !md.file_type().is_symlink() {
                fs::set_permissions(&*real, fs::Permissions::from_mode(m & 0o7777))?;
            }
        }
        if let Some(size) = s.size {
            if md.is_dir() {
                return Err(err(libc::EISDIR));
            }
            let file = fh
                .and_then(|fh| match self.handles.lock().unwrap().get(&fh) {
                    Some(Handle::File(f, _)) => Some(f.clone()),
                    _ => None,
                })
                .or(open);
            match file {
                Some(f) => f.set_len(size)?,
                None => OpenOptions::new().write(true).open(&*real)?.set_len(size)?,
            }
        }
        if s.atime.is_some() || s.mtime.is_some() {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &*real,
                &timespec(s.atime),
                &timespec(s.mtime),
                match follow {
                    true => nix::sys::stat::UtimensatFlags::FollowSymlink,
                    false => nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                },
            )
            .map_err(io::Error::from)?;
        }
        self.getattr(ino)
    }
}

/// Whether two objects of a view are one file (hard links of it).
fn same_object(a: &Obj, b: &Obj) -> bool {
    match (a, b) {
        (Obj::Upper { md: x, .. }, Obj::Upper { md: y, .. }) => {
            (x.dev(), x.ino()) == (y.dev(), y.ino())
        }
        (Obj::Base { node: x, .. }, Obj::Base { node: y, .. }) => x == y,
        _ => false,
    }
}

/// Whether `obj` is a base file with other names (hard links).
fn is_base_link(view: &View, obj: &Obj) -> bool {
    match obj {
        Obj::Base { node, .. } => view.base.as_ref().is_some_and(|b| {
            let n = b.tree.node(*node);
            !n.is_dir() && n.nlink > 1
        }),
        Obj::Upper { .. } => false,
    }
}
