//! Mirrors: other endpoints serving the same content (a pull-through cache, a
//! fleet-local registry), tried in order before the registry itself, each one
//! falling back to the next on any failure (containerd `hosts.toml` semantics).
//!
//! A mirror is only asked what its capabilities allow: `pull` (blobs, manifests
//! by digest) and `resolve` (manifests by tag, tag lists). The catalog and
//! uploads always go to the registry. Answers are verified like any other
//! (digests), so a mirror cannot serve different content than the registry.
//! A mirror that fails to answer at all is skipped for [`DOWN_FOR`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::{Client, ClientOptions, Req};
use crate::error::{Error, Result};
use crate::reference::Registry;

/// How long a mirror that did not answer is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// What a mirror may be asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs and manifests by digest.
    pub pull: bool,
    /// Manifests by tag and tag lists.
    pub resolve: bool,
}

impl Default for Capabilities {
    /// Both (`--mirror`).
    fn default() -> Self {
        Capabilities {
            pull: true,
            resolve: true,
        }
    }
}

/// One mirror endpoint and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorSpec {
    /// `http(s)://host[:port]`.
    pub url: Url,
    /// What it may be asked.
    pub capabilities: Capabilities,
    /// Extra PEM CA files for its certificate.
    pub ca_certs: Vec<PathBuf>,
    /// Accept any certificate.
    pub skip_verify: bool,
    /// A client certificate and key (PEM) to present.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl MirrorSpec {
    /// A mirror at `url` (`http://…` or `https://…`; a bare `host:port` means https)
    /// with both capabilities.
    pub fn parse(url: &str) -> Result<MirrorSpec> {
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("https://{url}")
        };
        let u =
            Url::parse(&with_scheme).map_err(|e| Error::invalid(format!("mirror {url:?}: {e}")))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(Error::invalid(format!(
                "mirror {url:?}: not an http(s) URL"
            )));
        }
        Ok(MirrorSpec {
            url: u,
            capabilities: Capabilities::default(),
            ca_certs: Vec::new(),
            skip_verify: false,
            client_cert: None,
        })
    }

    /// `host[:port]` of the mirror.
    pub fn host_port(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }
}

/// A mirror's client and health.
pub(crate) struct Mirror {
    client: Client,
    caps: Capabilities,
    down_until: Mutex<Option<Instant>>,
}

impl Mirror {
    /// A client for `spec`, inheriting timeouts and the docker config from `base`.
    pub(crate) fn new(spec: &MirrorSpec, base: &ClientOptions) -> Result<Mirror> {
        let host = spec.host_port();
        let mut o = ClientOptions::new(Registry {
            name: host.clone(),
            api_host: host,
        });
        o.plain_http = spec.url.scheme() == "http";
        o.force_https = spec.url.scheme() == "https";
        o.ca_certs = spec.ca_certs.clone();
        o.insecure_skip_verify = spec.skip_verify;
        o.client_cert = spec.client_cert.clone();
        o.docker_config_dir = base.docker_config_dir.clone();
        // The registry is the fallback: do not wait on a failing mirror longer
        // than one attempt at the registry.
        o.timeout = (base.timeout / (base.retries + 1)).max(std::time::Duration::from_millis(500));
        o.retries = 0;
        o.user_agent = base.user_agent.clone();
        Ok(Mirror {
            client: Client::new(o)?,
            caps: spec.capabilities,
            down_until: Mutex::new(None),
        })
    }
}

/// The capability a request needs, if a mirror may serve it at all.
fn needs(req: &Req, base: &Url) -> Option<Capability> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return None;
    }
    if req.url.origin() != base.origin() {
        return None;
    }
    let path = req.url.path();
    if !path.starts_with("/v2/") {
        return None;
    }
    if path.contains("/blobs/") {
        return Some(Capability::Pull);
    }
    if let Some((_, reference)) = path.rsplit_once("/manifests/") {
        return Some(if reference.contains(':') {
            Capability::Pull
        } else {
            Capability::Resolve
        });
    }
    if path.ends_with("/tags/list") {
        return Some(Capability::Resolve);
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capability {
    Pull,
    Resolve,
}

impl Client {
    /// Try the mirrors in order; `None` means "ask the registry".
    pub(crate) async fn try_mirrors(&self, req: &Req) -> Option<Response> {
        let inner = &*self.inner;
        if inner.mirrors.is_empty() {
            return None;
        }
        let cap = needs(req, &inner.base)?;
        for m in &inner.mirrors {
            let allowed = match cap {
                Capability::Pull => m.caps.pull,
                Capability::Resolve => m.caps.resolve,
            };
            if !allowed {
                continue;
            }
            {
                let mut down = m.down_until.lock().unwrap_or_else(|e| e.into_inner());
                match *down {
                    Some(t) if Instant::now() < t => continue,
                    Some(_) => *down = None,
                    None => {}
                }
            }
            let mirror_base = m.client.base_url();
            let mut url = match mirror_base.join(req.url.path().trim_start_matches('/')) {
                Ok(u) => u,
                Err(_) => continue,
            };
            url.set_query(req.url.query());
            let mreq = Req {
                method: req.method.clone(),
                url,
                headers: req.headers.clone(),
                scope: req.scope.clone(),
                body: None,
                idempotent: true,
                what: req.what.clone(),
                deadline: req.deadline,
            };
            match m.client.send_direct(mreq).await {
                Ok(resp)
                    if resp.status().is_success()
                        || resp.status() == StatusCode::RANGE_NOT_SATISFIABLE =>
                {
                    tracing::debug!(mirror = %m.client.registry(), path = req.url.path(), "served by mirror");
                    return Some(resp);
                }
                Ok(resp) => {
                    tracing::debug!(mirror = %m.client.registry(), status = resp.status().as_u16(), "{}: mirror declined; trying the next endpoint", req.what);
                }
                Err(e) => {
                    tracing::warn!(mirror = %m.client.registry(), error = %e, "mirror failed; skipping it for {DOWN_FOR:?}");
                    *m.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now() + DOWN_FOR);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_mirror_urls() {
        let m = MirrorSpec::parse("http://127.0.0.1:5001").unwrap();
        assert_eq!(m.host_port(), "127.0.0.1:5001");
        assert_eq!(m.url.scheme(), "http");
        let m = MirrorSpec::parse("mirror.example:443").unwrap();
        assert_eq!(m.url.scheme(), "https");
        assert!(MirrorSpec::parse("ftp://x").is_err());
        assert!(MirrorSpec::parse("http://").is_err());
    }

    #[test]
    fn capability_of_requests() {
        let base = Url::parse("http://r:5000/").unwrap();
        let r = |m: Method, p: &str| {
            Req::new(m, base.join(p).unwrap(), super::super::Scope::none(), "t")
        };
        assert_eq!(
            needs(&r(Method::GET, "v2/a/b/blobs/sha256:00"), &base),
            Some(Capability::Pull)
        );
        assert_eq!(
            needs(&r(Method::HEAD, "v2/a/manifests/sha256:00"), &base),
            Some(Capability::Pull)
        );
        assert_eq!(
            needs(&r(Method::GET, "v2/a/manifests/latest"), &base),
            Some(Capability::Resolve)
        );
        assert_eq!(
            needs(&r(Method::GET, "v2/a/tags/list?n=1"), &base),
            Some(Capability::Resolve)
        );
        assert_eq!(needs(&r(Method::GET, "v2/_catalog"), &base), None);
        assert_eq!(needs(&r(Method::GET, "v2/"), &base), None);
        assert_eq!(needs(&r(Method::PUT, "v2/a/manifests/latest"), &base), None);
        let other = Url::parse("http://elsewhere/v2/a/blobs/sha256:00").unwrap();
        assert_eq!(
            needs(
                &Req::new(Method::GET, other, super::super::Scope::none(), "t"),
                &base
            ),
            None
        );
    }
}
