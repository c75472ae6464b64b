//! Mapping HTTP failures (transport errors, error statuses and the registry's JSON
//! `errors` body) to [`Error`].

use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{Cause, Error};

/// The most of an error body we read.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

#[derive(Deserialize)]
struct ErrorsBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Summarise a distribution error body (`{"errors":[{"code","message",…}]}`), e.g.
/// `MANIFEST_UNKNOWN: manifest unknown`. `None` if the body is not that shape.
pub fn summarize_body(body: &[u8]) -> Option<String> {
    let b: ErrorsBody = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = b
        .errors
        .iter()
        .filter(|e| !e.code.is_empty() || !e.message.is_empty())
        .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (false, true) => e.code.clone(),
            _ => e.message.clone(),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The error for an unsuccessful `status`; `what` names the object (`manifest lab/busybox:latest`).
pub fn from_status(status: StatusCode, body: &[u8], what: &str) -> Error {
    let detail = summarize_body(body);
    let with = |base: String| match &detail {
        Some(d) => format!("{base} ({d})"),
        None => base,
    };
    match status.as_u16() {
        404 => Error::NotFound(with(what.to_string())),
        401 => Error::Unauthorized(with(what.to_string())),
        403 => Error::Denied(with(what.to_string())),
        code => Error::Registry {
            status: code,
            message: with(format!(
                "{what}: {}",
                status.canonical_reason().unwrap_or("error")
            )),
        },
    }
}

/// Read (at most [`ERROR_BODY_LIMIT`] of) an error response and map it.
pub async fn from_response(
    mut resp: reqwest::Response,
    what: &str,
    timeout: std::time::Duration,
) -> Error {
    let status = resp.status();
    let mut body = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = ERROR_BODY_LIMIT.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= ERROR_BODY_LIMIT {
                break;
            }
        }
    })
    .await;
    from_status(status, &body, what)
}

/// Map a reqwest transport error. Never includes headers (no credentials can leak).
pub fn from_reqwest(e: reqwest::Error, what: &str) -> Error {
    // reqwest's Display includes the URL but not headers; strip the query anyway.
    let mut e = e;
    if let Some(u) = e.url_mut() {
        u.set_query(None);
    }
    let chain = crate::error::chain_of(&e);
    if e.is_timeout() {
        Error::Timeout(format!("{what}: {chain}"))
    } else if e.is_builder() {
        Error::invalid(format!("{what}: {chain}"))
    } else if is_tls_failure(&chain) {
        Error::Tls(Cause::new(format!("{what}: {chain}"), e))
    } else {
        Error::Network(Cause::new(format!("{what}: {chain}"), e))
    }
}

/// Whether an error chain is a TLS verification or handshake failure.
fn is_tls_failure(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    c.contains("certificate") || c.contains("invalidcontenttype") || c.contains("tls handshake")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_statuses_with_registry_codes() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        let e = from_status(StatusCode::NOT_FOUND, body, "manifest lab/busybox:nope");
        match e {
            Error::NotFound(m) => {
                assert!(
                    m.contains("lab/busybox:nope") && m.contains("MANIFEST_UNKNOWN"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_status(StatusCode::FORBIDDEN, b"", "x"),
            Error::Denied(_)
        ));
        assert!(matches!(
            from_status(StatusCode::UNAUTHORIZED, b"<html>", "x"),
            Error::Unauthorized(_)
        ));
        let e = from_status(StatusCode::SERVICE_UNAVAILABLE, b"", "x");
        assert!(matches!(e, Error::Registry { status: 503, .. }));
        assert!(e.is_transient());
        assert_eq!(summarize_body(b"{}"), None);
        assert_eq!(
            summarize_body(br#"{"errors":[{"message":"m"}]}"#).as_deref(),
            Some("m")
        );
    }
}
