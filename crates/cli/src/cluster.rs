//! `coordinator` and `worker`: the cluster's two binaries.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use resnet_collective::memory::MemoryRing;
use resnet_coordinator::{serve, Coordinator, CoordinatorConfig, Phase, RunSummary};
use resnet_kernels::KernelChoice;
use resnet_proto::GrpcControlPlane;
use resnet_worker::{run_worker, Transport, WorkerOptions, WorkerResult};
use sha2::Digest;

use crate::args::{DeviceArgs, RunArgs};
use crate::device::{select, Selected};
use crate::settings::resolve;

/// Mutual TLS for the control plane and the ring (all three or none).
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// This node's certificate (PEM, signed by the cluster CA, SAN DNS:resnet-cluster). With
    /// --tls-key and --tls-ca: gRPC and the gradient ring use mutual TLS.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate (PEM): peers must present certificates it signed.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The loaded material for gRPC and the ring, or None without the flags.
    pub fn load(
        &self,
    ) -> Result<Option<(resnet_proto::TlsMaterial, resnet_collective::tcp::RingTls)>> {
        let (Some(c), Some(k), Some(a)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) else {
            return Ok(None);
        };
        let m = resnet_proto::TlsMaterial::load(c, k, a)?;
        let ring = resnet_collective::tcp::RingTls::from_pem(&m.cert, &m.key, &m.ca)
            .with_context(|| format!("--tls-cert {} / --tls-key {}", c.display(), k.display()))?;
        Ok(Some((m, ring)))
    }
}

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

/// A data-parallel replica: joins the coordinator at `--coordinator`, receives its rank and the
/// run configuration, all-reduces gradients with its peers over TCP, and exits when the run ends.
///
/// SIGTERM/SIGINT: the worker leaves the group (the coordinator re-forms it without this worker
/// at once) and exits with code 4; a restarted worker joins the running job.
///
/// Launch environment: `RESNET_COORDINATOR` or `MASTER_ADDR`/`MASTER_PORT` stand for
/// --coordinator; `LOCAL_RANK` (set by per-process launchers) stands for --gpu when neither
/// --gpu nor --cpu is given. `RANK` is ignored: the coordinator assigns ranks.
#[derive(Parser, Debug)]
#[command(name = "worker", version, after_help = crate::EXIT_CODES_HELP)]
pub struct WorkerCli {
    /// The coordinator: `HOST:PORT` or a URL (http://10.0.0.5:50051; https:// is assumed with
    /// --tls-*). Unset: `MASTER_ADDR` and `MASTER_PORT` (default 50051), as torchrun's
    /// launchers set them.
    #[arg(long, value_name = "HOST:PORT|URL", env = "RESNET_COORDINATOR")]
    pub coordinator: Option<String>,
    /// This worker's copy of the data (overrides the coordinator's data directory).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Data-plane address for the gradient ring (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Address peers connect to, when --listen binds every interface (0.0.0.0).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Unique name [default: <hostname>-<pid>].
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Seconds to keep retrying an unreachable coordinator.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Seconds an all-reduce may wait for a peer before the step fails.
    #[arg(long, default_value_t = 120)]
    pub collective_timeout: u64,
    /// Seconds to keep trying to rejoin when the coordinator becomes unreachable mid-run (a
    /// restarted `coordinator --resume latest` takes the workers back).
    #[arg(long, default_value_t = 300)]
    pub rejoin_timeout: u64,
    /// File holding the shared cluster token (at least 16 printable characters); every RPC and
    /// ring connection must present it. The env var names the file, never the secret itself.
    #[arg(long, value_name = "FILE", env = "RESNET_CLUSTER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Log format: human or json.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (read-only). Off by default.
    #[arg(long, value_name = "ADDR", env = "RESNET_CLUSTER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Mutual TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// A local copy of the checkpoints (plus config.json, metrics.jsonl), written only if this
    /// worker gets rank 0 (replicas are identical, so one copy is enough). The coordinator's
    /// --out holds the central copy either way.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Gradient all-reduce: auto (NCCL when every rank is a CUDA worker with NCCL, else the TCP
    /// ring) or tcp (always the ring; needed for several workers on one GPU).
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcp"])]
    pub collective: String,
    /// Where NCCL reduces the gradients: host (copied to host memory and staged through one
    /// device buffer; measured) or device (in GPU memory where the backward pass left them, no
    /// host copies; needs --cuda-conv gemm or direct, experimental until a multi-GPU run has
    /// measured it). The TCP ring always works on host memory.
    #[arg(long, default_value = "host", value_parser = ["host", "device"], env = "RESNET_NCCL_BUFFERS")]
    pub nccl_buffers: String,
    /// Before joining, fetch the run configuration and run one throwaway training step at its
    /// shapes, with progress: on a GPU that step compiles the kernels (minutes with an empty
    /// kernel cache), which then happens before the group forms instead of inside the first
    /// all-reduce, where the peers would wait against --collective-timeout. auto: on with --gpu.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub warm_up: String,
    /// Start and watch one worker process per GPU of this node (torchrun's --nproc-per-node):
    /// a list (0,1,2,3) or `all`. Each child gets --gpu N, --worker-id <id>-gpuN, and the
    /// --metrics-addr, --listen and --advertise ports plus its position; log lines are
    /// prefixed with [gpu N]. With --cpu the children run on the CPU, numbered like GPUs.
    /// A failed child is started again (it joins the running job) up to --max-restarts times;
    /// SIGTERM is passed on to every child.
    #[arg(long, value_name = "LIST|all", conflicts_with = "gpu")]
    pub gpus: Option<String>,
    /// With --gpus: how often one GPU's worker is started again after failing [3].
    #[arg(long, value_name = "N", default_value_t = 3, requires = "gpus")]
    pub max_restarts: usize,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn device_name(sel: Selected) -> String {
    match sel {
        Selected::Cpu => "cpu".into(),
        #[cfg(feature = "cuda")]
        Selected::Gpu { index, .. } => format!("cuda:{index}"),
    }
}

/// The token from `--token-file` (if any) and its SHA-256 for the ring handshake.
fn load_token(file: &Option<PathBuf>) -> Result<(Option<String>, [u8; 32])> {
    let Some(f) = file else {
        return Ok((None, [0; 32]));
    };
    let token = resnet_proto::read_token_file(f)?;
    let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    Ok((Some(token), digest))
}

pub(crate) fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
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
        return crate::cluster_sweep::coordinate_sweep(a, space, &a.plan, token);
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
        let results = run_local_workers(
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

fn run_local_workers(
    sel: Selected,
    kernels: KernelChoice,
    n: usize,
    url: &str,
    token: Option<&str>,
    ring_auth: [u8; 32],
    tls: Option<resnet_proto::TlsMaterial>,
) -> Result<Vec<WorkerResult>> {
    let table = Arc::new(Mutex::new(
        MemoryRing::group(n, Duration::from_secs(300))
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
    ));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (table, url, token) = (table.clone(), url.to_string(), token.map(str::to_string));
            let tls = tls.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || -> Result<WorkerResult> {
                    let connect = || {
                        GrpcControlPlane::connect_with(
                            &url,
                            Duration::from_secs(10),
                            token.as_deref(),
                            tls.as_ref(),
                        )
                    };
                    let (mut control, beats, uploads) = (connect()?, connect()?, connect()?);
                    let opts = WorkerOptions {
                        worker_id: format!("local-{i}"),
                        data_dir: None,
                        device: device_name(sel),
                        collective_timeout: Duration::from_secs(300),
                        heartbeat_every: resnet_proto::HEARTBEAT_INTERVAL,
                        ring_auth,
                        out: None,
                        rejoin_timeout: Duration::from_secs(60),
                        ring_tls: None, // the in-memory ring never leaves the process
                        allow_nccl: false,
                        nccl_device_buffers: false,
                        // Threads of one process compile the same kernels at the same time.
                        warm_up: false,
                        kernels,
                        leave_signal: None,
                    };
                    let r = crate::with_train_backend!(sel, |B, device| run_worker::<B>(
                        &mut control,
                        Some(Box::new(beats)),
                        Some(Box::new(uploads)),
                        Transport::Memory(table),
                        &opts,
                        device
                    )?);
                    Ok(r)
                })
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
        })
        .collect()
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

/// Runs `worker`.
pub fn run_worker_cli(a: WorkerCli) -> Result<()> {
    if let Some(spec) = &a.gpus {
        let gpus = crate::supervise::parse_gpus(spec, crate::device::cuda_device_count)?;
        let code = crate::supervise::supervise(&a, &gpus, a.max_restarts)?;
        if code != 0 {
            return Err(crate::ExitWith(
                code,
                format!("the workers of GPUs {gpus:?} did not all finish (exit code {code})"),
            )
            .into());
        }
        return Ok(());
    }
    let mut device = a.device.clone();
    device.gpu = crate::endpoint::worker_gpu(device.gpu, device.cpu, |v| std::env::var(v).ok())?;
    let sel = match (a.device.gpu, device.gpu) {
        (None, Some(n)) => {
            tracing::info!(gpu = n, "LOCAL_RANK={n}: this worker runs on GPU {n}");
            select(&device).with_context(|| format!("LOCAL_RANK={n} selects GPU {n}"))?
        }
        _ => select(&device)?,
    };
    let kernels = crate::kernels::choose(&device)?;
    if let Some(addr) = a.metrics_addr {
        resnet_telemetry::serve_metrics(addr, "worker")?;
    }
    let timeout = Duration::from_secs(a.connect_timeout);
    let (token, ring_auth) = load_token(&a.token_file)?;
    let tls = a.tls.load()?;
    let coordinator =
        crate::endpoint::coordinator_url(a.coordinator.as_deref(), tls.is_some(), |v| {
            std::env::var(v).ok()
        })?;
    let connect = || {
        GrpcControlPlane::connect_with(
            &coordinator,
            timeout,
            token.as_deref(),
            tls.as_ref().map(|t| &t.0),
        )
    };
    let worker_id = a.worker_id.clone().unwrap_or_else(default_worker_id);
    let sweep = || {
        resnet_proto::GrpcSweep::connect(
            &coordinator,
            timeout,
            token.as_deref(),
            tls.as_ref().map(|t| &t.0),
        )
    };
    let mut probe = sweep()?;
    if let Some(first) = probe.next_trial(&worker_id)? {
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("resnet-sweep-{worker_id}")));
        let beats = sweep()?;
        let n = crate::with_train_backend!(sel, |B, device| {
            crate::cluster_sweep::sweep_worker::<B>(
                probe,
                beats,
                first,
                &crate::cluster_sweep::TrialSite {
                    worker_id: &worker_id,
                    out: &out,
                    data: a.data.as_ref(),
                    kernels,
                },
                &device,
            )?
        });
        println!(
            "sweep finished: this worker trained {n} trial rung(s); runs in {}",
            out.display()
        );
        return Ok(());
    }
    let (mut control, beats, uploads) = (connect()?, connect()?, connect()?);
    // From here on SIGTERM/SIGINT mean "leave the group": announced to the coordinator, which
    // re-forms the group without this worker at once (exit code 4).
    let leave = crate::stop_on_signals()?;
    let opts = WorkerOptions {
        worker_id,
        data_dir: a.data.clone(),
        device: device_name(sel),
        collective_timeout: Duration::from_secs(a.collective_timeout),
        heartbeat_every: resnet_proto::HEARTBEAT_INTERVAL,
        ring_auth,
        out: a.out.clone(),
        rejoin_timeout: Duration::from_secs(a.rejoin_timeout),
        ring_tls: tls.map(|t| t.1),
        allow_nccl: a.collective == "auto",
        nccl_device_buffers: a.nccl_buffers == "device",
        warm_up: match a.warm_up.as_str() {
            "on" => true,
            "off" => false,
            _ => !matches!(sel, Selected::Cpu),
        },
        kernels,
        leave_signal: Some(leave),
    };
    let transport = Transport::Tcp {
        listen: a.listen.clone(),
        advertise: a.advertise.clone(),
    };
    let r = crate::with_train_backend!(sel, |B, device| run_worker::<B>(
        &mut control,
        Some(Box::new(beats)),
        Some(Box::new(uploads)),
        transport,
        &opts,
        device
    )?);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"rank": r.rank, "world": r.world, "steps": r.steps, "param_hash": r.param_hash, "interrupted": r.interrupted})
        );
    } else {
        println!(
            "rank {} of {}: {} steps, param hash {}",
            r.rank, r.world, r.steps, r.param_hash
        );
    }
    if r.interrupted {
        return Err(crate::Interrupted(format!(
            "the coordinator stopped the run at step {} (its checkpoint holds this state)",
            r.steps
        ))
        .into());
    }
    Ok(())
}
