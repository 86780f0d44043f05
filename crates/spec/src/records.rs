//! What the training loop reports and records: per-step stats, per-epoch records, the state saved
//! in checkpoints and the summary of a run. The observer the training loop reports to is
//! `resnet_train::TrainObserver`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::{EvalCounts, EvalReport};
use crate::TrainConfig;

/// Seconds spent in each phase of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Waiting for the loader.
    pub data: f64,
    /// Forward pass and loss.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
    /// Gradient all-reduce (data-parallel runs): the time the step waited for it after the
    /// backward pass — all of it without overlap, only the exposed rest with (`overlap`).
    pub allreduce: f64,
    /// Optimizer update.
    pub optimizer: f64,
    /// Not a phase (not in [`Self::total`]): the collective's own time on the step's gradients,
    /// whether hidden behind the backward pass or not. Without overlap it equals `allreduce`.
    #[serde(default)]
    pub communication: f64,
}

impl StepTiming {
    /// Sum of all phases (the step's wall time; `communication` overlaps them).
    pub fn total(&self) -> f64 {
        self.data + self.forward + self.backward + self.allreduce + self.optimizer
    }
}

/// What the loop reports after every step.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global steps completed.
    pub step: usize,
    /// Batch index within the epoch just completed (0-based).
    pub batch: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Training loss of this batch.
    pub loss: f64,
    /// Running accuracy over the epoch so far.
    pub epoch_accuracy: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Images in the batch.
    pub images: usize,
    /// Phase timings.
    pub timing: StepTiming,
    /// Gradient bytes this rank all-reduced in the step (0 without data parallelism).
    pub allreduce_bytes: usize,
    /// Bytes the bf16 gradient wire saved in the step against f32 (0 on the f32 wire).
    pub allreduce_saved_bytes: usize,
    /// Data-parallel group size (1 on its own).
    pub world: usize,
}

/// Test-split metrics kept per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Macro F1.
    pub macro_f1: f64,
}

impl EpochRecord {
    /// The loss `plateau` watches: validation loss, else the training loss.
    pub fn watched_loss(&self) -> f64 {
        self.val_loss
            .or(self.test.as_ref().map(|t| t.loss))
            .unwrap_or(self.train_loss)
    }
}

impl From<&EvalReport> for EvalSummary {
    fn from(r: &EvalReport) -> Self {
        Self {
            accuracy: r.accuracy,
            top5: r.top5,
            loss: r.loss,
            macro_f1: r.macro_f1,
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (1-based, as printed).
    pub epoch: usize,
    /// Global steps at the end of the epoch.
    pub step: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch (augmented images, model in training mode).
    pub train_accuracy: f64,
    /// LR of the epoch's last step.
    pub lr: f64,
    /// Test metrics, when evaluated.
    pub test: Option<EvalSummary>,
    /// Validation loss over the whole test split when this replica only evaluated a slice of it
    /// (data-parallel runs with the `plateau` schedule, which needs it on every rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Wall-clock seconds of the epoch's training steps.
    pub seconds: f64,
    /// Training images per second over the epoch.
    pub images_per_sec: f64,
}

/// Where a run is; `state.json` in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Checkpoint format version.
    pub format_version: u32,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Next batch of that epoch.
    pub batch_in_epoch: usize,
    /// Steps completed.
    pub global_step: usize,
    /// The resolved configuration.
    pub config: TrainConfig,
    /// Completed epochs.
    pub history: Vec<EpochRecord>,
    /// Running sums of the epoch in progress (so a mid-epoch resume reports the same epoch).
    pub epoch_loss_sum: f64,
    /// Correct training predictions so far this epoch.
    pub epoch_correct: u64,
    /// Training images so far this epoch.
    pub epoch_seen: u64,
    /// Training seconds so far this epoch.
    pub epoch_seconds: f64,
}

/// What one checkpoint write cost.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointInfo {
    /// Global step saved.
    pub step: usize,
    /// 0-based epoch in progress at that step.
    pub epoch: usize,
    /// Seconds to write it (serialise, fsync, rename).
    pub seconds: f64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// One rank's additive counts for an epoch (or the partial epoch a run stopped in).
#[derive(Debug, Clone)]
pub struct EpochCounts {
    /// 1-based epoch.
    pub epoch: usize,
    /// Global step at the end.
    pub step: usize,
    /// False for the partial epoch at the end of a run stopped by `max_steps`.
    pub complete: bool,
    /// Sum of per-image training loss.
    pub train_loss_sum: f64,
    /// Correct training predictions.
    pub train_correct: u64,
    /// Training images.
    pub train_seen: u64,
    /// Training seconds.
    pub seconds: f64,
    /// LR of the last step.
    pub lr: f64,
    /// This rank's share of the evaluation (every rank evaluates a disjoint slice).
    pub eval: Option<EvalCounts>,
}

/// The result of `Trainer::fit` (`resnet-train`), written as `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps completed in total.
    pub steps: usize,
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Per-epoch records.
    pub history: Vec<EpochRecord>,
    /// Test-split evaluation of the final model.
    pub final_eval: Option<EvalReport>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// `resnet_train::param_hash` of the final model.
    pub param_hash: String,
    /// The observer asked the run to stop (`resnet_train::TrainObserver::stop_requested`, e.g.
    /// on SIGTERM): it stopped at a step boundary, saved a checkpoint and skipped the final
    /// evaluation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Checkpoints that could not be written, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checkpoints: Vec<crate::FailedSave>,
    /// Non-finite steps dropped in this process (`on_nonfinite = skip-step`).
    #[serde(default)]
    pub skipped_steps: usize,
    /// Returns to the newest checkpoint's state in this process (`on_nonfinite = rollback`).
    #[serde(default)]
    pub rollbacks: usize,
}

/// One checkpoint that could not be written, as `summary.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedSave {
    /// The step it was taken at.
    pub step: usize,
    /// Why the last attempt failed (names the file and the operating system's cause).
    pub error: String,
}
