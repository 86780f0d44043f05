//! Training for resnet-cluster: the step, optimizers with PyTorch's defaults, stateless LR
//! schedules, soft-target cross-entropy, exact evaluation counts, and an atomic, verified
//! checkpoint format that resumes bit-exactly.
//!
//! The crate is generic over the Burn backend; the binaries choose the device.

pub mod buckets;
pub mod checkpoint;
mod config;
mod dropout;
mod eval;
mod finetune;
mod guard;
mod hash;
mod loss;
mod metrics;
mod mix;
mod optim;
mod parallel;
pub mod record_io;
mod records;
mod saves;
mod schedule;
pub mod step_log;
pub mod sweep;
mod trainer;
mod warmup;

pub use checkpoint::{
    config_fingerprint, list_checkpoints, resolve_checkpoint, verify, Manifest, ManifestInfo,
    FORMAT_VERSION,
};
pub use config::{TrainConfig, DEFAULT_BUCKET_MB};
pub use eval::{batch_tensor, evaluate, predict};
pub use finetune::{take_head_grads, FinetuneConfig, FREEZABLE};
pub use guard::{Guard, NonFinitePolicy, Verdict, MAX_CONSECUTIVE_SKIPS, MAX_ROLLBACKS};
pub use hash::param_hash;
pub use loss::{smoothed_targets, soft_cross_entropy, targets_tensor};
pub use metrics::{argmax, count_batch, ClassMetrics, EvalCounts, EvalReport};
pub use mix::{mix_images, mixed_targets, MixConfig, MixDraw};
pub use optim::{AnyOptimizer, OptimConfig, OptimizerKind};
pub use parallel::{
    broadcast_model, sync_batchnorm, sync_gradients, sync_gradients_with, GradSync, GradWire,
    SyncError, Synced,
};
pub use record_io::checkpoint_bytes_bound;
pub use records::{
    CheckpointInfo, EpochCounts, EpochRecord, EvalSummary, Quiet, StepStats, StepTiming,
    TrainObserver, TrainState, TrainSummary,
};
pub use saves::{FailedSave, DEFAULT_MAX_CHECKPOINT_FAILURES};
pub use schedule::{ScheduleConfig, ScheduleKind};
pub use step_log::{StepLog, StepRecord, DEFAULT_STEP_METRICS_EVERY, STEP_LOG};
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
