//! Forming and re-forming the group: the ring of an assignment, a rejoin when it cannot form (a
//! peer died after joining, before connecting), healing every replica from the new rank 0
//! once it has formed, and the training loop around them that re-forms the group when a
//! collective fails mid-run ([`Group::fit`]).
//!
//! Formation is as robust as the running ring: the heartbeat thread runs from the join on, so
//! a peer that dies while the others load data or connect is noticed by the coordinator, whose
//! regroup answer aborts the formation in progress; the survivors rejoin and heal from the
//! most advanced of them, exactly as after a loss mid-run.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;
use resnet_collective::tcp::RingAbort;
use resnet_proto::{Assignment, ControlPlane, JoinRequest};
use resnet_train::{SyncError, TrainConfig, TrainError, TrainSummary, Trainer};

use crate::group::{fetch_checkpoint, form_ring, RingSource};
use crate::heartbeat::{Membership, Signals};
use crate::observer::WorkerObserver;
use crate::sync::CollectiveSync;
use crate::{WorkerError, WorkerOptions};

/// What (re-)forming the group needs besides the trainer and the assignment.
pub(crate) struct Group<'a> {
    pub source: &'a RingSource<'a>,
    pub opts: &'a WorkerOptions,
    pub membership: &'a Arc<Mutex<Membership>>,
    pub signals: &'a Signals,
    /// The first join request (rejoins repeat it with the step and generation).
    pub request: &'a JoinRequest,
    pub cfg: &'a TrainConfig,
    /// This worker's data, kept to rebuild a replica after a regroup (None: the group cannot
    /// be re-formed, e.g. an in-process ring or a run without central checkpoints).
    pub splits: Option<resnet_data::Splits>,
    pub scratch: &'a Path,
}

impl Group<'_> {
    /// Where `rank` writes checkpoints: `--out` on rank 0, else scratch space on rank 0 when
    /// the coordinator stores them (the upload reads them back from there), else nowhere.
    pub fn out_for(&self, rank: usize, central: bool) -> Option<PathBuf> {
        match (&self.opts.out, central) {
            (Some(o), _) if rank == 0 => Some(o.clone()),
            (None, true) if rank == 0 => Some(self.scratch.join("run")),
            _ => None,
        }
    }

    /// The one way a replica is built for an assignment `a`: from the checkpoint the
    /// coordinator serves for step `from` (0: its newest), or a fresh model with `None`; the
    /// saved state adapted to `a.rank` ([`state_for_rank`]); this worker's kernels.
    #[allow(clippy::too_many_arguments)] // the assignment's parts, each used once
    pub fn trainer<B: AutodiffBackend>(
        &self,
        control: &mut dyn ControlPlane,
        a: &Assignment,
        from: Option<u64>,
        splits: resnet_data::Splits,
        device: &B::Device,
        out: Option<PathBuf>,
    ) -> Result<Trainer<B>, WorkerError> {
        let trainer = match from {
            Some(step) => {
                let dir = fetch_checkpoint(control, self.opts, a.generation, step, self.scratch)?;
                let state = state_for_rank(&dir, self.cfg.clone(), a.rank)?;
                Trainer::<B>::resume(&dir, state, splits, device.clone(), out)?
            }
            None => Trainer::<B>::new(self.cfg.clone(), splits, device.clone(), out)?,
        };
        Ok(trainer.with_kernels(self.opts.kernels))
    }

    /// Records a new membership for the heartbeat thread: a beat answered for an older one
    /// cannot break this ring.
    pub fn set_membership(&self, a: &Assignment, abort: Option<RingAbort>) {
        let mut m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
        self.signals.regroup.store(false, Ordering::SeqCst);
        *m = Membership {
            rank: a.rank,
            generation: a.generation,
            abort,
            coordinator_lost: false,
            version: m.version + 1,
        };
    }

    /// Forms `a`'s ring and gives it to `trainer`; with `healing`, then makes every replica
    /// equal to the new rank 0's. When the ring cannot form and the group can be re-formed,
    /// rejoins (the coordinator drops whoever never connected) and tries the new group.
    pub fn form<B: AutodiffBackend>(
        &self,
        control: &mut dyn ControlPlane,
        mut trainer: Trainer<B>,
        a: &mut Assignment,
        mut healing: bool,
        device: &B::Device,
    ) -> Result<Trainer<B>, WorkerError> {
        loop {
            if self.signals.has_left() {
                return Err(WorkerError::Left {
                    step: trainer.state().global_step as u64,
                });
            }
            // The heartbeat thread holds this handle, so a regroup announced while the ring
            // forms ends the wait for a peer that will never connect.
            let abort = RingAbort::default();
            self.membership
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .abort = Some(abort.clone());
            let e = match form_ring(self.source, a, self.opts, abort) {
                Ok((collective, abort)) => {
                    self.membership
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .abort = abort;
                    let mut sync = CollectiveSync(collective);
                    if healing {
                        let out = self.out_for(a.rank, true);
                        if let Some(o) = &out {
                            std::fs::create_dir_all(o).map_err(|e| {
                                WorkerError::Storage(format!("{}: {e}", o.display()))
                            })?;
                        }
                        let splits = self.splits.clone().ok_or_else(|| {
                            WorkerError::Config("no data kept for healing".into())
                        })?;
                        trainer = heal(trainer, &mut sync, control, self, a, splits, device, out)?;
                    }
                    trainer.set_parallel(Box::new(sync));
                    return Ok(trainer);
                }
                Err(WorkerError::Collective(_)) if self.signals.has_left() => {
                    return Err(WorkerError::Left {
                        step: trainer.state().global_step as u64,
                    })
                }
                Err(e @ WorkerError::Collective(_)) if self.splits.is_some() => e,
                Err(e) => return Err(e),
            };
            tracing::warn!(rank = a.rank, generation = a.generation, error = %e, "the ring did not form: rejoining to re-form the group without the missing peer");
            *a = self.rejoin(control, trainer.state().global_step as u64, a.generation)?;
            tracing::info!(
                rank = a.rank,
                world = a.world,
                generation = a.generation,
                "group re-formed before training"
            );
            self.set_membership(a, None);
            healing = true;
        }
    }

    /// Trains to the end of the run, re-forming the group whenever a collective fails in a way
    /// another group can fix (a lost or misbehaving peer, a regroup the coordinator asked
    /// for) and `regroupable`. Returns the training's own result (a failure of this replica's
    /// side, a divergence, a stop) with the replica it ended with; errors of re-forming the
    /// group end the worker.
    pub fn fit<B: AutodiffBackend>(
        &self,
        mut trainer: Trainer<B>,
        obs: &mut WorkerObserver<'_>,
        a: &mut Assignment,
        regroupable: bool,
        device: &B::Device,
    ) -> Result<(Result<TrainSummary, TrainError>, Trainer<B>), WorkerError> {
        loop {
            let e = match trainer.fit(obs) {
                Err(TrainError::Collective(_)) if self.signals.has_left() => {
                    return Ok((Err(TrainError::Collective(SyncError::Left)), trainer))
                }
                Err(TrainError::Collective(e)) if regroupable && e.regroup_may_help() => e,
                other => return Ok((other, trainer)),
            };
            tracing::warn!(rank = a.rank, generation = a.generation, error = %e, "collective failed: rejoining to re-form the group");
            let step = trainer.state().global_step as u64;
            *a = self.rejoin(&mut *obs.control, step, a.generation)?;
            tracing::info!(
                rank = a.rank,
                world = a.world,
                generation = a.generation,
                resume_step = a.resume_step,
                heal = a.heal,
                "group re-formed"
            );
            self.set_membership(a, None);
            // Reports that failed while the coordinator was away are superseded: the new
            // group reports its epochs afresh.
            obs.error = None;
            let out = self.out_for(a.rank, true);
            if !a.heal {
                drop(trainer);
                // A restarted coordinator: everyone rolls back to its checkpoint, or starts
                // the run over when it has none.
                let from = (a.resume_step > 0).then_some(0);
                let splits = self
                    .splits
                    .clone()
                    .ok_or_else(|| WorkerError::Config("no data kept for healing".into()))?;
                trainer = self.trainer::<B>(&mut *obs.control, a, from, splits, device, out)?;
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
            trainer = self.form(&mut *obs.control, trainer, a, heal, device)?;
            obs.rank = a.rank;
            obs.generation = a.generation;
        }
    }

    /// Rejoins with this replica's `step`, as a member of `generation`.
    pub fn rejoin(
        &self,
        control: &mut dyn ControlPlane,
        step: u64,
        generation: u64,
    ) -> Result<Assignment, WorkerError> {
        let req = JoinRequest {
            step,
            rejoin: true,
            generation,
            // NCCL ids serve one communicator: every generation gets fresh ones.
            nccl_id: crate::group::fresh_nccl_id(self.opts, self.source),
            ..self.request.clone()
        };
        rejoin_with_retry(control, &req, self.opts.rejoin_timeout)
    }
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
                if crate::heartbeat::unreachable(&e)
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
pub(crate) fn state_for_rank(
    dir: &Path,
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
    group: &Group,
    a: &Assignment,
    splits: resnet_data::Splits,
    device: &B::Device,
    out: Option<PathBuf>,
) -> Result<Trainer<B>, WorkerError> {
    let (opts, scratch) = (group.opts, group.scratch);
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
        let stored = control.upload_checkpoint(&resnet_proto::CheckpointFiles {
            worker_id: opts.worker_id.clone(),
            rank: a.rank,
            generation: a.generation,
            step: step as u64,
            epoch: trainer.state().epoch as u32,
            files,
        })?;
        tracing::info!(step, stored = %stored, "uploaded rank 0's state for healing");
        trainer.set_out(out);
        ready[0] = 1.0;
        sync.0.broadcast(&mut ready, 0)?;
        return Ok(trainer);
    }
    sync.0.broadcast(&mut ready, 0)?;
    drop(trainer);
    let trainer = group.trainer(control, a, Some(a.resume_step), splits, device, out)?;
    tracing::info!(
        rank = a.rank,
        step = trainer.state().global_step,
        "healed from rank 0's state"
    );
    Ok(trainer)
}
