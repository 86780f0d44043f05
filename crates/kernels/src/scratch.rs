//! Reusable per-thread f32 buffers for the convolution and GEMM temporaries (column matrices,
//! packed panels). Allocating them afresh each call showed up as ~6% of a training step in
//! page faults and zero-filling.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread; more than this are freed instead of pooled.
const KEEP: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats with unspecified (but initialised) contents: callers overwrite what they read.
/// Returned to this thread's pool on drop. The pool is only touched in `new` and `drop`, so a
/// rayon task stolen while a buffer is out simply gets another one.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    pub fn new(len: usize) -> Self {
        let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        if v.len() < len {
            v.resize(len, 0.0);
        } else {
            v.truncate(len);
        }
        Self(v)
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < KEEP {
                pool.push(v);
            }
        });
    }
}
