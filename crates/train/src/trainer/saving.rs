//! Checkpoints, and the in-memory snapshot `on_nonfinite = rollback` returns to. (An
//! `impl Trainer` split by purpose, like `replicas.rs`.)

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use resnet_model::ResNet;

use super::restore::ckpt_err;
use super::Trainer;
use crate::checkpoint::{
    config_fingerprint, prune, write_checkpoint_with, write_json_synced, ManifestInfo,
};
use crate::record_io;
use crate::saves::{RETRY_PAUSE, SAVE_ATTEMPTS};
use crate::CheckpointInfo;
use crate::{AnyOptimizer, NonFinitePolicy, TrainError};
use crate::{EpochRecord, TrainObserver, TrainState};

/// What `on_nonfinite = rollback` returns to: the state of the newest checkpoint (or epoch end),
/// kept in memory on every rank (tensors are shared, not copied, until training replaces them).
pub(super) struct Snapshot<B: AutodiffBackend> {
    model: ResNet<B>,
    optim: AnyOptimizer<B>,
    state: TrainState,
    checkpointed_at: Option<usize>,
    bn_synced_at: Option<usize>,
}

pub(super) fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    let mut text = String::new();
    for r in history {
        text.push_str(
            &serde_json::to_string(r).map_err(|e| TrainError::Checkpoint(e.to_string()))?,
        );
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| ckpt_err(path, e))
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Writes a checkpoint of the current state into `<out>/checkpoints` (no-op without `--out`).
    ///
    /// A failed write (full or read-only disk) is retried once, then reported to the observer,
    /// logged and listed in the summary, and training goes on (the write is atomic, so earlier
    /// checkpoints are untouched) unless too many failed in a row (`saves.rs`).
    pub fn checkpoint(&mut self, obs: &mut dyn TrainObserver) -> Result<(), TrainError> {
        // Data parallel: every rank takes part (the policy is a function of the step, so all
        // ranks get here together); the saved state must stand for the whole group. Only rank 0
        // has an output directory.
        if self.replicas.peers().is_some() {
            self.sync_replicas()?;
            self.replicas.pool_epoch_sums(&mut self.state)?;
        }
        // On every rank, so all ranks agree whether the end of `fit` still needs one.
        self.checkpoints
            .taken(self.state.global_step, Instant::now());
        self.write_checkpoint_now(obs)?;
        self.take_snapshot();
        Ok(())
    }

    /// `on_nonfinite = rollback`: remembers the current state (at the start of `fit`, at every
    /// checkpoint and at every epoch's end, which every rank reaches at the same step).
    pub(super) fn take_snapshot(&mut self) {
        if self.state.config.on_nonfinite != NonFinitePolicy::Rollback {
            return;
        }
        if let Some(model) = &self.model {
            self.snapshot = Some(Snapshot {
                model: model.clone(),
                optim: self.optim.clone(),
                state: self.state.clone(),
                checkpointed_at: self.checkpoints.taken_at(),
                bn_synced_at: self.replicas.bn_synced_at(),
            });
        }
    }

    /// Returns to the snapshot after step `bad` was not finite, and passes over the batches up
    /// to and including that step when training goes on.
    pub(super) fn roll_back(&mut self, bad: usize) -> Result<(), TrainError> {
        let snap = self.snapshot.as_ref().ok_or_else(|| {
            TrainError::Config("on_nonfinite = rollback without a state to return to".into())
        })?;
        self.model = Some(snap.model.clone());
        self.optim = snap.optim.clone();
        self.state = snap.state.clone();
        self.checkpoints.restore_taken_at(snap.checkpointed_at);
        self.replicas.set_bn_synced_at(snap.bn_synced_at);
        let back_to = self.state.global_step;
        self.skip_until = bad;
        tracing::warn!(
            step = bad,
            back_to,
            rollbacks = self.guard.rollbacks,
            "non-finite step: rolled back to the newest checkpoint's state; steps {}..={bad} pass over their batches (on_nonfinite = rollback)",
            back_to + 1
        );
        Ok(())
    }

    /// Writes this replica's state as a checkpoint without talking to the other ranks (no-op
    /// without an output directory): the most advanced survivor of a lost worker heals the
    /// others from it.
    pub fn write_checkpoint_now(&mut self, obs: &mut dyn TrainObserver) -> Result<(), TrainError> {
        let Some(out) = &self.out else { return Ok(()) };
        // A finite loss can hide an infinite gradient (caught by the next step's loss, or at
        // once in a data-parallel run): such weights are never saved, so the newest checkpoint
        // always holds finite ones.
        if !crate::guard::weights_finite(&self.model().valid()) {
            return Err(TrainError::NonFinite {
                step: self.state.global_step,
                loss: self.last_loss,
                why: "the weights after this step are not finite (its gradient was not); \
                      its checkpoint was not written"
                    .into(),
            });
        }
        let root = out.join("checkpoints");
        let started = Instant::now();
        let model = self.model().clone();
        let info = ManifestInfo {
            world_size: Some(self.rank_world().1),
            config_fingerprint: Some(config_fingerprint(&self.state.config)),
        };
        let (step, epoch) = (self.state.global_step, self.state.epoch);
        let mut attempt = 0;
        let dir = loop {
            attempt += 1;
            let written = write_checkpoint_with(&root, step, epoch, &info, |d| {
                record_io::write::<B, _>(&d.join("model"), model.clone().into_record(), "model")?;
                self.optim.save(&d.join("optim"))?;
                Ok::<_, TrainError>(write_json_synced(&d.join("state.json"), &self.state)?)
            });
            match written {
                Ok(dir) => break dir,
                Err(e) if attempt < SAVE_ATTEMPTS => {
                    tracing::warn!(step, error = %e, "checkpoint failed; retrying once");
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => {
                    tracing::error!(step, error = %e, "checkpoint failed; earlier checkpoints are intact");
                    obs.on_checkpoint_failed(&e.to_string());
                    return self.saves.failed(step, e.to_string(), &root);
                }
            }
        };
        self.saves.saved();
        prune(&root, self.state.config.keep_checkpoints);
        let info = CheckpointInfo {
            step: self.state.global_step,
            epoch: self.state.epoch,
            seconds: started.elapsed().as_secs_f64(),
            bytes: crate::checkpoint::dir_size(&dir),
        };
        obs.on_checkpoint(&dir, &info);
        self.last_saved = Some((self.state.global_step, dir));
        Ok(())
    }
}
