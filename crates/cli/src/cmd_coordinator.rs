//! `coordinator`: its flags, the control plane's run (serve, wait for the group, summary) and
//! `--local`, which runs the workers as threads of this process (`local.rs`).

mod local;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use resnet_coordinator::{serve, Coordinator, CoordinatorConfig, Phase, RunSummary};
use resnet_kernels::KernelChoice;

use crate::args::{DeviceArgs, RunArgs};
use crate::cluster_security::{load_token, TlsArgs};
use crate::device::{select, Selected};
use crate::settings::resolve;

/// The control plane: waits for `--workers` workers, assigns ranks, sends them the run
/// configuration (the run flags below, as for `resnet train`) and the ring layout, collects
/// exact per-epoch counts and ends with a summary. With `--local` the workers are threads of
/// this process (in-memory ring).
#[derive(Parser, Debug)]
#[command(name = "coordinator", version, after_help = crate::EXIT_CODES_HELP)]
pub struct CoordinatorCli {
    /// Run parameters.
    #[command(flatten)]
    pub run: RunArgs,
    /// Number of workers in the group (env WORLD_SIZE, as torchrun and the PyTorch operators
    /// set it).
    #[arg(long, default_value_t = 1, env = "WORLD_SIZE")]
    pub workers: usize,
    /// gRPC address to listen on (port 0 picks a free port; the chosen address is logged).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Run the workers as threads of this process, on this machine's device.
    #[arg(long)]
    pub local: bool,
    /// Seconds to wait for the whole group: a joined worker waits this long for the rest, and
    /// the run fails if the group is not complete this long after the coordinator started.
    #[arg(long, default_value_t = 300)]
    pub join_timeout: u64,
    /// Seconds without a heartbeat after which a worker counts as dead: with --out the group is
    /// re-formed without it, otherwise the run fails.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_timeout: u64,
    /// Fewest workers to continue with after losing some; below it the run fails.
    #[arg(long, default_value_t = 1)]
    pub min_workers: usize,
    /// Most workers the group may grow to when workers join a running job (elastic scale-up;
    /// each one grows the global batch): with --workers and --min-workers the min:max range of
    /// torchrun's --nnodes [default: --workers, so an extra worker is refused, naming the limit;
    /// replacements for lost workers are always admitted up to it].
    #[arg(long, value_name = "N")]
    pub max_workers: Option<usize>,
    /// Seconds survivors have to rejoin when the group is re-formed after a loss.
    #[arg(long, default_value_t = 5)]
    pub regroup_timeout: u64,
    /// Directory for config.json, metrics.jsonl (one line per epoch), summary.json and the
    /// central checkpoints (checkpoints/step-N, uploaded by rank 0; the newest
    /// `keep_checkpoints` plus the best by test accuracy are kept).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue a run from a checkpoint: `latest` (the newest valid one under --out), `auto`
    /// (that, or a new run when --out has no checkpoint: one command for the first start and
    /// every restart) or a checkpoint / run directory. Workers download it when they join; the
    /// run keeps its saved configuration (run flags may repeat it; only --epochs, --max-steps
    /// and --data may change it).
    #[arg(long, value_name = "latest|auto|PATH")]
    pub resume: Option<String>,
    /// File holding the shared cluster token (at least 16 printable characters); every RPC and
    /// ring connection must present it. The env var names the file, never the secret itself.
    #[arg(long, value_name = "FILE", env = "RESNET_CLUSTER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Log format: human or json.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (read-only). With --local this
    /// includes every in-process worker's series. Off by default.
    #[arg(long, value_name = "ADDR", env = "RESNET_CLUSTER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keep serving metrics this many seconds after the run ends, so a scraper sees the final
    /// values.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub metrics_linger: u64,
    /// Mutual TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Run a hyperparameter sweep over the workers instead of one training job: the TOML
    /// search space (as `resnet sweep --space`). Workers train one trial at a time; --out gets
    /// results.csv and sweep.json; --heartbeat-timeout is the trial lease.
    #[arg(long, value_name = "FILE")]
    pub sweep: Option<PathBuf>,
    /// Sweep trials, method and rungs (with --sweep).
    #[command(flatten)]
    pub plan: crate::cmd_sweep::SweepPlanArgs,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Runs `coordinator`.
pub fn run_coordinator(a: CoordinatorCli) -> Result<()> {
    let sel = select(&a.device)?;
    let kernels = crate::kernels::choose(&a.device)?;
    if let Some(addr) = a.metrics_addr {
        resnet_telemetry::serve_metrics(addr, "coordinator")?;
    }
    let result = coordinate(&a, sel, kernels);
    if a.metrics_addr.is_some() && a.metrics_linger > 0 {
        crate::say!("serving metrics for {} more seconds", a.metrics_linger);
        std::thread::sleep(Duration::from_secs(a.metrics_linger));
    }
    result
}

fn coordinate(a: &CoordinatorCli, sel: Selected, kernels: KernelChoice) -> Result<()> {
    let (token, ring_auth) = load_token(&a.token_file)?;
    if let Some(space) = &a.sweep {
        anyhow::ensure!(
            !a.local && a.resume.is_none(),
            "--sweep runs trials on separate workers; it does not combine with --local or --resume"
        );
        let serve = crate::cluster_sweep::SweepServe {
            run: &a.run,
            listen: &a.listen,
            heartbeat_timeout: a.heartbeat_timeout,
            out: a.out.clone(),
            json: a.json,
            tls: &a.tls,
        };
        return crate::cluster_sweep::coordinate_sweep(&serve, space, &a.plan, token);
    }
    let target = match a.resume.as_deref() {
        Some(spec) => crate::settings::resume_target(spec, a.out.as_deref())?,
        None => None,
    };
    let (mut run, resume) = match &target {
        Some(spec) => {
            let (dir, state) = crate::settings::load_resume(spec, a.out.as_deref(), &a.run)?;
            crate::settings::check_resume_unchanged(&a.run, &state.config)?;
            (state.config, Some(dir))
        }
        None => (resolve(&a.run)?, None),
    };
    run.model.num_classes = match run.data.dataset {
        resnet_data::DatasetKind::Cifar100 => 100,
        _ => run.model.num_classes,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listen = if a.local {
        "127.0.0.1:0".to_string()
    } else {
        a.listen.clone()
    };
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&listen))
        .with_context(|| format!("--listen {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(o) = &a.out {
        if resume.is_none() && !resnet_train::list_checkpoints(&o.join("checkpoints")).is_empty() {
            bail!(
                "{} already holds checkpoints of a run; continue it with --resume latest (or --resume auto, which also starts a run where there is none) or choose another --out",
                o.display()
            );
        }
        std::fs::create_dir_all(o).with_context(|| format!("--out {}", o.display()))?;
        std::fs::write(o.join("config.json"), serde_json::to_vec_pretty(&run)?)?;
    }
    let coord = Arc::new(
        Coordinator::new(CoordinatorConfig {
            workers: a.workers,
            join_timeout: Duration::from_secs(a.join_timeout),
            heartbeat_timeout: Duration::from_secs(a.heartbeat_timeout),
            min_workers: a.min_workers,
            max_workers: a.max_workers,
            regroup_timeout: Duration::from_secs(a.regroup_timeout),
            run,
            out: a.out.clone(),
            fingerprint: resnet_proto::fingerprint(),
            resume,
        })
        .map_err(anyhow::Error::msg)?,
    );
    tracing::info!(%addr, workers = a.workers, local = a.local, "coordinator listening");
    crate::say!(
        "coordinator listening on {addr}, waiting for {} worker(s)",
        a.workers
    );
    // SIGTERM/SIGINT: the workers stop at the next step boundary with a checkpoint (told
    // through their heartbeats), then the run ends as interrupted (exit code 4).
    let signalled = crate::stop_on_signals()?;
    {
        let coord = coord.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while !signalled.load(std::sync::atomic::Ordering::Relaxed) {
                    if matches!(coord.phase(), Phase::Finished | Phase::Failed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if coord.request_stop() {
                    tracing::warn!("signal received: the workers stop at the next step boundary and save a checkpoint");
                    crate::say!("stopping: the workers finish their step and save a checkpoint (Ctrl-C again to quit at once)");
                }
            })?;
    }
    let tls = a.tls.load()?;
    let server = rt.spawn(serve(
        coord.clone(),
        listener,
        token.clone(),
        tls.as_ref().map(|t| t.0.clone()),
    ));
    if a.local {
        let results = local::run_local_workers(
            sel,
            kernels,
            a.workers,
            &format!("http://{addr}"),
            token.as_deref(),
            ring_auth,
            tls.map(|t| t.0),
        );
        if let Err(e) = results {
            coord.fail(format!("local worker failed: {e:#}"));
            let _ = rt.block_on(server);
            return Err(e);
        }
    }
    rt.block_on(server)
        .context("coordinator server task")?
        .map_err(anyhow::Error::msg)?;
    let summary = match coord.summary() {
        Some(s) => s,
        None => {
            let why = coord
                .failure()
                .unwrap_or_else(|| "run ended without a summary".into());
            if why.starts_with("stopped by a signal") {
                return Err(crate::Interrupted(why).into());
            }
            // Exit code 3, as the workers: retrying the same run diverges again.
            if let Some((step, loss, why)) = coord.divergence() {
                return Err(resnet_train::TrainError::NonFinite {
                    step: step as usize,
                    loss,
                    why,
                }
                .into());
            }
            bail!("{why}");
        }
    };
    print_summary(&summary, a.json)?;
    if let Some(o) = &a.out {
        // The run's result lives in the central store: ending without the final state stored
        // is a lost result, whatever the workers did.
        if summary.stored_step != Some(summary.steps) {
            let root = o.join("checkpoints");
            return Err(resnet_train::TrainError::CheckpointLost {
                step: summary.steps as usize,
                error: summary.failed_checkpoints.last().map_or_else(
                    || "no upload of it arrived".into(),
                    |f| format!("step {}: {}", f.step, f.error),
                ),
                why: format!(
                    "the final checkpoint was not stored under {} ({} upload(s) failed)",
                    root.display(),
                    summary.failed_checkpoints.len()
                ),
                newest: resnet_train::list_checkpoints(&root)
                    .first()
                    .map_or_else(|| "none".into(), |p| p.display().to_string()),
            }
            .into());
        }
    }
    if summary.interrupted {
        if !summary.replicas_identical {
            bail!(
                "replicas ended with different parameters: {:?}",
                summary.param_hashes
            );
        }
        return Err(crate::Interrupted(format!(
            "interrupted by a signal at step {}; continue with --resume latest{}",
            summary.steps,
            a.out
                .as_ref()
                .map(|o| format!(" --out {}", o.display()))
                .unwrap_or_default()
        ))
        .into());
    }
    if !summary.replicas_identical {
        bail!(
            "replicas ended with different parameters: {:?}",
            summary.param_hashes
        );
    }
    Ok(())
}

fn print_summary(s: &RunSummary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("workers      {} (generation {})", s.world, s.generation);
    println!("steps        {}", s.steps);
    for e in &s.epochs {
        let test = e
            .test
            .as_ref()
            .map(|t| format!(", test acc {:.4} top-5 {:.4}", t.accuracy, t.top5))
            .unwrap_or_default();
        println!(
            "epoch {:>4}   train loss {:.4} acc {:.4}, {:.0} img/s{test}{}",
            e.epoch,
            e.train_loss,
            e.train_accuracy,
            e.images_per_sec,
            if e.complete { "" } else { " (partial)" }
        );
    }
    println!(
        "replicas     {}",
        if s.replicas_identical {
            "identical"
        } else {
            "DIFFER"
        }
    );
    println!(
        "param hash   {}",
        s.param_hashes.first().map(String::as_str).unwrap_or("-")
    );
    Ok(())
}
