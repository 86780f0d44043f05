//! Hand-computed cases of the cost model.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

const GBIT: Link = Link {
    bytes_per_s: 125e6,
    latency_s: 0.0,
};

#[test]
fn ring_cost_is_the_textbook_formula() {
    // 2 ranks: each sends half the buffer twice = the whole buffer once.
    assert!(close(ring_allreduce_s(44.7e6, 2, GBIT), 44.7e6 / 125e6));
    // 4 ranks, 1 MB, 1 GB/s, 10 us: 2*3/4 * 1e-3 s + 6 * 1e-5 s.
    let link = Link {
        bytes_per_s: 1e9,
        latency_s: 1e-5,
    };
    assert!(close(ring_allreduce_s(1e6, 4, link), 1.5e-3 + 6e-5));
    // One rank has nothing to exchange.
    assert_eq!(ring_allreduce_s(1e6, 1, link), 0.0);
    assert_eq!(allreduce_s(1e6, 1, &one_per_node(link)), 0.0);
}

fn one_per_node(inter: Link) -> Topology {
    Topology {
        per_node: 1,
        intra: Link {
            bytes_per_s: 1.0,
            latency_s: 1.0,
        },
        inter,
        nics: 1,
    }
}

#[test]
fn one_gpu_per_node_is_a_flat_ring_over_the_network() {
    let t = one_per_node(GBIT);
    for n in [2, 3, 7, 64] {
        assert!(close(
            allreduce_s(1e7, n, &t),
            ring_allreduce_s(1e7, n, GBIT)
        ));
    }
}

#[test]
fn a_single_node_is_a_flat_ring_over_its_own_link() {
    let nvlink = Link {
        bytes_per_s: 300e9,
        latency_s: 2e-6,
    };
    let t = Topology {
        per_node: 8,
        intra: nvlink,
        inter: GBIT,
        nics: 1,
    };
    // 8 GPUs, 100 MB: 2*7/8 * 100e6 / 300e9 + 14 * 2e-6.
    assert!(close(
        allreduce_s(100e6, 8, &t),
        1.75 * 100e6 / 300e9 + 14.0 * 2e-6
    ));
    // Fewer GPUs than a node holds: still one node.
    assert!(close(
        allreduce_s(100e6, 4, &t),
        1.5 * 100e6 / 300e9 + 6.0 * 2e-6
    ));
}

#[test]
fn across_nodes_the_nodes_nics_carry_the_ring_between_nodes() {
    let intra = Link {
        bytes_per_s: 100e9,
        latency_s: 0.0,
    };
    let nic = Link {
        bytes_per_s: 25e9,
        latency_s: 5e-6,
    };
    // 4 nodes of 8 GPUs, 8 NICs each, 100 MB:
    //   inside: 2*7/8 * 100e6 / 100e9 = 1.75 ms
    //   between: 2*3/4 * 100e6 / (8 * 25e9) + 6 * 5 us = 0.75 ms + 30 us
    let t = Topology {
        per_node: 8,
        intra,
        inter: nic,
        nics: 8,
    };
    assert!(close(allreduce_s(100e6, 32, &t), 1.75e-3 + 0.75e-3 + 30e-6));
    // One NIC per node: the between-node part is 8x slower.
    let one_nic = Topology { nics: 1, ..t };
    assert!(close(
        allreduce_s(100e6, 32, &one_nic),
        1.75e-3 + 6e-3 + 30e-6
    ));
    // More NICs than GPUs help no further: each GPU drives one.
    let many = Topology { nics: 16, ..t };
    assert!(close(
        allreduce_s(100e6, 32, &many),
        allreduce_s(100e6, 32, &t)
    ));
}

fn grads(list: &[(f64, f64)]) -> Vec<Grad> {
    list.iter()
        .map(|&(bytes, ready_s)| Grad { bytes, ready_s })
        .collect()
}

#[test]
fn buckets_close_once_full_in_backward_order() {
    let g = grads(&[
        (10.0, 0.1),
        (10.0, 0.2),
        (30.0, 0.3),
        (5.0, 0.4),
        (1.0, 0.5),
    ]);
    let b = buckets(&g, 20.0);
    assert_eq!(
        b,
        vec![
            Bucket {
                bytes: 20.0,
                ready_s: 0.2
            },
            // Larger than the cap: alone.
            Bucket {
                bytes: 30.0,
                ready_s: 0.3
            },
            // The remainder.
            Bucket {
                bytes: 6.0,
                ready_s: 0.5
            },
        ]
    );
    // A cap above the total is one bucket, ready when the backward's last gradient is.
    assert_eq!(buckets(&g, 1e9).len(), 1);
    assert_eq!(buckets(&[], 1.0), vec![]);
}

#[test]
fn overlap_is_bound_by_the_backwards_remaining_time() {
    // Backward 1 s; three 100-byte gradients ready at 0.2, 0.5 and 1.0 s; 1000 B/s, 2 ranks:
    // each bucket costs 2*1/2 * 100 / 1000 = 0.1 s.
    let link = Link {
        bytes_per_s: 1000.0,
        latency_s: 0.0,
    };
    let g = grads(&[(100.0, 0.2), (100.0, 0.5), (100.0, 1.0)]);
    let cost = |b| ring_allreduce_s(b, 2, link);
    let o = schedule(&buckets(&g, 100.0), 1.0, cost);
    // 0.2-0.3, 0.5-0.6, 1.0-1.1: only the last bucket is exposed.
    assert!(close(o.end_s, 1.1) && close(o.exposed_s, 0.1) && close(o.comm_s, 0.3));

    // A 4x slower link: each bucket 0.4 s, they queue: 0.2-0.6, 0.6-1.0, 1.0-1.4.
    let slow = Link {
        bytes_per_s: 250.0,
        latency_s: 0.0,
    };
    let o = schedule(&buckets(&g, 100.0), 1.0, |b| ring_allreduce_s(b, 2, slow));
    assert!(close(o.exposed_s, 0.4));

    // Slower still (1 s per bucket): 0.2-1.2, 1.2-2.2, 2.2-3.2; the backward hides 0.8 s.
    let slower = Link {
        bytes_per_s: 100.0,
        latency_s: 0.0,
    };
    let o = schedule(&buckets(&g, 100.0), 1.0, |b| ring_allreduce_s(b, 2, slower));
    assert!(close(o.exposed_s, 2.2));

    // One bucket is today's path: the whole all-reduce after the backward.
    let o = schedule(&buckets(&g, 1e9), 1.0, cost);
    assert!(close(o.exposed_s, ring_allreduce_s(300.0, 2, link)));
}

#[test]
fn predictions_add_up() {
    let c = Compute {
        forward_s: 0.1,
        backward_s: 0.2,
        optimizer_s: 0.05,
    };
    let g = grads(&[(1e6, 0.05), (1e6, 0.1), (2e6, 0.2)]);
    let t = one_per_node(Link {
        bytes_per_s: 1e8,
        latency_s: 0.0,
    });
    // 4 ranks: flat 2*3/4 * 4e6 / 1e8 = 0.06 s. Buckets of >= 1 MB: each gradient alone,
    // 0.015, 0.015, 0.03 s: 0.05-0.065, 0.1-0.115, 0.2-0.23 -> 0.03 s exposed.
    let p = predict(4, &t, &c, &g, 1e6);
    assert!(close(p.allreduce_s, 0.06));
    assert!(close(p.step_s, 0.41));
    assert!(close(p.efficiency, 0.35 / 0.41));
    assert_eq!((p.buckets, p.nodes), (3, 4));
    assert!(close(p.exposed_s, 0.03));
    assert!(close(p.overlap_step_s, 0.38));
    assert!(close(p.overlap_efficiency, 0.35 / 0.38));
    // One GPU: nothing to exchange, efficiency 1.
    let one = predict(1, &t, &c, &g, 1e6);
    assert!(close(one.step_s, 0.35) && close(one.overlap_efficiency, 1.0));
}

#[test]
fn tc_rates_parse() {
    assert_eq!(parse_rate("1gbit"), Some(1e9));
    assert_eq!(parse_rate("200mbit"), Some(200e6));
    assert_eq!(parse_rate("10Gbit"), Some(10e9));
    assert_eq!(parse_rate("2.5gbit"), Some(2.5e9));
    assert_eq!(parse_rate("500kbit"), Some(500e3));
    for bad in ["off", "", "gbit", "1gb", "0mbit", "-1gbit", "1 gbit"] {
        assert_eq!(parse_rate(bad), None, "{bad}");
    }
}
