//! `resnet profile`: where a CPU training step spends its time, per op type.
//!
//! Each of the model's convolutions (enumerated by running one forward pass) is timed in
//! isolation for its three passes — forward, gradient of the input, gradient of the weight —
//! both with Burn's flex implementation and with the model's im2col + GEMM kernels; each
//! BatchNorm + ReLU pair is timed forward and backward on the autodiff backend. Summing over the
//! layers and comparing with a measured full step shows what the rest (pooling, residual adds,
//! the head, the loss, the optimizer, autodiff bookkeeping) costs.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{Distribution, Tensor, TensorData};
use clap::Args;
use resnet_kernels::conv::{self, cpu as kernels};
use resnet_kernels::{ConvGeom, CpuConv, KernelChoice};
use resnet_model::{BatchNorm2d, BuildResNet, ResNetConfig};
use serde::{Deserialize, Serialize};

/// `resnet profile`.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Model and input shape.
    #[command(flatten)]
    pub shape: crate::args::ModelShapeArgs,
    /// Timed repetitions of each op (the median is used).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print one row per distinct convolution shape as well as the totals.
    #[arg(long)]
    pub per_layer: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Seconds of one convolution shape's three passes, per implementation.
#[derive(Debug, Default, Serialize, Deserialize, Clone, Copy)]
pub struct PassTimes {
    /// Forward.
    pub forward: f64,
    /// Gradient of the input (not needed for the stem, whose input is the image).
    pub grad_input: f64,
    /// Gradient of the weight.
    pub grad_weight: f64,
}

/// One distinct convolution shape.
#[derive(Debug, Serialize, Deserialize)]
pub struct LayerProfile {
    /// [N, Cin, H, W] -> Cout, kernel, stride, padding.
    pub shape: String,
    /// How many convolutions of the model have it.
    pub count: usize,
    /// Multiply-adds of one pass.
    pub macs: u64,
    /// Burn flex.
    pub burn: PassTimes,
    /// im2col + GEMM.
    pub gemm: PassTimes,
    /// BatchNorm + ReLU on this conv's output, forward and backward seconds.
    pub bn_relu: [f64; 2],
}

/// The whole profile.
#[derive(Debug, Serialize, Deserialize)]
pub struct Profile {
    /// e.g. resnet18 cifar batch 64.
    pub case: String,
    /// Threads of the rayon pool.
    pub threads: usize,
    /// Per distinct convolution shape.
    pub layers: Vec<LayerProfile>,
    /// A measured full training step (SGD) with the current convolution: forward, backward,
    /// optimizer seconds.
    pub step: [f64; 3],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm caches and allocator
    median(
        (0..repeats.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn flex(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// Burn's three passes and this project's as `cpu_conv` runs them (the "gemm" columns): without
/// the taps that read only padding (`gemm`), with every tap (`gemm-all-taps`), and with
/// Winograd where it pays (`winograd`, the default).
fn profile_conv(
    g: &ConvGeom,
    first: bool,
    repeats: usize,
    cpu_conv: CpuConv,
) -> (PassTimes, PassTimes) {
    let skip_taps = cpu_conv != CpuConv::GemmAllTaps;
    let winograd = cpu_conv == CpuConv::Winograd && conv::winograd::pays(g);
    let x_shape = [g.batch, g.cin, g.in_hw[0], g.in_hw[1]];
    let w_shape = [g.cout, g.cin, g.kernel[0], g.kernel[1]];
    let y_shape = [g.batch, g.cout, g.out_hw[0], g.out_hw[1]];
    let x = random(x_shape.iter().product(), 1);
    let w = random(w_shape.iter().product(), 2);
    let dy = random(y_shape.iter().product(), 3);
    let opts = ConvOptions::new(g.stride, g.pad, [1, 1], 1);
    let (fx, fw, fdy) = (
        flex(x.clone(), x_shape),
        flex(w.clone(), w_shape),
        flex(dy.clone(), y_shape),
    );
    let burn = PassTimes {
        forward: time(repeats, || {
            Flex::conv2d(fx.clone(), fw.clone(), None, opts.clone());
        }),
        grad_input: if first {
            0.0
        } else {
            time(repeats, || {
                Flex::conv2d_x_backward(fx.clone(), fw.clone(), fdy.clone(), opts.clone());
            })
        },
        grad_weight: time(repeats, || {
            Flex::conv2d_weight_backward(fx.clone(), fw.clone(), fdy.clone(), opts.clone());
        }),
    };
    let gemm = PassTimes {
        forward: time(repeats, || {
            if winograd {
                conv::winograd::forward(g, &x, &w);
            } else {
                kernels::forward_with(g, &x, &w, skip_taps);
            }
        }),
        grad_input: if first {
            0.0
        } else {
            time(repeats, || {
                if winograd {
                    conv::winograd::grad_input(g, &dy, &w);
                } else {
                    kernels::grad_input_with(g, &dy, &w, skip_taps);
                }
            })
        },
        grad_weight: time(repeats, || {
            if cpu_conv == CpuConv::Winograd && conv::winograd::pays_for_weight(g) {
                conv::winograd::grad_weight(g, &x, &dy);
            } else {
                kernels::grad_weight_with(g, &x, &dy, skip_taps);
            }
        }),
    };
    (burn, gemm)
}

fn profile_bn_relu(k: &KernelChoice, shape: [usize; 4], repeats: usize) -> [f64; 2] {
    type B = Autodiff<Flex>;
    let device = Default::default();
    let bn = BatchNorm2d::<B>::new(shape[1], 0.1, 1e-5, false, &device);
    let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device).require_grad();
    let r = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let (mut fwd, mut bwd) = (vec![], vec![]);
    for _ in 0..=repeats.max(1) {
        let t0 = Instant::now();
        let y = bn.forward_relu(k, x.clone());
        let t1 = Instant::now();
        let _grads = (y * r.clone()).sum().backward();
        fwd.push((t1 - t0).as_secs_f64());
        bwd.push(t1.elapsed().as_secs_f64());
    }
    // The first round warmed up; drop it.
    [median(fwd[1..].to_vec()), median(bwd[1..].to_vec())]
}

fn measured_step(cfg: &ResNetConfig, k: KernelChoice, a: &ProfileArgs) -> Result<[f64; 3]> {
    let bench = crate::cmd_bench::BenchArgs {
        shape: a.shape.clone(),
        mode: "train".into(),
        optimizer: "sgd".into(),
        warmup: 1,
        steps: a.repeats.max(1),
        num_classes: cfg.num_classes,
        conv_precision: "f32".into(),
        json: true,
        device: Default::default(),
    };
    let device = Default::default();
    let phases = crate::cmd_bench::bench_train::<Autodiff<Flex>>(cfg, k, &bench, &device)?.phases;
    Ok(phases)
}

/// How a convolution shape is named in the profile: `[N,Cin,H,W] -> Cout kK sS pP`.
pub fn shape_label(g: &ConvGeom) -> String {
    format!(
        "[{},{},{},{}] -> {} k{} s{} p{}",
        g.batch, g.cin, g.in_hw[0], g.in_hw[1], g.cout, g.kernel[0], g.stride[0], g.pad[0]
    )
}

/// Runs `resnet profile`.
pub fn run(a: ProfileArgs) -> Result<()> {
    let cfg = a.shape.config(ResNetConfig::default().num_classes)?;
    let device = Default::default();
    // The CPU kernels of this process (RESNET_CONV / RESNET_BN): the measured step runs them.
    let k = crate::kernels::choose(&Default::default())?;
    let model = cfg.init::<Flex>(&device)?.with_kernels(k);
    let s = a.shape.image_size;
    let x = Tensor::<Flex, 4>::zeros([a.shape.batch_size, 3, s, s], &device);
    let (_, geoms) = conv::record_geometries(|| model.forward(x));
    anyhow::ensure!(
        !geoms.is_empty(),
        "the model ran no convolution through the CPU kernels"
    );

    // Distinct shapes in order of first appearance, with their counts.
    let mut order: Vec<ConvGeom> = vec![];
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for g in &geoms {
        let i = order.iter().position(|o| o == g).unwrap_or_else(|| {
            order.push(*g);
            order.len() - 1
        });
        *counts.entry(i).or_default() += 1;
    }
    let mut layers = vec![];
    for (i, g) in order.iter().enumerate() {
        let shape = shape_label(g);
        if !a.json {
            crate::say!("profiling conv {}/{}: {shape}", i + 1, order.len());
        }
        let (burn, gemm) = profile_conv(g, i == 0, a.repeats, k.cpu_conv);
        let bn_relu = profile_bn_relu(&k, [g.batch, g.cout, g.out_hw[0], g.out_hw[1]], a.repeats);
        layers.push(LayerProfile {
            shape,
            count: counts[&i],
            macs: g.macs(),
            burn,
            gemm,
            bn_relu,
        });
    }
    if !a.json {
        crate::say!("measuring a full training step ...");
    }
    let step = measured_step(&cfg, k, &a)?;
    let profile = Profile {
        case: format!(
            "resnet{} {} stem, batch {}, {}x{}",
            a.shape.depth, a.shape.stem, a.shape.batch_size, s, s
        ),
        threads: rayon::current_num_threads(),
        layers,
        step,
    };
    if a.json {
        println!("{}", serde_json::to_string(&profile)?);
    } else {
        print_table(&profile, a.per_layer, k.cpu_conv);
    }
    Ok(())
}

fn print_table(p: &Profile, per_layer: bool, cpu_conv: CpuConv) {
    let gflops = |macs: f64, s: f64| if s > 0.0 { 2.0 * macs / s / 1e9 } else { 0.0 };
    println!("{} ({} threads)", p.case, p.threads);
    if per_layer {
        println!(
            "{:<36} {:>3} {:>7} | {:>22} | {:>22}",
            "conv shape", "n", "GMAC", "burn fwd/dx/dw ms", "gemm fwd/dx/dw ms"
        );
        for l in &p.layers {
            let ms = |t: PassTimes| {
                format!(
                    "{:.0}/{:.0}/{:.0}",
                    t.forward * 1e3,
                    t.grad_input * 1e3,
                    t.grad_weight * 1e3
                )
            };
            println!(
                "{:<36} {:>3} {:>7.2} | {:>22} | {:>22}",
                l.shape,
                l.count,
                l.macs as f64 / 1e9,
                ms(l.burn),
                ms(l.gemm)
            );
        }
    }
    let total = |f: &dyn Fn(&LayerProfile) -> f64| -> f64 {
        p.layers.iter().map(|l| f(l) * l.count as f64).sum()
    };
    let macs_all = total(&|l| l.macs as f64);
    let macs_dx = total(&|l| {
        if l.burn.grad_input > 0.0 {
            l.macs as f64
        } else {
            0.0
        }
    });
    println!(
        "{:<26} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "op type (whole step)", "GMAC", "burn s", "GFLOP/s", "gemm s", "GFLOP/s"
    );
    let rows: [(&str, f64, f64, f64); 3] = [
        (
            "conv forward",
            macs_all,
            total(&|l| l.burn.forward),
            total(&|l| l.gemm.forward),
        ),
        (
            "conv grad input",
            macs_dx,
            total(&|l| l.burn.grad_input),
            total(&|l| l.gemm.grad_input),
        ),
        (
            "conv grad weight",
            macs_all,
            total(&|l| l.burn.grad_weight),
            total(&|l| l.gemm.grad_weight),
        ),
    ];
    for (name, macs, b, g) in rows {
        println!(
            "{:<26} {:>8.1} {:>10.3} {:>10.1} {:>10.3} {:>10.1}",
            name,
            macs / 1e9,
            b,
            gflops(macs, b),
            g,
            gflops(macs, g)
        );
    }
    let bn_f = total(&|l| l.bn_relu[0]);
    let bn_b = total(&|l| l.bn_relu[1]);
    println!("{:<26} {:>8} {:>10.3}", "BatchNorm+ReLU forward", "", bn_f);
    println!("{:<26} {:>8} {:>10.3}", "BatchNorm+ReLU backward", "", bn_b);
    let [f, b, o] = p.step;
    let conv_now = match cpu_conv {
        CpuConv::Gemm | CpuConv::GemmAllTaps | CpuConv::Winograd => {
            rows.iter().map(|r| r.3).sum::<f64>()
        }
        CpuConv::Burn => rows.iter().map(|r| r.2).sum::<f64>(),
    };
    println!(
        "measured step ({:?} conv): forward {f:.3} s, backward {b:.3} s, optimizer {o:.3} s, total {:.3} s",
        cpu_conv,
        f + b + o
    );
    // Ops timed in isolation run with cold caches and their own allocations, so their sum can
    // exceed the measured step; the difference is an estimate, not a measurement.
    println!(
        "  isolated ops: convolutions {conv_now:.3} s + BatchNorm+ReLU {:.3} s; \
         step minus these (pooling, residual adds, head, loss, optimizer, autodiff): {:+.3} s",
        bn_f + bn_b,
        f + b + o - conv_now - bn_f - bn_b
    );
}
