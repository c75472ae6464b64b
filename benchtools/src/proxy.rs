//! A TCP proxy that forwards through an emulated [`Link`] pair: each chunk
//! read from one side is written to the other at the time the link says it
//! arrives. A new connection's first bytes also wait one round trip, the
//! TCP handshake a real network would cost (loopback's `connect` is free).
//! TCP's slow start and losses are not emulated.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::link::Link;

/// The two directions of the emulated network.
pub struct Network {
    /// Client to server.
    pub up: Link,
    /// Server to client.
    pub down: Link,
}

/// Accept on `listener` forever, forwarding each connection to `upstream` through `net`.
pub fn serve(listener: TcpListener, upstream: String, net: Arc<Network>) -> io::Result<()> {
    for client in listener.incoming() {
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("latency-proxy: accept: {e}");
                continue;
            }
        };
        let (upstream, net) = (upstream.clone(), net.clone());
        thread::spawn(move || {
            if let Err(e) = connect(client, &upstream, net) {
                eprintln!("latency-proxy: {upstream}: {e}");
            }
        });
    }
    Ok(())
}

fn connect(client: TcpStream, upstream: &str, net: Arc<Network>) -> io::Result<()> {
    let accepted = Instant::now();
    let addr = upstream
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))?;
    let server = TcpStream::connect(addr)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // The handshake: the client's first byte leaves one round trip after it connected.
    let handshake = accepted + net.up.one_way() + net.down.one_way();
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let n2 = net.clone();
    thread::spawn(move || pump(c2, s2, &n2.up, handshake));
    pump(server, client, &net.down, accepted);
    Ok(())
}

/// Forward `from` to `to` through `link`, nothing sent before `not_before`;
/// end of stream is passed on as a write shutdown, an error as a full one.
fn pump(mut from: TcpStream, to: TcpStream, link: &Link, not_before: Instant) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let mut to_w = to;
    let writer = thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            match data {
                Some(d) => {
                    if to_w.write_all(&d).is_err() {
                        let _ = to_w.shutdown(Shutdown::Both);
                        return;
                    }
                }
                None => {
                    let _ = to_w.shutdown(Shutdown::Write);
                    return;
                }
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let now = Instant::now().max(not_before);
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send((link.schedule(0, now), None));
                break;
            }
            Ok(n) => {
                let now = Instant::now().max(not_before);
                if tx
                    .send((link.schedule(n, now), Some(buf[..n].to_vec())))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}
