//! Single-threaded f32 GEMM for the convolution kernels: a BLIS-style blocked loop around an
//! AVX-512 6x64 micro-kernel, with the `gemm` crate as the fallback on CPUs without AVX-512.
//!
//! Why not only the `gemm` crate: its AVX-512 micro-kernel, as compiled here, spilled its
//! accumulators to the stack after every FMA (seen in `perf annotate`), which held one core
//! to ~31 GFLOP/s where PyTorch's GEMM reaches ~85 on the same core. Keeping the 24
//! accumulators of a 6x64 tile in registers was the trick. (Those measurements were taken with
//! the dev profile's debug assertions on in every crate. Without them — Cargo.toml — one core
//! of this Zen 4, whose FMA peak is ~117 GFLOP/s, runs a lone 512x512x4608 product at ~96
//! GFLOP/s here and ~104 in the `gemm` crate (2026-12-07). This one stays: convolutions pack
//! their weight once for all chunks ([`PackedA`]) and cut the depth where skipped taps need
//! it ([`DEPTH_BLOCK`]), and in a training step its micro-kernel runs at ~90% of the peak.)
//!
//! The blocked loop and micro-kernel are in `blocked.rs`, the packing in `pack.rs`.

mod blocked;
mod pack;

use blocked::{blocked, ASource};
pub(crate) use pack::PackedA;

/// A read-only matrix: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix with `ld` elements per row.
    pub fn row_major(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `ld` elements per row.
    pub fn transposed(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// Panics unless every element of a rows x cols view lies inside the slice.
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.data.len(), "gemm operand out of bounds");
        }
    }

    /// The rows from `r` on.
    fn rows_from(self, r: usize) -> Self {
        Self {
            data: &self.data[r * self.rs..],
            ..self
        }
    }

    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// Which implementation [`sgemm`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// The blocked AVX-512 kernel of this module.
    Avx512,
    /// The `gemm` crate.
    Portable,
}

/// The fastest path this CPU supports (detected once).
pub(crate) fn best_path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX512.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f")) {
            return Path::Avx512;
        }
    }
    Path::Portable
}

/// `dst[m, n] (row-major) = (accumulate ? dst : 0) + a[m, k] · b[k, n]`, on the calling thread.
pub(crate) fn sgemm(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: View,
    b: View,
    path: Path,
) {
    assert_eq!(dst.len(), m * n, "gemm destination length");
    a.check(m, k);
    b.check(k, n);
    if empty([m, n, k], dst, accumulate) {
        return;
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => blocked([m, n, k], dst, accumulate, ASource::View(a), b, None),
        _ => portable([m, n, k], dst, accumulate, a, b),
    }
}

/// Finishes a product with no rows, columns or depth (an empty sum is zero, added or
/// written); returns whether it was one.
fn empty([m, n, k]: [usize; 3], dst: &mut [f32], accumulate: bool) -> bool {
    if k == 0 && !accumulate {
        dst.fill(0.0);
    }
    m == 0 || n == 0 || k == 0
}

/// The depth (k) of one block of the AVX-512 GEMM: it sums each block of KC products in its
/// registers and then adds the block to the output. Callers that drop all-zero depth rows and
/// must round as the full product did cut their depth where these blocks were cut
/// ([`PackedA::new`]).
pub(crate) const DEPTH_BLOCK: usize = KC;

/// [`sgemm_rows`] with A packed beforehand, on the AVX-512 path (the only one that packs):
/// `dst[m, n] = (accumulate ? dst : 0) + A · b`, with A's depth blocks as it was packed.
pub(crate) fn sgemm_rows_packed(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: &PackedA,
    b: View,
    splits: usize,
) {
    assert_eq!(best_path(), Path::Avx512, "packed A needs the AVX-512 GEMM");
    assert_eq!(a.dims(), [m, k], "packed A dimensions");
    assert_eq!(dst.len(), m * n, "gemm destination length");
    b.check(k, n);
    if empty([m, n, k], dst, accumulate) {
        return;
    }
    split_rows([m, n], dst, splits, |rows, block, row0| {
        blocked(
            [rows, n, k],
            block,
            accumulate,
            ASource::Packed(a, row0),
            b,
            None,
        );
    });
}

/// Runs `gemm(rows, dst block, first row)` on `splits` blocks of `dst`'s rows in parallel
/// (each a multiple of the micro-kernel's MR rows), or once on all of them when `splits` is 1
/// or the matrix too short to split.
fn split_rows(
    [m, n]: [usize; 2],
    dst: &mut [f32],
    splits: usize,
    gemm: impl Fn(usize, &mut [f32], usize) + Sync,
) {
    use rayon::prelude::*;
    if splits <= 1 || m < 2 * MR || n == 0 {
        return gemm(m, dst, 0);
    }
    let rows = m.div_ceil(splits).next_multiple_of(MR);
    dst.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, block)| gemm(block.len() / n, block, i * rows));
}

/// [`sgemm`] with the rows of `dst` split into `splits` blocks computed in parallel on the
/// rayon pool (each block packs its own share of A and all of B). For GEMMs too few to keep
/// every thread busy one per thread, e.g. the late, small-spatial ResNet stages.
pub(crate) fn sgemm_rows(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: View,
    b: View,
    splits: usize,
) {
    let path = best_path();
    if splits > 1 && n > 0 {
        assert_eq!(dst.len(), m * n, "gemm destination length");
    }
    split_rows([m, n], dst, splits, |rows, block, row0| {
        sgemm([rows, n, k], block, accumulate, a.rows_from(row0), b, path);
    });
}

#[allow(unsafe_code)]
fn portable([m, n, k]: [usize; 3], dst: &mut [f32], accumulate: bool, a: View, b: View) {
    // SAFETY: `sgemm` checked that dst holds m·n elements (row-major) and that every element
    // the strides of `a` (m x k) and `b` (k x n) reach is inside their slices; `dst` is a
    // unique borrow, so no operand overlaps it. gemm computes dst = alpha·dst + beta·a·b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Rows and columns of the micro-kernel's tile.
const MR: usize = 6;
const NR: usize = 64;
/// Depth of one packed block (the B micro-panel, KC·NR floats, stays in L2).
/// (The tile and block sizes are shared by `blocked.rs` and `pack.rs`.)
const KC: usize = 128;
/// Rows of A packed at once.
const MC: usize = 120;
/// Columns of B packed at once.
const NC: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn naive([m, n, k]: [usize; 3], a: &View, b: &View) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a.at(i, p) * b.at(p, j)).sum();
            }
        }
        out
    }

    #[test]
    fn both_paths_match_a_naive_product_for_edges_strides_and_accumulation() {
        let paths = if best_path() == Path::Avx512 {
            vec![Path::Avx512, Path::Portable]
        } else {
            eprintln!("no AVX-512 on this CPU: testing the portable path only");
            vec![Path::Portable]
        };
        // Sizes around the tile and block edges (MR 6, NR 64, KC 256, MC 120, NC 1024).
        for [m, n, k] in [
            [1, 1, 1],
            [7, 65, 3],
            [6, 64, 256],
            [13, 130, 257],
            [121, 1030, 40],
        ] {
            let av: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let bv: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            for (a, b) in [
                (View::row_major(&av, k), View::row_major(&bv, n)),
                (View::transposed(&av, m), View::transposed(&bv, k)),
            ] {
                let want = naive([m, n, k], &a, &b);
                for &path in &paths {
                    let mut got = vec![1.0f32; m * n];
                    sgemm([m, n, k], &mut got, false, a, b, path);
                    let mut acc = vec![1.0f32; m * n];
                    sgemm([m, n, k], &mut acc, true, a, b, path);
                    for i in 0..m * n {
                        let tol = 1e-4 * (1.0 + want[i].abs());
                        assert!(
                            (got[i] - want[i]).abs() <= tol,
                            "{path:?} {m}x{n}x{k} [{i}]"
                        );
                        assert!(
                            (acc[i] - want[i] - 1.0).abs() <= tol,
                            "{path:?} accumulate [{i}]"
                        );
                    }
                }
            }
        }
    }

    /// A packed beforehand gives the same bits as A packed as the loop goes, for both operand
    /// layouts, row splits (each reading the packed panels from its own first row), custom
    /// depth blocks and accumulation.
    #[test]
    fn a_packed_once_gives_the_same_bits_as_packing_per_call() {
        if best_path() != Path::Avx512 {
            eprintln!("no AVX-512 on this CPU: nothing is packed beforehand");
            return;
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for [m, n, k] in [[1, 3, 1], [13, 70, 300], [130, 65, 129], [7, 1100, 40]] {
            let av: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.1) / 8.3)
                .collect();
            let bv: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.2) / 4.7)
                .collect();
            let b = View::row_major(&bv, n);
            for a in [View::row_major(&av, k), View::transposed(&av, m)] {
                for splits in [1, 2, 3] {
                    for accumulate in [false, true] {
                        let mut want = vec![0.5f32; m * n];
                        sgemm_rows([m, n, k], &mut want, accumulate, a, b, splits);
                        let packed = PackedA::new(a, [m, k], None);
                        let mut got = vec![0.5f32; m * n];
                        sgemm_rows_packed([m, n, k], &mut got, accumulate, &packed, b, splits);
                        assert_eq!(bits(&got), bits(&want), "{m}x{n}x{k} splits {splits}");
                    }
                }
                // Depth blocks cut elsewhere than every KC change the sums' rounding, and the
                // packed A carries them into the loop.
                let ends: Vec<usize> = (1..=k.div_ceil(100)).map(|i| (i * 100).min(k)).collect();
                let mut want = vec![0.0f32; m * n];
                blocked(
                    [m, n, k],
                    &mut want,
                    false,
                    ASource::View(a),
                    b,
                    Some(&ends),
                );
                let packed = PackedA::new(a, [m, k], Some(&ends));
                let mut got = vec![0.0f32; m * n];
                sgemm_rows_packed([m, n, k], &mut got, false, &packed, b, 2);
                assert_eq!(bits(&got), bits(&want), "{m}x{n}x{k} custom depth blocks");
            }
        }
    }
}
