//! Training-mode BatchNorm maths from saved statistics, in Burn operations on any backend: the
//! biased batch variance from cuDNN's saved inverse deviation, and the backward pass. The
//! running statistics (`super::running`) use the first, the cuDNN node the second when cuDNN
//! declines a backward call; both are tested here on the CPU against Burn's autodiff.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The biased batch variance from `invstd = 1 / sqrt(var + eps)` (what cuDNN saves): the
/// model's running-statistics update takes the biased variance, as the CPU kernels return it.
pub fn biased_var<B: Backend>(invstd: Tensor<B, 1>, eps: f64) -> Tensor<B, 1> {
    invstd.powf_scalar(-2.0).sub_scalar(eps).clamp_min(0.0)
}

fn per_channel<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 4> {
    let c = t.dims()[0];
    t.reshape([1, c, 1, 1])
}

/// The gradients of `y = gamma * (x - mean) * invstd + beta` with batch statistics `mean` and
/// `invstd` (over N, H, W per channel) from the output's gradient `dy`: `(dx, dgamma, dbeta)`.
pub fn backward<B: Backend>(
    x: Tensor<B, 4>,
    dy: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    invstd: Tensor<B, 1>,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let [n, c, h, w] = x.dims();
    let count = (n * h * w) as f64;
    let sum_c = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([c]);
    let xhat = (x - per_channel(mean)) * per_channel(invstd.clone());
    let dbeta = sum_c(dy.clone());
    let dgamma = sum_c(dy.clone() * xhat.clone());
    // dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
    let k = per_channel((gamma * invstd).div_scalar(count));
    let dx = k
        * (dy.mul_scalar(count) - per_channel(dbeta.clone()) - xhat * per_channel(dgamma.clone()));
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type B = Flex;
    type A = Autodiff<Flex>;

    fn data(shape: [usize; 4], seed: u32) -> TensorData {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed * 7919);
                (h % 2000) as f32 / 500.0 - 1.5
            })
            .collect::<Vec<_>>();
        TensorData::new(v, shape)
    }

    fn vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Burn's autodiff of the plain definition, the reference.
    fn reference(shape: [usize; 4], eps: f64) -> [Vec<f32>; 4] {
        let dev = Default::default();
        let c = shape[1];
        let x = Tensor::<A, 4>::from_data(data(shape, 1), &dev).require_grad();
        let gamma = Tensor::<A, 1>::from_data(
            TensorData::new(
                (0..c).map(|i| 0.5 + i as f32 * 0.1).collect::<Vec<_>>(),
                [c],
            ),
            &dev,
        )
        .require_grad();
        let beta = Tensor::<A, 1>::zeros([c], &dev).require_grad();
        let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
        let var = (x.clone() - mean.clone())
            .square()
            .mean_dim(0)
            .mean_dim(2)
            .mean_dim(3);
        let y = (x.clone() - mean) / var.add_scalar(eps).sqrt()
            * gamma.clone().reshape([1, c, 1, 1])
            + beta.clone().reshape([1, c, 1, 1]);
        // A loss whose gradient differs per element, so every term of dx matters.
        let weights = Tensor::<A, 4>::from_data(data(shape, 2), &dev);
        let grads = (y * weights).sum().backward();
        [
            vec(x.grad(&grads).expect("dx")),
            vec(gamma.grad(&grads).expect("dgamma")),
            vec(beta.grad(&grads).expect("dbeta")),
            vec(Tensor::<B, 4>::from_data(data(shape, 2), &dev)),
        ]
    }

    #[test]
    fn backward_from_saved_statistics_matches_autodiff() {
        for (shape, eps) in [
            ([4, 3, 5, 5], 1e-5),
            ([37, 2, 1, 1], 1e-3),
            ([1, 4, 3, 7], 1e-5),
        ] {
            let [dx_ref, dg_ref, db_ref, dy] = reference(shape, eps);
            let dev = Default::default();
            let c = shape[1];
            let x = Tensor::<B, 4>::from_data(data(shape, 1), &dev);
            let gamma = Tensor::<B, 1>::from_data(
                TensorData::new(
                    (0..c).map(|i| 0.5 + i as f32 * 0.1).collect::<Vec<_>>(),
                    [c],
                ),
                &dev,
            );
            let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3).reshape([c]);
            let var = (x.clone() - mean.clone().reshape([1, c, 1, 1]))
                .square()
                .mean_dim(0)
                .mean_dim(2)
                .mean_dim(3)
                .reshape([c]);
            let invstd = var.add_scalar(eps).sqrt().recip();
            let dy = Tensor::<B, 4>::from_data(TensorData::new(dy, shape), &dev);
            let (dx, dgamma, dbeta) = backward(x, dy, gamma, mean, invstd);
            close("dx", &vec(dx), &dx_ref, 1e-4);
            close("dgamma", &vec(dgamma), &dg_ref, 1e-4);
            close("dbeta", &vec(dbeta), &db_ref, 1e-5);
        }
    }

    #[test]
    fn biased_variance_comes_back_from_the_inverse_deviation() {
        let dev = Default::default();
        let var = [0.0f32, 1e-6, 0.25, 1.0, 37.5];
        let eps = 1e-5;
        let invstd: Vec<f32> = var
            .iter()
            .map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32)
            .collect();
        let back = vec(biased_var(
            Tensor::<B, 1>::from_data(TensorData::new(invstd, [5]), &dev),
            eps,
        ));
        for (v, b) in var.iter().zip(&back) {
            assert!(*b >= 0.0, "never negative: {b}");
            // f32 round-off of 1/invstd^2 is relative to var + eps.
            assert!(
                (v - b).abs() <= 1e-6 * (v + eps as f32) + 1e-9,
                "{v} vs {b}"
            );
        }
    }
}
