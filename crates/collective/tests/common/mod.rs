//! Helpers shared by the collective's integration tests.

use std::net::TcpListener;
use std::time::Duration;

use resnet_collective::tcp::{TcpRing, TcpRingConfig};

/// A TCP ring of `world` ranks on loopback (no token, no TLS), formed on threads.
pub fn tcp_group(world: usize) -> Vec<TcpRing> {
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let cfg = TcpRingConfig {
                rank,
                peers: peers.clone(),
                generation: 1,
                timeout: Duration::from_secs(10),
                auth: [0; 32],
                tls: None,
            };
            std::thread::spawn(move || TcpRing::connect(l, &cfg).expect("connect"))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}
