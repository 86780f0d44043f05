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
//! `rollback` goes back to the state of the newest checkpoint or epoch end (kept in memory on
//! every rank, so no disk read and no rank without it) and passes over the batches from there
//! up to the non-finite step — the data that led into the divergence — before training on; after
//! [`MAX_ROLLBACKS`] rollbacks in one process the run stops as with `stop`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::{NonFinitePolicy, TrainError};

/// Skipped steps in a row after which `skip-step` stops the run.
pub const MAX_CONSECUTIVE_SKIPS: usize = 10;

/// Rollbacks in one process after which `rollback` stops the run.
pub const MAX_ROLLBACKS: usize = 3;

/// What to do with a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Apply,
    /// Drop it and continue.
    Skip,
    /// Drop it, return to the newest checkpoint's state and pass over the batches since.
    Rollback,
}

/// The guard's memory: skipped steps in a row and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    /// Consecutive skipped steps up to now.
    pub consecutive: usize,
    /// Skipped steps in this process.
    pub skipped: usize,
    /// Rollbacks in this process.
    pub rollbacks: usize,
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
            NonFinitePolicy::Rollback if self.rollbacks >= MAX_ROLLBACKS => stop(format!(
                "{MAX_ROLLBACKS} rollbacks did not get past the divergence (on_nonfinite = rollback)"
            )),
            NonFinitePolicy::Rollback => {
                self.rollbacks += 1;
                Ok(Verdict::Rollback)
            }
        }
    }
}

/// Whether every parameter and buffer of `module` is finite: `x * 0` is 0 for finite `x` and
/// NaN otherwise, so one sum per tensor, added up and read back once, answers it without
/// overflowing. Checked before a checkpoint is written, so none ever holds non-finite weights.
pub fn weights_finite<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Zeros<B: Backend> {
        total: Option<Tensor<B, 1>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Zeros<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let z = (param.val() * 0.0).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + z,
                None => z,
            });
        }
    }
    let mut v = Zeros::<B> { total: None };
    module.visit(&mut v);
    v.total.is_none_or(|t| {
        t.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .is_ok_and(|v| v.first() == Some(&0.0))
    })
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
    fn rollback_rolls_back_then_gives_up_after_its_limit() {
        let mut g = Guard::default();
        let p = NonFinitePolicy::Rollback;
        assert_eq!(g.decide(p, false, 1, 1.0).expect("apply"), Verdict::Apply);
        for step in 2..2 + MAX_ROLLBACKS {
            assert_eq!(
                g.decide(p, true, step, f64::NAN).expect("rollback"),
                Verdict::Rollback
            );
            // Finite steps between rollbacks do not reset the count: the limit is per process.
            assert_eq!(
                g.decide(p, false, step, 1.0).expect("apply"),
                Verdict::Apply
            );
        }
        let e = g.decide(p, true, 50, f64::NAN).expect_err("gives up");
        assert!(e.to_string().contains("rollbacks"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for p in [
            NonFinitePolicy::Stop,
            NonFinitePolicy::SkipStep,
            NonFinitePolicy::Rollback,
        ] {
            assert_eq!(p.name().parse::<NonFinitePolicy>(), Ok(p));
        }
        assert!("restart".parse::<NonFinitePolicy>().is_err());
        assert!(nonfinite(f32::NAN) && nonfinite(f32::NEG_INFINITY) && !nonfinite(1e30));
    }

    #[test]
    fn weights_with_a_nan_or_an_infinity_are_not_finite() {
        use burn::backend::Flex;
        use burn::module::Param;
        use burn::tensor::{Tensor, TensorData};
        #[derive(burn::module::Module, Debug)]
        struct Two<B: Backend> {
            a: Param<Tensor<B, 1>>,
            b: Param<Tensor<B, 2>>,
        }
        let device = Default::default();
        let two = |a: Vec<f32>, b: Vec<f32>| Two::<Flex> {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [2]), &device)),
            b: Param::from_tensor(Tensor::from_data(TensorData::new(b, [1, 2]), &device)),
        };
        assert!(weights_finite(&two(vec![1e38, -3.0], vec![3e38, 3e38])));
        assert!(!weights_finite(&two(vec![1.0, 2.0], vec![f32::NAN, 0.0])));
        assert!(!weights_finite(&two(
            vec![f32::NEG_INFINITY, 2.0],
            vec![0.0, 0.0]
        )));
    }
}
