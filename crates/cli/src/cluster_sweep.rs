//! Sweeps over a cluster: `coordinator --sweep SPACE` hands trials to `worker`s, which train
//! them one at a time on their own device and report back. A worker learns which kind of
//! coordinator it has from its first request (a training coordinator does not serve sweeps).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use resnet_coordinator::sweep::{serve_sweep, SweepCoordinator};
use resnet_kernels::KernelChoice;
use resnet_proto::sweep::{TrialAssignment, TrialReport};
use resnet_proto::{GrpcSweep, TrialReply};
use resnet_train::sweep::{Trial, TrialTask};

use crate::cmd_sweep::{run_trial, SweepPlanArgs};
use crate::settings::resolve;

/// The `coordinator` flags a sweep coordinator uses.
pub struct SweepServe<'a> {
    /// The run flags every trial starts from.
    pub run: &'a crate::args::RunArgs,
    /// `--listen`.
    pub listen: &'a str,
    /// `--heartbeat-timeout`, seconds.
    pub heartbeat_timeout: u64,
    /// `--out` (default: the `resnet sweep` default).
    pub out: Option<PathBuf>,
    /// `--json`: the leaderboard as JSON instead of a table.
    pub json: bool,
    /// `--tls-*`.
    pub tls: &'a crate::cluster_security::TlsArgs,
}

/// `coordinator --sweep`: serves the sweep until every trial is done; writes results.csv and
/// sweep.json into `out`.
pub fn coordinate_sweep(
    a: &SweepServe<'_>,
    space: &Path,
    plan: &SweepPlanArgs,
    token: Option<String>,
) -> Result<()> {
    let base = resolve(a.run)?;
    let sched = plan.scheduler(&base, space)?;
    let out = a.out.clone().unwrap_or_else(crate::cmd_sweep::default_out);
    let rungs = sched.rungs().to_vec();
    let coord = Arc::new(SweepCoordinator::new(
        sched,
        resnet_proto::fingerprint(),
        Duration::from_secs(a.heartbeat_timeout),
        Some(out.clone()),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(a.listen))
        .with_context(|| format!("--listen {}", a.listen))?;
    let addr = listener.local_addr()?;
    crate::say!(
        "sweep coordinator listening on {addr}: {} trials, {}, rungs {rungs:?} epochs; start workers with `worker --coordinator http://{addr}`",
        plan.trials, plan.method
    );
    let tls = a.tls.load()?.map(|t| t.0);
    rt.block_on(serve_sweep(coord.clone(), listener, token, tls))
        .map_err(anyhow::Error::msg)?;
    let sched = coord.scheduler();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sched.leaderboard())?);
    } else {
        print!("{}", sched.table());
        println!("results: {}", out.join("results.csv").display());
    }
    Ok(())
}

/// A trial as the coordinator sent it.
fn task_of(a: &TrialAssignment, data: Option<&PathBuf>) -> Result<TrialTask> {
    let mut config: resnet_train::TrainConfig =
        serde_json::from_str(&a.config_json).context("the coordinator sent a malformed config")?;
    if let Some(d) = data {
        config.data.dir = d.clone();
    }
    Ok(TrialTask {
        trial: Trial {
            id: a.trial as usize,
            seed: a.seed,
            params: serde_json::from_str(&a.params_json)
                .context("the coordinator sent malformed parameters")?,
            config,
        },
        rung: a.rung as usize,
        epochs: a.epochs as usize,
    })
}

/// Where and how a sweep worker trains its trials.
pub struct TrialSite<'a> {
    /// This worker's id, as the coordinator knows it.
    pub worker_id: &'a str,
    /// Where the trial runs go.
    pub out: &'a Path,
    /// This worker's copy of the data (overrides the directory in the trial's config).
    pub data: Option<&'a PathBuf>,
    /// The kernels the trials' models run.
    pub kernels: KernelChoice,
}

/// The worker's sweep loop: train what the coordinator assigns (heartbeats from a second
/// connection while training), report, ask again, until it says done. Returns the trials run.
pub fn sweep_worker<B: AutodiffBackend>(
    mut client: GrpcSweep,
    mut beats: GrpcSweep,
    first: TrialReply,
    site: &TrialSite,
    device: &B::Device,
) -> Result<usize> {
    let TrialSite {
        worker_id,
        out,
        data,
        kernels,
    } = *site;
    let mut reply = first;
    let mut done = 0;
    loop {
        match reply {
            TrialReply::Done => return Ok(done),
            TrialReply::Wait => std::thread::sleep(Duration::from_millis(500)),
            TrialReply::Task(a) => {
                let task = task_of(&a, data)?;
                crate::say!(
                    "trial {} rung {}: training to {} epochs",
                    a.trial,
                    a.rung,
                    a.epochs
                );
                let training = AtomicBool::new(true);
                let outcome = std::thread::scope(|s| {
                    s.spawn(|| {
                        while training.load(Ordering::Relaxed) {
                            std::thread::sleep(resnet_proto::HEARTBEAT_INTERVAL);
                            let hb = TrialReport {
                                worker_id: worker_id.to_string(),
                                trial: a.trial,
                                rung: a.rung,
                                heartbeat: true,
                                ..Default::default()
                            };
                            if let Err(e) = beats.report(hb) {
                                tracing::warn!(error = %e, "sweep heartbeat failed");
                            }
                        }
                    });
                    let r = run_trial::<B>(&task, out, kernels, device);
                    training.store(false, Ordering::Relaxed);
                    r
                });
                let mut report = TrialReport {
                    worker_id: worker_id.to_string(),
                    trial: a.trial,
                    rung: a.rung,
                    ..Default::default()
                };
                match outcome {
                    Ok(r) => {
                        crate::say!(
                            "trial {} rung {}: accuracy {:.4} loss {:.4}",
                            a.trial,
                            a.rung,
                            r.accuracy,
                            r.loss
                        );
                        report.epochs = r.epochs as u32;
                        report.accuracy = r.accuracy;
                        report.loss = r.loss;
                        report.param_hash = r.param_hash;
                        report.seconds = r.seconds;
                        done += 1;
                    }
                    Err(e) => {
                        crate::say!("trial {} rung {} failed: {e:#}", a.trial, a.rung);
                        report.error = format!("{e:#}");
                    }
                }
                client.report(report)?;
            }
        }
        reply = client
            .next_trial(worker_id)?
            .context("the coordinator stopped serving the sweep")?;
    }
}
