//! Convolution arithmetic (`conv_precision`, `--conv-precision`): the setting. What it means
//! for the kernels is `resnet_kernels::precision`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Convolution arithmetic (`--conv-precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvPrecision {
    /// f32 throughout (the default).
    #[default]
    F32,
    /// bf16 operands and results, f32 accumulation.
    Bf16,
}

impl ConvPrecision {
    /// The name the flag and the configuration use.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl FromStr for ConvPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown convolution precision '{other}': expected f32 or bf16"
            )),
        }
    }
}
