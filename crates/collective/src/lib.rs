//! Collectives for data-parallel training. Gradients flow only between workers (never through the
//! coordinator), as a bandwidth-optimal ring all-reduce: reduce-scatter, then all-gather, each
//! `world - 1` steps of one chunk, so every rank sends and receives `2 (n-1)/n` of the buffer.
//!
//! One ring algorithm ([`ring`]) runs over any [`RingLink`] (send to the next rank, receive from
//! the previous one): [`memory::MemoryRing`] for ranks that are threads of one process and
//! [`tcp::TcpRing`] for ranks in different processes. Same algorithm, same chunking, same order of
//! floating-point additions, so both give bit-identical results. NCCL (CUDA issue) implements the
//! same [`Collective`] trait ([`nccl`], feature `nccl`).

pub mod memory;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ring;
pub mod tcp;

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
    /// Element-wise mean over all ranks, in place.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce_sum(buf)?;
        let n = self.world() as f32;
        if n > 1.0 {
            buf.iter_mut().for_each(|v| *v /= n);
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
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CollectiveError> {
        ring::broadcast(self, buf, root)
    }
}
