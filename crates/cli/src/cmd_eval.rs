//! `resnet eval`: one checkpoint, or an ensemble of several.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use resnet_data::{ImageDataset, Normalization};
use resnet_train::{count_batch, load_model, predict, resolve_checkpoint, EvalCounts, EvalReport};
use serde::Serialize;

use clap::Args;

use crate::args::DeviceArgs;
use crate::device::select;

/// `resnet eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory or run directory (its newest valid checkpoint). Repeat it to
    /// evaluate an ensemble: the members' softmax probabilities are averaged, and every member
    /// is reported too (members may differ in depth, width and seed, not in dataset).
    #[arg(long, value_name = "DIR", required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// Data directory; default: the one recorded in the checkpoint's config.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N test records.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// One ensemble member's result.
#[derive(Debug, Serialize)]
pub struct MemberReport {
    /// The checkpoint directory.
    pub checkpoint: PathBuf,
    /// Its depth and seed, to tell members apart.
    pub depth: usize,
    /// Its training seed.
    pub seed: u64,
    /// Its own metrics.
    pub report: EvalReport,
}

/// `resnet eval` with several checkpoints.
#[derive(Debug, Serialize)]
pub struct EnsembleReport {
    /// Each member alone.
    pub members: Vec<MemberReport>,
    /// The average of the members' probabilities.
    pub ensemble: EvalReport,
}

/// Runs `resnet eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let sel = select(&args.device)?;
    let kernels = crate::kernels::choose(&args.device)?;
    let dirs = args
        .checkpoint
        .iter()
        .map(|c| resolve_checkpoint(c).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let mut data: Option<(Arc<ImageDataset>, Normalization, resnet_train::TrainConfig)> = None;
    let mut members = Vec::new();
    // Per member: logits for the whole test split, in order.
    let mut logits: Vec<Vec<f32>> = Vec::new();
    for dir in &dirs {
        let (out, state_cfg) = crate::with_infer_backend!(sel, |B, device| {
            let (model, state) = load_model::<B>(dir, &device)?;
            let model = model.with_kernels(kernels);
            let cfg = state.config;
            if data.is_none() {
                data = Some(load_test(&cfg, args.data.as_ref(), args.test_limit)?);
            }
            let (test, norm, first) = data.as_ref().context("test data loaded above")?;
            check_member(first, &cfg, dir)?;
            let out = predict(&model, test.clone(), *norm, args.batch_size, &device);
            (out, cfg)
        });
        let (test, _, _) = data.as_ref().context("test data loaded above")?;
        let k = test.classes.len();
        let mut counts = EvalCounts::new(k);
        count_batch(&out, &test.labels, k, &mut counts);
        members.push(MemberReport {
            checkpoint: dir.clone(),
            depth: state_cfg.model.depth,
            seed: state_cfg.seed,
            report: counts.report(&test.classes),
        });
        logits.push(out);
    }
    let (test, _, _) = data.context("no checkpoint given")?;
    if members.len() == 1 {
        let report = members.remove(0).report;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report, &test.name, &dirs[0].display().to_string());
        }
        return Ok(());
    }
    let ensemble = ensemble_counts(&logits, &test.labels, test.classes.len()).report(&test.classes);
    let out = EnsembleReport { members, ensemble };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<60} {:>6} {:>6} {:>9} {:>9}",
        "member", "depth", "seed", "accuracy", "loss"
    );
    for m in &out.members {
        println!(
            "{:<60} {:>6} {:>6} {:>9.4} {:>9.4}",
            m.checkpoint.display().to_string(),
            m.depth,
            m.seed,
            m.report.accuracy,
            m.report.loss
        );
    }
    println!();
    print_report(
        &out.ensemble,
        &test.name,
        &format!(
            "ensemble of {} members (mean probability)",
            out.members.len()
        ),
    );
    Ok(())
}

/// The test split named by a checkpoint's config, with `resnet eval`/`report` overrides (data
/// directory, record limit); never downloads. Returns the config used.
pub fn load_test(
    cfg: &resnet_train::TrainConfig,
    data: Option<&PathBuf>,
    test_limit: Option<usize>,
) -> Result<(Arc<ImageDataset>, Normalization, resnet_train::TrainConfig)> {
    let mut cfg = cfg.clone();
    if let Some(d) = data {
        cfg.data.dir = d.clone();
    }
    cfg.data.download = false;
    if test_limit.is_some() {
        cfg.data.test_limit = test_limit;
    }
    // A folder run that recorded its classes and normalisation needs only the test split (the
    // folder may hold nothing else).
    if let (resnet_data::DatasetKind::Folder, Some(classes), Some(norm)) = (
        cfg.data.dataset,
        cfg.data.classes.as_deref(),
        cfg.data.normalization,
    ) {
        let test = resnet_data::load_folder(
            &cfg.data.dir,
            false,
            cfg.data.image_size,
            cfg.data.test_limit,
            Some(classes),
        )
        .with_context(|| format!("loading test data from {}", cfg.data.dir.display()))?;
        return Ok((Arc::new(test), norm, cfg));
    }
    // Otherwise only the test split is needed, but a folder's normalisation (when not recorded:
    // runs from before it was, cluster runs) is the training split's statistics, so that split
    // is read as training read it; for the other datasets one training record is enough.
    if cfg.data.dataset != resnet_data::DatasetKind::Folder || cfg.data.normalization.is_some() {
        cfg.data.train_limit = Some(1);
    }
    let splits = cfg
        .data
        .load(cfg.seed, &mut |_, _| {})
        .with_context(|| format!("loading test data from {}", cfg.data.dir.display()))?;
    Ok((Arc::new(splits.test), splits.norm, cfg))
}

/// Members must classify the same data into the same classes.
fn check_member(
    first: &resnet_train::TrainConfig,
    cfg: &resnet_train::TrainConfig,
    dir: &std::path::Path,
) -> Result<()> {
    if cfg.data.dataset != first.data.dataset || cfg.model.num_classes != first.model.num_classes {
        bail!(
            "{}: trained on {:?} with {} classes, but the first member on {:?} with {}; ensemble members must share the dataset",
            dir.display(),
            cfg.data.dataset,
            cfg.model.num_classes,
            first.data.dataset,
            first.model.num_classes
        );
    }
    Ok(())
}

/// Counts for the mean of the members' softmax probabilities. `log(mean p)` is passed as the
/// logits: its log-softmax is itself (the row sums to 1), so the loss is the ensemble's NLL.
pub fn ensemble_counts(members: &[Vec<f32>], labels: &[u16], k: usize) -> EvalCounts {
    let n = labels.len();
    let mut mean = vec![0f64; n * k];
    for logits in members {
        for (row, acc) in logits.chunks_exact(k).zip(mean.chunks_exact_mut(k)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let sum: f64 = exp.iter().sum();
            for (a, e) in acc.iter_mut().zip(exp) {
                *a += e / sum / members.len() as f64;
            }
        }
    }
    let logp: Vec<f32> = mean.iter().map(|&p| p.max(1e-30).ln() as f32).collect();
    let mut counts = EvalCounts::new(k);
    count_batch(&logp, labels, k, &mut counts);
    counts
}
/// Human-readable evaluation report.
pub fn print_report(r: &EvalReport, data: &str, checkpoint: &str) {
    println!("checkpoint {checkpoint}");
    println!("data       {data} ({} images)", r.samples);
    println!(
        "accuracy   {:.4}   top-5 {:.4}   loss {:.4}",
        r.accuracy, r.top5, r.loss
    );
    println!(
        "macro      precision {:.4}   recall {:.4}   F1 {:.4}",
        r.macro_precision, r.macro_recall, r.macro_f1
    );
    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>8}",
        "class", "precision", "recall", "f1", "support"
    );
    for c in &r.per_class {
        println!(
            "{:<14} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            c.class, c.precision, c.recall, c.f1, c.support
        );
    }
    println!();
    println!("confusion matrix (rows: true, columns: predicted)");
    let w = r
        .confusion
        .iter()
        .flatten()
        .max()
        .map(|m| m.to_string().len())
        .unwrap_or(1)
        .max(3);
    print!("{:<14}", "");
    for i in 0..r.confusion.len() {
        print!(" {:>w$}", i);
    }
    println!();
    for (i, row) in r.confusion.iter().enumerate() {
        let name = r.per_class.get(i).map(|c| c.class.as_str()).unwrap_or("");
        print!("{:<14}", format!("{i} {name}"));
        for v in row {
            print!(" {v:>w$}");
        }
        println!();
    }
}
