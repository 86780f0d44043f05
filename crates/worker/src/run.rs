//! The worker's life: join, form the ring, train, report, finish.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use resnet_collective::memory::MemoryRing;
use resnet_collective::tcp::{TcpRing, TcpRingConfig};
use resnet_collective::Collective;
use resnet_proto::{fingerprint, ControlPlane, Finish, Heartbeat, JoinRequest, PROTOCOL_VERSION};
use resnet_train::{GradSync, TrainConfig, Trainer};

use crate::observer::{Progress, WorkerObserver};
use crate::WorkerError;

/// How this worker exchanges gradients with its peers.
pub enum Transport {
    /// A TCP ring between processes: listen on `listen` (e.g. `0.0.0.0:7070`, port 0 picks one)
    /// and announce `advertise` to the peers (default: the bound address).
    Tcp {
        /// Address to bind.
        listen: String,
        /// Address peers should connect to.
        advertise: Option<String>,
    },
    /// Threads of one process: the ring end for the assigned rank is taken from this table.
    Memory(Arc<Mutex<Vec<Option<MemoryRing>>>>),
}

/// Local settings of a worker (everything else comes from the coordinator).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique id (default in the binary: host-pid).
    pub worker_id: String,
    /// This worker's copy of the data; overrides the directory in the run configuration.
    pub data_dir: Option<PathBuf>,
    /// Device description sent to the coordinator ("cpu", "cuda:0").
    pub device: String,
    /// Per-operation timeout of the ring (a dead peer becomes an error after this).
    pub collective_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat_every: Duration,
    /// SHA-256 of the cluster token (zeros without one), presented in the ring handshake.
    pub ring_auth: [u8; 32],
    /// Where rank 0 writes checkpoints, metrics.jsonl and config.json (other ranks ignore it;
    /// replicas are identical, so one copy is enough). None: no checkpoints.
    pub out: Option<PathBuf>,
}

/// What a worker reports when it is done.
#[derive(Debug, Clone)]
pub struct WorkerResult {
    /// Assigned rank.
    pub rank: usize,
    /// Group size.
    pub world: usize,
    /// Steps trained.
    pub steps: usize,
    /// Hash of the final parameters and BatchNorm statistics.
    pub param_hash: String,
}

/// Adapts any [`Collective`] to the trainer's [`GradSync`] hook.
pub struct CollectiveSync(pub Box<dyn Collective>);

impl GradSync for CollectiveSync {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), String> {
        self.0.all_reduce_mean(buf).map_err(|e| e.to_string())
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), String> {
        self.0.broadcast(buf, root).map_err(|e| e.to_string())
    }
}

/// Runs one worker to the end of the run. `control` carries the joins and reports;
/// `heartbeats`, when given, is a second connection used by the heartbeat thread, and
/// `uploads` a third one for background checkpoint uploads (rank 0 of a run whose coordinator
/// stores checkpoints).
pub fn run_worker<B: AutodiffBackend>(
    control: &mut dyn ControlPlane,
    heartbeats: Option<Box<dyn ControlPlane>>,
    uploads: Option<Box<dyn ControlPlane>>,
    transport: Transport,
    opts: &WorkerOptions,
    device: B::Device,
) -> Result<WorkerResult, WorkerError> {
    let (listener, data_addr) = match &transport {
        Transport::Tcp { listen, advertise } => {
            let l = std::net::TcpListener::bind(listen).map_err(|source| WorkerError::Listen {
                addr: listen.clone(),
                source,
            })?;
            let bound = l.local_addr().map_err(|source| WorkerError::Listen {
                addr: listen.clone(),
                source,
            })?;
            let addr = match advertise {
                Some(a) => a.clone(),
                None if bound.ip().is_unspecified() => {
                    return Err(WorkerError::Config(format!(
                        "--listen {listen} binds every interface; pass --advertise HOST:{} so peers know where to connect",
                        bound.port()
                    )))
                }
                None => bound.to_string(),
            };
            (Some(l), addr)
        }
        Transport::Memory(_) => (None, format!("in-process:{}", opts.worker_id)),
    };
    tracing::info!(worker = %opts.worker_id, data_addr = %data_addr, "joining");
    let a = control.join(JoinRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: opts.worker_id.clone(),
        fingerprint: fingerprint(),
        data_addr,
        device: opts.device.clone(),
    })?;
    tracing::info!(worker = %opts.worker_id, rank = a.rank, world = a.world, generation = a.generation, "joined");
    let mut cfg: TrainConfig =
        serde_json::from_str(&a.run_config_json).map_err(|e| WorkerError::Config(e.to_string()))?;
    if let Some(d) = &opts.data_dir {
        cfg.data.dir = d.clone();
    }
    let splits = cfg.data.load(cfg.seed, &mut |_, _| {})?;
    cfg.model.num_classes = splits.train.classes.len();
    tracing::info!(
        rank = a.rank,
        train = splits.train.len(),
        test = splits.test.len(),
        "data loaded"
    );

    let collective: Box<dyn Collective> = match (transport, listener) {
        (Transport::Tcp { .. }, Some(l)) => Box::new(TcpRing::connect(
            l,
            &TcpRingConfig {
                rank: a.rank,
                peers: a.peers.clone(),
                generation: a.generation,
                timeout: opts.collective_timeout,
                auth: opts.ring_auth,
            },
        )?),
        (Transport::Memory(table), _) => {
            let ring = table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(a.rank)
                .and_then(Option::take);
            Box::new(ring.ok_or_else(|| {
                WorkerError::Config(format!("no in-process ring end for rank {}", a.rank))
            })?)
        }
        (Transport::Tcp { .. }, None) => unreachable!("a TCP transport always binds a listener"),
    };
    // Rank 0 checkpoints: into --out if given, else into a scratch directory when the
    // coordinator stores them (the upload reads them back from there).
    let central = a.central_checkpoints && a.rank == 0;
    let scratch = tempfile::Builder::new()
        .prefix("resnet-worker-")
        .tempdir()
        .map_err(|e| WorkerError::Storage(format!("cannot create a scratch directory: {e}")))?;
    let out = match (&opts.out, central) {
        (Some(o), _) if a.rank == 0 => Some(o.clone()),
        (None, true) => Some(scratch.path().join("run")),
        _ => None,
    };
    let writes_checkpoints = out.is_some();
    let trainer = if a.resume_step > 0 {
        let dir = fetch_resume_checkpoint(control, opts, &a, scratch.path())?;
        let mut state = resnet_train::load_state(&dir)?;
        tracing::info!(
            rank = a.rank,
            step = state.global_step,
            epoch = state.epoch + 1,
            "resuming from the coordinator's checkpoint"
        );
        // The coordinator's configuration (it may extend epochs/max_steps) with this worker's
        // data directory and the dataset's class count, exactly as for a fresh start.
        state.config = cfg;
        // A data-parallel checkpoint's partial-epoch sums are the whole group's (pooled into
        // rank 0 before saving): only rank 0 carries them on, or the epoch counts them twice.
        if a.rank != 0 {
            state.epoch_loss_sum = 0.0;
            state.epoch_correct = 0;
            state.epoch_seen = 0;
        }
        Trainer::<B>::resume(&dir, state, splits, device, out)?
    } else {
        Trainer::<B>::new(cfg, splits, device, out)?
    };
    let mut trainer = trainer.with_parallel(Box::new(CollectiveSync(collective)));

    let progress = Arc::new(Mutex::new(Progress::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let beat = heartbeats.map(|hb| {
        spawn_heartbeats(
            hb,
            opts,
            a.rank,
            a.generation,
            progress.clone(),
            stop.clone(),
        )
    });
    let mut obs = WorkerObserver {
        control,
        worker_id: opts.worker_id.clone(),
        rank: a.rank,
        generation: a.generation,
        progress,
        error: None,
        last_log: std::time::Instant::now(),
        timing: Default::default(),
        steps: 0,
        metrics: crate::metrics::WorkerMetrics::new(
            a.rank,
            &opts.worker_id,
            &opts.device,
            writes_checkpoints,
        ),
        uploader: None,
    };
    if central {
        if let Some(up) = uploads {
            obs.uploader = Some(crate::upload::Uploader::spawn(
                up,
                obs.metrics.checkpoint_failures(),
            ));
        }
    }
    let result = trainer.fit(&mut obs);
    obs.log_breakdown();
    // The final checkpoint reaches the coordinator before this worker reports Finish.
    if let Some(u) = obs.uploader.take() {
        u.finish();
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = beat {
        let _ = h.join();
    }
    let summary = result?;
    if let Some(e) = obs.error {
        return Err(e.into());
    }
    control.finish(Finish {
        worker_id: opts.worker_id.clone(),
        rank: a.rank,
        generation: a.generation,
        steps: summary.steps as u64,
        param_hash: summary.param_hash.clone(),
    })?;
    Ok(WorkerResult {
        rank: a.rank,
        world: a.world,
        steps: summary.steps,
        param_hash: summary.param_hash,
    })
}

/// Downloads the checkpoint the run resumes from into `scratch` and verifies it on disk.
fn fetch_resume_checkpoint(
    control: &mut dyn ControlPlane,
    opts: &WorkerOptions,
    a: &resnet_proto::Assignment,
    scratch: &std::path::Path,
) -> Result<PathBuf, WorkerError> {
    let files = control.download_checkpoint(&opts.worker_id, a.generation)?;
    let dir = scratch
        .join("resume")
        .join(resnet_train::checkpoint::checkpoint_name(
            files.step as usize,
        ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| WorkerError::Storage(format!("{}: {e}", dir.display())))?;
    for (name, data) in &files.files {
        // Names were checked by the chunk assembler (plain file names only).
        std::fs::write(dir.join(name), data)
            .map_err(|e| WorkerError::Storage(format!("{}: {e}", dir.join(name).display())))?;
    }
    resnet_train::verify(&dir)?;
    tracing::info!(
        step = files.step,
        bytes = files.bytes(),
        "downloaded the resume checkpoint"
    );
    Ok(dir)
}

fn spawn_heartbeats(
    mut hb: Box<dyn ControlPlane>,
    opts: &WorkerOptions,
    rank: usize,
    generation: u64,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (every, worker_id) = (opts.heartbeat_every, opts.worker_id.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let start = std::time::Instant::now();
            while start.elapsed() < every && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let p = *progress.lock().unwrap_or_else(|p| p.into_inner());
            let beat = Heartbeat {
                worker_id: worker_id.clone(),
                rank,
                generation,
                step: p.step,
                loss: p.loss,
                images_per_sec: p.images_per_sec,
            };
            if let Err(e) = hb.heartbeat(beat) {
                tracing::warn!(rank, error = %e, "heartbeat failed");
            }
        }
    })
}
