//! The BatchNorm part of `resnet conv-check`: every BatchNorm shape of the model (the
//! convolutions' outputs), one training step with and without a residual add before the ReLU
//! (output, the input's, gamma's, beta's and the residual's gradients, the running statistics),
//! then evaluation mode, with the kernels under test on the chosen device, against the model's
//! generic code on the CPU.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use resnet_kernels::{CpuBn, KernelChoice};
use resnet_model::BatchNorm2d;
use serde::Serialize;

use crate::cmd_conv_check::{host, relative_error, values};
use crate::device::Selected;

/// The errors of one BatchNorm shape: a training step, then evaluation.
#[derive(Debug, Serialize)]
pub struct BnErrors {
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
    /// The output (with ReLU, as the blocks run it). Each field is the worse of two runs:
    /// BatchNorm + ReLU, and BatchNorm + residual + ReLU.
    pub forward: f64,
    /// The input's gradient.
    pub input_grad: f64,
    /// gamma's gradient.
    pub gamma_grad: f64,
    /// beta's gradient.
    pub beta_grad: f64,
    /// The running mean and variance after the step (the worse of the two).
    pub running_stats: f64,
    /// The residual's gradient in the run with a residual add before the ReLU (as the blocks'
    /// second BatchNorm runs it; on CUDA with cuDNN the add is inside the node).
    pub residual_grad: f64,
    /// Evaluation mode afterwards (the running statistics, + residual, + ReLU) on a new input;
    /// on CUDA with `cudnn-fused`, one kernel.
    pub eval: f64,
}

/// The error BatchNorm may show against the CPU's generic f32 code: sums over up to a few
/// hundred thousand values per channel in another order (1e-4 on the CPU; 1e-3 on a GPU, whose
/// reductions are trees of a different shape). BatchNorm never runs on the tensor cores, so
/// TF32 and bf16 convolution settings do not change it.
pub fn bn_tolerance(gpu: bool) -> f64 {
    if gpu {
        1e-3
    } else {
        1e-4
    }
}

/// One training step of BatchNorm (+ a residual when `residual`) + ReLU over `shape` on
/// backend `B` with kernels `k`: the output, the input/gamma/beta gradients, the running mean
/// and variance afterwards, the residual's gradient (empty without one), and the output in
/// evaluation mode on a new input (with the running statistics, the residual when there is
/// one, and the ReLU).
fn bn_passes<B: AutodiffBackend>(
    k: &KernelChoice,
    shape: [usize; 4],
    residual: bool,
    device: &B::Device,
) -> [Vec<f32>; 8] {
    let c = shape[1];
    let n: usize = shape.iter().product();
    let mut bn = BatchNorm2d::<B>::new(c, 0.1, 1e-5, false, device);
    let param = |v: Vec<f32>| {
        Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(v, [c]), device))
    };
    // gamma around 1, beta around 0, both varied per channel so a channel mix-up shows.
    bn.weight = param(values(c, 4).iter().map(|v| 1.0 + 0.5 * v).collect());
    bn.bias = param(values(c, 5));
    // Inputs off zero mean and unit scale, as a convolution's output is.
    let x_values = values(n, 6).iter().map(|v| 3.0 * v + 0.5).collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(x_values, shape), device).require_grad();
    let r = Tensor::<B, 4>::from_data(TensorData::new(values(n, 7), shape), device);
    // A residual of the same scale as the normalised output, so the ReLU cuts both.
    let res = residual.then(|| {
        Tensor::<B, 4>::from_data(TensorData::new(values(n, 8), shape), device).require_grad()
    });
    let y = bn.forward_add_act(k, x.clone(), res.clone(), true);
    let grads = (y.clone() * r).sum().backward();
    let dx = x.grad(&grads).map(host).unwrap_or_default();
    let dg = bn.weight.grad(&grads).map(host).unwrap_or_default();
    let db = bn.bias.grad(&grads).map(host).unwrap_or_default();
    let dres = res
        .and_then(|t| t.grad(&grads))
        .map(host)
        .unwrap_or_default();
    let (mean, var) = bn.running_stats();
    let stat = |t: Tensor<B, 1>| host(t.inner());
    // Evaluation on the inner backend, as `model.valid()` runs it.
    let eval = bn.valid();
    let inner = |seed| {
        let v = values(n, seed).iter().map(|v| 3.0 * v + 0.5).collect();
        Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(v, shape), device)
    };
    let eval_res = residual.then(|| inner(10));
    let ye = eval.forward_add_act(k, inner(9), eval_res, true);
    [
        host(y.inner()),
        dx,
        dg,
        db,
        stat(mean),
        stat(var),
        dres,
        host(ye),
    ]
}

/// Every shape in `shapes` (`[n, c, h, w]`) with kernels `k` on `sel`, against the generic code
/// on the CPU; progress on stderr unless `json`.
pub fn check(sel: Selected, k: &KernelChoice, shapes: &[[usize; 4]], json: bool) -> Vec<BnErrors> {
    let bn_reference = KernelChoice {
        cpu_bn: CpuBn::Burn,
        ..KernelChoice::default()
    };
    let mut bn = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        if !json {
            crate::say!("batchnorm {}/{}: {shape:?}", i + 1, shapes.len());
        }
        let mut worst = [0.0f64; 8];
        for residual in [false, true] {
            let ours = crate::with_train_backend!(sel, |B, device| {
                bn_passes::<B>(k, *shape, residual, &device)
            });
            let cpu = Default::default();
            let reference = bn_passes::<Autodiff<Flex>>(&bn_reference, *shape, residual, &cpu);
            for (i, w) in worst.iter_mut().enumerate() {
                // The residual's gradient exists only in the run with one.
                if i != 6 || residual {
                    *w = w.max(relative_error(&ours[i], &reference[i]));
                }
            }
        }
        bn.push(BnErrors {
            shape: *shape,
            forward: worst[0],
            input_grad: worst[1],
            gamma_grad: worst[2],
            beta_grad: worst[3],
            running_stats: worst[4].max(worst[5]),
            residual_grad: worst[6],
            eval: worst[7],
        });
    }
    bn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_cpu_batchnorm_agrees_with_the_generic_code_and_a_wrong_one_would_not() {
        let fused = KernelChoice::default();
        assert_eq!(fused.cpu_bn, CpuBn::Fused);
        let generic = KernelChoice {
            cpu_bn: CpuBn::Burn,
            ..fused
        };
        let dev = Default::default();
        let shape = [3, 4, 5, 5];
        for residual in [false, true] {
            let ours = bn_passes::<Autodiff<Flex>>(&fused, shape, residual, &dev);
            let reference = bn_passes::<Autodiff<Flex>>(&generic, shape, residual, &dev);
            for (i, (a, b)) in ours
                .iter()
                .zip(&reference)
                .enumerate()
                .filter(|(i, _)| *i != 6 || residual)
            {
                assert!(!b.is_empty(), "result {i} is missing (residual {residual})");
                let e = relative_error(a, b);
                assert!(e <= bn_tolerance(false), "result {i}: {e}");
            }
        }
        let ours = bn_passes::<Autodiff<Flex>>(&fused, shape, false, &dev);
        let reference = bn_passes::<Autodiff<Flex>>(&generic, shape, false, &dev);
        // The check can fail: a channel mix-up in gamma shows as an error of order 1.
        let mut swapped = ours[2].clone();
        swapped.swap(0, 1);
        assert!(relative_error(&swapped, &reference[2]) > 1e-2);
    }
}
