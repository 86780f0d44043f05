//! The worker's life: join, form the ring, train, report, finish. When a peer is lost the
//! group re-forms (`formation.rs`: rejoin, re-form the ring, heal from the most advanced
//! survivor) and training goes on; this file strings the phases together.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::AutodiffBackend;
use resnet_collective::tcp::RingAbort;
use resnet_proto::{fingerprint, Assignment, ControlPlane, Finish, JoinRequest, PROTOCOL_VERSION};
use resnet_train::{TrainConfig, TrainError, TrainSummary, Trainer};

use crate::formation::Group;
use crate::group::{form_ring, RingSource};
use crate::heartbeat::{Heartbeats, Membership, Progress, Signals};
use crate::observer::WorkerObserver;
use crate::sync::CollectiveSync;
use crate::upload::UploadOutcome;
use crate::{Transport, WorkerError, WorkerOptions, WorkerResult};

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
    let (listener, data_addr) = bind(&transport, opts)?;
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
    let (cfg, splits) = load_run(control, &a, opts)?;
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
    let trainer = first_trainer::<B>(&group, control, &mut a, splits, &device, out)?;

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
    let (result, trainer) = group.fit(trainer, &mut obs, &mut a, regroupable, &device)?;
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
    if a.rank == 0 {
        check_final_upload(uploads, &summary, trainer, scratch)?;
    }
    Ok(WorkerResult {
        rank: a.rank,
        world: a.world,
        steps: summary.steps,
        param_hash: summary.param_hash,
        interrupted: summary.interrupted,
    })
}

/// Binds the data-plane listener of a TCP transport; returns it and the address peers are
/// told to connect to.
fn bind(
    transport: &Transport,
    opts: &WorkerOptions,
) -> Result<(Option<TcpListener>, String), WorkerError> {
    match transport {
        Transport::Tcp { listen, advertise } => {
            let l = TcpListener::bind(listen).map_err(|source| WorkerError::Listen {
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
            Ok((Some(l), addr))
        }
        Transport::Memory(_) => Ok((None, format!("in-process:{}", opts.worker_id))),
    }
}

/// The run configuration of the assignment, with this worker's data directory and the classes
/// of its data, and the data itself.
fn load_run(
    control: &mut dyn ControlPlane,
    a: &Assignment,
    opts: &WorkerOptions,
) -> Result<(TrainConfig, resnet_data::Splits), WorkerError> {
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
    Ok((cfg, splits))
}

/// The replica of the first assignment, in its group: a newcomer to a running job starts from
/// rank 0's state; otherwise from the coordinator's checkpoint or from scratch.
fn first_trainer<B: AutodiffBackend>(
    group: &Group<'_>,
    control: &mut dyn ControlPlane,
    a: &mut Assignment,
    splits: resnet_data::Splits,
    device: &B::Device,
    out: Option<std::path::PathBuf>,
) -> Result<Trainer<B>, WorkerError> {
    if a.heal {
        // Joining a running job (elastic scale-up): wait until rank 0 has stored its state,
        // then start from it. (A newcomer holds no state, so a ring that does not form here
        // ends this worker; the group it tried to join re-forms without it.)
        let (mut collective, abort) = form_ring(group.source, a, group.opts, RingAbort::default())?;
        group.set_membership(a, abort);
        let mut ready = [0f32];
        collective
            .broadcast(&mut ready, 0)
            .map_err(WorkerError::Collective)?;
        let trainer = group.trainer::<B>(control, a, Some(a.resume_step), splits, device, out)?;
        tracing::info!(
            rank = a.rank,
            step = trainer.state().global_step,
            epoch = trainer.state().epoch + 1,
            "joined the running job from rank 0's state"
        );
        Ok(trainer.with_parallel(Box::new(CollectiveSync(collective))))
    } else {
        // A coordinator resumed from a checkpoint serves it; a fresh run starts from scratch.
        let from = (a.resume_step > 0).then_some(0);
        let trainer = group.trainer::<B>(control, a, from, splits, device, out)?;
        if from.is_some() {
            tracing::info!(
                rank = a.rank,
                step = trainer.state().global_step,
                epoch = trainer.state().epoch + 1,
                "resuming from the coordinator's checkpoint"
            );
        }
        group.form(control, trainer, a, false, device)
    }
}

/// Rank 0 of a central-checkpoint run: if the coordinator did not store the final state, this
/// worker's local copy is the only one. Keep it (the scratch directory would vanish) and fail,
/// so the lost result does not look like a success.
fn check_final_upload<B: AutodiffBackend>(
    uploads: Option<UploadOutcome>,
    summary: &TrainSummary,
    trainer: Trainer<B>,
    scratch: tempfile::TempDir,
) -> Result<(), WorkerError> {
    let local = trainer.last_checkpoint().map(|(_, p)| p.clone());
    // The trainer's files (its step log flushes when dropped) go before their directory.
    drop(trainer);
    let Some(up) = uploads.filter(|u| u.stored != Some(summary.steps as u64)) else {
        return Ok(());
    };
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
    Err(WorkerError::Train(TrainError::CheckpointLost {
        step: summary.steps,
        error: format!("upload of step {step}: {error}"),
        why: "the coordinator did not store the final checkpoint".into(),
        newest: local.map_or_else(|| "none on this worker".into(), |p| p.display().to_string()),
    }))
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
