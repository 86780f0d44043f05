//! Central checkpoints on the coordinator: who may upload (rank 0 of the current generation),
//! storing with metrics, and serving the resume checkpoint to joining workers.

use resnet_proto::CheckpointFiles;
use resnet_spec::ManifestInfo;

use crate::state::{Coordinator, Refusal};
use crate::store::Stored;

impl Coordinator {
    /// Checks an upload's sender before any data is accepted; returns the size limit.
    pub fn checkpoint_upload_allowed(
        &self,
        worker_id: &str,
        rank: usize,
        generation: u64,
    ) -> Result<u64, Refusal> {
        let Some(store) = &self.store else {
            return Err(Refusal::NotJoinable(
                "this coordinator stores no checkpoints (started without --out)".into(),
            ));
        };
        let inner = self.lock();
        self.member(&inner, worker_id, rank, generation)?;
        if rank != 0 {
            return Err(Refusal::Invalid(format!(
                "only rank 0 uploads checkpoints; '{worker_id}' is rank {rank}"
            )));
        }
        Ok(store.lock().unwrap_or_else(|p| p.into_inner()).max_bytes())
    }

    /// Stores a verified upload held in memory (blocking file I/O: call it off the async
    /// runtime).
    pub fn store_checkpoint(&self, c: CheckpointFiles) -> Result<Stored, Refusal> {
        self.checkpoint_upload_allowed(&c.worker_id, c.rank, c.generation)?;
        let info = self.manifest_info();
        let result = self.with_store(|s| s.save(&c, &info))?;
        self.stored(c.step, result)
    }

    /// Stores a verified upload from its spool directory (what the gRPC service receives:
    /// chunks were written to disk as they arrived). Blocking file I/O.
    pub fn store_spooled(&self, c: resnet_proto::spool::Spooled) -> Result<Stored, Refusal> {
        self.checkpoint_upload_allowed(&c.worker_id, c.rank, c.generation)?;
        let info = self.manifest_info();
        let result = self.with_store(|s| s.save_spooled(&c, &info))?;
        self.stored(c.step, result)
    }

    /// A spool for an upload of at most `max_bytes` (after `checkpoint_upload_allowed`).
    pub fn upload_spool(&self, max_bytes: u64) -> Result<resnet_proto::spool::Spool, Refusal> {
        self.with_store(|s| s.spool(max_bytes))?
            .map_err(|e| self.store_failed(None, e))
    }

    /// An upload of `step` could not be written to the spool (the store's disk): counted and
    /// logged like a failed store; the refusal to answer with.
    pub fn store_failed(&self, step: Option<u64>, error: String) -> Refusal {
        if let Some(step) = step {
            self.lock().failed_stores.push(resnet_spec::FailedSave {
                step: step as usize,
                error: error.clone(),
            });
        }
        crate::metrics::checkpoint_failed();
        tracing::error!(?step, %error, "CHECKPOINT FAILED: cannot store the upload; training continues, earlier checkpoints are intact");
        Refusal::Storage(error)
    }

    fn manifest_info(&self) -> ManifestInfo {
        ManifestInfo {
            world_size: Some(self.lock().members.len()),
            config_fingerprint: Some(resnet_spec::config_fingerprint(&self.cfg.run)),
        }
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&crate::store::CheckpointStore) -> T,
    ) -> Result<T, Refusal> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| Refusal::NotJoinable("this coordinator stores no checkpoints".into()))?;
        Ok(f(&store.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Books a store's outcome: the newest stored step, or a failed store.
    fn stored(&self, step: u64, result: Result<Stored, String>) -> Result<Stored, Refusal> {
        match result {
            Ok(s) => {
                {
                    let mut inner = self.lock();
                    inner.stored_step = inner.stored_step.max(Some(step));
                }
                crate::metrics::checkpoint_stored(&s);
                tracing::info!(step, dir = %s.dir.display(), bytes = s.bytes, seconds = format!("{:.3}", s.seconds), "checkpoint stored");
                Ok(s)
            }
            Err(e) => Err(self.store_failed(Some(step), e)),
        }
    }

    /// For a member of the current generation: the checkpoint the run resumes from
    /// (`step` 0), or the stored checkpoint of `step` (healing after a regroup).
    pub fn resume_checkpoint(
        &self,
        worker_id: &str,
        generation: u64,
        step: u64,
    ) -> Result<CheckpointFiles, Refusal> {
        // Members only, checked before any file is read or hashed.
        {
            let inner = self.lock();
            let rank = inner
                .members
                .iter()
                .position(|m| m.worker_id == worker_id)
                .ok_or_else(|| Refusal::Unknown(format!("unknown worker '{worker_id}'")))?;
            self.member(&inner, worker_id, rank, generation)?;
        }
        // Step 0 names the run's resume checkpoint when there is one (a healing checkpoint of
        // step 0 exists only in a run that did not resume).
        let (dir, step, epoch) = if step == 0 && self.resume.is_some() {
            self.resume.clone().ok_or_else(|| {
                Refusal::Unknown("this run does not resume from a checkpoint".into())
            })?
        } else {
            let root = self
                .store
                .as_ref()
                .ok_or_else(|| Refusal::Unknown("this coordinator stores no checkpoints".into()))?
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .root()
                .to_path_buf();
            let dir = root.join(resnet_spec::checkpoint::checkpoint_name(step as usize));
            let m = resnet_spec::verify(&dir).map_err(|e| Refusal::Unknown(e.to_string()))?;
            (dir, step, m.epoch as u32)
        };
        crate::store::read_checkpoint(&dir, step, epoch).map_err(Refusal::Storage)
    }
}
