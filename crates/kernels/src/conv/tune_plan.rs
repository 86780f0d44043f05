//! What `--cuda-conv tuned` chooses between, per convolution pass and shape. Plain data and
//! rules, so they are tested on any machine; the kernels behind each candidate are launched by
//! `super::tuned` (CUDA only).
//!
//! Why a set of our own instead of Burn's autotuning: Burn's autotuned convolution compiles and
//! times 7–8 candidates per pass and shape, and its strided input gradient and weight-gradient
//! fallback are themselves autotuned operations, so a ResNet's first step compiled a few
//! hundred kernels and did not finish in 120 s on an H200 (benchmarks/RESULTS.md). This set
//! holds only what the measurements point at:
//! - `gemm`: what `--cuda-conv gemm` runs (cubek's implicit GEMM, "simple sync" on CUDA's WMMA
//!   tiles), tried wherever it is cheap to start, so `tuned` keeps it unless another candidate
//!   measures faster. The exception is a strided input gradient: `gemm` runs Burn's autotuned
//!   transposed convolution there, whose cold tuning is what this set avoids.
//! - the same implicit GEMM with other cubek algorithms: on that H200, Burn's own autotuning
//!   picked "simple TMA" on PTX MMA tiles for 8 of the 9 forward shapes of ResNet-18's CIFAR stem,
//!   1.1x–2.3x faster than `gemm`'s kernel (344 vs 796 µs for layer1's 3x3 convolution);
//! - strided input gradients as a stride-1 implicit GEMM on the spread output gradient
//!   (`super::dilate`): Burn sends them to an autotuned transposed convolution;
//! - weight gradients as one batched matmul per kernel tap (`super::wgrad`), for the 32x32
//!   layers whose implicit GEMM has few output tiles for a long reduction.

use super::ConvGeom;

pub use crate::geom::Pass;

/// A cubek implicit-GEMM algorithm and the tensor-core instructions it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Synchronous global-to-shared loads, CUDA's WMMA API (`gemm`'s kernel).
    SyncCmma,
    /// Synchronous loads, PTX `mma` instructions.
    SyncMma,
    /// Asynchronous (`cp.async`) loads, PTX `mma`.
    AsyncMma,
    /// Tensor Memory Accelerator loads (sm_90 and newer), PTX `mma`.
    TmaMma,
}

impl Algo {
    /// The name in logs: cubek's algorithm and tile kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::SyncCmma => "sync-cmma",
            Self::SyncMma => "sync-mma",
            Self::AsyncMma => "async-mma",
            Self::TmaMma => "tma-mma",
        }
    }
}

/// One way to run a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Candidate {
    /// What `--cuda-conv gemm` runs.
    Gemm,
    /// cubek's implicit GEMM with this algorithm (input gradients: stride 1 only).
    Implicit(Algo),
    /// A strided input gradient as the stride-1 implicit GEMM on the spread output gradient.
    Spread(Algo),
    /// The weight gradient as one batched matmul per kernel tap.
    Taps,
}

impl Candidate {
    /// The name in logs and in the tuning cache.
    pub fn name(self) -> String {
        match self {
            Self::Gemm => "gemm".into(),
            Self::Implicit(a) => format!("implicit-{}", a.name()),
            Self::Spread(a) => format!("spread-{}", a.name()),
            Self::Taps => "taps".into(),
        }
    }

    /// Why this candidate does not run `pass` of `g` (`f32`: whether the tensors are f32), or
    /// `None` when it does. The tuner skips a candidate that declines.
    pub fn declines(self, pass: Pass, g: &ConvGeom, f32: bool) -> Option<&'static str> {
        let strided = g.stride != [1, 1];
        // TMA copies rows of channels (NHWC) whose byte strides must be multiples of 16: an
        // RGB stem's 3 channels are not, and a bad tensor map is a driver error, not a setup
        // error, so such shapes never reach the kernel.
        let elem = if f32 { 4 } else { 2 };
        let tma_ok = (g.cin * elem).is_multiple_of(16) && (g.cout * elem).is_multiple_of(16);
        match (pass, self) {
            (_, Self::Implicit(Algo::TmaMma) | Self::Spread(Algo::TmaMma)) if !tma_ok => {
                Some("TMA needs channel rows of a multiple of 16 bytes")
            }
            (Pass::InputGrad, Self::Gemm) if strided => Some(
                "gemm's strided input gradient is Burn's autotuned transposed convolution (15-25 s per shape to tune)",
            ),
            (Pass::InputGrad, Self::Implicit(_)) if strided => {
                Some("cubek's implicit-GEMM input gradient takes stride 1 only")
            }
            (Pass::InputGrad, Self::Spread(_)) if !strided => {
                Some("stride 1: nothing to spread")
            }
            (Pass::Forward | Pass::WeightGrad, Self::Spread(_))
            | (Pass::Forward | Pass::InputGrad, Self::Taps) => Some("not a candidate for this pass"),
            _ => None,
        }
    }
}

const FORWARD: [Candidate; 4] = [
    Candidate::Gemm,
    Candidate::Implicit(Algo::TmaMma),
    Candidate::Implicit(Algo::SyncMma),
    Candidate::Implicit(Algo::AsyncMma),
];

const INPUT_GRAD: [Candidate; 5] = [
    Candidate::Gemm,
    Candidate::Implicit(Algo::TmaMma),
    Candidate::Implicit(Algo::SyncMma),
    Candidate::Spread(Algo::SyncCmma),
    Candidate::Spread(Algo::TmaMma),
];

const WEIGHT_GRAD: [Candidate; 4] = [
    Candidate::Gemm,
    Candidate::Implicit(Algo::TmaMma),
    Candidate::Implicit(Algo::SyncMma),
    Candidate::Taps,
];

/// The candidates for `pass`, in the order the tuner registers them.
pub fn candidates(pass: Pass) -> &'static [Candidate] {
    match pass {
        Pass::Forward => &FORWARD,
        Pass::InputGrad => &INPUT_GRAD,
        Pass::WeightGrad => &WEIGHT_GRAD,
    }
}

/// The tuning key of `pass` on `g` with tensors of `dtype`: every field that can change which
/// candidate wins, except that the batch is rounded up to a power of two (as Burn's own tuning
/// keys do), so the batch sizes between two powers share one tuning.
pub fn tune_key(pass: Pass, g: &ConvGeom, dtype: &str) -> String {
    format!(
        "{} {dtype} {}",
        pass.name(),
        g.key(g.batch.next_power_of_two())
    )
}

/// Runs one candidate, turning a panic into an error the tuner skips. Why: cubecl's tuner
/// catches nothing, and cubek's launchers panic on some setups instead of returning an error
/// (its matmul `Strategy::Auto`, behind the tap matmuls, panics on any error but
/// "unavailable"), so one candidate's unforeseen panic on one shape would end the process where
/// skipping it costs nothing. The panic's message is still printed by the panic hook.
pub fn guarded<T>(run: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text payload".into());
        Err(format!("panicked: {what}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_candidate_becomes_an_error() {
        assert_eq!(guarded(|| Ok::<_, String>(3)), Ok(3));
        assert_eq!(
            guarded::<u8>(|| Err("declined".into())),
            Err("declined".into())
        );
        let n = 7;
        let r = guarded::<u8>(|| panic!("bad layout for {n} channels"));
        assert_eq!(r, Err("panicked: bad layout for 7 channels".into()));
        assert_eq!(
            guarded::<u8>(|| panic!("static")),
            Err("panicked: static".into())
        );
    }

    fn geom(batch: usize, stride: usize) -> ConvGeom {
        ConvGeom::new([batch, 64, 32, 32], [128, 64, 3, 3], [stride; 2], [1, 1]).expect("geom")
    }

    fn runnable(pass: Pass, g: &ConvGeom, f32: bool) -> Vec<String> {
        candidates(pass)
            .iter()
            .filter(|c| c.declines(pass, g, f32).is_none())
            .map(|c| c.name())
            .collect()
    }

    #[test]
    fn every_shape_keeps_a_candidate_of_each_pass() {
        for stride in [1, 2] {
            for f32 in [true, false] {
                let g = geom(256, stride);
                for pass in [Pass::Forward, Pass::InputGrad, Pass::WeightGrad] {
                    assert!(!runnable(pass, &g, f32).is_empty(), "{pass:?} s{stride}");
                }
            }
        }
    }

    #[test]
    fn strided_input_gradients_run_spread_and_never_burns_autotuned_path() {
        let g = geom(256, 2);
        assert_eq!(
            runnable(Pass::InputGrad, &g, true),
            ["spread-sync-cmma", "spread-tma-mma"]
        );
        assert_eq!(
            runnable(Pass::InputGrad, &geom(256, 1), true),
            ["gemm", "implicit-tma-mma", "implicit-sync-mma"]
        );
    }

    #[test]
    fn gemm_is_tried_first_where_it_runs_and_taps_only_for_weight_gradients() {
        let g = geom(256, 1);
        for pass in [Pass::Forward, Pass::WeightGrad] {
            assert_eq!(runnable(pass, &g, true)[0], "gemm");
        }
        // bf16 too: its implicit-GEMM weight gradient is even less parallel than f32's
        // (benchmarks/cubek_blocks.py: 10 blocks for layer1 against 36).
        for f32 in [true, false] {
            assert!(runnable(Pass::WeightGrad, &g, f32).contains(&"taps".to_string()));
            assert!(!runnable(Pass::Forward, &g, f32).contains(&"taps".to_string()));
            assert!(!runnable(Pass::InputGrad, &g, f32).contains(&"taps".to_string()));
        }
    }

    #[test]
    fn tma_is_declined_for_channel_rows_it_cannot_copy() {
        let stem = ConvGeom::new([256, 3, 32, 32], [64, 3, 3, 3], [1, 1], [1, 1]).expect("geom");
        for pass in [Pass::Forward, Pass::WeightGrad] {
            let names = runnable(pass, &stem, true);
            assert!(
                !names.contains(&"implicit-tma-mma".to_string()),
                "{names:?}"
            );
            assert!(names.contains(&"gemm".to_string()), "{names:?}");
        }
        // 4 f32 channels are 16 bytes; bf16 needs 8.
        let four = ConvGeom::new([256, 4, 32, 32], [64, 4, 3, 3], [1, 1], [1, 1]).expect("geom");
        assert!(runnable(Pass::Forward, &four, true).contains(&"implicit-tma-mma".to_string()));
        assert!(!runnable(Pass::Forward, &four, false).contains(&"implicit-tma-mma".to_string()));
    }

    #[test]
    fn keys_separate_what_matters_and_share_a_rounded_batch() {
        let key = |b, s, pass, dtype| tune_key(pass, &geom(b, s), dtype);
        assert_eq!(
            key(256, 2, Pass::WeightGrad, "f32"),
            "weight-grad f32 n256 c64 32x32 -> c128 16x16 k3x3 s2x2 p1x1"
        );
        // An epoch's last batch of 80 images (50,000 = 195 x 256 + 80) tunes once, as 128.
        assert_eq!(
            key(80, 1, Pass::Forward, "f32"),
            key(128, 1, Pass::Forward, "f32")
        );
        let base = key(256, 1, Pass::Forward, "f32");
        for other in [
            key(128, 1, Pass::Forward, "f32"),
            key(256, 1, Pass::Forward, "bf16"),
            key(256, 2, Pass::Forward, "f32"),
            key(256, 1, Pass::InputGrad, "f32"),
        ] {
            assert_ne!(base, other);
        }
    }
}
