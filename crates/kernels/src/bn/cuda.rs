//! Training-mode BatchNorm on CUDA through cuDNN (`--cuda-bn cudnn`) as one autodiff node on
//! `Autodiff<CudaPlain>`: one cuDNN call forward, one backward, where Burn's composition records
//! about ten nodes with a full pass over the activation each. The running statistics stay the
//! model's: the node returns the batch mean and inverse deviation cuDNN saved (`super::running`
//! turns them into the running statistics). The
//! residual add and the ReLU that follow a ResNet's BatchNorm are in the node too: one cubecl
//! kernel forward over cuDNN's output, one backward (`cuda_act.rs`; cuDNN's own fused
//! add+ReLU takes only NHWC half-precision inputs).
//!
//! A declined forward (cuDNN absent, a shape it refuses) hands the input back and the model's
//! generic code runs; a failed backward falls back to [`super::generic::backward`] on the same
//! saved statistics. Both are counted in `crate::cudnn::stats` and warned once per reason.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;

use crate::backends::CudaPlain;
use crate::cast::{cast, float_primitive};
use crate::choice::{CudaBn, KernelChoice};
use crate::cudnn::bn_run::{self, Forward};
use crate::cudnn::device::{available, count_fallback};

use super::cuda_act;
use super::running::BatchStats;

type AdTensor = FloatTensor<Autodiff<CudaPlain>>;
type Cube = CubeTensor<CudaRuntime>;

/// Whether [`train`] may take `x`: `Autodiff<CudaPlain>`, f32, `cudnn` chosen, cuDNN loaded.
pub(crate) fn handles<B: Backend>(k: &KernelChoice, x: &Tensor<B, 4>) -> bool {
    k.cuda_bn.cudnn()
        && TypeId::of::<B>() == TypeId::of::<Autodiff<CudaPlain>>()
        && x.dtype() == DType::F32
        && available()
}

fn warn_once(why: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|s| s == why) {
        tracing::warn!(reason = %why, "cuDNN declined a BatchNorm; it runs on Burn's ops");
        seen.push(why.to_string());
    }
}

fn plain<const D: usize>(t: Cube) -> Tensor<CudaPlain, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

#[derive(Clone, Debug)]
struct State {
    forward: Forward,
    gamma: Cube,
    dims: [usize; 4],
    eps: f64,
    workspace_mb: usize,
    /// The node's output when it ends in a ReLU (the ReLU's backward reads it).
    relu_out: Option<Cube>,
}

impl State {
    /// The gradients of the node's inputs from the gradient of its output: `[dx, dgamma,
    /// dbeta]` and the gradient after the ReLU (the residual's, when there is one).
    fn backward(&self, dy: Cube) -> ([Cube; 3], Cube) {
        let dy = match &self.relu_out {
            Some(y) => cuda_act::relu_backward(dy, y),
            None => dy,
        };
        let out = match bn_run::backward(
            &self.forward,
            &self.gamma,
            dy.clone(),
            self.dims,
            self.eps,
            self.workspace_mb,
        ) {
            Ok(b) => [b.dx, b.dgamma, b.dbeta],
            Err(why) => {
                count_fallback();
                warn_once(&why);
                let f = &self.forward;
                let (dx, dg, db) = super::generic::backward(
                    plain::<4>(f.x.clone()),
                    plain::<4>(dy.clone()),
                    plain::<1>(self.gamma.clone()),
                    plain::<1>(f.mean.clone()),
                    plain::<1>(f.invstd.clone()),
                );
                [
                    float_primitive(dx),
                    float_primitive(dg),
                    float_primitive(db),
                ]
            }
        };
        (out, dy)
    }
}

/// Registers the gradients of x, gamma and beta (announcing the parameters' to the taps).
fn register(
    grads: &mut Gradients,
    [node_x, node_gamma, node_beta]: [Option<NodeId>; 3],
    [dx, dgamma, dbeta]: [Cube; 3],
) {
    if let Some(node) = node_x {
        grads.register::<CudaPlain>(node, dx);
    }
    for (node, grad) in [(node_gamma, dgamma), (node_beta, dbeta)] {
        if let Some(node) = node {
            crate::tap::announce::<CudaPlain>(node, &grad);
            grads.register::<CudaPlain>(node, grad);
        }
    }
}

/// BatchNorm (+ReLU): parents x, gamma, beta.
#[derive(Debug)]
struct CudnnBnBackward;

impl Backward<CudaPlain, 3> for CudnnBnBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<CudaPlain>(&ops.node);
        let (g, _) = ops.state.backward(dy);
        register(grads, ops.parents.map(|n| n.map(|n| n.id)), g);
    }
}

/// BatchNorm + residual add (+ReLU): parents x, gamma, beta, residual.
#[derive(Debug)]
struct CudnnBnAddBackward;

impl Backward<CudaPlain, 4> for CudnnBnAddBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, gamma, beta, residual] = ops.parents.map(|n| n.map(|n| n.id));
        let dy = grads.consume::<CudaPlain>(&ops.node);
        let (g, d_residual) = ops.state.backward(dy);
        register(grads, [x, gamma, beta], g);
        if let Some(node) = residual {
            grads.register::<CudaPlain>(node, d_residual);
        }
    }
}

/// Training-mode BatchNorm of `x` through cuDNN, then `+ residual` and a ReLU when asked,
/// all one node: `(y, the batch statistics cuDNN saved)`, or `None` when cuDNN declined or the
/// residual does not fit (nothing recorded; the caller runs the generic code). Call only when
/// [`handles`] said yes.
pub(crate) fn train<B: Backend>(
    k: &KernelChoice,
    x: &Tensor<B, 4>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    eps: f64,
    residual: Option<&Tensor<B, 4>>,
    relu: bool,
) -> Option<(Tensor<B, 4>, BatchStats<B>)> {
    let dims = x.dims();
    if residual.is_some_and(|r| r.dims() != dims || r.dtype() != DType::F32) {
        return None;
    }
    if k.cuda_bn != CudaBn::CudnnFused && (residual.is_some() || relu) {
        // The add and the ReLU as Burn's ops after the node (the measured `cudnn` path).
        let (y, stats) = train(k, x, gamma, beta, eps, None, false)?;
        let y = match residual {
            Some(r) => y + r.clone(),
            None => y,
        };
        let y = if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        };
        return Some((y, stats));
    }
    let ad = |t: FloatTensor<B>| cast::<_, AdTensor>(t).expect("B is Autodiff<CudaPlain>");
    let ra = residual.map(|r| ad(float_primitive(r.clone())));
    let (xa, ga, ba) = (
        ad(float_primitive(x.clone())),
        ad(float_primitive(gamma.clone())),
        ad(float_primitive(beta.clone())),
    );
    let forward = match bn_run::forward(
        xa.primitive.clone(),
        ga.primitive.clone(),
        ba.primitive.clone(),
        dims,
        eps,
        k.cudnn_workspace_mb,
    ) {
        Ok(f) => f,
        Err(why) => {
            count_fallback();
            warn_once(&why);
            return None;
        }
    };
    let mean = plain::<1>(forward.mean.clone());
    let invstd = plain::<1>(forward.invstd.clone());
    let y = forward.y.clone();
    // The add and the ReLU write over cuDNN's fresh output, which nothing has read yet (the
    // backward reads x and the saved statistics, never the pre-activation output).
    cuda_act::add_relu_in_place(&y, ra.as_ref().map(|r| r.primitive.clone()), relu);
    let state = State {
        forward,
        gamma: ga.primitive,
        dims,
        eps,
        workspace_mb: k.cudnn_workspace_mb,
        relu_out: relu.then(|| y.clone()),
    };
    let parents = [xa.node.clone(), ga.node.clone(), ba.node.clone()];
    let y: AdTensor = match ra {
        None => match CudnnBnBackward
            .prepare::<NoCheckpointing>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        Some(r) => {
            let [a, b, c] = parents;
            match CudnnBnAddBackward
                .prepare::<NoCheckpointing>([a, b, c, r.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            }
        }
    };
    let back = |t: AdTensor| -> FloatTensor<B> { cast(t).expect("same type") };
    let stat = |t: Tensor<CudaPlain, 1>| -> Tensor<B, 1> {
        let t = Tensor::<Autodiff<CudaPlain>, 1>::from_inner(t);
        Tensor::from_primitive(TensorPrimitive::Float(back(float_primitive(t))))
    };
    let stats = BatchStats::InvStd {
        mean: stat(mean),
        invstd: stat(invstd),
        eps,
    };
    Some((
        Tensor::from_primitive(TensorPrimitive::Float(back(y))),
        stats,
    ))
}
