//! Import and export of torchvision state dicts (`.safetensors` and `.pth`).
//!
//! Our module tree already uses torchvision's names except the projection shortcut, which
//! torchvision stores as an `nn.Sequential` (`downsample.0` conv, `downsample.1` BN) and we store
//! as `downsample.conv`/`downsample.bn`. burn-store's PyTorch adapter transposes the classifier
//! (`fc.weight` is `[out, in]` in PyTorch, `[in, out]` in Burn). `num_batches_tracked` is not used.

use std::path::Path;

use burn::store::{
    BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::backend::Backend;

use crate::{ModelError, ResNet};

/// What an import did: how many tensors were loaded and which file keys were not used.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Tensors written into the model.
    pub applied: usize,
    /// File keys that map to nothing in the model (excluding `num_batches_tracked`).
    pub unused: Vec<String>,
    /// Model tensors the file did not provide (only non-empty when `allow_partial`).
    pub missing: Vec<String>,
}

fn err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Loads torchvision-layout weights from `path` (`.safetensors`, `.pth` or `.pt`) into `model`.
///
/// With `allow_partial = false` every model tensor must be in the file and every file tensor must
/// be used (BatchNorm's `num_batches_tracked` aside). With `true`, missing and unused keys are
/// reported instead (fine-tuning with a different head, say).
pub fn import_torchvision<B: Backend>(
    model: &mut ResNet<B>,
    path: &Path,
    allow_partial: bool,
) -> Result<ImportReport, ModelError> {
    import(model, path, allow_partial, false)
}

/// Fine-tuning: loads everything but the classifier (`fc`) from a torchvision-layout file, which
/// must hold every backbone tensor; the model keeps its own freshly initialised head, sized for
/// its dataset. The report lists the file's head tensors as unused.
pub fn import_backbone<B: Backend>(
    model: &mut ResNet<B>,
    path: &Path,
) -> Result<ImportReport, ModelError> {
    let report = import(model, path, true, true)?;
    let missing: Vec<&String> = report
        .missing
        .iter()
        .filter(|k| !k.starts_with("fc."))
        .collect();
    if !missing.is_empty() {
        return Err(err(
            path,
            format!("is not a ResNet of this depth and width: missing {missing:?}"),
        ));
    }
    Ok(report)
}

fn not_head(path: &str, _container: &str) -> bool {
    !path.starts_with("fc.")
}

fn import<B: Backend>(
    model: &mut ResNet<B>,
    path: &Path,
    allow_partial: bool,
    skip_head: bool,
) -> Result<ImportReport, ModelError> {
    if !path.exists() {
        return Err(err(path, "file not found"));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let from_tv = r"^(.*)downsample\.0\.(.*)$";
    let from_tv_bn = r"^(.*)downsample\.1\.(.*)$";
    let result = match ext.as_str() {
        "safetensors" => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .with_key_remapping(from_tv, "${1}downsample.conv.${2}")
                .with_key_remapping(from_tv_bn, "${1}downsample.bn.${2}")
                .allow_partial(true);
            if skip_head {
                store = store.with_predicate(not_head);
            }
            model
                .load_from(&mut store)
                .map_err(|e| err(path, e.to_string()))?
        }
        "pth" | "pt" => {
            let mut store = PytorchStore::from_file(path)
                .with_key_remapping(from_tv, "${1}downsample.conv.${2}")
                .with_key_remapping(from_tv_bn, "${1}downsample.bn.${2}")
                .allow_partial(true);
            if skip_head {
                store = store.with_predicate(not_head);
            }
            model
                .load_from(&mut store)
                .map_err(|e| err(path, e.to_string()))?
        }
        other => {
            return Err(err(
                path,
                format!("unknown extension '{other}', expected .safetensors, .pth or .pt"),
            ))
        }
    };
    if !result.errors.is_empty() {
        let msgs: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(err(path, msgs.join("; ")));
    }
    let report = ImportReport {
        applied: result.applied.len(),
        unused: result
            .unused
            .into_iter()
            .filter(|k| !k.ends_with("num_batches_tracked"))
            .collect(),
        missing: result.missing.into_iter().map(|(p, _)| p).collect(),
    };
    if !allow_partial && (!report.missing.is_empty() || !report.unused.is_empty()) {
        return Err(err(
            path,
            format!(
                "does not match the model: missing {:?}, unused {:?}",
                report.missing, report.unused
            ),
        ));
    }
    Ok(report)
}

/// Writes `model` as a torchvision-keyed safetensors file (fc transposed, `downsample.0/1`).
pub fn export_torchvision_safetensors<B: Backend>(
    model: &ResNet<B>,
    path: &Path,
) -> Result<(), ModelError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_key_remapping(r"^(.*)downsample\.conv\.(.*)$", "${1}downsample.0.${2}")
        .with_key_remapping(r"^(.*)downsample\.bn\.(.*)$", "${1}downsample.1.${2}")
        .overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| err(path, e.to_string()))
}
