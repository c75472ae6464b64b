//! Reading small response bodies with a size cap and a deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::errors;
use crate::error::{Error, Result};

/// Read the whole body of `resp`, at most `cap` bytes (more is [`Error::TooLarge`]),
/// within `timeout` overall. Bytes read are added to `counter` if given.
pub async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    timeout: Duration,
    what: &str,
    counter: Option<&AtomicU64>,
) -> Result<Bytes> {
    if let Some(len) = resp.content_length() {
        if len > cap as u64 {
            return Err(Error::TooLarge(format!(
                "{what}: {len} bytes (limit {cap})"
            )));
        }
    }
    let mut buf = BytesMut::with_capacity(resp.content_length().unwrap_or(0) as usize);
    let fut = async {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if let Some(n) = counter {
                        n.fetch_add(c.len() as u64, Ordering::Relaxed);
                    }
                    if buf.len() + c.len() > cap {
                        return Err(Error::TooLarge(format!("{what}: more than {cap} bytes")));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(errors::from_reqwest(e, what)),
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(Error::Timeout(format!(
            "{what}: body not received within {timeout:?}"
        ))),
        Ok(r) => r.map(|()| buf.freeze()),
    }
}
