//! The checkpoint format: one directory per checkpoint, written atomically, verified on load.
//!
//! ```text
//! <run>/checkpoints/step-00000120/
//!     model.mpk       model record (weights + BatchNorm running statistics), full precision
//!     optim.mpk       optimizer state (momentum / Adam moments, keyed by parameter id)
//!     state.json      TrainState: epoch, batch cursor, global step, resolved config, history
//!     MANIFEST.json   format version + sha256 and size of every file above
//! <run>/checkpoints/LATEST   name of the newest complete checkpoint
//! ```
//!
//! Files are written into `.tmp-step-.../`, fsynced, and the directory is renamed into place, so a
//! crash leaves either the old or the new checkpoint, never half of one. Random state needs no
//! file: every draw derives from `(seed, epoch, index)` and the batch cursor.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SpecError;

/// Bumped whenever the layout or a file's meaning changes.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "MANIFEST.json";
const LATEST: &str = "LATEST";

/// One file's integrity record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Global step the checkpoint was taken after.
    pub step: usize,
    /// Epoch being trained (0-based) at that step.
    pub epoch: usize,
    /// Every file of the checkpoint.
    pub files: Vec<FileEntry>,
    /// Data-parallel group size that wrote it (absent in single-process checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// SHA-256 of the resolved run configuration (see [`config_fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_fingerprint: Option<String>,
}

/// What a manifest records beyond the files: who wrote the checkpoint and for which run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestInfo {
    /// Data-parallel group size.
    pub world_size: Option<usize>,
    /// [`config_fingerprint`] of the run.
    pub config_fingerprint: Option<String>,
}

/// SHA-256 (hex) of a configuration's JSON: equal configs, equal fingerprints.
pub fn config_fingerprint<T: Serialize>(config: &T) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(path: &Path, e: std::io::Error) -> SpecError {
    SpecError::Checkpoint(format!("{}: {e}", path.display()))
}

fn sha256_file(path: &Path) -> Result<(String, u64), SpecError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let digest = Sha256::digest(&bytes);
    Ok((
        digest.iter().map(|b| format!("{b:02x}")).collect(),
        bytes.len() as u64,
    ))
}

fn fsync_dir(dir: &Path) {
    // Directory fsync makes the rename durable; not supported everywhere, so best effort.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Directory name of the checkpoint at `step`.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes a checkpoint into `root` (the `checkpoints/` folder). `write_files` fills the staging
/// directory it is given; the manifest, the atomic rename and `LATEST` are handled here.
/// Returns the final directory.
pub fn write_checkpoint<E: From<SpecError>>(
    root: &Path,
    step: usize,
    epoch: usize,
    write_files: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<PathBuf, E> {
    write_checkpoint_with(root, step, epoch, &ManifestInfo::default(), write_files)
}

/// [`write_checkpoint`] with the run's identity recorded in the manifest. `write_files` may fail
/// with the caller's own error type (the trainer's, which encodes tensors).
pub fn write_checkpoint_with<E: From<SpecError>>(
    root: &Path,
    step: usize,
    epoch: usize,
    info: &ManifestInfo,
    write_files: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<PathBuf, E> {
    std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
    let name = checkpoint_name(step);
    let staging = root.join(format!(".tmp-{name}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    let result = (|| -> Result<PathBuf, E> {
        write_files(&staging)?;
        let mut files = Vec::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&staging)
            .map_err(|e| io(&staging, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&path, e))?;
            let (sha256, bytes) = sha256_file(&path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(FileEntry {
                name,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            step,
            epoch,
            files,
            world_size: info.world_size,
            config_fingerprint: info.config_fingerprint.clone(),
        };
        write_json_synced(&staging.join(MANIFEST), &manifest)?;
        let target = root.join(&name);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| io(&target, e))?;
        }
        std::fs::rename(&staging, &target).map_err(|e| io(&target, e))?;
        fsync_dir(root);
        write_latest(root, &name)?;
        Ok(target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Writes `value` as pretty JSON and fsyncs it.
pub fn write_json_synced<T: Serialize>(path: &Path, value: &T) -> Result<(), SpecError> {
    let json =
        serde_json::to_vec_pretty(value).map_err(|e| SpecError::Checkpoint(e.to_string()))?;
    let mut f = std::fs::File::create(path).map_err(|e| io(path, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(path, e))
}

fn write_latest(root: &Path, name: &str) -> Result<(), SpecError> {
    let tmp = root.join(".LATEST.tmp");
    std::fs::write(&tmp, name).map_err(|e| io(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, root.join(LATEST)).map_err(|e| io(root, e))?;
    fsync_dir(root);
    Ok(())
}

/// Checks every file against the manifest; the error names the file and what differed.
pub fn verify(dir: &Path) -> Result<Manifest, SpecError> {
    let mpath = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&mpath).map_err(|e| io(&mpath, e))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        SpecError::Checkpoint(format!("{}: malformed manifest: {e}", mpath.display()))
    })?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(SpecError::Checkpoint(format!(
            "{}: format version {}, this build reads {FORMAT_VERSION}",
            mpath.display(),
            manifest.format_version
        )));
    }
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let (sha, bytes) = sha256_file(&path)?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(SpecError::Checkpoint(format!(
                "{}: checksum mismatch ({bytes} bytes, sha256 {sha}; manifest says {} bytes, {})",
                path.display(),
                f.bytes,
                f.sha256
            )));
        }
    }
    Ok(manifest)
}

/// Checkpoint directories under `root`, newest (highest step) first.
pub fn list_checkpoints(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    v.sort();
    v.reverse();
    v
}

/// Resolves what a user passed to `--resume`/`--checkpoint`: a checkpoint directory, a run
/// directory (its newest valid checkpoint) or a `checkpoints/` folder. Corrupt checkpoints are
/// skipped with a warning naming them; the newest one that verifies is returned.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, SpecError> {
    if path.join(MANIFEST).is_file() {
        verify(path)?;
        return Ok(path.to_path_buf());
    }
    let root = if path.join("checkpoints").is_dir() {
        path.join("checkpoints")
    } else {
        path.to_path_buf()
    };
    let mut candidates = list_checkpoints(&root);
    // LATEST first when present (it is the last complete write); then by step.
    if let Ok(latest) = std::fs::read_to_string(root.join(LATEST)) {
        let latest = root.join(latest.trim());
        candidates.retain(|c| c != &latest);
        candidates.insert(0, latest);
    }
    if candidates.is_empty() {
        return Err(SpecError::Checkpoint(format!(
            "{}: no checkpoint found (expected a checkpoint directory with {MANIFEST}, or a run \
             directory with checkpoints/)",
            path.display()
        )));
    }
    let mut errors = Vec::new();
    for c in candidates {
        match verify(&c) {
            Ok(_) => {
                if !errors.is_empty() {
                    tracing::warn!(using = %c.display(), skipped = ?errors, "newer checkpoints failed verification");
                }
                return Ok(c);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(SpecError::Checkpoint(format!(
        "no valid checkpoint under {}: {}",
        root.display(),
        errors.join("; ")
    )))
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune(root: &Path, keep: usize) {
    prune_except(root, keep, &[]);
}

/// Deletes all but the newest `keep` checkpoints and those in `protect` (e.g. the best one).
pub fn prune_except(root: &Path, keep: usize, protect: &[PathBuf]) {
    for old in list_checkpoints(root)
        .into_iter()
        .skip(keep.max(1))
        .filter(|p| !protect.contains(p))
    {
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(path = %old.display(), error = %e, "cannot prune old checkpoint");
        }
    }
}

/// Total bytes of the regular files directly inside `dir` (a checkpoint is flat).
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// An upper bound on the bytes of one checkpoint of a run with `cfg`: twice its tensors (the
/// model, BatchNorm statistics and the optimizer's slots per parameter, as f32) plus 64 MiB for
/// `state.json` and encoding. Checkpoint uploads and downloads above it are refused before any
/// memory is committed to them. Counted from the configuration; nothing is built.
pub fn checkpoint_bytes_bound(cfg: &crate::TrainConfig) -> Result<u64, SpecError> {
    let elems = cfg
        .model
        .tensor_elements()
        .map_err(|e| SpecError::Config(e.to_string()))?;
    let slots = match cfg.optim.kind {
        crate::OptimizerKind::Sgd if cfg.optim.momentum > 0.0 => 1,
        crate::OptimizerKind::Sgd => 0,
        crate::OptimizerKind::Adam | crate::OptimizerKind::Adamw => 2,
    };
    Ok(2 * elems * 4 * (1 + slots) + (64 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, step: usize, payload: &str) -> PathBuf {
        write_checkpoint(root, step, 0, |d| {
            std::fs::write(d.join("model.mpk"), payload).map_err(|e| io(d, e))
        })
        .expect("write")
    }

    #[test]
    fn roundtrip_latest_and_corruption_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("checkpoints");
        write(&root, 5, "five");
        let newest = write(&root, 10, "ten");
        assert_eq!(resolve_checkpoint(dir.path()).expect("resolve"), newest);
        // Flip a byte in the newest checkpoint: the previous one is used.
        std::fs::write(newest.join("model.mpk"), "tex").expect("corrupt");
        let e = verify(&newest).expect_err("corrupt").to_string();
        assert!(
            e.contains("model.mpk") && e.contains("checksum mismatch"),
            "{e}"
        );
        let used = resolve_checkpoint(dir.path()).expect("fallback");
        assert!(used.ends_with("step-00000005"), "{}", used.display());
        // No leftovers from staging.
        assert!(std::fs::read_dir(&root).expect("ls").all(|e| !e
            .expect("e")
            .file_name()
            .to_string_lossy()
            .starts_with(".tmp")));
    }

    #[test]
    fn failed_write_leaves_previous_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("checkpoints");
        let good = write(&root, 1, "one");
        let r = write_checkpoint(&root, 2, 0, |_| {
            Err(SpecError::Checkpoint("disk full".into()))
        });
        assert!(r.is_err());
        assert_eq!(resolve_checkpoint(&root).expect("resolve"), good);
        assert!(!root.join(".tmp-step-00000002").exists());
    }

    #[test]
    fn prune_keeps_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        for s in 1..=4 {
            write(dir.path(), s, "x");
        }
        prune(dir.path(), 2);
        let left: Vec<String> = list_checkpoints(dir.path())
            .iter()
            .map(|p| p.file_name().expect("n").to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["step-00000004", "step-00000003"]);
    }
}
