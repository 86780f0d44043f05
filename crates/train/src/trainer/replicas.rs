//! What replicas of a data-parallel group share besides the gradients: BatchNorm statistics,
//! the partial epoch's sums before a checkpoint, the group's validation loss, and each rank's
//! slice of the evaluation. (An `impl Trainer` split by purpose: these read and write the
//! trainer's fields like its other methods.)

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::Trainer;
use crate::eval::evaluate;
use crate::metrics::{EvalCounts, EvalReport};
use crate::parallel::sync_batchnorm;
use crate::records::EpochCounts;
use crate::TrainError;

impl<B: AutodiffBackend> Trainer<B> {
    /// Averages BatchNorm statistics over the replicas (no-op for a single process, and when
    /// already done at this step: averaging equal values again could round differently).
    pub(super) fn sync_replicas(&mut self) -> Result<(), TrainError> {
        let step = self.state.global_step;
        if self.bn_synced_at == Some(step) {
            return Ok(());
        }
        if let (Some(sync), Some(model)) = (
            self.parallel.as_mut().filter(|p| p.world() > 1),
            self.model.as_mut(),
        ) {
            sync_batchnorm(model, sync.as_mut())?;
            self.bn_synced_at = Some(step);
        }
        Ok(())
    }

    /// Before a data-parallel checkpoint: every rank's partial-epoch sums move to rank 0 (the
    /// only rank whose state is saved), so a resumed run reports the epoch exactly once.
    pub(super) fn pool_epoch_sums(&mut self) -> Result<(), TrainError> {
        let Some(sync) = self.parallel.as_mut().filter(|p| p.world() > 1) else {
            return Ok(());
        };
        let (rank, world) = (sync.rank(), sync.world() as f64);
        let s = &mut self.state;
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

    /// Mean validation loss over the whole test split from every rank's slice (data parallel).
    pub(super) fn group_val_loss(
        &mut self,
        eval: Option<&EvalCounts>,
    ) -> Result<Option<f64>, TrainError> {
        let Some(sync) = self.parallel.as_mut().filter(|p| p.world() > 1) else {
            return Ok(eval.map(|e| e.loss_sum / e.total().max(1) as f64));
        };
        let (sum, n) = eval.map_or((0.0, 0.0), |e| (e.loss_sum, e.total() as f64));
        // Means of (sum, count) over the ranks; their ratio is the global mean loss.
        let mut buf = [sum as f32, n as f32];
        sync.all_reduce_mean(&mut buf)
            .map_err(TrainError::Collective)?;
        Ok((buf[1] > 0.0).then(|| buf[0] as f64 / buf[1] as f64))
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
