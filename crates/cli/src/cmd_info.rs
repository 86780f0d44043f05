//! `resnet info`.

use anyhow::Result;
use burn::module::Module;
use resnet_model::{stage_shapes, BuildResNet, ResNetConfig};
use serde_json::json;

use clap::Args;

use crate::device::CpuInfer;

/// `resnet info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// 18, 34, 50, 101 or 152.
    #[arg(long, default_value_t = 18)]
    pub depth: usize,
    /// Classifier outputs.
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// cifar or imagenet.
    #[arg(long, default_value = "cifar")]
    pub stem: String,
    /// Base width.
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Input side length for the shape table.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Runs `resnet info`: builds the real module and counts its tensors.
pub fn run(a: InfoArgs) -> Result<()> {
    let cfg = ResNetConfig {
        depth: a.depth,
        num_classes: a.num_classes,
        stem: a.stem.parse()?,
        width: a.width,
        ..Default::default()
    };
    let model = cfg.init::<CpuInfer>(&Default::default())?;
    let total = model.num_params();
    let trainable = model.trainable_params();
    let shapes = stage_shapes(&cfg, a.image_size)?;
    let (blocks, kind) = cfg.stage_plan()?;
    if a.json {
        let v = json!({
            "depth": cfg.depth,
            "stem": cfg.stem,
            "width": cfg.width,
            "num_classes": cfg.num_classes,
            "block": format!("{kind:?}").to_lowercase(),
            "blocks_per_stage": blocks,
            "trainable_params": trainable,
            "running_stats": total - trainable,
            "total_params": total,
            "input": [3, a.image_size, a.image_size],
            "stages": shapes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "resnet-{} ({} stem, width {}, {} classes, {:?} blocks {:?})",
            cfg.depth, cfg.stem, cfg.width, cfg.num_classes, kind, blocks
        );
        println!("trainable parameters  {trainable}");
        println!("BN running statistics {}", total - trainable);
        println!("total                 {total}");
        println!("output shapes for a 3x{0}x{0} input:", a.image_size);
        for s in shapes {
            println!("  {:<7} {:?}", s.name, s.shape);
        }
    }
    Ok(())
}
