//! The values of the run flags that name a choice (`--optimizer`, `--schedule`, ...), as clap
//! value enums: `--help` lists them with a line each, clap refuses anything else with the list,
//! and the spellings the run config has always accepted stay accepted (aliases, any case).
//! Each maps onto the run config's own type; a test checks every name parses there too, so the
//! flag and the config file cannot drift apart.

use clap::ValueEnum;
use resnet_data::DatasetKind;
use resnet_kernels::ConvPrecision;
use resnet_model::Stem;
use resnet_train::{GradWire, NonFinitePolicy, OptimizerKind, ScheduleKind};

/// `--dataset`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetArg {
    /// CIFAR-10 binary files (or their tarball) in --data.
    #[value(alias = "cifar-10")]
    Cifar10,
    /// CIFAR-100 binary files (fine labels).
    #[value(alias = "cifar-100")]
    Cifar100,
    /// An image folder: --data/<class>/*.png|jpg.
    Folder,
    /// Generated shapes; needs no files.
    Synthetic,
}

impl From<DatasetArg> for DatasetKind {
    fn from(a: DatasetArg) -> Self {
        match a {
            DatasetArg::Cifar10 => Self::Cifar10,
            DatasetArg::Cifar100 => Self::Cifar100,
            DatasetArg::Folder => Self::Folder,
            DatasetArg::Synthetic => Self::Synthetic,
        }
    }
}

/// `--stem`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StemArg {
    /// 3x3 convolution, stride 1, no max-pool (32x32 images stay 32x32 in layer1).
    Cifar,
    /// torchvision's 7x7/2 convolution and 3x3/2 max-pool (the original tutorial's model).
    Imagenet,
}

impl From<StemArg> for Stem {
    fn from(a: StemArg) -> Self {
        match a {
            StemArg::Cifar => Self::Cifar,
            StemArg::Imagenet => Self::Imagenet,
        }
    }
}

/// `--optimizer`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerArg {
    /// SGD with (Nesterov) momentum and L2 weight decay.
    Sgd,
    /// Adam, weight decay added to the gradient (PyTorch's Adam).
    Adam,
    /// AdamW: decoupled weight decay.
    Adamw,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(a: OptimizerArg) -> Self {
        match a {
            OptimizerArg::Sgd => Self::Sgd,
            OptimizerArg::Adam => Self::Adam,
            OptimizerArg::Adamw => Self::Adamw,
        }
    }
}

/// `--schedule`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleArg {
    /// The base learning rate throughout.
    Constant,
    /// Multiplied by --gamma every --step-epochs epochs.
    Step,
    /// Cosine annealing to zero over the run.
    Cosine,
    /// One cycle: up to the base rate, then down (PyTorch's OneCycleLR).
    #[value(alias = "one-cycle")]
    Onecycle,
    /// Triangular cycles of --cycle-epochs (PyTorch's CyclicLR).
    #[value(aliases = ["cyclical", "triangular"])]
    Cyclic,
    /// Multiplied by --gamma when the validation loss stalls for --patience epochs.
    #[value(aliases = ["reduce-on-plateau", "reduceonplateau"])]
    Plateau,
}

impl From<ScheduleArg> for ScheduleKind {
    fn from(a: ScheduleArg) -> Self {
        match a {
            ScheduleArg::Constant => Self::Constant,
            ScheduleArg::Step => Self::Step,
            ScheduleArg::Cosine => Self::Cosine,
            ScheduleArg::Onecycle => Self::Onecycle,
            ScheduleArg::Cyclic => Self::Cyclic,
            ScheduleArg::Plateau => Self::Plateau,
        }
    }
}

/// `--on-nonfinite`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFiniteArg {
    /// Stop the run with a distinct exit code; the last checkpoint is intact.
    Stop,
    /// Drop the step (no update) and go on; too many in a row stop the run.
    SkipStep,
    /// Return to the last checkpoint, pass over the offending batches and go on.
    Rollback,
}

impl From<NonFiniteArg> for NonFinitePolicy {
    fn from(a: NonFiniteArg) -> Self {
        match a {
            NonFiniteArg::Stop => Self::Stop,
            NonFiniteArg::SkipStep => Self::SkipStep,
            NonFiniteArg::Rollback => Self::Rollback,
        }
    }
}

/// `--conv-precision` and `--grad-wire`: f32 or bf16.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatArg {
    /// 32-bit IEEE floats.
    F32,
    /// bfloat16 (8 exponent bits, 8 significant bits).
    Bf16,
}

impl From<FloatArg> for ConvPrecision {
    fn from(a: FloatArg) -> Self {
        match a {
            FloatArg::F32 => Self::F32,
            FloatArg::Bf16 => Self::Bf16,
        }
    }
}

impl From<FloatArg> for GradWire {
    fn from(a: FloatArg) -> Self {
        match a {
            FloatArg::F32 => Self::F32,
            FloatArg::Bf16 => Self::Bf16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name and alias a flag accepts parses to the same value in the run config's own
    /// parser (what a TOML file or an environment variable goes through).
    fn agree<A, T>(parse: impl Fn(&str) -> Option<T>)
    where
        A: ValueEnum + Into<T> + Copy + std::fmt::Debug,
        T: PartialEq + std::fmt::Debug,
    {
        for v in A::value_variants() {
            let pv = v.to_possible_value().expect("not skipped");
            for name in std::iter::once(pv.get_name()).chain(pv.get_name_and_aliases()) {
                assert_eq!(parse(name), Some((*v).into()), "{v:?}: '{name}'");
            }
        }
    }

    #[test]
    fn every_flag_value_means_the_same_in_the_run_config() {
        agree::<DatasetArg, DatasetKind>(|s| s.parse().ok());
        agree::<StemArg, Stem>(|s| s.parse().ok());
        agree::<OptimizerArg, OptimizerKind>(|s| s.parse().ok());
        agree::<ScheduleArg, ScheduleKind>(|s| s.parse().ok());
        agree::<NonFiniteArg, NonFinitePolicy>(|s| s.parse().ok());
        agree::<FloatArg, ConvPrecision>(|s| s.parse().ok());
        agree::<FloatArg, GradWire>(|s| s.parse().ok());
    }

    #[test]
    fn the_flags_take_any_case_and_the_old_spellings() {
        for (s, want) in [
            ("CIFAR10", DatasetArg::Cifar10),
            ("cifar-100", DatasetArg::Cifar100),
        ] {
            assert_eq!(DatasetArg::from_str(s, true), Ok(want));
        }
        assert_eq!(
            ScheduleArg::from_str("reduce-on-plateau", true),
            Ok(ScheduleArg::Plateau)
        );
        assert_eq!(
            NonFiniteArg::from_str("skip-step", true),
            Ok(NonFiniteArg::SkipStep)
        );
        assert!(OptimizerArg::from_str("rmsprop", true).is_err());
    }
}
