//! A training run described without tensors: what the control plane and the trainer share.
//!
//! ```text
//! config.rs      TrainConfig: the whole resolved configuration of a run (TOML/JSON, defaults)
//! model.rs       ResNetConfig: depth, stem, width; tensor counts for size bounds
//! optim.rs, schedule.rs, mix.rs, finetune.rs, precision.rs, nonfinite.rs, wire.rs
//!                the sections of TrainConfig, each with its validation
//! checkpoint.rs  the checkpoint directory format: manifest, verification, LATEST, pruning
//! records.rs     state.json, summary.json and the per-step / per-epoch records
//! step_log.rs    steps.jsonl, the loss curve between epochs
//! metrics.rs     exact evaluation counts (additive over batches and ranks) and the report
//! sweep/         search space, scheduler (random search, successive halving), results.csv
//! ```
//!
//! No Burn here: `resnet-coordinator` validates configs, verifies and stores checkpoints,
//! reduces evaluation counts and schedules sweeps through this crate alone, and `resnet-train`
//! re-exports all of it next to the Burn code that runs the training.

pub mod checkpoint;
mod config;
mod finetune;
mod metrics;
mod mix;
mod model;
mod nonfinite;
mod optim;
mod precision;
mod records;
mod schedule;
pub mod step_log;
pub mod sweep;
mod wire;

pub use checkpoint::{
    checkpoint_bytes_bound, config_fingerprint, list_checkpoints, resolve_checkpoint, verify,
    Manifest, ManifestInfo, FORMAT_VERSION,
};
pub use config::{TrainConfig, DEFAULT_BUCKET_MB};
pub use finetune::{FinetuneConfig, FREEZABLE};
pub use metrics::{argmax, count_batch, ClassMetrics, EvalCounts, EvalReport};
pub use mix::{MixConfig, MixDraw};
pub use model::{BlockKind, ResNetConfig, Stem};
pub use nonfinite::NonFinitePolicy;
pub use optim::{OptimConfig, OptimizerKind};
pub use precision::ConvPrecision;
pub use records::{
    CheckpointInfo, EpochCounts, EpochRecord, EvalSummary, FailedSave, StepStats, StepTiming,
    TrainState, TrainSummary,
};
pub use schedule::{ScheduleConfig, ScheduleKind};
pub use step_log::{StepLog, StepRecord, DEFAULT_STEP_METRICS_EVERY, STEP_LOG};
pub use wire::GradWire;

/// Errors of the run's configuration and checkpoint files. `resnet-train` turns them into its
/// `TrainError` variants of the same names (same messages); `resnet-model` turns `Model` into
/// its `ModelError::Config`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// An invalid configuration; the message names the field.
    #[error("invalid config: {0}")]
    Config(String),
    /// An invalid model configuration; the message names the field and the expected range.
    #[error("invalid model config: {0}")]
    Model(String),
    /// A checkpoint that cannot be written, read or verified; the message names the path.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}
