//! `--download`: fetch an official tarball, verify its MD5, extract it next to the data.
//!
//! The archive streams to `<dir>/<name>.part` while its MD5 is computed; only a verified archive is
//! extracted (into a temporary folder that is renamed into place), so a failed or corrupted
//! download never leaves half a dataset behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::cifar::CifarKind;
use crate::DataError;

/// Where an archive comes from and what it must hash to.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    /// HTTP(S) URL.
    pub url: String,
    /// Expected MD5, lowercase hex.
    pub md5: String,
    /// File name to store the archive under while downloading.
    pub archive: String,
    /// Top-level folder the archive extracts to.
    pub folder: String,
}

impl DownloadSpec {
    /// The official CIFAR binary tarballs.
    pub fn cifar(kind: CifarKind) -> Self {
        let (url, md5, archive) = match kind {
            CifarKind::Cifar10 => (
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                "c32a1d4ab5d03f1284b67883e8d87530",
                "cifar-10-binary.tar.gz",
            ),
            CifarKind::Cifar100 => (
                "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                "03b5dce01913d631647c71ecec9e9cb8",
                "cifar-100-binary.tar.gz",
            ),
        };
        Self {
            url: url.into(),
            md5: md5.into(),
            archive: archive.into(),
            folder: kind.folder().into(),
        }
    }
}

fn dl_err(spec: &DownloadSpec, message: impl Into<String>) -> DataError {
    DataError::Download {
        url: spec.url.clone(),
        message: message.into(),
    }
}

/// Downloads, verifies and extracts `spec` into `dir`; returns `dir/<folder>`.
/// `progress(bytes_so_far, total)` is called as data arrives. Does nothing if the folder exists.
pub fn download_and_extract(
    spec: &DownloadSpec,
    dir: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, DataError> {
    let target = dir.join(&spec.folder);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let part = dir.join(format!("{}.part", spec.archive));
    let result = fetch(spec, &part, progress).and_then(|()| extract(spec, &part, dir, &target));
    // The archive is only a vehicle: remove it whether or not extraction worked.
    let _ = std::fs::remove_file(&part);
    result.map(|()| target)
}

fn fetch(
    spec: &DownloadSpec,
    part: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), DataError> {
    let resp = ureq::get(&spec.url)
        .call()
        .map_err(|e| dl_err(spec, e.to_string()))?;
    let total = resp
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let mut reader = resp.into_reader();
    let mut file = std::fs::File::create(part).map_err(|e| DataError::io(part, e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| dl_err(spec, format!("after {done} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| DataError::io(part, e))?;
        done += n as u64;
        progress(done, total);
    }
    file.sync_all().map_err(|e| DataError::io(part, e))?;
    if let Some(t) = total.filter(|&t| t != done) {
        return Err(dl_err(
            spec,
            format!("connection closed after {done} of {t} bytes"),
        ));
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != spec.md5 {
        return Err(dl_err(
            spec,
            format!(
                "MD5 mismatch: got {got}, expected {} ({done} bytes); the file was discarded",
                spec.md5
            ),
        ));
    }
    Ok(())
}

fn extract(
    spec: &DownloadSpec,
    archive: &Path,
    dir: &Path,
    target: &Path,
) -> Result<(), DataError> {
    let staging = dir.join(format!(".{}.extracting", spec.folder));
    let _ = std::fs::remove_dir_all(&staging);
    let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    // tar's unpack refuses entries that would escape the destination (`..`, absolute paths).
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&staging)
        .map_err(|e| DataError::format(archive, format!("cannot extract: {e}")))?;
    let inner = staging.join(&spec.folder);
    if !inner.is_dir() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(DataError::format(
            archive,
            format!("archive has no top-level folder '{}'", spec.folder),
        ));
    }
    std::fs::rename(&inner, target).map_err(|e| DataError::io(target, e))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}
