//! `latency-proxy LISTEN UPSTREAM RTT_MS MBIT`: a TCP proxy on loopback that
//! emulates a network between its clients and UPSTREAM: every chunk waits
//! half of RTT_MS in each direction and the link (shared by all
//! connections) is paced to MBIT megabits per second (0: unlimited). LISTEN
//! may use port 0; the bound address is printed on stdout. Runs until killed.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use regfs_benchtools::link::Link;
use regfs_benchtools::proxy::{serve, Network};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, rtt, mbit] = args.as_slice() else {
        eprintln!("usage: latency-proxy LISTEN UPSTREAM RTT_MS MBIT");
        std::process::exit(2);
    };
    let (Ok(rtt), Ok(mbit)) = (rtt.parse::<f64>(), mbit.parse::<f64>()) else {
        eprintln!("latency-proxy: RTT_MS and MBIT are numbers");
        std::process::exit(2);
    };
    let one_way = Duration::from_secs_f64(rtt / 2000.0);
    let bits = (mbit * 1e6) as u64;
    let net = Arc::new(Network {
        up: Link::new(one_way, bits),
        down: Link::new(one_way, bits),
    });
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("latency-proxy: bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("{a}"),
        Err(e) => eprintln!("latency-proxy: {e}"),
    }
    if let Err(e) = serve(listener, upstream.clone(), net) {
        eprintln!("latency-proxy: {e}");
        std::process::exit(1);
    }
}
