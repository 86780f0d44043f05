//! The data-parallel group as a trainer sees it ([`Replicas`]): the sync to its peers, this
//! replica's rank and the group's size, and what the replicas share besides the gradients —
//! BatchNorm statistics, the partial epoch's sums before a checkpoint, the group's validation
//! loss. Then the trainer's side of it: each rank's slice of the evaluation and its epoch counts.
//!
//! Rank and world are kept here, not asked of the sync each time: the overlapped all-reduce
//! lends the sync to its own thread for the backward pass, and the step still needs its rank
//! meanwhile (rank 0's clock decides time-based checkpoints).

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use resnet_model::ResNet;

use super::Trainer;
use crate::eval::evaluate;
use crate::parallel::{sync_batchnorm, GradSync};
use crate::TrainError;
use crate::{EpochCounts, TrainState};
use crate::{EvalCounts, EvalReport};

/// This replica's group: alone, or a rank of `world` with a sync to the others.
pub(crate) struct Replicas {
    sync: Option<Box<dyn GradSync>>,
    rank: usize,
    world: usize,
    /// Step at which BatchNorm statistics were last averaged over the replicas.
    bn_synced_at: Option<usize>,
}

impl Replicas {
    /// A process on its own.
    pub(crate) fn alone() -> Self {
        Self {
            sync: None,
            rank: 0,
            world: 1,
            bn_synced_at: None,
        }
    }

    /// Joins a group (again, after it was re-formed: nothing is known to be shared yet).
    pub(crate) fn join(&mut self, sync: Box<dyn GradSync>) {
        (self.rank, self.world) = (sync.rank(), sync.world());
        self.sync = Some(sync);
        self.bn_synced_at = None;
    }

    /// This replica's rank (0 alone), also while the sync is lent.
    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    /// The group's size (1 alone).
    pub(crate) fn world(&self) -> usize {
        self.world
    }

    /// Whether this trainer is a replica of a group (possibly of one), which reports its
    /// epochs as counts for the coordinator to sum.
    pub(crate) fn in_group(&self) -> bool {
        self.sync.is_some() || self.world > 1
    }

    /// The sync when there is anyone to exchange with: a group of one skips the flatten/copy
    /// work (it still reports like any replica).
    pub(crate) fn peers(&mut self) -> Option<&mut (dyn GradSync + 'static)> {
        let world = self.world;
        self.sync.as_deref_mut().filter(|_| world > 1)
    }

    /// [`Self::peers`], read-only.
    pub(crate) fn peers_ref(&self) -> Option<&dyn GradSync> {
        self.sync.as_deref().filter(|_| self.world > 1)
    }

    /// Lends the sync (to the overlapped all-reduce's thread) until [`Self::give_back`]; rank and
    /// world stay known meanwhile.
    pub(crate) fn lend(&mut self) -> Option<Box<dyn GradSync>> {
        self.sync.take()
    }

    /// Returns what [`Self::lend`] lent.
    pub(crate) fn give_back(&mut self, sync: Box<dyn GradSync>) {
        self.sync = Some(sync);
    }

    /// When BatchNorm statistics were last averaged (kept by the rollback snapshot).
    pub(crate) fn bn_synced_at(&self) -> Option<usize> {
        self.bn_synced_at
    }

    /// Restores [`Self::bn_synced_at`] (a rollback).
    pub(crate) fn set_bn_synced_at(&mut self, step: Option<usize>) {
        self.bn_synced_at = step;
    }

    /// Averages `model`'s BatchNorm statistics over the replicas at `step`: nothing alone, and
    /// nothing when already done at this step (averaging equal values again could round
    /// differently).
    pub(crate) fn sync_batchnorm<B: Backend>(
        &mut self,
        model: &mut ResNet<B>,
        step: usize,
    ) -> Result<(), TrainError> {
        if self.bn_synced_at == Some(step) {
            return Ok(());
        }
        if let Some(sync) = self.peers() {
            sync_batchnorm(model, sync)?;
            self.bn_synced_at = Some(step);
        }
        Ok(())
    }

    /// Before a data-parallel checkpoint: every rank's partial-epoch sums in `s` move to rank 0
    /// (the only rank whose state is saved), so a resumed run reports the epoch exactly once.
    pub(crate) fn pool_epoch_sums(&mut self, s: &mut TrainState) -> Result<(), TrainError> {
        let (rank, world) = (self.rank, self.world as f64);
        let Some(sync) = self.peers() else {
            return Ok(());
        };
        let mut buf = [
            s.epoch_loss_sum as f32,
            s.epoch_correct as f32,
            s.epoch_seen as f32,
        ];
        sync.all_reduce_mean(&mut buf)
            .map_err(TrainError::Collective)?;
        if rank == 0 {
            s.epoch_loss_sum = buf[0] as f64 * world;
            s.epoch_correct = (buf[1] as f64 * world).round() as u64;
            s.epoch_seen = (buf[2] as f64 * world).round() as u64;
        } else {
            s.epoch_loss_sum = 0.0;
            s.epoch_correct = 0;
            s.epoch_seen = 0;
        }
        Ok(())
    }

    /// Mean validation loss over the whole test split from every rank's slice (`eval`).
    pub(crate) fn group_val_loss(
        &mut self,
        eval: Option<&EvalCounts>,
    ) -> Result<Option<f64>, TrainError> {
        let Some(sync) = self.peers() else {
            return Ok(eval.map(|e| e.loss_sum / e.total().max(1) as f64));
        };
        let (sum, n) = eval.map_or((0.0, 0.0), |e| (e.loss_sum, e.total() as f64));
        // Means of (sum, count) over the ranks; their ratio is the global mean loss.
        let mut buf = [sum as f32, n as f32];
        sync.all_reduce_mean(&mut buf)
            .map_err(TrainError::Collective)?;
        Ok((buf[1] > 0.0).then(|| buf[0] as f64 / buf[1] as f64))
    }
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Averages BatchNorm statistics over the replicas ([`Replicas::sync_batchnorm`]).
    pub(super) fn sync_replicas(&mut self) -> Result<(), TrainError> {
        let step = self.state.global_step;
        match self.model.as_mut() {
            Some(model) => self.replicas.sync_batchnorm(model, step),
            None => Ok(()),
        }
    }

    /// This rank's counts for the epoch in progress, with its slice of the evaluation.
    pub(super) fn epoch_counts(&self, complete: bool, lr: f64) -> EpochCounts {
        let s = &self.state;
        EpochCounts {
            epoch: s.epoch + 1,
            step: s.global_step,
            complete,
            train_loss_sum: s.epoch_loss_sum,
            train_correct: s.epoch_correct,
            train_seen: s.epoch_seen,
            seconds: s.epoch_seconds,
            lr,
            eval: if s.config.eval_each_epoch || !complete {
                self.eval_counts()
            } else {
                None
            },
        }
    }

    /// Evaluates the current model on the test split (None when the split is empty).
    pub fn evaluate_test(&self) -> Option<EvalReport> {
        self.eval_counts().map(|c| c.report(&self.test.classes))
    }

    /// Exact counts over this rank's slice of the test split: indices `rank, rank + world, ...`
    /// (disjoint and unpadded, so the ranks' counts sum to the whole split).
    pub(super) fn eval_counts(&self) -> Option<EvalCounts> {
        if self.test.is_empty() {
            return None;
        }
        let cfg = &self.state.config;
        let (rank, world) = self.rank_world();
        let model = self.model().valid();
        let indices: Vec<usize> = (rank..self.test.len()).step_by(world).collect();
        Some(evaluate(
            &model,
            self.test.clone(),
            indices,
            self.norm,
            cfg.eval_batch_size,
            cfg.loader_workers,
            &self.device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::SyncError;

    /// A group whose all-reduce mean turns every value into `mean` (what the other ranks
    /// would have made of it) and counts its calls.
    struct Fixed {
        rank: usize,
        mean: f32,
        calls: usize,
    }

    impl GradSync for Fixed {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            4
        }
        fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), SyncError> {
            self.calls += 1;
            buf.iter_mut().for_each(|v| *v = self.mean);
            Ok(())
        }
        fn broadcast(&mut self, _buf: &mut [f32], _root: usize) -> Result<(), SyncError> {
            Ok(())
        }
    }

    fn state(loss: f64, correct: u64, seen: u64) -> TrainState {
        TrainState {
            format_version: crate::checkpoint::FORMAT_VERSION,
            epoch: 0,
            batch_in_epoch: 0,
            global_step: 0,
            config: crate::TrainConfig::default(),
            history: Vec::new(),
            epoch_loss_sum: loss,
            epoch_correct: correct,
            epoch_seen: seen,
            epoch_seconds: 0.0,
        }
    }

    #[test]
    fn rank_and_world_stay_known_while_the_sync_is_lent() {
        let mut r = Replicas::alone();
        assert_eq!((r.rank(), r.world(), r.in_group()), (0, 1, false));
        assert!(r.peers().is_none());
        r.join(Box::new(Fixed {
            rank: 2,
            mean: 0.0,
            calls: 0,
        }));
        let lent = r.lend().expect("a sync");
        assert_eq!((r.rank(), r.world(), r.in_group()), (2, 4, true));
        assert!(r.peers().is_none(), "nothing to exchange with while lent");
        r.give_back(lent);
        assert_eq!(r.peers().map(|p| p.rank()), Some(2));
    }

    #[test]
    fn the_epoch_sums_pool_on_rank_0_and_leave_the_others_empty() {
        for rank in [0, 3] {
            let mut r = Replicas::alone();
            r.join(Box::new(Fixed {
                rank,
                mean: 2.5,
                calls: 0,
            }));
            let mut s = state(1.0, 3, 5);
            r.pool_epoch_sums(&mut s).expect("pooled");
            let got = (s.epoch_loss_sum, s.epoch_correct, s.epoch_seen);
            // The mean over 4 ranks times 4: the group's sum.
            let want = if rank == 0 {
                (10.0, 10, 10)
            } else {
                (0.0, 0, 0)
            };
            assert_eq!(got, want, "rank {rank}");
        }
        // Alone nothing moves.
        let mut s = state(1.0, 3, 5);
        Replicas::alone().pool_epoch_sums(&mut s).expect("alone");
        assert_eq!(
            (s.epoch_loss_sum, s.epoch_correct, s.epoch_seen),
            (1.0, 3, 5)
        );
    }

    #[test]
    fn the_group_val_loss_is_the_ratio_of_the_mean_sums() {
        let mut r = Replicas::alone();
        assert_eq!(r.group_val_loss(None).expect("alone"), None);
        r.join(Box::new(Fixed {
            rank: 1,
            mean: 3.0,
            calls: 0,
        }));
        // (3 / 3): whatever this rank's own counts.
        assert_eq!(r.group_val_loss(None).expect("group"), Some(1.0));
    }
}
