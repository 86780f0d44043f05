//! The flags several commands share: run parameters (`resnet train`, `coordinator`, sweeps),
//! device and kernel choice, model shape. Each command's own flags live in its `cmd_*.rs`; the
//! `resnet` command line that lists the commands is `command.rs`. Every flag that sets a run parameter is optional so that it can
//! override a value from `--config FILE` or the environment only when given.

use std::path::PathBuf;

use clap::Args;

pub use crate::run_values::{
    DatasetArg, FloatArg, NonFiniteArg, OptimizerArg, ScheduleArg, StemArg,
};

/// Where to run.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Device and kernels")]
pub struct DeviceArgs {
    /// Run on CUDA device N (needs a build with `--features cuda` and an NVIDIA driver).
    #[arg(long, value_name = "N", conflicts_with = "cpu")]
    pub gpu: Option<usize>,
    /// Run on the CPU (the default).
    #[arg(long)]
    pub cpu: bool,
    /// CUDA only: Burn's kernel-fusion layer [default: off, unless --cuda-conv autotune; gemm,
    /// tuned and direct need it off].
    #[arg(long, value_name = "on|off", env = "RESNET_CUDA_FUSION")]
    pub cuda_fusion: Option<Toggle>,
    /// CUDA only: how convolutions (and the classifier's matmul) pick their kernels. `cudnn`
    /// runs cuDNN (libcudnn.so.9, loaded at run time; each pass's algorithm is measured once
    /// per shape and cached with the kernels; `gemm` where cuDNN is missing, with a warning):
    /// on an H200, ResNet-18 trains 3x faster than with `gemm` and its first step takes 7 s
    /// cold, 0.3 s with the cache. `gemm` runs Burn's implicit GEMM on the tensor cores without
    /// tuning (first step 111 s cold); `tuned` times a few fixed candidates per shape and pass
    /// and keeps the fastest; `autotune` is Burn's default, which compiles and times every
    /// candidate for each new shape (its first step did not finish in 120 s); `direct` is
    /// Burn's simple kernels [default: cudnn].
    #[arg(long, value_name = "KIND", env = "RESNET_CUDA_CONV")]
    pub cuda_conv: Option<CudaConvArg>,
    /// CUDA only: how training-mode BatchNorm runs. `cudnn` is one cuDNN call forward and one
    /// backward (libcudnn.so.9; Burn's ops where cuDNN is missing, with a warning);
    /// `cudnn-fused` also puts the residual add and the ReLU after it in that node (one kernel
    /// each way instead of Burn's add and ReLU nodes), updates the running statistics in one
    /// kernel instead of about a dozen Burn ops, and runs evaluation-mode BatchNorm with the
    /// add and ReLU as one kernel (not yet run on a GPU); `burn` is the
    /// model's composition of Burn ops (about ten passes over the activation). Needs fusion
    /// off, as `gemm`/`tuned`/`cudnn` convolutions do [default: cudnn with cudnn convolutions,
    /// burn with the others].
    #[arg(long, value_name = "burn|cudnn|cudnn-fused", env = "RESNET_CUDA_BN")]
    pub cuda_bn: Option<CudaBnArg>,
    /// CUDA only: how the optimizer updates the parameters. `fused` runs one kernel per
    /// parameter over its gradient and state (SGD, Adam, AdamW; Burn's arithmetic up to fused
    /// multiply-adds); `burn` is Burn's optimizers, a chain of whole-tensor kernels per
    /// parameter. Needs fusion off. `fused` has not run on a GPU yet: `scripts/gpu-check.sh`
    /// compares the two [default: burn].
    #[arg(long, value_name = "burn|fused", env = "RESNET_CUDA_OPTIM")]
    pub cuda_optim: Option<CudaOptimArg>,
    /// CUDA with `--cuda-conv cudnn` and bf16 convolutions (`--conv-precision bf16`): the
    /// memory layout cuDNN runs them in. `nhwc` (channels-last, what cuDNN's bf16 tensor-core
    /// kernels prefer) lays the operands out on the cast to bf16 the convolution makes anyway
    /// and back on the cast to f32; the model's tensors stay NCHW. No effect on f32
    /// convolutions. `nhwc` has not run on a GPU yet [default: nchw].
    #[arg(long, value_name = "nchw|nhwc", env = "RESNET_CUDA_LAYOUT")]
    pub cuda_layout: Option<CudaLayoutArg>,
    /// CUDA with `--cuda-conv cudnn`: `tf32` runs f32 convolutions on the TF32 tensor cores
    /// (PyTorch's default, `allow_tf32`); `strict` keeps true f32 arithmetic, slower. bf16
    /// convolutions (`--conv-precision bf16`) always use the tensor cores [default: tf32].
    #[arg(long, value_name = "tf32|strict", env = "RESNET_CUDA_MATH")]
    pub cuda_math: Option<CudaMathArg>,
    /// CUDA with `--cuda-conv cudnn`: only the algorithms cuDNN reports as deterministic, so
    /// the convolutions give the same bits on every run (replicas of one run are identical
    /// either way: they apply the same all-reduced gradient).
    #[arg(long, env = "RESNET_DETERMINISTIC")]
    pub deterministic: bool,
    /// CUDA with `--cuda-conv cudnn`: the most workspace memory one convolution algorithm may
    /// use, in MiB; algorithms that need more are not considered [default: 1024].
    #[arg(long, value_name = "MIB", env = "RESNET_CUDNN_WORKSPACE_MB")]
    pub cudnn_workspace_mb: Option<usize>,
    /// CUDA only: directory where compiled kernels and autotune results persist between runs,
    /// so a restarted worker skips both [default: $XDG_CACHE_HOME/resnet-cluster/kernels or
    /// ~/.cache/resnet-cluster/kernels]; `off` keeps them in memory only. Ignored when a
    /// cubecl.toml or burn.toml configures cubecl.
    #[arg(long, value_name = "DIR", env = "RESNET_KERNEL_CACHE")]
    pub kernel_cache: Option<PathBuf>,
}

/// `on` or `off`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `--cuda-conv` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaConvArg {
    /// Burn's autotuned convolution.
    Autotune,
    /// Implicit GEMM on the tensor cores, no tuning.
    Gemm,
    /// Burn's direct convolution kernels, no tuning.
    Direct,
    /// The fastest of a few fixed candidates per shape (gemm among them), timed once.
    Tuned,
    /// cuDNN, each pass's algorithm measured once per shape and cached.
    Cudnn,
}

/// `--cuda-bn` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaBnArg {
    /// The model's composition of Burn ops.
    Burn,
    /// cuDNN's batch-norm forward and backward.
    Cudnn,
    /// cuDNN's, with the residual add and ReLU in the same node.
    CudnnFused,
}

/// `--cuda-optim` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaOptimArg {
    /// Burn's optimizers.
    Burn,
    /// One kernel per parameter.
    Fused,
}

/// `--cuda-layout` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaLayoutArg {
    /// Channels before rows.
    Nchw,
    /// Channels innermost.
    Nhwc,
}

/// `--cuda-math` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaMathArg {
    /// TF32 tensor cores for f32 convolutions (PyTorch's default).
    Tf32,
    /// True f32 arithmetic.
    Strict,
}

/// Flags that set run parameters; shared by `resnet train` and `coordinator`.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML file with any fields of the run config (see README); flags override it, and
    /// RESNET_CLUSTER__SECTION__FIELD environment variables sit between the two.
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    pub config: Option<PathBuf>,
    /// Dataset [default: synthetic].
    #[arg(long, ignore_case = true, help_heading = "Data")]
    pub dataset: Option<DatasetArg>,
    /// Data directory (CIFAR .bin files or their tarball folder; image-folder root) [default: data].
    #[arg(long, value_name = "DIR", help_heading = "Data")]
    pub data: Option<PathBuf>,
    /// Download CIFAR into --data if it is missing (verifies the official MD5).
    #[arg(long, help_heading = "Data")]
    pub download: bool,
    /// ResNet depth: 18, 34, 50, 101 or 152 [default: 18].
    #[arg(long, help_heading = "Model")]
    pub depth: Option<usize>,
    /// Stem [default: cifar].
    #[arg(long, ignore_case = true, help_heading = "Model")]
    pub stem: Option<StemArg>,
    /// Base width (torchvision: 64) [default: 64].
    #[arg(long, help_heading = "Model")]
    pub width: Option<usize>,
    /// Epochs [default: 10].
    #[arg(long, help_heading = "Optimization")]
    pub epochs: Option<usize>,
    /// Batch size [default: 128].
    #[arg(long, help_heading = "Optimization")]
    pub batch_size: Option<usize>,
    /// Base learning rate [default: 0.1].
    #[arg(long, help_heading = "Optimization")]
    pub lr: Option<f64>,
    /// Optimizer [default: sgd].
    #[arg(long, ignore_case = true, help_heading = "Optimization")]
    pub optimizer: Option<OptimizerArg>,
    /// Weight decay (L2 for sgd/adam, decoupled for adamw) [default: 5e-4].
    #[arg(long, help_heading = "Optimization")]
    pub weight_decay: Option<f64>,
    /// SGD momentum [default: 0.9].
    #[arg(long, help_heading = "Optimization")]
    pub momentum: Option<f64>,
    /// Nesterov momentum.
    #[arg(long, help_heading = "Optimization")]
    pub nesterov: bool,
    /// LR schedule [default: cosine].
    #[arg(long, ignore_case = true, help_heading = "Learning-rate schedule")]
    pub schedule: Option<ScheduleArg>,
    /// Step schedule: decay every N epochs [default: 30].
    #[arg(long, help_heading = "Learning-rate schedule")]
    pub step_epochs: Option<usize>,
    /// Step and plateau schedules: decay factor [default: 0.1].
    #[arg(long, help_heading = "Learning-rate schedule")]
    pub gamma: Option<f64>,
    /// Linear warm-up epochs in front of the schedule [default: 0].
    #[arg(long, help_heading = "Learning-rate schedule")]
    pub warmup_epochs: Option<f64>,
    /// Label smoothing [default: 0].
    #[arg(long, help_heading = "Optimization")]
    pub label_smoothing: Option<f64>,
    /// Stop after N steps in total (the schedule still spans --epochs).
    #[arg(long, help_heading = "Optimization")]
    pub max_steps: Option<usize>,
    /// Use only the first N training records.
    #[arg(long, help_heading = "Data")]
    pub train_limit: Option<usize>,
    /// Use only the first N test records.
    #[arg(long, help_heading = "Data")]
    pub test_limit: Option<usize>,
    /// Seed for weights, shuffling and augmentation [default: 42].
    #[arg(long, help_heading = "Optimization")]
    pub seed: Option<u64>,
    /// Disable augmentation (random crop + flip).
    #[arg(long, help_heading = "Augmentation")]
    pub no_augment: bool,
    /// Threads preparing batches [default: 2].
    #[arg(long, help_heading = "Data")]
    pub loader_workers: Option<usize>,
    /// Checkpoint every N steps as well as every epoch.
    #[arg(long, help_heading = "Checkpoints and divergence")]
    pub checkpoint_steps: Option<usize>,
    /// Also checkpoint when M minutes passed since the last checkpoint (fractions allowed).
    #[arg(long, value_name = "M", help_heading = "Checkpoints and divergence")]
    pub checkpoint_minutes: Option<f64>,
    /// Freeze BatchNorm statistics while training (use and keep the running statistics).
    #[arg(long, help_heading = "Optimization")]
    pub freeze_bn: bool,
    /// What a step whose loss (or, data parallel, all-reduced gradient) is NaN or infinite
    /// does: `stop` ends the run before the step is applied, exit code 3, the newest checkpoint
    /// finite; `skip-step` drops the step (weights and BatchNorm statistics unchanged) and goes
    /// on, stopping as `stop` after 10 in a row; `rollback` returns to the newest checkpoint's
    /// state and passes over the batches from there to the bad step, stopping as `stop` after
    /// 3 rollbacks [default: stop].
    #[arg(
        long,
        value_name = "stop|skip-step|rollback",
        help_heading = "Checkpoints and divergence"
    )]
    pub on_nonfinite: Option<NonFiniteArg>,
    /// Convolution arithmetic: f32, or bf16 as autocast does it (operands and results rounded
    /// to bf16, f32 accumulation; weights, BatchNorm, classifier, loss and optimizer stay f32).
    /// On CUDA the convolution kernels then run on bf16 tensors [default: f32].
    #[arg(
        long,
        value_name = "f32|bf16",
        help_heading = "Precision and gradient transfer"
    )]
    pub conv_precision: Option<FloatArg>,
    /// Data-parallel runs: how gradients travel between workers. `bf16` rounds each transfer
    /// to bfloat16 (half the bytes on the wire) and sums in f32; the group then all-reduces over
    /// the TCP ring, never NCCL. Weights, BatchNorm statistics and metrics stay f32
    /// [default: f32].
    #[arg(
        long,
        value_name = "f32|bf16",
        help_heading = "Precision and gradient transfer"
    )]
    pub grad_wire: Option<FloatArg>,
    /// Data-parallel runs: all-reduce gradient buckets while the backward pass still runs
    /// (`on`; bit-identical to `off`, which all-reduces after the backward). NCCL groups
    /// overlap with `--nccl-buffers device` (buckets stay on the GPU; bit-identical for 2
    /// workers, NCCL's own order beyond) and reduce after the backward with host buffers
    /// [default: on].
    #[arg(
        long,
        value_name = "on|off",
        help_heading = "Precision and gradient transfer"
    )]
    pub overlap: Option<Toggle>,
    /// Data-parallel runs with overlap: the size a gradient bucket fills to before its
    /// all-reduce starts, in MB of f32 gradients (PyTorch DDP's bucket_cap_mb) [default: 25].
    #[arg(
        long,
        value_name = "MB",
        help_heading = "Precision and gradient transfer"
    )]
    pub bucket_mb: Option<f64>,
    /// Cyclic schedule: epochs per full up-and-down cycle [default: 4].
    #[arg(long, value_name = "EPOCHS", help_heading = "Learning-rate schedule")]
    pub cycle_epochs: Option<f64>,
    /// Plateau schedule: epochs without improvement before each reduction by --gamma [default: 2].
    #[arg(long, value_name = "EPOCHS", help_heading = "Learning-rate schedule")]
    pub patience: Option<usize>,
    /// Dropout probability before the classifier [default: 0].
    #[arg(long, value_name = "P", help_heading = "Model")]
    pub dropout: Option<f64>,
    /// Cutout: side of a square set to the mean after normalisation (CIFAR: 16) [default: off].
    #[arg(long, value_name = "PIXELS", help_heading = "Augmentation")]
    pub cutout: Option<usize>,
    /// Random rotation within +-DEG degrees [default: off].
    #[arg(long, value_name = "DEG", help_heading = "Augmentation")]
    pub rotation: Option<f64>,
    /// Random zoom by a factor within 1 +- F [default: off].
    #[arg(long, value_name = "F", help_heading = "Augmentation")]
    pub scale: Option<f64>,
    /// Colour jitter as brightness,contrast,saturation amounts, e.g. 0.4,0.4,0.4 [default: off].
    #[arg(long, value_name = "B,C,S", help_heading = "Augmentation")]
    pub color_jitter: Option<String>,
    /// Mixup with Beta(ALPHA, ALPHA) blend weights (typical 0.2) [default: off].
    #[arg(long, value_name = "ALPHA", help_heading = "Augmentation")]
    pub mixup: Option<f64>,
    /// CutMix with Beta(ALPHA, ALPHA) area fractions (typical 1.0); with --mixup, each mixed batch
    /// picks one of the two [default: off].
    #[arg(long, value_name = "ALPHA", help_heading = "Augmentation")]
    pub cutmix: Option<f64>,
    /// Fine-tune from torchvision weights (.pth, .pt or .safetensors; any head size: the
    /// classifier is re-initialised for the dataset's classes).
    #[arg(long, value_name = "FILE", help_heading = "Fine-tuning")]
    pub pretrained: Option<PathBuf>,
    /// Freeze parts of the network: comma-separated stem, layer1, layer2, layer3, layer4.
    #[arg(
        long,
        value_name = "PARTS",
        value_delimiter = ',',
        help_heading = "Fine-tuning"
    )]
    pub freeze: Option<Vec<String>>,
    /// Backbone learning rate as a multiple of the head's (scheduled) LR, e.g. 0.1 [default: 1].
    #[arg(long, value_name = "F", help_heading = "Fine-tuning")]
    pub backbone_lr_scale: Option<f64>,
}

/// The model and input shape of `resnet bench`, `resnet profile` and `resnet scaling`.
#[derive(Args, Debug, Clone)]
pub struct ModelShapeArgs {
    /// 18, 34, 50, 101 or 152.
    #[arg(long, default_value_t = 18)]
    pub depth: usize,
    /// cifar or imagenet.
    #[arg(long, default_value = "cifar")]
    pub stem: String,
    /// Base width.
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Input side length.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
}

impl ModelShapeArgs {
    /// The model for `num_classes` classes, after checking every size.
    pub fn config(&self, num_classes: usize) -> anyhow::Result<resnet_model::ResNetConfig> {
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        anyhow::ensure!(self.image_size >= 1, "--image-size must be at least 1");
        let cfg = resnet_model::ResNetConfig {
            depth: self.depth,
            num_classes,
            stem: self.stem.parse()?,
            width: self.width,
            ..Default::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
