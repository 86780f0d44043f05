//! The worker's life: join, form the ring, train, report, finish — and when a peer is lost,
//! rejoin, re-form the ring and heal from the most advanced survivor.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use resnet_collective::memory::MemoryRing;
use resnet_collective::Collective;
use resnet_kernels::KernelChoice;
use resnet_proto::{fingerprint, Assignment, ControlPlane, Finish, JoinRequest, PROTOCOL_VERSION};
use resnet_train::{GradSync, TrainConfig, TrainError, Trainer};

use crate::group::{fetch_checkpoint, form_ring, spawn_heartbeats, Membership, RingSource};
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
    /// How long to keep trying to rejoin an unreachable (restarting) coordinator.
    pub rejoin_timeout: Duration,
    /// Mutual TLS on the gradient ring (None: plain TCP).
    pub ring_tls: Option<resnet_collective::tcp::RingTls>,
    /// Offer NCCL to the coordinator when on CUDA (false: always the TCP ring, e.g. several
    /// workers sharing one GPU, which NCCL refuses).
    pub allow_nccl: bool,
    /// With NCCL: all-reduce the gradients in GPU memory (`--nccl-buffers device`) instead of
    /// staging them through the host. Builds without `cuda` ignore it.
    pub nccl_device_buffers: bool,
    /// Before joining, fetch the run configuration and run one throwaway training step at its
    /// shapes (GPU workers: compiles the kernels outside the first all-reduce).
    pub warm_up: bool,
    /// The kernels the replica's model runs (its convolution precision comes from the run).
    pub kernels: KernelChoice,
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
    /// The coordinator stopped the run early (SIGTERM) and the group saved a checkpoint.
    pub interrupted: bool,
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
    #[cfg(feature = "cuda")]
    fn all_reduce_mean_device(
        &mut self,
        flat: &mut dyn std::any::Any,
    ) -> Option<Result<(), String>> {
        crate::device_reduce::all_reduce_mean(&mut *self.0, flat)
    }
}

/// Runs one worker to the end of the run. `control` carries the joins and reports;
/// `heartbeats`, when given, is a second connection used by the heartbeat thread, and
/// `uploads` a third one for background checkpoint uploads (rank 0 of a run whose coordinator
/// stores checkpoints).
///
/// Over TCP, a failed collective (a peer died or the coordinator re-forms the group) is not the
/// end: the worker rejoins with its step, the coordinator ranks the survivors by progress, the
/// new rank 0 streams its state through the central store and the others resume from it, then
/// training continues in the new generation.
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
    let source = match (&transport, &listener) {
        (Transport::Tcp { .. }, Some(l)) => RingSource::Tcp(l),
        (Transport::Memory(t), _) => RingSource::Memory(t),
        (Transport::Tcp { .. }, None) => unreachable!("a TCP transport always binds a listener"),
    };
    let request = JoinRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: opts.worker_id.clone(),
        fingerprint: fingerprint(),
        data_addr,
        device: opts.device.clone(),
        step: 0,
        rejoin: false,
        generation: 0,
        nccl_id: crate::group::fresh_nccl_id(opts, &source),
    };
    if opts.warm_up {
        warm_up_before_join::<B>(control, opts, &device)?;
    }
    tracing::info!(worker = %opts.worker_id, data_addr = %request.data_addr, "joining");
    let mut a = control.join(request.clone())?;
    tracing::info!(worker = %opts.worker_id, rank = a.rank, world = a.world, generation = a.generation, "joined");
    let mut cfg: TrainConfig =
        serde_json::from_str(&a.run_config_json).map_err(|e| WorkerError::Config(e.to_string()))?;
    if let Some(d) = &opts.data_dir {
        cfg.data.dir = d.clone();
    }
    let splits = cfg.data.load(cfg.seed, &mut |_, _| {})?;
    cfg.model.num_classes = splits.train.classes.len();
    // A checkpoint download is held in memory until verified: no more than this run's weigh.
    control.limit_downloads(resnet_train::checkpoint_bytes_bound(&cfg)?);
    tracing::info!(
        rank = a.rank,
        train = splits.train.len(),
        test = splits.test.len(),
        "data loaded"
    );
    // Only processes on a TCP ring can re-form it; keep the data to heal with.
    let regroupable = matches!(source, RingSource::Tcp(_)) && a.central_checkpoints;
    let spare_splits = regroupable.then(|| splits.clone());

    let (collective, abort) = form_ring(&source, &a, opts)?;
    let scratch = tempfile::Builder::new()
        .prefix("resnet-worker-")
        .tempdir()
        .map_err(|e| WorkerError::Storage(format!("cannot create a scratch directory: {e}")))?;
    // Rank 0 checkpoints: into --out if given, else into scratch space when the coordinator
    // stores them (the upload reads them back from there).
    let out_for = |rank: usize, central: bool| match (&opts.out, central) {
        (Some(o), _) if rank == 0 => Some(o.clone()),
        (None, true) if rank == 0 => Some(scratch.path().join("run")),
        _ => None,
    };
    let out = out_for(a.rank, a.central_checkpoints);
    let writes_checkpoints = out.is_some() || regroupable;
    let mut collective = collective;
    let trainer = if a.heal {
        // Joining a running job (elastic scale-up): wait until rank 0 has stored its state,
        // then start from it.
        let mut ready = [0f32];
        collective
            .broadcast(&mut ready, 0)
            .map_err(WorkerError::Collective)?;
        let dir = fetch_checkpoint(control, opts, a.generation, a.resume_step, scratch.path())?;
        let state = state_for_rank(&dir, cfg.clone(), a.rank)?;
        tracing::info!(
            rank = a.rank,
            step = state.global_step,
            epoch = state.epoch + 1,
            "joined the running job from rank 0's state"
        );
        Trainer::<B>::resume(&dir, state, splits, device.clone(), out)?.with_kernels(opts.kernels)
    } else if a.resume_step > 0 {
        let dir = fetch_checkpoint(control, opts, a.generation, 0, scratch.path())?;
        let state = state_for_rank(&dir, cfg.clone(), a.rank)?;
        tracing::info!(
            rank = a.rank,
            step = state.global_step,
            epoch = state.epoch + 1,
            "resuming from the coordinator's checkpoint"
        );
        Trainer::<B>::resume(&dir, state, splits, device.clone(), out)?.with_kernels(opts.kernels)
    } else {
        Trainer::<B>::new(cfg.clone(), splits, device.clone(), out)?.with_kernels(opts.kernels)
    };
    let mut trainer = trainer.with_parallel(Box::new(CollectiveSync(collective)));

    let progress = Arc::new(Mutex::new(Progress::default()));
    let membership = Arc::new(Mutex::new(Membership {
        rank: a.rank,
        generation: a.generation,
        abort,
        coordinator_lost: false,
        version: 1,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    // Set when a heartbeat reply says the coordinator was told to stop (SIGTERM).
    let asked_to_stop = Arc::new(AtomicBool::new(false));
    let beat = heartbeats.map(|hb| {
        spawn_heartbeats(
            hb,
            opts,
            membership.clone(),
            progress.clone(),
            stop.clone(),
            asked_to_stop.clone(),
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
        asked_to_stop,
    };
    // Every worker of a central-checkpoint run has an uploader: whoever is rank 0 uses it.
    if a.central_checkpoints {
        if let Some(up) = uploads {
            obs.uploader = Some(crate::upload::Uploader::spawn(
                up,
                obs.metrics.checkpoint_failures(),
            ));
        }
    }
    let result = loop {
        match trainer.fit(&mut obs) {
            Err(TrainError::Collective(e)) if regroupable => {
                tracing::warn!(rank = a.rank, generation = a.generation, error = %e, "collective failed: rejoining to re-form the group");
                let step = trainer.state().global_step as u64;
                let rejoin = JoinRequest {
                    step,
                    rejoin: true,
                    generation: a.generation,
                    // NCCL ids serve one communicator: every generation gets fresh ones.
                    nccl_id: crate::group::fresh_nccl_id(opts, &source),
                    ..request.clone()
                };
                a = rejoin_with_retry(&mut *obs.control, &rejoin, opts.rejoin_timeout)?;
                tracing::info!(
                    rank = a.rank,
                    world = a.world,
                    generation = a.generation,
                    resume_step = a.resume_step,
                    heal = a.heal,
                    "group re-formed"
                );
                // Reports that failed while the coordinator was away are superseded: the new
                // group reports its epochs afresh.
                obs.error = None;
                let (collective, abort) = form_ring(&source, &a, opts)?;
                let mut sync = CollectiveSync(collective);
                let out = out_for(a.rank, true);
                if let Some(o) = &out {
                    std::fs::create_dir_all(o)
                        .map_err(|e| WorkerError::Storage(format!("{}: {e}", o.display())))?;
                }
                let splits = spare_splits
                    .clone()
                    .ok_or_else(|| WorkerError::Config("no data kept for healing".into()))?;
                trainer = if a.heal {
                    heal(
                        trainer,
                        &mut sync,
                        &mut *obs.control,
                        opts,
                        &a,
                        &cfg,
                        splits,
                        &device,
                        out,
                        scratch.path(),
                    )?
                } else if a.resume_step > 0 {
                    // A restarted coordinator: everyone rolls back to its checkpoint.
                    drop(trainer);
                    let dir =
                        fetch_checkpoint(&mut *obs.control, opts, a.generation, 0, scratch.path())?;
                    let state = state_for_rank(&dir, cfg.clone(), a.rank)?;
                    tracing::warn!(
                        rank = a.rank,
                        step = state.global_step,
                        "rolled back to the restarted coordinator's checkpoint"
                    );
                    Trainer::<B>::resume(&dir, state, splits, device.clone(), out)?
                        .with_kernels(opts.kernels)
                } else {
                    drop(trainer);
                    tracing::warn!(
                        rank = a.rank,
                        "the restarted coordinator has no checkpoint: starting the run over"
                    );
                    Trainer::<B>::new(cfg.clone(), splits, device.clone(), out)?
                        .with_kernels(opts.kernels)
                };
                trainer.set_parallel(Box::new(sync));
                obs.rank = a.rank;
                obs.generation = a.generation;
                {
                    let mut m = membership.lock().unwrap_or_else(|p| p.into_inner());
                    *m = Membership {
                        rank: a.rank,
                        generation: a.generation,
                        abort,
                        coordinator_lost: false,
                        version: m.version + 1,
                    };
                }
            }
            other => break other,
        }
    };
    obs.log_breakdown();
    // The final checkpoint reaches the coordinator before this worker reports Finish.
    let uploads = obs.uploader.take().map(|u| u.finish());
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
    // Rank 0 of a central-checkpoint run: if the coordinator did not store the final state,
    // this worker's local copy is the only one. Keep it (the scratch directory would vanish)
    // and fail, so the lost result does not look like a success.
    if let Some(up) = uploads.filter(|u| a.rank == 0 && u.stored != Some(summary.steps as u64)) {
        let local = trainer.last_checkpoint().map(|(_, p)| p.clone());
        if local
            .as_ref()
            .is_some_and(|p| p.starts_with(scratch.path()))
        {
            let kept = scratch.keep();
            tracing::error!(dir = %kept.display(), "the final checkpoint was not stored on the coordinator: its local copy is kept here");
        }
        let (step, error) = up
            .failed
            .unwrap_or((summary.steps as u64, "it was never uploaded".into()));
        return Err(WorkerError::Train(TrainError::CheckpointLost {
            step: summary.steps,
            error: format!("upload of step {step}: {error}"),
            why: "the coordinator did not store the final checkpoint".into(),
            newest: local.map_or_else(|| "none on this worker".into(), |p| p.display().to_string()),
        }));
    }
    Ok(WorkerResult {
        rank: a.rank,
        world: a.world,
        steps: summary.steps,
        param_hash: summary.param_hash,
        interrupted: summary.interrupted,
    })
}

/// [`resnet_train::warm_up`] with the coordinator's run configuration. A coordinator that
/// cannot send it only costs the warm-up (the first step then compiles the kernels).
fn warm_up_before_join<B: AutodiffBackend>(
    control: &mut dyn ControlPlane,
    opts: &WorkerOptions,
    device: &B::Device,
) -> Result<(), WorkerError> {
    let json = match control.run_config(&opts.worker_id) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "no run configuration before joining: skipping the warm-up");
            return Ok(());
        }
    };
    let cfg: TrainConfig = serde_json::from_str(&json)
        .map_err(|e| WorkerError::Config(format!("the coordinator's run configuration: {e}")))?;
    let w = resnet_train::warm_up::<B>(&cfg, opts.kernels, device, &mut |m| tracing::info!("{m}"))?;
    tracing::info!(
        forward_s = format!("{:.2}", w.forward_s),
        backward_s = format!("{:.2}", w.backward_s),
        "warm-up done: joining"
    );
    Ok(())
}

/// Rejoins, retrying with backoff (0.5 s doubling to 5 s) while the coordinator is unreachable
/// — it may be restarting — for up to `timeout`; refusals are final.
fn rejoin_with_retry(
    control: &mut dyn ControlPlane,
    req: &JoinRequest,
    timeout: Duration,
) -> Result<Assignment, WorkerError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(500);
    loop {
        match control.join(req.clone()) {
            Ok(a) => return Ok(a),
            Err(e)
                if crate::group::unreachable(&e)
                    && std::time::Instant::now() + delay < deadline =>
            {
                tracing::warn!(error = %e, "coordinator unreachable, retrying the rejoin");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The saved state of a checkpoint, for `rank` of a group: the coordinator's configuration
/// (it may extend epochs/max_steps; this worker's data directory and class count, as for a
/// fresh start), and the partial-epoch sums only on rank 0 — a data-parallel checkpoint's sums
/// are the whole group's, so carrying them on every rank would count the epoch twice.
fn state_for_rank(
    dir: &std::path::Path,
    cfg: TrainConfig,
    rank: usize,
) -> Result<resnet_train::TrainState, WorkerError> {
    let mut state = resnet_train::load_state(dir)?;
    state.config = cfg;
    if rank != 0 {
        state.epoch_loss_sum = 0.0;
        state.epoch_correct = 0;
        state.epoch_seen = 0;
    }
    Ok(state)
}

/// Makes every replica of a re-formed group identical to its rank 0, the most advanced
/// survivor: rank 0 writes its state and uploads it synchronously; a broadcast on the new ring
/// tells the others it is stored; they download it and resume from it.
#[allow(clippy::too_many_arguments)]
fn heal<B: AutodiffBackend>(
    mut trainer: Trainer<B>,
    sync: &mut CollectiveSync,
    control: &mut dyn ControlPlane,
    opts: &WorkerOptions,
    a: &Assignment,
    cfg: &TrainConfig,
    splits: resnet_data::Splits,
    device: &B::Device,
    out: Option<PathBuf>,
    scratch: &std::path::Path,
) -> Result<Trainer<B>, WorkerError> {
    let mut ready = [0f32];
    if a.rank == 0 {
        trainer.set_out(out.clone().or_else(|| Some(scratch.join("run"))));
        trainer.write_checkpoint_now(&mut resnet_train::Quiet)?;
        let (step, dir) = trainer
            .last_checkpoint()
            .cloned()
            .ok_or_else(|| WorkerError::Storage("the healing checkpoint was not written".into()))?;
        let files = crate::upload::read_dir_files(&dir)
            .map_err(|e| WorkerError::Storage(format!("{}: {e}", dir.display())))?;
        obs_upload(control, opts, a, step, &trainer, files)?;
        trainer.set_out(out);
        ready[0] = 1.0;
        sync.broadcast(&mut ready, 0).map_err(WorkerError::Config)?;
        return Ok(trainer);
    }
    sync.broadcast(&mut ready, 0).map_err(WorkerError::Config)?;
    drop(trainer);
    let dir = fetch_checkpoint(control, opts, a.generation, a.resume_step, scratch)?;
    let state = state_for_rank(&dir, cfg.clone(), a.rank)?;
    tracing::info!(
        rank = a.rank,
        step = state.global_step,
        "healed from rank 0's state"
    );
    Ok(Trainer::<B>::resume(&dir, state, splits, device.clone(), out)?.with_kernels(opts.kernels))
}

fn obs_upload<B: AutodiffBackend>(
    control: &mut dyn ControlPlane,
    opts: &WorkerOptions,
    a: &Assignment,
    step: usize,
    trainer: &Trainer<B>,
    files: Vec<(String, Vec<u8>)>,
) -> Result<(), WorkerError> {
    let stored = control.upload_checkpoint(&resnet_proto::CheckpointFiles {
        worker_id: opts.worker_id.clone(),
        rank: a.rank,
        generation: a.generation,
        step: step as u64,
        epoch: trainer.state().epoch as u32,
        files,
    })?;
    tracing::info!(step, stored = %stored, "uploaded rank 0's state for healing");
    Ok(())
}
