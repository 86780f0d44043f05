//! `coordinator --sweep`: hands hyperparameter-search trials to workers and collects their
//! results. The search itself (sampling, rungs, promotion) is [`SweepScheduler`]; this module adds
//! what a cluster needs around it: build checks, leases (a trial whose worker falls silent is
//! handed to another worker), affinity (a promoted trial goes back to the worker that holds its
//! checkpoint when that worker asks), and the results files.

// tonic's handler signatures fix `Result<_, Status>`.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resnet_proto::v1;
use resnet_proto::v1::trial_assignment::Kind;
use resnet_spec::sweep::{Next, SweepScheduler, TrialResult};
use tonic::{Request, Response, Status};

/// Shared state of a sweep coordinator.
pub struct SweepCoordinator {
    inner: Mutex<Inner>,
    fingerprint: String,
    lease: Duration,
    out: Option<PathBuf>,
}

struct Inner {
    sched: SweepScheduler,
    /// Running trial -> (worker, last sign of life).
    running: HashMap<usize, (String, Instant)>,
    /// Worker -> (last seen, trials it trained, told "done").
    workers: BTreeMap<String, (Instant, Vec<usize>, bool)>,
    done_at: Option<Instant>,
}

impl SweepCoordinator {
    /// A coordinator over `sched`; a running trial is re-assigned after `lease` without word
    /// from its worker; results go to `out`.
    pub fn new(
        sched: SweepScheduler,
        fingerprint: String,
        lease: Duration,
        out: Option<PathBuf>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sched,
                running: HashMap::new(),
                workers: BTreeMap::new(),
                done_at: None,
            }),
            fingerprint,
            lease,
            out,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next assignment for `worker`.
    pub fn next_trial(
        &self,
        worker: &str,
        fingerprint: &str,
    ) -> Result<v1::TrialAssignment, Status> {
        if fingerprint != self.fingerprint {
            return Err(Status::failed_precondition(format!(
                "worker {worker} runs {fingerprint}, this coordinator {}; use the same build",
                self.fingerprint
            )));
        }
        if worker.is_empty() {
            return Err(Status::invalid_argument("worker_id is empty"));
        }
        let mut g = self.lock();
        let now = Instant::now();
        let entry = g
            .workers
            .entry(worker.to_string())
            .or_insert_with(|| (now, Vec::new(), false));
        entry.0 = now;
        let prefer = entry.1.clone();
        let reply = match g.sched.next_preferring(&prefer) {
            Next::Task(t) => {
                g.running.insert(t.trial.id, (worker.to_string(), now));
                if let Some(w) = g.workers.get_mut(worker) {
                    w.1.push(t.trial.id);
                }
                tracing::info!(
                    worker,
                    trial = t.trial.id,
                    rung = t.rung,
                    epochs = t.epochs,
                    "trial assigned"
                );
                v1::TrialAssignment {
                    kind: Kind::Task as i32,
                    trial: t.trial.id as u32,
                    rung: t.rung as u32,
                    epochs: t.epochs as u32,
                    seed: t.trial.seed,
                    config_json: serde_json::to_string(&t.trial.config)
                        .map_err(|e| Status::internal(e.to_string()))?,
                    params_json: serde_json::to_string(&t.trial.params)
                        .map_err(|e| Status::internal(e.to_string()))?,
                }
            }
            Next::Wait => assignment(Kind::Wait),
            Next::Done => {
                if g.done_at.is_none() {
                    g.done_at = Some(now);
                    self.write_results(&g.sched);
                }
                if let Some(w) = g.workers.get_mut(worker) {
                    w.2 = true;
                }
                assignment(Kind::Done)
            }
        };
        Ok(reply)
    }

    /// A result, failure or heartbeat from a worker.
    pub fn report(&self, r: v1::TrialReport) -> Result<(), Status> {
        let mut g = self.lock();
        let now = Instant::now();
        if let Some(w) = g.workers.get_mut(&r.worker_id) {
            w.0 = now;
        }
        let trial = r.trial as usize;
        let holder = g.running.get(&trial).map(|(w, _)| w.clone());
        if holder.as_deref() != Some(r.worker_id.as_str()) {
            // The lease ran out and the trial went elsewhere: this worker's word no longer counts.
            tracing::warn!(worker = %r.worker_id, trial, "report for a trial this worker no longer holds; ignored");
            return Err(Status::failed_precondition(format!(
                "trial {trial} is not assigned to {} (its lease expired)",
                r.worker_id
            )));
        }
        if r.heartbeat {
            if let Some(l) = g.running.get_mut(&trial) {
                l.1 = now;
            }
            return Ok(());
        }
        g.running.remove(&trial);
        if r.error.is_empty() {
            tracing::info!(worker = %r.worker_id, trial, rung = r.rung, accuracy = r.accuracy, loss = r.loss, "trial finished");
            g.sched.report(
                trial,
                r.rung as usize,
                TrialResult {
                    epochs: r.epochs as usize,
                    accuracy: r.accuracy,
                    loss: r.loss,
                    param_hash: r.param_hash,
                    seconds: r.seconds,
                },
            );
        } else {
            tracing::error!(worker = %r.worker_id, trial, error = %r.error, "trial failed; the sweep goes on without it");
            g.sched.fail(trial);
        }
        Ok(())
    }

    /// Hands out again the trials whose workers have been silent longer than the lease.
    pub fn expire_leases(&self) {
        let mut g = self.lock();
        let lease = self.lease;
        let stale: Vec<(usize, String)> = g
            .running
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > lease)
            .map(|(id, (w, _))| (*id, w.clone()))
            .collect();
        for (id, worker) in stale {
            tracing::warn!(trial = id, %worker, lease_s = lease.as_secs(), "worker silent; trial handed out again");
            g.running.remove(&id);
            g.sched.release(id);
        }
    }

    /// True once every trial is done and each worker that asked has been told so (or a few
    /// seconds passed for those that did not ask again).
    pub fn finished(&self) -> bool {
        let g = self.lock();
        g.done_at.is_some_and(|t| {
            g.workers.values().all(|w| w.2) || t.elapsed() > Duration::from_secs(5)
        })
    }

    /// The scheduler's current state.
    pub fn scheduler(&self) -> SweepScheduler {
        self.lock().sched.clone()
    }

    fn write_results(&self, sched: &SweepScheduler) {
        let Some(out) = &self.out else { return };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(out)?;
            std::fs::write(out.join("results.csv"), sched.results_csv())?;
            let json = serde_json::to_string_pretty(&sched.leaderboard())
                .map_err(std::io::Error::other)?;
            std::fs::write(out.join("sweep.json"), json)
        };
        if let Err(e) = write() {
            tracing::error!(dir = %out.display(), error = %e, "cannot write the sweep results");
        }
    }
}

fn assignment(kind: Kind) -> v1::TrialAssignment {
    v1::TrialAssignment {
        kind: kind as i32,
        ..Default::default()
    }
}

/// tonic service over a shared [`SweepCoordinator`].
pub struct SweepService(pub Arc<SweepCoordinator>);

#[tonic::async_trait]
impl v1::sweep_server::Sweep for SweepService {
    async fn next_trial(
        &self,
        req: Request<v1::TrialRequest>,
    ) -> Result<Response<v1::TrialAssignment>, Status> {
        let t = Instant::now();
        let r = req.into_inner();
        let out = self
            .0
            .next_trial(&r.worker_id, &r.fingerprint)
            .map(Response::new);
        crate::metrics::grpc(
            "NextTrial",
            out.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
            t.elapsed().as_secs_f64(),
        );
        out
    }

    async fn report_trial(
        &self,
        req: Request<v1::TrialReport>,
    ) -> Result<Response<v1::Ack>, Status> {
        let t = Instant::now();
        let out = self
            .0
            .report(req.into_inner())
            .map(|()| Response::new(v1::Ack {}));
        crate::metrics::grpc(
            "ReportTrial",
            out.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
            t.elapsed().as_secs_f64(),
        );
        out
    }
}

/// Serves the sweep on `listener` until it is finished (token and mutual TLS as
/// [`crate::serve`]).
pub async fn serve_sweep(
    coord: Arc<SweepCoordinator>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    tls: Option<resnet_proto::TlsMaterial>,
) -> Result<(), String> {
    let svc = tonic::service::interceptor::InterceptedService::new(
        v1::sweep_server::SweepServer::new(SweepService(coord.clone())),
        resnet_proto::RequireToken::new(token.as_deref()),
    );
    let ticker = {
        let coord = coord.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                coord.expire_leases();
            }
        })
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        builder = builder
            .tls_config(t.server_config())
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let done = coord.clone();
    let result = builder
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                while !done.finished() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
        )
        .await
        .map_err(|e| e.to_string());
    ticker.abort();
    result
}
