//! Hostile authentication input: malformed challenges, plain-http token
//! realms, and where credentials may go. Nothing here touches the network
//! unless a test starts its own loopback listener.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};

use super::*;
use crate::registry::retry::RetryPolicy;

fn auth(allow_http_realm: bool, creds: bool) -> Auth {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Auth::new(
        reqwest::Client::new(),
        Registry::parse("registry.example.com").unwrap().0,
        allow_http_realm,
        creds.then(|| Credentials {
            username: "lab".into(),
            password: "labpass".into(),
        }),
        Some(std::env::temp_dir().join("regfs-test-no-docker-config")),
        Duration::from_secs(2),
        RetryPolicy::new(0),
    )
}

fn challenge(v: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(WWW_AUTHENTICATE, HeaderValue::from_bytes(v).unwrap());
    h
}

fn fetches(a: &Auth) -> u64 {
    a.token_fetches.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn malformed_challenges_are_errors_and_fetch_nothing() {
    let cases: &[&[u8]] = &[
        b"Bearer realm=\"https://auth.example.com/token", // unterminated quote
        b"Bearer realm",                                  // no value
        b"Bearer service=\"x\"",                          // no realm
        b"Bearer realm=\"not a url\"",                    // realm not a URL
        b"Bearer realm=\"ftp://auth.example.com/token\"", // not http(s)
        b"Bearer realm=\"file:///etc/passwd\"",           // not http(s)
        b"=,=,=",                                         // garbage
        b",,,",                                           // nothing
        b"Negotiate abc",                                 // unsupported scheme
        "Bearer realm=\"https://\u{e9}.example\"".as_bytes(), // not ASCII
    ];
    for v in cases {
        let a = auth(false, true);
        let r = a
            .on_unauthorized(&challenge(v), &Scope::pull("lab/x"))
            .await;
        let shown = String::from_utf8_lossy(v);
        match r {
            Err(Error::Network(_)) | Err(Error::Timeout(_)) | Ok(()) => {
                panic!("{shown}: tried the network: {r:?}")
            }
            Err(e) => eprintln!("{shown}: {e}"),
        }
        assert_eq!(fetches(&a), 0, "{shown}: a token request was sent");
    }
    // A realm host no HTTP client accepts: an error before anything is sent.
    let a = auth(false, true);
    let h = challenge(b"Bearer realm=\"https://a\\\"b\", realm=\"https://c\"");
    let r = a.on_unauthorized(&h, &Scope::pull("lab/x")).await;
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
}

#[tokio::test]
async fn plain_http_realm_refused_unless_insecure() {
    let h = challenge(b"Bearer realm=\"http://127.0.0.1:9/token\",service=\"s\"");
    let a = auth(false, true);
    match a.on_unauthorized(&h, &Scope::pull("lab/x")).await {
        Err(Error::Denied(m)) => assert!(m.contains("plain-http"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fetches(&a), 0);
    // Allowed (plain-http registry or --insecure): the request is sent (and
    // fails here: nothing listens on port 9).
    let a = auth(true, true);
    let r = a.on_unauthorized(&h, &Scope::pull("lab/x")).await;
    assert!(!matches!(r, Err(Error::Denied(_))), "{r:?}");
    assert_eq!(fetches(&a), 1);
}

#[tokio::test]
async fn basic_challenge_without_credentials_is_unauthorized() {
    let a = auth(false, false);
    let r = a
        .on_unauthorized(&challenge(b"Basic realm=\"r\""), &Scope::pull("lab/x"))
        .await;
    assert!(matches!(r, Err(Error::Unauthorized(_))), "{r:?}");
    // No challenge known for it: no header at all.
    let a = auth(false, true);
    assert!(a.header_for(&Scope::pull("lab/x")).await.unwrap().is_none());
}
