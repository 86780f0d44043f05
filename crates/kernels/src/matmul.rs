//! The classifier's fully connected layer.
//!
//! Why not just `Linear::forward`: on CUDA every matmul autotunes per shape, compiling and timing
//! about twenty candidate kernels with NVRTC. Measured on an H200 (benchmarks/RESULTS.md), the
//! classifier's three matmuls (forward, input gradient, weight gradient) cost about 25 s each of
//! the first training step — for a 512x10 layer. With fixed kernels chosen (`--cuda-conv gemm`
//! or `direct`, the plain CUDA backend) the layer runs as one autodiff op whose matmuls use
//! cubek's default kernel (in evaluation: that matmul and a bias add). Everywhere else it is
//! Burn's `Linear` unchanged.
//!
//! Lives with the kernels, not the model, because the weight gradient by taps
//! (`crate::conv::wgrad`) runs on the same [`MatmulKernel`] trait.
//!
//! The op is generic over the backend and its matmul ([`MatmulKernel`]), so its gradients are
//! tested on the CPU against Burn's own `Linear`.

use std::fmt::Debug;
use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor};

use crate::choice::KernelChoice;

/// The matmul the op uses for its three products.
pub trait MatmulKernel<B: Backend>: Debug + Send + Sync + 'static {
    /// `a @ b` for 2-D tensors.
    fn matmul(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B>;
}

/// The backend's own `float_matmul` (what Burn's `Linear` uses).
#[derive(Debug)]
pub struct BackendMatmul;

impl<B: Backend> MatmulKernel<B> for BackendMatmul {
    fn matmul(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
        B::float_matmul(a, b)
    }
}

#[derive(Debug)]
struct LinearBackward<M>(PhantomData<M>);

impl<B: Backend, M: MatmulKernel<B>> Backward<B, 3> for LinearBackward<M> {
    type State = (NodeId, NodeId, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_state, w_state, d_out) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
        let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, M::matmul(dy.clone(), B::float_transpose(w)));
        }
        if let Some(node) = node_w {
            let dw = M::matmul(B::float_transpose(x), dy.clone());
            crate::tap::announce::<B>(node.id, &dw);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_b {
            let db = B::float_reshape(B::float_sum_dim(dy, 0), Shape::new([d_out]));
            crate::tap::announce::<B>(node.id, &db);
            grads.register::<B>(node.id, db);
        }
    }
}

/// `x @ w + b` (x: `[n, d_in]`, w: `[d_in, d_out]`, b: `[d_out]`) without autodiff.
pub fn affine<B: Backend, M: MatmulKernel<B>>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: FloatTensor<B>,
    d_out: usize,
) -> FloatTensor<B> {
    B::float_add(M::matmul(x, w), B::float_reshape(b, Shape::new([1, d_out])))
}

/// `x @ w + b` (x: `[n, d_in]`, w: `[d_in, d_out]`, b: `[d_out]`) on the autodiff graph.
pub fn linear_op<B: Backend, M: MatmulKernel<B>>(
    x: FloatTensor<Autodiff<B>>,
    w: FloatTensor<Autodiff<B>>,
    b: FloatTensor<Autodiff<B>>,
    d_out: usize,
) -> FloatTensor<Autodiff<B>> {
    let compute = |x, w, b| affine::<B, M>(x, w, b, d_out);
    match LinearBackward::<M>(PhantomData)
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&w);
            let y = compute(x.primitive, w.primitive, b.primitive);
            prep.finish((x_state, w_state, d_out), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(compute(x.primitive, w.primitive, b.primitive)),
    }
}

/// `fc.forward(x)`, through [`linear_op`] with fixed matmul kernels on the plain CUDA backend
/// when `k` chose fixed CUDA kernels; Burn's `Linear` everywhere else.
///
/// # Shapes
/// `x: [N, d_in]` -> `[N, d_out]`.
pub fn linear<B: Backend>(k: &KernelChoice, fc: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    if k.cuda_fixed() {
        if let Some(y) = cuda_linear(fc, &x) {
            return y;
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = k;
    fc.forward(x)
}

#[cfg(feature = "cuda")]
fn cuda_linear<B: Backend>(fc: &Linear<B>, x: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    use crate::backends::CudaPlain;
    use crate::cast::cast;
    use burn::tensor::TensorPrimitive;
    use std::any::TypeId;

    let training = TypeId::of::<B>() == TypeId::of::<Autodiff<CudaPlain>>();
    let inference = TypeId::of::<B>() == TypeId::of::<CudaPlain>();
    if !(training || inference) {
        return None;
    }
    let bias = fc.bias.as_ref()?;
    let [d_in, d_out] = fc.weight.dims();
    if x.dims()[1] != d_in {
        return None;
    }
    let prim = |t: Tensor<B, 2>| t.into_primitive().tensor();
    let (x, w) = (prim(x.clone()), prim(fc.weight.val()));
    let b = bias.val().into_primitive().tensor();
    let y: B::FloatTensorPrimitive = if training {
        let (x, w, b) = (cast(x)?, cast(w)?, cast(b)?);
        cast(linear_op::<CudaPlain, FixedMatmul>(x, w, b, d_out))?
    } else {
        let (x, w, b) = (cast(x)?, cast(w)?, cast(b)?);
        cast(affine::<CudaPlain, FixedMatmul>(x, w, b, d_out))?
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(y)))
}

/// cubek's default matmul kernel, without autotuning (the classifier layer, and the tap
/// matmuls of `crate::conv::wgrad` on CUDA); a problem it rejects runs through the backend's
/// autotuned matmul.
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub struct FixedMatmul;

#[cfg(feature = "cuda")]
impl MatmulKernel<crate::backends::CudaPlain> for FixedMatmul {
    fn matmul(
        a: FloatTensor<crate::backends::CudaPlain>,
        b: FloatTensor<crate::backends::CudaPlain>,
    ) -> FloatTensor<crate::backends::CudaPlain> {
        use burn::tensor::ops::FloatTensorOps;
        use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
        matmul(
            a.clone(),
            b.clone(),
            None,
            MatmulStrategy::Cube,
            burn::tensor::DType::F32,
        )
        .unwrap_or_else(|_| crate::backends::CudaPlain::float_matmul(a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, TensorData, TensorPrimitive, Tolerance};

    type B = Autodiff<Flex>;

    #[test]
    fn gradients_match_burns_linear() {
        let device = Default::default();
        let fc = LinearConfig::new(12, 5).init::<B>(&device);
        let x =
            Tensor::<B, 2>::random([7, 12], Distribution::Normal(0.0, 1.0), &device).require_grad();
        // A loss that weights every output differently, so every gradient entry matters.
        let weights = Tensor::<B, 2>::random([7, 5], Distribution::Normal(0.0, 1.0), &device);

        let ours = {
            let prim = |t: Tensor<B, 2>| t.into_primitive().tensor();
            let b = fc
                .bias
                .as_ref()
                .expect("bias")
                .val()
                .into_primitive()
                .tensor();
            let y = linear_op::<Flex, BackendMatmul>(prim(x.clone()), prim(fc.weight.val()), b, 5);
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y))
        };
        let theirs = fc.forward(x.clone());
        ours.to_data()
            .assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::default());

        let g_ours = (ours * weights.clone()).sum().backward();
        let g_theirs = (theirs * weights).sum().backward();
        let pairs: [(TensorData, TensorData); 3] = [
            (
                x.grad(&g_ours).expect("dx").to_data(),
                x.grad(&g_theirs).expect("dx").to_data(),
            ),
            (
                fc.weight.grad(&g_ours).expect("dw").to_data(),
                fc.weight.grad(&g_theirs).expect("dw").to_data(),
            ),
            (
                fc.bias
                    .as_ref()
                    .expect("bias")
                    .grad(&g_ours)
                    .expect("db")
                    .to_data(),
                fc.bias
                    .as_ref()
                    .expect("bias")
                    .grad(&g_theirs)
                    .expect("db")
                    .to_data(),
            ),
        ];
        for (a, b) in pairs {
            a.assert_approx_eq::<f32>(&b, Tolerance::default());
        }
    }
}
