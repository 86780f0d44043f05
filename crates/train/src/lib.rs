//! Training for resnet-cluster: the step, optimizers with PyTorch's defaults, soft-target
//! cross-entropy, evaluation, data-parallel synchronisation, and checkpoints that resume
//! bit-exactly. What a run is without tensors (its configuration, checkpoint manifest, records,
//! LR schedules, sweep plan) is `resnet-spec`, re-exported here.
//!
//! The crate is generic over the Burn backend; the binaries choose the device.

pub mod buckets;
mod dropout;
mod eval;
mod finetune;
mod guard;
mod hash;
mod loss;
mod mix;
mod observer;
mod optim;
mod parallel;
pub mod record_io;
mod saves;
mod trainer;
mod warmup;

// The run without tensors (configuration, checkpoint manifest, records, step log, sweep plan,
// evaluation counts) is `resnet-spec`; re-exported so the trainer's users find it here too.
pub use resnet_spec::{argmax, count_batch, ClassMetrics, EvalCounts, EvalReport};
pub use resnet_spec::{
    checkpoint, checkpoint_bytes_bound, config_fingerprint, list_checkpoints, resolve_checkpoint,
    step_log, sweep, verify, CheckpointInfo, EpochCounts, EpochRecord, EvalSummary, FailedSave,
    FinetuneConfig, GradWire, Manifest, ManifestInfo, MixConfig, MixDraw, NonFinitePolicy,
    OptimConfig, OptimizerKind, ScheduleConfig, ScheduleKind, SpecError, StepLog, StepRecord,
    StepStats, StepTiming, TrainConfig, TrainState, TrainSummary, DEFAULT_BUCKET_MB,
    DEFAULT_STEP_METRICS_EVERY, FORMAT_VERSION, FREEZABLE, STEP_LOG,
};

pub use eval::{batch_tensor, evaluate, predict};
pub use finetune::{drop_frozen, freeze_batchnorm, take_head_grads};
pub use guard::{Guard, Verdict, MAX_CONSECUTIVE_SKIPS, MAX_ROLLBACKS};
pub use hash::param_hash;
pub use loss::{smoothed_targets, soft_cross_entropy, targets_tensor};
pub use mix::{mix_images, mixed_targets};
pub use observer::{Quiet, TrainObserver};
pub use optim::{AnyOptimizer, BuildOptimizer};
pub use parallel::{
    broadcast_model, sync_batchnorm, sync_gradients, sync_gradients_with, GradSync, SyncError,
    Synced,
};
pub use saves::DEFAULT_MAX_CHECKPOINT_FAILURES;
pub use trainer::{load_model, load_state, Trainer};
pub use warmup::{warm_up, WarmUp};

/// Errors of training, evaluation and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An invalid configuration; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// A checkpoint that cannot be written, read or verified; the message names the path.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Checkpoints could not be written and the run stopped rather than train on with nothing
    /// saved (too many failures in a row, or the final checkpoint).
    #[error(
        "step {step}: {why} (last cause: {error}); newest checkpoint: {newest}. Fix the \
         storage (space, permissions, mount) and continue with --resume latest"
    )]
    CheckpointLost {
        /// The step whose checkpoint failed last.
        step: usize,
        /// The last failure's cause (file and operating-system error).
        error: String,
        /// The rule that stopped the run.
        why: String,
        /// The newest checkpoint left on disk, or "none in DIR".
        newest: String,
    },
    /// A collective operation with the other replicas failed (names the peer); the kind says
    /// whether re-forming the group can help.
    #[error("collective: {0}")]
    Collective(#[from] SyncError),
    /// A data problem.
    #[error(transparent)]
    Data(#[from] resnet_data::DataError),
    /// The training diverged: a step's loss was not finite on some rank (the weights are those
    /// before that step).
    #[error(
        "step {step}: the training loss is {loss} (diverged; {why}); the weights before this step \
         are kept and the newest checkpoint holds finite ones. Lower the learning rate, or use \
         --on-nonfinite skip-step or rollback"
    )]
    NonFinite {
        /// The step that was not applied (1-based).
        step: usize,
        /// This rank's loss at that step (finite when another rank's was not).
        loss: f64,
        /// Which rule stopped the run.
        why: String,
    },
}

impl From<SpecError> for TrainError {
    /// The same variant and message as before the run's files moved to `resnet-spec`.
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::Config(m) => TrainError::Config(m),
            // `TrainConfig::validate` wraps model errors into `Config`; elsewhere a model
            // configuration error reads as the model crate writes it.
            SpecError::Model(_) => TrainError::Config(e.to_string()),
            SpecError::Checkpoint(m) => TrainError::Checkpoint(m),
        }
    }
}
