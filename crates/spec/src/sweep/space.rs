//! The search space: which run-config fields vary and how, seeded sampling, and trials (the
//! base config with a sample applied).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{SpecError, TrainConfig};

/// How one parameter is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Uniform in `[lo, hi]`.
    Uniform([f64; 2]),
    /// Log-uniform in `[lo, hi]` (both > 0): learning rates, weight decay.
    LogUniform([f64; 2]),
    /// An integer uniform in `[lo, hi]`.
    IntUniform([i64; 2]),
    /// One of the listed values (numbers, strings, booleans).
    Choice(Vec<Value>),
}

/// The search space: run-config fields by dotted path (`optim.lr`, `label_smoothing`,
/// `batch_size`, `data.augment.cutout`, ...) and their distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpace {
    /// Parameters, sampled in name order.
    pub params: BTreeMap<String, Dist>,
}

/// One sampled trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based index.
    pub id: usize,
    /// Seed of both the sample and the trial's training run.
    pub seed: u64,
    /// Sampled values by path.
    pub params: BTreeMap<String, Value>,
    /// The full run configuration (`epochs` = the sweep's longest rung).
    pub config: TrainConfig,
}

/// Derives trial `i`'s seed from the sweep seed (63 bits: TOML integers are signed).
pub fn trial_seed(sweep_seed: u64, i: usize) -> u64 {
    let mut z = sweep_seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1
}

impl SweepSpace {
    /// Reads a TOML space: a `[params]` table of `path = { log_uniform = [lo, hi] }` entries.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let space: SweepSpace =
            toml::from_str(text).map_err(|e| SpecError::Config(format!("sweep space: {e}")))?;
        if space.params.is_empty() {
            return Err(SpecError::Config("sweep space: [params] is empty".into()));
        }
        for (name, d) in &space.params {
            let bad = |m: &str| Err(SpecError::Config(format!("sweep space: {name}: {m}")));
            match d {
                Dist::Uniform([lo, hi]) if !(lo <= hi) => return bad("needs lo <= hi"),
                Dist::LogUniform([lo, hi]) if !(*lo > 0.0 && lo <= hi) => {
                    return bad("log_uniform needs 0 < lo <= hi")
                }
                Dist::IntUniform([lo, hi]) if lo > hi => return bad("needs lo <= hi"),
                Dist::Choice(v) if v.is_empty() => return bad("choice needs at least one value"),
                _ => {}
            }
        }
        Ok(space)
    }

    /// Samples every parameter from `seed`.
    pub fn sample(&self, seed: u64) -> BTreeMap<String, Value> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.params
            .iter()
            .map(|(name, d)| {
                let v = match d {
                    Dist::Uniform([lo, hi]) => Value::from(lo + (hi - lo) * rng.random::<f64>()),
                    Dist::LogUniform([lo, hi]) => {
                        let (a, b) = (lo.ln(), hi.ln());
                        Value::from((a + (b - a) * rng.random::<f64>()).exp())
                    }
                    Dist::IntUniform([lo, hi]) => Value::from(rng.random_range(*lo..=*hi)),
                    Dist::Choice(vs) => vs[rng.random_range(0..vs.len())].clone(),
                };
                (name.clone(), v)
            })
            .collect()
    }

    /// Trial `i` of a sweep: its seed, sample and validated config (`base` with the sample set
    /// and the trial seed as the training seed).
    pub fn trial(&self, base: &TrainConfig, sweep_seed: u64, i: usize) -> Result<Trial, SpecError> {
        let seed = trial_seed(sweep_seed, i);
        let params = self.sample(seed);
        let mut config = apply(base, &params)?;
        config.seed = seed;
        config.validate()?;
        Ok(Trial {
            id: i,
            seed,
            params,
            config,
        })
    }
}

/// `base` with each dotted path set to its value; unknown paths and ill-typed values are errors
/// naming the path.
pub fn apply(
    base: &TrainConfig,
    params: &BTreeMap<String, Value>,
) -> Result<TrainConfig, SpecError> {
    let mut doc = serde_json::to_value(base).map_err(|e| SpecError::Config(e.to_string()))?;
    for (path, v) in params {
        let mut slot = &mut doc;
        for part in path.split('.') {
            slot = slot
                .as_object_mut()
                .and_then(|o| o.get_mut(part))
                .ok_or_else(|| {
                    SpecError::Config(format!(
                        "sweep parameter '{path}': the run config has no field '{part}' there"
                    ))
                })?;
        }
        *slot = v.clone();
    }
    serde_json::from_value(doc).map_err(|e| {
        SpecError::Config(format!(
            "sweep parameters {params:?} do not fit the run config: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::test_support::SPACE;

    #[test]
    fn samples_are_reproducible_in_range_and_applied() {
        let space = SweepSpace::from_toml(SPACE).expect("space");
        let base = TrainConfig::default();
        for i in 0..20 {
            let t = space.trial(&base, 9, i).expect("trial");
            assert_eq!(t, space.trial(&base, 9, i).expect("again"));
            assert!((1e-3..=1e-1).contains(&t.config.optim.lr));
            assert!((0.0..=0.2).contains(&t.config.label_smoothing));
            assert!([16, 32].contains(&t.config.batch_size));
            assert!(t.config.data.augment.cutout <= 8);
            assert_eq!(t.config.seed, t.seed);
        }
        assert_ne!(
            space.trial(&base, 9, 0).expect("t").params,
            space.trial(&base, 9, 1).expect("t").params
        );
    }

    #[test]
    fn bad_spaces_and_paths_are_named() {
        let e = SweepSpace::from_toml("[params]\nlr = { log_uniform = [0.0, 1.0] }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("lr") && e.contains("log_uniform"), "{e}");
        let space = SweepSpace::from_toml("[params]\n\"optim.lrr\" = { uniform = [0.1, 0.2] }")
            .expect("parses");
        let e = space
            .trial(&TrainConfig::default(), 1, 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("optim.lrr") && e.contains("'lrr'"), "{e}");
    }
}
