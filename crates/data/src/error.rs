//! Typed data errors. Each one names the file (and record) and says what was expected.

use std::path::PathBuf;

/// Everything that can go wrong while finding, reading, downloading or decoding data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O failure on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose contents are not what the format requires.
    #[error("{path}: {message}")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What was wrong, with the record index or byte offset.
        message: String,
    },
    /// The dataset is not on disk; the message says how to get it.
    #[error("{message}")]
    Missing {
        /// Instructions for the user.
        message: String,
    },
    /// A download that failed or did not verify.
    #[error("download of {url} failed: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An invalid option value.
    #[error("invalid data config: {0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}
