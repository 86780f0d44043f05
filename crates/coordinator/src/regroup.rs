//! Re-forming the group after losing workers, without stopping the run.
//!
//! A survivor whose collective failed calls `Join` with `rejoin` (or learns from a heartbeat
//! reply that the group is re-forming, when the coordinator noticed a silent worker first). The
//! coordinator waits for the members of the current generation to rejoin — at most
//! `regroup_timeout` — then ranks the survivors by completed steps (the most advanced replica
//! becomes rank 0 and heals the others from a checkpoint it streams through the central store),
//! bumps the generation and answers every rejoin. Replicas are identical up to the step in
//! flight, so at most that step is lost. Needs a central store (`--out`) to heal through.
//!
//! (About 500 lines: the regroup's states — started by silence or by a leave, members
//! rejoining, newcomers waiting for room, the deadline, the new generation — share one
//! `Regroup` record and are easier to check against each other in one file.)

use std::time::{Duration, Instant};

use resnet_proto::{Assignment, JoinRequest};

use crate::state::{Coordinator, Member, Phase, Refusal};
use crate::summary::RegroupRecord;

/// A re-forming in progress.
#[derive(Debug)]
pub(crate) struct Regroup {
    /// Members of the old generation still expected (not known dead).
    expected: Vec<String>,
    /// Set once the survivors were too few: since when the group waits for replacements.
    short_since: Option<Instant>,
    /// Those that rejoined: (old rank, request).
    rejoined: Vec<(usize, JoinRequest)>,
    deadline: Instant,
    reason: String,
}

impl Regroup {
    pub(crate) fn expects(&self, worker_id: &str) -> bool {
        self.expected.iter().any(|w| w == worker_id)
    }
}

impl Coordinator {
    fn can_heal(&self) -> bool {
        self.store.is_some()
    }

    /// Starts a regroup without `dead` (a silent worker). False when the run cannot heal
    /// (no central store), so the caller fails the run instead.
    pub(crate) fn start_regroup_for_silence(&self, reason: &str) -> bool {
        if !self.can_heal() {
            return false;
        }
        let mut inner = self.lock();
        if inner.regroup.is_some() {
            return true;
        }
        let silent: Vec<String> = inner
            .members
            .iter()
            .filter(|m| m.last_seen.elapsed() > self.cfg.heartbeat_timeout)
            .map(|m| m.worker_id.clone())
            .collect();
        let expected = inner
            .members
            .iter()
            .map(|m| m.worker_id.clone())
            .filter(|w| !silent.contains(w))
            .collect();
        tracing::warn!(%reason, lost = ?silent, "re-forming the group without the silent worker(s)");
        inner.regroup = Some(Regroup {
            expected,
            short_since: None,
            rejoined: Vec::new(),
            deadline: Instant::now() + self.cfg.regroup_timeout,
            reason: reason.to_string(),
        });
        true
    }

    /// A worker leaves before the end (SIGTERM), or says the training diverged (the run ends at
    /// once with that reason: every rank stops at the same step). Before the group is complete a
    /// leaving worker is simply removed; while training, the group re-forms without it at once (the survivors learn it
    /// from their next heartbeat reply) instead of after the heartbeat timeout. A run that
    /// cannot re-form (no checkpoint store), or whose last worker leaves, fails with a reason
    /// naming the worker.
    pub fn leave_group(&self, l: resnet_proto::Leave) -> Result<(), Refusal> {
        let id = l.worker_id.as_str();
        let why = if l.reason.is_empty() {
            "no reason given".to_string()
        } else {
            l.reason.chars().take(2000).collect()
        };
        if l.diverged && self.phase() == Phase::Running {
            let mut inner = self.lock();
            if !inner.members.iter().any(|m| m.worker_id == id) {
                return Err(Refusal::Unknown(format!(
                    "'{id}' is not a member of the running group"
                )));
            }
            inner.diverged.get_or_insert((
                l.step,
                l.loss,
                format!("{why}; reported by worker '{id}'"),
            ));
            drop(inner);
            self.fail(format!(
                "training diverged: worker '{id}' stopped at step {} (loss {}): {why}",
                l.step, l.loss
            ));
            return Ok(());
        }
        match self.phase() {
            Phase::Waiting => {
                let mut inner = self.lock();
                let before = inner.members.len();
                inner.members.retain(|m| m.worker_id != id);
                if inner.members.len() < before {
                    crate::metrics::membership("left");
                    tracing::warn!(worker = id, reason = %why, joined = inner.members.len(), "worker left before the group was complete");
                }
                return Ok(());
            }
            Phase::Finished | Phase::Failed => return Ok(()),
            Phase::Running => {}
        }
        let mut inner = self.lock();
        let position = inner.members.iter().position(|m| m.worker_id == id);
        let regrouping = inner.regroup.as_ref().is_some_and(|r| r.expects(id));
        if position.is_none() && !regrouping {
            return Err(Refusal::Unknown(format!(
                "'{id}' is not a member of the running group"
            )));
        }
        // Finished already: its leaving changes nothing.
        if position.is_some_and(|i| inner.finished.get(i).is_some_and(Option::is_some)) {
            return Ok(());
        }
        crate::metrics::membership("left");
        let reason = format!("'{id}' left at step {} ({why})", l.step);
        tracing::warn!(worker = id, step = l.step, reason = %why, "worker left the group");
        let survivors: Vec<String> = match &inner.regroup {
            Some(r) => r.expected.iter().filter(|w| *w != id).cloned().collect(),
            None => inner
                .members
                .iter()
                .map(|m| m.worker_id.clone())
                .filter(|w| w != id)
                .collect(),
        };
        if !self.can_heal() || survivors.is_empty() {
            drop(inner);
            metrics::gauge!(crate::metrics::WORKERS_ALIVE).decrement(1.0);
            self.fail(if survivors.is_empty() {
                format!("{reason}: no worker is left; restart the workers (and the coordinator with --resume auto) to continue from the newest checkpoint")
            } else {
                format!("{reason}, and the group cannot be re-formed without it: the coordinator has no checkpoint store (--out) to heal replicas through")
            });
            return Ok(());
        }
        let complete = match &mut inner.regroup {
            Some(r) => {
                r.expected.retain(|w| w != id);
                r.rejoined.retain(|(_, q)| q.worker_id != id);
                r.rejoined.len() == r.expected.len()
            }
            None => {
                inner.regroup = Some(Regroup {
                    expected: survivors,
                    short_since: None,
                    rejoined: Vec::new(),
                    deadline: Instant::now() + self.cfg.regroup_timeout,
                    reason,
                });
                false
            }
        };
        drop(inner);
        if complete {
            self.finish_regroup();
        }
        Ok(())
    }

    /// Finalises a regroup whose deadline has passed at `now`; true while one is in progress.
    pub(crate) fn regroup_due_at(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        let Some(r) = &inner.regroup else {
            return false;
        };
        if now >= r.deadline {
            drop(inner);
            self.finish_regroup();
            inner = self.lock();
        }
        inner.regroup.is_some()
    }

    fn max_workers(&self) -> usize {
        self.cfg.max_workers.unwrap_or(self.cfg.workers)
    }

    /// The group's size once the regroup in progress (if any) completes.
    fn group_size(&self, inner: &crate::state::Inner) -> usize {
        inner
            .regroup
            .as_ref()
            .map_or(inner.members.len(), |r| r.expected.len())
    }

    fn full(&self, worker_id: &str, inner: &crate::state::Inner) -> Refusal {
        Refusal::NotJoinable(format!(
            "the running group has {} worker(s), the most it may have (--max-workers {}), and none left within {:?}: '{worker_id}' is not admitted",
            self.group_size(inner),
            self.max_workers(),
            self.cfg.join_timeout
        ))
    }

    /// A worker joining a full group waits (up to the join timeout) for a place: a replacement
    /// for a crashed worker usually arrives before the coordinator has noticed the crash, and
    /// must not be turned away for a member that is already gone.
    async fn wait_for_room(&self, worker_id: &str) -> Result<(), Refusal> {
        let deadline = Instant::now() + self.cfg.join_timeout;
        let mut generations = self.generation_tx.subscribe();
        let mut told = false;
        loop {
            {
                let inner = self.lock();
                if matches!(self.phase(), Phase::Finished | Phase::Failed) {
                    return Err(Refusal::NotJoinable("the run has ended".into()));
                }
                if self.group_size(&inner) < self.max_workers() {
                    return Ok(());
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.full(worker_id, &inner));
                }
                if !told {
                    told = true;
                    tracing::info!(
                        worker = worker_id,
                        max = self.max_workers(),
                        "the group is full (--max-workers): the new worker waits for a place"
                    );
                }
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, generations.changed()).await;
        }
    }

    /// A member asks to re-form the group, or (`newcomer`) a new worker asks to join the running
    /// job; answers with its place in the new group.
    pub(crate) async fn rejoin(
        &self,
        req: JoinRequest,
        newcomer: bool,
    ) -> Result<Assignment, Refusal> {
        if newcomer {
            self.wait_for_room(&req.worker_id).await?;
        }
        let old_generation = {
            let mut inner = self.lock();
            match self.phase() {
                Phase::Running => {}
                Phase::Waiting => {
                    return Err(Refusal::NotJoinable(
                        "nothing to rejoin: the group has not formed yet".into(),
                    ))
                }
                Phase::Finished | Phase::Failed => {
                    return Err(Refusal::NotJoinable("the run has ended".into()))
                }
            }
            let position = inner
                .members
                .iter()
                .position(|m| m.worker_id == req.worker_id);
            let old_rank = match (position, newcomer) {
                (Some(r), false) => r,
                // Newcomers rank after every survivor (they hold no state yet).
                (None, true) => usize::MAX,
                (Some(_), true) => {
                    return Err(Refusal::NotJoinable(format!(
                        "a worker named '{}' is already in the group",
                        req.worker_id
                    )))
                }
                (None, false) => {
                    return Err(Refusal::Unknown(format!(
                        "'{}' is not a member of the running group and cannot rejoin it",
                        req.worker_id
                    )))
                }
            };
            if !self.can_heal() {
                return Err(Refusal::NotJoinable(
                    "the group cannot be re-formed: the coordinator has no checkpoint store (--out) to heal replicas through"
                        .into(),
                ));
            }
            if newcomer && self.group_size(&inner) >= self.max_workers() {
                // (Another newcomer took the place freed while this one waited.)
                return Err(self.full(&req.worker_id, &inner));
            }
            inner.highest_step = inner.highest_step.max(req.step);
            if inner.regroup.is_none() {
                let expected = inner.members.iter().map(|m| m.worker_id.clone()).collect();
                let reason = if newcomer {
                    tracing::info!(worker = %req.worker_id, "a new worker joins the running job: re-forming the group");
                    format!("'{}' joined the running job", req.worker_id)
                } else {
                    tracing::warn!(worker = %req.worker_id, step = req.step, "a worker's collective failed: re-forming the group");
                    format!("'{}' lost its peers at step {}", req.worker_id, req.step)
                };
                inner.regroup = Some(Regroup {
                    expected,
                    short_since: None,
                    rejoined: Vec::new(),
                    deadline: Instant::now() + self.cfg.regroup_timeout,
                    reason,
                });
            }
            let generation = inner.generation;
            let r = inner
                .regroup
                .as_mut()
                .ok_or_else(|| Refusal::Unknown("regroup vanished".into()))?;
            if newcomer && !r.expects(&req.worker_id) {
                r.expected.push(req.worker_id.clone());
            }
            if !r.expects(&req.worker_id) {
                return Err(Refusal::NotJoinable(format!(
                    "'{}' was dropped from the group as silent",
                    req.worker_id
                )));
            }
            r.rejoined.retain(|(_, q)| q.worker_id != req.worker_id);
            r.rejoined.push((old_rank, req.clone()));
            tracing::info!(worker = %req.worker_id, step = req.step, rejoined = r.rejoined.len(), expected = r.expected.len(), "worker rejoined");
            let complete = r.rejoined.len() == r.expected.len();
            drop(inner);
            if complete {
                self.finish_regroup();
            }
            generation
        };
        let mut rx = self.generation_tx.subscribe();
        // Survivors may have to wait for replacements (below --min-workers) up to the join
        // timeout, on top of the regroup window.
        let wait = self.cfg.regroup_timeout + self.cfg.join_timeout + Duration::from_secs(5);
        let _ = tokio::time::timeout(wait, rx.wait_for(|g| *g > old_generation)).await;
        let inner = self.lock();
        if self.phase() == Phase::Failed {
            return Err(Refusal::NotJoinable(
                inner
                    .failure
                    .clone()
                    .unwrap_or_else(|| "the run failed while re-forming".into()),
            ));
        }
        let rank = inner
            .members
            .iter()
            .position(|m| m.worker_id == req.worker_id)
            .filter(|_| inner.generation > old_generation)
            .ok_or_else(|| Refusal::Timeout("the group was not re-formed in time".into()))?;
        // Rank 0 (the most advanced replica) uploads its state at this step; the others
        // download it.
        let resume_step = inner.members.first().map_or(0, |m| m.step);
        Ok(self.assignment(&inner, rank, resume_step, true))
    }

    /// Forms the new generation from the survivors that rejoined.
    fn finish_regroup(&self) {
        let mut inner = self.lock();
        let Some(r) = inner.regroup.take() else {
            return;
        };
        let mut rejoined = r.rejoined;
        // Most advanced first; ties keep the old order.
        rejoined.sort_by(|a, b| b.1.step.cmp(&a.1.step).then(a.0.cmp(&b.0)));
        let lost: Vec<String> = inner
            .members
            .iter()
            .map(|m| m.worker_id.clone())
            .filter(|w| !rejoined.iter().any(|(_, q)| &q.worker_id == w))
            .collect();
        let joined: Vec<String> = rejoined
            .iter()
            .filter(|(old, _)| *old == usize::MAX)
            .map(|(_, q)| q.worker_id.clone())
            .collect();
        let n = rejoined.len();
        if n < self.cfg.min_workers.max(1) {
            let short_since = r.short_since.unwrap_or_else(Instant::now);
            if short_since.elapsed() < self.cfg.join_timeout {
                // Wait for replacements: the survivors stay in the regroup, a new worker joining
                // completes it.
                tracing::warn!(
                    have = n,
                    need = self.cfg.min_workers,
                    lost = ?lost,
                    waiting_s = self.cfg.join_timeout.as_secs(),
                    "fewer workers than --min-workers: waiting for replacements to join"
                );
                inner.regroup = Some(Regroup {
                    expected: rejoined.iter().map(|(_, q)| q.worker_id.clone()).collect(),
                    short_since: Some(short_since),
                    rejoined,
                    deadline: short_since + self.cfg.join_timeout,
                    reason: r.reason,
                });
                return;
            }
            drop(inner);
            self.fail(format!(
                "{} ({}); {n} worker(s) left, fewer than --min-workers {}, and no replacement joined within {:?}",
                r.reason,
                if lost.is_empty() {
                    "no worker lost".to_string()
                } else {
                    format!("lost: {}", lost.join(", "))
                },
                self.cfg.min_workers,
                self.cfg.join_timeout
            ));
            return;
        }
        if joined.len() == n {
            // Nobody who holds the run's state is left: a newcomer would "heal" the others from
            // its fresh model. The central store has the newest state; a restarted coordinator
            // serves it.
            let stored = inner
                .stored_step
                .map_or_else(|| "none yet".to_string(), |s| format!("step {s}"));
            drop(inner);
            self.fail(format!(
                "{}: every worker holding the run's state is lost ({}), and the worker(s) that joined ({}) have nothing to continue from; restart the coordinator with --resume auto to continue from its newest checkpoint ({stored})",
                r.reason,
                lost.join(", "),
                joined.join(", ")
            ));
            return;
        }
        let now = Instant::now();
        inner.members = rejoined
            .iter()
            .map(|(_, q)| Member {
                worker_id: q.worker_id.clone(),
                data_addr: q.data_addr.clone(),
                device: q.device.clone(),
                nccl_id: q.nccl_id.clone(),
                last_seen: now,
                step: q.step,
                loss: f64::NAN,
                images_per_sec: 0.0,
                misses: 0,
            })
            .collect();
        inner.world = n;
        inner.generation += 1;
        inner.finished = vec![None; n];
        // Epoch reports of the old group that never completed are dropped; the new group
        // reports its epochs afresh.
        inner.reports.clear();
        inner.partial.clear();
        let resumed = inner.members.first().map_or(0, |m| m.step);
        let record = RegroupRecord {
            generation: inner.generation,
            world: n,
            lost: lost.clone(),
            joined: joined.clone(),
            resumed_step: resumed,
            highest_step_seen: inner.highest_step,
            steps_lost: inner.highest_step.saturating_sub(resumed),
        };
        tracing::warn!(
            generation = record.generation,
            world = n,
            lost = ?lost,
            joined = ?joined,
            resumed_step = resumed,
            steps_lost = record.steps_lost,
            "group re-formed"
        );
        inner.regroups.push(record);
        for _ in &lost {
            crate::metrics::membership("lost");
        }
        for _ in &joined {
            crate::metrics::membership("joined");
        }
        metrics::gauge!(crate::metrics::GENERATION).set(inner.generation as f64);
        metrics::gauge!(crate::metrics::WORKERS_ALIVE).set(n as f64);
        self.generation_tx.send_replace(inner.generation);
    }
}
