//! Domain types of the control plane and their conversions. Training code uses these; prost
//! structs stay inside this crate and the gRPC service.

use crate::v1;

/// What a worker says when it joins.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinRequest {
    /// Protocol version of the worker's build.
    pub protocol_version: u32,
    /// Unique worker id.
    pub worker_id: String,
    /// Build fingerprint.
    pub fingerprint: String,
    /// Data-plane address (host:port).
    pub data_addr: String,
    /// "cpu" or "cuda:N".
    pub device: String,
    /// Steps the worker's replica has completed.
    pub step: u64,
    /// Asks to re-form the running group (see the proto).
    pub rejoin: bool,
    /// The generation a rejoining worker was in (0 for a fresh one).
    pub generation: u64,
    /// A fresh NCCL unique id (CUDA workers with NCCL), else empty.
    pub nccl_id: Vec<u8>,
}

/// What the coordinator assigns once the group is complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// This worker's rank.
    pub rank: usize,
    /// Group size.
    pub world: usize,
    /// Group generation.
    pub generation: u64,
    /// Resolved run configuration as JSON (`resnet_train::TrainConfig`).
    pub run_config_json: String,
    /// Data-plane address of every rank.
    pub peers: Vec<String>,
    /// The coordinator stores checkpoints: rank 0 uploads them.
    pub central_checkpoints: bool,
    /// Non-zero: download this step's checkpoint from the coordinator and resume from it.
    pub resume_step: u64,
    /// The group was re-formed around a running job: rank 0 heals the others (see the proto).
    pub heal: bool,
    /// Rank 0's NCCL unique id when the whole group can use NCCL; empty: the TCP ring.
    pub nccl_id: Vec<u8>,
}

/// What the coordinator answers a heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The run is cancelled.
    pub stop: bool,
    /// The group is being re-formed: abort the collective in flight and rejoin.
    pub regroup: bool,
}

/// Periodic liveness and progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Worker id.
    pub worker_id: String,
    /// Rank.
    pub rank: usize,
    /// Generation the worker belongs to.
    pub generation: u64,
    /// Steps completed.
    pub step: u64,
    /// Last training loss.
    pub loss: f64,
    /// Recent throughput.
    pub images_per_sec: f64,
}

/// One rank's exact counts for an epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Worker id.
    pub worker_id: String,
    /// Rank.
    pub rank: usize,
    /// Generation.
    pub generation: u64,
    /// 1-based epoch.
    pub epoch: u32,
    /// Global step at the end of the epoch.
    pub step: u64,
    /// Sum of per-image training loss.
    pub train_loss_sum: f64,
    /// Correct training predictions.
    pub train_correct: u64,
    /// Training images.
    pub train_seen: u64,
    /// Training seconds.
    pub train_seconds: f64,
    /// LR of the last step.
    pub lr: f64,
    /// Classes.
    pub num_classes: usize,
    /// Row-major confusion counts of this rank's evaluation slice (empty: no evaluation).
    pub confusion: Vec<u64>,
    /// Top-5 hits.
    pub top5_correct: u64,
    /// Sum of evaluation cross-entropy.
    pub eval_loss_sum: f64,
    /// False for the partial epoch of a run stopped by `max_steps`.
    pub complete: bool,
}

/// A worker finished.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// Worker id.
    pub worker_id: String,
    /// Rank.
    pub rank: usize,
    /// Generation.
    pub generation: u64,
    /// Steps completed.
    pub steps: u64,
    /// Hash of the final parameters.
    pub param_hash: String,
}

/// A worker leaves the group before the end of the run (SIGTERM).
#[derive(Debug, Clone, PartialEq)]
pub struct Leave {
    /// Worker id.
    pub worker_id: String,
    /// Rank.
    pub rank: usize,
    /// Generation.
    pub generation: u64,
    /// Steps its replica had completed.
    pub step: u64,
    /// Why ("SIGTERM", or the divergence message).
    pub reason: String,
    /// The training diverged: the run cannot go on (every rank stops at the same step).
    pub diverged: bool,
    /// With `diverged`: this rank's loss at `step`.
    pub loss: f64,
}

impl From<JoinRequest> for v1::JoinRequest {
    fn from(r: JoinRequest) -> Self {
        Self {
            protocol_version: r.protocol_version,
            worker_id: r.worker_id,
            fingerprint: r.fingerprint,
            data_addr: r.data_addr,
            device: r.device,
            step: r.step,
            rejoin: r.rejoin,
            generation: r.generation,
            nccl_id: r.nccl_id,
        }
    }
}
impl From<v1::JoinRequest> for JoinRequest {
    fn from(r: v1::JoinRequest) -> Self {
        Self {
            protocol_version: r.protocol_version,
            worker_id: r.worker_id,
            fingerprint: r.fingerprint,
            data_addr: r.data_addr,
            device: r.device,
            step: r.step,
            rejoin: r.rejoin,
            generation: r.generation,
            nccl_id: r.nccl_id,
        }
    }
}
impl From<Assignment> for v1::JoinResponse {
    fn from(a: Assignment) -> Self {
        Self {
            rank: a.rank as u32,
            world_size: a.world as u32,
            generation: a.generation,
            run_config_json: a.run_config_json,
            peer_addrs: a.peers,
            central_checkpoints: a.central_checkpoints,
            resume_step: a.resume_step,
            heal: a.heal,
            nccl_id: a.nccl_id,
        }
    }
}
impl From<v1::JoinResponse> for Assignment {
    fn from(r: v1::JoinResponse) -> Self {
        Self {
            rank: r.rank as usize,
            world: r.world_size as usize,
            generation: r.generation,
            run_config_json: r.run_config_json,
            peers: r.peer_addrs,
            central_checkpoints: r.central_checkpoints,
            resume_step: r.resume_step,
            heal: r.heal,
            nccl_id: r.nccl_id,
        }
    }
}
impl From<Heartbeat> for v1::HeartbeatRequest {
    fn from(h: Heartbeat) -> Self {
        Self {
            worker_id: h.worker_id,
            rank: h.rank as u32,
            generation: h.generation,
            step: h.step,
            loss: h.loss,
            images_per_sec: h.images_per_sec,
        }
    }
}
impl From<v1::HeartbeatRequest> for Heartbeat {
    fn from(h: v1::HeartbeatRequest) -> Self {
        Self {
            worker_id: h.worker_id,
            rank: h.rank as usize,
            generation: h.generation,
            step: h.step,
            loss: h.loss,
            images_per_sec: h.images_per_sec,
        }
    }
}
impl From<EpochReport> for v1::EpochReport {
    fn from(e: EpochReport) -> Self {
        Self {
            worker_id: e.worker_id,
            rank: e.rank as u32,
            generation: e.generation,
            epoch: e.epoch,
            step: e.step,
            train_loss_sum: e.train_loss_sum,
            train_correct: e.train_correct,
            train_seen: e.train_seen,
            train_seconds: e.train_seconds,
            lr: e.lr,
            num_classes: e.num_classes as u32,
            confusion: e.confusion,
            top5_correct: e.top5_correct,
            eval_loss_sum: e.eval_loss_sum,
            complete: e.complete,
        }
    }
}
impl From<v1::EpochReport> for EpochReport {
    fn from(e: v1::EpochReport) -> Self {
        Self {
            worker_id: e.worker_id,
            rank: e.rank as usize,
            generation: e.generation,
            epoch: e.epoch,
            step: e.step,
            train_loss_sum: e.train_loss_sum,
            train_correct: e.train_correct,
            train_seen: e.train_seen,
            train_seconds: e.train_seconds,
            lr: e.lr,
            num_classes: e.num_classes as usize,
            confusion: e.confusion,
            top5_correct: e.top5_correct,
            eval_loss_sum: e.eval_loss_sum,
            complete: e.complete,
        }
    }
}
impl From<Finish> for v1::FinishRequest {
    fn from(f: Finish) -> Self {
        Self {
            worker_id: f.worker_id,
            rank: f.rank as u32,
            generation: f.generation,
            steps: f.steps,
            param_hash: f.param_hash,
        }
    }
}
impl From<v1::FinishRequest> for Finish {
    fn from(f: v1::FinishRequest) -> Self {
        Self {
            worker_id: f.worker_id,
            rank: f.rank as usize,
            generation: f.generation,
            steps: f.steps,
            param_hash: f.param_hash,
        }
    }
}

impl From<Leave> for v1::LeaveRequest {
    fn from(l: Leave) -> Self {
        Self {
            worker_id: l.worker_id,
            rank: l.rank as u32,
            generation: l.generation,
            step: l.step,
            reason: l.reason,
            diverged: l.diverged,
            loss: l.loss,
        }
    }
}
impl From<v1::LeaveRequest> for Leave {
    fn from(l: v1::LeaveRequest) -> Self {
        Self {
            worker_id: l.worker_id,
            rank: l.rank as usize,
            generation: l.generation,
            step: l.step,
            reason: l.reason,
            diverged: l.diverged,
            loss: l.loss,
        }
    }
}

/// Control-plane errors as the worker sees them.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

/// The worker's view of the coordinator. Blocking on purpose: it is called from the training
/// thread, which must not run on the async runtime. Implemented over gRPC ([`crate::client`])
/// and in-process by the coordinator crate (for tests without a network).
pub trait ControlPlane: Send {
    /// Rendezvous: returns once the group is complete.
    fn join(&mut self, req: JoinRequest) -> Result<Assignment, ControlError>;
    /// Liveness/progress; the reply may ask the worker to stop or to regroup.
    fn heartbeat(&mut self, hb: Heartbeat) -> Result<HeartbeatReply, ControlError>;
    /// End-of-epoch counts.
    fn report_epoch(&mut self, report: EpochReport) -> Result<(), ControlError>;
    /// The worker is done.
    fn finish(&mut self, f: Finish) -> Result<(), ControlError>;
    /// The worker leaves before the end (SIGTERM); the group re-forms without it at once.
    fn leave(&mut self, _l: Leave) -> Result<(), ControlError> {
        Err(ControlError(
            "this control plane cannot announce a leave (the coordinator notices the silence)"
                .into(),
        ))
    }
    /// Stores a checkpoint centrally; returns where the coordinator put it.
    fn upload_checkpoint(&mut self, c: &crate::CheckpointFiles) -> Result<String, ControlError>;
    /// Fetches the checkpoint the run resumes from.
    fn download_checkpoint(
        &mut self,
        worker_id: &str,
        generation: u64,
        step: u64,
    ) -> Result<crate::CheckpointFiles, ControlError>;
    /// Refuses checkpoint downloads whose header declares more than `max_bytes` of files (the
    /// worker knows what its run's checkpoints can weigh). Default: no limit.
    fn limit_downloads(&mut self, _max_bytes: u64) {}
    /// The run configuration (JSON) before joining, for a warm-up.
    fn run_config(&mut self, _worker_id: &str) -> Result<String, ControlError> {
        Err(ControlError(
            "this control plane cannot send the run configuration before joining".into(),
        ))
    }
}
