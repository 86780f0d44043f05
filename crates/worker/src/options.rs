//! What a worker is told locally (everything else comes from the coordinator) and what it
//! reports when it is done.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resnet_collective::memory::MemoryRing;
use resnet_kernels::KernelChoice;

/// How this worker exchanges gradients with its peers.
pub enum Transport {
    /// A TCP ring between processes: listen on `listen` (e.g. `0.0.0.0:7070`, port 0 picks one)
    /// and announce `advertise` to the peers (default: the bound address).
    Tcp {
        /// Address to bind.
        listen: String,
        /// Address peers should connect to.
        advertise: Option<String>,
    },
    /// Threads of one process: the ring end for the assigned rank is taken from this table.
    Memory(Arc<Mutex<Vec<Option<MemoryRing>>>>),
}

/// Local settings of a worker (everything else comes from the coordinator).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique id (default in the binary: host-pid).
    pub worker_id: String,
    /// This worker's copy of the data; overrides the directory in the run configuration.
    pub data_dir: Option<PathBuf>,
    /// Device description sent to the coordinator ("cpu", "cuda:0").
    pub device: String,
    /// Per-operation timeout of the ring (a dead peer becomes an error after this).
    pub collective_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat_every: Duration,
    /// SHA-256 of the cluster token (zeros without one), presented in the ring handshake.
    pub ring_auth: [u8; 32],
    /// Where rank 0 writes checkpoints, metrics.jsonl and config.json (other ranks ignore it;
    /// replicas are identical, so one copy is enough). None: no checkpoints.
    pub out: Option<PathBuf>,
    /// How long to keep trying to rejoin an unreachable (restarting) coordinator.
    pub rejoin_timeout: Duration,
    /// Mutual TLS on the gradient ring (None: plain TCP).
    pub ring_tls: Option<resnet_collective::tcp::RingTls>,
    /// Offer NCCL to the coordinator when on CUDA (false: always the TCP ring, e.g. several
    /// workers sharing one GPU, which NCCL refuses).
    pub allow_nccl: bool,
    /// With NCCL: all-reduce the gradients in GPU memory (`--nccl-buffers device`) instead of
    /// staging them through the host. Builds without `cuda` ignore it.
    pub nccl_device_buffers: bool,
    /// Before joining, fetch the run configuration and run one throwaway training step at its
    /// shapes (GPU workers: compiles the kernels outside the first all-reduce).
    pub warm_up: bool,
    /// The kernels the replica's model runs (its convolution precision comes from the run).
    pub kernels: KernelChoice,
    /// Raised by the binary's SIGTERM/SIGINT handler: leave the group (announced to the
    /// coordinator, which re-forms it without this worker at once) and end with
    /// [`WorkerError::Left`]. None: signals are not this worker's business (in-process runs).
    pub leave_signal: Option<Arc<AtomicBool>>,
}

/// What a worker reports when it is done.
#[derive(Debug, Clone)]
pub struct WorkerResult {
    /// Assigned rank.
    pub rank: usize,
    /// Group size.
    pub world: usize,
    /// Steps trained.
    pub steps: usize,
    /// Hash of the final parameters and BatchNorm statistics.
    pub param_hash: String,
    /// The coordinator stopped the run early (SIGTERM) and the group saved a checkpoint.
    pub interrupted: bool,
}
