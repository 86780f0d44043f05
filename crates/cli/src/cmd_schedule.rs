//! `resnet schedule`: the learning rate a config produces, epoch by epoch, without training.

use anyhow::{bail, Result};
use clap::Args;
use resnet_data::num_batches;
use resnet_train::ScheduleKind;
use serde::Serialize;

use crate::args::RunArgs;
use crate::settings::resolve;

/// `resnet schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// Run parameters (the same flags and config file as `resnet train`).
    #[command(flatten)]
    pub run: RunArgs,
    /// Steps per epoch; default: computed from the dataset, --batch-size and --world.
    #[arg(long, value_name = "N")]
    pub steps_per_epoch: Option<usize>,
    /// Data-parallel ranks sharing each epoch (steps per epoch are per rank).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub world: usize,
    /// Plateau: the validation loss of each epoch, comma-separated, to see where it would cut.
    #[arg(long, value_name = "L1,L2,..", value_delimiter = ',')]
    pub val_losses: Vec<f64>,
    /// Print the table (what `resnet schedule` always does; kept for scripts that pass it).
    #[arg(long)]
    pub print: bool,
    /// JSON output: one object per epoch.
    #[arg(long)]
    pub json: bool,
}

/// The LR over one epoch.
#[derive(Debug, Serialize, PartialEq)]
pub struct EpochLr {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// LR of the epoch's first step.
    pub first: f64,
    /// LR of the epoch's last step.
    pub last: f64,
    /// Lowest LR in the epoch.
    pub min: f64,
    /// Highest LR in the epoch.
    pub max: f64,
}

/// Runs `resnet schedule`.
pub fn run(args: ScheduleArgs) -> Result<()> {
    let cfg = resolve(&args.run)?;
    if args.world == 0 {
        bail!("--world must be at least 1");
    }
    let spe = match args.steps_per_epoch {
        Some(0) => bail!("--steps-per-epoch must be at least 1"),
        Some(n) => n,
        None => {
            let splits = crate::cmd_train::load_data(&cfg)?;
            let shard = splits.train.len().div_ceil(args.world);
            let n = num_batches(shard, cfg.batch_size, true);
            if n == 0 {
                bail!(
                    "{} images per rank make no full batch of {}",
                    shard,
                    cfg.batch_size
                );
            }
            n
        }
    };
    if cfg.schedule.kind == ScheduleKind::Plateau && args.val_losses.is_empty() {
        crate::say!("note: plateau follows the validation loss; pass --val-losses to see its cuts");
    }
    let rows = table(&cfg, spe, &args.val_losses);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "schedule {:?}, base lr {}, {} epochs x {} steps{}",
        cfg.schedule.kind,
        cfg.optim.lr,
        cfg.epochs,
        spe,
        if cfg.schedule.warmup_epochs > 0.0 {
            format!(", warm-up {} epochs", cfg.schedule.warmup_epochs)
        } else {
            String::new()
        }
    );
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>12}",
        "epoch", "first", "last", "min", "max"
    );
    for r in rows {
        println!(
            "{:>6} {:>12.6e} {:>12.6e} {:>12.6e} {:>12.6e}",
            r.epoch, r.first, r.last, r.min, r.max
        );
    }
    Ok(())
}

/// LR per epoch for `cfg` with `spe` steps per epoch; plateau sees `val_losses[..epoch]`.
pub fn table(cfg: &resnet_train::TrainConfig, spe: usize, val_losses: &[f64]) -> Vec<EpochLr> {
    let total = cfg.epochs * spe;
    (0..cfg.epochs)
        .map(|e| {
            let seen = &val_losses[..e.min(val_losses.len())];
            let lrs: Vec<f64> = (e * spe..(e + 1) * spe)
                .map(|s| {
                    cfg.schedule
                        .lr_with_losses(cfg.optim.lr, s, spe, total, seen)
                })
                .collect();
            EpochLr {
                epoch: e + 1,
                first: lrs[0],
                last: lrs[lrs.len() - 1],
                min: lrs.iter().copied().fold(f64::INFINITY, f64::min),
                max: lrs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}
