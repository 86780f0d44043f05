//! The fused optimizer update on CUDA: one kernel launch per parameter that reads the
//! parameter, its gradient and its state once and writes the new parameter and state, where
//! Burn's optimizers launch a chain of whole-tensor kernels per parameter (SGD with momentum and
//! weight decay: 6; Adam: ~11). On an H200 those launches were ~400 of a ResNet-18 step's ~720
//! and about 9 ms of its 24 ms (benchmarks/RESULTS.md, 2026-12-04).
//!
//! The kernels are cubecl kernels, so cubecl queues them on this thread's stream in order with
//! every other kernel of the step: no stream or event of our own, no host wait. Each element
//! goes through the CPU update's arithmetic ([`super`]: Burn's op chain, the scalars computed on
//! the host by the same functions), but NVRTC contracts `a * b + c` into one fused
//! multiply-add where Burn's separate kernels round twice, so the result agrees with Burn's
//! CUDA optimizer to within rounding, not bit for bit (the GPU check measures the difference).
//! Every replica runs the same kernel on the same all-reduced gradient, so replicas stay
//! bit-identical.
//!
//! Outputs are fresh allocations from cubecl's pool, never the inputs' memory: a parameter a
//! checkpoint snapshot still holds is never changed under it.

use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, CubeDim};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{Adam, AdamW, Sgd, UpdateRule};
use crate::cudnn::device::contiguous;

type Cube = CubeTensor<CudaRuntime>;

/// SGD without momentum: `p - (p * wd + g) * lr` (the decay only with `decay`).
#[cube(launch)]
fn sgd_kernel(
    param: &Tensor<f32>,
    grad: &Tensor<f32>,
    param_out: &mut Tensor<f32>,
    lr: f32,
    wd: f32,
    #[comptime] decay: bool,
) {
    if ABSOLUTE_POS >= param.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let p = param[i];
    let mut g = grad[i];
    if decay {
        // Burn: tensor.mul_scalar(penalty).add(grad) (addition commutes bit for bit)
        g += p * wd;
    }
    param_out[i] = p - g * lr;
}

/// SGD with momentum (`super::sgd_momentum`): on the first step the velocity is the gradient
/// and `velocity` is not read.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn sgd_momentum_kernel(
    param: &Tensor<f32>,
    grad: &Tensor<f32>,
    velocity: &Tensor<f32>,
    param_out: &mut Tensor<f32>,
    velocity_out: &mut Tensor<f32>,
    lr: f32,
    wd: f32,
    momentum: f32,
    keep: f32,
    #[comptime] first: bool,
    #[comptime] decay: bool,
    #[comptime] nesterov: bool,
) {
    if ABSOLUTE_POS >= param.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let p = param[i];
    let mut g = grad[i];
    if decay {
        // Burn: tensor.mul_scalar(penalty).add(grad) (addition commutes bit for bit)
        g += p * wd;
    }
    let mut v = g;
    if !first {
        v = g * keep + velocity[i] * momentum;
    }
    velocity_out[i] = v;
    let mut step = v;
    if nesterov {
        step = v * momentum + g;
    }
    param_out[i] = p - step * lr;
}

/// Adam (`super::adam`), with L2 decay added to the gradient when `decay`; on the first step
/// the moments are not read.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adam_kernel(
    param: &Tensor<f32>,
    grad: &Tensor<f32>,
    moment_1: &Tensor<f32>,
    moment_2: &Tensor<f32>,
    param_out: &mut Tensor<f32>,
    moment_1_out: &mut Tensor<f32>,
    moment_2_out: &mut Tensor<f32>,
    lr: f32,
    wd: f32,
    beta_1: f32,
    beta_2: f32,
    f1: f32,
    f2: f32,
    combined_factor: f32,
    eps: f32,
    #[comptime] first: bool,
    #[comptime] decay: bool,
) {
    if ABSOLUTE_POS >= param.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let p = param[i];
    let mut g = grad[i];
    if decay {
        // Burn: tensor.mul_scalar(penalty).add(grad) (addition commutes bit for bit)
        g += p * wd;
    }
    let g2 = g * g;
    let mut m = g * f1;
    let mut v = g2 * f2;
    if !first {
        m = moment_1[i] * beta_1 + g * f1;
        v = moment_2[i] * beta_2 + g2 * f2;
    }
    moment_1_out[i] = m;
    moment_2_out[i] = v;
    let delta = (m * combined_factor) / (f32::sqrt(v) + eps);
    param_out[i] = p - delta * lr;
}

/// AdamW (`super::adamw`): decoupled decay `p * keep` when `decay`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    param: &Tensor<f32>,
    grad: &Tensor<f32>,
    moment_1: &Tensor<f32>,
    moment_2: &Tensor<f32>,
    param_out: &mut Tensor<f32>,
    moment_1_out: &mut Tensor<f32>,
    moment_2_out: &mut Tensor<f32>,
    lr: f32,
    beta_1: f32,
    beta_2: f32,
    f1: f32,
    f2: f32,
    c1: f32,
    c2: f32,
    epsilon: f32,
    keep: f32,
    #[comptime] first: bool,
    #[comptime] decay: bool,
) {
    if ABSOLUTE_POS >= param.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let p = param[i];
    let g = grad[i];
    let g2 = g * g;
    let mut m = g * f1;
    let mut v = g2 * f2;
    if !first {
        m = moment_1[i] * beta_1 + g * f1;
        v = moment_2[i] * beta_2 + g2 * f2;
    }
    moment_1_out[i] = m;
    moment_2_out[i] = v;
    let delta = (m / c1) / (f32::sqrt(v / c2) + epsilon);
    let mut decayed = p;
    if decay {
        decayed = p * keep;
    }
    param_out[i] = decayed - delta * lr;
}

/// A fresh dense f32 tensor like `like` with `shape`.
fn empty(like: &Cube, shape: Shape) -> Cube {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// One parameter's update with `rule` at learning rate `lr` after `steps_before` steps: the new
/// parameter and the new state buffers (`rule.buffers()` of them, each `[n]`). `state` holds
/// the previous ones (ignored, and may be empty, when `steps_before == 0`).
///
/// # Panics
/// When a tensor is not f32 or the sizes disagree (the caller checks both).
pub(crate) fn update(
    rule: &UpdateRule,
    lr: f64,
    steps_before: usize,
    param: Cube,
    grad: Cube,
    state: Vec<Cube>,
) -> (Cube, Vec<Cube>) {
    let n = param.meta.num_elements();
    assert!(
        param.dtype == DType::F32 && grad.dtype == DType::F32,
        "fused CUDA optimizer: f32 only"
    );
    assert_eq!(grad.meta.num_elements(), n, "optimizer: gradient length");
    let first = steps_before == 0;
    if !first {
        assert_eq!(state.len(), rule.buffers(), "optimizer: state buffers");
        for s in &state {
            assert_eq!(s.meta.num_elements(), n, "optimizer: state buffer length");
        }
    }
    let (param, grad) = (contiguous(param), contiguous(grad));
    let state: Vec<Cube> = state.into_iter().map(contiguous).collect();
    // On the first step the kernels do not read the state; the gradient stands in for it.
    let old = |k: usize| state.get(k).unwrap_or(&grad).clone();
    let client = param.client.clone();
    let p_out = empty(&param, param.meta.shape().clone());
    let flat = Shape::new([n]);
    let cube_dim = CubeDim::new(&client, n);
    let cube_count = calculate_cube_count_elemwise(&client, n, cube_dim);
    let lr32 = lr as f32;
    let outs: Vec<Cube> = (0..rule.buffers())
        .map(|_| empty(&param, flat.clone()))
        .collect();
    let arg = |t: &Cube| t.clone().into_tensor_arg();
    match *rule {
        UpdateRule::Sgd {
            momentum: None,
            weight_decay,
            ..
        } => sgd_kernel::launch::<CudaRuntime>(
            &client,
            cube_count,
            cube_dim,
            arg(&param),
            arg(&grad),
            arg(&p_out),
            lr32,
            weight_decay.unwrap_or(0.0),
            weight_decay.is_some(),
        ),
        UpdateRule::Sgd {
            momentum: Some(momentum),
            keep,
            nesterov,
            weight_decay,
        } => {
            let c = Sgd {
                lr: lr32,
                wd: weight_decay.unwrap_or(0.0),
                momentum,
                keep,
            };
            sgd_momentum_kernel::launch::<CudaRuntime>(
                &client,
                cube_count,
                cube_dim,
                arg(&param),
                arg(&grad),
                arg(&old(0)),
                arg(&p_out),
                arg(&outs[0]),
                c.lr,
                c.wd,
                c.momentum,
                c.keep,
                first,
                weight_decay.is_some(),
                nesterov,
            )
        }
        UpdateRule::Adam {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            let c = Adam::for_step([beta_1, beta_2], epsilon, weight_decay, lr32, steps_before);
            adam_kernel::launch::<CudaRuntime>(
                &client,
                cube_count,
                cube_dim,
                arg(&param),
                arg(&grad),
                arg(&old(0)),
                arg(&old(1)),
                arg(&p_out),
                arg(&outs[0]),
                arg(&outs[1]),
                c.lr,
                c.wd,
                c.betas[0],
                c.betas[1],
                1.0 - c.betas[0],
                1.0 - c.betas[1],
                c.combined_factor,
                c.eps,
                first,
                weight_decay.is_some(),
            )
        }
        UpdateRule::AdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            let c = AdamW::for_step([beta_1, beta_2], epsilon, weight_decay, lr, steps_before);
            adamw_kernel::launch::<CudaRuntime>(
                &client,
                cube_count,
                cube_dim,
                arg(&param),
                arg(&grad),
                arg(&old(0)),
                arg(&old(1)),
                arg(&p_out),
                arg(&outs[0]),
                arg(&outs[1]),
                c.lr,
                c.betas[0],
                c.betas[1],
                1.0 - c.betas[0],
                1.0 - c.betas[1],
                c.c1,
                c.c2,
                c.epsilon,
                c.keep,
                first,
                c.decays,
            )
        }
    }
    (p_out, outs)
}
