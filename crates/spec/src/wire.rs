//! How a data-parallel group's gradients travel between replicas (`grad_wire`).

use serde::{Deserialize, Serialize};

/// How a data-parallel group's gradients travel (`grad_wire`): `f32`, or `bf16` — rounded to
/// bfloat16 for each transfer (half the bytes) and summed in f32; the TCP ring only (a group
/// with this setting never gets NCCL). Everything else the replicas exchange (weights,
/// BatchNorm statistics, epoch sums) stays f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradWire {
    /// 4 bytes an element, exact.
    #[default]
    F32,
    /// 2 bytes an element.
    Bf16,
}

impl GradWire {
    /// The name the flag and the config use.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
    /// Bytes an element takes on the wire.
    pub fn bytes_per_element(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
    /// Whether this is the default (then the run config does not write it, so the config
    /// fingerprints of f32 runs stay what they were).
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }
}

impl std::str::FromStr for GradWire {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            o => Err(format!("unknown grad_wire '{o}': expected f32, bf16")),
        }
    }
}
