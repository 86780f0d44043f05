//! Background upload of rank 0's checkpoints to the coordinator, so training waits only for the
//! local write. One slot, newest wins: if uploads fall behind, a pending checkpoint that was not
//! yet sent is replaced by the newer one (the newer one supersedes it anyway).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use resnet_proto::{CheckpointFiles, ControlPlane};

#[derive(Default)]
struct Slot {
    pending: Option<CheckpointFiles>,
    closed: bool,
    /// Step of the newest checkpoint the coordinator stored.
    stored: Option<u64>,
    /// The newest failed upload: (step, error).
    failed: Option<(u64, String)>,
}

/// How the uploads went, from [`Uploader::finish`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadOutcome {
    /// Step of the newest checkpoint the coordinator stored.
    pub stored: Option<u64>,
    /// The newest failed upload: (step, error).
    pub failed: Option<(u64, String)>,
}

/// The upload thread and its slot.
pub struct Uploader {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Uploader {
    /// Starts the thread; it uploads through `control`, counting failures in `failures`.
    pub fn spawn(mut control: Box<dyn ControlPlane>, failures: Option<metrics::Counter>) -> Self {
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let s = slot.clone();
        let handle = std::thread::Builder::new()
            .name("checkpoint-upload".into())
            .spawn(move || loop {
                let next = {
                    let (lock, cv) = &*s;
                    let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while g.pending.is_none() && !g.closed {
                        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    match g.pending.take() {
                        Some(c) => c,
                        None => return,
                    }
                };
                let started = std::time::Instant::now();
                let result = control.upload_checkpoint(&next);
                let mut g = s.0.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(path) => {
                        g.stored = g.stored.max(Some(next.step));
                        tracing::info!(
                            step = next.step,
                            bytes = next.bytes(),
                            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
                            stored = %path,
                            "checkpoint uploaded to the coordinator"
                        )
                    }
                    Err(e) => {
                        if let Some(f) = &failures {
                            f.increment(1);
                        }
                        tracing::error!(step = next.step, error = %e, "CHECKPOINT UPLOAD FAILED; training continues, the local copy is kept");
                        g.failed = Some((next.step, e.to_string()));
                    }
                }
            })
            .ok();
        if handle.is_none() {
            tracing::error!("cannot start the checkpoint upload thread; checkpoints stay local");
        }
        Self { slot, handle }
    }

    /// Queues `c` for upload, replacing a pending one that has not started.
    pub fn submit(&self, c: CheckpointFiles) {
        let (lock, cv) = &*self.slot;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = g.pending.replace(c) {
            tracing::warn!(
                step = old.step,
                "checkpoint upload superseded by a newer one before it started"
            );
        }
        cv.notify_one();
    }

    /// Uploads what is pending, stops the thread, and says how the uploads went.
    pub fn finish(mut self) -> UploadOutcome {
        {
            let (lock, cv) = &*self.slot;
            lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            cv.notify_one();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let g = self.slot.0.lock().unwrap_or_else(|p| p.into_inner());
        UploadOutcome {
            stored: g.stored,
            failed: g.failed.clone(),
        }
    }
}

/// Reads a checkpoint directory (flat) into memory: the "copy to host memory" of the upload.
pub fn read_dir_files(dir: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            std::fs::read(&p).map(|d| (name, d))
        })
        .collect()
}
