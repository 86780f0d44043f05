//! Where a trainer comes from: a fresh model from the seed, a checkpoint's state and model
//! (also for `resnet eval`), the output directory, the kernels of the run.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use resnet_data::Splits;
use resnet_kernels::KernelChoice;
use resnet_model::{BuildResNet, ResNet};

use crate::checkpoint::{verify, write_json_synced};
use crate::record_io;
use crate::TrainState;
use crate::{param_hash, TrainConfig, TrainError};

static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A freshly initialised model of `cfg`, from `cfg.seed`.
pub(crate) fn init_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<ResNet<B>, TrainError> {
    // Backends keep one process-wide RNG: models created concurrently (replicas that are
    // threads of one process, a warm-up beside a trainer) must not interleave their draws, or
    // the weights would depend on thread scheduling instead of the seed.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    B::seed(device, cfg.seed);
    let model = cfg
        .model
        .init::<B>(device)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    // Parameters initialise lazily on first read; read them all now, in a fixed order.
    let _ = param_hash(&model);
    Ok(model)
}

pub(super) fn ckpt_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{}: {e}", path.display()))
}

/// Reads `state.json` of a verified checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainState, TrainError> {
    verify(dir)?;
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ckpt_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ckpt_err(&path, format!("malformed state: {e}")))
}

/// Loads the model stored in a checkpoint directory onto any backend (for `resnet eval`).
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(ResNet<B>, TrainState), TrainError> {
    let state = load_state(dir)?;
    let model = state
        .config
        .model
        .init::<B>(device)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    // Burn's loader panics on a record that does not fit the model: check shapes first.
    let path = record_io::mpk_path(&dir.join("model"));
    let bytes = std::fs::read(&path).map_err(|e| ckpt_err(&path, e))?;
    record_io::check_fits::<B, _>(&bytes, &model).map_err(|e| {
        let m = &state.config.model;
        ckpt_err(
            &path,
            format!(
                "does not hold the model state.json describes (ResNet-{}, width {}, {} classes): {e}",
                m.depth, m.width, m.num_classes
            ),
        )
    })?;
    let model = model
        .load_file(dir.join("model"), &record_io::FileRecorder::new(), device)
        .map_err(|e| ckpt_err(&dir.join("model.mpk"), format!("cannot read model: {e}")))?;
    Ok((model, state))
}

pub(super) fn prepare_out(out: &Option<PathBuf>, cfg: &TrainConfig) -> Result<(), TrainError> {
    if let Some(o) = out {
        std::fs::create_dir_all(o).map_err(|e| ckpt_err(o, e))?;
        write_json_synced(&o.join("config.json"), cfg)?;
    }
    Ok(())
}

/// `kernels` with the arithmetic of the run `cfg` (every replica of a run has the same
/// configuration, so every replica computes the same way).
pub(crate) fn run_kernels(kernels: KernelChoice, cfg: &TrainConfig) -> KernelChoice {
    kernels.with_precision(cfg.conv_precision)
}

pub(super) fn check_classes(cfg: &TrainConfig, splits: &Splits) -> Result<(), TrainError> {
    let k = splits.train.classes.len();
    if cfg.model.num_classes != k {
        return Err(TrainError::Config(format!(
            "model.num_classes is {} but {} has {k} classes",
            cfg.model.num_classes, splits.train.name
        )));
    }
    Ok(())
}
