//! Credentials go only to the registry (and, in auth, to its token realm):
//! never to another origin the client is pointed at, nor across a redirect.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::Method;

use super::*;

/// The next connection on `l` and its request head (lowercase), read one
/// byte at a time up to the blank line (5 s at most).
pub(super) fn accept_head(l: &TcpListener) -> (TcpStream, String) {
    let (mut c, _) = l.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    (c, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// Accepts one connection, returns its request head, answers `response`.
fn capture(l: TcpListener, response: String) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut c, head) = accept_head(&l);
        c.write_all(response.as_bytes()).unwrap();
        head
    })
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

async fn client_with_basic(registry: &str) -> Client {
    let mut o = ClientOptions::new(Registry::parse(registry).unwrap().0);
    o.plain_http = true;
    o.timeout = Duration::from_secs(5);
    o.credentials = Some(Credentials {
        username: "lab".into(),
        password: "labpass".into(),
    });
    let c = Client::new(o).unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"r\""),
    );
    c.inner
        .auth
        .on_unauthorized(&h, &Scope::pull("lab/x"))
        .await
        .unwrap();
    c
}

#[tokio::test]
async fn credentials_stay_with_the_registry() {
    let reg = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let reg_addr = reg.local_addr().unwrap().to_string();
    let other_addr = other.local_addr().unwrap().to_string();
    let c = client_with_basic(&reg_addr).await;

    // The registry itself gets them.
    let seen = capture(reg, OK.into());
    let url = c.url("v2/lab/x/blobs/sha256:00").unwrap();
    c.send(Req::new(Method::GET, url, Scope::pull("lab/x"), "t"))
        .await
        .unwrap();
    assert!(seen.join().unwrap().contains("authorization: basic"));

    // Another origin (e.g. a blob URL on a storage host) does not.
    let seen = capture(other, OK.into());
    let url = Url::parse(&format!("http://{other_addr}/blob")).unwrap();
    c.send(Req::new(Method::GET, url, Scope::pull("lab/x"), "t"))
        .await
        .unwrap();
    let head = seen.join().unwrap();
    assert!(!head.contains("authorization"), "{head}");
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let reg = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let reg_addr = reg.local_addr().unwrap().to_string();
    let other_addr = other.local_addr().unwrap().to_string();
    let c = client_with_basic(&reg_addr).await;
    let first = capture(
        reg,
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{other_addr}/storage\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    let second = capture(other, OK.into());
    let url = c.url("v2/lab/x/blobs/sha256:00").unwrap();
    c.send(Req::new(Method::GET, url, Scope::pull("lab/x"), "t"))
        .await
        .unwrap();
    assert!(first.join().unwrap().contains("authorization: basic"));
    let head = second.join().unwrap();
    assert!(head.starts_with("get /storage"), "{head}");
    assert!(!head.contains("authorization"), "{head}");
}
