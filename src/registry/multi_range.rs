//! Several ranges of one blob in one request (`Range: bytes=a-b,c-d`),
//! answered as `multipart/byteranges` ([`super::byteranges`]). Each request
//! saved is a round trip on a network and, on the registry, a request's
//! fixed cost (the distribution registry spends about 5 ms of CPU on each
//! blob GET, whatever its size). A registry that answers with the whole blob
//! (200), one range only, or a body that does not parse is asked one range
//! per request from then on; the bytes are never trusted either way (the
//! caller verifies them).

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Response, StatusCode};

use super::blobs::unexpected;
use super::{byteranges, errors, Client};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::validate_repository;

/// Room allowed per part for its boundary line and headers.
const PART_OVERHEAD: usize = 512;

impl Client {
    /// The bytes of each of `ranges` (`(offset, len)`) of a blob, in order,
    /// NOT verified. One request when the registry answers multi-range
    /// requests, else one request per range (side by side). A range comes
    /// back short only where the blob ends.
    pub async fn blob_ranges(
        &self,
        repo: &str,
        digest: &Digest,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<Bytes>> {
        validate_repository(repo)?;
        let asked = ranges.iter().filter(|r| r.1 > 0).count();
        if asked >= 2 && !self.inner.single_ranges.load(Ordering::Relaxed) {
            match self.multi_range(repo, digest, ranges).await? {
                Ok(parts) => return Ok(parts),
                Err(why) => {
                    tracing::warn!(
                        registry = %self.inner.registry, why = %why,
                        "the registry does not answer multi-range requests; asking one range at a time"
                    );
                    self.inner.single_ranges.store(true, Ordering::Relaxed);
                }
            }
        }
        let one = ranges
            .iter()
            .map(|&(offset, len)| self.blob_range(repo, digest, offset, len));
        futures_util::future::try_join_all(one).await
    }

    /// One multi-range request: `Ok(Ok(bytes))`, or `Ok(Err(why))` when
    /// the answer is not a usable `multipart/byteranges` (fall back), or a
    /// transport error.
    async fn multi_range(
        &self,
        repo: &str,
        digest: &Digest,
        ranges: &[(u64, u64)],
    ) -> Result<std::result::Result<Vec<Bytes>, String>> {
        let mut spec = String::from("bytes=");
        let mut cap = 1024usize;
        for &(offset, len) in ranges.iter().filter(|r| r.1 > 0) {
            let last = offset
                .checked_add(len - 1)
                .ok_or_else(|| Error::invalid("blob range overflows"))?;
            if spec.len() > 6 {
                spec.push(',');
            }
            spec.push_str(&format!("{offset}-{last}"));
            cap = usize::try_from(len)
                .ok()
                .and_then(|l| cap.checked_add(l + PART_OVERHEAD))
                .ok_or_else(|| Error::TooLarge(format!("ranges of blob {digest}")))?;
        }
        let what = format!("blob {digest} in {repo} ({} ranges)", ranges.len());
        let resp = self
            .blob_get_range(repo, digest, Some(spec), &what, None)
            .await?;
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => return Ok(Err("it sent the whole blob".into())),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Error::invalid(format!(
                    "{what}: range not satisfiable (past the end of the blob?)"
                )))
            }
            s => return Err(unexpected(s, &what)),
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(boundary) = byteranges::boundary(&content_type) else {
            return Ok(Err(format!("it answered with {content_type:?}")));
        };
        let Some(body) = self.body_upto(resp, cap, &what).await? else {
            return Err(Error::invalid(format!(
                "{what}: server sent more than the ranges"
            )));
        };
        Ok(byteranges::parts(&body, boundary).and_then(|p| byteranges::pick(&p, ranges)))
    }

    /// `resp`'s body, or `None` past `cap` bytes; each gap between bytes is
    /// bounded by the client's timeout.
    async fn body_upto(&self, resp: Response, cap: usize, what: &str) -> Result<Option<Bytes>> {
        let mut out = BytesMut::new();
        let mut body = resp.bytes_stream();
        let idle = self.inner.timeout;
        loop {
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Err(_) => return Err(Error::Timeout(format!("{what}: no data for {idle:?}"))),
                Ok(None) => return Ok(Some(out.freeze())),
                Ok(Some(Err(e))) => return Err(errors::from_reqwest(e, what)),
                Ok(Some(Ok(c))) => c,
            };
            self.inner
                .counters
                .bytes_received
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if out.len() + chunk.len() > cap {
                return Ok(None);
            }
            out.extend_from_slice(&chunk);
        }
    }
}
