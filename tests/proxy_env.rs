//! Issue 6: `HTTPS_PROXY` and `NO_PROXY` are respected. A real TLS registry
//! listens on this machine's own (non-loopback) address; a CONNECT proxy in
//! the test tunnels to it and records every tunnel. One test in its own
//! binary, because it sets the process environment the client reads.

mod harness;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::configured::{pki, ConfiguredRegistry};
use harness::{tempdir, Registry, RegistryKind};
use regfs::reference::{Registry as RegName, Selector};
use regfs::registry::{Client, ClientOptions};

/// This machine's address on its default route, if it has one.
fn own_address() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP "connect" sends nothing; it only picks the route and source address.
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// An HTTP proxy on loopback that serves only CONNECT, tunnelling to any
/// target, and records the request line of everything it is asked.
struct ConnectProxy {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || tunnel(conn, &log));
            }
        });
        ConnectProxy { port, asked }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn tunnel(mut client: TcpStream, log: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 || client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or("").to_string();
    log.lock().unwrap().push(line.clone());
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "CONNECT" {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    let Ok(upstream) = TcpStream::connect(target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let (mut c1, mut u1) = (client, upstream);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c1, &mut u1);
        let _ = u1.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut u2, &mut c2);
    let _ = c2.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

fn set_env(proxy: Option<&str>, no_proxy: Option<&str>) {
    for k in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::remove_var(k);
    }
    for k in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(k);
    }
    if let Some(p) = proxy {
        std::env::set_var("HTTPS_PROXY", p);
        std::env::set_var("HTTP_PROXY", p);
    }
    if let Some(n) = no_proxy {
        std::env::set_var("NO_PROXY", n);
    }
}

#[tokio::test]
async fn https_proxy_and_no_proxy_are_respected() {
    let Some(ip) = own_address() else {
        eprintln!(
            "skipped: this machine has no non-loopback address, and regfs never \
             sends a loopback registry's requests through a proxy"
        );
        return;
    };
    let plain = Registry::start(RegistryKind::Plain);
    plain.push("busybox", "lab/busybox:latest");
    let pkid = tempdir("pki");
    let p = pkid.path();
    let ca = pki::self_signed(p, "ca", "regfs test CA");
    let server = pki::signed(
        p,
        "server",
        (&ca.0, &ca.1),
        &format!("IP:{ip}"),
        "serverAuth",
    );
    let storage = plain.storage_dir();
    let reg = ConfiguredRegistry::start_tls(&storage, "0.0.0.0", &server, "");
    let remote = format!("{ip}:{}", reg.port());
    let client = |host: &str| {
        let mut o = ClientOptions::new(RegName::parse(host).unwrap().0);
        o.ca_certs = vec![ca.1.clone()];
        o.retries = 0;
        o.timeout = Duration::from_secs(10);
        o.docker_config_dir = Some(p.to_path_buf());
        Client::new(o).unwrap()
    };
    let fetch = |c: Client| async move {
        c.ping().await.unwrap();
        let m = c
            .manifest("lab/busybox", &Selector::Tag("latest".into()))
            .await
            .unwrap();
        assert_eq!(m.digest, regfs::digest::Digest::sha256_of(&m.bytes));
    };
    let proxy = ConnectProxy::start();

    // HTTPS_PROXY: the registry is reached through a tunnel.
    set_env(Some(&proxy.url()), None);
    fetch(client(&remote)).await;
    let tunnelled = proxy.asked();
    assert!(
        tunnelled
            .iter()
            .any(|l| l == &format!("CONNECT {remote} HTTP/1.1")),
        "no tunnel to {remote}: {tunnelled:?}"
    );

    // NO_PROXY naming the registry: straight there.
    set_env(Some(&proxy.url()), Some(&ip.to_string()));
    fetch(client(&remote)).await;
    assert_eq!(proxy.asked(), tunnelled, "NO_PROXY was not respected");

    // A loopback registry never goes through a proxy (one elsewhere could not
    // reach this machine's 127.0.0.1), whatever the environment says.
    set_env(Some(&proxy.url()), None);
    let local = client(&plain.host_port());
    local.ping().await.unwrap();
    assert_eq!(
        proxy.asked(),
        tunnelled,
        "a loopback registry went through the proxy"
    );
    set_env(None, None);
}
