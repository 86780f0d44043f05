//! `resnet scaling`: predicted step time and scaling efficiency of data-parallel training from
//! 1 to 1024 GPUs, with and without the all-reduce overlapped with the backward pass (#21).
//!
//! The model's gradients are listed in the order the backward pass finishes them (the reverse
//! of the forward: the head first, the stem last), each with its bytes and the backward time
//! spent until it is complete. That time comes from a measured `resnet profile --json` (each
//! convolution's input- and weight-gradient passes and its BatchNorm+ReLU backward, scaled to
//! the profile's measured backward) or, given only a measured step (`--step-ms`), from the
//! multiply-adds (forward : backward = 1 : 2, no input gradient for the stem). The arithmetic
//! is `resnet_collective::cost`; `--calibrate` checks it against the test bed's measurements.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::Flex;
use burn::tensor::Tensor;
use clap::Args;
use resnet_collective::cost::{self, Compute, Grad, Link, Prediction, Topology};
use resnet_kernels::{conv, ConvGeom, KernelChoice};
use resnet_model::{BuildResNet, ResNetConfig};

mod calibrate;
#[cfg(test)]
mod tests;

/// `resnet scaling`.
#[derive(Args, Debug)]
pub struct ScalingArgs {
    /// Model and per-GPU batch.
    #[command(flatten)]
    pub shape: crate::args::ModelShapeArgs,
    /// Classes of the classifier head.
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// One GPU's measured training step at this batch, in ms (e.g. PyTorch's); split into
    /// forward and backward by multiply-adds (1 : 2), no optimizer time.
    #[arg(long, value_name = "MS", conflicts_with = "profile")]
    pub step_ms: Option<f64>,
    /// A `resnet profile --json` of the same model and batch: its measured forward, backward
    /// and optimizer, the backward spread over the layers by their measured passes.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Cluster sizes to predict, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64,128,256,512,1024"
    )]
    pub gpus: Vec<usize>,
    /// GPUs per node (1: one worker per machine, as on the test bed).
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: usize,
    /// Bus bandwidth of a ring inside a node, GB/s (NCCL over NVLink on an 8-GPU H100/H200
    /// board: ~360; PCIe 4.0 x16: ~20).
    #[arg(long, value_name = "GB/S", default_value_t = 360.0)]
    pub intra_gbyte_s: f64,
    /// Latency of one ring step inside a node, µs.
    #[arg(long, value_name = "US", default_value_t = 2.0)]
    pub intra_latency_us: f64,
    /// Rate of one network interface between nodes, in `tc` syntax (200gbit = HDR
    /// InfiniBand, 25gbit, 1gbit, ...).
    #[arg(long, value_name = "RATE", default_value = "200gbit")]
    pub network: String,
    /// Latency of one ring step between nodes, µs.
    #[arg(long, value_name = "US", default_value_t = 5.0)]
    pub network_latency_us: f64,
    /// Network interfaces per node [default: one per GPU].
    #[arg(long, value_name = "N")]
    pub nics_per_node: Option<usize>,
    /// Fraction of the network rate that carries gradient bytes (TCP over 1500-byte Ethernet
    /// frames: 1448/1514 = 0.956; RDMA ~1).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub wire_efficiency: f64,
    /// Bucket size of the overlapped all-reduce, MB (PyTorch DDP's default: 25).
    #[arg(long, value_name = "MB", default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// Instead of predicting: compare the model with test-bed runs (`scripts/netbed.sh`
    /// JSON lines; lines without `width`/`batch_size` take `--width`/`--batch-size`).
    #[arg(long, value_name = "JSONL")]
    pub calibrate: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// A model's gradients as the backward pass sees them.
pub struct Layers {
    /// Convolutions in forward order, at batch 1 (macs scale with the batch).
    pub convs: Vec<ConvGeom>,
    /// Trainable parameters of the model.
    pub params: usize,
    /// Input features and classes of the head.
    pub head: [usize; 2],
}

impl Layers {
    /// Records the convolutions of `cfg` on a one-image forward pass.
    pub fn of(cfg: &ResNetConfig, image_size: usize) -> Result<Self> {
        let device = Default::default();
        let model = cfg
            .init::<Flex>(&device)?
            .with_kernels(KernelChoice::default());
        let x = Tensor::<Flex, 4>::zeros([1, 3, image_size, image_size], &device);
        let (_, convs) = conv::record_geometries(|| model.forward(x));
        anyhow::ensure!(
            !convs.is_empty(),
            "the model ran no convolution through the kernels"
        );
        let head_in = convs.last().map(|g| g.cout).unwrap_or_default();
        let layers = Self {
            convs,
            params: model.trainable_params(),
            head: [head_in, cfg.num_classes],
        };
        // Every trainable parameter must be in the list (conv weights, BatchNorm scale and
        // shift, the head), or the bytes on the wire would be wrong.
        anyhow::ensure!(
            layers.listed_params() == layers.params,
            "the layer list covers {} of the model's {} parameters",
            layers.listed_params(),
            layers.params
        );
        Ok(layers)
    }

    fn conv_params(g: &ConvGeom) -> usize {
        g.cout * g.cin * g.kernel[0] * g.kernel[1] + 2 * g.cout
    }

    fn listed_params(&self) -> usize {
        let [i, c] = self.head;
        self.convs.iter().map(Self::conv_params).sum::<usize>() + i * c + c
    }

    /// Gradient bytes all-reduced per step (f32).
    pub fn bytes(&self) -> f64 {
        4.0 * self.params as f64
    }

    /// Multiply-adds of one image's forward pass (convolutions and head).
    pub fn forward_macs(&self) -> f64 {
        let [i, c] = self.head;
        self.convs.iter().map(|g| g.macs() as f64).sum::<f64>() + (i * c) as f64
    }

    /// Each gradient's share of the backward, by multiply-adds (input and weight gradient of
    /// every convolution but the stem's, whose input is the image), in backward order.
    pub fn backward_shares_by_macs(&self) -> Vec<(f64, f64)> {
        let [i, c] = self.head;
        let mut v = vec![(4.0 * (i * c + c) as f64, 2.0 * (i * c) as f64)];
        for (k, g) in self.convs.iter().enumerate().rev() {
            let passes = if k == 0 { 1.0 } else { 2.0 };
            v.push((4.0 * Self::conv_params(g) as f64, passes * g.macs() as f64));
        }
        v
    }

    /// Gradients in backward order with ready times, from `(bytes, weight)` pairs whose
    /// weights split `backward_s`.
    pub fn grads(shares: &[(f64, f64)], backward_s: f64) -> Vec<Grad> {
        let total: f64 = shares.iter().map(|s| s.1).sum();
        let mut t = 0.0;
        shares
            .iter()
            .map(|&(bytes, w)| {
                t += if total > 0.0 { w / total } else { 0.0 };
                Grad {
                    bytes,
                    ready_s: t.min(1.0) * backward_s,
                }
            })
            .collect()
    }
}

/// Compute per step and the gradients' ready times, from `--step-ms` or `--profile`.
fn compute(a: &ScalingArgs, layers: &Layers) -> Result<(Compute, Vec<Grad>)> {
    if let Some(path) = &a.profile {
        return from_profile(path, a, layers);
    }
    let Some(ms) = a.step_ms else {
        anyhow::bail!(
            "give one GPU's measured step: --step-ms MS (e.g. PyTorch's at this batch) or \
             --profile FILE (from `resnet profile --json`)"
        );
    };
    anyhow::ensure!(
        ms.is_finite() && ms > 0.0,
        "--step-ms must be a positive number of milliseconds, not {ms}"
    );
    let shares = layers.backward_shares_by_macs();
    let fwd = layers.forward_macs();
    let bwd: f64 = shares.iter().map(|s| s.1).sum();
    let step = ms / 1e3;
    let c = Compute {
        forward_s: step * fwd / (fwd + bwd),
        backward_s: step * bwd / (fwd + bwd),
        optimizer_s: 0.0,
    };
    Ok((c, Layers::grads(&shares, c.backward_s)))
}

fn from_profile(path: &PathBuf, a: &ScalingArgs, layers: &Layers) -> Result<(Compute, Vec<Grad>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let p: crate::cmd_profile::Profile = serde_json::from_str(text.trim())
        .with_context(|| format!("{path:?} is not the JSON of `resnet profile --json`"))?;
    let [f, b, o] = p.step;
    let [i, c] = layers.head;
    let mut shares = vec![(4.0 * (i * c + c) as f64, 0.0)];
    for (k, g) in layers.convs.iter().enumerate().rev() {
        let g = ConvGeom {
            batch: a.shape.batch_size,
            ..*g
        };
        let label = crate::cmd_profile::shape_label(&g);
        let l = p
            .layers
            .iter()
            .find(|l| l.shape == label)
            .with_context(|| {
                format!(
                    "{path:?} has no convolution {label}: profile the same model and batch \
                 (`resnet profile --depth {} --stem {} --width {} --batch-size {} --json`)",
                    a.shape.depth, a.shape.stem, a.shape.width, a.shape.batch_size
                )
            })?;
        let dgrad = if k == 0 { 0.0 } else { l.gemm.grad_input };
        shares.push((
            4.0 * Layers::conv_params(&g) as f64,
            dgrad + l.gemm.grad_weight + l.bn_relu[1],
        ));
    }
    let compute = Compute {
        forward_s: f,
        backward_s: b,
        optimizer_s: o,
    };
    Ok((compute, Layers::grads(&shares, b)))
}

/// The topology the flags describe.
fn topology(a: &ScalingArgs, per_node: usize, network: &str) -> Result<Topology> {
    let bits = cost::parse_rate(network).with_context(|| {
        format!("--network {network:?}: expected a rate like 200gbit, 25gbit or 1gbit")
    })?;
    anyhow::ensure!(
        a.wire_efficiency > 0.0 && a.wire_efficiency <= 1.0,
        "--wire-efficiency must be in (0, 1], not {}",
        a.wire_efficiency
    );
    anyhow::ensure!(a.intra_gbyte_s > 0.0, "--intra-gbyte-s must be positive");
    anyhow::ensure!(per_node >= 1, "--gpus-per-node must be at least 1");
    Ok(Topology {
        per_node,
        intra: Link {
            bytes_per_s: a.intra_gbyte_s * 1e9,
            latency_s: a.intra_latency_us * 1e-6,
        },
        inter: Link {
            bytes_per_s: bits / 8.0 * a.wire_efficiency,
            latency_s: a.network_latency_us * 1e-6,
        },
        nics: a.nics_per_node.unwrap_or(per_node),
    })
}

/// Runs `resnet scaling`.
pub fn run(a: ScalingArgs) -> Result<()> {
    anyhow::ensure!(a.bucket_mb > 0.0, "--bucket-mb must be positive");
    if let Some(path) = &a.calibrate {
        return calibrate::run(&a, path);
    }
    anyhow::ensure!(
        a.gpus.iter().all(|&n| n >= 1),
        "--gpus: every size must be at least 1"
    );
    let cfg = a.shape.config(a.num_classes)?;
    let layers = Layers::of(&cfg, a.shape.image_size)?;
    let (compute, grads) = compute(&a, &layers)?;
    let topo = topology(&a, a.gpus_per_node, &a.network)?;
    let cap = a.bucket_mb * 1e6;
    let rows: Vec<Prediction> = a
        .gpus
        .iter()
        .map(|&n| cost::predict(n, &topo, &compute, &grads, cap))
        .collect();
    if a.json {
        let out = serde_json::json!({
            "model": format!("resnet{} {} width {}", a.shape.depth, a.shape.stem, a.shape.width),
            "batch_per_gpu": a.shape.batch_size,
            "gradient_bytes": layers.bytes(),
            "forward_macs_per_image": layers.forward_macs(),
            "compute_s": [compute.forward_s, compute.backward_s, compute.optimizer_s],
            "topology": {
                "gpus_per_node": topo.per_node,
                "intra_bytes_per_s": topo.intra.bytes_per_s,
                "network_bytes_per_s": topo.inter.bytes_per_s,
                "nics_per_node": topo.nics,
            },
            "bucket_mb": a.bucket_mb,
            "predictions": rows,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "ResNet-{} {} stem width {}, {:.2} GMAC per image, batch {} per GPU: {:.1} MB of \
         gradients; one GPU: forward {:.2} ms, backward {:.2} ms, optimizer {:.2} ms",
        a.shape.depth,
        a.shape.stem,
        a.shape.width,
        layers.forward_macs() / 1e9,
        a.shape.batch_size,
        layers.bytes() / 1e6,
        compute.forward_s * 1e3,
        compute.backward_s * 1e3,
        compute.optimizer_s * 1e3
    );
    println!(
        "{} GPUs per node, ring {:.0} GB/s inside a node; {} x {} ({:.2} GB/s payload each) \
         between nodes; buckets of {} MB",
        topo.per_node,
        a.intra_gbyte_s,
        topo.nics,
        a.network,
        topo.inter.bytes_per_s / 1e9,
        a.bucket_mb
    );
    println!(
        "{:>5} {:>5} | {:>12} {:>10} {:>6} | {:>7} {:>10} {:>10} {:>6}",
        "GPUs", "nodes", "all-reduce", "step", "eff", "buckets", "exposed", "step", "eff"
    );
    println!("{:>11} | {:^30} | {:^36}", "", "no overlap", "overlap");
    for p in &rows {
        println!(
            "{:>5} {:>5} | {:>9.2} ms {:>7.2} ms {:>5.1}% | {:>7} {:>7.2} ms {:>7.2} ms {:>5.1}%",
            p.gpus,
            p.nodes,
            p.allreduce_s * 1e3,
            p.step_s * 1e3,
            100.0 * p.efficiency,
            p.buckets,
            p.exposed_s * 1e3,
            p.overlap_step_s * 1e3,
            100.0 * p.overlap_efficiency
        );
    }
    Ok(())
}
