//! The model's convolutions. On the CPU (Burn's flex backend, f32) they run through
//! [`kernels`]: im2col + GEMM for the forward pass and both gradients, about three times faster
//! in training than flex's own path (see benchmarks/RESULTS.md). Every other backend — CUDA
//! above all, where Burn's kernels apply — and every convolution outside the fast path's
//! shape (bias, groups, dilation, `Same` padding, other dtypes) goes through Burn unchanged.
//!
//! On CUDA without fusion, [`cuda`] runs them with a fixed kernel strategy instead of Burn's
//! autotuning (`--cuda-conv gemm`), or with the fastest of a few fixed candidates per shape
//! (`--cuda-conv tuned`, [`tune_plan`]).
//!
//! The choice is made per backend type at run time (`TypeId`), so the model stays generic over
//! `B: Backend` and no trait bound leaks into the crates above. `RESNET_CONV=burn` in the
//! environment forces Burn's convolution everywhere, for A/B benchmarks and bisecting.

mod autodiff;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(any(test, feature = "cuda"))]
mod dilate;
#[cfg(feature = "cuda")]
mod implicit;
pub mod kernels;
pub mod precision;
mod scratch;
mod sgemm;
#[cfg(any(test, feature = "cuda"))]
pub mod tune_plan;
#[cfg(feature = "cuda")]
mod tuned;
#[cfg(any(test, feature = "cuda"))]
mod wgrad;

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::sync::OnceLock;

use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};

pub use kernels::ConvGeom;
pub use precision::{conv_precision, set_conv_precision, ConvPrecision};

/// Which implementation runs the model's convolutions on the flex backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvImpl {
    /// The im2col + GEMM kernels of this crate (the default).
    Gemm,
    /// Burn's own convolution (`RESNET_CONV=burn`).
    Burn,
}

/// The implementation chosen by `RESNET_CONV` (`gemm`, the default, or `burn`), read once.
pub fn conv_impl() -> ConvImpl {
    static CHOICE: OnceLock<ConvImpl> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("RESNET_CONV").as_deref() {
        Ok("burn") => ConvImpl::Burn,
        _ => ConvImpl::Gemm,
    })
}

thread_local! {
    static RECORDED: RefCell<Option<Vec<ConvGeom>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the geometry of every convolution it ran through
/// [`forward`] on this thread, in order (`resnet profile` uses it to enumerate a model's
/// convolutions without a second description of the architecture).
pub fn record_geometries<R>(f: impl FnOnce() -> R) -> (R, Vec<ConvGeom>) {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let seen = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, seen)
}

/// `conv.forward(x)`, through the fast CPU kernels when they apply.
pub fn forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let geom = geometry(conv, x.dims());
    if let Some(g) = geom {
        RECORDED.with(|r| r.borrow_mut().as_mut().map(|seen| seen.push(g)));
    }
    let Some(geom) = geom else {
        return conv.forward(x);
    };
    if conv_impl() == ConvImpl::Burn || x.dtype() != DType::F32 {
        return conv.forward(x);
    }
    let is = |t: TypeId| TypeId::of::<B>() == t;
    if is(TypeId::of::<Autodiff<Flex>>()) {
        let (x, w) = (float_primitive(x), float_primitive(conv.weight.val()));
        let (Some(x), Some(w)) = (cast(x), cast(w)) else {
            unreachable!("B is Autodiff<Flex>, checked above")
        };
        let y = autodiff::conv2d::<Flex, autodiff::FlexKernels>(x, w, geom);
        Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")))
    } else if is(TypeId::of::<Flex>()) {
        let (x, w) = (float_primitive(x), float_primitive(conv.weight.val()));
        let (Some(x), Some(w)) = (cast::<_, FlexTensor>(x), cast::<_, FlexTensor>(w)) else {
            unreachable!("B is Flex, checked above")
        };
        let y = autodiff::forward::<Flex, autodiff::FlexKernels>(&x, &w, &geom);
        Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")))
    } else {
        #[cfg(feature = "cuda")]
        if cuda::cuda_conv() != cuda::CudaConv::Autotune {
            if is(TypeId::of::<Autodiff<cuda::CudaPlain>>()) {
                let (x, w) = (float_primitive(x), float_primitive(conv.weight.val()));
                let (Some(x), Some(w)) = (cast(x), cast(w)) else {
                    unreachable!("B is Autodiff<CudaPlain>, checked above")
                };
                let y = autodiff::conv2d::<cuda::CudaPlain, cuda::CudaKernels>(x, w, geom);
                return Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")));
            } else if is(TypeId::of::<cuda::CudaPlain>()) {
                let (x, w) = (float_primitive(x), float_primitive(conv.weight.val()));
                let (Some(x), Some(w)) = (cast(x), cast(w)) else {
                    unreachable!("B is CudaPlain, checked above")
                };
                let y = autodiff::forward::<cuda::CudaPlain, cuda::CudaKernels>(&x, &w, &geom);
                return Tensor::from_primitive(TensorPrimitive::Float(cast(y).expect("same type")));
            }
        }
        conv.forward(x)
    }
}

/// The geometry of `conv` applied to an input of shape `input`, when the kernels handle it.
fn geometry<B: Backend>(conv: &Conv2d<B>, input: [usize; 4]) -> Option<ConvGeom> {
    if conv.bias.is_some() || conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    ConvGeom::new(input, conv.weight.dims(), conv.stride, pad)
}

fn float_primitive<B: Backend>(t: Tensor<B, 4>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// `Some(a as T)` when `A` and `T` are the same type.
pub(crate) fn cast<A: 'static, T: 'static>(a: A) -> Option<T> {
    (Box::new(a) as Box<dyn Any>)
        .downcast::<T>()
        .ok()
        .map(|b| *b)
}

/// A flex tensor's elements as one contiguous f32 buffer (copied only when strided).
pub(crate) fn f32_contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

pub(crate) fn flex_from_vec(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

pub(crate) fn flex_forward(x: &FlexTensor, w: &FlexTensor, g: &ConvGeom) -> FlexTensor {
    let (x, w) = (f32_contiguous(x), f32_contiguous(w));
    let y = kernels::forward(g, x.storage::<f32>(), w.storage::<f32>());
    flex_from_vec(y, [g.batch, g.cout, g.out_hw[0], g.out_hw[1]])
}
