//! The worker's life: join, form the ring, train, report, finish — and when a peer is lost,
//! rejoin, re-form the ring and heal from the most advanced survivor.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use resnet_collective::memory::MemoryRing;
use resnet_collective::tcp::RingAbort;
use resnet_collective::Collective;
use resnet_kernels::KernelChoice;
use resnet_proto::{fingerprint, ControlPlane, Finish, JoinRequest, PROTOCOL_VERSION};
use resnet_train::{GradSync, GradWire, SyncError, TrainConfig, TrainError};

use crate::formation::Group;
use crate::group::{form_ring, Heartbeats, Membership, RingSource, Signals};
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
    /// Raised by the binary's SIGTERM/SIGINT handler: leave the group (announced to the
    /// coordinator, which re-forms it without this worker at once) and end with
    /// [`WorkerError::Left`]. None: signals are not this worker's business (in-process runs).
    pub leave_signal: Option<Arc<AtomicBool>>,
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

/// A collective's failure in the trainer's terms: a peer that went away, stalled or was
/// aborted is lost (the group re-forms without it); a malformed message is a protocol error.
pub fn sync_error(e: resnet_collective::CollectiveError) -> SyncError {
    use resnet_collective::CollectiveError as C;
    match e {
        C::Protocol { .. } => SyncError::Protocol(e.to_string()),
        C::Timeout { .. } | C::Disconnected { .. } | C::Setup(_) => {
            SyncError::PeerLost(e.to_string())
        }
        // A configuration this collective cannot serve: no other group would either.
        C::Unsupported(_) => SyncError::Local(e.to_string()),
    }
}

fn wire_of(w: GradWire) -> resnet_collective::Wire {
    match w {
        GradWire::F32 => resnet_collective::Wire::F32,
        GradWire::Bf16 => resnet_collective::Wire::Bf16,
    }
}

impl GradSync for CollectiveSync {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), SyncError> {
        self.0.all_reduce_mean(buf).map_err(sync_error)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), SyncError> {
        self.0.broadcast(buf, root).map_err(sync_error)
    }
    fn all_reduce_grads_mean(&mut self, buf: &mut [f32], wire: GradWire) -> Result<(), SyncError> {
        self.0
            .all_reduce_mean_wire(buf, wire_of(wire))
            .map_err(sync_error)
    }
    fn reduces_buckets(&self) -> bool {
        self.0.reduces_buckets()
    }
    fn all_reduce_bucket_mean(
        &mut self,
        bucket: &mut [f32],
        offset: usize,
        total: usize,
        wire: GradWire,
    ) -> Result<(), SyncError> {
        self.0
            .all_reduce_mean_bucket(bucket, offset, total, wire_of(wire))
            .map_err(sync_error)
    }
    #[cfg(feature = "cuda")]
    fn all_reduce_mean_device(
        &mut self,
        flat: &mut dyn std::any::Any,
    ) -> Option<Result<(), SyncError>> {
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
    let progress = Arc::new(Mutex::new(Progress::default()));
    let membership = Arc::new(Mutex::new(Membership {
        rank: a.rank,
        generation: a.generation,
        abort: None,
        coordinator_lost: false,
        version: 1,
    }));
    let signals = Signals {
        leave: opts.leave_signal.clone(),
        ..Signals::default()
    };
    // Heartbeats from the join on: loading the data and forming the ring may take longer than
    // the coordinator's heartbeat timeout, and a peer that dies meanwhile is noticed by the
    // coordinator, whose regroup answer aborts the formation (see `formation`).
    let beats = heartbeats.map(|hb| {
        Heartbeats::spawn(
            hb,
            opts,
            membership.clone(),
            progress.clone(),
            signals.clone(),
        )
    });
    let mut cfg: TrainConfig =
        serde_json::from_str(&a.run_config_json).map_err(|e| WorkerError::Config(e.to_string()))?;
    if let Some(d) = &opts.data_dir {
        cfg.data.dir = d.clone();
    }
    let splits = cfg.data.load(cfg.seed, &mut |_, _| {})?;
    cfg.model.num_classes = splits.train.classes.len();
    // Image folders: the class list and statistics go into every checkpoint this worker writes.
    cfg.data.record_trained_on(&splits);
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
    let scratch = tempfile::Builder::new()
        .prefix("resnet-worker-")
        .tempdir()
        .map_err(|e| WorkerError::Storage(format!("cannot create a scratch directory: {e}")))?;
    let group = Group {
        source: &source,
        opts,
        membership: &membership,
        signals: &signals,
        request: &request,
        cfg: &cfg,
        splits: regroupable.then(|| splits.clone()),
        scratch: scratch.path(),
    };
    let out = group.out_for(a.rank, a.central_checkpoints);
    let writes_checkpoints = out.is_some() || regroupable;
    let mut trainer = if a.heal {
        // Joining a running job (elastic scale-up): wait until rank 0 has stored its state,
        // then start from it. (A newcomer holds no state, so a ring that does not form here
        // ends this worker; the group it tried to join re-forms without it.)
        let (mut collective, abort) = form_ring(&source, &a, opts, RingAbort::default())?;
        group.set_membership(&a, abort);
        let mut ready = [0f32];
        collective
            .broadcast(&mut ready, 0)
            .map_err(WorkerError::Collective)?;
        let trainer = group.trainer::<B>(control, &a, Some(a.resume_step), splits, &device, out)?;
        tracing::info!(
            rank = a.rank,
            step = trainer.state().global_step,
            epoch = trainer.state().epoch + 1,
            "joined the running job from rank 0's state"
        );
        trainer.with_parallel(Box::new(CollectiveSync(collective)))
    } else {
        // A coordinator resumed from a checkpoint serves it; a fresh run starts from scratch.
        let from = (a.resume_step > 0).then_some(0);
        let trainer = group.trainer::<B>(control, &a, from, splits, &device, out)?;
        if from.is_some() {
            tracing::info!(
                rank = a.rank,
                step = trainer.state().global_step,
                epoch = trainer.state().epoch + 1,
                "resuming from the coordinator's checkpoint"
            );
        }
        group.form(control, trainer, &mut a, false, &device)?
    };

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
        signals: signals.clone(),
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
            Err(TrainError::Collective(_)) if signals.has_left() => {
                break Err(TrainError::Collective(SyncError::Left))
            }
            // A lost or misbehaving peer, or a regroup the coordinator asked for: re-form the
            // group. A failure of this replica's own side ends this worker instead.
            Err(TrainError::Collective(e)) if regroupable && e.regroup_may_help() => {
                tracing::warn!(rank = a.rank, generation = a.generation, error = %e, "collective failed: rejoining to re-form the group");
                let step = trainer.state().global_step as u64;
                a = group.rejoin(&mut *obs.control, step, a.generation)?;
                tracing::info!(
                    rank = a.rank,
                    world = a.world,
                    generation = a.generation,
                    resume_step = a.resume_step,
                    heal = a.heal,
                    "group re-formed"
                );
                group.set_membership(&a, None);
                // Reports that failed while the coordinator was away are superseded: the new
                // group reports its epochs afresh.
                obs.error = None;
                let splits = || {
                    group
                        .splits
                        .clone()
                        .ok_or_else(|| WorkerError::Config("no data kept for healing".into()))
                };
                let out = group.out_for(a.rank, true);
                if !a.heal {
                    drop(trainer);
                    // A restarted coordinator: everyone rolls back to its checkpoint, or starts
                    // the run over when it has none.
                    let from = (a.resume_step > 0).then_some(0);
                    trainer =
                        group.trainer::<B>(&mut *obs.control, &a, from, splits()?, &device, out)?;
                    if from.is_some() {
                        tracing::warn!(
                            rank = a.rank,
                            step = trainer.state().global_step,
                            "rolled back to the restarted coordinator's checkpoint"
                        );
                    } else {
                        tracing::warn!(
                            rank = a.rank,
                            "the restarted coordinator has no checkpoint: starting the run over"
                        );
                    }
                }
                let heal = a.heal;
                trainer = group.form(&mut *obs.control, trainer, &mut a, heal, &device)?;
                obs.rank = a.rank;
                obs.generation = a.generation;
            }
            other => break other,
        }
    };
    obs.log_breakdown();
    // The final checkpoint reaches the coordinator before this worker reports Finish.
    let uploads = obs.uploader.take().map(|u| u.finish());
    drop(beats);
    if signals.has_left() {
        return Err(WorkerError::Left {
            step: trainer.state().global_step as u64,
        });
    }
    // A diverged run cannot go on: say so, so the coordinator ends the run with the reason at
    // once (every rank stops at the same step) instead of waiting for silent workers.
    if let Err(TrainError::NonFinite { step, loss, why }) = &result {
        if let Err(c) = obs.control.leave(resnet_proto::Leave {
            worker_id: opts.worker_id.clone(),
            rank: a.rank,
            generation: a.generation,
            step: *step as u64,
            reason: why.clone(),
            diverged: true,
            loss: *loss,
        }) {
            tracing::warn!(error = %c, "could not tell the coordinator that the training diverged");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use resnet_collective::CollectiveError;

    #[test]
    fn lost_peers_regroup_and_local_failures_do_not() {
        let lost = [
            CollectiveError::Timeout {
                peer: 2,
                timeout: Duration::from_secs(3),
            },
            CollectiveError::Disconnected {
                peer: 1,
                detail: "connection reset".into(),
            },
            CollectiveError::Setup("rank 0 did not connect in time".into()),
        ];
        for e in lost {
            let text = e.to_string();
            let s = sync_error(e);
            assert!(
                matches!(s, SyncError::PeerLost(_)) && s.regroup_may_help(),
                "{s:?}"
            );
            assert_eq!(s.to_string(), text, "the peer's name and cause survive");
        }
        let bad = sync_error(CollectiveError::Protocol {
            peer: 1,
            detail: "frame of 3 elements, expected 4".into(),
        });
        assert!(matches!(bad, SyncError::Protocol(_)) && bad.regroup_may_help());
        assert!(bad.to_string().contains("rank 1") && bad.to_string().contains("expected 4"));
        assert!(SyncError::Regroup.regroup_may_help());
        assert!(!SyncError::Left.regroup_may_help());
        assert!(
            !SyncError::Local("reading the gradients back: device lost".into()).regroup_may_help()
        );
    }
}
