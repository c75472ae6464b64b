//! Uploads: existence checks, cross-repository mounts, blob pushes (monolithic or
//! chunked with resume; of a known digest, or streamed with the digest computed
//! on the way and sent with the final PUT), and manifest pushes.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{errors, manifests, Client, Req, Scope};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::reference::{validate_repository, validate_tag, Selector};

/// Blobs up to this size are pushed with one PUT; larger ones in PATCH chunks.
pub const MONOLITHIC_LIMIT: u64 = 16 * 1024 * 1024;
/// The size of one PATCH chunk.
pub const CHUNK_SIZE: usize = 8 * 1024 * 1024;

const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

impl Client {
    /// Whether `repo` already has blob `digest` (HEAD, with push scope).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        validate_repository(repo)?;
        let what = format!("blob {digest} in {repo}");
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .send(Req::new(Method::HEAD, url, Scope::push(repo), what.clone()))
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(errors::from_response(resp, &what, self.inner.timeout).await),
        }
    }

    /// Ask the registry to mount blob `digest` from `from_repo` into `repo`.
    /// `Ok(true)`: mounted (201). `Ok(false)`: the registry declined (202); the caller
    /// uploads the blob instead (the session the registry opened is cancelled).
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from_repo: &str) -> Result<bool> {
        validate_repository(repo)?;
        validate_repository(from_repo)?;
        let what = format!("mount of blob {digest} from {from_repo} into {repo}");
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from_repo);
        let mut req = Req::new(
            Method::POST,
            url,
            Scope::mount(repo, from_repo),
            what.clone(),
        );
        req.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.send(req).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                if let Ok(loc) = location(&resp, &what) {
                    self.cancel_upload(repo, loc).await;
                }
                Ok(false)
            }
            _ => Err(errors::from_response(resp, &what, self.inner.timeout).await),
        }
    }

    /// Push blob `digest` of `size` bytes to `repo`, reading `body`. Does nothing if the
    /// blob is already there (without reading `body`). The bytes are verified against
    /// `digest` and `size` before the upload is committed. Small blobs go in one PUT;
    /// larger ones in [`CHUNK_SIZE`] PATCHes, resumed from the registry's upload status
    /// after a transient failure.
    pub async fn push_blob<S>(&self, repo: &str, digest: &Digest, size: u64, body: S) -> Result<()>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        validate_repository(repo)?;
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let what = format!("upload of blob {digest} to {repo}");
        let body = std::pin::pin!(body);
        let pushed = if size <= MONOLITHIC_LIMIT {
            self.push_monolithic(repo, digest, size, body, &what).await
        } else {
            self.push_chunked(repo, digest, size, body, &what).await
        };
        match pushed {
            // Another client pushing the same blob at the same moment can
            // make the registry refuse ours (distribution: BLOB_UPLOAD_INVALID);
            // the blob is there all the same.
            Err(e) if self.blob_exists(repo, digest).await.unwrap_or(false) => {
                tracing::debug!("{what}: {e}; the blob is there (pushed by someone else)");
                Ok(())
            }
            other => other,
        }
    }

    /// Push a blob whose digest and size are known only at its end: `body` is
    /// read once, hashed as it goes, and sent as it comes (so the producer and
    /// the upload overlap). Up to [`MONOLITHIC_LIMIT`] bytes it is buffered and
    /// pushed with one PUT (skipped if the registry has it); beyond, it goes in
    /// [`CHUNK_SIZE`] PATCHes, resumed after transient failures like
    /// [`push_blob`](Self::push_blob), and the final PUT carries the digest.
    /// An error item in `body` cancels the upload. Returns the digest and size.
    pub async fn push_blob_stream<S>(&self, repo: &str, body: S) -> Result<(Digest, u64)>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        validate_repository(repo)?;
        let what = format!("upload of a streamed blob to {repo}");
        let mut body = std::pin::pin!(body);
        let mut hasher = Hasher::new(crate::digest::Algorithm::Sha256);
        let mut buf = BytesMut::new();
        let mut ended = !fill_hashed(
            &mut body,
            &mut hasher,
            &mut buf,
            MONOLITHIC_LIMIT as usize + 1,
        )
        .await?;
        if ended {
            let digest = hasher.finish();
            let size = buf.len() as u64;
            if !self.blob_exists(repo, &digest).await? {
                let one = futures_util::stream::iter([Ok(buf.freeze())]);
                let what = format!("upload of blob {digest} to {repo}");
                self.push_monolithic(repo, &digest, size, std::pin::pin!(one), &what)
                    .await?;
            }
            return Ok((digest, size));
        }
        let mut loc = self.start_upload(repo, &what).await?;
        let mut sent = 0u64;
        let result: Result<()> = async {
            loop {
                while buf.len() >= CHUNK_SIZE || (ended && !buf.is_empty()) {
                    let n = buf.len().min(CHUNK_SIZE);
                    let chunk = buf.split_to(n).freeze();
                    loc = self
                        .patch_chunk(repo, loc.clone(), sent, chunk, &what)
                        .await?;
                    sent += n as u64;
                }
                if ended {
                    return Ok(());
                }
                ended = !fill_hashed(&mut body, &mut hasher, &mut buf, CHUNK_SIZE).await?;
            }
        }
        .await;
        if let Err(e) = result {
            self.cancel_upload(repo, loc).await;
            return Err(e);
        }
        let digest = hasher.finish();
        let what = format!("upload of blob {digest} to {repo}");
        let mut url = loc;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req = Req::new(Method::PUT, url, Scope::push(repo), what.clone());
        req.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.send(req).await?;
        expect_status(resp, StatusCode::CREATED, &what, self).await?;
        Ok((digest, sent))
    }

    async fn push_monolithic<S>(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        mut body: std::pin::Pin<&mut S>,
        what: &str,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let mut buf = BytesMut::with_capacity(size as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if buf.len() as u64 + chunk.len() as u64 > size {
                return Err(size_error(
                    what,
                    size,
                    buf.len() as u64 + chunk.len() as u64,
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.len() as u64 != size {
            return Err(size_error(what, size, buf.len() as u64));
        }
        digest.verify(&buf, what)?;
        let data = buf.freeze();
        let mut attempt = 0;
        loop {
            let res = async {
                let loc = self.start_upload(repo, what).await?;
                let mut url = loc;
                url.query_pairs_mut()
                    .append_pair("digest", &digest.to_string());
                let mut req = Req::new(Method::PUT, url, Scope::push(repo), what);
                req.headers.insert(CONTENT_TYPE, OCTET_STREAM);
                req.body = Some(data.clone());
                req.idempotent = false;
                let resp = self.send(req).await?;
                expect_status(resp, StatusCode::CREATED, what, self)
                    .await
                    .map(|_| ())
            }
            .await;
            match res {
                Err(e) if e.is_transient() && attempt < self.inner.retry.retries => {
                    tracing::debug!("{what}: {e}; retrying");
                    if self.blob_exists(repo, digest).await.unwrap_or(false) {
                        return Ok(());
                    }
                    let _ = self
                        .backoff(attempt, None, std::time::Instant::now() + self.inner.budget)
                        .await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn push_chunked<S>(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        mut body: std::pin::Pin<&mut S>,
        what: &str,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes>> + Send,
    {
        let mut loc = self.start_upload(repo, what).await?;
        let mut hasher = Hasher::new(digest.algorithm());
        let mut sent = 0u64;
        let mut ended = false;
        let result: Result<()> = async {
            while !ended {
                let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
                ended = !fill_hashed(&mut body, &mut hasher, &mut buf, CHUNK_SIZE).await?;
                if sent + buf.len() as u64 > size {
                    return Err(size_error(what, size, sent + buf.len() as u64));
                }
                if !buf.is_empty() {
                    let chunk = buf.freeze();
                    loc = self
                        .patch_chunk(repo, loc.clone(), sent, chunk.clone(), what)
                        .await?;
                    sent += chunk.len() as u64;
                }
            }
            if sent != size {
                return Err(size_error(what, size, sent));
            }
            hasher.clone().finish().expect(digest, what)?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.cancel_upload(repo, loc).await;
            return Err(e);
        }
        let mut url = loc;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req = Req::new(Method::PUT, url, Scope::push(repo), what);
        req.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.send(req).await?;
        expect_status(resp, StatusCode::CREATED, what, self)
            .await
            .map(|_| ())
    }

    /// PATCH `chunk` (starting at blob offset `start`) to the session at `loc`; after a
    /// transient failure, ask the registry how much it has and send the rest.
    async fn patch_chunk(
        &self,
        repo: &str,
        mut loc: Url,
        start: u64,
        chunk: Bytes,
        what: &str,
    ) -> Result<Url> {
        let mut done = 0usize;
        let mut attempt = 0;
        loop {
            let part = chunk.slice(done..);
            let from = start + done as u64;
            let to = from + part.len() as u64 - 1;
            let mut req = Req::new(Method::PATCH, loc.clone(), Scope::push(repo), what);
            req.headers.insert(CONTENT_TYPE, OCTET_STREAM);
            req.headers.insert(
                CONTENT_RANGE,
                HeaderValue::from_str(&format!("{from}-{to}")).expect("digits"),
            );
            req.body = Some(part);
            req.idempotent = false;
            let res = match self.send(req).await {
                Ok(resp) => expect_status(resp, StatusCode::ACCEPTED, what, self).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(resp) => return location(&resp, what),
                Err(e) if e.is_transient() && attempt < self.inner.retry.retries => {
                    tracing::debug!("{what}: PATCH at {from}: {e}; asking for the upload status");
                    let _ = self
                        .backoff(attempt, None, std::time::Instant::now() + self.inner.budget)
                        .await;
                    attempt += 1;
                    let (have, new_loc) = self.upload_status(repo, &loc, what).await?;
                    loc = new_loc;
                    if have < start || have > start + chunk.len() as u64 {
                        return Err(Error::Registry {
                            status: 416,
                            message: format!(
                                "{what}: cannot resume: the registry has {have} bytes, the chunk starts at {start}"
                            ),
                        });
                    }
                    done = (have - start) as usize;
                    if done == chunk.len() {
                        return Ok(loc);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How many bytes the upload session holds (`GET` → 204 with `Range: 0-<last>`).
    async fn upload_status(&self, repo: &str, loc: &Url, what: &str) -> Result<(u64, Url)> {
        let resp = self
            .send(Req::new(Method::GET, loc.clone(), Scope::push(repo), what))
            .await?;
        let resp = expect_status(resp, StatusCode::NO_CONTENT, what, self).await?;
        let range = resp
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::invalid(format!("{what}: upload status without Range")))?;
        let end: u64 = range
            .trim()
            .trim_start_matches("bytes=")
            .split_once('-')
            .and_then(|(_, b)| b.trim().parse().ok())
            .ok_or_else(|| Error::invalid(format!("{what}: bad upload Range {range:?}")))?;
        // distribution reports "0-0" for an empty session.
        let have = if end == 0 { 0 } else { end + 1 };
        let loc = location(&resp, what).unwrap_or_else(|_| loc.clone());
        Ok((have, loc))
    }

    async fn start_upload(&self, repo: &str, what: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let mut req = Req::new(Method::POST, url, Scope::push(repo), what);
        req.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.send(req).await?;
        let resp = expect_status(resp, StatusCode::ACCEPTED, what, self).await?;
        location(&resp, what)
    }

    /// Best effort: cancel an upload session.
    async fn cancel_upload(&self, repo: &str, loc: Url) {
        let _ = self
            .send(Req::new(
                Method::DELETE,
                loc,
                Scope::push(repo),
                "cancel upload",
            ))
            .await;
    }

    /// Push a manifest under a tag or digest; returns its digest. By digest, the bytes
    /// must hash to it. Push manifests last, after every blob they name.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &Selector,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest> {
        validate_repository(repo)?;
        if bytes.len() > manifests::MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge(format!(
                "manifest of {} bytes (limit {})",
                bytes.len(),
                manifests::MAX_MANIFEST_SIZE
            )));
        }
        let digest = match reference {
            Selector::Tag(t) => {
                validate_tag(t)?;
                Digest::sha256_of(&bytes)
            }
            Selector::Digest(d) => {
                d.verify(&bytes, "manifest to push")?;
                d.clone()
            }
        };
        let what = format!("push of manifest {repo}:{reference}");
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let mut req = Req::new(Method::PUT, url, Scope::push(repo), what.clone());
        req.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type)
                .map_err(|_| Error::invalid(format!("media type {media_type:?}")))?,
        );
        req.body = Some(bytes);
        let resp = self.send(req).await?;
        let resp = expect_status(resp, StatusCode::CREATED, &what, self).await?;
        if let Some(Ok(d)) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::parse::<Digest>)
        {
            if d.algorithm() == digest.algorithm() {
                d.expect(&digest, &what)?;
            }
        }
        Ok(digest)
    }
}

async fn expect_status(
    resp: Response,
    want: StatusCode,
    what: &str,
    c: &Client,
) -> Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    if resp.status().is_success() {
        return Err(Error::Registry {
            status: resp.status().as_u16(),
            message: format!("{what}: expected HTTP {}", want.as_u16()),
        });
    }
    Err(errors::from_response(resp, what, c.inner.timeout).await)
}

/// The upload session URL from `Location`, resolved against the request URL.
fn location(resp: &Response, what: &str) -> Result<Url> {
    let v = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::invalid(format!("{what}: no Location in the registry's answer")))?;
    resp.url()
        .join(v)
        .map_err(|e| Error::invalid(format!("{what}: Location {v:?}: {e}")))
}

fn size_error(what: &str, want: u64, got: u64) -> Error {
    Error::DigestMismatch {
        what: format!("{what} (size)"),
        expected: format!("{want} bytes"),
        actual: format!("{got} bytes"),
    }
}
/// Append chunks of `body` to `buf`, hashing each, until `buf` holds at least
/// `want` bytes. Returns false once the stream has ended.
async fn fill_hashed<S>(
    body: &mut std::pin::Pin<&mut S>,
    hasher: &mut Hasher,
    buf: &mut BytesMut,
    want: usize,
) -> Result<bool>
where
    S: Stream<Item = Result<Bytes>> + ?Sized,
{
    while buf.len() < want {
        match body.next().await {
            None => return Ok(false),
            Some(chunk) => {
                let chunk = chunk?;
                hasher.update(&chunk);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(true)
}
