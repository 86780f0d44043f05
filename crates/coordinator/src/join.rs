//! Rendezvous: checking a join request, waiting for the group to be complete, handing out
//! ranks and the ring layout (and NCCL's id when every rank can use it). Joins into a running
//! group (replacements, regroups) are in `regroup.rs`.

use std::time::Instant;

use resnet_proto::{Assignment, JoinRequest, PROTOCOL_VERSION};
use resnet_spec::TrainConfig;

use crate::state::{Coordinator, Inner, Member, Phase, Refusal};

/// Rank 0's NCCL id when every member is a CUDA worker that sent one; otherwise empty (the TCP
/// ring), counted and logged when only some members could have used NCCL.
pub(crate) fn group_nccl_id(members: &[Member], run: &TrainConfig) -> Vec<u8> {
    // The bf16 gradient wire is the ring's: such a group never gets NCCL.
    if run.grad_wire != resnet_spec::GradWire::F32 {
        return Vec::new();
    }
    let capable = |m: &Member| m.device.starts_with("cuda") && m.nccl_id.len() == 128;
    let n = members.iter().filter(|m| capable(m)).count();
    if n == members.len() && n > 0 {
        return members[0].nccl_id.clone();
    }
    if n > 0 || members.iter().any(|m| m.device.starts_with("cuda")) {
        let devices: Vec<&str> = members.iter().map(|m| m.device.as_str()).collect();
        tracing::warn!(?devices, "not every rank can use NCCL (mixed devices or NCCL missing): the group all-reduces over the TCP ring");
        metrics::counter!(crate::metrics::COLLECTIVE_FALLBACKS).increment(1);
    }
    Vec::new()
}

impl Coordinator {
    fn check_join(&self, req: &JoinRequest) -> Result<(), Refusal> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(Refusal::Incompatible(format!(
                "worker '{}' speaks protocol v{}, this coordinator speaks v{PROTOCOL_VERSION}",
                req.worker_id, req.protocol_version
            )));
        }
        if req.fingerprint != self.cfg.fingerprint {
            return Err(Refusal::Incompatible(format!(
                "worker '{}' build fingerprint '{}' does not match the coordinator's '{}'",
                req.worker_id, req.fingerprint, self.cfg.fingerprint
            )));
        }
        if req.worker_id.is_empty() || req.worker_id.len() > 256 {
            return Err(Refusal::Invalid(
                "worker_id must be 1..256 characters".into(),
            ));
        }
        if req.data_addr.is_empty() || !req.data_addr.contains(':') || req.data_addr.len() > 256 {
            return Err(Refusal::Invalid(format!(
                "data_addr '{}' is not host:port",
                req.data_addr
            )));
        }
        Ok(())
    }

    /// Rendezvous. Registers the worker, and once `workers` have joined, answers every one of
    /// them with its rank and the group. A worker whose request is dropped before that (its
    /// connection closed) is removed again, so it never receives a rank.
    pub async fn join(&self, req: JoinRequest) -> Result<Assignment, Refusal> {
        self.check_join(&req)?;
        // Rejoining a group that is training re-forms it. A rejoin while waiting (this coordinator
        // was restarted, e.g. with --resume latest) is an ordinary join: the group forms anew.
        if req.rejoin && self.phase() != Phase::Waiting {
            return self.rejoin(req, false).await;
        }
        // A new worker while training: elastic scale-up, when the run can heal it.
        if self.phase() == Phase::Running && self.store.is_some() {
            return self.rejoin(req, true).await;
        }
        {
            let mut inner = self.lock();
            match self.phase() {
                Phase::Waiting => {}
                Phase::Running => {
                    return Err(Refusal::NotJoinable(format!(
                        "the run already has its {} workers and is training (generation {})",
                        inner.world, inner.generation
                    )))
                }
                Phase::Finished | Phase::Failed => {
                    return Err(Refusal::NotJoinable("the run has ended".into()))
                }
            }
            if inner.members.iter().any(|m| m.worker_id == req.worker_id) {
                return Err(Refusal::NotJoinable(format!(
                    "a worker named '{}' already joined",
                    req.worker_id
                )));
            }
            // Survivors of a previous coordinator: number the new group above their old one.
            inner.generation = inner.generation.max(req.generation);
            inner.members.push(Member {
                worker_id: req.worker_id.clone(),
                data_addr: req.data_addr.clone(),
                device: req.device.clone(),
                nccl_id: req.nccl_id.clone(),
                last_seen: Instant::now(),
                step: 0,
                loss: f64::NAN,
                images_per_sec: 0.0,
                misses: 0,
            });
            crate::metrics::membership("joined");
            tracing::info!(worker = %req.worker_id, device = %req.device, data_addr = %req.data_addr, joined = inner.members.len(), of = inner.world, "worker joined");
            if inner.members.len() == inner.world {
                inner.generation += 1;
                let n = inner.world;
                self.generation_tx.send_replace(inner.generation);
                inner.finished = vec![None; n];
                let now = Instant::now();
                inner.members.iter_mut().for_each(|m| m.last_seen = now);
                tracing::info!(
                    generation = inner.generation,
                    world = n,
                    "group complete, training starts"
                );
                self.set_phase(Phase::Running);
                metrics::gauge!(crate::metrics::GENERATION).set(inner.generation as f64);
                metrics::gauge!(crate::metrics::WORKERS_ALIVE).set(n as f64);
            }
        }
        let guard = LeaveOnDrop {
            coord: self,
            worker_id: Some(req.worker_id.clone()),
        };
        let mut rx = self.phase.subscribe();
        let waited =
            tokio::time::timeout(self.cfg.join_timeout, rx.wait_for(|p| *p != Phase::Waiting))
                .await;
        let mut guard = guard;
        if waited.is_err() {
            let joined = self.lock().members.len();
            drop(guard); // removes this worker
            return Err(Refusal::Timeout(format!(
                "rendezvous timed out after {:?}: {joined} of {} workers joined",
                self.cfg.join_timeout, self.cfg.workers
            )));
        }
        guard.worker_id = None;
        let inner = self.lock();
        let rank = inner
            .members
            .iter()
            .position(|m| m.worker_id == req.worker_id)
            .ok_or_else(|| Refusal::Unknown("worker left during rendezvous".into()))?;
        let resume_step = self.resume.as_ref().map_or(0, |r| r.1);
        Ok(self.assignment(&inner, rank, resume_step, false))
    }

    /// Member `rank`'s place in the current generation: the group, the run, where training
    /// starts (`resume_step`) and whether it starts by healing from rank 0's state.
    pub(crate) fn assignment(
        &self,
        inner: &Inner,
        rank: usize,
        resume_step: u64,
        heal: bool,
    ) -> Assignment {
        Assignment {
            rank,
            world: inner.members.len(),
            generation: inner.generation,
            run_config_json: self.run_json.clone(),
            peers: inner.members.iter().map(|m| m.data_addr.clone()).collect(),
            // Healing goes through the store, so a regrouped member always has one.
            central_checkpoints: heal || self.store.is_some(),
            resume_step,
            heal,
            nccl_id: group_nccl_id(&inner.members, &self.cfg.run),
        }
    }

    pub(crate) fn member(
        &self,
        inner: &Inner,
        worker_id: &str,
        rank: usize,
        generation: u64,
    ) -> Result<usize, Refusal> {
        let idx = inner
            .members
            .iter()
            .position(|m| m.worker_id == worker_id)
            .ok_or_else(|| Refusal::Unknown(format!("unknown worker '{worker_id}'")))?;
        if idx != rank {
            return Err(Refusal::Unknown(format!(
                "worker '{worker_id}' has rank {idx}, not {rank}"
            )));
        }
        if generation != inner.generation {
            return Err(Refusal::Unknown(format!(
                "stale generation {generation} from '{worker_id}' (current {})",
                inner.generation
            )));
        }
        Ok(idx)
    }

    fn leave(&self, worker_id: &str) {
        let mut inner = self.lock();
        if self.phase() == Phase::Waiting {
            inner.members.retain(|m| m.worker_id != worker_id);
            crate::metrics::membership("left");
            tracing::warn!(
                worker = worker_id,
                joined = inner.members.len(),
                "worker left before the group was complete"
            );
        }
    }
}

/// Removes a joining worker if its request ends before the group is complete.
struct LeaveOnDrop<'a> {
    coord: &'a Coordinator,
    worker_id: Option<String>,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.worker_id.take() {
            self.coord.leave(&id);
        }
    }
}
