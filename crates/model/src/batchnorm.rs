//! BatchNorm2d with PyTorch's semantics and torchvision's field names.
//!
//! Burn 0.21's `BatchNorm` differs from PyTorch in two ways that matter here: it updates
//! `running_var` with the biased batch variance (PyTorch: unbiased), and it normalises with four
//! separate `[N,C,H,W] op [1,C,1,1]` broadcasts, which miss the flex backend's fast paths and cost
//! ~45% of a ResNet-18 forward. This module folds mean, variance, gamma and beta into one per-channel
//! scale and shift (`y = x * scale + shift`), two broadcasts instead of four, laid out so that flex
//! runs them as its per-row-scalar SIMD kernel.

use burn::module::{Initializer, Module, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::tensor::{backend::Backend, Tensor};
use resnet_kernels::bn::{self, BatchStats};
use resnet_kernels::{conv, tap, KernelChoice};

/// 2-D batch normalisation over `[N, C, H, W]`, field names as in `torch.nn.BatchNorm2d`.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// gamma, `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// beta, `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean, `[C]`; not trained.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance, `[C]`; not trained.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// PyTorch meaning: running = (1 - momentum) * running + momentum * batch.
    pub momentum: f64,
    /// Added to the variance before the square root.
    pub eps: f64,
    /// When true, training-mode forwards normalise with the running statistics and leave them
    /// untouched (fine-tuning with frozen statistics; exact data-parallel equivalence tests).
    pub frozen_stats: bool,
}

impl<B: Backend> BatchNorm2d<B> {
    /// gamma = 1 (or 0 when `zero_gamma`), beta = 0, running mean 0, running var 1.
    pub fn new(
        channels: usize,
        momentum: f64,
        eps: f64,
        zero_gamma: bool,
        device: &B::Device,
    ) -> Self {
        let gamma = if zero_gamma {
            Initializer::Zeros
        } else {
            Initializer::Ones
        };
        Self {
            weight: gamma.init([channels], device),
            bias: Initializer::Zeros.init([channels], device),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum,
            eps,
            frozen_stats: false,
        }
    }

    /// Running mean and variance, with pending updates applied.
    pub fn running_stats(&self) -> (Tensor<B, 1>, Tensor<B, 1>) {
        (
            self.running_mean.value_sync(),
            self.running_var.value_sync(),
        )
    }

    /// Replaces the running statistics, keeping their parameter ids (which checkpoints and
    /// optimizer state are keyed by). Used to average statistics across data-parallel replicas.
    pub fn set_running_stats(&mut self, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
        let mean_id = self.running_mean.clone().into_record().id;
        let var_id = self.running_var.clone().into_record().id;
        self.running_mean = RunningState::with_id(mean_id, mean);
        self.running_var = RunningState::with_id(var_id, var);
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Normalises `x: [N, C, H, W]` and returns the same shape, with the kernels `k` chose.
    ///
    /// On an autodiff backend (training) it uses the batch statistics and updates the running ones;
    /// otherwise (evaluation) it uses the running statistics.
    pub fn forward(&self, k: &KernelChoice, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(k, x, false)
    }

    /// `relu(self.forward(k, x))`, fused into the same pass on the CPU.
    pub fn forward_relu(&self, k: &KernelChoice, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(k, x, true)
    }

    /// `self.forward(k, conv(x))`, plus `residual`, then a ReLU when `relu`: the convolution
    /// this BatchNorm follows and what the block does after it. In evaluation on the CPU the
    /// BatchNorm is folded into the convolution and the add and ReLU happen as it writes its
    /// output ([`conv::conv2d_bn_eval`]; exact to float rounding); everywhere else these are
    /// the same ops one after another.
    pub fn after_conv(
        &self,
        k: &KernelChoice,
        conv: &Conv2d<B>,
        x: Tensor<B, 4>,
        residual: Option<Tensor<B, 4>>,
        relu: bool,
    ) -> Tensor<B, 4> {
        if conv::folds(k, conv, &x) {
            let (mean, var) = self.running_stats();
            let bn = conv::BnEval {
                gamma: self.weight.val(),
                beta: self.bias.val(),
                mean,
                var,
                eps: self.eps,
            };
            return conv::conv2d_bn_eval(k, conv, x, bn, residual, relu);
        }
        let y = conv::conv2d(k, conv, x);
        self.forward_add_act(k, y, residual, relu)
    }

    /// `self.forward(k, x)`, plus `residual`, then a ReLU when `relu`. In CUDA training with
    /// cuDNN's BatchNorm the three are one autodiff node; elsewhere they are the same ops one
    /// after another.
    pub fn forward_add_act(
        &self,
        k: &KernelChoice,
        x: Tensor<B, 4>,
        residual: Option<Tensor<B, 4>>,
        relu: bool,
    ) -> Tensor<B, 4> {
        let Some(r) = residual else {
            return self.forward_act(k, x, relu);
        };
        if let Some(out) = self.train_cudnn(k, &x, Some(&r), relu) {
            return out;
        }
        if let Some(out) = self.eval_cuda(k, &x, Some(&r), relu) {
            return out;
        }
        let y = self.forward(k, x) + r;
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }

    fn forward_act(&self, k: &KernelChoice, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
        let train = B::ad_enabled(&x.device()) && !self.frozen_stats;
        if train && bn::handles(k, &x, true) {
            let [n, _, h, w] = x.dims();
            let (y, mean, var) = bn::train(x, self.weight.val(), self.bias.val(), self.eps, relu);
            self.update_running(k, BatchStats::Variance { mean, var }, n * h * w);
            return y;
        }
        if let Some(out) = self.train_cudnn(k, &x, None, relu) {
            return out;
        }
        if let Some(out) = self.eval_cuda(k, &x, None, relu) {
            return out;
        }
        if !train && bn::handles(k, &x, false) {
            let (mean, var) = self.running_stats();
            let params = [self.weight.val(), self.bias.val(), mean, var];
            return bn::eval(x, params, self.eps, relu);
        }
        let y = if train {
            self.forward_train(k, x)
        } else {
            self.forward_eval(x)
        };
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }

    /// Training-mode BatchNorm through cuDNN with the residual add and the ReLU in its node,
    /// when the kernels and the backend allow it (`None`: run another path).
    fn train_cudnn(
        &self,
        k: &KernelChoice,
        x: &Tensor<B, 4>,
        residual: Option<&Tensor<B, 4>>,
        relu: bool,
    ) -> Option<Tensor<B, 4>> {
        if !B::ad_enabled(&x.device()) || self.frozen_stats {
            return None;
        }
        let (gamma, beta) = (self.weight.val(), self.bias.val());
        let (y, stats) = bn::train_cudnn(k, x, &gamma, &beta, self.eps, residual, relu)?;
        let [n, _, h, w] = x.dims();
        self.update_running(k, stats, n * h * w);
        Some(y)
    }

    /// Evaluation-mode BatchNorm (+ residual, + ReLU) as one CUDA kernel, when the kernels
    /// and the backend allow it (`None`: run another path).
    fn eval_cuda(
        &self,
        k: &KernelChoice,
        x: &Tensor<B, 4>,
        residual: Option<&Tensor<B, 4>>,
        relu: bool,
    ) -> Option<Tensor<B, 4>> {
        if B::ad_enabled(&x.device()) {
            return None;
        }
        let params = || {
            let (mean, var) = self.running_stats();
            [self.weight.val(), self.bias.val(), mean, var]
        };
        bn::eval_cuda(k, x, params, self.eps, residual, relu)
    }

    fn forward_eval(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let mean = self.running_mean.value().to_device(&device);
        let var = self.running_var.value().to_device(&device);
        self.apply(x, [self.weight.val(), self.bias.val()], mean, var)
    }

    fn forward_train(&self, k: &KernelChoice, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let count = n * h * w;
        // Per-channel statistics over N, H and W. E[x^2] - E[x]^2 avoids a third full-size
        // broadcast; inputs here are post-conv activations of moderate mean, where f32 keeps
        // enough digits (PyTorch parity is tested in eval mode; train mode against a reference).
        let x3 = x.clone().reshape([n, c, h * w]);
        let mean = x3.clone().mean_dim(2).mean_dim(0).reshape([c]);
        let mean_sq = x3.square().mean_dim(2).mean_dim(0).reshape([c]);
        let var = (mean_sq - mean.clone().square()).clamp_min(0.0);

        let stats = BatchStats::Variance {
            mean: mean.clone().detach(),
            var: var.clone().detach(),
        };
        self.update_running(k, stats, count);
        // Through gradient taps: the data-parallel overlap hears gamma's and beta's gradients
        // as soon as the backward has them (the fused kernels announce their own).
        let params = [tap::tapped(self.weight.val()), tap::tapped(self.bias.val())];
        self.apply(x, params, mean, var)
    }

    /// PyTorch's update with the unbiased variance ([`bn::update_running`]).
    fn update_running(&self, k: &KernelChoice, stats: BatchStats<B>, count: usize) {
        let device = stats.device();
        let running = [
            self.running_mean.value_sync().to_device(&device),
            self.running_var.value_sync().to_device(&device),
        ];
        let [running_mean, running_var] =
            bn::update_running(k, stats, running, self.momentum, count);
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());
    }

    /// `y = x * scale + shift` with `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
    ///
    /// `x` is viewed as `[N*C, H*W]` rows and scale/shift are repeated to one scalar per row
    /// (`[N*C, 1]`, a few KB): that is the broadcast flex runs as an in-place SIMD loop, while a
    /// `[1, C, 1, 1]` operand falls back to a strided element-wise walk several times slower.
    fn apply(
        &self,
        x: Tensor<B, 4>,
        [gamma, beta]: [Tensor<B, 1>; 2],
        mean: Tensor<B, 1>,
        var: Tensor<B, 1>,
    ) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let scale = gamma / var.add_scalar(self.eps).sqrt();
        let shift = beta - mean * scale.clone();
        let per_row = |t: Tensor<B, 1>| t.reshape([1, c]).repeat_dim(0, n).reshape([n * c, 1]);
        let y = x.reshape([n * c, h * w]) * per_row(scale) + per_row(shift);
        y.reshape([n, c, h, w])
    }
}

#[cfg(test)]
mod fused_tests {
    //! The fused CPU BatchNorm (+ReLU) against this module's generic Burn composition.
    use super::BatchNorm2d;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{AutodiffModule, Param};
    use burn::tensor::{activation::relu, Tensor, TensorData};
    use resnet_kernels::KernelChoice;

    type B = Autodiff<Flex>;

    fn data(shape: [usize; 4], seed: u32, offset: f32) -> TensorData {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97);
                (h % 1000) as f32 / 250.0 - 2.0 + offset
            })
            .collect::<Vec<_>>();
        TensorData::new(v, shape)
    }

    fn vec<const D: usize>(t: Tensor<impl burn::tensor::backend::Backend, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    fn close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: fused {x}, burn {y}"
            );
        }
    }

    #[test]
    fn fused_batchnorm_relu_matches_the_generic_composition() {
        let device = Default::default();
        let shape = [3, 5, 4, 6];
        for relu_after in [false, true] {
            let mut bn = BatchNorm2d::<B>::new(5, 0.1, 1e-5, false, &device);
            bn.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.5f32, 1.5, -1.0, 2.0, 0.1], [5]),
                &device,
            ));
            bn.bias = Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.1f32, -0.2, 0.3, 0.0, 1.0], [5]),
                &device,
            ));
            let reference = bn.clone();
            let x = Tensor::<B, 4>::from_data(data(shape, 1, 3.0), &device).require_grad();
            let r = Tensor::<B, 4>::from_data(data(shape, 2, 0.0), &device);

            let k = KernelChoice::default();
            let y = bn.forward_act(&k, x.clone(), relu_after);
            let g = (y.clone() * r.clone()).sum().backward();
            let y_ref = reference.forward_train(&KernelChoice::default(), x.clone());
            let y_ref = if relu_after { relu(y_ref) } else { y_ref };
            let g_ref = (y_ref.clone() * r).sum().backward();

            let name = format!("relu {relu_after}");
            close(&format!("{name} y"), &vec(y), &vec(y_ref));
            let grad = |t: &Tensor<B, 1>, g| vec(t.grad(g).expect("grad"));
            close(
                &format!("{name} dx"),
                &vec(x.grad(&g).expect("dx")),
                &vec(x.grad(&g_ref).expect("dx")),
            );
            close(
                &format!("{name} dgamma"),
                &grad(&bn.weight.val(), &g),
                &grad(&reference.weight.val(), &g_ref),
            );
            close(
                &format!("{name} dbeta"),
                &grad(&bn.bias.val(), &g),
                &grad(&reference.bias.val(), &g_ref),
            );
            let (m, v) = bn.running_stats();
            let (m_ref, v_ref) = reference.running_stats();
            close(&format!("{name} running mean"), &vec(m), &vec(m_ref));
            close(&format!("{name} running var"), &vec(v), &vec(v_ref));

            // Evaluation on the inner backend: one fused pass with the running statistics.
            let eval: BatchNorm2d<Flex> = bn.valid();
            let xe = || Tensor::<Flex, 4>::from_data(data(shape, 3, 1.0), &device);
            let ye_ref = eval.forward_eval(xe());
            let ye_ref = vec(if relu_after { relu(ye_ref) } else { ye_ref });
            // A uniquely owned input is normalised in place; a shared one is copied first
            // and left untouched.
            close(
                &format!("{name} eval y"),
                &vec(eval.forward_act(&k, xe(), relu_after)),
                &ye_ref,
            );
            let shared = xe();
            let ye = eval.forward_act(&k, shared.clone(), relu_after);
            close(&format!("{name} eval y (shared input)"), &vec(ye), &ye_ref);
            close(
                &format!("{name} shared input kept"),
                &vec(shared),
                &vec(xe()),
            );
        }
    }
}
