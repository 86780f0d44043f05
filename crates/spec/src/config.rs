//! The resolved configuration of a training run; saved in `--out` and inside every checkpoint.

use resnet_data::DataConfig;
use serde::{Deserialize, Serialize};

use crate::{
    ConvPrecision, FinetuneConfig, GradWire, MixConfig, NonFinitePolicy, OptimConfig, ResNetConfig,
    ScheduleConfig, SpecError,
};

/// Everything that determines a run. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The network. `num_classes` is set from the dataset.
    pub model: ResNetConfig,
    /// Data source, limits and augmentation.
    pub data: DataConfig,
    /// Optimizer.
    pub optim: OptimConfig,
    /// LR schedule.
    pub schedule: ScheduleConfig,
    /// Epochs; the schedule spans them all. Default 10.
    pub epochs: usize,
    /// Images per step. Default 128.
    pub batch_size: usize,
    /// Stop after this many steps in total (smoke runs). Does not change the schedule, so a run
    /// stopped early and resumed follows the same LR curve. Default: no limit.
    pub max_steps: Option<usize>,
    /// Seed for weights, shuffling and augmentation. Default 42.
    pub seed: u64,
    /// Label smoothing for the training loss (PyTorch convention). Default 0.
    pub label_smoothing: f64,
    /// Batch-level Mixup/CutMix. Default off.
    pub mix: MixConfig,
    /// Pretrained weights, frozen stages, backbone LR. Default off.
    pub finetune: FinetuneConfig,
    /// Threads preparing batches. Default 2.
    pub loader_workers: usize,
    /// Images per evaluation batch. Default 256.
    pub eval_batch_size: usize,
    /// Evaluate on the test split after every epoch. Default true.
    pub eval_each_epoch: bool,
    /// Checkpoint every N epochs (0: only at the end). Default 1.
    pub checkpoint_epochs: usize,
    /// Also checkpoint every N steps. Default: never.
    pub checkpoint_steps: Option<usize>,
    /// Also checkpoint when this many minutes passed since the last checkpoint (rank 0's clock
    /// decides for the whole group). Default: never.
    pub checkpoint_minutes: Option<f64>,
    /// Checkpoints to keep. Default 3.
    pub keep_checkpoints: usize,
    /// Normalise with the running BatchNorm statistics while training and never update them
    /// (fine-tuning; exact data-parallel equivalence checks). Default false.
    pub freeze_bn: bool,
    /// Data-parallel sharding: drop the tail that does not divide by the world size instead of
    /// padding every rank's shard by wrapping around (PyTorch `DistributedSampler` semantics).
    /// Default false (pad).
    pub shard_drop_last: bool,
    /// Convolution arithmetic: `f32`, or `bf16` (operands and results rounded to bf16, f32
    /// accumulation, everything else f32; see `resnet_kernels::precision`). Default f32.
    pub conv_precision: ConvPrecision,
    /// What a step with a non-finite loss does: `stop` the run (distinct exit code) or
    /// `skip-step` (see `guard.rs`). Default stop.
    pub on_nonfinite: NonFinitePolicy,
    /// How a data-parallel group's gradients travel: `f32`, or `bf16` (rounded for each
    /// transfer, half the bytes, summed in f32; the TCP ring only). Default f32 (then not
    /// written, so older runs' config fingerprints are unchanged).
    #[serde(skip_serializing_if = "GradWire::is_f32")]
    pub grad_wire: GradWire,
    /// Data parallel: all-reduce the gradients in buckets while the backward pass still runs
    /// (the result is bit-identical to one all-reduce after it). Default true; false keeps the
    /// all-reduce after the backward. Groups on NCCL do not overlap yet. Written only when false.
    #[serde(skip_serializing_if = "is_true")]
    pub overlap: bool,
    /// Data parallel, with `overlap`: the size a gradient bucket grows to before its
    /// all-reduce starts, in MB (10^6 bytes) of f32 gradients. Default 25 (PyTorch DDP's).
    /// Written only when not the default.
    #[serde(skip_serializing_if = "is_default_bucket_mb")]
    pub bucket_mb: f64,
}

/// PyTorch DDP's `bucket_cap_mb`.
pub const DEFAULT_BUCKET_MB: f64 = 25.0;

fn is_true(b: &bool) -> bool {
    *b
}

fn is_default_bucket_mb(mb: &f64) -> bool {
    *mb == DEFAULT_BUCKET_MB
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ResNetConfig::default(),
            data: DataConfig::default(),
            optim: OptimConfig::default(),
            schedule: ScheduleConfig::default(),
            epochs: 10,
            batch_size: 128,
            max_steps: None,
            seed: 42,
            label_smoothing: 0.0,
            mix: MixConfig::default(),
            finetune: FinetuneConfig::default(),
            loader_workers: 2,
            eval_batch_size: 256,
            eval_each_epoch: true,
            checkpoint_epochs: 1,
            checkpoint_steps: None,
            checkpoint_minutes: None,
            keep_checkpoints: 3,
            freeze_bn: false,
            shard_drop_last: false,
            conv_precision: ConvPrecision::F32,
            on_nonfinite: NonFinitePolicy::Stop,
            grad_wire: GradWire::F32,
            overlap: true,
            bucket_mb: DEFAULT_BUCKET_MB,
        }
    }
}

impl TrainConfig {
    /// Checks every section; errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.model
            .validate()
            .map_err(|e| SpecError::Config(e.to_string()))?;
        self.optim.validate()?;
        self.schedule.validate()?;
        self.data.augment.validate().map_err(SpecError::Config)?;
        self.data.validate().map_err(|e| match e {
            resnet_data::DataError::Config(m) => SpecError::Config(m),
            other => SpecError::Config(other.to_string()),
        })?;
        self.mix.validate()?;
        self.finetune.validate()?;
        if self.schedule.kind == crate::ScheduleKind::Plateau && !self.eval_each_epoch {
            return Err(SpecError::Config(
                "schedule.kind = plateau needs eval_each_epoch = true (it reads the validation loss)"
                    .into(),
            ));
        }
        let bad = |m: &str| Err(SpecError::Config(m.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self
            .checkpoint_minutes
            .is_some_and(|m| !(m > 0.0) || !m.is_finite())
        {
            return bad("checkpoint_minutes must be a positive number of minutes");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch_size and eval_batch_size must be at least 1");
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad("label_smoothing must be in 0..1");
        }
        if !(self.bucket_mb > 0.0 && self.bucket_mb.is_finite()) {
            return bad("bucket_mb must be a positive number of MB");
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be at least 1");
        }
        Ok(())
    }
}
