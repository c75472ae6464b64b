//! Blobs: verified streaming GET (with transparent resume by Range), unverified
//! byte ranges, and HEAD for the size.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::{Method, Response, StatusCode};

use super::{errors, Client, Req, Scope};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::reference::validate_repository;

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A blob body being received: each chunk is hashed as it passes, and the end is
/// only reported once the whole blob matched its digest (and size, when known).
pub struct BlobStream {
    client: Client,
    repo: String,
    digest: Digest,
    expected_size: Option<u64>,
    hasher: Option<Hasher>,
    received: u64,
    body: Option<Body>,
    /// Bytes still to drop from the current body (a server that ignored our Range).
    skip: u64,
    reconnects_left: u32,
    /// When the last byte arrived (or the request started): the client's
    /// no-progress budget runs from here.
    progress_at: Instant,
    done: bool,
    what: String,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.digest)
            .field("received", &self.received)
            .field("expected_size", &self.expected_size)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Start receiving blob `digest` of `repo`. `size`, when known (from a
    /// descriptor), is enforced too.
    pub async fn blob(&self, repo: &str, digest: &Digest, size: Option<u64>) -> Result<BlobStream> {
        validate_repository(repo)?;
        let what = format!("blob {digest} in {repo}");
        let resp = self.blob_get(repo, digest, None, &what, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(resp.status(), &what));
        }
        if let (Some(want), Some(len)) = (size, resp.content_length()) {
            if want != len {
                return Err(size_mismatch(&what, want, len));
            }
        }
        Ok(BlobStream {
            client: self.clone(),
            repo: repo.to_string(),
            digest: digest.clone(),
            expected_size: size.or(resp.content_length()),
            hasher: Some(Hasher::new(digest.algorithm())),
            received: 0,
            body: Some(Box::pin(resp.bytes_stream())),
            skip: 0,
            reconnects_left: self.inner.retry.retries,
            progress_at: Instant::now(),
            done: false,
            what,
        })
    }

    /// Bytes `offset..offset+len` of a blob, by a Range request. NOT verified: the
    /// caller checks what it reads. A server that ignores Range (200) is handled by
    /// skipping to the range in the full body, reading no further than its end.
    /// Fewer bytes come back only when the blob ends before `offset + len`.
    pub async fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        validate_repository(repo)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| Error::invalid("blob range overflows"))?;
        let cap =
            usize::try_from(len).map_err(|_| Error::TooLarge(format!("range of {len} bytes")))?;
        let what = format!("blob {digest} in {repo} bytes {offset}-{end}");
        let resp = self
            .blob_get(repo, digest, Some((offset, Some(end))), &what, None)
            .await?;
        let status = resp.status();
        let (skip, total) = match status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, _stop, total) = content_range(&resp, &what)?;
                if start != offset {
                    return Err(Error::invalid(format!(
                        "{what}: server sent a range starting at {start}"
                    )));
                }
                (0, total)
            }
            StatusCode::OK => (offset, resp.content_length()),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Error::invalid(format!(
                    "{what}: range not satisfiable (past the end of the blob?)"
                )))
            }
            s => return Err(unexpected(s, &what)),
        };
        let mut out = BytesMut::with_capacity(cap.min(16 * 1024 * 1024));
        let mut to_skip = skip;
        let mut body = resp.bytes_stream();
        let idle = self.inner.timeout;
        while out.len() < cap {
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Err(_) => return Err(Error::Timeout(format!("{what}: no data for {idle:?}"))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(errors::from_reqwest(e, &what)),
                Ok(Some(Ok(c))) => c,
            };
            self.inner
                .counters
                .bytes_received
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let mut c = &chunk[..];
            if to_skip > 0 {
                let n = (to_skip.min(c.len() as u64)) as usize;
                c = &c[n..];
                to_skip -= n as u64;
            }
            let room = cap - out.len();
            if status == StatusCode::PARTIAL_CONTENT && c.len() > room {
                return Err(Error::invalid(format!(
                    "{what}: server sent more than the range"
                )));
            }
            out.extend_from_slice(&c[..c.len().min(room)]);
        }
        drop(body); // stop receiving a full body past the range
        if out.len() < cap {
            let blob_end = total.unwrap_or(0);
            let short_ok = total.is_some() && offset + out.len() as u64 == blob_end;
            if !short_ok {
                return Err(Error::invalid(format!(
                    "{what}: body ended after {} of {len} bytes",
                    out.len()
                )));
            }
        }
        Ok(out.freeze())
    }

    /// The blob's size by HEAD; `None` if the registry does not have it.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        validate_repository(repo)?;
        let what = format!("blob {digest} in {repo}");
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .send(Req::new(Method::HEAD, url, Scope::pull(repo), what.clone()))
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(errors::from_response(resp, &what, self.inner.timeout).await),
        }
    }

    /// GET a blob, optionally with `Range: bytes=a-[b]`; error statuses mapped (206 and 200
    /// and 416 returned).
    async fn blob_get(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
        what: &str,
        deadline: Option<Instant>,
    ) -> Result<Response> {
        let range = range.map(|(a, b)| match b {
            Some(b) => format!("bytes={a}-{b}"),
            None => format!("bytes={a}-"),
        });
        self.blob_get_range(repo, digest, range, what, deadline)
            .await
    }

    /// [`Client::blob_get`] with a `Range` header as given (`bytes=a-b,c-d`).
    pub(super) async fn blob_get_range(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<String>,
        what: &str,
        deadline: Option<Instant>,
    ) -> Result<Response> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let mut req = Req::new(Method::GET, url, Scope::pull(repo), what);
        req.deadline = deadline;
        if let Some(v) = range {
            let v = HeaderValue::from_str(&v).map_err(|_| Error::invalid("a Range header"))?;
            req.headers.insert(RANGE, v);
        }
        let resp = self.send(req).await?;
        let s = resp.status();
        if s.is_success() || s == StatusCode::RANGE_NOT_SATISFIABLE {
            Ok(resp)
        } else {
            Err(errors::from_response(resp, what, self.inner.timeout).await)
        }
    }
}

/// Parse `Content-Range: bytes a-b/total` (total may be `*`).
fn content_range(resp: &Response, what: &str) -> Result<(u64, u64, Option<u64>)> {
    let bad = || Error::invalid(format!("{what}: 206 without a valid Content-Range"));
    let v = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad)?;
    parse_content_range(v).ok_or_else(bad)
}

/// `bytes a-b/total` → (a, b, total).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a, b, total))
}

pub(super) fn unexpected(status: StatusCode, what: &str) -> Error {
    Error::Registry {
        status: status.as_u16(),
        message: format!("{what}: unexpected status"),
    }
}

fn size_mismatch(what: &str, want: u64, got: u64) -> Error {
    Error::DigestMismatch {
        what: format!("{what} (size)"),
        expected: format!("{want} bytes"),
        actual: format!("{got} bytes"),
    }
}

impl BlobStream {
    /// Next chunk of the body. Bytes are hashed as they pass; after the last chunk it
    /// returns `Ok(None)` only if the whole blob hashed to the digest (and the size
    /// matched when known), else [`Error::DigestMismatch`]. On a transient error
    /// mid-body it reconnects with `Range: bytes=<received>-` (bounded retries) and
    /// continues transparently.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        let idle = self.client.inner.timeout;
        loop {
            let Some(body) = self.body.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let err = match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.client
                        .inner
                        .counters
                        .bytes_received
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    let mut chunk = chunk;
                    if self.skip > 0 {
                        let n = self.skip.min(chunk.len() as u64) as usize;
                        let _ = chunk.split_to(n);
                        self.skip -= n as u64;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    let n = chunk.len() as u64;
                    if let Some(want) = self.expected_size {
                        if self.received + n > want {
                            self.fail();
                            return Err(size_mismatch(&self.what, want, self.received + n));
                        }
                    }
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    self.received += n;
                    self.progress_at = Instant::now();
                    return Ok(Some(chunk));
                }
                Ok(None) => {
                    if self.expected_size.is_some_and(|w| self.received < w) {
                        Error::Network(
                            format!("{}: body ended after {} bytes", self.what, self.received)
                                .into(),
                        )
                    } else {
                        return self.finish().map(|()| None);
                    }
                }
                Ok(Some(Err(e))) => errors::from_reqwest(e, &self.what),
                Err(_) => Error::Timeout(format!("{}: no data for {idle:?}", self.what)),
            };
            // A transient failure mid-body: resume where we are.
            self.body = None;
            if !err.is_transient() || self.reconnects_left == 0 {
                // A truncated transfer stays a (transient) network error: the caller may
                // retry; it is not an integrity failure.
                self.fail();
                return Err(err);
            }
            tracing::debug!(
                "{}: resuming at byte {} after: {err}",
                self.what,
                self.received
            );
        }
    }

    /// Bytes received (and hashed) so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The size the blob must have, when known (from the caller or Content-Length).
    pub fn expected_size(&self) -> Option<u64> {
        self.expected_size
    }

    /// The digest being verified.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    fn fail(&mut self) {
        self.done = true;
        self.body = None;
    }

    fn finish(&mut self) -> Result<()> {
        self.done = true;
        self.body = None;
        if let Some(w) = self.expected_size {
            if self.received != w {
                return Err(size_mismatch(&self.what, w, self.received));
            }
        }
        let h = self.hasher.take().expect("finish runs once");
        h.finish().expect(&self.digest, &self.what)
    }

    async fn reconnect(&mut self) -> Result<()> {
        if self.reconnects_left == 0 {
            self.fail();
            return Err(Error::Network(
                format!("{}: too many interruptions", self.what).into(),
            ));
        }
        let attempt = self.client.inner.retry.retries - self.reconnects_left;
        self.reconnects_left -= 1;
        let deadline = self.progress_at + self.client.inner.budget;
        if !self.client.backoff(attempt, None, deadline).await {
            self.fail();
            return Err(Error::Timeout(format!(
                "{}: no progress within {:?}",
                self.what, self.client.inner.budget
            )));
        }
        let range = (self.received > 0).then_some((self.received, None));
        let resp = match self
            .client
            .blob_get(&self.repo, &self.digest, range, &self.what, Some(deadline))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail();
                return Err(e);
            }
        };
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let (start, _, _) = content_range(&resp, &self.what)?;
                if start != self.received {
                    self.fail();
                    return Err(Error::invalid(format!(
                        "{}: resumed at byte {start}, wanted {}",
                        self.what, self.received
                    )));
                }
                self.skip = 0;
            }
            StatusCode::OK => self.skip = self.received,
            s => {
                self.fail();
                return Err(unexpected(s, &self.what));
            }
        }
        self.body = Some(Box::pin(resp.bytes_stream()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 99, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
