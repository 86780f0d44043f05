//! The convolution on CUDA without kernel fusion ([`CudaPlain`]), with the kernels chosen up
//! front instead of autotuned: `gemm` and `direct` are fixed strategies ([`gemm`]), `tuned`
//! times a few fixed candidates per shape, `gemm` among them ([`tuned`]), `cudnn` runs cuDNN
//! (`crate::cudnn`) with `gemm` where cuDNN is absent or declines a shape.

mod gemm;
mod implicit;
mod tuned;

use burn::tensor::ops::{ConvOptions, FloatTensorOps};
use burn::tensor::{FloatDType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::conv::conv_data_backward;
use burn_cubecl::tensor::CubeTensor;

use super::autodiff::ConvKernels;
use super::{layout, ConvGeom};
use crate::backends::CudaPlain;
use crate::choice::{CudaConv, KernelChoice};
use crate::conv::tune_plan::Pass;
use crate::cudnn::conv_plan::Layout;
use crate::cudnn::conv_run::{self as cudnn_run, Settings};
use crate::cudnn::device as cudnn_device;
use crate::matmul::FixedMatmul;
use crate::precision::ConvPrecision;
use gemm::Fixed;

type Tensor = CubeTensor<CudaRuntime>;

/// Burn's cubecl convolution kernels with the strategy a [`KernelChoice`] names, for the
/// autodiff op of `super::autodiff`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CudaKernels {
    conv: CudaConv,
    spread_dgrad: bool,
    taps_wgrad: bool,
    cudnn: Settings,
    /// bf16 operands channels-last, through cuDNN's NHWC descriptors (`--cuda-layout nhwc`).
    bf16_nhwc: bool,
}

impl CudaKernels {
    /// The kernels of `k` (only called with fixed kernels chosen).
    pub(crate) fn new(k: &KernelChoice) -> Self {
        Self {
            conv: k.cuda_conv,
            spread_dgrad: k.cuda_spread_dgrad,
            taps_wgrad: k.cuda_taps_wgrad,
            cudnn: Settings {
                math: k.cuda_math,
                deterministic: k.deterministic,
                workspace_mb: k.cudnn_workspace_mb,
                layout: Layout::Nchw,
            },
            bf16_nhwc: k.cuda_conv == CudaConv::Cudnn && k.cuda_layout == Layout::Nhwc,
        }
    }

    /// `pass` through cuDNN when it is chosen and usable; `None` sends the pass to the gemm
    /// kernels (cuDNN absent: warned once at the probe; a shape it declines: warned once per
    /// reason, counted in `crate::cudnn::stats`).
    fn cudnn(&self, pass: Pass, a: &Tensor, b: &Tensor, g: &ConvGeom) -> Option<Tensor> {
        self.cudnn_in(Layout::Nchw, pass, a, b, g)
    }

    /// As [`Self::cudnn`], on operands in `layout` (NHWC: Burn tensors of the physical shape),
    /// the result in the same layout.
    fn cudnn_in(
        &self,
        layout: Layout,
        pass: Pass,
        a: &Tensor,
        b: &Tensor,
        g: &ConvGeom,
    ) -> Option<Tensor> {
        if self.conv != CudaConv::Cudnn {
            return None;
        }
        if !cudnn_device::available() {
            cudnn_device::count_fallback();
            return None;
        }
        let settings = Settings {
            layout,
            ..self.cudnn
        };
        match cudnn_run::pass(pass, a.clone(), b.clone(), g, settings) {
            Ok(t) => Some(t),
            Err(why) => {
                cudnn_device::count_fallback();
                warn_once(&why);
                None
            }
        }
    }

    fn fixed(&self) -> Fixed {
        match self.conv {
            CudaConv::Direct => Fixed::Direct,
            _ => Fixed::Gemm,
        }
    }

    fn tuned(&self) -> bool {
        self.conv == CudaConv::Tuned
    }

    // Each pass by the chosen strategy: `tuned`'s per-shape choice, else the fixed one. The f32
    // and the bf16 methods below both go through these.
    fn forward_pass(&self, x: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
        if let Some(y) = self.cudnn(Pass::Forward, &x, &w, g) {
            return y;
        }
        match self.tuned() {
            true => tuned::forward(x, w, g),
            false => gemm::forward(self.fixed(), x, w, g),
        }
    }

    fn grad_input_pass(&self, dy: Tensor, w: Tensor, g: &ConvGeom) -> Tensor {
        // cuDNN's backward-data takes (w, dy).
        if let Some(dx) = self.cudnn(Pass::InputGrad, &w, &dy, g) {
            return dx;
        }
        match self.tuned() {
            true => tuned::grad_input(dy, w, g),
            false => gemm::grad_input(self.fixed(), dy, w, g),
        }
    }

    fn grad_weight_pass(&self, x: Tensor, dy: Tensor, g: &ConvGeom) -> Tensor {
        if let Some(dw) = self.cudnn(Pass::WeightGrad, &x, &dy, g) {
            return dw;
        }
        match self.tuned() {
            true => tuned::grad_weight(x, dy, g),
            false => gemm::grad_weight(self.fixed(), x, dy, g),
        }
    }
}

impl ConvKernels<CudaPlain> for CudaKernels {
    // Burn allocates a 3x3 kernel's rows padded to 16 bytes (cubecl's pitched layout), and
    // cuDNN takes only packed filters: on the H200 each step copied every 3x3 weight twice,
    // 33 copy launches per ResNet-18 step (benchmarks/RESULTS.md, 2026-12-04). Packed (and, in
    // bf16, cast) once here, the backward reuses the forward's operand.
    // With `--cuda-layout nhwc`, bf16 operands are also laid out channels-last here: the
    // permutation rides on the cast (`super::layout`).
    fn prepare_operand(&self, t: Tensor, p: ConvPrecision) -> Tensor {
        let t = match p {
            ConvPrecision::F32 => t,
            ConvPrecision::Bf16 if self.bf16_nhwc => {
                layout::to_nhwc::<CudaPlain>(t, FloatDType::BF16)
            }
            ConvPrecision::Bf16 => to_bf16(&t),
        };
        match self.conv {
            CudaConv::Cudnn => cudnn_device::contiguous(t),
            _ => t,
        }
    }

    fn prepare(&self, dy: Tensor, p: ConvPrecision) -> Tensor {
        // Both gradient passes read it: cast and pack once, not once each.
        self.prepare_operand(dy, p)
    }

    fn forward(&self, x: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        self.forward_pass(x.clone(), w.clone(), g)
    }

    fn grad_input(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        if g.stride != [1, 1] && self.conv == CudaConv::Gemm && self.spread_dgrad {
            // Stride 1 on the spread gradient: implicit GEMM instead of Burn's autotuned
            // transposed convolution (see super::dilate).
            let x_shape = Shape::new([g.batch, g.cin, g.in_hw[0], g.in_hw[1]]);
            let dy = super::dilate::spread_for::<CudaPlain>(dy.clone(), g);
            let unit = ConvOptions {
                stride: [1, 1],
                ..gemm::options(g)
            };
            return gemm::with_fallback(Fixed::Gemm, "input gradient", |s| {
                conv_data_backward(dy.clone(), w.clone(), x_shape.clone(), unit.clone(), s)
            });
        }
        self.grad_input_pass(dy.clone(), w.clone(), g)
    }

    fn grad_weight(&self, x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Tensor {
        if self.conv == CudaConv::Gemm && self.taps_wgrad {
            // One batched matmul per kernel tap (see super::wgrad).
            return super::wgrad::grad_weight_by_taps::<CudaPlain, FixedMatmul>(
                x.clone(),
                dy.clone(),
                g,
            );
        }
        self.grad_weight_pass(x.clone(), dy.clone(), g)
    }

    // bf16: the kernels run on bf16 tensors (tensor-core inputs at half the bytes; cubecl
    // accumulates in f32) and the result is cast back, so everything around the convolution
    // stays f32. `tuned` tunes the bf16 shapes separately (the dtype is part of the key); the
    // experimental spread/taps gradient paths are f32-only and not used here. In training the
    // operands arrive already cast (`prepare_operand`, `prepare`), and casting a bf16 tensor
    // to bf16 hands it back as it is (no launch).
    fn forward_bf16(&self, x: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        if self.bf16_nhwc {
            return self.nhwc_pass(Pass::Forward, x, w, g, Self::forward_pass);
        }
        to_f32(self.forward_pass(to_bf16(x), to_bf16(w), g))
    }

    fn grad_input_bf16(&self, dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Tensor {
        if self.bf16_nhwc {
            // cuDNN's backward-data takes (w, dy); the fallback (dy, w).
            return self.nhwc_pass(Pass::InputGrad, w, dy, g, |k, w, dy, g| {
                k.grad_input_pass(dy, w, g)
            });
        }
        to_f32(self.grad_input_pass(to_bf16(dy), to_bf16(w), g))
    }

    fn grad_weight_bf16(&self, x: &Tensor, dy: &Tensor, g: &ConvGeom) -> Tensor {
        if self.bf16_nhwc {
            return self.nhwc_pass(Pass::WeightGrad, x, dy, g, Self::grad_weight_pass);
        }
        to_f32(self.grad_weight_pass(to_bf16(x), to_bf16(dy), g))
    }
}

impl CudaKernels {
    /// `pass` on channels-last bf16 operands `(a, b)` (cuDNN's order, as prepared) through
    /// cuDNN's NHWC descriptors, the result back to NCHW f32 in its one cast. Where cuDNN
    /// declines, `fallback` runs on NCHW views of the same operands (the NCHW cuDNN call packs
    /// them; the gemm kernels read strides).
    fn nhwc_pass(
        &self,
        pass: Pass,
        a: &Tensor,
        b: &Tensor,
        g: &ConvGeom,
        fallback: impl FnOnce(&Self, Tensor, Tensor, &ConvGeom) -> Tensor,
    ) -> Tensor {
        if let Some(out) = self.cudnn_in(Layout::Nhwc, pass, a, b, g) {
            return layout::from_nhwc::<CudaPlain>(out, FloatDType::F32);
        }
        let view = |t: &Tensor| layout::nchw_view::<CudaPlain>(t.clone());
        to_f32(fallback(self, view(a), view(b), g))
    }
}

/// Logs `why` the first time it is seen (a declined shape repeats every step).
fn warn_once(why: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|s| s == why) {
        tracing::warn!(reason = %why, "cuDNN declined a convolution; it runs on the gemm kernels");
        seen.push(why.to_string());
    }
}

fn to_bf16(t: &Tensor) -> Tensor {
    CudaPlain::float_cast(t.clone(), FloatDType::BF16)
}

fn to_f32(t: Tensor) -> Tensor {
    CudaPlain::float_cast(t, FloatDType::F32)
}
