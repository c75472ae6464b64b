//! Multi-range requests against a small HTTP server on loopback: the ranges
//! go out in one `Range` header and come back cut from a
//! `multipart/byteranges` body; a server that sends the whole blob instead
//! (as a storage backend behind a redirect may) is asked one range at a
//! time from then on, and the bytes are the same.

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use super::*;
use crate::digest::Digest;

/// What the server does with a Range header naming several ranges.
#[derive(Clone, Copy)]
enum Multi {
    /// Answer `multipart/byteranges`.
    Parts,
    /// Ignore the Range header: 200 and the whole blob.
    Whole,
}

/// Serve `blob` on `l` for `conns` connections (one request each); returns
/// the Range header of each request.
fn serve(
    l: TcpListener,
    blob: Vec<u8>,
    multi: Multi,
    conns: usize,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..conns {
            let (mut c, head) = super::origin_tests::accept_head(&l);
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .unwrap_or("")
                .to_string();
            let ranges: Vec<(usize, usize)> = range
                .split(',')
                .filter_map(|r| {
                    let (a, b) = r.split_once('-')?;
                    Some((
                        a.parse().ok()?,
                        b.parse::<usize>().ok()?.min(blob.len() - 1),
                    ))
                })
                .collect();
            let total = blob.len();
            let (status, ctype, extra, body) = match (ranges.len(), multi) {
                (1, _) => {
                    let (a, b) = ranges[0];
                    (
                        "206 Partial Content",
                        "application/octet-stream".to_string(),
                        format!("Content-Range: bytes {a}-{b}/{total}\r\n"),
                        blob[a..=b].to_vec(),
                    )
                }
                (_, Multi::Parts) => {
                    let mut body = Vec::new();
                    for (a, b) in &ranges {
                        body.extend_from_slice(
                            format!("\r\n--SEP\r\nContent-Range: bytes {a}-{b}/{total}\r\n\r\n")
                                .as_bytes(),
                        );
                        body.extend_from_slice(&blob[*a..=*b]);
                    }
                    body.extend_from_slice(b"\r\n--SEP--\r\n");
                    (
                        "206 Partial Content",
                        "multipart/byteranges; boundary=SEP".into(),
                        String::new(),
                        body,
                    )
                }
                (_, Multi::Whole) => (
                    "200 OK",
                    "application/octet-stream".into(),
                    String::new(),
                    blob.clone(),
                ),
            };
            let _ = c.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                    .as_bytes(),
            );
            let _ = c.write_all(&body);
            seen.push(range);
        }
        seen
    })
}

fn client(addr: &str) -> Client {
    let mut o = ClientOptions::new(Registry::parse(addr).unwrap().0);
    o.plain_http = true;
    o.timeout = Duration::from_secs(5);
    Client::new(o).unwrap()
}

fn blob() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

const RANGES: [(u64, u64); 4] = [(10, 90), (5000, 1), (0, 0), (99_990, 100)];

fn check(got: &[bytes::Bytes], blob: &[u8]) {
    assert_eq!(got.len(), RANGES.len());
    assert_eq!(got[0], blob[10..100]);
    assert_eq!(got[1], blob[5000..5001]);
    assert!(got[2].is_empty());
    assert_eq!(got[3], blob[99_990..], "short only at the blob's end");
}

#[tokio::test]
async fn several_ranges_are_one_request() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = client(&l.local_addr().unwrap().to_string());
    let server = serve(l, blob(), Multi::Parts, 1);
    let d: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let got = c.blob_ranges("lab/x", &d, &RANGES).await.unwrap();
    check(&got, &blob());
    assert_eq!(server.join().unwrap(), ["10-99,5000-5000,99990-100089"]);
}

#[tokio::test]
async fn a_server_that_sends_the_whole_blob_is_asked_one_range_at_a_time() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = client(&l.local_addr().unwrap().to_string());
    // The multi-range try, then the three ranges alone; then, the client
    // remembering, three single-range requests again.
    let server = serve(l, blob(), Multi::Whole, 7);
    let d: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    check(&c.blob_ranges("lab/x", &d, &RANGES).await.unwrap(), &blob());
    check(&c.blob_ranges("lab/x", &d, &RANGES).await.unwrap(), &blob());
    let mut seen = server.join().unwrap();
    assert_eq!(seen.remove(0), "10-99,5000-5000,99990-100089");
    seen.sort();
    assert_eq!(
        seen,
        [
            "10-99",
            "10-99",
            "5000-5000",
            "5000-5000",
            "99990-100089",
            "99990-100089"
        ]
    );
}
