//! How an epoch and a run end: the epoch's record, metrics file and checkpoint; the run's final
//! evaluation, checkpoint and summary. (An `impl Trainer` split by purpose.)

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use super::saving::write_metrics;
use super::Trainer;
use crate::checkpoint::write_json_synced;
use crate::saves::lost;
use crate::{param_hash, ScheduleKind, TrainConfig, TrainError};
use crate::{EpochRecord, EvalSummary, TrainObserver, TrainSummary};

impl<B: AutodiffBackend> Trainer<B> {
    /// The end of an epoch: statistics synced, its record (with the evaluation, or this rank's
    /// counts for the coordinator), `metrics.jsonl`, and a checkpoint when one is due.
    pub(super) fn finish_epoch(
        &mut self,
        cfg: &TrainConfig,
        lr: f64,
        obs: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        self.sync_replicas()?;
        let mut val_loss = None;
        let test = if self.replicas.in_group() {
            let counts = self.epoch_counts(true, lr);
            obs.on_epoch_counts(&counts);
            if cfg.schedule.kind == ScheduleKind::Plateau {
                val_loss = self.replicas.group_val_loss(counts.eval.as_ref())?;
            }
            None // only the coordinator sees the whole evaluation
        } else if cfg.eval_each_epoch {
            self.evaluate_test().map(|r| EvalSummary::from(&r))
        } else {
            None
        };
        let s = &mut self.state;
        let record = EpochRecord {
            epoch: s.epoch + 1,
            step: s.global_step,
            train_loss: s.epoch_loss_sum / s.epoch_seen.max(1) as f64,
            train_accuracy: s.epoch_correct as f64 / s.epoch_seen.max(1) as f64,
            lr,
            test,
            val_loss,
            seconds: s.epoch_seconds,
            images_per_sec: s.epoch_seen as f64 / s.epoch_seconds.max(1e-9),
        };
        s.history.push(record.clone());
        s.epoch += 1;
        s.batch_in_epoch = 0;
        s.epoch_loss_sum = 0.0;
        s.epoch_correct = 0;
        s.epoch_seen = 0;
        s.epoch_seconds = 0.0;
        if let Some(o) = &self.out {
            write_metrics(&o.join("metrics.jsonl"), &s.history)?;
        }
        obs.on_epoch(&record);
        // (A step checkpoint at this very step already holds the same state.)
        if self
            .checkpoints
            .epoch_due(cfg, self.state.epoch, self.state.global_step)
        {
            self.checkpoint(obs)?;
        }
        // Also without a checkpoint: a rollback never returns into an epoch whose metrics are
        // recorded (and, in a cluster, reported to the coordinator) already.
        self.take_snapshot();
        Ok(())
    }

    /// The end of `fit`: BatchNorm statistics averaged, the final evaluation (none after a stop:
    /// a stop has a deadline), the final checkpoint, and the summary — an error when the final
    /// state could not be saved.
    pub(super) fn end_of_run(
        &mut self,
        interrupted: bool,
        spe: usize,
        total: usize,
        obs: &mut dyn TrainObserver,
    ) -> Result<TrainSummary, TrainError> {
        self.sync_replicas()?;
        let final_eval = if interrupted {
            // A stop has a deadline (Kubernetes' grace period): save, skip the evaluation.
            None
        } else if self.replicas.in_group() {
            // Each rank holds a slice of the evaluation and the coordinator sums the counts; a run
            // that stopped inside an epoch reports that partial epoch with its evaluation.
            if self.state.batch_in_epoch > 0 || self.state.history.is_empty() {
                let lr = self.lr_at(self.state.global_step.saturating_sub(1), spe, total);
                let counts = self.epoch_counts(false, lr);
                obs.on_epoch_counts(&counts);
            }
            None
        } else {
            self.evaluate_test()
        };
        if !self.checkpoints.fresh(self.state.global_step) {
            self.checkpoint(obs)?;
        }
        // The final state must be on disk: a run that ends without it lost its result.
        let final_lost = match (&self.out, self.saves.failed.last()) {
            (Some(out), Some(f))
                if self.last_saved.as_ref().map(|(s, _)| *s) != Some(self.state.global_step) =>
            {
                Some(lost(
                    self.state.global_step,
                    f.error.clone(),
                    "the final checkpoint could not be written".into(),
                    &out.join("checkpoints"),
                ))
            }
            _ => None,
        };
        let summary = TrainSummary {
            steps: self.state.global_step,
            epochs_completed: self.state.history.len(),
            history: self.state.history.clone(),
            final_eval,
            checkpoint: self.last_saved.as_ref().map(|(_, p)| p.clone()),
            param_hash: param_hash(&self.model().valid()),
            interrupted,
            failed_checkpoints: self.saves.failed.clone(),
            skipped_steps: self.guard.skipped,
            rollbacks: self.guard.rollbacks,
        };
        if let Some(o) = &self.out {
            let written = write_json_synced(&o.join("summary.json"), &summary);
            if let Some(e) = final_lost {
                if let Err(w) = written {
                    tracing::error!(error = %w, "summary.json not written either");
                }
                return Err(e);
            }
            written?;
        }
        Ok(summary)
    }
}
