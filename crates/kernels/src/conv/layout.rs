//! NCHW ↔ NHWC for cuDNN's channels-last bf16 convolutions (`--cuda-layout nhwc`). The model's
//! tensors stay NCHW; the convolution node holds its operands as Burn tensors of the physical
//! NHWC shape (`[n, h, w, c]`, filters `[k, r, s, c]`), which is what cuDNN's NHWC descriptors
//! describe (`crate::cudnn::conv_plan::Layout::physical`).
//!
//! Each conversion is a permuted view and a cast: the cast writes the view densely in its
//! logical order, so the permutation costs no launch of its own — the bf16 path makes those
//! casts anyway. Generic over the backend, so the index mapping is a CPU test.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::FloatDType;

/// `[n, c, h, w]` → `[n, h, w, c]`.
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// `[n, h, w, c]` → `[n, c, h, w]`.
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// `t` (`[n, c, h, w]`) as a `[n, h, w, c]` tensor of `dtype`.
pub(crate) fn to_nhwc<B: Backend>(t: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    B::float_cast(B::float_permute(t, &TO_NHWC), dtype)
}

/// `t` (`[n, h, w, c]`) as a `[n, c, h, w]` tensor of `dtype`.
pub(crate) fn from_nhwc<B: Backend>(t: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    B::float_cast(nchw_view::<B>(t), dtype)
}

/// `t` (`[n, h, w, c]`) seen as `[n, c, h, w]`, without moving data (for the fallbacks, which
/// take NCHW operands and read strides).
pub(crate) fn nchw_view<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    B::float_permute(t, &TO_NCHW)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};

    fn tensor(v: Vec<f32>, shape: [usize; 4]) -> FloatTensor<Flex> {
        Tensor::<Flex, 4>::from_data(TensorData::new(v, shape), &Default::default())
            .into_primitive()
            .tensor()
    }

    fn host(t: FloatTensor<Flex>) -> (Vec<usize>, Vec<f32>) {
        let t = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(t));
        let shape = t.dims().to_vec();
        let v = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
        (shape, v)
    }

    #[test]
    fn nhwc_puts_channels_innermost_and_back() {
        let (n, c, h, w) = (2, 3, 4, 5);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| i as f32 * 0.37 - 7.0).collect();
        let (shape, y) = host(to_nhwc::<Flex>(
            tensor(x.clone(), [n, c, h, w]),
            FloatDType::F32,
        ));
        assert_eq!(shape, [n, h, w, c]);
        for (ni, ci, hi, wi) in (0..n).flat_map(|a| {
            (0..c).flat_map(move |b| (0..h).flat_map(move |d| (0..w).map(move |e| (a, b, d, e))))
        }) {
            let nchw = ((ni * c + ci) * h + hi) * w + wi;
            let nhwc = ((ni * h + hi) * w + wi) * c + ci;
            assert_eq!(y[nhwc], x[nchw], "[{ni}, {ci}, {hi}, {wi}]");
        }
        // And back, exactly.
        let back = from_nhwc::<Flex>(tensor(y, [n, h, w, c]), FloatDType::F32);
        assert_eq!(host(back), (vec![n, c, h, w], x.clone()));
        // A view, not a copy, for the fallbacks: the same values in NCHW order.
        let (shape, v) = host(nchw_view::<Flex>(to_nhwc::<Flex>(
            tensor(x.clone(), [n, c, h, w]),
            FloatDType::F32,
        )));
        assert_eq!((shape, v), (vec![n, c, h, w], x));
    }

    #[test]
    fn the_bf16_round_trip_is_the_bf16_rounding() {
        let x: Vec<f32> = (0..2 * 3 * 2 * 2)
            .map(|i| 1.0 + i as f32 / 1000.0)
            .collect();
        let bf16 = to_nhwc::<Flex>(tensor(x.clone(), [2, 3, 2, 2]), FloatDType::BF16);
        let (_, back) = host(from_nhwc::<Flex>(bf16, FloatDType::F32));
        let mut rounded = x.clone();
        crate::precision::round_bf16_slice(&mut rounded);
        assert_eq!(back, rounded);
        assert_ne!(back, x, "bf16 rounds these values");
    }
}
