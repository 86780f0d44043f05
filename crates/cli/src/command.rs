//! The `resnet` command line: its global flags and one subcommand per `cmd_*.rs`, each of which
//! owns its flags (shared groups come from `args.rs`).

use clap::{Parser, Subcommand};

/// Train and evaluate ResNet-18..152 image classifiers (CIFAR-10/100, image folders, synthetic).
#[derive(Parser, Debug)]
#[command(
    name = "resnet",
    version,
    about = "Train, evaluate, inspect and benchmark ResNet-18/34/50/101/152 image classifiers \
             (CIFAR-10/100, image folders, synthetic data) on the CPU or a GPU. The same training \
             runs data-parallel on a cluster with `coordinator` and `worker`.",
    long_about = None,
    after_help = crate::EXIT_CODES_HELP
)]
pub struct Cli {
    /// Log format for diagnostics on stderr.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model; writes metrics, the resolved config and checkpoints to --out.
    Train(Box<crate::cmd_train::TrainArgs>),
    /// Evaluate a checkpoint: accuracy, top-5, per-class precision/recall/F1, confusion matrix.
    Eval(crate::cmd_eval::EvalArgs),
    /// Print a model's parameter counts and per-stage output shapes.
    Info(crate::cmd_info::InfoArgs),
    /// Measure training or inference throughput (images/s) on synthetic input.
    Bench(crate::cmd_bench::BenchArgs),
    /// Where a CPU training step spends its time: each convolution pass (Burn's and the GEMM
    /// kernels'), BatchNorm+ReLU, and the rest of a measured step.
    Profile(crate::cmd_profile::ProfileArgs),
    /// Predict step time and scaling efficiency on 1-1024 GPUs, with and without the
    /// all-reduce overlapped with the backward pass; `--calibrate` checks the model against
    /// test-bed runs.
    Scaling(Box<crate::cmd_scaling::ScalingArgs>),
    /// Measure TCP-ring all-reduce bus bandwidth on loopback against a plain TCP copy.
    BenchAllreduce(crate::cmd_allreduce::AllReduceArgs),
    /// Check the chosen convolution kernels (e.g. `--gpu 0 --cuda-conv cudnn`) against Burn's
    /// f32 convolution on the CPU: every shape of a model, all three passes, with an error
    /// tolerance; a non-zero exit when any pass is off.
    ConvCheck(Box<crate::cmd_conv_check::ConvCheckArgs>),
    /// Export a checkpoint's model as torchvision-compatible safetensors.
    Export(crate::cmd_export::ExportArgs),
    /// Draw a run's pictures: curves, confusion matrix, prediction grid, confident mistakes.
    Report(Box<crate::report::ReportArgs>),
    /// Hyperparameter search: random search or successive halving over a declared space.
    Sweep(Box<crate::cmd_sweep::SweepArgs>),
    /// Print the learning rate per epoch that a config's schedule produces (no training).
    Schedule(Box<crate::cmd_schedule::ScheduleArgs>),
}
