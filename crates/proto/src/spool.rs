//! A checkpoint upload written to disk as it arrives (the coordinator's side of
//! `UploadCheckpoint`): each chunk goes straight into its file in a spool directory, hashed on
//! the way, so an upload costs one chunk of memory however large the checkpoint is. The same
//! checks as [`crate::checkpoint::Assembler`] apply chunk by chunk (header, order, sizes) and
//! at the end (sizes, SHA-256). The spool directory is removed on any error and whenever the
//! [`Spool`] or [`Spooled`] is dropped, so a broken or refused upload leaves nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::checkpoint::check_header;
use crate::v1;

/// Why an upload could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The stream itself is wrong (the sender's fault): out of order, oversized, corrupted.
    #[error("{0}")]
    Stream(String),
    /// The spool directory could not be written (the receiver's disk): full, read-only.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

fn stream(m: impl Into<String>) -> SpoolError {
    SpoolError::Stream(m.into())
}

struct OpenFile {
    name: String,
    size: u64,
    sha256: String,
    file: std::fs::File,
    written: u64,
    hasher: Sha256,
}

/// An upload in progress.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    header: Option<v1::CheckpointHeader>,
    files: Vec<OpenFile>,
}

/// A complete, verified upload on disk: its files in `dir`, removed when this is dropped
/// (after the store has moved them into a checkpoint).
#[derive(Debug)]
pub struct Spooled {
    /// Sender.
    pub worker_id: String,
    /// Sender's rank.
    pub rank: usize,
    /// Sender's generation.
    pub generation: u64,
    /// Global step saved.
    pub step: u64,
    /// 0-based epoch in progress.
    pub epoch: u32,
    /// The directory holding the files.
    pub dir: PathBuf,
    /// (file name, bytes), in header order.
    pub files: Vec<(String, u64)>,
}

impl Spooled {
    /// Total bytes of file data.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, b)| b).sum()
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Spool {
    /// An upload into `dir` (created with the first chunk; it must not exist yet), of at most
    /// `max_bytes` of file data.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            header: None,
            files: Vec::new(),
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Takes the next chunk: checks it and appends its data to its file.
    pub fn push(&mut self, c: v1::CheckpointChunk) -> Result<(), SpoolError> {
        if let Some(h) = c.header {
            if self.header.is_some() {
                return Err(stream("a second header in one checkpoint stream"));
            }
            check_header(&h, self.max_bytes).map_err(SpoolError::Stream)?;
            std::fs::create_dir(&self.dir).map_err(Self::io(&self.dir))?;
            for f in &h.files {
                let path = self.dir.join(&f.name);
                let file = std::fs::File::create(&path).map_err(Self::io(&path))?;
                self.files.push(OpenFile {
                    name: f.name.clone(),
                    size: f.size,
                    sha256: f.sha256.to_ascii_lowercase(),
                    file,
                    written: 0,
                    hasher: Sha256::new(),
                });
            }
            self.header = Some(h);
        }
        if self.header.is_none() {
            return Err(stream("the first chunk carries no header"));
        }
        if c.data.is_empty() {
            return Ok(());
        }
        let i = c.file as usize;
        let count = self.files.len();
        let f = self
            .files
            .get_mut(i)
            .ok_or_else(|| stream(format!("chunk for file #{i}, but the header lists {count}")))?;
        if c.offset != f.written {
            return Err(stream(format!(
                "{}: chunk at offset {}, expected {} (chunks out of order or missing)",
                f.name, c.offset, f.written
            )));
        }
        if f.written + c.data.len() as u64 > f.size {
            return Err(stream(format!(
                "{}: more data than the {} bytes the header announced",
                f.name, f.size
            )));
        }
        let path = self.dir.join(&f.name);
        f.file.write_all(&c.data).map_err(Self::io(&path))?;
        f.hasher.update(&c.data);
        f.written += c.data.len() as u64;
        Ok(())
    }

    /// Checks every file's size and digest, flushes them to disk and hands the upload over.
    pub fn finish(mut self) -> Result<Spooled, SpoolError> {
        let h = self
            .header
            .take()
            .ok_or_else(|| stream("empty checkpoint stream (no header)"))?;
        let mut files = Vec::with_capacity(self.files.len());
        for f in std::mem::take(&mut self.files) {
            if f.written != f.size {
                return Err(stream(format!(
                    "{}: truncated: received {} of {} bytes",
                    f.name, f.written, f.size
                )));
            }
            let digest: String = f
                .hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if digest != f.sha256 {
                return Err(stream(format!(
                    "{}: SHA-256 mismatch: received {digest}, header says {}",
                    f.name, f.sha256
                )));
            }
            let path = self.dir.join(&f.name);
            f.file.sync_all().map_err(Self::io(&path))?;
            files.push((f.name, f.size));
        }
        Ok(Spooled {
            worker_id: h.worker_id,
            rank: h.rank as usize,
            generation: h.generation,
            step: h.step,
            epoch: h.epoch,
            // The spool's directory passes to the result (this Spool's drop then removes
            // nothing: its path is emptied).
            dir: std::mem::take(&mut self.dir),
            files,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{to_chunks, CheckpointFiles};

    fn sample() -> CheckpointFiles {
        CheckpointFiles {
            worker_id: "w0".into(),
            rank: 0,
            generation: 2,
            step: 40,
            epoch: 1,
            files: vec![
                (
                    "model.mpk".into(),
                    (0..3_000_000u32).map(|i| i as u8).collect(),
                ),
                ("state.json".into(), b"{\"step\":40}".to_vec()),
            ],
        }
    }

    #[test]
    fn an_upload_lands_on_disk_byte_for_byte() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join(".upload-1");
        let c = sample();
        let mut s = Spool::new(dir.clone(), 1 << 30);
        for chunk in to_chunks(&c) {
            s.push(chunk).expect("chunk");
        }
        let done = s.finish().expect("verified");
        assert_eq!((done.step, done.epoch, done.generation), (40, 1, 2));
        assert_eq!(done.bytes(), c.bytes());
        for (name, data) in &c.files {
            assert_eq!(&std::fs::read(dir.join(name)).expect("file"), data);
        }
        drop(done);
        assert!(
            !dir.exists(),
            "the spool is removed once handed over and dropped"
        );
    }

    #[test]
    fn a_damaged_or_refused_upload_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = sample();
        // A flipped byte: the digest check at the end names the file.
        let dir = tmp.path().join(".upload-2");
        let mut chunks = to_chunks(&c);
        chunks[1].data[7] ^= 1;
        let mut s = Spool::new(dir.clone(), 1 << 30);
        for chunk in chunks {
            s.push(chunk).expect("chunk");
        }
        let e = s.finish().expect_err("corrupted");
        assert!(
            matches!(&e, SpoolError::Stream(m) if m.contains("model.mpk") && m.contains("SHA-256")),
            "{e}"
        );
        assert!(!dir.exists());
        // Out of order: refused at the chunk, and the partial files go with the spool.
        let dir = tmp.path().join(".upload-3");
        let mut chunks = to_chunks(&c);
        chunks.swap(1, 2);
        let mut s = Spool::new(dir.clone(), 1 << 30);
        let e = chunks
            .into_iter()
            .try_for_each(|ch| s.push(ch))
            .expect_err("out of order");
        assert!(e.to_string().contains("out of order"), "{e}");
        drop(s);
        assert!(!dir.exists());
        // Over the limit: refused at the header, before anything is written.
        let dir = tmp.path().join(".upload-4");
        let mut s = Spool::new(dir.clone(), 1000);
        let e = s.push(to_chunks(&c).remove(0)).expect_err("too large");
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn a_spool_that_cannot_be_written_is_an_io_error_naming_the_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        // The parent does not exist: creating the spool directory fails.
        let dir = tmp.path().join("missing").join(".upload-5");
        let mut s = Spool::new(dir.clone(), 1 << 30);
        let e = s
            .push(to_chunks(&sample()).remove(0))
            .expect_err("no parent");
        assert!(
            matches!(&e, SpoolError::Io { path, .. } if path == &dir),
            "{e}"
        );
    }
}
