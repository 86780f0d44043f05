//! Where a run is, from the first join to the end. Its own file because the state
//! (`state.rs`) and the Prometheus series (`metrics.rs`) both use it.

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for workers to join.
    Waiting,
    /// All workers joined; training.
    Running,
    /// Every worker finished.
    Finished,
    /// The run cannot complete (a worker died or failed); see `Coordinator::failure`.
    Failed,
}
