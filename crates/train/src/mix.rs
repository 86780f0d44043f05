//! Applying a Mixup/CutMix draw to a batch: each image is blended with (Mixup) or gets a
//! rectangle pasted from (CutMix) its partner in the reversed batch, and the targets are mixed
//! with the same weight, so the soft cross-entropy of [`crate::loss`] trains on them unchanged.
//! The setting and the per-step draw are [`resnet_spec::MixConfig`].

use crate::loss::smoothed_targets;
use resnet_spec::MixDraw;

/// Mixes `images` (`[n, 3, h, w]` row-major) in place: image `i` with image `n - 1 - i`.
pub fn mix_images(d: &MixDraw, images: &mut [f32], n: usize, h: usize, w: usize) {
    let per = 3 * h * w;
    let orig = images.to_vec();
    for i in 0..n {
        let (dst, src) = (i * per, (n - 1 - i) * per);
        match d.cut {
            None => {
                let lam = d.lam as f32;
                for j in 0..per {
                    images[dst + j] = lam * orig[dst + j] + (1.0 - lam) * orig[src + j];
                }
            }
            Some([x0, y0, x1, y1]) => {
                for c in 0..3 {
                    for y in y0..y1 {
                        let row = c * h * w + y * w;
                        images[dst + row + x0..dst + row + x1]
                            .copy_from_slice(&orig[src + row + x0..src + row + x1]);
                    }
                }
            }
        }
    }
}

/// Targets `[n * k]`: `lam` of each image's (smoothed) label plus `1 - lam` of its partner's.
pub fn mixed_targets(labels: &[u16], k: usize, smoothing: f64, lam: f64) -> Vec<f32> {
    let own = smoothed_targets(labels, k, smoothing);
    let n = labels.len();
    let mut out = own.clone();
    for i in 0..n {
        let partner = n - 1 - i;
        for c in 0..k {
            out[i * k + c] =
                (lam * own[i * k + c] as f64 + (1.0 - lam) * own[partner * k + c] as f64) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MixConfig;

    fn cutmix() -> MixConfig {
        MixConfig {
            cutmix_alpha: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn cutmix_label_weight_equals_pasted_area() {
        let (n, h, w) = (4, 8, 6);
        for step in 0..40 {
            let d = cutmix().draw(3, step, 0, h, w).expect("prob 1 mixes");
            let [x0, y0, x1, y1] = d.cut.expect("cutmix has a box");
            // Image i is all i; count pixels of image 0 that now hold image 3's value.
            let mut imgs: Vec<f32> = (0..n).flat_map(|i| vec![i as f32; 3 * h * w]).collect();
            mix_images(&d, &mut imgs, n, h, w);
            let pasted = imgs[..3 * h * w].iter().filter(|v| **v == 3.0).count();
            let frac = pasted as f64 / (3 * h * w) as f64;
            assert_eq!(pasted, 3 * (x1 - x0) * (y1 - y0));
            assert!((frac - (1.0 - d.lam)).abs() < 1e-12, "step {step}");
            let t = mixed_targets(&[0, 1, 2, 3], 4, 0.0, d.lam);
            assert!((t[0] as f64 - d.lam).abs() < 1e-6);
            assert!((t[3] as f64 - (1.0 - d.lam)).abs() < 1e-6);
        }
    }

    #[test]
    fn mixup_blends_images_and_targets_with_one_weight() {
        let cfg = MixConfig {
            mixup_alpha: 0.4,
            ..Default::default()
        };
        let d = cfg.draw(1, 5, 0, 2, 2).expect("mixed");
        assert!(d.cut.is_none() && (0.0..=1.0).contains(&d.lam));
        let mut imgs: Vec<f32> = [vec![0.0; 12], vec![1.0; 12]].concat();
        mix_images(&d, &mut imgs, 2, 2, 2);
        assert!((imgs[0] as f64 - (1.0 - d.lam)).abs() < 1e-6);
        assert!((imgs[12] as f64 - d.lam).abs() < 1e-6);
        let t = mixed_targets(&[0, 1], 2, 0.0, d.lam);
        assert!((t.iter().sum::<f32>() - 2.0).abs() < 1e-6);
        assert!((t[0] as f64 - d.lam).abs() < 1e-6);
    }
}
