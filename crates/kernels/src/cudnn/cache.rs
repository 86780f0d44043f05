//! The cuDNN algorithm cache: for each pass and shape (`super::conv_plan::algo_key`), the algorithm
//! cuDNN measured fastest. Kept in memory and in one text file in the kernel cache directory,
//! so a restarted worker times nothing.
//!
//! ```text
//! # resnet-cluster cudnn algorithms v1
//! cudnn 91000
//! forward f32 nchw tensor-op any n256 c64 32x32 -> c64 32x32 k3x3 s1x1 p1x1<TAB>1<TAB>0<TAB>0.412
//! ```
//!
//! One entry a line: key, algorithm, workspace bytes, milliseconds, tab-separated. A file from
//! another cuDNN version is ignored (its algorithm numbers and timings need not hold), and so is
//! a file with any malformed line (a torn write): the caller warns and measures again. Writes
//! go to a temporary file that is renamed over the old one, so readers never see half a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const HEADER: &str = "# resnet-cluster cudnn algorithms v1";

/// The file name inside the kernel cache directory.
pub const FILE_NAME: &str = "cudnn-algorithms.v1.txt";

/// One cached choice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    /// The algorithm's enum value for its pass.
    pub algo: i32,
    /// Workspace bytes it needs.
    pub memory: usize,
    /// Milliseconds cuDNN measured (for the logs and the GPU check's table).
    pub time_ms: f32,
}

/// Why a cache file was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// The file does not start with this format's header.
    NotACacheFile,
    /// Written by another cuDNN version.
    OtherVersion {
        /// The version in the file.
        file: usize,
        /// The loaded library's.
        loaded: usize,
    },
    /// Line `line` (1-based) is not an entry.
    Malformed {
        /// The line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotACacheFile => write!(f, "not a cuDNN algorithm cache (no '{HEADER}' header)"),
            Self::OtherVersion { file, loaded } => write!(
                f,
                "written with cuDNN {file}, this process loaded cuDNN {loaded}"
            ),
            Self::Malformed { line, why } => write!(f, "line {line}: {why}"),
        }
    }
}

/// The algorithms chosen so far for one cuDNN version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlgoCache {
    version: usize,
    entries: BTreeMap<String, Entry>,
}

impl AlgoCache {
    /// An empty cache for cuDNN `version` (`cudnnGetVersion()`).
    pub fn new(version: usize) -> Self {
        Self {
            version,
            entries: BTreeMap::new(),
        }
    }

    /// The cached choice for `key`.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.entries.get(key).copied()
    }

    /// Records the choice for `key` (keys never contain tabs or newlines: `algo_key` builds
    /// them from numbers and fixed words).
    pub fn insert(&mut self, key: String, e: Entry) {
        self.entries.insert(key, e);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = format!("{HEADER}\ncudnn {}\n", self.version);
        for (k, e) in &self.entries {
            s.push_str(&format!("{k}\t{}\t{}\t{}\n", e.algo, e.memory, e.time_ms));
        }
        s
    }

    /// The cache in `text`, if it was written for cuDNN `version` and every line is an entry.
    pub fn parse(text: &str, version: usize) -> Result<Self, Rejected> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(Rejected::NotACacheFile);
        }
        let malformed = |line: usize, why: &str| Rejected::Malformed {
            line,
            why: why.to_string(),
        };
        let file = lines
            .next()
            .and_then(|l| l.strip_prefix("cudnn "))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| malformed(2, "expected 'cudnn VERSION'"))?;
        if file != version {
            return Err(Rejected::OtherVersion {
                file,
                loaded: version,
            });
        }
        let mut cache = Self::new(version);
        for (i, line) in lines.enumerate() {
            let n = i + 3;
            let f: Vec<&str> = line.split('\t').collect();
            let [key, algo, memory, time] = f[..] else {
                return Err(malformed(n, "expected 4 tab-separated fields"));
            };
            if key.is_empty() {
                return Err(malformed(n, "empty key"));
            }
            let entry = Entry {
                algo: algo
                    .parse()
                    .map_err(|_| malformed(n, "algorithm is not an integer"))?,
                memory: memory
                    .parse()
                    .map_err(|_| malformed(n, "workspace bytes is not an integer"))?,
                time_ms: time
                    .parse::<f32>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or_else(|| malformed(n, "time is not a non-negative number"))?,
            };
            cache.insert(key.to_string(), entry);
        }
        Ok(cache)
    }

    /// The cache stored at `path` for cuDNN `version`: empty when there is no file, and empty
    /// with the reason when the file cannot be used (the caller warns; nothing is fatal, the
    /// algorithms are simply measured again).
    pub fn load(path: &Path, version: usize) -> (Self, Option<String>) {
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::new(version), None),
            Err(e) => (Self::new(version), Some(format!("{}: {e}", path.display()))),
            Ok(text) => match Self::parse(&text, version) {
                Ok(c) => (c, None),
                Err(r) => (Self::new(version), Some(format!("{}: {r}", path.display()))),
            },
        }
    }

    /// Writes the cache to `path` atomically (a temporary file in the same directory, synced,
    /// then renamed over `path`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AlgoCache {
        let mut c = AlgoCache::new(91000);
        c.insert(
            "forward f32 nchw tensor-op any n256 c64 32x32 -> c64 32x32 k3x3 s1x1 p1x1".into(),
            Entry {
                algo: 1,
                memory: 0,
                time_ms: 0.412,
            },
        );
        c.insert(
            "weight-grad bf16 nhwc tensor-op det n256 c3 32x32 -> c64 32x32 k3x3 s1x1 p1x1".into(),
            Entry {
                algo: 5,
                memory: 16 << 20,
                time_ms: 1.25,
            },
        );
        c
    }

    #[test]
    fn a_cache_round_trips_through_its_file() {
        let dir = tempfile_dir();
        let path = dir.join(FILE_NAME);
        let c = sample();
        c.save(&path).expect("save");
        let (back, warning) = AlgoCache::load(&path, 91000);
        assert_eq!(warning, None);
        assert_eq!(back, c);
        assert_eq!(back.len(), 2);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# resnet-cluster cudnn algorithms v1\ncudnn 91000\n"));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_file_is_an_empty_cache_without_a_warning() {
        let (c, w) = AlgoCache::load(Path::new("/nonexistent/cudnn.txt"), 91000);
        assert!(c.is_empty());
        assert_eq!(w, None);
    }

    #[test]
    fn unusable_files_are_ignored_with_the_reason() {
        let good = sample().render();
        let cases: Vec<(String, &str)> = vec![
            ("garbage".into(), "not a cuDNN algorithm cache"),
            (
                good.replace("cudnn 91000", "cudnn 90100"),
                "written with cuDNN 90100, this process loaded cuDNN 91000",
            ),
            (
                good.replace("cudnn 91000", "cudnn x"),
                "line 2: expected 'cudnn VERSION'",
            ),
            (
                good.replace("\t1\t0\t", "\tone\t0\t"),
                "line 3: algorithm is not an integer",
            ),
            (
                good.replace("\t0.412", "\tNaN"),
                "line 3: time is not a non-negative number",
            ),
            (
                format!("{good}forward f32 torn"),
                "line 5: expected 4 tab-separated fields",
            ),
            (
                good.trim_end().trim_end_matches("1.25").to_string(),
                "line 4: time is not a non-negative number",
            ),
        ];
        for (text, want) in cases {
            let e = AlgoCache::parse(&text, 91000).expect_err("unusable");
            assert!(e.to_string().contains(want), "{e} (wanted {want})");
        }
        let dir = tempfile_dir();
        let path = dir.join(FILE_NAME);
        std::fs::write(&path, "garbage").expect("write");
        let (c, w) = AlgoCache::load(&path, 91000);
        assert!(c.is_empty());
        let w = w.expect("a warning");
        assert!(
            w.contains(FILE_NAME) && w.contains("not a cuDNN algorithm cache"),
            "{w}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "resnet-kernels-cudnn-cache-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
