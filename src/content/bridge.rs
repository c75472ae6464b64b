//! A synchronous `Read` over an async blob stream, for the tar indexer that runs
//! on a blocking thread.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::registry::BoxBlobBody;

/// Pump `stream` into a channel from a task; the returned reader yields its bytes.
/// A stream error (digest mismatch, network) surfaces as a read error.
pub(crate) fn reader(mut stream: BoxBlobBody) -> ChannelReader {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Error>>(16);
    tokio::spawn(async move {
        loop {
            match stream.next_chunk().await {
                Ok(Some(b)) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return; // reader gone
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    ChannelReader {
        rx,
        cur: Bytes::new(),
        error: None,
    }
}

/// The reading end; see [`reader`].
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, Error>>,
    cur: Bytes,
    error: Option<Error>,
}

impl ChannelReader {
    /// The stream's error, if reading stopped because of one.
    pub(crate) fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    let msg = e.to_string();
                    self.error = Some(e);
                    return Err(io::Error::other(msg));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}
