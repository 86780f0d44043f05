//! How gradients travel between ranks: as f32, or rounded to bfloat16 for the transfer (half
//! the bytes) and summed in f32 (`--grad-wire bf16`, #21).
//!
//! bfloat16 is the top half of an f32: the same sign and exponent (so the same range), 8 bits
//! of mantissa instead of 24. Rounding is to nearest, ties to even, as PyTorch's and CUDA's
//! conversions do; NaN stays NaN and ±inf stays ±inf, and a finite value beyond bfloat16's
//! largest becomes ±inf (the divergence guard then sees it).

/// The element type of gradient transfers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wire {
    /// 4 bytes an element, exact.
    #[default]
    F32,
    /// 2 bytes an element; each transfer rounds, every sum is f32.
    Bf16,
}

impl Wire {
    /// Bytes an element takes on the wire.
    pub fn bytes_per_element(self) -> usize {
        match self {
            Wire::F32 => 4,
            Wire::Bf16 => 2,
        }
    }

    /// The name the flag and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Wire::F32 => "f32",
            Wire::Bf16 => "bf16",
        }
    }
}

/// The bfloat16 nearest to `v` (ties to even), as its 16 bits.
pub fn to_bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        // Keep it a NaN whatever its payload: set the top mantissa bit (a quiet NaN).
        return ((b >> 16) as u16) | 0x0040;
    }
    // Adding 0x7FFF (+1 when the kept part is odd) and truncating rounds to nearest, ties to
    // even; a carry out of the mantissa correctly bumps the exponent (up to infinity).
    let round = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// The f32 a bfloat16 stands for (exact).
pub fn from_bf16_bits(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `v` rounded to the nearest bfloat16, as an f32.
pub fn round_bf16(v: f32) -> f32 {
    from_bf16_bits(to_bf16_bits(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_ties_to_even() {
        // Representable values are unchanged.
        for v in [0.0f32, -0.0, 1.0, -2.5, 0.15625, 3.0e38, f32::MIN_POSITIVE] {
            let r = round_bf16(round_bf16(v));
            assert_eq!(r.to_bits(), round_bf16(v).to_bits());
        }
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is the tie between 1 and 1 + 2^-7: to even (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 is the tie between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6).
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        // Just above a tie rounds up; just below rounds down.
        assert_eq!(round_bf16(f32::from_bits(0x3F80_8001)), 1.0 + 1.0 / 128.0);
        assert_eq!(round_bf16(f32::from_bits(0x3F80_7FFF)), 1.0);
        // Relative error at most 2^-8 (half a unit in the 8th significant bit) for normal values.
        for i in 1..2000u32 {
            let v = (i as f32).sqrt() * 1.37e-3 * if i % 2 == 0 { 1.0 } else { -1.0 };
            assert!(((round_bf16(v) - v) / v).abs() <= 1.0 / 256.0, "{v}");
        }
    }

    #[test]
    fn specials_survive() {
        assert!(round_bf16(f32::NAN).is_nan());
        // A NaN whose payload lives only in the low bits stays a NaN.
        assert!(round_bf16(f32::from_bits(0x7F80_0001)).is_nan());
        assert!(round_bf16(f32::from_bits(0xFF80_0001)).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // Beyond bfloat16's largest finite value (just under f32::MAX): infinity.
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(-f32::MAX), f32::NEG_INFINITY);
        // Small integers (the step flags that ride along) are exact up to 256.
        for i in 0..=256 {
            assert_eq!(round_bf16(i as f32), i as f32);
        }
        assert_eq!(
            Wire::Bf16.bytes_per_element() * 2,
            Wire::F32.bytes_per_element()
        );
    }
}
