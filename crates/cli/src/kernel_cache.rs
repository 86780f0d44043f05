//! Where CUDA kernels and autotune results persist between runs.
//!
//! cubecl (under Burn's CUDA backend) compiles every kernel with NVRTC at first use and, with
//! autotuning, times each candidate kernel for each new shape. Both results can be cached on
//! disk, but by default cubecl keeps compiled kernels in memory only and puts autotune results
//! in a `target/` directory found from the working directory. A worker restarted by Kubernetes
//! or by the coordinator would redo all of it, so the binaries point both caches at one
//! directory per user unless a cubecl.toml/burn.toml says otherwise.

use std::path::{Path, PathBuf};

/// What [`resolve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheChoice {
    /// Persist compiled kernels and autotune results in this directory.
    Dir(PathBuf),
    /// Keep them in memory only (`--kernel-cache off`, or no home directory to put them in).
    Off,
    /// A cubecl configuration file was found: cubecl reads it and its settings apply.
    CubeclFile(PathBuf),
}

/// The files cubecl reads its configuration from, in the working directory or any parent.
const CUBECL_FILES: [&str; 4] = ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"];

/// Decides where the kernel cache goes: `flag` (`--kernel-cache`), else a cubecl configuration
/// file above `cwd`, else `$XDG_CACHE_HOME/resnet-cluster/kernels` or
/// `$HOME/.cache/resnet-cluster/kernels` (`env` reads the environment).
pub fn resolve(
    flag: Option<&Path>,
    cwd: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> CacheChoice {
    match flag {
        Some(p) if p == Path::new("off") => return CacheChoice::Off,
        Some(p) => return CacheChoice::Dir(p.to_path_buf()),
        None => {}
    }
    for dir in cwd.ancestors() {
        for name in CUBECL_FILES {
            let f = dir.join(name);
            if f.is_file() {
                return CacheChoice::CubeclFile(f);
            }
        }
    }
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let base = nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| Path::new(&h).join(".cache")));
    match base {
        Some(b) => CacheChoice::Dir(b.join("resnet-cluster").join("kernels")),
        None => CacheChoice::Off,
    }
}

/// Applies [`resolve`]'s choice to cubecl's global configuration, once per process and before
/// the first CUDA operation (cubecl reads its configuration once).
#[cfg(feature = "cuda")]
pub fn configure(flag: Option<&Path>, gpu: usize) -> anyhow::Result<()> {
    use anyhow::Context;
    use burn_cubecl::cubecl::config::cache::CacheConfig;
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    if CubeClRuntimeConfig::storage().lock().is_some() {
        return Ok(()); // configured already (a second device selection in this process)
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let choice = resolve(flag, &cwd, |k| std::env::var(k).ok());
    let mut cfg = CubeClRuntimeConfig::default().override_from_env();
    match &choice {
        CacheChoice::CubeclFile(f) => {
            tracing::info!(file = %f.display(), "cubecl configured by file; --kernel-cache not applied");
            return Ok(());
        }
        CacheChoice::Off => tracing::info!(
            "kernel cache off: the first training step of every run compiles the GPU kernels (about 2 minutes for a ResNet)"
        ),
        CacheChoice::Dir(d) => {
            // cubecl compiles for the exact architecture: one subdirectory per architecture, so
            // a cache shared by different GPUs (a home directory, a hostPath) never mixes them.
            let d = &match resnet_collective::nccl::device_arch(gpu) {
                Ok(arch) => d.join(arch),
                Err(e) => {
                    tracing::warn!(error = %e, "GPU architecture unknown: kernel cache not split by architecture");
                    d.clone()
                }
            };
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating the kernel cache directory {}", d.display()))?;
            // Say up front why the first step may take minutes: a silent two-minute first step
            // looks like a hang (measured: ResNet-18 111 s cold, 0.2 s cached, on an H200).
            let cached = std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(false);
            if cached {
                tracing::info!(dir = %d.display(), "kernel cache: compiled kernels are reused");
            } else {
                tracing::info!(
                    dir = %d.display(),
                    "kernel cache is empty: the first training step compiles the GPU kernels (about 2 minutes for a ResNet); later runs reuse them"
                );
            }
            cfg.autotune.cache = CacheConfig::File(d.clone());
            cfg.compilation.cache = Some(CacheConfig::File(d.clone()));
        }
    }
    if let Some(log) = std::env::var_os("RESNET_CUDA_LOG") {
        // Every compiled kernel and every autotune decision with its candidates' timings,
        // without cubecl's per-launch profiling (CUBECL_DEBUG_LOG turns that on too, and it
        // slows the very first step this log is meant to explain).
        use burn_cubecl::cubecl::config::autotune::AutotuneLogLevel;
        use burn_cubecl::cubecl::config::compilation::CompilationLogLevel;
        let file = PathBuf::from(log);
        cfg.compilation.logger.file = Some(file.clone());
        cfg.compilation.logger.level = CompilationLogLevel::Basic;
        cfg.autotune.logger.file = Some(file);
        cfg.autotune.logger.level = AutotuneLogLevel::Full;
    }
    if let Some(log) = std::env::var_os("RESNET_CUDA_PROFILE") {
        // Every kernel launch timed on the device, named with its kernel id and grid size
        // (cubecl's profiler at its "full" level; benchmarks/summarize_profile.py sums them per
        // kernel). It synchronises after each kernel, so steps run slower meanwhile.
        use burn_cubecl::cubecl::config::profiling::ProfilingLogLevel;
        cfg.profiling.logger.file = Some(PathBuf::from(log));
        cfg.profiling.logger.level = ProfilingLogLevel::Full;
    }
    CubeClRuntimeConfig::set(cfg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flag_wins_then_config_file_then_xdg_then_home() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let deep = tmp.path().join("a/b");
        std::fs::create_dir_all(&deep).expect("mkdir");
        let vars = [("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];

        let flag = Path::new("/k");
        assert_eq!(
            resolve(Some(flag), &deep, env(&vars)),
            CacheChoice::Dir("/k".into())
        );
        assert_eq!(
            resolve(Some(Path::new("off")), &deep, env(&vars)),
            CacheChoice::Off
        );
        assert_eq!(
            resolve(None, &deep, env(&vars)),
            CacheChoice::Dir("/xdg/resnet-cluster/kernels".into())
        );
        assert_eq!(
            resolve(
                None,
                &deep,
                env(&[("XDG_CACHE_HOME", ""), ("HOME", "/home/u")])
            ),
            CacheChoice::Dir("/home/u/.cache/resnet-cluster/kernels".into())
        );
        assert_eq!(resolve(None, &deep, env(&[])), CacheChoice::Off);

        // A cubecl.toml two levels up takes precedence over the default, not over the flag.
        let file = tmp.path().join("cubecl.toml");
        std::fs::write(&file, "").expect("write");
        assert_eq!(
            resolve(None, &deep, env(&vars)),
            CacheChoice::CubeclFile(file)
        );
        assert_eq!(
            resolve(Some(flag), &deep, env(&vars)),
            CacheChoice::Dir("/k".into())
        );
    }
}
