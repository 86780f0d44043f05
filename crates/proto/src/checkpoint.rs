//! Checkpoints on the wire: a checkpoint directory's files cut into chunks, and the checked
//! reassembly on the other side. The first chunk's header lists every file with its size and
//! SHA-256, so the receiver rejects a truncated, reordered, oversized or corrupted stream with a
//! message that names the file — before anything reaches disk.

use sha2::{Digest, Sha256};

use crate::v1;

/// Bytes of file data per chunk (well under gRPC's default 4 MiB message limit).
pub const CHUNK_BYTES: usize = 1 << 20;
/// Most files one checkpoint may have.
pub const MAX_FILES: usize = 64;

/// A checkpoint in memory: the files of one checkpoint directory and who sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointFiles {
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
    /// (file name, contents), names without directories.
    pub files: Vec<(String, Vec<u8>)>,
}

impl CheckpointFiles {
    /// Total bytes of file data.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, d)| d.len() as u64).sum()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Cuts a checkpoint into chunks; the first carries the header.
pub fn to_chunks(c: &CheckpointFiles) -> Vec<v1::CheckpointChunk> {
    let header = v1::CheckpointHeader {
        worker_id: c.worker_id.clone(),
        rank: c.rank as u32,
        generation: c.generation,
        step: c.step,
        epoch: c.epoch,
        files: c
            .files
            .iter()
            .map(|(name, data)| v1::CheckpointFile {
                name: name.clone(),
                size: data.len() as u64,
                sha256: sha256_hex(data),
            })
            .collect(),
    };
    let mut chunks = Vec::new();
    for (i, (_, data)) in c.files.iter().enumerate() {
        for (k, piece) in data.chunks(CHUNK_BYTES).enumerate() {
            chunks.push(v1::CheckpointChunk {
                header: None,
                file: i as u32,
                offset: (k * CHUNK_BYTES) as u64,
                data: piece.to_vec(),
            });
        }
    }
    match chunks.first_mut() {
        Some(first) => first.header = Some(header),
        None => chunks.push(v1::CheckpointChunk {
            header: Some(header),
            file: 0,
            offset: 0,
            data: Vec::new(),
        }),
    }
    chunks
}

/// A plain file name: no directories, no `..`, printable, at most 255 bytes.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && name.chars().all(|c| c.is_ascii_graphic())
}

/// Checks a stream's header: 1..=[`MAX_FILES`] plain, distinct file names with 64-hex-digit
/// digests, and no more than `max_bytes` of data in all.
pub fn check_header(h: &v1::CheckpointHeader, max_bytes: u64) -> Result<(), String> {
    if h.files.is_empty() || h.files.len() > MAX_FILES {
        return Err(format!(
            "header lists {} files (1..={MAX_FILES} allowed)",
            h.files.len()
        ));
    }
    let mut total = 0u64;
    for f in &h.files {
        if !valid_file_name(&f.name) {
            return Err(format!("invalid file name {:?}", f.name));
        }
        if f.sha256.len() != 64 {
            return Err(format!("{}: sha256 is not 64 hex digits", f.name));
        }
        total = total.saturating_add(f.size);
    }
    if total > max_bytes {
        return Err(format!(
            "checkpoint of {total} bytes exceeds the limit of {max_bytes} bytes"
        ));
    }
    let mut names: Vec<&str> = h.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("a file name appears twice in the header".into());
    }
    Ok(())
}

/// Reassembles a chunk stream, checking it as it arrives.
#[derive(Debug)]
pub struct Assembler {
    max_bytes: u64,
    header: Option<v1::CheckpointHeader>,
    data: Vec<Vec<u8>>,
    received: u64,
}

impl Assembler {
    /// Accepts at most `max_bytes` of file data in total.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            header: None,
            data: Vec::new(),
            received: 0,
        }
    }

    /// Takes the next chunk; the error says what is wrong with the stream.
    pub fn push(&mut self, c: v1::CheckpointChunk) -> Result<(), String> {
        if let Some(h) = c.header {
            if self.header.is_some() {
                return Err("a second header in one checkpoint stream".into());
            }
            check_header(&h, self.max_bytes)?;
            self.data = h
                .files
                .iter()
                .map(|f| Vec::with_capacity(f.size.min(64 << 20) as usize))
                .collect();
            self.header = Some(h);
        }
        let Some(h) = &self.header else {
            return Err("the first chunk carries no header".into());
        };
        if c.data.is_empty() {
            return Ok(());
        }
        let i = c.file as usize;
        let f = h.files.get(i).ok_or_else(|| {
            format!(
                "chunk for file #{i}, but the header lists {}",
                h.files.len()
            )
        })?;
        let buf = &mut self.data[i];
        if c.offset != buf.len() as u64 {
            return Err(format!(
                "{}: chunk at offset {}, expected {} (chunks out of order or missing)",
                f.name,
                c.offset,
                buf.len()
            ));
        }
        if buf.len() as u64 + c.data.len() as u64 > f.size {
            return Err(format!(
                "{}: more data than the {} bytes the header announced",
                f.name, f.size
            ));
        }
        self.received += c.data.len() as u64;
        buf.extend_from_slice(&c.data);
        Ok(())
    }

    /// Checks sizes and digests and returns the checkpoint.
    pub fn finish(self) -> Result<CheckpointFiles, String> {
        let h = self.header.ok_or("empty checkpoint stream (no header)")?;
        let mut files = Vec::with_capacity(h.files.len());
        for (f, data) in h.files.into_iter().zip(self.data) {
            if data.len() as u64 != f.size {
                return Err(format!(
                    "{}: truncated: received {} of {} bytes",
                    f.name,
                    data.len(),
                    f.size
                ));
            }
            let digest = sha256_hex(&data);
            if digest != f.sha256.to_ascii_lowercase() {
                return Err(format!(
                    "{}: SHA-256 mismatch: received {digest}, header says {}",
                    f.name, f.sha256
                ));
            }
            files.push((f.name, data));
        }
        Ok(CheckpointFiles {
            worker_id: h.worker_id,
            rank: h.rank as usize,
            generation: h.generation,
            step: h.step,
            epoch: h.epoch,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CheckpointFiles {
        CheckpointFiles {
            worker_id: "w0".into(),
            rank: 0,
            generation: 1,
            step: 40,
            epoch: 2,
            files: vec![
                (
                    "model.mpk".into(),
                    (0..(CHUNK_BYTES * 2 + 17)).map(|i| i as u8).collect(),
                ),
                ("state.json".into(), b"{}".to_vec()),
                ("empty".into(), Vec::new()),
            ],
        }
    }

    fn assemble(chunks: Vec<v1::CheckpointChunk>) -> Result<CheckpointFiles, String> {
        let mut a = Assembler::new(1 << 30);
        for c in chunks {
            a.push(c)?;
        }
        a.finish()
    }

    #[test]
    fn round_trip_across_chunk_boundaries() {
        let c = sample();
        let chunks = to_chunks(&c);
        assert_eq!(chunks.len(), 4);
        assert_eq!(assemble(chunks), Ok(c));
    }

    #[test]
    fn corruption_truncation_reordering_and_bad_names_are_named() {
        let mut chunks = to_chunks(&sample());
        chunks[1].data[5] ^= 1;
        let e = assemble(chunks).expect_err("flipped byte");
        assert!(e.contains("model.mpk") && e.contains("SHA-256"), "{e}");

        let mut chunks = to_chunks(&sample());
        chunks.remove(1);
        let e = assemble(chunks).expect_err("missing chunk");
        assert!(e.contains("out of order"), "{e}");

        let mut chunks = to_chunks(&sample());
        chunks.pop();
        let e = assemble(chunks).expect_err("truncated");
        assert!(e.contains("state.json") && e.contains("truncated"), "{e}");

        let mut c = sample();
        c.files[1].0 = "../../etc/passwd".into();
        let e = assemble(to_chunks(&c)).expect_err("path");
        assert!(e.contains("invalid file name"), "{e}");

        let mut chunks = to_chunks(&sample());
        chunks[0].header = None;
        assert!(assemble(chunks)
            .expect_err("no header")
            .contains("no header"));

        let mut a = Assembler::new(100);
        let e = a.push(to_chunks(&sample()).remove(0)).expect_err("too big");
        assert!(e.contains("exceeds"), "{e}");
    }
}
