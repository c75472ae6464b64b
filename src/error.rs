//! The one error type of regfs, and its mapping to errno for the filesystem.
//!
//! Errors keep their source chain: a transport failure carries the client's
//! error ([`Cause`]), local I/O its `io::Error`, a wrapped error
//! ([`Error::Context`]) the error it wraps. [`Error::chain`] prints it whole
//! (the FUSE adapters log failures that way).

use std::fmt;
use std::io;

/// A boxed lower-level error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What failed, with the lower-level error that caused it when there is one.
#[derive(Debug)]
pub struct Cause {
    /// What failed (the message shown).
    pub what: String,
    /// The error underneath, if any.
    pub source: Option<BoxError>,
}

impl Cause {
    /// `what` failed because of `source`.
    pub fn new(what: impl Into<String>, source: impl Into<BoxError>) -> Cause {
        Cause {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

impl From<String> for Cause {
    fn from(what: String) -> Cause {
        Cause { what, source: None }
    }
}

impl From<&str> for Cause {
    fn from(what: &str) -> Cause {
        what.to_string().into()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Everything that can go wrong between the registry and a reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository, tag, manifest or blob does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused our credentials (or we have none).
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    /// The registry knows who we are but says no.
    #[error("access denied: {0}")]
    Denied(String),
    /// Bytes did not hash to the digest that names them.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being verified (a blob, a manifest, a diff_id, …).
        what: String,
        /// The digest we were promised.
        expected: String,
        /// The digest of what we received.
        actual: String,
    },
    /// A request did not finish within its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Connection-level failure (refused, reset, DNS, TLS).
    #[error("network error: {0}")]
    Network(#[source] Cause),
    /// TLS failed: an untrusted or invalid certificate, a protocol mismatch.
    /// Not transient: retrying will not make a certificate valid.
    #[error("TLS error: {0}")]
    Tls(#[source] Cause),
    /// The registry answered with an error status we cannot recover from.
    #[error("registry error: HTTP {status}: {message}")]
    Registry {
        /// HTTP status code.
        status: u16,
        /// The registry's message, or the status text.
        message: String,
    },
    /// Content we understand in principle but do not support (schema 1, unknown media types).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Malformed input: a bad reference, invalid JSON, a hostile descriptor.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Something exceeded a configured limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The mount is read-only here.
    #[error("read-only file system")]
    ReadOnly,
    /// Local I/O (cache directory, staging).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// `source`, while doing `what`: same errno and transience as `source`.
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// The error it failed with.
        #[source]
        source: Box<Error>,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno a filesystem operation failing with this error returns.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Context { source, .. } => source.errno(),
            Error::NotFound(_) => libc::ENOENT,
            Error::Unauthorized(_) | Error::Denied(_) => libc::EACCES,
            Error::Invalid(_) => libc::EINVAL,
            Error::ReadOnly => libc::EROFS,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::DigestMismatch { .. }
            | Error::Timeout(_)
            | Error::Network(_)
            | Error::Tls(_)
            | Error::Registry { .. }
            | Error::Unsupported(_)
            | Error::TooLarge(_) => libc::EIO,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        if let Error::Context { source, .. } = self {
            return source.is_transient();
        }
        matches!(self, Error::Timeout(_) | Error::Network(_))
            || matches!(self, Error::Registry { status, .. } if *status >= 500 || *status == 429)
    }

    /// This error, while doing `what` (kept as its source).
    pub fn context(self, what: impl Into<String>) -> Error {
        Error::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// The error under any [`Error::Context`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// The message and every source under it, `: `-separated; a source whose
    /// text the message already holds is not repeated.
    pub fn chain(&self) -> String {
        chain_of(self)
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// `e` and each of its sources, joined by `: `; a source whose text the
/// line already holds (many errors repeat their source) is left out.
pub(crate) fn chain_of(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_kept_and_printed_once() {
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        let e = Error::Network(Cause::new("GET /v2/", io)).context("listing lab/python");
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.is_transient());
        assert!(matches!(e.root(), Error::Network(_)));
        assert_eq!(
            e.chain(),
            "listing lab/python: network error: GET /v2/: connection refused"
        );
        let src = std::error::Error::source(&e).expect("context keeps its source");
        let net = std::error::Error::source(src).expect("network keeps its cause");
        assert!(net.source().is_some(), "the cause keeps the I/O error");
        let nf = Error::NotFound("x".into()).context("lookup");
        assert_eq!(nf.errno(), libc::ENOENT);
        assert!(!nf.is_transient());
    }
}
