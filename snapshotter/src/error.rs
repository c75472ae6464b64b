//! The snapshotter's errors, one per gRPC code containerd tells apart.

/// What went wrong, sorted by the gRPC code containerd maps back to its
/// `errdefs` (`ErrNotFound`, `ErrAlreadyExists`, …).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `NOT_FOUND`.
    #[error("{0}: not found")]
    NotFound(String),
    /// `ALREADY_EXISTS`.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// `INTERNAL`: the local disk failed us.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::Io { .. } => tonic::Status::internal(msg),
        }
    }
}

/// The snapshotter's result.
pub type Result<T> = std::result::Result<T, Error>;
