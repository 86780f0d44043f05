//! `resnet bench`: images/s of a training step or an inference forward on synthetic input.
//! Same protocol as `benchmarks/pytorch_baseline.py`: fixed random batch, `--warmup` untimed
//! steps, then the median of `--steps` timed steps.

use std::time::Instant;

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Tensor};
use resnet_kernels::{ConvPrecision, KernelChoice};
use resnet_model::{BuildResNet, ResNetConfig};
use resnet_train::{
    smoothed_targets, soft_cross_entropy, targets_tensor, BuildOptimizer, OptimConfig,
};
use serde::Serialize;

use clap::Args;

use crate::args::{DeviceArgs, ModelShapeArgs};
use crate::device::select;

/// `resnet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model and input shape.
    #[command(flatten)]
    pub shape: ModelShapeArgs,
    /// train (forward + backward + optimizer) or eval (inference forward).
    #[arg(long, default_value = "train", value_parser = ["train", "eval"])]
    pub mode: String,
    /// Optimizer for train mode: sgd or adam.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// Convolution arithmetic, as for `resnet train`: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub conv_precision: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One benchmark's result.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// e.g. `resnet18`.
    pub model: String,
    /// cifar or imagenet.
    pub stem: String,
    /// Base width.
    pub width: usize,
    /// train or eval.
    pub mode: String,
    /// Optimizer of the training step (train mode).
    pub optimizer: String,
    /// Images per step.
    pub batch_size: usize,
    /// Input side.
    pub image_size: usize,
    /// Backend and device.
    pub device: String,
    /// CUDA convolution kernels (`--cuda-conv`), on a GPU.
    pub cuda_conv: Option<String>,
    /// CUDA training-mode BatchNorm (`--cuda-bn`), on a GPU.
    pub cuda_bn: Option<String>,
    /// CUDA optimizer update (`--cuda-optim`), on a GPU.
    pub cuda_optim: Option<String>,
    /// cuDNN's layout for bf16 convolutions (`--cuda-layout`), on a GPU.
    pub cuda_layout: Option<String>,
    /// Convolution arithmetic (`--conv-precision`).
    pub conv_precision: String,
    /// On the CPU, the kernels that ran (`RESNET_CONV`, `RESNET_BN`, `RESNET_OPTIM`), so a
    /// result line says which A/B variant it is: e.g. `conv=winograd bn=fused optim=fused`.
    pub cpu_kernels: Option<String>,
    /// CPU threads available to the process.
    pub threads: usize,
    /// Timed steps.
    pub steps: usize,
    /// Median seconds per step.
    pub median_step_s: f64,
    /// batch_size / median_step_s.
    pub images_per_sec: f64,
    /// Fastest and slowest step, seconds.
    pub min_step_s: f64,
    /// Slowest step, seconds.
    pub max_step_s: f64,
    /// Median seconds of forward (+loss), backward and optimizer (train mode), from `steps`
    /// extra steps that synchronise after each phase (the timed steps synchronise once, at
    /// the end, so on a GPU the phases sum to more than `median_step_s`).
    pub phases: Option<[f64; 3]>,
    /// The first step (cold: on a GPU it includes kernel compilation and autotuning).
    pub first_step_s: f64,
    /// Loss of the first and of the last step (train mode; same seed and batch in every run).
    pub losses: Option<[f64; 2]>,
    /// With `--cuda-conv cudnn`: host synchronisations per step made to order cuDNN against
    /// cubecl's stream, seconds per step spent in them, and passes that fell back to the
    /// gemm kernels over the whole run (0: cuDNN ran every convolution).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cudnn: Option<CudnnBench>,
    /// Wall time from device set-up to the last step.
    pub total_s: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn sync<B: Backend>(device: &B::Device) {
    // Eager CPU backends are already synchronous; GPU backends queue work.
    let _ = B::sync(device);
}

/// What [`bench_train`] measured.
pub struct TrainTimes {
    /// Seconds of each timed step.
    pub steps: Vec<f64>,
    /// Median seconds of forward (+loss), backward and optimizer.
    pub phases: [f64; 3],
    /// Seconds of the first (cold) step.
    pub first: f64,
    /// Loss of the first and of the last step.
    pub losses: [f64; 2],
}

/// What the cuDNN path did during a benchmark.
#[derive(Debug, Serialize)]
pub struct CudnnBench {
    /// Host synchronisations per step (warm-up steps included).
    pub host_syncs_per_step: f64,
    /// Seconds per step spent in them.
    pub host_sync_s_per_step: f64,
    /// Passes that ran on the gemm kernels instead (cuDNN absent or declined).
    pub fallbacks: u64,
}

/// Times `--warmup` + `--steps` training steps.
pub fn bench_train<B: AutodiffBackend>(
    cfg: &ResNetConfig,
    k: KernelChoice,
    a: &BenchArgs,
    device: &B::Device,
) -> Result<TrainTimes> {
    B::seed(device, 0);
    let mut model = cfg.init::<B>(device)?.with_kernels(k);
    let mut optim = OptimConfig {
        kind: a.optimizer.parse()?,
        lr: 0.01,
        ..Default::default()
    }
    .init::<B>();
    let s = a.shape.image_size;
    let x = Tensor::<B, 4>::random(
        [a.shape.batch_size, 3, s, s],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<u16> = (0..a.shape.batch_size)
        .map(|i| (i % a.num_classes) as u16)
        .collect();
    let targets = targets_tensor::<B>(
        smoothed_targets(&labels, a.num_classes, 0.0),
        a.shape.batch_size,
        a.num_classes,
        device,
    );
    let (mut total, mut fwd, mut bwd, mut opt) = (vec![], vec![], vec![], vec![]);
    let mut first = 0.0;
    let mut losses = Vec::new();
    // Warm-up steps, then the timed steps, then as many again to split a step into phases.
    // The timed steps synchronise once, at the end, as PyTorch's baseline does: a GPU queues
    // the next phase's kernels while it runs the current one, and a sync between phases would
    // stall that (and be counted). The phase steps synchronise after each phase, so their
    // phases sum to more than a timed step.
    let (timed_from, phases_from) = (a.warmup, a.warmup + a.steps);
    for i in 0..a.warmup + 2 * a.steps {
        let split = i < timed_from || i >= phases_from;
        let t0 = Instant::now();
        let loss = soft_cross_entropy(model.forward(x.clone()), targets.clone());
        if split {
            sync::<B>(device);
        }
        let t1 = Instant::now();
        if i == 0 {
            // A cold GPU step can take minutes: say which phase got through if it never ends.
            crate::say!("step 1: forward {:.3} s", (t1 - t0).as_secs_f64());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if split {
            sync::<B>(device);
        }
        let t2 = Instant::now();
        if i == 0 {
            crate::say!("step 1: backward {:.3} s", (t2 - t1).as_secs_f64());
        }
        model = optim.step(0.01, model, grads);
        sync::<B>(device);
        let t3 = Instant::now();
        if i == 0 {
            first = (t3 - t0).as_secs_f64();
        }
        // Read outside the timed region: the first and last losses let runs of one seed on
        // different kernels (CUDA `--cuda-conv`, CPU `RESNET_CONV`) be compared for agreement.
        if i == 0 || i + 1 == phases_from {
            losses.push(loss.into_scalar().elem::<f64>());
        }
        if i >= phases_from {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            opt.push((t3 - t2).as_secs_f64());
        } else if i >= timed_from {
            total.push((t3 - t0).as_secs_f64());
        } else {
            // Cold steps on a GPU compile and autotune kernels: show where that time goes.
            crate::say!(
                "warm-up step {}/{}: {:.3} s (forward {:.3}, backward {:.3}, optimizer {:.3})",
                i + 1,
                a.warmup,
                (t3 - t0).as_secs_f64(),
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64()
            );
        }
    }
    Ok(TrainTimes {
        steps: total,
        phases: [median(&mut fwd), median(&mut bwd), median(&mut opt)],
        first,
        losses: [losses[0], losses[losses.len() - 1]],
    })
}

fn bench_eval<B: Backend>(
    cfg: &ResNetConfig,
    k: KernelChoice,
    a: &BenchArgs,
    device: &B::Device,
) -> Result<(Vec<f64>, f64)> {
    B::seed(device, 0);
    let model = cfg.init::<B>(device)?.with_kernels(k);
    let s = a.shape.image_size;
    let x = Tensor::<B, 4>::random(
        [a.shape.batch_size, 3, s, s],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let (mut total, mut first) = (vec![], 0.0);
    for i in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let _ = model.forward(x.clone()).into_data();
        let dt = t0.elapsed().as_secs_f64();
        if i == 0 {
            first = dt;
        }
        if i >= a.warmup {
            total.push(dt);
        }
    }
    Ok((total, first))
}

fn uses_cudnn(sel: &crate::device::Selected, k: &KernelChoice) -> bool {
    !matches!(sel, crate::device::Selected::Cpu)
        && (k.cuda_conv == resnet_kernels::CudaConv::Cudnn || k.cuda_bn.cudnn())
}

/// Runs `resnet bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let cfg = a.shape.config(a.num_classes)?;
    let precision: ConvPrecision = a.conv_precision.parse().map_err(anyhow::Error::msg)?;
    let sel = select(&a.device)?;
    let k = crate::kernels::choose(&a.device)?.with_precision(precision);
    let started = Instant::now();
    let (mut steps, phases, first, losses) = if a.mode == "train" {
        let t =
            crate::with_train_backend!(sel, |B, device| bench_train::<B>(&cfg, k, &a, &device)?);
        (t.steps, Some(t.phases), t.first, Some(t.losses))
    } else {
        let (t, first) =
            crate::with_infer_backend!(sel, |B, device| bench_eval::<B>(&cfg, k, &a, &device)?);
        (t, None, first, None)
    };
    let total_s = started.elapsed().as_secs_f64();
    let min = steps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = steps.iter().copied().fold(0.0, f64::max);
    let med = median(&mut steps);
    let r = BenchResult {
        model: format!("resnet{}", a.shape.depth),
        stem: a.shape.stem.clone(),
        width: a.shape.width,
        mode: a.mode.clone(),
        optimizer: a.optimizer.clone(),
        batch_size: a.shape.batch_size,
        image_size: a.shape.image_size,
        device: format!("{sel:?}"),
        cuda_conv: match sel {
            crate::device::Selected::Cpu => None,
            #[cfg(feature = "cuda")]
            crate::device::Selected::Gpu { .. } => Some(k.cuda_conv.name().to_string()),
        },
        cuda_bn: match sel {
            crate::device::Selected::Cpu => None,
            #[cfg(feature = "cuda")]
            crate::device::Selected::Gpu { .. } => Some(k.cuda_bn.name().to_string()),
        },
        cuda_optim: match sel {
            crate::device::Selected::Cpu => None,
            #[cfg(feature = "cuda")]
            crate::device::Selected::Gpu { .. } => Some(k.cuda_optim.name().to_string()),
        },
        cuda_layout: match sel {
            crate::device::Selected::Cpu => None,
            #[cfg(feature = "cuda")]
            crate::device::Selected::Gpu { .. } => Some(k.cuda_layout.name().to_string()),
        },
        conv_precision: precision.name().to_string(),
        cpu_kernels: match sel {
            crate::device::Selected::Cpu => Some(format!(
                "conv={} bn={} optim={}",
                k.cpu_conv.name(),
                k.cpu_bn.name(),
                k.cpu_optim.name()
            )),
            #[cfg(feature = "cuda")]
            crate::device::Selected::Gpu { .. } => None,
        },
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        steps: a.steps,
        median_step_s: med,
        images_per_sec: a.shape.batch_size as f64 / med,
        min_step_s: min,
        max_step_s: max,
        phases,
        first_step_s: first,
        losses,
        total_s,
        cudnn: uses_cudnn(&sel, &k).then(|| {
            let st = resnet_kernels::cudnn::stats();
            // Every step this process ran (train mode adds the phase steps).
            let extra = if a.mode == "train" { a.steps } else { 0 };
            let n = (a.warmup + a.steps + extra) as f64;
            CudnnBench {
                host_syncs_per_step: st.host_syncs as f64 / n,
                host_sync_s_per_step: st.host_sync_seconds / n,
                fallbacks: st.fallbacks,
            }
        }),
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {} stem {} batch {}: {:.1} images/s (median {:.4}s/step, min {:.4}, max {:.4}, {} steps, {} threads)",
            r.model, r.stem, r.mode, r.batch_size, r.images_per_sec, med, min, max, r.steps, r.threads
        );
        if let Some([f, b, o]) = r.phases {
            println!("  forward {f:.4}s  backward {b:.4}s  optimizer {o:.4}s");
        }
    }
    Ok(())
}
