//! The coordinator: the cluster's control plane. It admits workers (protocol and build checks),
//! assigns ranks and a generation once the group is complete, hands every worker the run
//! configuration and the ring's peer addresses, tracks liveness and progress, sums the ranks'
//! exact evaluation counts each epoch, and ends the run with a summary. Gradients never pass
//! through it.

mod checkpoints;
mod join;
mod liveness;
pub mod metrics;
mod phase;
mod regroup;
mod reports;
mod service;
mod state;
pub mod store;
mod summary;
pub mod sweep;

pub use service::{serve, CoordinatorService};
pub use state::{Coordinator, CoordinatorConfig, Phase, Refusal};
pub use summary::{merge_epoch, ClusterEpoch, RegroupRecord, RunSummary};
