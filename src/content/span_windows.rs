//! The windows of a published span index, fetched one at a time (issue 15):
//! a run of spans that does not start a gzip member needs the 32 KiB window
//! before its first checkpoint. It is fetched by a Range request of the
//! layer's windows blob ([`crate::layer::span_windows`]), checked against
//! its digest from the (verified) index file, and kept in the chunk cache
//! by that digest, so that a second run starting there fetches nothing.
//! One fetch per window at a time ([`super::once`]), under flight keys of
//! their own (`window …`): a window's flight never waits on a span's.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::once::{fetch_once, Fetchable};
use super::Content;
use crate::cache::Section;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::span_windows::{self, WindowTable};

/// One window of one windows blob.
struct WindowKind<'a> {
    content: &'a Content,
    repo: &'a str,
    table: &'a WindowTable,
    checkpoint: usize,
}

impl WindowKind<'_> {
    fn digest(&self) -> &Digest {
        &self.table.windows[self.checkpoint].digest
    }
}

impl Fetchable for WindowKind<'_> {
    type Value = Arc<Vec<u8>>;
    type Verified = Vec<u8>;

    fn flight_key(&self) -> String {
        format!("window {}", self.digest())
    }

    /// A window is 32 KiB at most: read whole. One that is not the size the
    /// table says (a damaged cache file) is fetched again.
    fn at_hand(&self) -> Option<Arc<Vec<u8>>> {
        let w = self.content.store.read(Section::Chunk, self.digest())?;
        let want = self.table.windows[self.checkpoint].raw_len as usize;
        (w.len() == want).then(|| Arc::new(w))
    }

    fn fetch_verified(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let r = &self.table.windows[self.checkpoint];
            let started = Instant::now();
            let packed = self
                .content
                .client
                .blob_range(self.repo, &self.table.blob, r.offset, u64::from(r.len))
                .await?;
            tracing::info!(
                windows = %self.table.blob, offset = r.offset, bytes = packed.len(),
                ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched span window"
            );
            let r = r.clone();
            crate::blocking::run(move || span_windows::unpack(&packed, &r)).await
        })
    }

    fn commit(&self, window: Vec<u8>) -> BoxFuture<'_, Result<Arc<Vec<u8>>>> {
        Box::pin(async move {
            let (store, d) = (self.content.store.clone(), self.digest().clone());
            let window = Arc::new(window);
            let w = window.clone();
            crate::blocking::run(move || store.put(Section::Chunk, &d, &w)).await?;
            Ok(window)
        })
    }

    fn log_hit(&self, w: &Arc<Vec<u8>>, started: Instant) {
        tracing::debug!(
            digest = %self.digest(), bytes = w.len(), ms = started.elapsed().as_millis() as u64,
            cache = "hit", "cache hit span window"
        );
    }
}

impl Content {
    /// The window of checkpoint `checkpoint` of a span index whose windows
    /// are in `table`'s blob in `repo`: verified, from the chunk cache or
    /// fetched. A window failing its digest fails the read (EIO).
    pub(super) async fn span_window(
        &self,
        repo: &str,
        table: &WindowTable,
        checkpoint: usize,
    ) -> Result<Arc<Vec<u8>>> {
        if checkpoint >= table.windows.len() {
            return Err(Error::invalid("span window out of range"));
        }
        let r = &table.windows[checkpoint];
        if r.len == 0 {
            // No window: nothing to fetch.
            return span_windows::unpack(&[], r).map(Arc::new);
        }
        let kind = WindowKind {
            content: self,
            repo,
            table,
            checkpoint,
        };
        fetch_once(&self.store, &self.in_flight, &kind).await
    }
}
