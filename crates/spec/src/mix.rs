//! Batch-level Mixup and CutMix: each image is blended with (Mixup) or gets a rectangle pasted
//! from (CutMix) its partner in the reversed batch, and the targets are mixed with the same
//! weight, so the soft cross-entropy trains on them unchanged. This is the setting
//! and the per-step draw; the trainer applies a draw to the batch.
//!
//! Deterministic: the draw for a step comes from `(seed, global step, rank)`, so a resumed run
//! mixes exactly as the uninterrupted one would.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::SpecError;

/// Mixup/CutMix settings (timm's meaning); both off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixConfig {
    /// Mixup: blend weight ~ Beta(alpha, alpha); 0 disables. Typical 0.2-1.0. Default 0.
    pub mixup_alpha: f64,
    /// CutMix: pasted area fraction ~ 1 - Beta(alpha, alpha); 0 disables. Typical 1.0. Default 0.
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all. Default 1.
    pub prob: f64,
    /// With both enabled, probability of CutMix rather than Mixup for a mixed batch. Default 0.5.
    pub switch_prob: f64,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            prob: 1.0,
            switch_prob: 0.5,
        }
    }
}

/// What one step's batch gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixDraw {
    /// Weight of each image's own label in its target (1 - weight goes to the partner's label).
    pub lam: f64,
    /// CutMix: the pasted rectangle `[x0, y0, x1, y1)` (its area is exactly `1 - lam` of the
    /// image); `None` for Mixup.
    pub cut: Option<[usize; 4]>,
}

impl MixConfig {
    /// True when batches are ever mixed.
    pub fn enabled(&self) -> bool {
        (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0) && self.prob > 0.0
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: &str| Err(SpecError::Config(format!("mix.{m}")));
        if !(self.mixup_alpha >= 0.0) || !(self.cutmix_alpha >= 0.0) {
            return bad("mixup_alpha and cutmix_alpha must be >= 0");
        }
        if !(0.0..=1.0).contains(&self.prob) || !(0.0..=1.0).contains(&self.switch_prob) {
            return bad("prob and switch_prob must be in 0..=1");
        }
        Ok(())
    }

    /// The draw for `step` on `rank` for `h` x `w` images; `None` when this batch is not mixed.
    pub fn draw(&self, seed: u64, step: u64, rank: u64, h: usize, w: usize) -> Option<MixDraw> {
        if !self.enabled() {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ rank.rotate_left(32) ^ 0x004D_4958,
        );
        if !rng.random_bool(self.prob) {
            return None;
        }
        let cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.random_bool(self.switch_prob),
            (false, true) => true,
            _ => false,
        };
        let alpha = if cutmix {
            self.cutmix_alpha
        } else {
            self.mixup_alpha
        };
        let lam = Beta::new(alpha, alpha)
            .map(|b| b.sample(&mut rng))
            .unwrap_or(1.0);
        if !cutmix {
            return Some(MixDraw { lam, cut: None });
        }
        // Yun et al.: a box with sides sqrt(1 - lam) of the image's, centred uniformly, clipped;
        // lam is then corrected to the area actually pasted.
        let r = (1.0 - lam).sqrt();
        let (cw, ch) = ((w as f64 * r) as usize, (h as f64 * r) as usize);
        let (cx, cy) = (rng.random_range(0..w), rng.random_range(0..h));
        let x0 = cx.saturating_sub(cw / 2);
        let y0 = cy.saturating_sub(ch / 2);
        let x1 = (cx + cw - cw / 2).min(w);
        let y1 = (cy + ch - ch / 2).min(h);
        let area = ((x1 - x0) * (y1 - y0)) as f64;
        Some(MixDraw {
            lam: 1.0 - area / (w * h) as f64,
            cut: Some([x0, y0, x1, y1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_deterministic_per_step_and_rank_and_off_by_default() {
        let c = MixConfig {
            cutmix_alpha: 1.0,
            ..Default::default()
        };
        assert_eq!(c.draw(1, 2, 0, 32, 32), c.draw(1, 2, 0, 32, 32));
        assert_ne!(c.draw(1, 2, 0, 32, 32), c.draw(1, 2, 1, 32, 32));
        assert_eq!(MixConfig::default().draw(1, 2, 0, 32, 32), None);
        let never = MixConfig {
            prob: 0.0,
            ..c.clone()
        };
        assert!(!never.enabled());
        let bad = MixConfig { prob: 2.0, ..c };
        assert!(bad.validate().is_err());
    }
}
