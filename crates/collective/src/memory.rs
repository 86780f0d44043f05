//! Ranks that are threads of one process: a ring of channels. Used by `coordinator --local` and
//! by tests; unbounded channels make `send` non-blocking as the ring requires.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::ring::RingLink;
use crate::CollectiveError;

/// One rank's end of an in-memory ring.
pub struct MemoryRing {
    rank: usize,
    world: usize,
    next: Sender<Vec<f32>>,
    prev: Receiver<Vec<f32>>,
    timeout: Duration,
}

impl MemoryRing {
    /// Creates the `world` connected ends; hand one to each thread.
    pub fn group(world: usize, timeout: Duration) -> Vec<MemoryRing> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..world).map(|_| channel()).unzip();
        // Rank r receives on channel r and sends on channel r + 1.
        receivers
            .into_iter()
            .enumerate()
            .map(|(rank, prev)| MemoryRing {
                rank,
                world,
                next: senders[(rank + 1) % world].clone(),
                prev,
                timeout,
            })
            .collect()
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }
}

impl RingLink for MemoryRing {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn send(&mut self, data: &[f32]) -> Result<(), CollectiveError> {
        let peer = (self.rank + 1) % self.world;
        self.next
            .send(data.to_vec())
            .map_err(|_| CollectiveError::Disconnected {
                peer,
                detail: "its end of the ring was dropped".into(),
            })
    }
    fn recv(&mut self, out: &mut [f32]) -> Result<(), CollectiveError> {
        let peer = self.prev_rank();
        let msg = self.prev.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CollectiveError::Timeout {
                peer,
                timeout: self.timeout,
            },
            RecvTimeoutError::Disconnected => CollectiveError::Disconnected {
                peer,
                detail: "its end of the ring was dropped".into(),
            },
        })?;
        if msg.len() != out.len() {
            return Err(CollectiveError::Protocol {
                peer,
                detail: format!("{} elements, expected {}", msg.len(), out.len()),
            });
        }
        out.copy_from_slice(&msg);
        Ok(())
    }
}
