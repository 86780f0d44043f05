//! Per-image augmentation on u8 planes, then normalisation to f32.
//!
//! Deterministic: the random draws for image `index` in `epoch` come from a generator seeded by
//! `(seed, epoch, index)`, so results do not depend on thread scheduling, batch size or rank.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::synthetic::mix;
use crate::Normalization;

/// Augmentation settings. Defaults are the classic CIFAR recipe (pad-4 crop + flip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Zero-padding before the random crop back to the original size; 0 disables. Default 4.
    pub crop_padding: usize,
    /// Random horizontal flip with probability 0.5. Default true.
    pub hflip: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_padding: 4,
            hflip: true,
        }
    }
}

impl AugmentConfig {
    /// No augmentation (evaluation).
    pub fn none() -> Self {
        Self {
            crop_padding: 0,
            hflip: false,
        }
    }

    /// True when the config changes nothing.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }
}

/// The random choices for one image; exposed so tests can check geometry exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Crop offset in the padded image, x.
    pub off_x: usize,
    /// Crop offset in the padded image, y.
    pub off_y: usize,
    /// Mirror horizontally.
    pub flip: bool,
}

impl AugmentConfig {
    /// The draws for `(seed, epoch, index)`.
    pub fn draw(&self, seed: u64, epoch: u64, index: u64) -> Draw {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(epoch ^ mix(index))));
        let p = self.crop_padding;
        Draw {
            off_x: if p > 0 {
                rng.random_range(0..=2 * p)
            } else {
                p
            },
            off_y: if p > 0 {
                rng.random_range(0..=2 * p)
            } else {
                p
            },
            flip: self.hflip && rng.random_bool(0.5),
        }
    }
}

/// Writes image `src` (u8 `[3, h, w]`) into `dst` (f32 `[3, h, w]`), cropped/flipped per `draw`
/// and normalised. Pixels that come from the padding are 0 before normalisation, as
/// torchvision's `RandomCrop(padding=4)` does.
pub fn augment_into(
    src: &[u8],
    h: usize,
    w: usize,
    pad: usize,
    draw: Draw,
    norm: &Normalization,
    dst: &mut [f32],
) {
    let plane = h * w;
    for c in 0..3 {
        let scale = 1.0 / (255.0 * norm.std[c]);
        let bias = -norm.mean[c] / norm.std[c];
        let s = &src[c * plane..(c + 1) * plane];
        let d = &mut dst[c * plane..(c + 1) * plane];
        for y in 0..h {
            // Source row in the unpadded image, if the crop row lands inside it.
            let sy = (y + draw.off_y).checked_sub(pad).filter(|&v| v < h);
            for x in 0..w {
                let xx = if draw.flip { w - 1 - x } else { x };
                let sx = (xx + draw.off_x).checked_sub(pad).filter(|&v| v < w);
                let v = match (sy, sx) {
                    (Some(sy), Some(sx)) => s[sy * w + sx] as f32,
                    _ => 0.0,
                };
                d[y * w + x] = v * scale + bias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Normalization = Normalization {
        mean: [0.0; 3],
        std: [1.0 / 255.0; 3],
    };

    fn ramp(h: usize, w: usize) -> Vec<u8> {
        (0..3 * h * w).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn identity_draw_copies_pixels() {
        let src = ramp(4, 5);
        let mut dst = vec![0f32; 60];
        let d = Draw {
            off_x: 2,
            off_y: 2,
            flip: false,
        };
        augment_into(&src, 4, 5, 2, d, &ID, &mut dst);
        let back: Vec<u8> = dst.iter().map(|v| v.round() as u8).collect();
        assert_eq!(back, src);
    }

    #[test]
    fn flip_mirrors_rows() {
        let src = ramp(2, 3);
        let mut dst = vec![0f32; 18];
        augment_into(
            &src,
            2,
            3,
            0,
            Draw {
                off_x: 0,
                off_y: 0,
                flip: true,
            },
            &ID,
            &mut dst,
        );
        // Row 0 of channel 0 is [0,1,2] -> [2,1,0].
        assert_eq!(&dst[0..3], &[2.0, 1.0, 0.0]);
        assert_eq!(&dst[3..6], &[5.0, 4.0, 3.0]);
    }

    #[test]
    fn crop_shifts_and_zero_fills() {
        let src = vec![9u8; 3 * 4 * 4];
        let mut dst = vec![-1f32; 48];
        // Offset (0,0) in an image padded by 2: the top two rows and left two columns are padding.
        augment_into(
            &src,
            4,
            4,
            2,
            Draw {
                off_x: 0,
                off_y: 0,
                flip: false,
            },
            &ID,
            &mut dst,
        );
        assert_eq!(&dst[0..4], &[0.0; 4]);
        assert_eq!(&dst[8..12], &[0.0, 0.0, 9.0, 9.0]);
        assert_eq!(&dst[12..16], &[0.0, 0.0, 9.0, 9.0]);
    }

    #[test]
    fn draws_are_deterministic_and_vary() {
        let cfg = AugmentConfig::default();
        assert_eq!(cfg.draw(1, 2, 3), cfg.draw(1, 2, 3));
        let distinct: std::collections::HashSet<_> = (0..200)
            .map(|i| cfg.draw(1, 2, i))
            .map(|d| (d.off_x, d.off_y, d.flip))
            .collect();
        assert!(distinct.len() > 50);
        let none = AugmentConfig::none().draw(1, 2, 3);
        assert_eq!(
            none,
            Draw {
                off_x: 0,
                off_y: 0,
                flip: false
            }
        );
    }
}
