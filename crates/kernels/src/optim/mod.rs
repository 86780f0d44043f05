//! The optimizer update as one pass over each parameter's memory (the CPU's fused optimizer).
//!
//! Burn 0.21's optimizers update a parameter with a chain of whole-tensor ops: SGD with momentum
//! and weight decay is 6 passes over the parameter's size, Adam ~11, each reading and writing
//! memory and allocating its result. Here every element goes through the same arithmetic in one
//! pass, in place. The order of the f32 operations is exactly Burn's (each comment quotes the
//! op chain it reproduces, from `burn-optim` 0.21.0), with the scalars converted as Burn's CPU
//! backend converts them, so the results are the same bits: the trainer's tests compare the
//! two on whole models, and the golden hashes did not move.
//!
//! Work is split over the rayon pool in fixed chunks; elements are independent, so the split
//! cannot change a bit.

use std::any::TypeId;

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use crate::cast::{cast, float_primitive};
use crate::wide::avx512_too;

#[cfg(feature = "cuda")]
mod cuda;

/// Elements per rayon task: big enough that a task outweighs its scheduling, small enough that
/// a 2-core machine splits even a 64-channel 3x3 weight (36K elements).
const CHUNK: usize = 16 * 1024;

/// One optimizer's per-element rule, with its hyper-parameters as Burn's ops see them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UpdateRule {
    /// SGD with optional momentum (`velocity` state) and L2 weight decay.
    Sgd {
        /// Momentum (Burn converts its f64 to the float element: f32); `None`: no momentum.
        momentum: Option<f32>,
        /// `1 - dampening`, the factor on the gradient in the velocity update.
        keep: f32,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: Option<f32>,
    },
    /// Adam with L2 weight decay added to the gradient (two moment buffers).
    Adam {
        /// First-moment decay.
        beta_1: f32,
        /// Second-moment decay.
        beta_2: f32,
        /// Denominator epsilon.
        epsilon: f32,
        /// L2 penalty added to the gradient.
        weight_decay: Option<f32>,
    },
    /// AdamW: decoupled weight decay (two moment buffers).
    AdamW {
        /// First-moment decay.
        beta_1: f32,
        /// Second-moment decay.
        beta_2: f32,
        /// Denominator epsilon.
        epsilon: f32,
        /// Decoupled decay rate (multiplied by the learning rate).
        weight_decay: f32,
    },
}

impl UpdateRule {
    /// How many state buffers of the parameter's size the rule keeps (velocity; moments).
    pub fn buffers(&self) -> usize {
        match self {
            UpdateRule::Sgd { momentum: None, .. } => 0,
            UpdateRule::Sgd { .. } => 1,
            UpdateRule::Adam { .. } | UpdateRule::AdamW { .. } => 2,
        }
    }
}

/// One parameter's update: its values, gradient and state, and its step count.
pub struct ParamUpdate<'a> {
    /// The parameter, updated in place.
    pub param: &'a mut [f32],
    /// Its gradient.
    pub grad: &'a [f32],
    /// SGD's velocity, or Adam's first moment (empty when the rule keeps none).
    pub state_1: &'a mut [f32],
    /// Adam's second moment (empty otherwise).
    pub state_2: &'a mut [f32],
    /// Steps this parameter had before this one (0: the state buffers hold nothing yet, and
    /// are initialised as Burn initialises its state on a parameter's first step).
    pub steps_before: usize,
}

/// Applies `rule` with learning rate `lr` to one parameter (see the module docs).
///
/// # Panics
/// When the slices' lengths disagree with each other or with the rule's buffer count.
pub fn apply(rule: &UpdateRule, lr: f64, u: ParamUpdate<'_>) {
    let lr_f64 = lr;
    let n = u.param.len();
    assert_eq!(u.grad.len(), n, "optimizer: gradient length");
    let want = |k: usize| if rule.buffers() > k { n } else { 0 };
    assert_eq!(
        u.state_1.len(),
        want(0),
        "optimizer: first state buffer length"
    );
    assert_eq!(
        u.state_2.len(),
        want(1),
        "optimizer: second state buffer length"
    );
    let first = u.steps_before == 0;
    // Burn's CPU backend converts every scalar operand to the element type (`as f32`).
    let lr = lr as f32;
    // Each case is its own loop (const generics, chosen per chunk by the `*_chunk` functions
    // below), without a branch per element, so the compiler vectorises it — 16-wide where the
    // CPU has AVX-512 (crate::wide); vector lanes do the same IEEE operations as scalar code,
    // square roots and divisions included.
    match *rule {
        UpdateRule::Sgd {
            momentum: Some(momentum),
            keep,
            nesterov,
            weight_decay,
        } => {
            let c = Sgd {
                lr,
                wd: weight_decay.unwrap_or(0.0),
                momentum,
                keep,
            };
            let flags = [first, weight_decay.is_some(), nesterov];
            par3(u.param, u.grad, u.state_1, |p, g, v| {
                sgd_momentum_chunk(&c, flags, p, g, v)
            });
        }
        UpdateRule::Sgd {
            momentum: None,
            weight_decay,
            ..
        } => {
            let wd = weight_decay.unwrap_or(0.0);
            let has_wd = weight_decay.is_some();
            par3(u.param, u.grad, &mut [], |p, g, _| {
                sgd_chunk([lr, wd], has_wd, p, g)
            });
        }
        UpdateRule::Adam {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            let c = Adam::for_step([beta_1, beta_2], epsilon, weight_decay, lr, u.steps_before);
            let flags = [first, weight_decay.is_some()];
            par4(u.param, u.grad, u.state_1, u.state_2, |p, g, m, v| {
                adam_chunk(&c, flags, p, g, m, v)
            });
        }
        UpdateRule::AdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            let c = AdamW::for_step(
                [beta_1, beta_2],
                epsilon,
                weight_decay,
                lr_f64,
                u.steps_before,
            );
            let flags = [first, c.decays];
            par4(u.param, u.grad, u.state_1, u.state_2, |p, g, m, v| {
                adamw_chunk(&c, flags, p, g, m, v)
            });
        }
    }
}

// One chunk of each update, compiled for AVX-512 where the CPU has it; the flags pick the
// const-generic loop (one branch per chunk, none per element).

avx512_too!(
    /// Plain SGD (`[lr, weight decay]`, whether there is weight decay) over one chunk.
    fn sgd_chunk(c: [f32; 2], has_wd: bool, p: &mut [f32], g: &[f32]) => sgd_any
);

#[inline(always)]
fn sgd_any([lr, wd]: [f32; 2], has_wd: bool, p: &mut [f32], g: &[f32]) {
    for (p, g) in p.iter_mut().zip(g) {
        // WeightDecay::transform: tensor.mul_scalar(penalty).add(grad)
        let g = if has_wd { *p * wd + *g } else { *g };
        // Sgd::step: tensor - grad.mul_scalar(lr)
        *p -= g * lr;
    }
}

avx512_too!(
    /// SGD with momentum over one chunk; flags `[first step, weight decay, Nesterov]`.
    fn sgd_momentum_chunk(c: &Sgd, flags: [bool; 3], p: &mut [f32], g: &[f32], v: &mut [f32])
        => sgd_momentum_any
);

#[inline(always)]
fn sgd_momentum_any(c: &Sgd, flags: [bool; 3], p: &mut [f32], g: &[f32], v: &mut [f32]) {
    match flags {
        [false, false, false] => sgd_momentum::<false, false, false>(c, p, g, v),
        [false, false, true] => sgd_momentum::<false, false, true>(c, p, g, v),
        [false, true, false] => sgd_momentum::<false, true, false>(c, p, g, v),
        [false, true, true] => sgd_momentum::<false, true, true>(c, p, g, v),
        [true, false, false] => sgd_momentum::<true, false, false>(c, p, g, v),
        [true, false, true] => sgd_momentum::<true, false, true>(c, p, g, v),
        [true, true, false] => sgd_momentum::<true, true, false>(c, p, g, v),
        [true, true, true] => sgd_momentum::<true, true, true>(c, p, g, v),
    }
}

avx512_too!(
    /// Adam over one chunk; flags `[first step, weight decay]`.
    fn adam_chunk(c: &Adam, flags: [bool; 2], p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32])
        => adam_any
);

#[inline(always)]
fn adam_any(c: &Adam, flags: [bool; 2], p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    match flags {
        [false, false] => adam::<false, false>(c, p, g, m, v),
        [false, true] => adam::<false, true>(c, p, g, m, v),
        [true, false] => adam::<true, false>(c, p, g, m, v),
        [true, true] => adam::<true, true>(c, p, g, m, v),
    }
}

avx512_too!(
    /// AdamW over one chunk; flags `[first step, decay]`.
    fn adamw_chunk(c: &AdamW, flags: [bool; 2], p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32])
        => adamw_any
);

#[inline(always)]
fn adamw_any(c: &AdamW, flags: [bool; 2], p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    match flags {
        [false, false] => adamw::<false, false>(c, p, g, m, v),
        [false, true] => adamw::<false, true>(c, p, g, m, v),
        [true, false] => adamw::<true, false>(c, p, g, m, v),
        [true, true] => adamw::<true, true>(c, p, g, m, v),
    }
}

/// SGD's scalars.
pub(crate) struct Sgd {
    pub lr: f32,
    pub wd: f32,
    pub momentum: f32,
    pub keep: f32,
}

/// SGD with momentum over one chunk.
#[inline(always)]
fn sgd_momentum<const FIRST: bool, const WD: bool, const NESTEROV: bool>(
    c: &Sgd,
    p: &mut [f32],
    g: &[f32],
    v: &mut [f32],
) {
    for ((p, g), v) in p.iter_mut().zip(g).zip(v) {
        // WeightDecay::transform: tensor.mul_scalar(penalty).add(grad)
        let g = if WD { *p * c.wd + *g } else { *g };
        // Momentum::transform: first step `grad`, then
        // grad.mul_scalar(1 - dampening).add(velocity.mul_scalar(momentum))
        *v = if FIRST {
            g
        } else {
            g * c.keep + *v * c.momentum
        };
        // Nesterov: velocity.mul_scalar(momentum).add(grad)
        let step = if NESTEROV { *v * c.momentum + g } else { *v };
        // Sgd::step: tensor - grad.mul_scalar(lr)
        *p -= step * c.lr;
    }
}

/// Adam's scalars for one step.
pub(crate) struct Adam {
    pub lr: f32,
    pub wd: f32,
    pub betas: [f32; 2],
    pub combined_factor: f32,
    pub eps: f32,
}

impl Adam {
    /// The scalars of the step after `steps_before` steps, computed on the host as Burn's
    /// `AdaptiveMomentum::transform` does (`time` is the step count after this step).
    pub(crate) fn for_step(
        [beta_1, beta_2]: [f32; 2],
        epsilon: f32,
        weight_decay: Option<f32>,
        lr: f32,
        steps_before: usize,
    ) -> Self {
        let time = (steps_before + 1) as i32;
        let bias_correction2_sqrt = (1.0 - beta_2.powi(time)).sqrt();
        Self {
            lr,
            wd: weight_decay.unwrap_or(0.0),
            betas: [beta_1, beta_2],
            combined_factor: bias_correction2_sqrt / (1.0 - beta_1.powi(time)),
            eps: epsilon * bias_correction2_sqrt,
        }
    }
}

/// Adam over one chunk.
#[inline(always)]
fn adam<const FIRST: bool, const WD: bool>(
    c: &Adam,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
        let g = if WD { *p * c.wd + *g } else { *g };
        moments::<FIRST>(g, m, v, c.betas);
        // moment_1.mul_scalar(cf).div(moment_2.sqrt().add_scalar(eps * bc2s)),
        // then tensor - delta.mul_scalar(lr)
        let delta = (*m * c.combined_factor) / (v.sqrt() + c.eps);
        *p -= delta * c.lr;
    }
}

/// AdamW's scalars for one step.
pub(crate) struct AdamW {
    pub lr: f32,
    pub betas: [f32; 2],
    pub c1: f32,
    pub c2: f32,
    pub epsilon: f32,
    pub keep: f32,
    /// Whether the parameter decays this step (Burn skips the multiplication at rate 0).
    pub decays: bool,
}

impl AdamW {
    /// The scalars of the step after `steps_before` steps with the f64 learning rate `lr`,
    /// as Burn's `AdamW::step` computes them: decay_rate = lr * weight_decay in f64; the
    /// tensor times (1 - decay_rate), skipped when the rate is 0.
    pub(crate) fn for_step(
        [beta_1, beta_2]: [f32; 2],
        epsilon: f32,
        weight_decay: f32,
        lr: f64,
        steps_before: usize,
    ) -> Self {
        let time = (steps_before + 1) as i32;
        let decay_rate = lr * (weight_decay as f64);
        Self {
            lr: lr as f32,
            betas: [beta_1, beta_2],
            c1: 1f32 - beta_1.powi(time),
            c2: 1f32 - beta_2.powi(time),
            epsilon,
            keep: (1.0 - decay_rate) as f32,
            decays: decay_rate != 0.0,
        }
    }
}

/// AdamW over one chunk.
#[inline(always)]
fn adamw<const FIRST: bool, const DECAY: bool>(
    c: &AdamW,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
        moments::<FIRST>(*g, m, v, c.betas);
        // AdaptiveMomentumW: (m / c1).div((v / c2).sqrt().add_scalar(eps))
        let delta = (*m / c.c1) / ((*v / c.c2).sqrt() + c.epsilon);
        let decayed = if DECAY { *p * c.keep } else { *p };
        // decayed_tensor - raw_delta.mul_scalar(lr)
        *p = decayed - delta * c.lr;
    }
}

/// Adam's and AdamW's moment update of one element (the same in both, from `burn-optim`):
/// `moment_1.mul_scalar(beta_1).add(grad.mul_scalar(1 - beta_1))`, on the first step
/// `grad.mul_scalar(1 - beta_1)`; the same for `moment_2` on `grad.square()`.
#[inline(always)]
fn moments<const FIRST: bool>(g: f32, m: &mut f32, v: &mut f32, [beta_1, beta_2]: [f32; 2]) {
    let (f1, f2) = (1.0 - beta_1, 1.0 - beta_2);
    let g2 = g * g;
    if FIRST {
        *m = g * f1;
        *v = g2 * f2;
    } else {
        *m = *m * beta_1 + g * f1;
        *v = *v * beta_2 + g2 * f2;
    }
}

/// `f` over matching chunks of a parameter, its gradient and one state buffer (may be empty).
fn par3(
    p: &mut [f32],
    g: &[f32],
    s: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32]) + Sync,
) {
    if s.is_empty() {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| f(p, g, &mut []));
    } else {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .for_each(|((p, g), s)| f(p, g, s));
    }
}

/// `f` over matching chunks of a parameter, its gradient and two state buffers.
fn par4(
    p: &mut [f32],
    g: &[f32],
    a: &mut [f32],
    b: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(a.par_chunks_mut(CHUNK))
        .zip(b.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), a), b)| f(p, g, a, b));
}

/// Runs `f` on the f32 memory of `param` (made contiguous and unshared first: a parameter
/// that a snapshot still shares is copied, never changed under it) and of `grad`, when `B` is
/// the flex CPU backend and both are f32. Otherwise gives both back untouched.
pub fn update_flex_param<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    f: impl FnOnce(&mut [f32], &[f32]),
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let usable = TypeId::of::<B>() == TypeId::of::<Flex>()
        && param.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && param.shape() == grad.shape();
    if !usable {
        return Err((param, grad));
    }
    // `to_contiguous` returns the tensor itself (shared, not copied) when it already owns
    // exactly its elements; the old handle is dropped before the write, so an unshared
    // parameter is updated without a copy.
    let p = cast::<_, FlexTensor>(float_primitive(param)).expect("checked: B is Flex");
    let mut p = p.to_contiguous();
    let g = cast::<_, FlexTensor>(float_primitive(grad))
        .expect("checked: B is Flex")
        .to_contiguous();
    f(p.storage_mut::<f32>(), g.storage::<f32>());
    Ok(Tensor::from_primitive(TensorPrimitive::Float(
        cast(p).expect("same type"),
    )))
}

/// Whether [`update_device_param`] runs on backend `B`: the plain CUDA backend in a build with
/// `cuda`. The fused optimizer then keeps its state on the device.
pub fn updates_on_device<B: Backend>() -> bool {
    #[cfg(feature = "cuda")]
    {
        TypeId::of::<B>() == TypeId::of::<crate::backends::CudaPlain>()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// What [`update_device_param`] returns: the new parameter and state buffers.
pub type DeviceUpdate<B, const D: usize> = (Tensor<B, D>, Vec<Tensor<B, 1>>);

/// The inputs of [`update_device_param`] (parameter, gradient, state), handed back when it
/// does not apply.
pub type DeviceUpdateInputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Vec<Tensor<B, 1>>);

/// One parameter's update with `rule` at learning rate `lr` after `steps_before` steps, on the
/// device in one kernel (`cuda.rs`): the new parameter and state buffers (`rule.buffers()` of
/// them, flat). `state` holds the previous ones; it may be empty on a parameter's first step.
/// When `B` is not the plain CUDA backend, a tensor is not f32 or the sizes disagree, the inputs
/// come back untouched.
pub fn update_device_param<B: Backend, const D: usize>(
    rule: &UpdateRule,
    lr: f64,
    steps_before: usize,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Vec<Tensor<B, 1>>,
) -> Result<DeviceUpdate<B, D>, DeviceUpdateInputs<B, D>> {
    let n = param.shape().num_elements();
    let state_fits = (steps_before == 0 && state.is_empty())
        || (state.len() == rule.buffers()
            && state
                .iter()
                .all(|s| s.dtype() == DType::F32 && s.shape().num_elements() == n));
    let usable = updates_on_device::<B>()
        && param.dtype() == DType::F32
        && grad.dtype() == DType::F32
        && param.shape() == grad.shape()
        && state_fits;
    if !usable {
        return Err((param, grad, state));
    }
    #[cfg(feature = "cuda")]
    {
        use burn_cubecl::cubecl::cuda::CudaRuntime;
        use burn_cubecl::tensor::CubeTensor;
        type Cube = CubeTensor<CudaRuntime>;
        let cube = |t: B::FloatTensorPrimitive| cast::<_, Cube>(t).expect("checked: B is CUDA");
        let back = |t: Cube| -> B::FloatTensorPrimitive { cast(t).expect("same type") };
        let (p, s) = cuda::update(
            rule,
            lr,
            steps_before,
            cube(float_primitive(param)),
            cube(float_primitive(grad)),
            state
                .into_iter()
                .map(|t| cube(float_primitive(t)))
                .collect(),
        );
        Ok((
            Tensor::from_primitive(TensorPrimitive::Float(back(p))),
            s.into_iter()
                .map(|t| Tensor::from_primitive(TensorPrimitive::Float(back(t))))
                .collect(),
        ))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (rule, lr, steps_before);
        unreachable!("updates_on_device is false without the cuda feature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_update_hands_cpu_tensors_back_untouched() {
        type F = Flex;
        assert!(!updates_on_device::<F>(), "the CPU backend is not a device");
        let dev = Default::default();
        let p = Tensor::<F, 2>::from_data([[1.0f32, 2.0], [3.0, 4.0]], &dev);
        let g = Tensor::<F, 2>::from_data([[0.5f32, 0.5], [0.5, 0.5]], &dev);
        let rule = UpdateRule::Sgd {
            momentum: Some(0.9),
            keep: 1.0,
            nesterov: false,
            weight_decay: None,
        };
        let Err((p2, g2, s2)) = update_device_param(&rule, 0.1, 0, p.clone(), g.clone(), vec![])
        else {
            panic!("the flex backend must not take the device path");
        };
        assert_eq!(p2.into_data(), p.into_data());
        assert_eq!(g2.into_data(), g.into_data());
        assert!(s2.is_empty());
    }

    #[test]
    fn step_scalars_follow_burns_host_arithmetic() {
        // Adam, step 3: bias corrections with time = 3, epsilon scaled by sqrt(1 - beta_2^3).
        let a = Adam::for_step([0.9, 0.999], 1e-8, Some(0.01), 0.5, 2);
        let bc2 = (1.0f32 - 0.999f32.powi(3)).sqrt();
        assert_eq!(a.combined_factor, bc2 / (1.0 - 0.9f32.powi(3)));
        assert_eq!(a.eps, 1e-8 * bc2);
        assert_eq!((a.lr, a.wd), (0.5, 0.01));
        // AdamW: the decay rate in f64, then (1 - rate) as f32; no decay at rate 0.
        let w = AdamW::for_step([0.9, 0.999], 1e-8, 0.05, 0.1, 0);
        assert_eq!(w.keep, (1.0 - 0.1f64 * 0.05f32 as f64) as f32);
        assert!(w.decays);
        assert_eq!((w.c1, w.c2), (1.0 - 0.9f32, 1.0 - 0.999f32));
        assert!(!AdamW::for_step([0.9, 0.999], 1e-8, 0.0, 0.1, 0).decays);
    }
}
