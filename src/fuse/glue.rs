//! The one place every operation of both mounts goes through: it runs the
//! operation off the dispatch thread (or inline when it only touches memory),
//! times it into `regfs_fuse_op_duration_seconds{op}`, logs a failure once
//! with its whole error chain, counts it, and turns the [`Error`] into an errno.
//! Also the copying of a directory page into a fuser reply.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use tokio::runtime::Handle;

use super::{file_attr, file_type};
use crate::error::{Error, Result};
use crate::fs::{Attr, PageEntry, REPLY_BUDGET};
use crate::telemetry::OpTimer;

/// Counters of operations that failed, for status and tests.
#[derive(Default)]
pub struct OpErrors {
    /// Failed operations (other than the everyday ENOENT, ENODATA, EOPNOTSUPP, EROFS).
    pub count: AtomicU64,
}

/// Runs, times, counts and answers the operations of one mount.
#[derive(Clone)]
pub(crate) struct Glue {
    rt: Handle,
    errors: Arc<OpErrors>,
}

impl Glue {
    /// Operations run on runtime `rt`.
    pub(crate) fn new(rt: Handle) -> Glue {
        Glue {
            rt,
            errors: Arc::default(),
        }
    }

    /// Answer with `op`, polled once right here: if it completes without
    /// waiting (everything it needs is in memory) the reply goes out at once;
    /// otherwise it continues as a task, so the dispatch thread never waits on
    /// the network or the disk.
    pub(crate) fn run<T, F, R>(&self, name: &'static str, op: F, reply: R)
    where
        T: 'static,
        F: Future<Output = Result<T>> + Send + 'static,
        R: FnOnce(std::result::Result<T, Errno>) + Send + 'static,
    {
        let (timer, errors) = (OpTimer::start(name), self.errors.clone());
        let task = async move {
            let _timer = timer;
            reply(op.await.map_err(|e| errno(name, &e, &errors)));
        };
        let _rt = self.rt.enter();
        let mut task = Box::pin(task);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            // Futures re-register their waker on every poll: the task's poll
            // replaces the no-op one.
            self.rt.spawn(task);
        }
    }

    /// Answer with `op` run on tokio's blocking pool (it may touch the disk,
    /// or block on the network through the runtime).
    pub(crate) fn run_blocking<T, F, R>(&self, name: &'static str, op: F, reply: R)
    where
        T: 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
        R: FnOnce(std::result::Result<T, Errno>) + Send + 'static,
    {
        let (timer, errors) = (OpTimer::start(name), self.errors.clone());
        self.rt.spawn_blocking(move || {
            let _timer = timer;
            reply(op().map_err(|e| errno(name, &e, &errors)));
        });
    }

    /// Answer with `op` right here: for operations that only touch memory
    /// (forget, release, flush, refusals).
    pub(crate) fn inline<T>(
        &self,
        name: &'static str,
        op: impl FnOnce() -> Result<T>,
        reply: impl FnOnce(std::result::Result<T, Errno>),
    ) {
        let _timer = OpTimer::start(name);
        reply(op().map_err(|e| errno(name, &e, &self.errors)));
    }
}

/// Log (once, with the whole error chain), count and map a failed operation.
fn errno(op: &str, e: &Error, errors: &OpErrors) -> Errno {
    let n = e.errno();
    if matches!(e.root(), Error::DigestMismatch { .. }) {
        metrics::counter!(crate::telemetry::VERIFICATION_FAILURES).increment(1);
    }
    if n == libc::ENOENT || n == libc::ENODATA || n == libc::EOPNOTSUPP || n == libc::EROFS {
        tracing::debug!(op, error = %e.chain(), "fuse op failed");
    } else {
        errors.count.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(op, error = %e.chain(), errno = n, "fuse op failed");
    }
    Errno::from_i32(n)
}

/// Answer with `Ok(())` or the errno.
pub(crate) fn empty(reply: fuser::ReplyEmpty) -> impl FnOnce(std::result::Result<(), Errno>) {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answer an entry reply (lookup, mkdir, …) with its attributes or the errno.
pub(crate) fn entry(reply: fuser::ReplyEntry) -> impl FnOnce(std::result::Result<Attr, Errno>) {
    move |r| match r {
        Ok(a) => reply.entry(&a.ttl, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// Answer an attribute reply.
pub(crate) fn attr(reply: fuser::ReplyAttr) -> impl FnOnce(std::result::Result<Attr, Errno>) {
    move |r| match r {
        Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
        Err(e) => reply.error(e),
    }
}

/// Answer a data reply.
pub(crate) fn data(reply: fuser::ReplyData) -> impl FnOnce(std::result::Result<Vec<u8>, Errno>) {
    move |r| match r {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(e),
    }
}

/// Answer an xattr value (`size` 0 asks for its length).
pub(crate) fn xattr(
    reply: fuser::ReplyXattr,
    size: u32,
) -> impl FnOnce(std::result::Result<Vec<u8>, Errno>) {
    move |r| match r {
        Ok(v) => reply_xattr(reply, size, &v),
        Err(e) => reply.error(e),
    }
}

/// Answer an xattr name list (NUL-terminated names).
pub(crate) fn xattr_names(
    reply: fuser::ReplyXattr,
    size: u32,
) -> impl FnOnce(std::result::Result<Vec<Vec<u8>>, Errno>) {
    move |r| match r {
        Ok(names) => {
            let mut buf = Vec::new();
            for n in names {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
            reply_xattr(reply, size, &buf)
        }
        Err(e) => reply.error(e),
    }
}

/// An xattr value or its size, ERANGE when it does not fit.
pub(crate) fn reply_xattr(reply: fuser::ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

/// The size of the reply the kernel asked for. fuser (pinned at 0.18) does
/// not pass it to the filesystem but shows it, as `max_size`, in the reply's
/// `Debug` output; without it, [`REPLY_BUDGET`] (one page: no kernel asks for
/// less).
pub(crate) fn reply_size(reply: &impl std::fmt::Debug) -> usize {
    let text = format!("{reply:?}");
    text.split("max_size: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(REPLY_BUDGET)
}

/// Copy a directory page (computed for [`reply_size`] bytes) into a
/// `readdir` reply.
pub(crate) fn dir_page(
    reply: ReplyDirectory,
) -> impl FnOnce(std::result::Result<Vec<PageEntry>, Errno>) {
    move |r| match r {
        Ok(page) => {
            let mut reply = reply;
            for e in &page {
                if reply.add(
                    INodeNo(e.ino),
                    e.cookie,
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    tracing::warn!("readdir page larger than the kernel's buffer");
                    break;
                }
            }
            reply.ok()
        }
        Err(e) => reply.error(e),
    }
}

/// Copy a directory page into a `readdirplus` reply. Entries without
/// attributes (`.`, `..`, and entries whose attributes need the network) go
/// out uncached: the kernel looks them up when they are used. Entries that
/// do not fit (only if the page was computed for a larger size than the
/// kernel's) go to `unsent`, to give back the references they took.
pub(crate) fn dir_page_plus(
    reply: ReplyDirectoryPlus,
    unsent: impl FnOnce(&[PageEntry]) + Send + 'static,
) -> impl FnOnce(std::result::Result<Vec<PageEntry>, Errno>) {
    move |r| match r {
        Ok(page) => {
            let mut reply = reply;
            let zero = Duration::ZERO;
            for (i, e) in page.iter().enumerate() {
                let (ttl, fa) = match &e.attr {
                    Some(a) => (a.ttl, file_attr(a)),
                    None => (
                        zero,
                        FileAttr {
                            kind: file_type(e.kind),
                            ..file_attr(&Attr::dir(e.ino, SystemTime::UNIX_EPOCH, zero))
                        },
                    ),
                };
                let name = OsStr::from_bytes(&e.name);
                if reply.add(INodeNo(e.ino), e.cookie, name, &ttl, &fa, Generation(0)) {
                    tracing::warn!("readdirplus page larger than the kernel's buffer");
                    unsent(&page[i..]);
                    break;
                }
            }
            reply.ok()
        }
        Err(e) => reply.error(e),
    }
}
