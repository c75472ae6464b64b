//! Running blocking work (disk, hashing, decompression) off the async
//! workers, with a panic or cancellation of the blocking task turned into an
//! I/O error.

use crate::error::{Error, Result};

/// Run `f` on tokio's blocking pool and return its result.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}
