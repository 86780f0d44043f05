//! The arithmetic of the model's convolutions: f32, or bf16 the way PyTorch's autocast runs a
//! convolution — operands rounded to bf16, products accumulated in f32, the result rounded to
//! bf16 — for the forward pass and both gradients. Weights, BatchNorm, the classifier, the
//! loss and the optimizer stay f32 (bf16 has f32's exponent range, so no loss scaling).
//!
//! Burn 0.21 has no automatic mixed precision, only backends whose every tensor is f16/bf16;
//! convolutions are where the arithmetic is, so they are what this switches. On the CPU the
//! rounding is applied around this crate's f32 kernels: the same numbers a bf16 GPU kernel
//! gives (up to the order of the f32 additions), so accuracy measured here carries over. On
//! CUDA the kernels run on bf16 tensors (`crate::conv::cuda`).
//!
//! It is part of the [`crate::KernelChoice`] a model carries: the trainer sets it from the run's
//! configuration, so every replica of a run computes with the same arithmetic.

pub use resnet_spec::ConvPrecision;

/// `v` rounded to the nearest bf16 (ties to even), as an f32: what converting to bf16 and back
/// gives. NaN stays NaN; values past bf16's largest finite one round to infinity, as in
/// hardware conversions.
#[inline]
pub fn round_bf16(v: f32) -> f32 {
    if v.is_nan() {
        return v;
    }
    let b = v.to_bits();
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

/// Every element of `v` through [`round_bf16`], in place.
pub fn round_bf16_slice(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = round_bf16(*x));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::bf16;

    #[test]
    fn rounding_matches_the_bf16_conversion_everywhere_that_matters() {
        let mut cases = vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            1.0 + 1.0 / 256.0,        // a tie: rounds to even (1.0)
            1.0 + 3.0 / 256.0,        // a tie: rounds to even (1 + 4/256)
            1.0 + 1.0 / 256.0 + 1e-6, // just above the tie: rounds up
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40, // subnormal
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.389_531_4e38, // bf16's largest finite value
        ];
        // A sweep over magnitudes and mantissas.
        let mut x = 1.234_567e-30f32;
        while x < 1e30 {
            cases.push(x);
            cases.push(-x * 1.000_123);
            x *= 3.7;
        }
        for v in cases {
            let ours = round_bf16(v);
            let reference = bf16::from_f32(v).to_f32();
            assert_eq!(
                ours.to_bits(),
                reference.to_bits(),
                "{v:e}: {ours:e} vs {reference:e}"
            );
        }
        assert!(round_bf16(f32::NAN).is_nan());
    }

    #[test]
    fn the_flag_parses_and_names_round_trip() {
        for p in [ConvPrecision::F32, ConvPrecision::Bf16] {
            assert_eq!(p.name().parse::<ConvPrecision>(), Ok(p));
        }
        let e = "fp16"
            .parse::<ConvPrecision>()
            .expect_err("not a precision");
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    }
}
