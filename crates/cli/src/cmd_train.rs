//! `resnet train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use resnet_data::Splits;
use resnet_train::{TrainConfig, TrainSummary, Trainer};

use clap::Args;

use crate::args::{DeviceArgs, RunArgs};
use crate::device::select;
use crate::progress::Progress;
use crate::settings::{check_resume_unchanged, load_resume, resolve, resume_target};

/// `resnet train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run parameters.
    #[command(flatten)]
    pub run: RunArgs,
    /// Run directory: config.json, metrics.jsonl, summary.json, checkpoints/ [default: runs/train-<time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue a run: a checkpoint directory, a run directory, `latest` (the newest
    /// checkpoint under --out, or else of the newest run in runs/) or `auto` (the newest under
    /// --out, or a new run when there is none). Run flags may repeat the run's configuration,
    /// not change it (except --epochs, --max-steps, --data).
    #[arg(long, value_name = "DIR|latest|auto")]
    pub resume: Option<String>,
    /// Stop (exit code 5) when this many checkpoints in a row could not be written (full or
    /// read-only disk; each is retried once), rather than train on with nothing saved; 0 never
    /// stops. The final checkpoint failing always exits 5.
    #[arg(long, value_name = "N", default_value_t = resnet_train::DEFAULT_MAX_CHECKPOINT_FAILURES)]
    pub max_checkpoint_failures: usize,
    /// Write steps.jsonl in the run directory: a line every N steps (mean loss, LR, images/s,
    /// phase times), and one for the steps left over at the end; 0: only that last line.
    /// `resnet report` draws it.
    #[arg(long, value_name = "N", default_value_t = resnet_train::DEFAULT_STEP_METRICS_EVERY)]
    pub step_metrics_every: usize,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Loads the data named by `cfg`, showing a progress bar while downloading.
pub fn load_data(cfg: &TrainConfig) -> Result<Splits> {
    let bar = ProgressBar::hidden();
    let mut shown = false;
    let mut progress = |done: u64, total: Option<u64>| {
        if !shown {
            // (Drawn on a terminal only, and never between JSON log lines.)
            if !crate::json_logs() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_style(
                ProgressStyle::with_template(
                    "downloading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            shown = true;
        }
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    };
    let splits = cfg.data.load(cfg.seed, &mut progress).with_context(|| {
        format!(
            "loading {:?} data from {}",
            cfg.data.dataset,
            cfg.data.dir.display()
        )
    })?;
    bar.finish_and_clear();
    crate::say!(
        "data: {} train / {} test images of {}x{}, {} classes",
        splits.train.len(),
        splits.test.len(),
        splits.train.height,
        splits.train.width,
        splits.train.classes.len()
    );
    Ok(splits)
}

fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("train-{secs}"))
}

/// Runs `resnet train`.
pub fn run(args: TrainArgs) -> Result<()> {
    // First, so a signal during set-up already stops cleanly (at the first step boundary).
    let stop = crate::stop_on_signals()?;
    let sel = select(&args.device)?;
    let kernels = crate::kernels::choose(&args.device)?;
    let target = match args.resume.as_deref() {
        Some(spec) => resume_target(spec, args.out.as_deref())?,
        None => None,
    };
    let resume = match target {
        Some(spec) => {
            let (dir, state) = load_resume(&spec, args.out.as_deref(), &args.run)?;
            check_resume_unchanged(&args.run, &state.config)?;
            Some((dir, state))
        }
        None => None,
    };
    let out = match (&args.out, &resume) {
        (Some(o), _) => o.clone(),
        // A checkpoint lives in <run>/checkpoints/<name>: continue writing into <run>.
        (None, Some((dir, _))) => dir
            .parent()
            .and_then(|p| p.parent())
            .map(PathBuf::from)
            .unwrap_or_else(default_out),
        (None, None) => default_out(),
    };
    let mut cfg = match &resume {
        Some((_, state)) => state.config.clone(),
        None => resolve(&args.run)?,
    };
    if cfg.grad_wire != resnet_train::GradWire::F32 {
        // Kept in the config (a checkpoint resumed on a cluster uses it), but alone there is
        // nothing to transfer.
        tracing::warn!(
            grad_wire = cfg.grad_wire.name(),
            "--grad-wire applies to data-parallel runs (coordinator and workers); a single process sends no gradients"
        );
    }
    let splits = load_data(&cfg)?;
    if resume.is_none() {
        cfg.model.num_classes = splits.train.classes.len();
        cfg.data.record_trained_on(&splits);
    }
    crate::say!(
        "model: resnet-{} {} stem, width {}, {} classes; {:?} lr {} {:?} schedule; batch {} x {} epochs; out {}",
        cfg.model.depth,
        cfg.model.stem,
        cfg.model.width,
        cfg.model.num_classes,
        cfg.optim.kind,
        cfg.optim.lr,
        cfg.schedule.kind,
        cfg.batch_size,
        cfg.epochs,
        out.display()
    );
    let summary: TrainSummary = crate::with_train_backend!(sel, |B, device| {
        let mut trainer = match resume {
            Some((dir, state)) => {
                Trainer::<B>::resume(&dir, state, splits, device, Some(out.clone()))?
            }
            None => Trainer::<B>::new(cfg, splits, device, Some(out.clone()))?,
        }
        .with_kernels(kernels);
        trainer.set_max_checkpoint_failures(args.max_checkpoint_failures);
        let steps =
            resnet_train::StepLog::open(&out, args.step_metrics_every, trainer.state().global_step);
        trainer.fit(&mut Progress::new().with_stop(stop).with_step_log(steps))?
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if summary.interrupted {
        return Err(crate::Interrupted(format!(
            "interrupted by a signal at step {}: {}; continue with --resume latest --out {}",
            summary.steps,
            match &summary.checkpoint {
                Some(c) => format!("checkpoint {}", c.display()),
                None => "NO checkpoint could be written".into(),
            },
            out.display()
        ))
        .into());
    }
    // Training survives failed checkpoint writes, but a run that ends with none of its state on
    // disk must not look like a success.
    if summary.checkpoint.is_none() {
        anyhow::bail!(
            "training finished but no checkpoint could be written under {} (see the CHECKPOINT FAILED lines)",
            out.join("checkpoints").display()
        );
    }
    Ok(())
}

fn print_summary(s: &TrainSummary) {
    println!("steps        {}", s.steps);
    println!("epochs       {}", s.epochs_completed);
    if let Some(e) = &s.final_eval {
        println!(
            "test acc     {:.4} (top-5 {:.4}, loss {:.4}, macro F1 {:.4}, {} images)",
            e.accuracy, e.top5, e.loss, e.macro_f1, e.samples
        );
    }
    if let Some(c) = &s.checkpoint {
        println!("checkpoint   {}", c.display());
    }
    println!("param hash   {}", s.param_hash);
}
