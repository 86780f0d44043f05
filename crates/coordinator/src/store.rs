//! The central checkpoint store: what rank 0 uploads lands here, written with the same atomic,
//! manifest-verified format as `resnet train` (so `resnet eval`, `resnet train --resume` and
//! `coordinator --resume` all read it). Keeps the newest K plus the best by test accuracy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use resnet_proto::CheckpointFiles;
use resnet_spec::checkpoint::{
    checkpoint_name, list_checkpoints, prune_except, write_checkpoint_with, ManifestInfo,
};
use resnet_spec::SpecError;

/// Largest checkpoint upload the coordinator accepts (ResNet-152 with Adam state is ~0.7 GB).
pub const MAX_UPLOAD_BYTES: u64 = 16 << 30;

const MANIFEST: &str = "MANIFEST.json";
/// Uploads in progress: `<root>/.upload-<pid>-<n>/`.
const SPOOL_PREFIX: &str = ".upload-";
const BEST: &str = "BEST";

/// Where and how many.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The `checkpoints/` folder (the coordinator's `--out` + `/checkpoints`).
    pub root: PathBuf,
    /// Newest checkpoints to keep (the best one is kept in addition).
    pub keep: usize,
    /// Largest upload accepted, in bytes.
    pub max_bytes: u64,
}

/// A stored checkpoint.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes of its files.
    pub bytes: u64,
    /// Seconds to write it.
    pub seconds: f64,
}

/// Writes uploads and tracks which one is best.
#[derive(Debug)]
pub struct CheckpointStore {
    cfg: StoreConfig,
    /// Test accuracy of the model at the end of each evaluated epoch, by global step.
    accuracy_at: BTreeMap<u64, f64>,
}

impl CheckpointStore {
    /// A store writing into `cfg.root` (removing spool directories a killed coordinator left).
    pub fn new(cfg: StoreConfig) -> Self {
        if let Ok(entries) = std::fs::read_dir(&cfg.root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(SPOOL_PREFIX) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Self {
            cfg,
            accuracy_at: BTreeMap::new(),
        }
    }

    /// The `checkpoints/` folder.
    pub fn root(&self) -> &Path {
        &self.cfg.root
    }

    /// The largest upload accepted.
    pub fn max_bytes(&self) -> u64 {
        self.cfg.max_bytes
    }

    /// Writes `c` atomically (staging dir, fsync, rename, manifest with every file's SHA-256,
    /// the world size and the config fingerprint), then prunes. The sender's own manifest is
    /// replaced by the coordinator's. Errors leave earlier checkpoints untouched.
    pub fn save(&self, c: &CheckpointFiles, info: &ManifestInfo) -> Result<Stored, String> {
        let started = Instant::now();
        let mut bytes = 0u64;
        let dir = write_checkpoint_with(
            &self.cfg.root,
            c.step as usize,
            c.epoch as usize,
            info,
            |d| {
                for (name, data) in c.files.iter().filter(|(n, _)| n != MANIFEST) {
                    let path = d.join(name);
                    std::fs::write(&path, data)
                        .map_err(|e| SpecError::Checkpoint(format!("{}: {e}", path.display())))?;
                    bytes += data.len() as u64;
                }
                Ok(())
            },
        )
        .map_err(|e: SpecError| e.to_string())?;
        Ok(self.after_store(dir, bytes, started))
    }

    /// A fresh spool directory for an upload, inside the store (same filesystem: the files are
    /// renamed into the checkpoint, not copied). Leftovers of a killed coordinator are removed
    /// when the store starts.
    pub fn spool(&self, max_bytes: u64) -> Result<resnet_proto::spool::Spool, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(&self.cfg.root)
            .map_err(|e| format!("{}: {e}", self.cfg.root.display()))?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .cfg
            .root
            .join(format!("{SPOOL_PREFIX}{}-{n}", std::process::id()));
        Ok(resnet_proto::spool::Spool::new(dir, max_bytes))
    }

    /// Stores a verified upload from its spool directory, as [`save`](Self::save) does from
    /// memory: the files are moved into the staging directory, which gets its manifest, is
    /// fsynced and renamed into place.
    pub fn save_spooled(
        &self,
        s: &resnet_proto::spool::Spooled,
        info: &ManifestInfo,
    ) -> Result<Stored, String> {
        let started = Instant::now();
        let mut bytes = 0u64;
        let dir = write_checkpoint_with(
            &self.cfg.root,
            s.step as usize,
            s.epoch as usize,
            info,
            |d| {
                for (name, size) in s.files.iter().filter(|(n, _)| n != MANIFEST) {
                    let (from, to) = (s.dir.join(name), d.join(name));
                    std::fs::rename(&from, &to)
                        .map_err(|e| SpecError::Checkpoint(format!("{}: {e}", to.display())))?;
                    bytes += size;
                }
                Ok(())
            },
        )
        .map_err(|e: SpecError| e.to_string())?;
        Ok(self.after_store(dir, bytes, started))
    }

    /// After a checkpoint was written: `BEST` updated, old ones pruned (never the best).
    fn after_store(&self, dir: PathBuf, bytes: u64, started: Instant) -> Stored {
        self.update_best();
        prune_except(
            &self.cfg.root,
            self.cfg.keep,
            &self.best().into_iter().collect::<Vec<_>>(),
        );
        Stored {
            dir,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Records the test accuracy of the model at `step` (an epoch end).
    pub fn record_accuracy(&mut self, step: u64, accuracy: f64) {
        self.accuracy_at.insert(step, accuracy);
        self.update_best();
    }

    /// The stored checkpoint with the highest known test accuracy (ties: the newest).
    pub fn best(&self) -> Option<PathBuf> {
        std::fs::read_to_string(self.cfg.root.join(BEST))
            .ok()
            .map(|n| self.cfg.root.join(n.trim()))
            .filter(|p| p.is_dir())
    }

    fn update_best(&self) {
        let best = list_checkpoints(&self.cfg.root)
            .into_iter()
            .filter_map(|dir| {
                let step = step_of(&dir)?;
                Some((*self.accuracy_at.get(&step)?, step, dir))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some((acc, step, _)) = best {
            let name = checkpoint_name(step as usize);
            if let Err(e) = std::fs::write(self.cfg.root.join(BEST), &name) {
                tracing::warn!(error = %e, "cannot record the best checkpoint");
            } else {
                tracing::debug!(best = %name, accuracy = acc, "best checkpoint");
            }
        }
    }
}

fn step_of(dir: &Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// Reads a verified checkpoint directory into memory for [`resnet_proto::checkpoint::to_chunks`].
pub fn read_checkpoint(dir: &Path, step: u64, epoch: u32) -> Result<CheckpointFiles, String> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let data = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        files.push((name, data));
    }
    Ok(CheckpointFiles {
        worker_id: "coordinator".into(),
        rank: 0,
        generation: 0,
        step,
        epoch,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(step: u64) -> CheckpointFiles {
        CheckpointFiles {
            worker_id: "w0".into(),
            rank: 0,
            generation: 1,
            step,
            epoch: 0,
            files: vec![
                ("model.mpk".into(), vec![step as u8; 100]),
                ("state.json".into(), b"{}".to_vec()),
                // A worker's own manifest is dropped: the coordinator writes its own.
                (MANIFEST.into(), b"not used".to_vec()),
            ],
        }
    }

    #[test]
    fn keeps_newest_k_plus_the_best_and_writes_verifiable_manifests() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("checkpoints");
        let mut store = CheckpointStore::new(StoreConfig {
            root: root.clone(),
            keep: 2,
            max_bytes: 1 << 20,
        });
        let info = ManifestInfo {
            world_size: Some(3),
            config_fingerprint: Some("abc".into()),
        };
        let first = store.save(&upload(10), &info).expect("save");
        assert_eq!(first.bytes, 102);
        store.record_accuracy(10, 0.9);
        for step in [20, 30, 40] {
            store.save(&upload(step), &info).expect("save");
            store.record_accuracy(step, 0.5);
        }
        let names: Vec<String> = list_checkpoints(&root)
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["step-00000040", "step-00000030", "step-00000010"]);
        assert_eq!(store.best(), Some(root.join("step-00000010")));
        let m = resnet_spec::verify(&root.join("step-00000040")).expect("verifies");
        assert_eq!(m.world_size, Some(3));
        assert_eq!(m.config_fingerprint.as_deref(), Some("abc"));
        assert_eq!(m.files.len(), 2);
        let back = read_checkpoint(&root.join("step-00000040"), 40, 0).expect("read");
        assert!(back
            .files
            .iter()
            .any(|(n, d)| n == "model.mpk" && d == &vec![40u8; 100]));
    }

    #[test]
    fn an_unwritable_store_is_an_error_and_leaves_earlier_checkpoints() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("checkpoints");
        let store = CheckpointStore::new(StoreConfig {
            root: root.clone(),
            keep: 3,
            max_bytes: 1 << 20,
        });
        store
            .save(&upload(10), &ManifestInfo::default())
            .expect("save");
        // A file where the next staging directory must go (root-proof, unlike permissions).
        std::fs::write(root.join(".tmp-step-00000020"), b"x").expect("block");
        let e = store
            .save(&upload(20), &ManifestInfo::default())
            .expect_err("blocked");
        assert!(e.contains("step-00000020"), "{e}");
        resnet_spec::verify(&root.join("step-00000010")).expect("earlier one intact");
    }
}
