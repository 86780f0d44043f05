//! `--cuda-conv tuned`: each convolution pass runs the fastest of a few fixed candidates
//! ([`crate::conv::tune_plan`]), timed on the device at the first call with a new shape.
//!
//! The timing is cubecl's tuner, the one behind Burn's autotuning: three warm-up runs and ten
//! timed ones per candidate, a candidate that fails to set up or to run (or panics: see
//! [`guarded`]) is skipped, and the winner is saved in the autotune cache (the
//! `--kernel-cache` directory), so a later process on the same GPU architecture times nothing. With `RESNET_CUDA_LOG` every candidate's timing
//! is logged, which is how the choices are measured (scripts/gpu-check.sh).

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::tune::{local_tuner, LocalTuner, Tunable, TunableSet};
use burn_cubecl::cubecl::CubeTuneId;
use burn_cubecl::tensor::CubeTensor;

use super::gemm::{self, Fixed};
use crate::backends::CudaPlain;
use crate::conv::tune_plan::{candidates, guarded, tune_key, Candidate, Pass};
use crate::conv::ConvGeom;
use crate::matmul::FixedMatmul;

type Tensor = CubeTensor<CudaRuntime>;
/// A pass's operands: (input or output gradient, weights or output gradient, geometry).
type Operands = (Tensor, Tensor, ConvGeom);

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

fn key(pass: Pass, (a, _, g): &Operands) -> String {
    tune_key(pass, g, &dtype_name(a.dtype))
}

/// Runs `pass` with candidate `c`, or says why it does not apply.
fn run(pass: Pass, c: Candidate, (a, b, g): Operands) -> Result<Tensor, String> {
    if let Some(why) = c.declines(pass, &g, a.dtype == DType::F32) {
        return Err(why.to_string());
    }
    let err = |e: cubek::convolution::components::ConvSetupError| format!("{e:?}");
    match (pass, c) {
        (Pass::Forward, Candidate::Gemm) => Ok(gemm::forward(Fixed::Gemm, a, b, &g)),
        (Pass::Forward, Candidate::Implicit(al)) => {
            super::implicit::forward(a, b, &g, al).map_err(err)
        }
        (Pass::InputGrad, Candidate::Gemm) => Ok(gemm::grad_input(Fixed::Gemm, a, b, &g)),
        (Pass::InputGrad, Candidate::Implicit(al)) => {
            super::implicit::grad_input(a, b, &g, al).map_err(err)
        }
        (Pass::InputGrad, Candidate::Spread(al)) => {
            let dy = crate::conv::dilate::spread_for::<CudaPlain>(a, &g);
            super::implicit::grad_input(dy, b, &g, al).map_err(err)
        }
        (Pass::WeightGrad, Candidate::Gemm) => Ok(gemm::grad_weight(Fixed::Gemm, a, b, &g)),
        (Pass::WeightGrad, Candidate::Implicit(al)) => {
            super::implicit::grad_weight(a, b, &g, al).map_err(err)
        }
        (Pass::WeightGrad, Candidate::Taps) => {
            // The tap matmuls write f32 (FixedMatmul) and the batch is summed in f32, bf16
            // operands included; the result takes the operands' dtype like every other
            // candidate's, so the winner never changes what the caller gets.
            let dtype = FloatDType::from(a.dtype);
            let dw = crate::conv::wgrad::grad_weight_by_taps::<CudaPlain, FixedMatmul>(a, b, &g);
            Ok(CudaPlain::float_cast(dw, dtype))
        }
        (pass, c) => Err(format!(
            "{} is not a candidate for {}",
            c.name(),
            pass.name()
        )),
    }
}

/// The tunable set of `pass`: every candidate, named as in the logs.
fn set(pass: Pass) -> TunableSet<String, Operands, Tensor> {
    let key_gen = move |ops: &Operands| key(pass, ops);
    candidates(pass)
        .iter()
        .fold(TunableSet::new_cloning_inputs(key_gen), |set, &c| {
            set.with(Tunable::new(&c.name(), move |ops: Operands| {
                guarded(|| run(pass, c, ops))
            }))
        })
}

fn execute(
    tuner: &LocalTuner<String, CubeTuneId>,
    set: std::sync::Arc<TunableSet<String, Operands, Tensor>>,
    ops: Operands,
) -> Tensor {
    let client = ops.0.client.clone();
    let id = CubeTuneId::new(&client, &ops.0.device);
    tuner.execute(&id, &client, set, ops)
}

// One tuner per pass: each has its own set of candidates, and cubecl keeps one cache file per
// tuner name.
static FORWARD: LocalTuner<String, CubeTuneId> = local_tuner!("forward");
static INPUT_GRAD: LocalTuner<String, CubeTuneId> = local_tuner!("input-grad");
static WEIGHT_GRAD: LocalTuner<String, CubeTuneId> = local_tuner!("weight-grad");

/// The convolution of `x` with `w`, by the fastest candidate for its shape.
pub(crate) fn forward(x: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    let set = FORWARD.init(|| set(Pass::Forward));
    execute(&FORWARD, set, (x, w, *g))
}

/// The input gradient, by the fastest candidate for its shape.
pub(crate) fn grad_input(dy: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
    let set = INPUT_GRAD.init(|| set(Pass::InputGrad));
    execute(&INPUT_GRAD, set, (dy, w, *g))
}

/// The weight gradient, by the fastest candidate for its shape.
pub(crate) fn grad_weight(x: Tensor, dy: Tensor, g: &ConvGeom) -> Tensor {
    let set = WEIGHT_GRAD.init(|| set(Pass::WeightGrad));
    execute(&WEIGHT_GRAD, set, (x, dy, *g))
}
