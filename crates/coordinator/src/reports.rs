//! What the workers report while the run goes on: heartbeats (liveness, progress, the answer
//! to stop or regroup), each epoch's exact counts (merged into the cluster's epoch when every
//! rank has reported), and the final hashes (the summary).

use std::time::Instant;

use resnet_proto::{EpochReport, Finish, Heartbeat};

use crate::state::{Coordinator, Phase, Refusal};
use crate::summary::{merge_epoch, write_json, write_lines, ClusterEpoch, RunSummary};

impl Coordinator {
    /// Records liveness and progress. Returns whether the worker should stop.
    pub fn heartbeat(&self, hb: Heartbeat) -> Result<resnet_proto::HeartbeatReply, Refusal> {
        let mut inner = self.lock();
        // A member of an older generation, or any member while the group re-forms: rejoin.
        let regrouping = inner.regroup.is_some() || hb.generation < inner.generation;
        let known = inner.members.iter().any(|m| m.worker_id == hb.worker_id)
            || inner
                .regroup
                .as_ref()
                .is_some_and(|r| r.expects(&hb.worker_id));
        if regrouping && known {
            inner.highest_step = inner.highest_step.max(hb.step);
            return Ok(resnet_proto::HeartbeatReply {
                stop: false,
                regroup: true,
            });
        }
        let idx = self.member(&inner, &hb.worker_id, hb.rank, hb.generation)?;
        inner.highest_step = inner.highest_step.max(hb.step);
        let m = &mut inner.members[idx];
        m.last_seen = Instant::now();
        m.misses = 0;
        m.step = hb.step;
        m.loss = hb.loss;
        m.images_per_sec = hb.images_per_sec;
        metrics::counter!(crate::metrics::HEARTBEATS_TOTAL).increment(1);
        let slowest = inner.members.iter().map(|m| m.step).min().unwrap_or(0);
        metrics::gauge!(crate::metrics::RUN_STEP).set(slowest as f64);
        let reply = resnet_proto::HeartbeatReply {
            stop: inner.stopping,
            regroup: false,
        };
        // Rank 0's progress is the run's loss curve between epochs (steps.jsonl).
        let line = match &self.cfg.out {
            Some(out) if idx == 0 && hb.step > inner.step_logged && !inner.step_log_failed => {
                inner.step_logged = hb.step;
                let epoch = inner.epochs.len() + 1;
                Some((
                    out.join(resnet_spec::STEP_LOG),
                    resnet_spec::step_log::heartbeat_record(
                        hb.step as usize,
                        epoch,
                        hb.loss,
                        hb.images_per_sec,
                    ),
                ))
            }
            _ => None,
        };
        drop(inner);
        if let Some((path, r)) = line {
            if let Err(e) = resnet_spec::step_log::append(&path, &r) {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the step metrics (the run goes on; not retried)");
                self.lock().step_log_failed = true;
            }
        }
        Ok(reply)
    }

    /// Stores one rank's epoch counts; when every rank has reported the epoch, logs and records
    /// the cluster's epoch.
    pub fn report_epoch(&self, r: EpochReport) -> Result<(), Refusal> {
        let complete = r.complete;
        let mut inner = self.lock();
        let idx = self.member(&inner, &r.worker_id, r.rank, r.generation)?;
        let k = r.num_classes;
        // A peer's num_classes may be anything: no k * k before the bound (found by
        // tests/fuzz_requests.rs: it overflowed and panicked).
        if !r.confusion.is_empty() && (k == 0 || k > 10_000 || r.confusion.len() != k * k) {
            return Err(Refusal::Invalid(match k.checked_mul(k) {
                Some(kk) if (1..=10_000).contains(&k) => format!(
                    "confusion has {} entries, expected num_classes^2 = {kk}",
                    r.confusion.len()
                ),
                _ => format!("num_classes = {k} is out of range (1..=10000)"),
            }));
        }
        let n = inner.world;
        let epoch = r.epoch;
        let table = if complete {
            &mut inner.reports
        } else {
            &mut inner.partial
        };
        let slot = table.entry(epoch).or_insert_with(|| vec![None; n]);
        slot[idx] = Some(r);
        if slot.iter().all(Option::is_some) {
            let reports: Vec<EpochReport> = slot.iter().flatten().cloned().collect();
            let merged = merge_epoch(&reports, complete, &self.classes);
            log_epoch(&merged);
            if complete {
                let done = inner.epochs.iter().filter(|e| e.complete).count() + 1;
                crate::metrics::epoch(&merged, done);
                if let (Some(store), Some(t)) = (&self.store, &merged.test) {
                    store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record_accuracy(merged.step, t.accuracy);
                }
            }
            inner.epochs.push(merged);
            if let Some(out) = &self.cfg.out {
                write_lines(&out.join("metrics.jsonl"), &inner.epochs);
            }
        }
        Ok(())
    }

    /// Records a finished worker; the last one completes the run.
    pub fn finish(&self, f: Finish) -> Result<(), Refusal> {
        let mut inner = self.lock();
        let idx = self.member(&inner, &f.worker_id, f.rank, f.generation)?;
        tracing::info!(worker = %f.worker_id, rank = idx, steps = f.steps, param_hash = %f.param_hash, "worker finished");
        inner.finished[idx] = Some(f);
        crate::metrics::membership("finished");
        if inner.finished.iter().all(Option::is_some) {
            let hashes: Vec<String> = inner
                .finished
                .iter()
                .flatten()
                .map(|f| f.param_hash.clone())
                .collect();
            let summary = RunSummary {
                world: inner.members.len(),
                generation: inner.generation,
                steps: inner
                    .finished
                    .iter()
                    .flatten()
                    .map(|f| f.steps)
                    .max()
                    .unwrap_or(0),
                epochs: inner.epochs.clone(),
                replicas_identical: hashes.iter().all(|h| h == &hashes[0]),
                param_hashes: hashes,
                final_eval: inner.epochs.iter().rev().find_map(|e| e.test.clone()),
                regroups: inner.regroups.clone(),
                failed_checkpoints: inner.failed_stores.clone(),
                stored_step: inner.stored_step,
                interrupted: inner.stopping,
            };
            if let Some(out) = &self.cfg.out {
                write_json(&out.join("summary.json"), &summary);
            }
            inner.summary = Some(summary);
            self.set_phase(Phase::Finished);
        }
        Ok(())
    }

    /// Per-worker progress for logs: (worker id, step, loss, images/s, seconds since heard from).
    pub fn progress(&self) -> Vec<(String, u64, f64, f64, f64)> {
        self.lock()
            .members
            .iter()
            .map(|m| {
                (
                    m.worker_id.clone(),
                    m.step,
                    m.loss,
                    m.images_per_sec,
                    m.last_seen.elapsed().as_secs_f64(),
                )
            })
            .collect()
    }

    /// Workers joined so far and their devices.
    pub fn members(&self) -> Vec<(String, String)> {
        self.lock()
            .members
            .iter()
            .map(|m| (m.worker_id.clone(), m.device.clone()))
            .collect()
    }
}

fn log_epoch(e: &ClusterEpoch) {
    let test = e
        .test
        .as_ref()
        .map(|t| {
            format!(
                " | test acc {:.4} top5 {:.4} loss {:.4} ({} images)",
                t.accuracy, t.top5, t.loss, t.samples
            )
        })
        .unwrap_or_default();
    let what = if e.complete { "epoch" } else { "partial epoch" };
    tracing::info!(
        "{what} {} step {} | train loss {:.4} acc {:.4} | lr {:.5} | {:.0} img/s{test}",
        e.epoch,
        e.step,
        e.train_loss,
        e.train_accuracy,
        e.lr,
        e.images_per_sec
    );
}
