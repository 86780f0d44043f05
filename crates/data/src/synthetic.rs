//! A deterministic synthetic dataset a ResNet can learn, for demos and tests: no download needed.
//!
//! Class = shape (disk, square, triangle, ring, bars, plus, cross, checker, dots). Colours,
//! position, size and noise are random and carry no class information, so a model has to learn
//! shape, not a colour shortcut. Image `i` depends only on `(seed, split, i)`: any size, any order.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ImageDataset;

/// Class names of the synthetic dataset, index = label.
pub const SYNTHETIC_CLASSES: [&str; 10] = [
    "disk", "square", "triangle", "ring", "hbar", "vbar", "plus", "xcross", "checker", "dots",
];

/// SplitMix64: a cheap, well-mixed hash to derive independent per-item seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Generates `n` images of `size`x`size`. `train` selects an independent stream for the test split.
pub fn synthetic(n: usize, size: usize, seed: u64, train: bool) -> ImageDataset {
    let split = if train {
        0x7472_6169_6e00
    } else {
        0x7465_7374_0000
    };
    let plane = size * size;
    let mut pixels = vec![0u8; n * 3 * plane];
    let mut labels = Vec::with_capacity(n);
    for (i, img) in pixels.chunks_exact_mut(3 * plane).enumerate() {
        let label = i % SYNTHETIC_CLASSES.len();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(split ^ i as u64)));
        draw(label, size, &mut rng, img);
        labels.push(label as u16);
    }
    ImageDataset {
        name: format!("synthetic/{}", if train { "train" } else { "test" }),
        pixels,
        labels,
        height: size,
        width: size,
        classes: SYNTHETIC_CLASSES.iter().map(|s| s.to_string()).collect(),
    }
}

fn inside(shape: usize, dx: f32, dy: f32, r: f32) -> bool {
    let (ax, ay) = (dx.abs(), dy.abs());
    let bar = r * 0.35;
    match shape {
        0 => dx * dx + dy * dy <= r * r,
        1 => ax <= r * 0.8 && ay <= r * 0.8,
        2 => dy <= r * 0.7 && dy >= -r && ax <= (dy + r) * 0.55,
        3 => {
            let d = (dx * dx + dy * dy).sqrt();
            d <= r && d >= r * 0.6
        }
        4 => ay <= bar && ax <= r,
        5 => ax <= bar && ay <= r,
        6 => (ax <= bar && ay <= r) || (ay <= bar && ax <= r),
        7 => ax <= r && ((dx - dy).abs() <= bar * 1.2 || (dx + dy).abs() <= bar * 1.2),
        8 => {
            ax <= r
                && ay <= r
                && (((dx + r) / (r / 2.0)) as i32 + ((dy + r) / (r / 2.0)) as i32) % 2 == 0
        }
        _ => {
            let d1 = (dx + r * 0.5).powi(2) + dy * dy;
            let d2 = (dx - r * 0.5).powi(2) + dy * dy;
            d1 <= (r * 0.35).powi(2) || d2 <= (r * 0.35).powi(2)
        }
    }
}

fn draw(shape: usize, size: usize, rng: &mut impl Rng, img: &mut [u8]) {
    let plane = size * size;
    let s = size as f32;
    let bg: [f32; 3] = [0, 1, 2].map(|_| rng.random_range(0.0..110.0));
    // Foreground is kept bright so the shape is always visible against the darker background.
    let fg: [f32; 3] = [0, 1, 2].map(|_| rng.random_range(150.0..255.0));
    let r = rng.random_range(0.22..0.34) * s;
    let cx = s / 2.0 + rng.random_range(-0.12..0.12) * s;
    let cy = s / 2.0 + rng.random_range(-0.12..0.12) * s;
    for y in 0..size {
        for x in 0..size {
            let on = inside(shape, x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r);
            for c in 0..3 {
                let base = if on { fg[c] } else { bg[c] };
                let v = base + rng.random_range(-25.0..25.0);
                img[c * plane + y * size + x] = v.clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_prefix_stable() {
        let a = synthetic(30, 32, 7, true);
        let b = synthetic(50, 32, 7, true);
        assert_eq!(a.pixels[..], b.pixels[..a.pixels.len()]);
        assert_eq!(a.labels[..], b.labels[..30]);
        let c = synthetic(30, 32, 8, true);
        assert_ne!(a.pixels, c.pixels);
        let test = synthetic(30, 32, 7, false);
        assert_ne!(a.pixels, test.pixels);
    }

    #[test]
    fn classes_are_balanced_and_shapes_differ() {
        let ds = synthetic(100, 32, 1, true);
        for class in 0..10 {
            assert_eq!(ds.labels.iter().filter(|&&l| l == class).count(), 10);
        }
        // Mask of "on" pixels differs between every pair of shapes at a fixed geometry.
        let masks: Vec<Vec<bool>> = (0..10)
            .map(|s| {
                (0..32 * 32)
                    .map(|p| inside(s, (p % 32) as f32 - 16.0, (p / 32) as f32 - 16.0, 9.0))
                    .collect()
            })
            .collect();
        for a in 0..10 {
            assert!(
                masks[a].iter().filter(|&&b| b).count() > 10,
                "shape {a} too small"
            );
            for b in a + 1..10 {
                assert_ne!(masks[a], masks[b], "shapes {a} and {b} identical");
            }
        }
    }
}
