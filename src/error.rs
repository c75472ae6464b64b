//! The one error type of regfs, and its mapping to errno for the filesystem.

use std::io;

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
    Network(String),
    /// TLS failed: an untrusted or invalid certificate, a protocol mismatch.
    /// Not transient: retrying will not make a certificate valid.
    #[error("TLS error: {0}")]
    Tls(String),
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
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno a filesystem operation failing with this error returns.
    pub fn errno(&self) -> i32 {
        match self {
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
        matches!(self, Error::Timeout(_) | Error::Network(_))
            || matches!(self, Error::Registry { status, .. } if *status >= 500 || *status == 429)
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
