//! Per-image augmentation on u8 planes, then normalisation to f32.
//!
//! Order (torchvision's usual pipeline): pad + random crop, horizontal flip, rotation/scale about
//! the centre, colour jitter (brightness, contrast, saturation, in that fixed order), normalise,
//! Cutout (the cut square is 0 after normalisation, i.e. the dataset mean).
//!
//! Deterministic: the random draws for image `index` in `epoch` come from a generator seeded by
//! `(seed, epoch, index)`, so results do not depend on thread scheduling, batch size or rank.
//! Draws for the newer transforms come after the crop/flip draws and only when enabled, so a
//! config that leaves them off produces exactly the crop/flip images it always did.
//!
//! (Over 400 lines with its unit tests; the code is ~300.)

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::synthetic::mix;
use crate::Normalization;

/// Augmentation settings. Defaults are the classic CIFAR recipe (pad-4 crop + flip); everything
/// else is off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Zero-padding before the random crop back to the original size; 0 disables. Default 4.
    pub crop_padding: usize,
    /// Random horizontal flip with probability 0.5. Default true.
    pub hflip: bool,
    /// Random rotation in `[-rotation, rotation]` degrees about the centre; 0 disables. Default 0.
    pub rotation: f64,
    /// Random zoom by a factor in `[1 - scale, 1 + scale]` about the centre; 0 disables. Default 0.
    pub scale: f64,
    /// Brightness factor in `[max(0, 1 - b), 1 + b]` (torchvision `ColorJitter`). Default 0 (off).
    pub brightness: f64,
    /// Contrast factor in `[max(0, 1 - c), 1 + c]`, around the image's mean grey. Default 0 (off).
    pub contrast: f64,
    /// Saturation factor in `[max(0, 1 - s), 1 + s]`, around each pixel's grey. Default 0 (off).
    pub saturation: f64,
    /// Cutout: side of a square (centre uniform over the image, clipped at the border) set to 0
    /// after normalisation; 0 disables. DeVries & Taylor use 16 on CIFAR-10. Default 0.
    pub cutout: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_padding: 4,
            hflip: true,
            ..Self::none()
        }
    }
}

impl AugmentConfig {
    /// No augmentation (evaluation).
    pub fn none() -> Self {
        Self {
            crop_padding: 0,
            hflip: false,
            rotation: 0.0,
            scale: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            cutout: 0,
        }
    }

    /// True when the config changes nothing.
    pub fn is_identity(&self) -> bool {
        *self == Self::none()
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: f64, max: f64| {
            if !(0.0..=max).contains(&v) {
                Err(format!("data.augment.{name} is {v}, expected 0..={max}"))
            } else {
                Ok(())
            }
        };
        check("rotation", self.rotation, 180.0)?;
        check("scale", self.scale, 0.99)?;
        check("brightness", self.brightness, 10.0)?;
        check("contrast", self.contrast, 10.0)?;
        check("saturation", self.saturation, 10.0)
    }

    fn affine(&self) -> bool {
        self.rotation > 0.0 || self.scale > 0.0
    }

    fn jitter(&self) -> bool {
        self.brightness > 0.0 || self.contrast > 0.0 || self.saturation > 0.0
    }
}

/// The random choices for one image; exposed so tests can check geometry exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Crop offset in the padded image, x.
    pub off_x: usize,
    /// Crop offset in the padded image, y.
    pub off_y: usize,
    /// Mirror horizontally.
    pub flip: bool,
    /// Rotation in degrees (counter-clockwise); 0 for none.
    pub angle: f32,
    /// Zoom factor; 1 for none.
    pub zoom: f32,
    /// Brightness, contrast and saturation factors; 1 for none.
    pub jitter: [f32; 3],
    /// Cutout square's centre (x, y), if any.
    pub cutout: Option<(usize, usize)>,
}

impl Draw {
    /// The identity draw for an image padded by `pad` (offsets at the unpadded origin).
    pub fn identity(pad: usize) -> Self {
        Self {
            off_x: pad,
            off_y: pad,
            flip: false,
            angle: 0.0,
            zoom: 1.0,
            jitter: [1.0; 3],
            cutout: None,
        }
    }
}

impl AugmentConfig {
    /// The draws for `(seed, epoch, index)` of a `w` x `h` image.
    pub fn draw(&self, seed: u64, epoch: u64, index: u64, h: usize, w: usize) -> Draw {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(epoch ^ mix(index))));
        let p = self.crop_padding;
        let mut d = Draw::identity(p);
        if p > 0 {
            d.off_x = rng.random_range(0..=2 * p);
            d.off_y = rng.random_range(0..=2 * p);
        }
        d.flip = self.hflip && rng.random_bool(0.5);
        if self.affine() {
            d.zoom = factor(&mut rng, self.scale);
            d.angle = if self.rotation > 0.0 {
                rng.random_range(-self.rotation..=self.rotation) as f32
            } else {
                0.0
            };
        }
        if self.jitter() {
            d.jitter = [
                factor(&mut rng, self.brightness),
                factor(&mut rng, self.contrast),
                factor(&mut rng, self.saturation),
            ];
        }
        if self.cutout > 0 {
            d.cutout = Some((rng.random_range(0..w), rng.random_range(0..h)));
        }
        d
    }
}

/// A factor uniform in `[max(0, 1 - amount), 1 + amount]`; exactly 1 when `amount` is 0.
fn factor(rng: &mut ChaCha8Rng, amount: f64) -> f32 {
    if amount > 0.0 {
        rng.random_range((1.0 - amount).max(0.0)..=1.0 + amount) as f32
    } else {
        1.0
    }
}

/// Writes image `src` (u8 `[3, h, w]`) into `dst` (f32 `[3, h, w]`), transformed per `draw` and
/// normalised. Pixels that come from the crop padding or from outside the rotated/zoomed image
/// are 0 before normalisation, as torchvision's `RandomCrop(padding=4)` and `RandomAffine` do.
pub fn augment_into(
    src: &[u8],
    h: usize,
    w: usize,
    cfg: &AugmentConfig,
    draw: Draw,
    norm: &Normalization,
    dst: &mut [f32],
) {
    let pad = cfg.crop_padding;
    if draw.angle != 0.0 || draw.zoom != 1.0 {
        affine_into(src, h, w, pad, &draw, dst);
    } else {
        shift_into(src, h, w, pad, &draw, dst);
    }
    if draw.jitter != [1.0; 3] {
        jitter(dst, h * w, draw.jitter);
    }
    let plane = h * w;
    for c in 0..3 {
        let scale = 1.0 / (255.0 * norm.std[c]);
        let bias = -norm.mean[c] / norm.std[c];
        for v in &mut dst[c * plane..(c + 1) * plane] {
            *v = *v * scale + bias;
        }
    }
    if let Some((cx, cy)) = draw.cutout {
        let half = cfg.cutout / 2;
        let (x0, x1) = (cx.saturating_sub(half), (cx + cfg.cutout - half).min(w));
        let (y0, y1) = (cy.saturating_sub(half), (cy + cfg.cutout - half).min(h));
        for c in 0..3 {
            for y in y0..y1 {
                dst[c * plane + y * w + x0..c * plane + y * w + x1].fill(0.0);
            }
        }
    }
}

/// Crop and flip only: every output pixel is one source pixel (or padding).
fn shift_into(src: &[u8], h: usize, w: usize, pad: usize, draw: &Draw, dst: &mut [f32]) {
    let plane = h * w;
    for c in 0..3 {
        let s = &src[c * plane..(c + 1) * plane];
        let d = &mut dst[c * plane..(c + 1) * plane];
        for y in 0..h {
            // Source row in the unpadded image, if the crop row lands inside it.
            let sy = (y + draw.off_y).checked_sub(pad).filter(|&v| v < h);
            for x in 0..w {
                let xx = if draw.flip { w - 1 - x } else { x };
                let sx = (xx + draw.off_x).checked_sub(pad).filter(|&v| v < w);
                d[y * w + x] = match (sy, sx) {
                    (Some(sy), Some(sx)) => s[sy * w + sx] as f32,
                    _ => 0.0,
                };
            }
        }
    }
}

/// Crop, flip, then rotation and zoom about the image centre: each output pixel maps back
/// through the inverse transform and is sampled bilinearly (0 outside the source).
fn affine_into(src: &[u8], h: usize, w: usize, pad: usize, draw: &Draw, dst: &mut [f32]) {
    let plane = h * w;
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (sin, cos) = draw.angle.to_radians().sin_cos();
    let inv = 1.0 / draw.zoom;
    let at = |s: &[u8], x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            s[y as usize * w + x as usize] as f32
        }
    };
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            // Inverse rotation (image y points down, so counter-clockwise on screen is -angle).
            let ux = cx + (cos * dx - sin * dy) * inv;
            let uy = cy + (sin * dx + cos * dy) * inv;
            let fx = if draw.flip { w as f32 - 1.0 - ux } else { ux };
            let sx = fx + draw.off_x as f32 - pad as f32;
            let sy = uy + draw.off_y as f32 - pad as f32;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            for c in 0..3 {
                let s = &src[c * plane..(c + 1) * plane];
                let top = at(s, x0, y0) * (1.0 - ax) + at(s, x0 + 1, y0) * ax;
                let bottom = at(s, x0, y0 + 1) * (1.0 - ax) + at(s, x0 + 1, y0 + 1) * ax;
                dst[c * plane + y * w + x] = top * (1.0 - ay) + bottom * ay;
            }
        }
    }
}

/// Brightness, contrast, saturation on 0..255 planes, clamped after each (torchvision's
/// `adjust_*` semantics; greys use ITU-R 601 weights).
fn jitter(img: &mut [f32], plane: usize, [b, c, s]: [f32; 3]) {
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    if b != 1.0 {
        img.iter_mut().for_each(|v| *v = clamp(*v * b));
    }
    let grey = |img: &[f32], i: usize| {
        0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i]
    };
    if c != 1.0 {
        let mean = (0..plane).map(|i| grey(img, i)).sum::<f32>() / plane as f32;
        img.iter_mut()
            .for_each(|v| *v = clamp(mean + c * (*v - mean)));
    }
    if s != 1.0 {
        for i in 0..plane {
            let g = grey(img, i);
            for ch in 0..3 {
                let v = &mut img[ch * plane + i];
                *v = clamp(g + s * (*v - g));
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

    fn pad(p: usize) -> AugmentConfig {
        AugmentConfig {
            crop_padding: p,
            ..AugmentConfig::none()
        }
    }

    fn run(src: &[u8], h: usize, w: usize, cfg: &AugmentConfig, d: Draw) -> Vec<f32> {
        let mut dst = vec![-1f32; 3 * h * w];
        augment_into(src, h, w, cfg, d, &ID, &mut dst);
        dst
    }

    #[test]
    fn identity_draw_copies_pixels() {
        let src = ramp(4, 5);
        let dst = run(&src, 4, 5, &pad(2), Draw::identity(2));
        let back: Vec<u8> = dst.iter().map(|v| v.round() as u8).collect();
        assert_eq!(back, src);
    }

    #[test]
    fn flip_mirrors_rows() {
        let src = ramp(2, 3);
        let d = Draw {
            flip: true,
            ..Draw::identity(0)
        };
        let dst = run(&src, 2, 3, &pad(0), d);
        // Row 0 of channel 0 is [0,1,2] -> [2,1,0].
        assert_eq!(&dst[0..3], &[2.0, 1.0, 0.0]);
        assert_eq!(&dst[3..6], &[5.0, 4.0, 3.0]);
    }

    #[test]
    fn crop_shifts_and_zero_fills() {
        let src = vec![9u8; 3 * 4 * 4];
        // Offset (0,0) in an image padded by 2: the top two rows and left two columns are padding.
        let d = Draw {
            off_x: 0,
            off_y: 0,
            ..Draw::identity(2)
        };
        let dst = run(&src, 4, 4, &pad(2), d);
        assert_eq!(&dst[0..4], &[0.0; 4]);
        assert_eq!(&dst[8..12], &[0.0, 0.0, 9.0, 9.0]);
        assert_eq!(&dst[12..16], &[0.0, 0.0, 9.0, 9.0]);
    }

    #[test]
    fn rotation_by_90_degrees_moves_known_pixels() {
        // A 3x3 image with one bright pixel at (x=2, y=1) (middle of the right edge).
        let mut src = vec![0u8; 27];
        src[5] = 200;
        let d = Draw {
            angle: 90.0,
            ..Draw::identity(0)
        };
        let dst = run(&src, 3, 3, &pad(0), d);
        // Counter-clockwise on screen: the right edge's middle goes to the top edge's middle.
        assert!((dst[1] - 200.0).abs() < 1e-3, "{:?}", &dst[0..9]);
        assert!(dst[5].abs() < 1e-3);
        let sum: f32 = dst[0..9].iter().sum();
        assert!((sum - 200.0).abs() < 1e-3);
    }

    #[test]
    fn zoom_in_keeps_the_centre_and_spreads_it() {
        let mut src = vec![0u8; 3 * 25];
        src[12] = 100; // centre of a 5x5 image
        let d = Draw {
            zoom: 2.0,
            ..Draw::identity(0)
        };
        let dst = run(&src, 5, 5, &pad(0), d);
        assert!((dst[12] - 100.0).abs() < 1e-3);
        // Zoom 2: the neighbour samples half-way to the next source pixel.
        assert!((dst[13] - 50.0).abs() < 1e-3, "{:?}", &dst[0..25]);
        assert!((dst[11] - 50.0).abs() < 1e-3);
    }

    #[test]
    fn jitter_matches_torchvision_formulas() {
        // Two pixels: (R,G,B) = (100, 50, 0) and (0, 50, 100).
        let src = vec![100u8, 0, 50, 50, 0, 100];
        let bright = Draw {
            jitter: [1.5, 1.0, 1.0],
            ..Draw::identity(0)
        };
        let out = run(&src, 1, 2, &pad(0), bright);
        let want = [150.0, 0.0, 75.0, 75.0, 0.0, 150.0];
        assert!(
            out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-3),
            "{out:?}"
        );
        let grey = Draw {
            jitter: [1.0, 1.0, 0.0],
            ..Draw::identity(0)
        };
        let g0 = 0.299 * 100.0 + 0.587 * 50.0;
        let out = run(&src, 1, 2, &pad(0), grey);
        for ch in 0..3 {
            assert!((out[ch * 2] - g0).abs() < 1e-3);
        }
        let flat = Draw {
            jitter: [1.0, 0.0, 1.0],
            ..Draw::identity(0)
        };
        let out = run(&src, 1, 2, &pad(0), flat);
        let mean = out[0];
        assert!(out.iter().all(|v| (v - mean).abs() < 1e-3), "{out:?}");
    }

    #[test]
    fn cutout_zeroes_a_clipped_square_after_normalisation() {
        let src = vec![7u8; 3 * 6 * 6];
        let cfg = AugmentConfig {
            cutout: 4,
            ..AugmentConfig::none()
        };
        let d = Draw {
            cutout: Some((0, 5)),
            ..Draw::identity(0)
        };
        let norm = Normalization {
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        let mut dst = vec![0f32; 3 * 36];
        augment_into(&src, 6, 6, &cfg, d, &norm, &mut dst);
        // Square [-2, 2) x [3, 7) clipped to x 0..2, y 3..6: 6 pixels per channel are 0.
        let zeros = dst.iter().filter(|v| **v == 0.0).count();
        assert_eq!(zeros, 18);
        assert_eq!(dst[3 * 6], 0.0);
        assert_eq!(dst[5 * 6 + 1], 0.0);
        assert_ne!(dst[5 * 6 + 2], 0.0);
        assert_ne!(dst[2 * 6], 0.0);
    }

    #[test]
    fn draws_are_deterministic_and_vary() {
        let cfg = AugmentConfig::default();
        assert_eq!(cfg.draw(1, 2, 3, 32, 32), cfg.draw(1, 2, 3, 32, 32));
        let distinct: std::collections::HashSet<_> = (0..200)
            .map(|i| cfg.draw(1, 2, i, 32, 32))
            .map(|d| (d.off_x, d.off_y, d.flip))
            .collect();
        assert!(distinct.len() > 50);
        assert_eq!(
            AugmentConfig::none().draw(1, 2, 3, 32, 32),
            Draw::identity(0)
        );
    }

    #[test]
    fn new_transforms_leave_crop_and_flip_draws_unchanged() {
        let all = AugmentConfig {
            rotation: 15.0,
            scale: 0.1,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            cutout: 8,
            ..AugmentConfig::default()
        };
        for i in 0..50 {
            let (a, b) = (
                AugmentConfig::default().draw(7, 1, i, 32, 32),
                all.draw(7, 1, i, 32, 32),
            );
            assert_eq!((a.off_x, a.off_y, a.flip), (b.off_x, b.off_y, b.flip));
            assert!(b.angle.abs() <= 15.0 && (0.9..=1.1).contains(&b.zoom));
            assert!(b.jitter.iter().all(|f| (0.6..=1.4).contains(f)));
            assert!(b.cutout.is_some_and(|(x, y)| x < 32 && y < 32));
        }
        assert!(all.validate().is_ok());
        let bad = AugmentConfig {
            scale: 1.5,
            ..AugmentConfig::none()
        };
        let err = bad.validate().err().unwrap_or_default();
        assert!(err.contains("data.augment.scale"), "{err}");
    }
}
