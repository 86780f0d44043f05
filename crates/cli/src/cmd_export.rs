//! `resnet export`: a checkpoint's model as torchvision-keyed safetensors (`conv1.weight`,
//! `layer1.0.bn1.running_var`, `downsample.0/1`, `fc.weight`…), loadable with
//! `torchvision.models.resnetNN(num_classes=K).load_state_dict(safetensors.torch.load_file(F))`
//! for the ImageNet stem, and by `--pretrained`-style imports here.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use resnet_train::{load_model, resolve_checkpoint};

/// Arguments of `resnet export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint directory, run directory (its newest valid checkpoint) or a cluster's --out.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Output format (only safetensors, with torchvision's parameter names).
    #[arg(long, default_value = "safetensors", value_parser = ["safetensors"])]
    pub format: String,
    /// File to write [default: <checkpoint>/model.safetensors].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `resnet export`.
pub fn run(a: ExportArgs) -> Result<()> {
    let dir = resolve_checkpoint(&a.checkpoint)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| dir.join("model.safetensors"));
    // Export is a copy of tensors: the CPU backend is always enough.
    let device = Default::default();
    let (model, state) = load_model::<crate::device::CpuInfer>(&dir, &device)?;
    resnet_model::export_torchvision_safetensors(&model, &out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    crate::say!(
        "exported {} (ResNet-{}, {} classes, step {}) to {}",
        dir.display(),
        state.config.model.depth,
        state.config.model.num_classes,
        state.global_step,
        out.display()
    );
    Ok(())
}
