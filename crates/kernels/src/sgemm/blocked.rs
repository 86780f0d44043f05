//! The BLIS loop nest of the AVX-512 GEMM and its 6x64 micro-kernel.

use super::pack::{every_kc, pack_panels_a, pack_panels_b, PackedA};
#[cfg(target_arch = "x86_64")]
use super::{best_path, Path};
use super::{View, KC, MC, MR, NC, NR};
use crate::scratch::Scratch;

/// Where the blocked loop gets A's panels from.
#[derive(Clone, Copy)]
pub(super) enum ASource<'a> {
    /// Packed here, one MC block at a time.
    View(View<'a>),
    /// Packed beforehand; this GEMM's rows start at the given row of it.
    Packed(&'a PackedA, usize),
}

/// BLIS loop nest: for each NC-column block and KC-deep slice, pack B into NR-wide panels;
/// for each MC-row block pack A into MR-tall panels (unless packed beforehand); run the
/// micro-kernel on every tile. `ends` cuts the depth (default: every KC, or the packed A's).
#[cfg(target_arch = "x86_64")]
pub(super) fn blocked(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    a: ASource,
    b: View,
    ends: Option<&[usize]>,
) {
    let every: Vec<usize>;
    let ends = match (a, ends) {
        (ASource::Packed(packed, _), ends) => {
            assert!(
                ends.is_none_or(|e| e == packed.ends()),
                "packed A has other depth blocks"
            );
            packed.ends()
        }
        (ASource::View(_), Some(ends)) => ends,
        (ASource::View(_), None) => {
            every = every_kc(k);
            &every
        }
    };
    let mut pack_b = Scratch::new(KC * NC.min(n.next_multiple_of(NR)));
    let mut pack_a = Scratch::new(match a {
        ASource::View(_) => KC * MC.min(m.next_multiple_of(MR)),
        ASource::Packed(..) => 0,
    });
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
                let panels: &[f32] = match a {
                    ASource::View(a) => {
                        pack_panels_a(&a, i0, mc, p0, kc, &mut pack_a);
                        &pack_a
                    }
                    ASource::Packed(packed, row0) => packed.panels(block, row0 + i0),
                };
                for jr in 0..nc.div_ceil(NR) {
                    let panel_b = &pack_b[jr * kc * NR..][..kc * NR];
                    let cols = NR.min(nc - jr * NR);
                    for ir in 0..mc.div_ceil(MR) {
                        let panel_a = &panels[ir * kc * MR..][..kc * MR];
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
pub(super) fn blocked(
    _: [usize; 3],
    _: &mut [f32],
    _: bool,
    _: ASource,
    _: View,
    _: Option<&[usize]>,
) {
    unreachable!("the AVX-512 path is only chosen on x86_64")
}
