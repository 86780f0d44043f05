//! The heartbeat thread: it reports progress to the coordinator and breaks the current ring
//! when the coordinator announces a regroup (or stops answering), and it carries a signalled
//! worker's leave. What it knows of the group is [`Membership`].
//!
//! (Over 400 lines with its unit tests; the code is ~260.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resnet_collective::tcp::RingAbort;
use resnet_proto::{ControlPlane, Heartbeat, Leave};

use crate::WorkerOptions;

/// Latest progress: written by the observer after every step, sent by the heartbeat thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Steps completed.
    pub step: u64,
    /// Last loss.
    pub loss: f64,
    /// Images per second of the last step.
    pub images_per_sec: f64,
}

/// What the heartbeat thread needs to know about the current generation.
#[derive(Default)]
pub(crate) struct Membership {
    pub rank: usize,
    pub generation: u64,
    /// Breaks the current ring when the coordinator says the group is re-forming.
    pub abort: Option<RingAbort>,
    /// Set by the heartbeat thread when the coordinator has been unreachable for
    /// [`COORDINATOR_LOST_AFTER`] heartbeats in a row.
    pub coordinator_lost: bool,
    /// Bumped each time this worker joins a group. A heartbeat's answer concerns the membership
    /// it was sent for: one that comes back after the worker rejoined (a restarted coordinator
    /// that did not know it yet) must not break the new ring.
    pub version: u64,
}

/// Consecutive failed heartbeats (2 s apart) after which the coordinator counts as gone: the
/// worker stops training (a restarted coordinator rolls back to its last checkpoint anyway) and
/// keeps rejoining until one answers.
pub(crate) const COORDINATOR_LOST_AFTER: u32 = 3;

/// Whether a control-plane error means the coordinator could not be reached (as opposed to a
/// refusal, which retrying would not change).
pub(crate) fn unreachable(e: &resnet_proto::ControlError) -> bool {
    e.0.contains("(Unavailable)") || e.0.contains("cannot reach") || e.0.contains("(Unknown)")
}

/// Flags shared by the heartbeat thread and the training thread.
#[derive(Clone, Default)]
pub(crate) struct Signals {
    /// A heartbeat reply said the coordinator was told to stop (SIGTERM to the coordinator):
    /// the whole group stops at a step boundary with a checkpoint.
    pub asked_to_stop: Arc<AtomicBool>,
    /// Set by this process's signal handler (SIGTERM to this worker): leave the group.
    pub leave: Option<Arc<AtomicBool>>,
    /// The heartbeat thread has announced the leave and broken the ring.
    pub left: Arc<AtomicBool>,
    /// The coordinator is re-forming the group this worker is in (set by the heartbeat thread
    /// under the membership lock, cleared with each new membership): the trainer ends its
    /// `fit` at the next step, which a replica alone in its group needs (no ring to break).
    pub regroup: Arc<AtomicBool>,
}

impl Signals {
    /// Whether this worker has left the group.
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::SeqCst)
    }

    fn leave_requested(&self) -> bool {
        self.leave
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
            && !self.has_left()
    }
}

/// The heartbeat thread, stopped and joined when dropped (so an early error return of the
/// worker leaves no thread beating for it).
pub(crate) struct Heartbeats {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeats {
    /// Starts [`spawn_heartbeats`] on `hb`.
    pub fn spawn(
        hb: Box<dyn ControlPlane>,
        opts: &WorkerOptions,
        membership: Arc<Mutex<Membership>>,
        progress: Arc<Mutex<Progress>>,
        signals: Signals,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = spawn_heartbeats(hb, opts, membership, progress, stop.clone(), signals);
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends heartbeats every `opts.heartbeat_every` until `stop`; on a regroup answer, breaks the
/// ring so a collective waiting on a dead peer returns at once. When `signals.leave` is raised
/// (SIGTERM), announces the leave, breaks the ring (the peers' collectives fail at once and
/// they re-form without this worker) and stops beating.
pub(crate) fn spawn_heartbeats(
    mut hb: Box<dyn ControlPlane>,
    opts: &WorkerOptions,
    membership: Arc<Mutex<Membership>>,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
    signals: Signals,
) -> std::thread::JoinHandle<()> {
    let (every, worker_id) = (opts.heartbeat_every, opts.worker_id.clone());
    std::thread::spawn(move || {
        let mut failures = 0u32;
        let mut seen_version = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let start = std::time::Instant::now();
            while start.elapsed() < every
                && !stop.load(Ordering::Relaxed)
                && !signals.leave_requested()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if signals.leave_requested() {
                leave(&mut *hb, &worker_id, &membership, &progress, &signals);
                break;
            }
            let p = *progress.lock().unwrap_or_else(|p| p.into_inner());
            let (rank, generation, lost, version) = {
                let m = membership.lock().unwrap_or_else(|p| p.into_inner());
                (m.rank, m.generation, m.coordinator_lost, m.version)
            };
            // Failures counted against an older group (or before this worker rejoined) say
            // nothing about the new one.
            if version != seen_version || (!lost && failures >= COORDINATOR_LOST_AFTER) {
                seen_version = version;
                failures = 0;
            }
            let beat = Heartbeat {
                worker_id: worker_id.clone(),
                rank,
                generation,
                step: p.step,
                loss: p.loss,
                images_per_sec: p.images_per_sec,
            };
            let reply = hb.heartbeat(beat);
            // Unreachable, or answered by a coordinator that does not know this worker (it was
            // restarted): either way this worker must rejoin. An unknown-worker answer is
            // definite, so it does not wait out the retries meant for a flaky network (a short
            // run could otherwise end before the worker notices and lose its last reports).
            failures = match &reply {
                Err(e) if e.0.contains("(NotFound)") => {
                    failures.max(COORDINATOR_LOST_AFTER - 1) + 1
                }
                Err(e) if unreachable(e) => failures + 1,
                _ => 0,
            };
            // The answer is about the membership the beat was sent for; if the worker has
            // joined a group since, it is stale and the new ring stays untouched.
            let current = |m: &Membership| m.version == version;
            if failures == COORDINATOR_LOST_AFTER {
                let mut m = membership.lock().unwrap_or_else(|p| p.into_inner());
                if current(&m) {
                    m.coordinator_lost = true;
                    if let Some(a) = m.abort.take() {
                        tracing::error!(rank, "the coordinator is unreachable: stopping training and waiting to rejoin a restarted one");
                        a.abort();
                    }
                }
            }
            match reply {
                Ok(reply) if reply.regroup => {
                    let abort = {
                        let mut m = membership.lock().unwrap_or_else(|p| p.into_inner());
                        if current(&m) {
                            signals.regroup.store(true, Ordering::SeqCst);
                            m.abort.take()
                        } else {
                            None
                        }
                    };
                    if let Some(a) = abort {
                        tracing::warn!(rank, generation, "the coordinator is re-forming the group: aborting the collective in flight");
                        a.abort();
                    }
                }
                Ok(reply) if reply.stop => {
                    if !signals.asked_to_stop.swap(true, Ordering::Relaxed) {
                        tracing::warn!(rank, "the coordinator asks the run to stop: stopping at the next step boundary with a checkpoint");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(rank, error = %e, "heartbeat failed"),
            }
        }
    })
}

/// Tells the coordinator this worker leaves, then breaks its ring. In that order: the peers
/// whose collectives fail rejoin a regroup that already does not expect this worker.
fn leave(
    hb: &mut dyn ControlPlane,
    worker_id: &str,
    membership: &Mutex<Membership>,
    progress: &Mutex<Progress>,
    signals: &Signals,
) {
    let step = progress.lock().unwrap_or_else(|p| p.into_inner()).step;
    let (rank, generation) = {
        let m = membership.lock().unwrap_or_else(|p| p.into_inner());
        (m.rank, m.generation)
    };
    tracing::warn!(
        rank,
        step,
        "signal received: leaving the group (the others continue without this worker)"
    );
    if let Err(e) = hb.leave(Leave {
        worker_id: worker_id.to_string(),
        rank,
        generation,
        step,
        reason: "SIGTERM".into(),
        diverged: false,
        loss: f64::NAN,
    }) {
        tracing::warn!(error = %e, "could not announce the leave: the coordinator will notice the silence instead");
    }
    signals.left.store(true, Ordering::SeqCst);
    if let Some(a) = membership
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .abort
        .take()
    {
        a.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resnet_proto::{
        Assignment, CheckpointFiles, ControlError, EpochReport, Finish, HeartbeatReply, JoinRequest,
    };

    /// Answers heartbeats with what `reply` says for the n-th call (1-based); `on_first` runs
    /// while the first beat is "in flight".
    struct Fake {
        calls: Arc<Mutex<usize>>,
        on_first: Option<Box<dyn FnOnce() + Send>>,
        not_found_until: usize,
    }

    impl ControlPlane for Fake {
        fn join(&mut self, _: JoinRequest) -> Result<Assignment, ControlError> {
            Err(ControlError("unused".into()))
        }
        fn heartbeat(&mut self, _: Heartbeat) -> Result<HeartbeatReply, ControlError> {
            let n = {
                let mut c = self.calls.lock().expect("calls");
                *c += 1;
                *c
            };
            if let Some(f) = self.on_first.take() {
                f();
            }
            if n <= self.not_found_until {
                Err(ControlError(
                    "heartbeat refused (NotFound): unknown worker 'w1'".into(),
                ))
            } else {
                Ok(HeartbeatReply {
                    stop: false,
                    regroup: false,
                })
            }
        }
        fn report_epoch(&mut self, _: EpochReport) -> Result<(), ControlError> {
            Err(ControlError("unused".into()))
        }
        fn finish(&mut self, _: Finish) -> Result<(), ControlError> {
            Err(ControlError("unused".into()))
        }
        fn upload_checkpoint(&mut self, _: &CheckpointFiles) -> Result<String, ControlError> {
            Err(ControlError("unused".into()))
        }
        fn download_checkpoint(
            &mut self,
            _: &str,
            _: u64,
            _: u64,
        ) -> Result<CheckpointFiles, ControlError> {
            Err(ControlError("unused".into()))
        }
    }

    fn opts() -> WorkerOptions {
        WorkerOptions {
            worker_id: "w1".into(),
            data_dir: None,
            device: "cpu".into(),
            collective_timeout: Duration::from_secs(5),
            heartbeat_every: Duration::from_millis(10),
            ring_auth: [0; 32],
            out: None,
            rejoin_timeout: Duration::from_secs(5),
            ring_tls: None,
            allow_nccl: false,
            nccl_device_buffers: false,
            warm_up: false,
            kernels: Default::default(),
            leave_signal: None,
        }
    }

    /// Runs the heartbeat thread against `fake` until it has sent `beats` heartbeats.
    fn beat(fake: Fake, membership: &Arc<Mutex<Membership>>, beats: usize) {
        let calls = fake.calls.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_heartbeats(
            Box::new(fake),
            &opts(),
            membership.clone(),
            Arc::new(Mutex::new(Progress::default())),
            stop.clone(),
            Signals::default(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while *calls.lock().expect("calls") < beats && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().expect("heartbeat thread");
        assert!(
            *calls.lock().expect("calls") >= beats,
            "the thread stopped beating"
        );
    }

    fn member(abort: &RingAbort, version: u64) -> Membership {
        Membership {
            rank: 1,
            generation: 1,
            abort: Some(abort.clone()),
            coordinator_lost: false,
            version,
        }
    }

    #[test]
    fn an_unknown_worker_answer_breaks_the_current_ring() {
        let ring = RingAbort::default();
        let membership = Arc::new(Mutex::new(member(&ring, 1)));
        let fake = Fake {
            calls: Arc::default(),
            on_first: None,
            not_found_until: 1,
        };
        beat(fake, &membership, 3);
        assert!(ring.is_aborted());
        assert!(membership.lock().expect("m").coordinator_lost);
    }

    /// The flaky-CI case: a restarted coordinator answers "unknown worker" to a beat that was
    /// sent before this worker rejoined it; the ring of the group it has joined since must
    /// survive (breaking it forced an extra regroup and a heal from rank 0 mid-epoch).
    #[test]
    fn a_stale_answer_does_not_break_the_ring_of_a_newer_membership() {
        let (old, new) = (RingAbort::default(), RingAbort::default());
        let membership = Arc::new(Mutex::new(member(&old, 1)));
        let m = membership.clone();
        let joined = new.clone();
        let fake = Fake {
            calls: Arc::default(),
            on_first: Some(Box::new(move || {
                // The worker rejoins while the beat is in flight.
                *m.lock().expect("m") = Membership {
                    generation: 2,
                    ..member(&joined, 2)
                };
            })),
            not_found_until: 1,
        };
        beat(fake, &membership, 3);
        assert!(!new.is_aborted(), "a stale answer broke the new ring");
        assert!(!membership.lock().expect("m").coordinator_lost);
    }
}
