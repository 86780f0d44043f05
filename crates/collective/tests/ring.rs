//! The ring all-reduce equals the naive sum for every world size 1..5 and awkward buffer sizes
//! (not divisible by the world size, smaller than it, spanning several segments), over both
//! transports; the TCP ring gives bit-identical results to the in-memory one.

use std::net::TcpListener;
use std::time::Duration;

use resnet_collective::memory::MemoryRing;
use resnet_collective::ring::SEGMENT;
use resnet_collective::tcp::{RingTls, TcpRing, TcpRingConfig};
use resnet_collective::wire::round_bf16;

mod common;
use common::tcp_group;
use resnet_collective::{Collective, CollectiveError, Wire};

fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 31 + rank * 17) % 97) as f32 * 0.25 - 7.0 + rank as f32)
        .collect()
}

fn naive(world: usize, len: usize) -> Vec<f32> {
    let mut sum = vec![0f32; len];
    for r in 0..world {
        for (s, v) in sum.iter_mut().zip(input(r, len)) {
            *s += v;
        }
    }
    sum
}

fn run_all<C: Collective + 'static>(group: Vec<C>, len: usize) -> Vec<Vec<f32>> {
    let handles: Vec<_> = group
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut buf = input(c.rank(), len);
                c.all_reduce_sum(&mut buf).expect("all-reduce");
                let mut b = if c.rank() == 1 % c.world() {
                    vec![42.0; 5]
                } else {
                    vec![0.0; 5]
                };
                c.broadcast(&mut b, 1 % c.world()).expect("broadcast");
                assert_eq!(b, vec![42.0; 5]);
                buf
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

const SIZES: [usize; 7] = [0, 1, 3, 7, 1000, 1001, SEGMENT * 2 + 5];

#[test]
fn memory_ring_matches_naive_sum() {
    for world in 1..=5 {
        for len in SIZES {
            let want = naive(world, len);
            for (rank, got) in run_all(MemoryRing::group(world, Duration::from_secs(10)), len)
                .into_iter()
                .enumerate()
            {
                let max = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    max < 1e-3,
                    "world {world} len {len} rank {rank}: max error {max}"
                );
            }
        }
    }
}

#[test]
fn tcp_ring_matches_memory_ring_bit_exactly() {
    for world in 1..=4 {
        for len in [5usize, 1001, SEGMENT + 3] {
            let mem = run_all(MemoryRing::group(world, Duration::from_secs(10)), len);
            let tcp = run_all(tcp_group(world), len);
            assert_eq!(mem, tcp, "world {world} len {len}");
            assert!(tcp.iter().all(|b| b == &tcp[0]), "ranks disagree");
        }
    }
}

/// Every rank's `input` times `scale`, all-reduced with the transfers in `wire`'s type.
fn run_wire<C: Collective + 'static>(
    group: Vec<C>,
    len: usize,
    wire: Wire,
    scale: f32,
) -> Vec<Vec<f32>> {
    let handles: Vec<_> = group
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut buf: Vec<f32> = input(c.rank(), len).iter().map(|v| v * scale).collect();
                c.all_reduce_sum_wire(&mut buf, wire).expect("all-reduce");
                buf
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

fn run_bf16<C: Collective + 'static>(group: Vec<C>, len: usize) -> Vec<Vec<f32>> {
    // Values whose sums need more than bfloat16's 8 mantissa bits.
    run_wire(group, len, Wire::Bf16, 1.013)
}

#[test]
fn bf16_wire_sums_in_f32_and_leaves_every_rank_identical() {
    for world in 2..=4 {
        for len in [5usize, 1001, SEGMENT + 3] {
            let mem = run_bf16(MemoryRing::group(world, Duration::from_secs(10)), len);
            let tcp = run_bf16(tcp_group(world), len);
            // The TCP ring's 2-byte frames carry exactly what the in-memory ring rounds to.
            assert_eq!(mem, tcp, "world {world} len {len}");
            assert!(tcp.iter().all(|b| b == &tcp[0]), "ranks disagree");
            // Each rank's input once (building it per element is quadratic in `len`).
            let inputs: Vec<Vec<f32>> = (0..world).map(|r| input(r, len)).collect();
            let exact: Vec<f32> = (0..len)
                .map(|i| inputs.iter().map(|x| x[i] * 1.013).sum())
                .collect();
            let scale = exact.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let mut differs = false;
            for (got, want) in tcp[0].iter().zip(&exact) {
                // Every result is a bfloat16, within world - 1 roundings of partial sums and
                // one of the total (2^-8 relative each) of the exact sum.
                assert_eq!(*got, round_bf16(*got));
                let bound = (world as f32) * scale / 256.0;
                assert!(
                    (got - want).abs() <= bound,
                    "{got} vs {want} (world {world})"
                );
                differs |= got != want;
            }
            assert!(
                differs || len < 10,
                "bf16 changed nothing: the wire was f32"
            );
        }
    }
    // The f32 wire is the plain all-reduce, bit for bit.
    let f32_wire = run_wire(
        MemoryRing::group(2, Duration::from_secs(10)),
        1001,
        Wire::F32,
        1.0,
    );
    let plain = run_all(MemoryRing::group(2, Duration::from_secs(10)), 1001);
    assert_eq!(f32_wire, plain);
}

#[test]
fn dead_peer_is_an_error_not_a_hang() {
    let mut group = MemoryRing::group(3, Duration::from_millis(300));
    let dead = group.pop().expect("rank 2");
    drop(dead);
    let errs: Vec<CollectiveError> = group
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || c.all_reduce_sum(&mut [1.0; 10]).expect_err("must fail"))
        })
        .map(|h| h.join().expect("thread"))
        .collect();
    assert!(
        errs.iter().any(|e| matches!(
            e,
            CollectiveError::Timeout { .. } | CollectiveError::Disconnected { .. }
        )),
        "{errs:?}"
    );
}

/// Two ranks that try to form a ring with the given (generation, token digest) each.
fn pair(a: (u64, [u8; 32]), b: (u64, [u8; 32])) -> (bool, bool) {
    pair_tls((a.0, a.1, None), (b.0, b.1, None))
}

type Side = (u64, [u8; 32], Option<RingTls>);

/// Like [`pair`], with optional TLS per side; the ring forms an all-reduce to prove it works.
fn pair_tls(a: Side, b: Side) -> (bool, bool) {
    let listeners: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .zip([a, b])
        .enumerate()
        .map(|(rank, (l, (generation, auth, tls)))| {
            let cfg = TcpRingConfig {
                rank,
                peers: peers.clone(),
                generation,
                timeout: Duration::from_secs(2),
                auth,
                tls,
            };
            std::thread::spawn(move || {
                TcpRing::connect(l, &cfg).is_ok_and(|mut r| {
                    let mut buf = [rank as f32 + 1.0; 3];
                    r.all_reduce_sum(&mut buf).is_ok() && buf == [3.0; 3]
                })
            })
        })
        .collect();
    let mut ok = handles.into_iter().map(|h| h.join().expect("thread"));
    (ok.next().expect("a"), ok.next().expect("b"))
}

#[test]
fn tcp_ring_refuses_a_stale_generation() {
    assert_eq!(pair((1, [0; 32]), (2, [0; 32])), (false, false));
}

#[test]
fn tcp_ring_refuses_a_peer_without_the_token() {
    assert_eq!(pair((1, [7; 32]), (1, [0; 32])), (false, false));
    assert_eq!(pair((1, [7; 32]), (1, [7; 32])), (true, true));
}

fn tls(name: &str) -> RingTls {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tls/");
    let read = |f: &str| std::fs::read(format!("{dir}{f}")).expect("fixture");
    let ca = if name == "rogue" {
        "rogue-ca.pem"
    } else {
        "ca.pem"
    };
    RingTls::from_pem(
        &read(&format!("{name}.pem")),
        &read(&format!("{name}.key")),
        &read(ca),
    )
    .expect("tls config")
}

#[test]
fn tls_ring_forms_with_cluster_certificates_and_refuses_everyone_else() {
    let ok = (1, [0; 32], Some(tls("node")));
    assert_eq!(pair_tls(ok.clone(), ok.clone()), (true, true));
    // A peer speaking plain TCP, or presenting a certificate of another CA, is refused.
    assert_eq!(pair_tls(ok.clone(), (1, [0; 32], None)), (false, false));
    assert_eq!(
        pair_tls(ok, (1, [0; 32], Some(tls("rogue")))),
        (false, false)
    );
    let e = RingTls::from_pem(b"not pem", b"", b"").expect_err("garbage");
    assert!(e.to_string().contains("TLS"), "{e}");
}

/// The attack: 30 idle connections (no handshake, never closed) to every rank's data
/// port, plus an impostor sending a well-formed hello without the token, while a 3-rank ring
/// forms. Before, the acceptor handshook one connection at a time with a 2 s timeout, so the
/// idle ones used up the formation deadline and the ring failed. Now each handshake runs on
/// its own thread (a few per source address, the rest closed at once; the genuine peer
/// retries), and the ring forms and all-reduces.
#[test]
fn idle_connections_and_impostors_do_not_stop_the_ring_forming() {
    use std::io::Write;
    let world = 3;
    let listeners: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let peers: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    // Held open for the whole test.
    let mut hostile = Vec::new();
    for p in &peers {
        for _ in 0..30 {
            hostile.push(std::net::TcpStream::connect(p).expect("idle connection"));
        }
        let mut impostor = std::net::TcpStream::connect(p).expect("impostor");
        let mut hello = b"RCR2".to_vec();
        hello.extend_from_slice(&0u32.to_le_bytes());
        hello.extend_from_slice(&1u64.to_le_bytes());
        hello.extend_from_slice(&[0u8; 16]);
        impostor.write_all(&hello).expect("hello");
        let mut proof = [0u8; 32];
        proof[0] = 1;
        let _ = impostor.write_all(&proof);
        hostile.push(impostor);
    }
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let cfg = TcpRingConfig {
                rank,
                peers: peers.clone(),
                generation: 1,
                timeout: Duration::from_secs(10),
                auth: [3; 32],
                tls: None,
            };
            std::thread::spawn(move || {
                let mut r = TcpRing::connect(l, &cfg)
                    .unwrap_or_else(|e| panic!("rank {rank} did not form: {e}"));
                let mut buf = [1.0f32; 4];
                r.all_reduce_sum(&mut buf).expect("all-reduce");
                buf
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("rank"), [3.0; 4]);
    }
    drop(hostile);
}

/// A peer that died before connecting: forming the ring would wait out the whole timeout;
/// an abort from another thread (the coordinator announcing a regroup) ends it at once, with an
/// error that says why.
#[test]
fn ring_formation_with_a_dead_peer_ends_when_aborted() {
    use resnet_collective::tcp::RingAbort;
    use std::time::Instant;
    let mine = TcpListener::bind("127.0.0.1:0").expect("bind");
    // Rank 1's address: bound then closed, so connecting is refused and nobody connects to us.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let cfg = TcpRingConfig {
        rank: 0,
        peers: vec![mine.local_addr().expect("addr").to_string(), dead_addr],
        generation: 1,
        timeout: Duration::from_secs(60),
        auth: [0; 32],
        tls: None,
    };
    let abort = RingAbort::default();
    let handle = abort.clone();
    let started = Instant::now();
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        handle.abort();
    });
    let r = TcpRing::connect_abortable(mine, &cfg, abort);
    aborter.join().expect("aborter");
    let e = r.err().expect("a ring without its peer cannot form");
    assert!(
        e.to_string().contains("aborted"),
        "the error should say the formation was aborted: {e}"
    );
    // Well before the 60 s timeout (connect attempts take up to 0.5 s each).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
