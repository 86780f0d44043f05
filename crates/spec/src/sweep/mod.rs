//! Hyperparameter search: a declared space, seeded sampling, and a scheduler for random search
//! and (synchronous) successive halving. The scheduler is pure bookkeeping — it hands out
//! [`TrialTask`]s and takes [`TrialResult`]s — so the same logic drives trials run in one process
//! (`resnet sweep`) and trials spread over a cluster's workers (`coordinator --sweep`).
//!
//! ```text
//! space.rs      the search space, seeded sampling, trials (config with the sample applied)
//! scheduler.rs  random search and successive halving: tasks out, results in, the leaderboard
//! report.rs     the leaderboard as results.csv (through the csv crate) and as a text table
//! ```

mod report;
mod scheduler;
mod space;

pub use scheduler::{Next, SweepMethod, SweepScheduler, TrialResult, TrialStatus, TrialTask};
pub use space::{apply, trial_seed, Dist, SweepSpace, Trial};

#[cfg(test)]
pub(crate) mod test_support {
    //! A space and results shared by the sweep's tests.
    use super::TrialResult;

    pub const SPACE: &str = r#"
[params]
"optim.lr" = { log_uniform = [1e-3, 1e-1] }
label_smoothing = { uniform = [0.0, 0.2] }
batch_size = { choice = [16, 32] }
"data.augment.cutout" = { int_uniform = [0, 8] }
"#;

    pub fn result(epochs: usize, acc: f64) -> TrialResult {
        TrialResult {
            epochs,
            accuracy: acc,
            loss: 1.0 - acc,
            param_hash: String::new(),
            seconds: 0.0,
        }
    }
}
