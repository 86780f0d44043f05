//! Collectives for data-parallel training. Gradients flow only between workers (never through the
//! coordinator), as a bandwidth-optimal ring all-reduce: reduce-scatter, then all-gather, each
//! `world - 1` steps of one chunk, so every rank sends and receives `2 (n-1)/n` of the buffer.
//!
//! One ring algorithm ([`ring`]) runs over any [`RingLink`] (send to the next rank, receive from
//! the previous one): [`memory::MemoryRing`] for ranks that are threads of one process and
//! [`tcp::TcpRing`] for ranks in different processes. Same algorithm, same chunking, same order of
//! floating-point additions, so both give bit-identical results. NCCL (CUDA issue) implements the
//! same [`Collective`] trait ([`nccl`], feature `nccl`).

pub mod cost;
mod handshake;
pub mod memory;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ring;
pub mod tcp;
pub mod wire;

pub use wire::Wire;

use std::time::Duration;

/// Collective errors: which peer, what was expected.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// No data from a peer within the timeout (a dead or stalled peer).
    #[error("timed out after {timeout:?} waiting for rank {peer}")]
    Timeout {
        /// The rank we waited for.
        peer: usize,
        /// The configured timeout.
        timeout: Duration,
    },
    /// A peer went away (closed connection, dropped channel).
    #[error("rank {peer} disconnected: {detail}")]
    Disconnected {
        /// The peer's rank.
        peer: usize,
        /// What happened.
        detail: String,
    },
    /// A peer sent something other than what the protocol expects.
    #[error("rank {peer} sent a malformed message: {detail}")]
    Protocol {
        /// The peer's rank.
        peer: usize,
        /// What was wrong.
        detail: String,
    },
    /// Setting up the ring failed.
    #[error("ring setup: {0}")]
    Setup(String),
    /// This collective cannot do what was asked (a configuration error, not a peer's fault).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Polls `done` until it reports completion, the `timeout` passes or `abort` is raised.
/// NCCL operations block inside a GPU kernel until every rank joins; a dead peer would hang the
/// others forever, so the NCCL collective waits through this instead of a blocking sync.
pub fn wait_for(
    mut done: impl FnMut() -> Result<bool, CollectiveError>,
    timeout: Duration,
    abort: &tcp::RingAbort,
    waiting_on: usize,
) -> Result<(), CollectiveError> {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_micros(10);
    loop {
        if done()? {
            return Ok(());
        }
        if abort.is_aborted() {
            return Err(CollectiveError::Disconnected {
                peer: waiting_on,
                detail: "aborted: the group changed (new generation)".into(),
            });
        }
        if start.elapsed() >= timeout {
            return Err(CollectiveError::Timeout {
                peer: waiting_on,
                timeout,
            });
        }
        std::thread::sleep(pause);
        // Short waits stay responsive; long ones do not burn a core.
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// A group of `world` ranks that can combine buffers. Every rank must make the same sequence of
/// calls with buffers of the same length.
pub trait Collective: Send {
    /// This rank, `0..world`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Element-wise sum over all ranks, in place; every rank ends with the same values.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError>;
    /// Copies `root`'s buffer to every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError>;
    /// This collective as an NCCL communicator, which can also reduce device memory in place
    /// of host slices; `None` for the rings.
    #[cfg(feature = "nccl")]
    fn as_nccl(&mut self) -> Option<&mut nccl::NcclCollective> {
        None
    }
    /// [`Self::all_reduce_sum`] with the transfers in `wire`'s element type. Only the rings
    /// have a bfloat16 wire; other collectives refuse it.
    fn all_reduce_sum_wire(&mut self, buf: &mut [f32], wire: Wire) -> Result<(), CollectiveError> {
        match wire {
            Wire::F32 => self.all_reduce_sum(buf),
            Wire::Bf16 => Err(CollectiveError::Unsupported(
                "this collective has no bf16 wire format (grad_wire = bf16 needs the TCP ring)"
                    .into(),
            )),
        }
    }
    /// [`Self::all_reduce_mean`] with the transfers in `wire`'s element type.
    fn all_reduce_mean_wire(&mut self, buf: &mut [f32], wire: Wire) -> Result<(), CollectiveError> {
        self.all_reduce_sum_wire(buf, wire)?;
        let n = self.world() as f32;
        if n > 1.0 {
            buf.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }
    /// Element-wise mean over all ranks, in place.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce_mean_wire(buf, Wire::F32)
    }
    /// Whether [`Self::all_reduce_sum_bucket`] works (the rings; not NCCL yet).
    fn reduces_buckets(&self) -> bool {
        false
    }
    /// The sum of one bucket of a flat buffer, bit-identical to what the whole buffer's
    /// [`Self::all_reduce_sum_wire`] gives its elements ([`ring::all_reduce_sum_bucket`]):
    /// `bucket` holds elements `offset..offset + bucket.len()` of a buffer of `total`.
    fn all_reduce_sum_bucket(
        &mut self,
        _bucket: &mut [f32],
        _offset: usize,
        _total: usize,
        _wire: Wire,
    ) -> Result<(), CollectiveError> {
        Err(CollectiveError::Unsupported(
            "this collective cannot reduce buckets of a buffer (overlap needs a ring)".into(),
        ))
    }
    /// [`Self::all_reduce_sum_bucket`], then divided by the number of ranks, as
    /// [`Self::all_reduce_mean_wire`] divides the whole buffer.
    fn all_reduce_mean_bucket(
        &mut self,
        bucket: &mut [f32],
        offset: usize,
        total: usize,
        wire: Wire,
    ) -> Result<(), CollectiveError> {
        self.all_reduce_sum_bucket(bucket, offset, total, wire)?;
        let n = self.world() as f32;
        if n > 1.0 {
            bucket.iter_mut().for_each(|v| *v /= n);
        }
        Ok(())
    }
}

/// Every ring link is a collective: the ring algorithm is written once, in [`ring`].
impl<L: ring::RingLink + Send> Collective for L {
    fn rank(&self) -> usize {
        ring::RingLink::rank(self)
    }
    fn world(&self) -> usize {
        ring::RingLink::world(self)
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        ring::all_reduce_sum(self, buf)
    }
    fn all_reduce_sum_wire(&mut self, buf: &mut [f32], wire: Wire) -> Result<(), CollectiveError> {
        ring::all_reduce_sum_wire(self, buf, wire)
    }
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        ring::broadcast(self, buf, root)
    }
    fn reduces_buckets(&self) -> bool {
        true
    }
    fn all_reduce_sum_bucket(
        &mut self,
        bucket: &mut [f32],
        offset: usize,
        total: usize,
        wire: Wire,
    ) -> Result<(), CollectiveError> {
        ring::all_reduce_sum_bucket(self, bucket, offset, total, wire)
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    #[test]
    fn wait_for_returns_on_completion_timeout_or_abort() {
        let abort = tcp::RingAbort::default();
        let mut polls = 0;
        let done_after_3 = || {
            polls += 1;
            Ok(polls >= 3)
        };
        assert!(wait_for(done_after_3, Duration::from_secs(5), &abort, 1).is_ok());

        let never = || Ok(false);
        let err = wait_for(never, Duration::from_millis(20), &abort, 2).expect_err("times out");
        assert!(
            matches!(err, CollectiveError::Timeout { peer: 2, .. }),
            "{err}"
        );

        let raised = abort.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            raised.abort();
        });
        let started = std::time::Instant::now();
        let err = wait_for(never, Duration::from_secs(30), &abort, 3).expect_err("aborted");
        assert!(
            matches!(err, CollectiveError::Disconnected { peer: 3, .. }),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "abort noticed late"
        );

        let failing = || Err(CollectiveError::Setup("CUDA error".into()));
        assert!(matches!(
            wait_for(
                failing,
                Duration::from_secs(5),
                &tcp::RingAbort::default(),
                0
            ),
            Err(CollectiveError::Setup(_))
        ));
    }
}
