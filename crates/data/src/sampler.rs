//! Which sample indices a rank reads in an epoch: `torch.utils.data.DistributedSampler` semantics.
//!
//! A permutation seeded by `(seed, epoch)` is made the same on every rank, brought to a multiple of
//! the world size (by wrapping around to pad, or by dropping the tail), and rank `r` takes every
//! `world`-th index starting at `r`. Every rank therefore gets the same number of samples, and
//! together the ranks cover the (padded) epoch exactly once.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::synthetic::mix;

/// The per-epoch shard of one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// Run seed.
    pub seed: u64,
    /// Epoch number (0-based): a new permutation each epoch.
    pub epoch: u64,
    /// Number of ranks.
    pub world: usize,
    /// This rank, `0..world`.
    pub rank: usize,
    /// Shuffle (training) or keep dataset order (evaluation).
    pub shuffle: bool,
    /// Drop the tail that does not divide by `world` instead of padding by wrapping around.
    pub drop_last: bool,
}

impl ShardPlan {
    /// A single-process plan (world 1, rank 0).
    pub fn single(seed: u64, epoch: u64, shuffle: bool) -> Self {
        Self {
            seed,
            epoch,
            world: 1,
            rank: 0,
            shuffle,
            drop_last: false,
        }
    }

    /// This rank's indices into a dataset of `len` samples.
    pub fn indices(&self, len: usize) -> Vec<usize> {
        assert!(
            self.world > 0 && self.rank < self.world,
            "rank out of range"
        );
        let mut order: Vec<usize> = (0..len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(self.epoch)));
            order.shuffle(&mut rng);
        }
        let total = if self.drop_last {
            len / self.world * self.world
        } else {
            len.div_ceil(self.world) * self.world
        };
        if len > 0 {
            for i in len..total {
                order.push(order[i % len]);
            }
        }
        order.truncate(total);
        order
            .into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_epoch_once_and_are_equal() {
        for world in 1..=5 {
            for len in [0usize, 1, 3, 10, 17] {
                let shards: Vec<Vec<usize>> = (0..world)
                    .map(|rank| {
                        ShardPlan {
                            seed: 3,
                            epoch: 1,
                            world,
                            rank,
                            shuffle: true,
                            drop_last: false,
                        }
                        .indices(len)
                    })
                    .collect();
                let per = len.div_ceil(world);
                assert!(
                    shards.iter().all(|s| s.len() == per),
                    "world {world} len {len}"
                );
                let mut all: Vec<usize> = shards.concat();
                all.sort();
                all.dedup();
                assert_eq!(all, (0..len).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn drop_last_truncates_and_epochs_differ() {
        let p = |rank, epoch| ShardPlan {
            seed: 1,
            epoch,
            world: 3,
            rank,
            shuffle: true,
            drop_last: true,
        };
        assert_eq!(p(0, 0).indices(10).len(), 3);
        assert_ne!(p(0, 0).indices(100), p(0, 1).indices(100));
        assert_eq!(p(2, 5).indices(100), p(2, 5).indices(100));
        assert_eq!(ShardPlan::single(1, 0, false).indices(4), vec![0, 1, 2, 3]);
    }
}
