//! The divergence guard: what a step does when its loss is not a finite number. Every rank
//! raises a flag that rides on the gradient all-reduce, so a data-parallel group always takes
//! the same decision; the decision itself is this pure state machine.
//!
//! `stop` (the default) ends the run before the non-finite step touches the weights, with
//! [`TrainError::NonFinite`] (the binaries exit with a distinct code), so the newest checkpoint
//! holds the last finite weights and retention cannot prune it in favour of NaN checkpoints.
//! `skip-step` leaves the weights and the BatchNorm running statistics as they were before the
//! step and goes on with the next batch; after [`MAX_CONSECUTIVE_SKIPS`] skipped steps in a row
//! the run stops as with `stop` (a run that only skips is not training).

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Skipped steps in a row after which `skip-step` stops the run.
pub const MAX_CONSECUTIVE_SKIPS: usize = 10;

/// `on_nonfinite` / `--on-nonfinite`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinitePolicy {
    /// End the run with a distinct exit code before the step is applied.
    #[default]
    Stop,
    /// Drop the step (weights and BatchNorm statistics unchanged) and continue.
    SkipStep,
}

impl NonFinitePolicy {
    /// The name the flag and the config use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::SkipStep => "skip-step",
        }
    }
}

impl std::str::FromStr for NonFinitePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(Self::Stop),
            "skip-step" => Ok(Self::SkipStep),
            o => Err(format!(
                "unknown on_nonfinite '{o}': expected stop, skip-step"
            )),
        }
    }
}

/// What to do with a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Apply,
    /// Drop it and continue.
    Skip,
}

/// The guard's memory: skipped steps in a row and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    /// Consecutive skipped steps up to now.
    pub consecutive: usize,
    /// Skipped steps in this process.
    pub skipped: usize,
}

impl Guard {
    /// The verdict on step `step` (1-based, the step being taken) whose loss was `loss` here
    /// and whose group-wide flag says whether any rank saw a non-finite loss.
    pub fn decide(
        &mut self,
        policy: NonFinitePolicy,
        nonfinite_anywhere: bool,
        step: usize,
        loss: f64,
    ) -> Result<Verdict, TrainError> {
        if !nonfinite_anywhere {
            self.consecutive = 0;
            return Ok(Verdict::Apply);
        }
        let stop = |why: String| Err(TrainError::NonFinite { step, loss, why });
        match policy {
            NonFinitePolicy::Stop => stop("on_nonfinite = stop".into()),
            NonFinitePolicy::SkipStep if self.consecutive + 1 >= MAX_CONSECUTIVE_SKIPS => stop(
                format!("{MAX_CONSECUTIVE_SKIPS} steps in a row were not finite (on_nonfinite = skip-step)"),
            ),
            NonFinitePolicy::SkipStep => {
                self.consecutive += 1;
                self.skipped += 1;
                Ok(Verdict::Skip)
            }
        }
    }
}

/// Whether this rank's step is not finite (the flag it contributes to the all-reduce).
pub fn nonfinite(loss: f32) -> bool {
    !loss.is_finite()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ends_the_run_on_the_first_nonfinite_step_and_says_why() {
        let mut g = Guard::default();
        assert_eq!(
            g.decide(NonFinitePolicy::Stop, false, 1, 2.3)
                .expect("finite"),
            Verdict::Apply
        );
        let e = g
            .decide(NonFinitePolicy::Stop, true, 2, f64::NAN)
            .expect_err("stops");
        assert!(matches!(e, TrainError::NonFinite { step: 2, .. }));
        let msg = e.to_string();
        assert!(msg.contains("step 2") && msg.contains("NaN"), "{msg}");
    }

    #[test]
    fn skip_step_skips_resets_on_a_finite_step_and_gives_up_after_a_streak() {
        let mut g = Guard::default();
        let p = NonFinitePolicy::SkipStep;
        // A rank with a finite loss still skips when another rank's was not: the flag decides.
        assert_eq!(g.decide(p, true, 1, 1.0).expect("skip"), Verdict::Skip);
        assert_eq!(g.decide(p, false, 2, 1.0).expect("apply"), Verdict::Apply);
        assert_eq!(g.consecutive, 0);
        for step in 3..3 + MAX_CONSECUTIVE_SKIPS - 1 {
            assert_eq!(
                g.decide(p, true, step, f64::INFINITY).expect("skip"),
                Verdict::Skip
            );
        }
        assert_eq!(g.skipped, MAX_CONSECUTIVE_SKIPS);
        let e = g
            .decide(p, true, 99, f64::INFINITY)
            .expect_err("a streak stops the run");
        assert!(e.to_string().contains("in a row"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for p in [NonFinitePolicy::Stop, NonFinitePolicy::SkipStep] {
            assert_eq!(p.name().parse::<NonFinitePolicy>(), Ok(p));
        }
        assert!("rollback".parse::<NonFinitePolicy>().is_err());
        assert!(nonfinite(f32::NAN) && nonfinite(f32::NEG_INFINITY) && !nonfinite(1e30));
    }
}
