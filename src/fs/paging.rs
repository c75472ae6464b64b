//! Directory paging as the FUSE protocol counts it, shared by both mounts.
//!
//! A reply to `readdir` / `readdirplus` holds as many entries as fit in the
//! size the kernel asked for; the kernel asks again from the last entry's
//! cookie. The filesystems compute here which entries fit, so that they hand
//! out inode numbers (and, for readdirplus, the kernel's references to them)
//! only for entries actually sent; the adapters copy a page into the reply.
//!
//! Positions: 0 is `.`, 1 is `..`, `n` ≥ 2 is the directory's entry `n - 2`;
//! the cookie of position `n` is `n + 1` (where the next call starts).

use super::{Attr, FileKind};

/// Bytes of a `struct fuse_dirent` before the name.
pub const DIRENT_HEADER: usize = 24;
/// Bytes of the `struct fuse_entry_out` a readdirplus entry adds.
pub const ENTRY_OUT: usize = 128;
/// The reply size to page to when the kernel's is not known: no kernel asks
/// for less than one page.
pub const REPLY_BUDGET: usize = 4096;

/// Bytes one entry named `name_len` bytes takes in a reply: the header and
/// name padded to 8 bytes, plus the entry_out of readdirplus.
pub fn entry_size(name_len: usize, plus: bool) -> usize {
    (DIRENT_HEADER + name_len).next_multiple_of(8) + if plus { ENTRY_OUT } else { 0 }
}

/// One entry of a page, ready to copy into a reply.
#[derive(Clone, Debug)]
pub struct PageEntry {
    /// Inode number (for readdirplus, the kernel now holds a reference to it,
    /// except for `.` and `..`).
    pub ino: u64,
    /// Where the next call starts if the kernel stops after this entry.
    pub cookie: u64,
    /// Name.
    pub name: Vec<u8>,
    /// Kind.
    pub kind: FileKind,
    /// Attributes for readdirplus, when known without the network; `None`:
    /// sent uncached (the kernel looks the entry up when it is used), and
    /// always for `.` and `..`.
    pub attr: Option<Attr>,
}

impl PageEntry {
    /// Whether this is `.` or `..` (no kernel reference, attributes not cached).
    pub fn is_dot(&self) -> bool {
        self.cookie <= 2
    }
}

/// Which positions of a directory go into one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Whether `.` (position 0) is in the page.
    pub dot: bool,
    /// Whether `..` (position 1) is in the page.
    pub dotdot: bool,
    /// The directory's entries in the page: `first..end`.
    pub first: usize,
    /// One past the last entry in the page.
    pub end: usize,
}

/// The page of a directory of `len` entries starting at cookie `offset`, for
/// a reply of `budget` bytes; `name_len(i)` is the length of entry `i`'s name.
pub fn page(
    offset: u64,
    budget: usize,
    plus: bool,
    len: usize,
    name_len: impl Fn(usize) -> usize,
) -> Page {
    let mut used = 0;
    let mut fits = |n: usize| {
        let size = entry_size(n, plus);
        let ok = used + size <= budget;
        if ok {
            used += size;
        }
        ok
    };
    let dot = offset == 0 && fits(1);
    let dotdot = offset <= 1 && (offset == 1 || dot) && fits(2);
    let first = (offset.saturating_sub(2) as usize).min(len);
    let mut end = first;
    if offset >= 2 || dotdot {
        while end < len && fits(name_len(end)) {
            end += 1;
        }
    }
    Page {
        dot,
        dotdot,
        first,
        end,
    }
}

impl Page {
    /// `.` (inode `dir`) and `..` (inode `parent`), as far as they are in
    /// the page.
    pub fn dots(&self, dir: u64, parent: u64) -> Vec<PageEntry> {
        let dot = |ino, cookie, name: &[u8]| PageEntry {
            ino,
            cookie,
            name: name.to_vec(),
            kind: FileKind::Dir,
            attr: None,
        };
        let mut out = Vec::new();
        if self.dot {
            out.push(dot(dir, 1, b"."));
        }
        if self.dotdot {
            out.push(dot(parent, 2, b".."));
        }
        out
    }

    /// The cookie of entry `i`.
    pub fn cookie(i: usize) -> u64 {
        i as u64 + 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page through `names` with `budget` and return every position seen.
    fn walk(names: &[&str], budget: usize, plus: bool) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let p = page(offset, budget, plus, names.len(), |i| names[i].len());
            let mut used = 0;
            if p.dot {
                out.push(".".to_string());
                used += entry_size(1, plus);
                offset = 1;
            }
            if p.dotdot {
                out.push("..".to_string());
                used += entry_size(2, plus);
                offset = 2;
            }
            for (i, name) in names.iter().enumerate().take(p.end).skip(p.first) {
                out.push(name.to_string());
                used += entry_size(name.len(), plus);
                offset = Page::cookie(i);
            }
            assert!(used <= budget, "{used} > {budget}");
            if !p.dot && !p.dotdot && p.first == p.end {
                return out;
            }
        }
    }

    #[test]
    fn sizes_follow_the_protocol() {
        assert_eq!(entry_size(1, false), 32);
        assert_eq!(entry_size(8, false), 32);
        assert_eq!(entry_size(9, false), 40);
        assert_eq!(entry_size(8, true), 160);
        assert_eq!(entry_size(255, true), 128 + 280);
    }

    #[test]
    fn every_budget_lists_every_entry_once() {
        let names: Vec<String> = (0..40).map(|i| "x".repeat(1 + i * 7 % 60)).collect();
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut want = vec![".".to_string(), "..".to_string()];
        want.extend(names.iter().map(|s| s.to_string()));
        for plus in [false, true] {
            // Any budget that holds the largest entry (a kernel's always does).
            let max = entry_size(60, plus);
            for budget in [max, max + 7, 2 * max + 1, 1000, 4096, 1 << 20] {
                assert_eq!(walk(&names, budget, plus), want, "{budget} {plus}");
            }
        }
    }

    #[test]
    fn a_page_never_exceeds_its_budget_and_ends_at_the_end() {
        let p = page(0, 4096, true, 100, |_| 20);
        assert!(p.dot && p.dotdot);
        assert_eq!(p.end, (4096 - 2 * 160) / entry_size(20, true));
        let last = page(Page::cookie(99), 4096, true, 100, |_| 20);
        assert_eq!((last.first, last.end), (100, 100));
        assert!(!last.dot && !last.dotdot);
        // A budget too small for anything sends nothing (no reference taken).
        assert_eq!(
            page(5, 10, false, 100, |_| 1),
            Page {
                dot: false,
                dotdot: false,
                first: 3,
                end: 3
            }
        );
    }
}
