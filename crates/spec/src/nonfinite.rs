//! What a step whose loss is not finite does (`on_nonfinite`, `--on-nonfinite`); the trainer's
//! guard carries it out.

use serde::{Deserialize, Serialize};

/// `on_nonfinite` / `--on-nonfinite`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinitePolicy {
    /// End the run with a distinct exit code before the step is applied.
    #[default]
    Stop,
    /// Drop the step (weights and BatchNorm statistics unchanged) and continue.
    SkipStep,
    /// Go back to the newest checkpoint's state and pass over the batches that led here.
    Rollback,
}

impl NonFinitePolicy {
    /// The name the flag and the config use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::SkipStep => "skip-step",
            Self::Rollback => "rollback",
        }
    }
}

impl std::str::FromStr for NonFinitePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(Self::Stop),
            "skip-step" => Ok(Self::SkipStep),
            "rollback" => Ok(Self::Rollback),
            o => Err(format!(
                "unknown on_nonfinite '{o}': expected stop, skip-step, rollback"
            )),
        }
    }
}
