//! Cross-entropy against soft targets, which covers hard labels, label smoothing and (later)
//! mixed targets from Mixup/CutMix with one code path.

use burn::tensor::{activation::log_softmax, backend::Backend, Tensor, TensorData};

/// Soft targets `[n * k]` (row-major) for `labels`: `1 - s + s/k` on the label, `s/k` elsewhere
/// (PyTorch's `label_smoothing` convention).
pub fn smoothed_targets(labels: &[u16], k: usize, smoothing: f64) -> Vec<f32> {
    let off = (smoothing / k as f64) as f32;
    let on = (1.0 - smoothing) as f32 + off;
    let mut t = vec![off; labels.len() * k];
    for (row, &l) in t.chunks_exact_mut(k).zip(labels) {
        row[l as usize] = on;
    }
    t
}

/// Mean over the batch of `-sum_k target * log_softmax(logits)`; `logits`, `targets`: `[n, k]`.
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * targets).sum().neg().div_scalar(n)
}

/// Host targets to a tensor on `device`.
pub fn targets_tensor<B: Backend>(
    targets: Vec<f32>,
    n: usize,
    k: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(targets, [n, k]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_matches_pytorch_convention() {
        let t = smoothed_targets(&[2, 0], 4, 0.1);
        assert!((t[2] - 0.925).abs() < 1e-7);
        assert!((t[0] - 0.025).abs() < 1e-7);
        assert!((t.iter().sum::<f32>() - 2.0).abs() < 1e-6);
        assert_eq!(smoothed_targets(&[1], 3, 0.0), vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn soft_cross_entropy_value() {
        type B = burn::backend::Flex;
        let dev = Default::default();
        let logits = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0], [2, 3]),
            &dev,
        );
        let targets = targets_tensor::<B>(smoothed_targets(&[2, 0], 3, 0.0), 2, 3, &dev);
        let got: f32 = soft_cross_entropy(logits, targets).into_scalar();
        let l0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
        let l1 = 3f64.ln();
        assert!((got as f64 - (l0 + l1) / 2.0).abs() < 1e-5, "{got}");
    }
}
