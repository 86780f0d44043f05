//! `worker`: its flags and its run (one replica, or `--gpus`: one supervised child per GPU).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use resnet_proto::GrpcControlPlane;
use resnet_worker::{run_worker, Transport, WorkerOptions};

use crate::args::DeviceArgs;
use crate::cluster_security::{load_token, TlsArgs};
use crate::device::{select, Selected};

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
    /// host copies, and with the run's overlap on, bucket by bucket during the backward; needs
    /// the unfused CUDA backend: --cuda-conv cudnn, gemm or direct; experimental until a
    /// multi-GPU run has measured it). The TCP ring always works on host memory.
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

/// `HOST-PID`: unique per process on a host, readable in logs.
pub(crate) fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

impl WorkerCli {
    /// The flags `--gpus`' supervisor passes on to its children, with the worker id resolved.
    pub fn child_flags(&self) -> crate::supervise::ChildFlags {
        crate::supervise::ChildFlags {
            cpu: self.device.cpu,
            metrics_addr: self.metrics_addr,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
        }
    }
}

/// Runs `worker`.
pub fn run_worker_cli(a: WorkerCli) -> Result<()> {
    if let Some(spec) = &a.gpus {
        let gpus = crate::supervise::parse_gpus(spec, crate::device::cuda_device_count)?;
        let code = crate::supervise::supervise(&a.child_flags(), &gpus, a.max_restarts)?;
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
        device: sel.name(),
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
