//! Optimizer settings with PyTorch's defaults. Burn's defaults differ from PyTorch's in places
//! that silently change training (SGD dampening, Adam epsilon, AdamW weight decay), so every value
//! is set explicitly; the trainer builds the optimizer from these.

use serde::{Deserialize, Serialize};

use crate::SpecError;

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (Nesterov) momentum and L2 weight decay.
    #[default]
    Sgd,
    /// Adam with L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=...)`).
    Adam,
    /// AdamW: decoupled weight decay.
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::Adamw),
            o => Err(SpecError::Config(format!(
                "unknown optimizer '{o}', expected sgd, adam or adamw"
            ))),
        }
    }
}

/// Optimizer configuration; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Optimizer. Default `sgd`.
    pub kind: OptimizerKind,
    /// Base learning rate (before the schedule). Default 0.1 (SGD on CIFAR, batch 128).
    pub lr: f64,
    /// SGD momentum; 0 disables. Default 0.9.
    pub momentum: f64,
    /// Nesterov momentum. Default false.
    pub nesterov: bool,
    /// Weight decay: L2 for SGD/Adam, decoupled for AdamW. Default 5e-4.
    pub weight_decay: f64,
    /// Adam beta1. Default 0.9.
    pub beta1: f64,
    /// Adam beta2. Default 0.999.
    pub beta2: f64,
    /// Adam epsilon. Default 1e-8 (PyTorch; Burn's own default is 1e-5).
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl OptimConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |f: &str, w: &str| Err(SpecError::Config(format!("optim.{f}: {w}")));
        // `!(x > 0.0)` also refuses NaN; infinity is refused by name (an infinite LR passed
        // validation once and trained on NaN).
        if !(self.lr > 0.0) || !self.lr.is_finite() {
            return bad("lr", "must be a finite number > 0");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", "must be in 0..1");
        }
        if !(self.weight_decay >= 0.0) || !self.weight_decay.is_finite() {
            return bad("weight_decay", "must be a finite number >= 0");
        }
        if !(self.eps > 0.0) || !self.eps.is_finite() {
            return bad("eps", "must be a finite number > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1/beta2", "must be in 0..1");
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("nesterov", "needs momentum > 0");
        }
        Ok(())
    }
}
