//! BatchNorm (+ ReLU) as single autodiff operations. On the flex CPU backend: training-mode
//! forward is two passes (statistics, normalise-and-clip) and one autodiff node, the backward
//! two passes; evaluation is one pass. Burn's composition of the same maths records about ten
//! autodiff nodes and makes a full pass over the activation for each.
//!
//! Like the convolution ([`crate::conv`]), the fast path is chosen per backend type at run time
//! and every other backend runs the model's generic code (`resnet-model`'s `batchnorm.rs`).
//! `CpuBn::Burn` in the [`KernelChoice`] forces the generic code on the CPU too.
//!
//! The fused path computes exactly what the generic one does, to float rounding, which the
//! model's tests check; BatchNorm's parameters and running statistics stay the model's.
//!
//! On CUDA, `CudaBn::Cudnn` runs training-mode BatchNorm through cuDNN ([`train_cudnn`],
//! `cuda.rs`); `CudaBn::CudnnFused` also fuses what surrounds it and runs evaluation as one
//! kernel ([`eval_cuda`]); otherwise evaluation there is the model's generic code.
//!
//! ```text
//! mod.rs      which path runs; the CPU autodiff node
//! cpu.rs      the CPU kernels on slices
//! cuda.rs     the cuDNN autodiff node, with the residual add and ReLU (CUDA builds)
//! cuda_act.rs the add + ReLU kernel and the ReLU backward in that node (CUDA builds)
//! cuda_running.rs  the running-statistics update as one kernel (CUDA builds)
//! cuda_eval.rs     evaluation-mode BatchNorm (+ add, + ReLU) as one kernel (CUDA builds)
//! generic.rs  the maths from saved statistics in Burn ops (cuDNN's fallback; CPU-tested)
//! running.rs  the running statistics, PyTorch's way (Burn's ops; CPU-tested)
//! ```

pub mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_act;
#[cfg(feature = "cuda")]
mod cuda_eval;
#[cfg(feature = "cuda")]
mod cuda_running;
pub mod generic;
mod running;

pub use running::{unbiased_factor, update_running, BatchStats};

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

use crate::cast::cast;
use crate::choice::KernelChoice;
use cpu::BnGeom;

type AdTensor = FloatTensor<Autodiff<Flex>>;

/// Whether `train`/`eval` below handle `x`: backend `Autodiff<Flex>` (train) or `Flex`
/// (eval), f32, and `k` chose the fused kernels.
pub fn handles<B: Backend>(k: &KernelChoice, x: &Tensor<B, 4>, train: bool) -> bool {
    let wanted = if train {
        TypeId::of::<Autodiff<Flex>>()
    } else {
        TypeId::of::<Flex>()
    };
    k.cpu_bn.fused() && TypeId::of::<B>() == wanted && x.dtype() == DType::F32
}

/// Training-mode BatchNorm through cuDNN, then `+ residual` and a ReLU when asked, as one
/// autodiff node, when `k` chose it (`cuda_bn = cudnn`), the backend is `Autodiff<CudaPlain>`,
/// `x` (and the residual) are f32 and cuDNN takes the shape: `Some((y, the batch statistics))`
/// (for [`update_running`]). `None` (always, in builds without CUDA) means the caller runs
/// another path.
pub fn train_cudnn<B: Backend>(
    k: &KernelChoice,
    x: &Tensor<B, 4>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    eps: f64,
    residual: Option<&Tensor<B, 4>>,
    relu: bool,
) -> Option<(Tensor<B, 4>, BatchStats<B>)> {
    #[cfg(feature = "cuda")]
    if cuda::handles(k, x) {
        return cuda::train(k, x, gamma, beta, eps, residual, relu);
    }
    let _ = (k, x, gamma, beta, eps, residual, relu);
    None
}

/// Evaluation-mode BatchNorm with `params()` = `[gamma, beta, running mean, running var]`
/// (asked for only when this path runs), then `+ residual` and a ReLU when asked, as one
/// CUDA kernel, when `k` chose `cuda_bn = cudnn-fused`, the backend is `CudaPlain` and the
/// tensors are f32: `Some(y)`. `None` (always, in builds without CUDA) means the caller runs
/// another path.
pub fn eval_cuda<B: Backend>(
    k: &KernelChoice,
    x: &Tensor<B, 4>,
    params: impl FnOnce() -> [Tensor<B, 1>; 4],
    eps: f64,
    residual: Option<&Tensor<B, 4>>,
    relu: bool,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cuda")]
    return cuda_eval::eval(k, x, params, eps, residual, relu);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (k, x, params, eps, residual, relu);
        None
    }
}

fn geom(dims: [usize; 4]) -> BnGeom {
    BnGeom {
        n: dims[0],
        c: dims[1],
        hw: dims[2] * dims[3],
    }
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data after convert")
}

/// Training-mode BatchNorm (+ ReLU) on `Autodiff<Flex>`: returns the output and the batch's
/// mean and biased variance (for the running statistics). Call only when `handles(x, true)`.
pub fn train<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
    relu: bool,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let device = x.device();
    let g = geom(x.dims());
    let prim =
        |t: TensorPrimitive<B>| cast::<_, AdTensor>(t.tensor()).expect("B is Autodiff<Flex>");
    let (x, gamma, beta) = (
        prim(x.into_primitive()),
        prim(gamma.into_primitive()),
        prim(beta.into_primitive()),
    );
    let (y, mean, var) = train_ad(x, gamma, beta, g, eps, relu);
    let y = Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")));
    let stat = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [g.c]), &device);
    (y, stat(mean), stat(var))
}

/// Evaluation-mode BatchNorm (+ ReLU) on `Flex` with the given statistics.
pub fn eval<B: Backend>(
    x: Tensor<B, 4>,
    [gamma, beta, mean, var]: [Tensor<B, 1>; 4],
    eps: f64,
    relu: bool,
) -> Tensor<B, 4> {
    let g = geom(x.dims());
    let (scale, shift) = cpu::fold(
        &values(gamma),
        &values(beta),
        &values(mean),
        &values(var),
        eps,
    );
    let x = cast::<_, FlexTensor>(x.into_primitive().tensor()).expect("B is Flex");
    // `to_contiguous` returns the tensor itself when it already is; then, if no one else holds
    // its buffer (the usual case: a convolution's fresh output), normalise in place.
    let mut y = x.to_contiguous();
    drop(x);
    match y.try_storage_mut::<f32>() {
        Some(data) => cpu::scale_shift_in_place(&g, data, &scale, &shift, relu),
        None => {
            let out = cpu::scale_shift(&g, y.storage::<f32>(), &scale, &shift, relu);
            let shape = y.layout().shape().clone();
            y = flex(out, [g.n, g.c, g.hw]).reshape(shape);
        }
    }
    Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")))
}

fn flex<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

#[derive(Debug, Clone)]
struct BnState {
    x: FlexTensor,
    y: FlexTensor,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    geom: BnGeom,
    relu: bool,
}

#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 3> for BnBackward {
    type State = BnState;

    fn backward(self, ops: Ops<BnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let s = ops.state;
        let (x, y) = (s.x.to_contiguous(), s.y.to_contiguous());
        let (dx, dgamma, dbeta) = cpu::backward(
            &s.geom,
            x.storage::<f32>(),
            y.storage::<f32>(),
            dy.storage::<f32>(),
            &s.gamma,
            &s.mean,
            &s.invstd,
            s.relu,
        );
        let shape = x.layout().shape().clone();
        if let Some(node) = node_x {
            let len = dx.len();
            grads.register::<Flex>(node.id, flex(dx, [len]).reshape(shape));
        }
        for (node, grad) in [(node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                let grad = flex(grad, [s.geom.c]);
                crate::tap::announce::<Flex>(node.id, &grad);
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

fn train_ad(
    x: AdTensor,
    gamma: AdTensor,
    beta: AdTensor,
    g: BnGeom,
    eps: f64,
    relu: bool,
) -> (AdTensor, Vec<f32>, Vec<f32>) {
    let xc = x.primitive.to_contiguous();
    let gamma_v = gamma.primitive.to_contiguous().storage::<f32>().to_vec();
    let beta_v = beta.primitive.to_contiguous().storage::<f32>().to_vec();
    let (mean, var) = cpu::stats(&g, xc.storage::<f32>());
    let (scale, shift) = cpu::fold(&gamma_v, &beta_v, &mean, &var, eps);
    let y = cpu::scale_shift(&g, xc.storage::<f32>(), &scale, &shift, relu);
    let y = flex(y, [g.n, g.c, g.hw]).reshape(xc.layout().shape().clone());
    let out = match BnBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let invstd = var
                .iter()
                .map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32)
                .collect();
            let state = BnState {
                x: xc,
                y: y.clone(),
                gamma: gamma_v,
                mean: mean.clone(),
                invstd,
                geom: g,
                relu,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (out, mean, var)
}
