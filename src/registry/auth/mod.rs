//! Authentication: learn the registry's challenge from a 401, then send Basic
//! credentials or a Bearer token obtained from the token realm (docker token spec),
//! cached per scope.
//!
//! Credentials go only to the registry's own origin and to its token realm.

pub mod challenge;
pub mod token;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use url::Url;

use self::challenge::Challenge;
use self::token::{TokenCache, TokenResponse};
use super::credentials::{self, Credentials, Secret};
use super::errors;
use super::retry::RetryPolicy;
use crate::error::{Error, Result};
use crate::reference::Registry;

/// The client id sent in OAuth2 token requests.
pub const CLIENT_ID: &str = "regfs";

/// The resource scopes a request needs (`repository:lab/busybox:pull`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope(Vec<String>);

impl Scope {
    /// No particular resource (`GET /v2/`).
    pub fn none() -> Self {
        Scope(Vec::new())
    }
    /// `registry:catalog:*`.
    pub fn catalog() -> Self {
        Scope(vec!["registry:catalog:*".into()])
    }
    /// Pull from one repository.
    pub fn pull(repo: &str) -> Self {
        Scope(vec![format!("repository:{repo}:pull")])
    }
    /// Pull and push to one repository.
    pub fn push(repo: &str) -> Self {
        Scope(vec![format!("repository:{repo}:pull,push")])
    }
    /// Push to `repo` and pull from `from` (a cross-repository mount).
    pub fn mount(repo: &str, from: &str) -> Self {
        let mut s = Scope::push(repo);
        if from != repo {
            s.0.push(format!("repository:{from}:pull"));
        }
        s
    }
    /// The scope strings.
    pub fn scopes(&self) -> &[String] {
        &self.0
    }
    /// The token cache key.
    pub fn key(&self) -> String {
        self.0.join(" ")
    }
}

/// Per-client authentication state.
pub struct Auth {
    http: reqwest::Client,
    registry: Registry,
    /// Whether a token realm may be plain http (the registry is http, or TLS checks are off).
    allow_http_realm: bool,
    explicit: Option<Credentials>,
    docker_config_dir: Option<std::path::PathBuf>,
    secret: tokio::sync::OnceCell<Option<Secret>>,
    /// The registry's challenge, once seen.
    challenge: Mutex<Option<Challenge>>,
    tokens: TokenCache,
    timeout: Duration,
    retry: RetryPolicy,
    pub(crate) token_fetches: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// New state; nothing is looked up until a challenge needs it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        http: reqwest::Client,
        registry: Registry,
        allow_http_realm: bool,
        explicit: Option<Credentials>,
        docker_config_dir: Option<std::path::PathBuf>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Self {
        Auth {
            http,
            registry,
            allow_http_realm,
            explicit,
            docker_config_dir,
            secret: tokio::sync::OnceCell::new(),
            challenge: Mutex::new(None),
            tokens: TokenCache::default(),
            timeout,
            retry,
            token_fetches: Default::default(),
        }
    }

    /// The credentials: explicit ones, else the docker config (looked up once).
    pub async fn secret(&self) -> Option<Secret> {
        self.secret
            .get_or_init(|| async {
                if let Some(c) = &self.explicit {
                    return Some(Secret::UserPass(c.clone()));
                }
                let reg = self.registry.clone();
                let dir = self.docker_config_dir.clone();
                tokio::task::spawn_blocking(move || credentials::lookup(&reg, dir.as_deref()))
                    .await
                    .unwrap_or(None)
            })
            .await
            .clone()
    }

    fn known_challenge(&self) -> Option<Challenge> {
        self.challenge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `Authorization` value to send to the registry for `scope`, if any.
    /// With a known Bearer challenge and no cached token, fetches one now.
    pub async fn header_for(&self, scope: &Scope) -> Result<Option<HeaderValue>> {
        let Some(ch) = self.known_challenge() else {
            return Ok(None);
        };
        if ch.is_basic() {
            return Ok(match self.secret().await {
                Some(Secret::UserPass(c)) => Some(basic_header(&c)),
                _ => None,
            });
        }
        if let Some(t) = self.tokens.get(&scope.key(), Instant::now()) {
            return Ok(Some(bearer_header(&t)?));
        }
        let t = self.fetch_token(&ch, scope).await?;
        Ok(Some(bearer_header(&t)?))
    }

    /// React to a 401 from the registry for `scope`: learn the challenge, drop a
    /// refused token, and get a new one. `Ok(())` means "try again".
    pub async fn on_unauthorized(&self, headers: &HeaderMap, scope: &Scope) -> Result<()> {
        let mut challenges = Vec::new();
        for v in headers.get_all(WWW_AUTHENTICATE) {
            let s = v
                .to_str()
                .map_err(|_| Error::invalid("WWW-Authenticate header is not ASCII"))?;
            challenges.extend(challenge::parse(s)?);
        }
        let ch = challenges
            .iter()
            .find(|c| c.is_bearer())
            .or_else(|| challenges.iter().find(|c| c.is_basic()))
            .cloned();
        let Some(ch) = ch else {
            return Err(match challenges.first() {
                Some(c) => Error::Unsupported(format!(
                    "registry {} asks for {} authentication (only Bearer and Basic are supported)",
                    self.registry, c.scheme
                )),
                None => Error::Unauthorized(format!(
                    "registry {} answered 401 without a WWW-Authenticate challenge",
                    self.registry
                )),
            });
        };
        *self.challenge.lock().unwrap_or_else(|e| e.into_inner()) = Some(ch.clone());
        if ch.is_basic() {
            return match self.secret().await {
                Some(Secret::UserPass(_)) => Ok(()),
                Some(Secret::IdentityToken(_)) => Err(Error::Unauthorized(format!(
                    "registry {} wants Basic authentication but the docker config holds only an identity token",
                    self.registry
                ))),
                None => Err(self.no_credentials()),
            };
        }
        self.tokens.remove(&scope.key());
        self.fetch_token(&ch, scope).await.map(|_| ())
    }

    /// The error for a request refused again after authenticating.
    pub async fn refused(&self, scope: &Scope) -> Error {
        match self.secret().await {
            None => self.no_credentials(),
            Some(s) => {
                let basic = self.known_challenge().is_some_and(|c| c.is_basic());
                if basic || scope.scopes().is_empty() {
                    Error::Unauthorized(format!(
                        "registry {} rejected the credentials of user {:?} (wrong username or password?)",
                        self.registry,
                        s.username()
                    ))
                } else {
                    Error::Unauthorized(format!(
                        "registry {} refused user {:?} access to {} (it may not exist, or the user lacks permission)",
                        self.registry,
                        s.username(),
                        scope.key()
                    ))
                }
            }
        }
    }

    fn no_credentials(&self) -> Error {
        Error::Unauthorized(format!(
            "registry {} requires authentication and no credentials were given \
             (use --username with --password-stdin, or docker login)",
            self.registry
        ))
    }

    /// Get a token for `scope` from the challenge's realm and cache it.
    async fn fetch_token(&self, ch: &Challenge, scope: &Scope) -> Result<String> {
        let realm = ch.param("realm").ok_or_else(|| {
            Error::invalid(format!(
                "registry {}: Bearer challenge without realm",
                self.registry
            ))
        })?;
        let realm = Url::parse(realm).map_err(|e| {
            Error::invalid(format!(
                "registry {}: token realm {realm:?}: {e}",
                self.registry
            ))
        })?;
        match realm.scheme() {
            "https" => {}
            "http" if self.allow_http_realm => {}
            "http" => {
                return Err(Error::Denied(format!(
                    "registry {} sent a plain-http token realm ({}); refusing to send credentials over http",
                    self.registry,
                    realm.host_str().unwrap_or("?")
                )))
            }
            s => return Err(Error::invalid(format!("token realm scheme {s:?}"))),
        }
        let service = ch.param("service");
        // Our scope wins; fall back to the challenge's own scope for scope-less requests.
        let scopes: Vec<String> = if scope.scopes().is_empty() {
            ch.param("scope")
                .map(|s| vec![s.to_string()])
                .unwrap_or_default()
        } else {
            scope.scopes().to_vec()
        };
        let secret = self.secret().await;
        let what = format!("token from {}", realm.host_str().unwrap_or("?"));
        let mut attempt = 0;
        let resp = loop {
            let req = match &secret {
                Some(Secret::IdentityToken(refresh)) => {
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token");
                    if let Some(s) = service {
                        form.append_pair("service", s);
                    }
                    form.append_pair("client_id", CLIENT_ID);
                    // Scopes are space-separated in the OAuth2 form.
                    if !scopes.is_empty() {
                        form.append_pair("scope", &scopes.join(" "));
                    }
                    form.append_pair("refresh_token", refresh);
                    self.http
                        .post(realm.clone())
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(form.finish())
                }
                other => {
                    let mut url = realm.clone();
                    {
                        let mut q = url.query_pairs_mut();
                        if let Some(s) = service {
                            q.append_pair("service", s);
                        }
                        for s in &scopes {
                            q.append_pair("scope", s);
                        }
                        if let Some(Secret::UserPass(c)) = other {
                            q.append_pair("account", &c.username);
                        }
                    }
                    let mut r = self.http.get(url);
                    if let Some(Secret::UserPass(c)) = other {
                        r = r.header(AUTHORIZATION, basic_header(c));
                    }
                    r
                }
            };
            self.token_fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let res = match tokio::time::timeout(self.timeout, req.send()).await {
                Err(_) => Err(Error::Timeout(format!(
                    "{what}: no answer within {:?}",
                    self.timeout
                ))),
                Ok(Err(e)) => Err(errors::from_reqwest(e, &what)),
                Ok(Ok(r)) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    Err(errors::from_response(r, &what, self.timeout).await)
                }
                Ok(Ok(r)) => Ok(r),
            };
            match res {
                Err(e) if e.is_transient() && attempt < self.retry.retries => {
                    tokio::time::sleep(self.retry.delay(attempt, None)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(r) => break r,
            }
        };
        let status = resp.status();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            let e = errors::from_response(resp, &what, self.timeout).await;
            return Err(match &secret {
                Some(s) => Error::Unauthorized(format!(
                    "token server for {} rejected the credentials of user {:?} ({e})",
                    self.registry,
                    s.username()
                )),
                None => Error::Unauthorized(format!(
                    "token server for {} refused anonymous access ({e}); credentials may be needed",
                    self.registry
                )),
            });
        }
        if !status.is_success() {
            return Err(errors::from_response(resp, &what, self.timeout).await);
        }
        let body = super::body::read_capped(resp, 1024 * 1024, self.timeout, &what, None).await?;
        let (tok, lifetime) = TokenResponse::parse(&body)?;
        self.tokens
            .insert(&scope.key(), tok.clone(), lifetime, Instant::now());
        Ok(tok)
    }
}

/// `Basic base64(user:pass)`, marked sensitive.
pub fn basic_header(c: &Credentials) -> HeaderValue {
    let enc =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut v =
        HeaderValue::from_str(&format!("Basic {enc}")).expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::invalid("token server returned a token with invalid characters"))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            Scope::pull("lab/busybox").key(),
            "repository:lab/busybox:pull"
        );
        assert_eq!(Scope::catalog().key(), "registry:catalog:*");
        assert_eq!(
            Scope::mount("a/b", "c/d").scopes(),
            ["repository:a/b:pull,push", "repository:c/d:pull"]
        );
        assert_eq!(Scope::mount("a", "a").scopes().len(), 1);
        assert_eq!(Scope::none().key(), "");
    }

    #[test]
    fn basic_header_encodes() {
        let h = basic_header(&Credentials {
            username: "lab".into(),
            password: "labpass".into(),
        });
        assert_eq!(h.to_str().unwrap(), "Basic bGFiOmxhYnBhc3M=");
        assert!(h.is_sensitive());
    }
}

#[cfg(test)]
mod hostile_tests;
