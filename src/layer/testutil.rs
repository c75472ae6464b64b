//! Building real tars (including hostile ones) for the layer tests.

use tar::{EntryType, Header};

/// A tar under construction, able to write names the `tar` crate's safe
/// path setters refuse (`..`, absolute, invalid UTF-8).
pub(crate) struct TarW {
    pub b: tar::Builder<Vec<u8>>,
    pub mtime: u64,
}

impl TarW {
    pub fn new() -> TarW {
        TarW {
            b: tar::Builder::new(Vec::new()),
            mtime: 1_700_000_000,
        }
    }

    /// A GNU header of type `ty` with `name` (GNU long name record first if
    /// the name does not fit), mode, owner and size set.
    pub fn header(&mut self, name: &[u8], ty: EntryType, mode: u32, size: u64) -> Header {
        if name.len() > 100 {
            let mut l = Header::new_gnu();
            l.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            l.set_entry_type(EntryType::GNULongName);
            l.set_mode(0o644);
            l.set_size(name.len() as u64 + 1);
            l.set_cksum();
            let mut data = name.to_vec();
            data.push(0);
            self.b.append(&l, &data[..]).unwrap();
        }
        let mut h = Header::new_gnu();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h.set_size(size);
        h
    }

    pub fn append(&mut self, mut h: Header, data: &[u8]) {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
    }

    pub fn file(&mut self, name: &[u8], data: &[u8]) -> &mut Self {
        self.file_mode(name, data, 0o644)
    }

    pub fn file_mode(&mut self, name: &[u8], data: &[u8], mode: u32) -> &mut Self {
        let h = self.header(name, EntryType::Regular, mode, data.len() as u64);
        self.append(h, data);
        self
    }

    pub fn dir(&mut self, name: &[u8], mode: u32) -> &mut Self {
        let h = self.header(name, EntryType::Directory, mode, 0);
        self.append(h, b"");
        self
    }

    pub fn link(&mut self, ty: EntryType, name: &[u8], target: &[u8]) -> &mut Self {
        if target.len() > 100 {
            let mut l = Header::new_gnu();
            l.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            l.set_entry_type(EntryType::GNULongLink);
            l.set_size(target.len() as u64 + 1);
            l.set_cksum();
            let mut data = target.to_vec();
            data.push(0);
            self.b.append(&l, &data[..]).unwrap();
        }
        let mut h = self.header(name, ty, 0o777, 0);
        let n = target.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&target[..n]);
        self.append(h, b"");
        self
    }

    pub fn symlink(&mut self, name: &[u8], target: &[u8]) -> &mut Self {
        self.link(EntryType::Symlink, name, target)
    }

    pub fn hardlink(&mut self, name: &[u8], target: &[u8]) -> &mut Self {
        self.link(EntryType::Link, name, target)
    }

    pub fn dev(&mut self, name: &[u8], ty: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = self.header(name, ty, 0o660, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.append(h, b"");
        self
    }

    /// PAX records for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    /// An old-GNU sparse file: `segments` are (logical offset, data); the
    /// file is `real_size` long. More than 4 segments use extension headers.
    pub fn sparse(
        &mut self,
        name: &[u8],
        segments: &[(u64, Vec<u8>)],
        real_size: u64,
    ) -> &mut Self {
        let stored: u64 = segments.iter().map(|(_, d)| d.len() as u64).sum();
        let mut h = self.header(name, EntryType::GNUSparse, 0o644, stored);
        {
            let gnu = h.as_gnu_mut().unwrap();
            for (i, (off, d)) in segments.iter().take(4).enumerate() {
                gnu.sparse[i].set_offset(*off);
                gnu.sparse[i].set_length(d.len() as u64);
            }
            gnu.set_real_size(real_size);
            gnu.set_is_extended(segments.len() > 4);
        }
        h.set_cksum();
        let out = self.b.get_mut();
        out.extend_from_slice(h.as_bytes());
        let rest: Vec<_> = segments.iter().skip(4).collect();
        let chunks: Vec<_> = rest.chunks(21).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (i, (off, d)) in chunk.iter().enumerate() {
                ext.sparse[i].set_offset(*off);
                ext.sparse[i].set_length(d.len() as u64);
            }
            ext.set_is_extended(ci + 1 < chunks.len());
            out.extend_from_slice(ext.as_bytes());
        }
        for (_, d) in segments {
            out.extend_from_slice(d);
        }
        let pad = (512 - (stored % 512) as usize) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// The tar so far, with its end-of-archive marker (the writer stays usable).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut v = self.b.get_ref().clone();
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

/// The paths of a tree (without the root), with a short description each.
pub(crate) fn listing(t: &crate::layer::Tree) -> Vec<(String, String)> {
    use crate::layer::NodeKind;
    t.walk()
        .into_iter()
        .skip(1)
        .map(|(p, id)| {
            let n = t.node(id);
            let d = match n.kind {
                NodeKind::Dir if n.opaque => "dir opaque".to_string(),
                NodeKind::Dir => "dir".to_string(),
                NodeKind::File => format!("file {}", n.size),
                NodeKind::Symlink => format!(
                    "symlink {}",
                    String::from_utf8_lossy(n.link_target.as_deref().unwrap_or(b""))
                ),
                NodeKind::CharDev if n.whiteout => "whiteout".to_string(),
                k => format!("{k:?} {:?}", n.rdev),
            };
            (String::from_utf8_lossy(&p).into_owned(), d)
        })
        .collect()
}
