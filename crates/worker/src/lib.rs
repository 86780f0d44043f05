//! A worker: one data-parallel replica. It joins the coordinator (which assigns its rank and
//! sends the run configuration), forms the gradient ring with its peers, trains its shard with
//! the shared training loop, reports exact per-epoch counts and a final parameter hash, and
//! leaves. Training runs on the calling thread; heartbeats go from a background thread.

#[cfg(feature = "cuda")]
pub mod device_reduce;
mod formation;
mod group;
mod heartbeat;
pub mod metrics;
mod observer;
mod options;
mod run;
mod sync;
pub mod upload;

pub use options::{Transport, WorkerOptions, WorkerResult};
pub use run::run_worker;
pub use sync::{sync_error, CollectiveSync};

/// Worker errors; each says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Talking to the coordinator failed.
    #[error(transparent)]
    Control(#[from] resnet_proto::ControlError),
    /// Forming the ring or an all-reduce failed.
    #[error("data plane: {0}")]
    Collective(#[from] resnet_collective::CollectiveError),
    /// The run configuration from the coordinator is unusable.
    #[error("run configuration from the coordinator: {0}")]
    Config(String),
    /// A local file or directory (scratch space, downloaded checkpoint) could not be written.
    #[error("local storage: {0}")]
    Storage(String),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] resnet_train::TrainError),
    /// This worker left the group on a signal; the others continue without it.
    #[error("left the group at step {step} on a signal; the other workers continue without this one (a restarted worker joins the running job)")]
    Left {
        /// Steps its replica had completed.
        step: u64,
    },
    /// Data could not be loaded.
    #[error(transparent)]
    Data(#[from] resnet_data::DataError),
    /// The data-plane socket could not be opened.
    #[error("data-plane listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

impl From<resnet_train::SpecError> for WorkerError {
    /// A checkpoint or configuration file's error reads as the trainer reports it.
    fn from(e: resnet_train::SpecError) -> Self {
        WorkerError::Train(e.into())
    }
}
