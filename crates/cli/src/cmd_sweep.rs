//! `resnet sweep`: random search or successive halving over a declared space, trials in this
//! process (`--parallel N` at a time); results as a sorted table, `results.csv` and
//! `sweep.json`. Every trial is an ordinary run directory with a `config.toml` that
//! `resnet train --config` reproduces bit-exactly.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use resnet_data::num_batches;
use resnet_kernels::KernelChoice;
use resnet_train::sweep::{Next, SweepMethod, SweepScheduler, SweepSpace, TrialResult, TrialTask};
use resnet_train::{load_state, resolve_checkpoint, Quiet, TrainConfig, Trainer};

use crate::args::{DeviceArgs, RunArgs};
use crate::device::select;
use crate::settings::resolve;

/// How many trials and how they compete; shared by `resnet sweep` and `coordinator --sweep`.
#[derive(Args, Debug, Clone)]
pub struct SweepPlanArgs {
    /// Number of trials.
    #[arg(long, default_value_t = 8)]
    pub trials: usize,
    /// random (every trial trains --epochs) or halving (successive halving: rungs of
    /// --min-epochs x eta^k; the best 1/eta of each rung go on).
    #[arg(long, default_value = "halving")]
    pub method: String,
    /// Halving: epochs of the first rung.
    #[arg(long, default_value_t = 1)]
    pub min_epochs: usize,
    /// Halving: keep the best 1/eta at each rung.
    #[arg(long, default_value_t = 3)]
    pub eta: usize,
}

impl SweepPlanArgs {
    /// Reads the space file and samples the trials around `base`.
    pub fn scheduler(&self, base: &TrainConfig, space_file: &Path) -> Result<SweepScheduler> {
        let text = std::fs::read_to_string(space_file)
            .with_context(|| format!("reading --space {}", space_file.display()))?;
        let space =
            SweepSpace::from_toml(&text).with_context(|| space_file.display().to_string())?;
        let method: SweepMethod = self.method.parse()?;
        let list = (0..self.trials)
            .map(|i| space.trial(base, base.seed, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SweepScheduler::new(
            list,
            method,
            self.min_epochs,
            self.eta,
            base.epochs,
        )?)
    }
}

/// `resnet sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Base run parameters (flags and --config as for `resnet train`); the space overrides them.
    #[command(flatten)]
    pub run: RunArgs,
    /// TOML search space: `[params]` with `"optim.lr" = { log_uniform = [1e-3, 0.3] }`,
    /// `uniform`, `int_uniform` or `choice = [...]` per run-config field (see README).
    #[arg(long, value_name = "FILE")]
    pub space: PathBuf,
    /// Trials, method and rungs.
    #[command(flatten)]
    pub plan: SweepPlanArgs,
    /// Trials trained at the same time in this process.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Sweep directory: trial-NNN/ run directories, results.csv, sweep.json
    /// [default: runs/sweep-<time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the leaderboard as JSON.
    #[arg(long)]
    pub json: bool,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `resnet sweep`.
pub fn run(args: SweepArgs) -> Result<()> {
    let sel = select(&args.device)?;
    let kernels = crate::kernels::choose(&args.device)?;
    let base = resolve(&args.run)?;
    let sched = args.plan.scheduler(&base, &args.space)?;
    let out = args.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::say!(
        "sweep: {} trials, {}, rungs {:?} epochs, {} at a time; out {}",
        args.plan.trials,
        args.plan.method,
        sched.rungs(),
        args.parallel.max(1),
        out.display()
    );
    let shared = (Mutex::new(sched), Condvar::new());
    crate::with_train_backend!(sel, |B, device| {
        std::thread::scope(|s| {
            for _ in 0..args.parallel.max(1) {
                let (shared, out, device) = (&shared, &out, &device);
                s.spawn(move || worker_loop::<B>(shared, out, kernels, device));
            }
        });
    });
    let sched = shared.0.into_inner().unwrap_or_else(|p| p.into_inner());
    write_results(&out, &sched)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sched.leaderboard())?);
    } else {
        print!("{}", sched.table());
        println!("results: {}", out.join("results.csv").display());
    }
    Ok(())
}

fn worker_loop<B: AutodiffBackend>(
    shared: &(Mutex<SweepScheduler>, Condvar),
    out: &Path,
    kernels: KernelChoice,
    device: &B::Device,
) {
    let (lock, cv) = shared;
    loop {
        let task = {
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match s.next_task() {
                    Next::Task(t) => break *t,
                    Next::Done => return,
                    Next::Wait => s = cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        let (id, rung) = (task.trial.id, task.rung);
        let outcome = run_trial::<B>(&task, out, kernels, device);
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(r) => {
                crate::say!(
                    "trial {id:>3} rung {rung} ({} epochs): accuracy {:.4} loss {:.4} in {:.0} s  {}",
                    r.epochs,
                    r.accuracy,
                    r.loss,
                    r.seconds,
                    params_text(&task)
                );
                s.report(id, rung, r);
            }
            Err(e) => {
                crate::say!("trial {id:>3} rung {rung} FAILED: {e:#}");
                s.fail(id);
            }
        }
        cv.notify_all();
    }
}

fn params_text(task: &TrialTask) -> String {
    task.trial
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `runs/sweep-<unix time>`.
pub fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("sweep-{secs}"))
}

/// The run directory of trial `id`.
pub fn trial_dir(out: &Path, id: usize) -> PathBuf {
    out.join(format!("trial-{id:03}"))
}

/// Trains one task: a fresh run for the first rung, a resumed one for later rungs (bit-exact
/// with an uninterrupted run, so a trial's result never depends on where it was paused).
pub fn run_trial<B: AutodiffBackend>(
    task: &TrialTask,
    out: &Path,
    kernels: KernelChoice,
    device: &B::Device,
) -> Result<TrialResult> {
    let started = Instant::now();
    let dir = trial_dir(out, task.trial.id);
    let mut cfg = task.trial.config.clone();
    let splits = cfg
        .data
        .load(cfg.seed, &mut |_, _| {})
        .with_context(|| format!("loading data from {}", cfg.data.dir.display()))?;
    cfg.model.num_classes = splits.train.classes.len();
    let spe = num_batches(splits.train.len(), cfg.batch_size, true);
    cfg.max_steps = Some(task.epochs * spe);
    let mut trainer = if task.rung > 0 && dir.join("checkpoints").is_dir() {
        let ckpt = resolve_checkpoint(&dir)?;
        let mut state = load_state(&ckpt)?;
        state.config.max_steps = cfg.max_steps;
        cfg = state.config.clone();
        Trainer::<B>::resume(&ckpt, state, splits, device.clone(), Some(dir.clone()))?
    } else {
        Trainer::<B>::new(cfg.clone(), splits, device.clone(), Some(dir.clone()))?
    }
    .with_kernels(kernels);
    let config_toml = toml::to_string(&cfg).context("serialising the trial config")?;
    std::fs::write(dir.join("config.toml"), config_toml)
        .with_context(|| format!("writing {}", dir.join("config.toml").display()))?;
    let summary = trainer.fit(&mut Quiet)?;
    let eval = summary
        .final_eval
        .context("the trial has no test split to rank it by")?;
    Ok(TrialResult {
        epochs: summary.epochs_completed,
        accuracy: eval.accuracy,
        loss: eval.loss,
        param_hash: summary.param_hash,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `results.csv` (best first) and `sweep.json` (every trial's status and config).
pub fn write_results(out: &Path, sched: &SweepScheduler) -> Result<()> {
    let path = out.join("results.csv");
    std::fs::write(&path, sched.results_csv())
        .with_context(|| format!("writing {}", path.display()))?;
    let path = out.join("sweep.json");
    std::fs::write(&path, serde_json::to_string_pretty(&sched.leaderboard())?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
