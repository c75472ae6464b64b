//! The distribution v2 client: ping, auth (Bearer tokens and Basic), catalog and
//! tag paging, manifests, blobs (verified streams, Range, HEAD), retries.
//!
//! It knows nothing of FUSE. One [`Client`] talks to one registry; it is cheap to
//! clone (an `Arc` inside) and safe to share across tasks.
//!
//! [`RegistryApi`] is the seam the content layer talks through: the
//! [`Client`] is its real implementation, [`MemoryRegistry`] an in-process
//! one (tests, embedding), and [`FaultyRegistry`] injects faults into the
//! latter. [`RegistryRouter`] puts many registries behind one seam
//! (`host/path` repositories).

pub mod api;
pub mod auth;
mod blobs;
mod body;
mod byteranges;
pub mod credentials;
pub mod errors;
pub mod faults;
pub mod hosts;
mod manifests;
pub mod memory;
#[cfg(test)]
mod memory_tests;
pub mod mirrors;
mod multi_range;
pub mod paging;
pub mod retry;
pub mod router;
mod tls;
mod upload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, AUTHORIZATION, LINK, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

pub use self::api::{BlobBody, BoxBlobBody, RegistryApi};
pub use self::auth::Scope;
pub use self::blobs::BlobStream;
pub use self::credentials::Credentials;
pub use self::faults::{Fault, FaultyRegistry};
pub use self::manifests::{FetchedManifest, MANIFEST_ACCEPT, MAX_MANIFEST_SIZE};
pub use self::memory::{LayerBlob, MemoryRegistry};
pub use self::mirrors::MirrorSpec;
use self::retry::RetryPolicy;
pub use self::router::RegistryRouter;
pub use self::upload::{CHUNK_SIZE, MONOLITHIC_LIMIT};
use crate::error::{Error, Result};
use crate::reference::{validate_repository, Registry};

/// How to reach and authenticate to one registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The registry (name and API host).
    pub registry: Registry,
    /// Use plain http (`--plain-http`).
    pub plain_http: bool,
    /// The user wrote `https://host`: use https even for a loopback registry.
    pub force_https: bool,
    /// Extra PEM CA files (`--ca-cert`), added to the platform's trust roots.
    pub ca_certs: Vec<PathBuf>,
    /// Accept any certificate (only when explicitly asked).
    pub insecure_skip_verify: bool,
    /// A TLS client certificate and its key (PEM files) to present (`--client-cert`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Mirrors tried in order before the registry (`--mirror`, `hosts.toml`).
    pub mirrors: Vec<MirrorSpec>,
    /// Explicit credentials; when `None`, the docker config is consulted.
    pub credentials: Option<Credentials>,
    /// The docker config directory; `None`: `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Bound for one request (connect + headers, and small bodies); for blob
    /// bodies, the longest time without receiving a byte.
    pub timeout: Duration,
    /// Attempts after the first, for transient errors.
    pub retries: u32,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl ClientOptions {
    /// Defaults for `registry`: https (http for loopback), 30 s timeout, 3 retries.
    pub fn new(registry: Registry) -> Self {
        ClientOptions {
            registry,
            plain_http: false,
            force_https: false,
            ca_certs: Vec::new(),
            insecure_skip_verify: false,
            client_cert: None,
            mirrors: Vec::new(),
            credentials: None,
            docker_config_dir: None,
            timeout: Duration::from_secs(30),
            retries: 3,
            user_agent: concat!("regfs/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// The URL scheme: https unless `plain_http`, or the registry is loopback and
    /// https was not forced.
    pub fn scheme(&self) -> Result<&'static str> {
        if self.plain_http && self.force_https {
            return Err(Error::invalid(format!(
                "registry {}: https:// given together with --plain-http",
                self.registry
            )));
        }
        Ok(if self.force_https {
            "https"
        } else if self.plain_http || self.registry.is_loopback() {
            "http"
        } else {
            "https"
        })
    }
}

impl Default for ClientOptions {
    /// Defaults with a placeholder registry (`localhost`); set `registry`.
    fn default() -> Self {
        ClientOptions::new(Registry {
            name: "localhost".into(),
            api_host: "localhost".into(),
        })
    }
}

/// Counters for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent to the registry (including retries and re-authentication).
    pub requests: u64,
    /// Body bytes received (manifests, lists, blobs).
    pub bytes_received: u64,
    /// Requests retried after a transient error.
    pub retries: u64,
    /// Requests sent to a token realm.
    pub token_fetches: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_received: AtomicU64,
    retries: AtomicU64,
}

/// A distribution v2 client for one registry.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    base: Url,
    http: reqwest::Client,
    auth: auth::Auth,
    /// One attempt's bound: connect + headers, or a gap between body bytes.
    timeout: Duration,
    /// How long a request may go without progress, all retries included
    /// (`ClientOptions::timeout`): the bound on the time to an error.
    budget: Duration,
    retry: RetryPolicy,
    counters: Counters,
    mirrors: Vec<mirrors::Mirror>,
    /// Set once the registry is seen not to answer multi-range requests.
    single_ranges: std::sync::atomic::AtomicBool,
}

/// One logical request; re-sent on retries and after authenticating.
pub(crate) struct Req {
    method: Method,
    url: Url,
    headers: HeaderMap,
    scope: Scope,
    body: Option<bytes::Bytes>,
    /// Whether a transient failure may be retried by re-sending (false for PATCH/POST,
    /// whose effect may have happened; the caller recovers instead).
    idempotent: bool,
    /// Names the object in errors (`manifest lab/busybox:latest`).
    what: String,
    /// Give up (no more retries) at this instant; default: now + the budget.
    deadline: Option<Instant>,
}

impl Req {
    fn new(method: Method, url: Url, scope: Scope, what: impl Into<String>) -> Self {
        Req {
            method,
            url,
            headers: HeaderMap::new(),
            scope,
            body: None,
            idempotent: true,
            what: what.into(),
            deadline: None,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.inner.registry.name)
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Build a client. Reads the CA files; credentials are looked up on first need.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scheme = opts.scheme()?;
        let base = Url::parse(&format!("{scheme}://{}/", opts.registry.api_host))
            .map_err(|e| Error::invalid(format!("registry {}: {e}", opts.registry.api_host)))?;
        let attempt_timeout = attempt_timeout(&opts);
        let mut b = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(attempt_timeout)
            .read_timeout(attempt_timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .referer(false);
        let tls = tls::client_config(&tls::TlsSettings {
            ca_certs: &opts.ca_certs,
            insecure_skip_verify: opts.insecure_skip_verify,
            client_cert: opts
                .client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            preload_roots: scheme == "https",
        })?;
        if opts.insecure_skip_verify {
            tracing::warn!(registry = %opts.registry, "TLS certificate verification is disabled");
        }
        b = b.tls_backend_preconfigured(tls);
        // HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply, except to a loopback registry:
        // a proxy elsewhere cannot reach this machine's 127.0.0.1.
        if opts.registry.is_loopback() {
            b = b.no_proxy();
        }
        let http = b
            .build()
            .map_err(|e| Error::invalid(format!("HTTP client: {}", errors_chain(&e))))?;
        let retry = RetryPolicy::new(opts.retries);
        let mirrors = opts
            .mirrors
            .iter()
            .map(|m| mirrors::Mirror::new(m, &opts))
            .collect::<Result<Vec<_>>>()?;
        let auth = auth::Auth::new(
            http.clone(),
            opts.registry.clone(),
            scheme == "http" || opts.insecure_skip_verify,
            opts.credentials.clone(),
            opts.docker_config_dir.clone(),
            attempt_timeout,
            retry.clone(),
        );
        Ok(Client {
            inner: Arc::new(Inner {
                registry: opts.registry,
                base,
                http,
                auth,
                timeout: attempt_timeout,
                budget: opts.timeout,
                retry,
                counters: Counters::default(),
                mirrors,
                single_ranges: Default::default(),
            }),
        })
    }

    /// The registry this client talks to.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The base URL (`https://host:port/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            token_fetches: self.inner.auth.token_fetches.load(Ordering::Relaxed),
        }
    }

    /// `GET /v2/`: check the registry speaks v2 and complete the auth handshake.
    /// Wrong credentials give [`Error::Unauthorized`].
    pub async fn ping(&self) -> Result<()> {
        let url = self.url("v2/")?;
        let resp = self
            .send(Req::new(
                Method::GET,
                url,
                Scope::none(),
                format!("registry {}", self.registry()),
            ))
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let what = format!("registry {} (GET /v2/)", self.registry());
        let e = errors::from_response(resp, &what, self.inner.timeout).await;
        Err(match e {
            Error::NotFound(_) => Error::Unsupported(format!(
                "{} does not serve the registry v2 API at /v2/",
                self.registry()
            )),
            e => e,
        })
    }

    /// All repositories (`GET /v2/_catalog?n=1000`, following `Link`).
    pub async fn catalog(&self) -> Result<Vec<String>> {
        self.catalog_paged(1000).await
    }

    /// All repositories, asking for `page_size` per page.
    pub async fn catalog_paged(&self, page_size: u32) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let url = self.url(&format!("v2/_catalog?n={page_size}"))?;
        let what = format!("catalog of {}", self.registry());
        let mut out = Vec::new();
        for body in self.list_pages(url, Scope::catalog(), what.clone()).await? {
            let p: Page = serde_json::from_slice(&body)
                .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
            out.extend(p.repositories.unwrap_or_default());
        }
        Ok(out)
    }

    /// All tags of `repo` (`GET /v2/<repo>/tags/list`, following `Link`).
    /// An unknown repository is [`Error::NotFound`].
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        self.tags_paged(repo, None).await
    }

    /// All tags of `repo`, asking for `page_size` per page when given.
    pub async fn tags_paged(&self, repo: &str, page_size: Option<u32>) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        validate_repository(repo)?;
        let url = match page_size {
            Some(n) => self.url(&format!("v2/{repo}/tags/list?n={n}"))?,
            None => self.url(&format!("v2/{repo}/tags/list"))?,
        };
        let what = format!("tags of repository {repo}");
        let mut out = Vec::new();
        for body in self
            .list_pages(url, Scope::pull(repo), what.clone())
            .await?
        {
            let p: Page = serde_json::from_slice(&body)
                .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
            out.extend(p.tags.unwrap_or_default());
        }
        Ok(out)
    }

    /// Fetch every page of a listing, following `Link: <…>; rel="next"`.
    async fn list_pages(
        &self,
        first: Url,
        scope: Scope,
        what: String,
    ) -> Result<Vec<bytes::Bytes>> {
        let mut seen = std::collections::HashSet::new();
        let mut bodies: Vec<bytes::Bytes> = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if !seen.insert(url.to_string()) {
                return Err(Error::invalid(format!(
                    "{what}: the registry's Link pages loop ({url})"
                )));
            }
            if seen.len() > paging::MAX_PAGES {
                return Err(Error::TooLarge(format!(
                    "{what}: more than {} pages",
                    paging::MAX_PAGES
                )));
            }
            let mut req = Req::new(Method::GET, url.clone(), scope.clone(), what.clone());
            req.headers.insert(
                reqwest::header::ACCEPT,
                "application/json".parse().expect("static"),
            );
            let resp = self.send(req).await?;
            if !resp.status().is_success() {
                return Err(errors::from_response(resp, &what, self.inner.timeout).await);
            }
            if let Some(link) = resp.headers().get(LINK) {
                let link = link
                    .to_str()
                    .map_err(|_| Error::invalid(format!("{what}: Link header is not ASCII")))?;
                if let Some(t) = paging::next_link(link)? {
                    next = Some(paging::resolve_next(&url, &t)?);
                }
            }
            let body = body::read_capped(
                resp,
                16 * 1024 * 1024,
                self.inner.timeout,
                &what,
                Some(&self.inner.counters.bytes_received),
            )
            .await?;
            if bodies.last() == Some(&body) && next.is_some() {
                return Err(Error::invalid(format!(
                    "{what}: the registry repeats the same page"
                )));
            }
            bodies.push(body);
        }
        Ok(bodies)
    }

    /// An URL under the registry's base (`v2/...`).
    fn url(&self, path: &str) -> Result<Url> {
        self.inner
            .base
            .join(path)
            .map_err(|e| Error::invalid(format!("URL {path:?}: {e}")))
    }

    /// Send `req`, authenticating on 401 (once) and retrying transient failures
    /// (connect errors, timeouts, 5xx, 429) with backoff. Returns any other response,
    /// success or not; the caller maps error statuses.
    async fn send(&self, req: Req) -> Result<Response> {
        if let Some(resp) = self.try_mirrors(&req).await {
            return Ok(resp);
        }
        self.send_direct(req).await
    }

    /// [`Client::send`] to this client's own endpoint only (no mirrors).
    async fn send_direct(&self, req: Req) -> Result<Response> {
        let inner = &*self.inner;
        let same_origin = req.url.origin() == inner.base.origin();
        let deadline = req
            .deadline
            .unwrap_or_else(|| Instant::now() + inner.budget);
        let mut attempt = 0u32;
        let mut authenticated = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "{}: no progress within {:?}",
                    req.what, inner.budget
                )));
            }
            let this_attempt = inner.timeout.min(left);
            let auth = if same_origin {
                inner.auth.header_for(&req.scope).await?
            } else {
                None
            };
            let mut rb = inner
                .http
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(h) = auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            if let Some(b) = &req.body {
                rb = rb.body(b.clone());
            }
            inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(method = %req.method, path = req.url.path(), "registry request");
            let res = match tokio::time::timeout(this_attempt, rb.send()).await {
                Err(_) => Err(Error::Timeout(format!(
                    "{}: no response within {:?}",
                    req.what, this_attempt
                ))),
                Ok(Err(e)) => Err(errors::from_reqwest(e, &req.what)),
                Ok(Ok(r)) => Ok(r),
            };
            crate::telemetry::registry_response(res.as_ref().ok().map(|r| r.status().as_u16()));
            let resp = match res {
                Err(e) if e.is_transient() && req.idempotent && attempt < inner.retry.retries => {
                    tracing::debug!("retrying after: {e}");
                    if !self.backoff(attempt, None, deadline).await {
                        return Err(e);
                    }
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
                Ok(r) => r,
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin {
                if authenticated {
                    return Err(inner.auth.refused(&req.scope).await);
                }
                authenticated = true;
                inner
                    .auth
                    .on_unauthorized(resp.headers(), &req.scope)
                    .await?;
                continue;
            }
            // A 429 was not processed, so even non-idempotent requests may be re-sent.
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || (status.is_server_error() && req.idempotent);
            if retryable && attempt < inner.retry.retries {
                let after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
                tracing::debug!(status = status.as_u16(), "{}: retrying", req.what);
                if !self.backoff(attempt, after, deadline).await {
                    return Ok(resp);
                }
                attempt += 1;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Wait before retry `attempt`; false (no wait) if the retry could not
    /// start before `deadline`.
    async fn backoff(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        deadline: Instant,
    ) -> bool {
        let delay = self.inner.retry.delay(attempt, retry_after);
        if Instant::now() + delay >= deadline {
            return false;
        }
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        true
    }
}

/// One attempt's timeout: the budget shared by the first try and the retries,
/// so a registry that never answers costs the reader `opts.timeout` in all.
fn attempt_timeout(opts: &ClientOptions) -> Duration {
    (opts.timeout / (opts.retries + 1)).max(Duration::from_millis(500))
}

/// `e` and its sources, joined by ": ".
fn errors_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> ClientOptions {
        ClientOptions::new(Registry::parse(s).unwrap().0)
    }

    #[test]
    fn scheme_selection() {
        assert_eq!(opts("registry.example.com").scheme().unwrap(), "https");
        assert_eq!(opts("localhost:5000").scheme().unwrap(), "http");
        assert_eq!(opts("127.0.0.1:5000").scheme().unwrap(), "http");
        assert_eq!(opts("[::1]:5000").scheme().unwrap(), "http");
        let mut o = opts("localhost:5000");
        o.force_https = true;
        assert_eq!(o.scheme().unwrap(), "https");
        let mut o = opts("registry.example.com");
        o.plain_http = true;
        assert_eq!(o.scheme().unwrap(), "http");
        o.force_https = true;
        assert!(o.scheme().is_err());
    }

    #[test]
    fn client_builds_and_urls() {
        let c = Client::new(opts("docker.io")).unwrap();
        assert_eq!(c.base_url().as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.registry().name, "docker.io");
        let c = Client::new(opts("localhost:5000")).unwrap();
        assert_eq!(
            c.url("v2/a/b/tags/list").unwrap().as_str(),
            "http://localhost:5000/v2/a/b/tags/list"
        );
        assert_eq!(c.stats(), ClientStats::default());
        let mut o = opts("localhost:5000");
        o.ca_certs = vec!["/nonexistent/ca.pem".into()];
        assert!(matches!(Client::new(o), Err(Error::Invalid(_))));
    }
}

#[cfg(test)]
mod multi_range_tests;
#[cfg(test)]
mod origin_tests;
