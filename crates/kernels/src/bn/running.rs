//! BatchNorm's running statistics, PyTorch's way: `running = (1 - momentum) * running +
//! momentum * batch`, the variance unbiased (`count / (count - 1)` times the batch's biased
//! one; the biased one when a channel has a single element). The model keeps the running
//! tensors; this is how they move.
//!
//! In Burn's ops that is about a dozen launches per BatchNorm on a GPU (the variance from
//! cuDNN's saved inverse deviation, then two scaled sums), each over a vector of 64–2048
//! channels: on the H200, 20 BatchNorms made ~260 of a ResNet-18 step's ~720 cubecl launches
//! (benchmarks/RESULTS.md, 2026-12-04). With `--cuda-bn cudnn-fused` one kernel
//! (`cuda_running.rs`) does it from cuDNN's saved statistics.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::choice::KernelChoice;

/// The batch statistics a training-mode BatchNorm normalised with.
#[derive(Clone, Debug)]
pub enum BatchStats<B: Backend> {
    /// The mean and the biased variance (the CPU kernels, the generic code).
    Variance {
        /// Per-channel mean, `[C]`.
        mean: Tensor<B, 1>,
        /// Per-channel biased variance, `[C]`.
        var: Tensor<B, 1>,
    },
    /// The mean and `1 / sqrt(var + eps)`, as cuDNN saves them.
    InvStd {
        /// Per-channel mean, `[C]`.
        mean: Tensor<B, 1>,
        /// Per-channel inverse standard deviation, `[C]`.
        invstd: Tensor<B, 1>,
        /// The epsilon inside that square root.
        eps: f64,
    },
}

impl<B: Backend> BatchStats<B> {
    /// Where the statistics live.
    pub fn device(&self) -> B::Device {
        match self {
            Self::Variance { mean, .. } | Self::InvStd { mean, .. } => mean.device(),
        }
    }

    /// The mean and the biased variance.
    pub fn mean_and_var(self) -> (Tensor<B, 1>, Tensor<B, 1>) {
        match self {
            Self::Variance { mean, var } => (mean, var),
            Self::InvStd { mean, invstd, eps } => (mean, super::generic::biased_var(invstd, eps)),
        }
    }
}

/// The factor from the biased to the unbiased variance over `count` elements per channel.
pub fn unbiased_factor(count: usize) -> f64 {
    if count > 1 {
        count as f64 / (count as f64 - 1.0)
    } else {
        1.0
    }
}

/// The running mean and variance after one training step with `stats` over `count` elements
/// per channel: `[mean, var]`, fresh tensors (the old ones are not written).
pub fn update_running<B: Backend>(
    k: &KernelChoice,
    stats: BatchStats<B>,
    [running_mean, running_var]: [Tensor<B, 1>; 2],
    momentum: f64,
    count: usize,
) -> [Tensor<B, 1>; 2] {
    let correction = unbiased_factor(count);
    #[cfg(feature = "cuda")]
    if let BatchStats::InvStd { mean, invstd, eps } = &stats {
        if let Some(out) = super::cuda_running::update(
            k,
            [mean, invstd],
            [&running_mean, &running_var],
            [momentum, *eps, correction],
        ) {
            return out;
        }
    }
    let _ = k;
    let (mean, var) = stats.mean_and_var();
    [
        running_mean.mul_scalar(1.0 - momentum) + mean.mul_scalar(momentum),
        running_var.mul_scalar(1.0 - momentum) + var.mul_scalar(momentum * correction),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    fn t(v: &[f32]) -> Tensor<Flex, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    fn vec(t: Tensor<Flex, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    #[test]
    fn running_statistics_follow_pytorch_by_hand() {
        let k = KernelChoice::default();
        // Batch of 5 per channel: the variance is scaled by 5/4 before it is averaged in.
        let stats = BatchStats::Variance {
            mean: t(&[1.0, -2.0]),
            var: t(&[4.0, 0.8]),
        };
        let [m, v] = update_running(&k, stats, [t(&[0.0, 1.0]), t(&[1.0, 2.0])], 0.1, 5);
        let (m, v) = (vec(m), vec(v));
        let want_m = [0.1f32, 0.9 - 0.2];
        let want_v = [0.9f32 + 0.1 * 5.0, 1.8 + 0.1 * 1.0];
        for i in 0..2 {
            assert!(
                (m[i] - want_m[i]).abs() < 1e-6,
                "mean {i}: {} vs {}",
                m[i],
                want_m[i]
            );
            assert!(
                (v[i] - want_v[i]).abs() < 1e-6,
                "var {i}: {} vs {}",
                v[i],
                want_v[i]
            );
        }
        // One element per channel has no unbiased variance: the biased one goes in.
        assert_eq!(unbiased_factor(1), 1.0);
        assert_eq!(unbiased_factor(4), 4.0 / 3.0);
    }

    #[test]
    fn cudnn_saved_statistics_give_the_same_running_update() {
        let k = KernelChoice::default();
        let eps = 1e-5;
        let var = [4.0f32, 0.25, 1e-7];
        // invstd as cuDNN saves it; a variance below eps comes back clamped at 0 at worst.
        let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps as f32).sqrt()).collect();
        let running = || [t(&[0.5, 0.5, 0.5]), t(&[2.0, 2.0, 2.0])];
        let mean = [1.0f32, 2.0, 3.0];
        let a = update_running(
            &k,
            BatchStats::Variance {
                mean: t(&mean),
                var: t(&var),
            },
            running(),
            0.1,
            256,
        );
        let b = update_running(
            &k,
            BatchStats::InvStd {
                mean: t(&mean),
                invstd: t(&invstd),
                eps,
            },
            running(),
            0.1,
            256,
        );
        for (x, y) in a.into_iter().zip(b) {
            for (p, q) in vec(x).iter().zip(vec(y)) {
                assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{p} vs {q}");
            }
        }
    }
}
