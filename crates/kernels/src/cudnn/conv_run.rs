//! The convolution passes through cuDNN on cubecl tensors, and the process-wide algorithm
//! cache. Stream ordering and the per-thread handle are `super::device`'s.
//!
//! **State.** The algorithm cache is per process (every thread's measurements are shared) and
//! backed by a file in the kernel cache directory. Descriptors and the workspace live in the
//! thread's per-device state.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use burn::tensor::Shape;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::cache::{AlgoCache, Entry, FILE_NAME};
use super::conv_plan::{self as plan, CudaMath, Layout, Workspace};
use super::device::{contiguous, dtype_of, timed_sync, with_device, Stream};
use super::ffi::{self, Descriptors, DeviceBuffer, Handle};
use crate::geom::ConvGeom;
use crate::geom::Pass;

type Tensor = CubeTensor<CudaRuntime>;

/// What a cuDNN pass is configured with (from the `KernelChoice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `--cuda-math`.
    pub math: CudaMath,
    /// `--deterministic`: only algorithms that give the same bits on every run.
    pub deterministic: bool,
    /// `--cudnn-workspace-mb`.
    pub workspace_mb: usize,
    /// The operands' layout: NCHW tensors, or NHWC ones held as Burn tensors of the physical
    /// shape ([`Layout::physical`]).
    pub layout: Layout,
}

/// The process-wide algorithm cache and where it is stored (None: memory only).
struct SharedCache {
    cache: AlgoCache,
    file: Option<PathBuf>,
}

fn shared_cache() -> &'static Mutex<SharedCache> {
    static CACHE: OnceLock<Mutex<SharedCache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let version = ffi::version();
        let file = cache_dir().map(|d| d.join(FILE_NAME));
        let cache = match &file {
            Some(f) => {
                let (c, warning) = AlgoCache::load(f, version);
                if let Some(w) = warning {
                    tracing::warn!(reason = %w, "cuDNN algorithm cache ignored; algorithms are measured again");
                } else if !c.is_empty() {
                    tracing::info!(file = %f.display(), entries = c.len(), "cuDNN algorithm cache");
                }
                c
            }
            None => AlgoCache::new(version),
        };
        Mutex::new(SharedCache { cache, file })
    })
}

/// The kernel cache directory the binary configured cubecl with (`--kernel-cache`), if any:
/// the cuDNN choices are stored beside the compiled kernels.
fn cache_dir() -> Option<PathBuf> {
    use burn_cubecl::cubecl::config::cache::CacheConfig;
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    match &CubeClRuntimeConfig::get().autotune.cache {
        CacheConfig::File(dir) => Some(dir.clone()),
        _ => None,
    }
}

/// The logical `[n, c, h, w]` shapes of `pass`'s operands `(a, b)` and output.
pub(crate) fn shapes(pass: Pass, g: &ConvGeom) -> [[usize; 4]; 3] {
    let x = [g.batch, g.cin, g.in_hw[0], g.in_hw[1]];
    let w = [g.cout, g.cin, g.kernel[0], g.kernel[1]];
    let y = [g.batch, g.cout, g.out_hw[0], g.out_hw[1]];
    match pass {
        Pass::Forward => [x, w, y],
        Pass::InputGrad => [w, y, x],
        Pass::WeightGrad => [x, y, w],
    }
}

/// `pass` on `(a, b)` through cuDNN: forward `(x, w)`, input gradient `(w, dy)`, weight gradient
/// `(x, dy)`, in the operands' dtype. `Err` says why cuDNN did not run it (the caller falls
/// back); nothing has been written then.
pub(crate) fn pass(
    pass: Pass,
    a: Tensor,
    b: Tensor,
    g: &ConvGeom,
    s: Settings,
) -> Result<Tensor, String> {
    let dtype = dtype_of(&a).ok_or_else(|| format!("dtype {:?}", a.dtype))?;
    if dtype_of(&b) != Some(dtype) {
        return Err(format!("mixed dtypes {:?} and {:?}", a.dtype, b.dtype));
    }
    let layout = s.layout;
    let conv_plan = plan::plan(g, layout, dtype, s.math).map_err(|e| e.to_string())?;
    // The descriptors describe dense tensors of these physical shapes: anything else would be
    // read as garbage, so it is refused (the caller falls back) rather than run.
    let [sa, sb, so] = shapes(pass, g).map(|d| layout.physical(d));
    for (t, want, what) in [(&a, sa, "first operand"), (&b, sb, "second operand")] {
        if t.meta.shape().as_slice() != want.as_slice() {
            return Err(format!(
                "{} {what} has shape {:?}, the {} descriptors expect {want:?}",
                pass.name(),
                t.meta.shape().as_slice(),
                layout.name()
            ));
        }
    }
    let (a, b) = (contiguous(a), contiguous(b));
    let client = a.client.clone();
    let device = a.device.clone();
    let out =
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new(so), a.dtype);
    let resource = |t: &Tensor| {
        client
            .get_resource(t.handle.clone())
            .map_err(|e| format!("{e:?}"))
    };
    let (ra, rb, ro) = (resource(&a)?, resource(&b)?, resource(&out)?);
    let ptrs = (
        ra.resource().ptr as *const std::ffi::c_void,
        rb.resource().ptr as *const std::ffi::c_void,
        ro.resource().ptr as *mut std::ffi::c_void,
    );
    // cubecl's stream for this thread: `out` was just allocated here.
    let stream = Stream::new(ro.resource().stream);
    let key = plan::algo_key(pass, g, layout, dtype, s.math, s.deterministic);
    with_device(device.index, s.workspace_mb, stream, |dev| {
        let d = match dev.conv.entry((*g, dtype, s.math, layout)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Descriptors::new(&conv_plan, dtype, layout)?)
            }
        };
        let d = &*d;
        let cached = shared_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cache
            .get(&key);
        let entry = match cached {
            // A choice made under a larger `--cudnn-workspace-mb` is measured again.
            Some(e) if e.memory <= dev.plan.cap => e,
            _ => measure(&dev.handle, d, pass, ptrs, s, &key)?,
        };
        if let Some(size) = dev.plan.grow_for(entry.memory) {
            // The old workspace may still be in use by a queued call: drain first (rare: the
            // workspace only grows, to the largest algorithm's need).
            timed_sync(|| dev.handle.synchronize())?;
            dev.workspace = DeviceBuffer::new(size)?;
        }
        // SAFETY: the three addresses are live cubecl allocations, contiguous and of the shapes
        // the descriptors describe (`plan` built both from `g`; `out` was allocated from
        // `out_shape(pass, g)`), in the dtype the descriptors name. The call is queued on
        // cubecl's stream (the handle is bound to it), so it runs after the kernels that wrote
        // the operands, and whatever reads `out` or reuses the operands' memory once the guards
        // drop is queued behind it on the same stream. The workspace holds at least
        // `entry.memory` bytes (grown above; `measure` only returns algorithms within the cap)
        // and is only used on this stream.
        #[allow(unsafe_code)]
        unsafe {
            ffi::run(&dev.handle, d, pass, entry.algo, ptrs, dev.workspace.raw())
        }
    })?;
    drop((ra, rb, ro));
    Ok(out)
}

/// Measures `pass`'s algorithms on these operands (once per key and process; then from the
/// cache, in memory and on disk) and returns the choice.
fn measure(
    h: &Handle,
    d: &Descriptors,
    pass: Pass,
    ptrs: ffi::Operands,
    s: Settings,
    key: &str,
) -> Result<Entry, String> {
    let cap = Workspace::with_cap_mb(s.workspace_mb).cap;
    // A search workspace as large as allowed, freed afterwards: the chosen algorithm usually
    // needs far less, and only that much is kept.
    let search = DeviceBuffer::new(cap).or_else(|_| DeviceBuffer::new(0))?;
    // SAFETY: as in `pass`: live, correctly sized operands, queued in order on cubecl's stream;
    // `search` is a live allocation of its stated size, kept until the stream has drained
    // below. The search writes the output operand, which `pass` then overwrites.
    #[allow(unsafe_code)]
    let measured = unsafe { ffi::find(h, d, pass, ptrs, search.raw())? };
    timed_sync(|| h.synchronize())?;
    drop(search);
    let chosen = plan::choose(&measured, cap, s.deterministic).ok_or_else(|| {
        format!(
            "no cuDNN algorithm for {key} within {} MiB{}",
            s.workspace_mb,
            if s.deterministic {
                " that is deterministic"
            } else {
                ""
            }
        )
    })?;
    let entry = Entry {
        algo: chosen.algo,
        memory: chosen.memory,
        time_ms: chosen.time_ms,
    };
    tracing::debug!(
        key,
        algo = entry.algo,
        ms = entry.time_ms,
        workspace = entry.memory,
        "cuDNN algorithm chosen"
    );
    let mut shared = shared_cache().lock().unwrap_or_else(|p| p.into_inner());
    shared.cache.insert(key.to_string(), entry);
    if let Some(f) = shared.file.clone() {
        if let Err(e) = shared.cache.save(&f) {
            tracing::warn!(file = %f.display(), error = %e, "cannot store the cuDNN algorithm cache; it is kept in memory");
            shared.file = None;
        }
    }
    Ok(entry)
}
