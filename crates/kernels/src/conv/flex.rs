//! The convolution's [`ConvKernels`] on the flex CPU backend: this crate's im2col + GEMM
//! kernels ([`super::cpu`]) on the tensors' f32 storage.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::TensorData;

use super::autodiff::ConvKernels;
use super::{cpu, winograd, ConvGeom};
use crate::precision::{round_bf16_slice, ConvPrecision};

/// This crate's CPU kernels on the flex backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlexKernels {
    /// Leave the kernel taps that read only padding out of the column matrix (same bits).
    pub skip_taps: bool,
    /// Winograd F(2x2, 3x3) where it pays: forward and input gradient ([`winograd::pays`]),
    /// weight gradient ([`winograd::pays_for_weight`]).
    pub winograd: bool,
}

/// A flex tensor's elements as one contiguous f32 buffer (copied only when strided).
fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

fn from_vec(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

impl ConvKernels<Flex> for FlexKernels {
    fn forward(&self, x: &FlexTensor, w: &FlexTensor, g: &ConvGeom) -> FlexTensor {
        let (x, w) = (contiguous(x), contiguous(w));
        let (x, w) = (x.storage::<f32>(), w.storage::<f32>());
        let y = if self.winograd && winograd::pays(g) {
            winograd::forward(g, x, w)
        } else {
            cpu::forward_with(g, x, w, self.skip_taps)
        };
        from_vec(y, [g.batch, g.cout, g.out_hw[0], g.out_hw[1]])
    }

    fn grad_input(&self, dy: &FlexTensor, w: &FlexTensor, g: &ConvGeom) -> FlexTensor {
        let w = contiguous(w);
        let (dy, w) = (dy.storage::<f32>(), w.storage::<f32>());
        let dx = if self.winograd && winograd::pays(g) {
            winograd::grad_input(g, dy, w)
        } else {
            cpu::grad_input_with(g, dy, w, self.skip_taps)
        };
        from_vec(dx, [g.batch, g.cin, g.in_hw[0], g.in_hw[1]])
    }

    fn grad_weight(&self, x: &FlexTensor, dy: &FlexTensor, g: &ConvGeom) -> FlexTensor {
        let x = contiguous(x);
        let (x, dy) = (x.storage::<f32>(), dy.storage::<f32>());
        let dw = if self.winograd && winograd::pays_for_weight(g) {
            winograd::grad_weight(g, x, dy)
        } else {
            cpu::grad_weight_with(g, x, dy, self.skip_taps)
        };
        from_vec(dw, [g.cout, g.cin, g.kernel[0], g.kernel[1]])
    }

    fn prepare(&self, dy: FlexTensor, _: ConvPrecision) -> FlexTensor {
        // Both kernels read dy as one contiguous buffer: copy a strided one once, not twice.
        contiguous(&dy)
    }

    fn round_bf16(&self, t: FlexTensor) -> FlexTensor {
        // In f32 storage, without flex's generic casts (which go through an f64 buffer).
        let shape = t.layout().shape().clone();
        let mut v = contiguous(&t).storage::<f32>().to_vec();
        round_bf16_slice(&mut v);
        FlexTensor::from_data(TensorData::new(v, shape))
    }
}
