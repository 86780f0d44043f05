//! Bucketed all-reduce (the building block of #21's overlap): reducing a flat buffer bucket by
//! bucket, in backward order (last bucket first), gives every element the same bits as one
//! all-reduce of the whole buffer — for every world size 1..4, both wires, both transports,
//! buckets that straddle chunk boundaries, single elements and empty buckets. The inputs are
//! chosen so that the order of additions matters (checked: reducing a bucket as a buffer of its
//! own gives other bits), so the equality cannot hold by accident.

use std::ops::Range;
use std::time::Duration;

use resnet_collective::memory::MemoryRing;
use resnet_collective::ring::{all_reduce_sum_bucket, all_reduce_sum_wire, RingLink, SEGMENT};
use resnet_collective::Wire;

mod common;
use common::tcp_group;

/// Values with full mantissas: sums of a few of them round differently in different orders.
fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + rank * 104_729) % 10_007) as f32).sqrt() * 0.0137 - 0.7)
        .collect()
}

/// Bucket boundaries over `len` elements: uneven sizes, one single element, one empty bucket.
fn buckets(len: usize) -> Vec<Range<usize>> {
    let cuts = [0, len / 7, len / 7 + 1, len / 7 + 1, len / 2 + 3, len];
    cuts.windows(2)
        .map(|w| w[0].min(len)..w[1].min(len).max(w[0].min(len)))
        .collect()
}

#[derive(Clone, Copy)]
enum How {
    Flat,
    /// Bucket by bucket, last bucket first, each with its place in the flat buffer.
    Buckets,
    /// Bucket by bucket, each reduced as if it were a whole buffer (not exact: the control).
    Standalone,
}

fn run<L: RingLink + Send + 'static>(
    group: Vec<L>,
    len: usize,
    wire: Wire,
    how: How,
) -> Vec<Vec<f32>> {
    let handles: Vec<_> = group
        .into_iter()
        .map(|mut link| {
            std::thread::spawn(move || {
                let mut buf = input(link.rank(), len);
                match how {
                    How::Flat => all_reduce_sum_wire(&mut link, &mut buf, wire).expect("flat"),
                    How::Buckets => {
                        for b in buckets(len).into_iter().rev() {
                            let offset = b.start;
                            all_reduce_sum_bucket(&mut link, &mut buf[b], offset, len, wire)
                                .expect("bucket");
                        }
                    }
                    How::Standalone => {
                        for b in buckets(len).into_iter().rev() {
                            all_reduce_sum_wire(&mut link, &mut buf[b], wire).expect("bucket");
                        }
                    }
                }
                buf
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect()
}

fn memory(world: usize) -> Vec<MemoryRing> {
    MemoryRing::group(world, Duration::from_secs(10))
}

#[test]
fn buckets_in_backward_order_reproduce_the_flat_all_reduce_bit_for_bit() {
    let mut order_mattered = false;
    for world in 1..=4 {
        for len in [3usize, 1001, SEGMENT + 5] {
            for wire in [Wire::F32, Wire::Bf16] {
                let flat = run(memory(world), len, wire, How::Flat);
                let bucketed = run(memory(world), len, wire, How::Buckets);
                assert_eq!(flat, bucketed, "world {world} len {len} {wire:?}");
                assert!(flat.iter().all(|b| b == &flat[0]), "ranks disagree");
                let standalone = run(memory(world), len, wire, How::Standalone);
                order_mattered |= standalone != flat;
            }
        }
    }
    assert!(
        order_mattered,
        "the inputs are too tame: any order gives the same bits, so the test proves nothing"
    );
}

#[test]
fn buckets_over_tcp_match_the_in_memory_flat_all_reduce() {
    for world in [2usize, 3] {
        for wire in [Wire::F32, Wire::Bf16] {
            let flat = run(memory(world), 1001, wire, How::Flat);
            let tcp = run(tcp_group(world), 1001, wire, How::Buckets);
            assert_eq!(flat, tcp, "world {world} {wire:?}");
        }
    }
}

#[test]
fn a_bucket_outside_the_buffer_is_refused() {
    let mut group = memory(2);
    let mut link = group.pop().expect("rank 1");
    let mut bucket = vec![0f32; 10];
    let e = all_reduce_sum_bucket(&mut link, &mut bucket, 95, 100, Wire::F32)
        .expect_err("95..105 of 100");
    assert!(e.to_string().contains("95..105"), "{e}");
}
