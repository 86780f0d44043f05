//! Single-threaded f32 GEMM for the convolution kernels: a BLIS-style blocked loop around an
//! AVX-512 6x64 micro-kernel, with the `gemm` crate as the fallback on CPUs without AVX-512.
//!
//! Why not only the `gemm` crate: its AVX-512 micro-kernel, as compiled here, spilled its
//! accumulators to the stack after every FMA (seen in `perf annotate`), which held one core
//! to ~31 GFLOP/s where PyTorch's GEMM reaches ~85 on the same core. Keeping the 24
//! accumulators of a 6x64 tile in registers was the trick. (Those measurements were taken with
//! the dev profile's debug assertions on in every crate, which also put pointer checks into
//! both loops; the profile now builds dependencies and this crate without them — Cargo.toml —
//! and the two have not been compared since.)
//!
//! (Over 400 lines: the packing, the blocked loop and the micro-kernel are one algorithm whose
//! tile sizes and index arithmetic must agree, so they are read together; tests are the last 60.)

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
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => blocked([m, n, k], dst, accumulate, a, b, None),
        _ => portable([m, n, k], dst, accumulate, a, b),
    }
}

/// The depth (k) of one block of the AVX-512 GEMM: it sums each block of KC products in its
/// registers and then adds the block to the output. Callers that drop all-zero depth rows and
/// must round as the full product did cut their depth where these blocks were cut
/// ([`sgemm_rows_blocked`]).
pub(crate) const DEPTH_BLOCK: usize = KC;

/// [`sgemm_rows`] on the AVX-512 path with the depth cut into the given blocks (`ends`:
/// ascending block ends, the last one `k`, each block at most [`DEPTH_BLOCK`] deep) instead of
/// every KC. Only for [`Path::Avx512`]: the portable GEMM chooses its own blocks.
pub(crate) fn sgemm_rows_blocked(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    a: View,
    b: View,
    splits: usize,
    ends: &[usize],
) {
    assert_eq!(
        best_path(),
        Path::Avx512,
        "depth blocks need the AVX-512 GEMM"
    );
    assert_eq!(dst.len(), m * n, "gemm destination length");
    assert_eq!(
        ends.last().copied().unwrap_or(0),
        k,
        "depth blocks end at k"
    );
    a.check(m, k);
    b.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    split_rows([m, n], dst, a, splits, |rows, block, a| {
        blocked([rows, n, k], block, false, a, b, Some(ends));
    });
}

/// Runs `gemm(rows, dst block, A rows)` on `splits` blocks of `dst`'s rows in parallel (each a
/// multiple of the micro-kernel's MR rows), or once on all of them when `splits` is 1 or the
/// matrix too short to split.
fn split_rows(
    [m, n]: [usize; 2],
    dst: &mut [f32],
    a: View,
    splits: usize,
    gemm: impl Fn(usize, &mut [f32], View) + Sync,
) {
    use rayon::prelude::*;
    if splits <= 1 || m < 2 * MR || n == 0 {
        return gemm(m, dst, a);
    }
    let rows = m.div_ceil(splits).next_multiple_of(MR);
    dst.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, block)| {
            let sub = View {
                data: &a.data[i * rows * a.rs..],
                rs: a.rs,
                cs: a.cs,
            };
            gemm(block.len() / n, block, sub);
        });
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
    split_rows([m, n], dst, a, splits, |rows, block, a| {
        sgemm([rows, n, k], block, accumulate, a, b, path);
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
const KC: usize = 128;
/// Rows of A packed at once.
const MC: usize = 120;
/// Columns of B packed at once.
const NC: usize = 1024;

/// BLIS loop nest: for each NC-column block and KC-deep slice, pack B into NR-wide panels;
/// for each MC-row block pack A into MR-tall panels; run the micro-kernel on every tile.
#[cfg(target_arch = "x86_64")]
fn blocked(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: View,
    b: View,
    ends: Option<&[usize]>,
) {
    let every_kc: Vec<usize>;
    let ends = match ends {
        Some(ends) => ends,
        None => {
            every_kc = (1..=k.div_ceil(KC)).map(|i| (i * KC).min(k)).collect();
            &every_kc
        }
    };
    let mut pack_b = crate::scratch::Scratch::new(KC * NC.min(n.next_multiple_of(NR)));
    let mut pack_a = crate::scratch::Scratch::new(KC * MC.min(m.next_multiple_of(MR)));
    let mut edge = [0.0f32; MR * NR];
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for (block, &end) in ends.iter().enumerate() {
            let p0 = if block == 0 { 0 } else { ends[block - 1] };
            let kc = end - p0;
            assert!(kc > 0 && kc <= KC, "depth block of {kc}");
            let add = accumulate || block > 0;
            pack_panels_b(&b, p0, kc, j0, nc, &mut pack_b);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                pack_panels_a(&a, i0, mc, p0, kc, &mut pack_a);
                for jr in 0..nc.div_ceil(NR) {
                    let panel_b = &pack_b[jr * kc * NR..][..kc * NR];
                    let cols = NR.min(nc - jr * NR);
                    for ir in 0..mc.div_ceil(MR) {
                        let panel_a = &pack_a[ir * kc * MR..][..kc * MR];
                        let rows = MR.min(mc - ir * MR);
                        let (row, col) = (i0 + ir * MR, j0 + jr * NR);
                        if rows == MR && cols == NR {
                            let tile = &mut dst[row * n + col..][..(MR - 1) * n + NR];
                            micro_kernel(panel_a, panel_b, tile, n, add);
                        } else {
                            micro_kernel(panel_a, panel_b, &mut edge, NR, false);
                            for r in 0..rows {
                                let out = &mut dst[(row + r) * n + col..][..cols];
                                let got = &edge[r * NR..][..cols];
                                if add {
                                    out.iter_mut().zip(got).for_each(|(o, g)| *o += g);
                                } else {
                                    out.copy_from_slice(got);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// B[p0.., j0..] as ceil(nc/NR) panels, each kc rows of NR contiguous floats (zero-padded).
fn pack_panels_b(b: &View, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
    for jr in 0..nc.div_ceil(NR) {
        let cols = NR.min(nc - jr * NR);
        let panel = &mut out[jr * kc * NR..][..kc * NR];
        for p in 0..kc {
            let dst = &mut panel[p * NR..][..NR];
            let c0 = j0 + jr * NR;
            if b.cs == 1 {
                let start = (p0 + p) * b.rs + c0;
                dst[..cols].copy_from_slice(&b.data[start..start + cols]);
            } else if b.rs != 1 {
                for (c, d) in dst[..cols].iter_mut().enumerate() {
                    *d = b.at(p0 + p, c0 + c);
                }
            }
            dst[cols..].fill(0.0);
        }
        if b.rs == 1 && b.cs != 1 {
            // A transposed operand: read each source row contiguously, write with stride NR.
            for c in 0..cols {
                let src = &b.data[(jr * NR + j0 + c) * b.cs + p0..][..kc];
                for (p, v) in src.iter().enumerate() {
                    panel[p * NR + c] = *v;
                }
            }
        }
    }
}

/// A[i0.., p0..] as ceil(mc/MR) panels, each kc columns of MR contiguous floats (zero-padded).
fn pack_panels_a(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    for ir in 0..mc.div_ceil(MR) {
        let rows = MR.min(mc - ir * MR);
        let panel = &mut out[ir * kc * MR..][..kc * MR];
        for r in 0..MR {
            if r >= rows {
                (0..kc).for_each(|p| panel[p * MR + r] = 0.0);
                continue;
            }
            let row = i0 + ir * MR + r;
            if a.cs == 1 {
                let src = &a.data[row * a.rs + p0..][..kc];
                src.iter()
                    .enumerate()
                    .for_each(|(p, v)| panel[p * MR + r] = *v);
            } else {
                (0..kc).for_each(|p| panel[p * MR + r] = a.at(row, p0 + p));
            }
        }
    }
}

/// One MR x NR tile: `c[r * ldc + j] (+)= Σ_p a[p * MR + r] · b[p * NR + j]`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn micro_kernel(a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, add: bool) {
    let kc = a.len() / MR;
    assert!(
        a.len() == kc * MR && b.len() == kc * NR,
        "micro-kernel panel sizes"
    );
    assert!(
        c.len() >= (MR - 1) * ldc + NR,
        "micro-kernel tile out of bounds"
    );
    assert!(
        best_path() == Path::Avx512,
        "AVX-512 kernel on a CPU without it"
    );
    // SAFETY: the CPU supports AVX-512F (asserted above; `best_path` detected it at run time),
    // and the asserts above prove every load (kc·MR from a, kc·NR from b) and every store
    // (MR rows of NR floats at stride ldc) stays inside the slices.
    unsafe { micro_kernel_avx512(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, add) }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel_avx512(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    // 24 named accumulators: with an array LLVM kept spilling them to the stack.
    macro_rules! tile {
        ($($r:literal => [$c0:ident, $c1:ident, $c2:ident, $c3:ident]),*) => {
            $(let (mut $c0, mut $c1, mut $c2, mut $c3) = (
                _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());)*
            // SAFETY (this function): the caller guarantees a has kc·MR and b kc·NR floats
            // and that c covers MR rows of NR floats at stride ldc.
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let (b0, b1, b2, b3) = unsafe {
                    (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)),
                     _mm512_loadu_ps(bp.add(32)), _mm512_loadu_ps(bp.add(48)))
                };
                $(
                    let av = _mm512_set1_ps(unsafe { *ap.add($r) });
                    $c0 = _mm512_fmadd_ps(av, b0, $c0);
                    $c1 = _mm512_fmadd_ps(av, b1, $c1);
                    $c2 = _mm512_fmadd_ps(av, b2, $c2);
                    $c3 = _mm512_fmadd_ps(av, b3, $c3);
                )*
                ap = unsafe { ap.add(MR) };
                bp = unsafe { bp.add(NR) };
            }
            $(
                let row = unsafe { c.add($r * ldc) };
                for (j, v) in [$c0, $c1, $c2, $c3].into_iter().enumerate() {
                    let ptr = unsafe { row.add(16 * j) };
                    let v = if add { _mm512_add_ps(unsafe { _mm512_loadu_ps(ptr) }, v) } else { v };
                    unsafe { _mm512_storeu_ps(ptr, v) };
                }
            )*
        };
    }
    tile!(
        0 => [c00, c01, c02, c03],
        1 => [c10, c11, c12, c13],
        2 => [c20, c21, c22, c23],
        3 => [c30, c31, c32, c33],
        4 => [c40, c41, c42, c43],
        5 => [c50, c51, c52, c53]
    );
}

#[cfg(not(target_arch = "x86_64"))]
fn blocked(_: [usize; 3], _: &mut [f32], _: bool, _: View, _: View, _: Option<&[usize]>) {
    unreachable!("the AVX-512 path is only chosen on x86_64")
}

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
}
