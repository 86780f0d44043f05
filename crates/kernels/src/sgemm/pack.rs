//! Packing the GEMM operands into the micro-kernel's panels, and [`PackedA`]: an A operand
//! packed once for several GEMMs (a convolution's weight, shared by its chunks of images).
//!
//! Packing only copies: a panel holds exactly the values the unpacked loop would have packed,
//! so a GEMM gives the same bits whether its A was packed beforehand or as it went.

use rayon::prelude::*;

use super::{View, KC, MR, NR};
use crate::scratch::Scratch;

/// The ends of depth blocks of KC (the last one shorter) over a depth of `k`.
pub(super) fn every_kc(k: usize) -> Vec<usize> {
    (1..=k.div_ceil(KC)).map(|i| (i * KC).min(k)).collect()
}

/// A [m, k] packed for the AVX-512 GEMM: for each depth block, ceil(m/MR) panels of MR rows
/// (zero-padded), each `kc` steps of MR contiguous floats. A GEMM that reuses its A operand
/// (the same weight times every chunk of images) packs it once instead of once per call.
pub(crate) struct PackedA {
    m: usize,
    k: usize,
    ends: Vec<usize>,
    /// Where each depth block's panels start in `data` (one more entry: the end).
    starts: Vec<usize>,
    data: Scratch,
}

impl PackedA {
    /// Packs `a` (m x k) with the depth cut at `ends` (ascending, the last one `k`, each block
    /// at most KC deep), or every KC when `None`. The depth blocks are packed in parallel.
    pub fn new(a: View, [m, k]: [usize; 2], ends: Option<&[usize]>) -> Self {
        a.check(m, k);
        let ends = ends.map_or_else(|| every_kc(k), <[usize]>::to_vec);
        assert_eq!(
            ends.last().copied().unwrap_or(0),
            k,
            "depth blocks end at k"
        );
        let panel_rows = m.div_ceil(MR) * MR;
        let mut starts = vec![0];
        for (b, &end) in ends.iter().enumerate() {
            let kc = end - if b == 0 { 0 } else { ends[b - 1] };
            assert!(kc > 0 && kc <= KC, "depth block of {kc}");
            starts.push(starts[b] + panel_rows * kc);
        }
        let mut data = Scratch::new(starts[ends.len()]);
        let mut blocks = Vec::with_capacity(ends.len());
        let mut rest = &mut data[..];
        for (b, &end) in ends.iter().enumerate() {
            let (block, tail) = rest.split_at_mut(starts[b + 1] - starts[b]);
            let p0 = if b == 0 { 0 } else { ends[b - 1] };
            blocks.push((block, p0, end - p0));
            rest = tail;
        }
        blocks
            .into_par_iter()
            .for_each(|(out, p0, kc)| pack_panels_a(&a, 0, m, p0, kc, out));
        Self {
            m,
            k,
            ends,
            starts,
            data,
        }
    }

    /// Rows and depth of the packed matrix.
    pub fn dims(&self) -> [usize; 2] {
        [self.m, self.k]
    }

    /// The depth block ends it was packed with.
    pub fn ends(&self) -> &[usize] {
        &self.ends
    }

    /// Depth block `block`'s panels from row `row0` (a multiple of MR) to the last.
    pub(super) fn panels(&self, block: usize, row0: usize) -> &[f32] {
        assert_eq!(row0 % MR, 0, "packed A is read from a panel's first row");
        let kc = self.ends[block] - if block == 0 { 0 } else { self.ends[block - 1] };
        &self.data[self.starts[block] + (row0 / MR) * kc * MR..self.starts[block + 1]]
    }
}

/// B[p0.., j0..] as ceil(nc/NR) panels, each kc rows of NR contiguous floats (zero-padded).
pub(super) fn pack_panels_b(b: &View, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
    for jr in 0..nc.div_ceil(NR) {
        let cols = NR.min(nc - jr * NR);
        let panel = &mut out[jr * kc * NR..][..kc * NR];
        for p in 0..kc {
            let dst = &mut panel[p * NR..][..NR];
            let c0 = j0 + jr * NR;
            if b.cs == 1 {
                let start = (p0 + p) * b.rs + c0;
                if cols == NR {
                    // A fixed-size copy: inlined moves instead of a memcpy call per row.
                    copy_fixed::<NR>(dst, &b.data[start..]);
                    continue;
                }
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
pub(super) fn pack_panels_a(a: &View, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    for ir in 0..mc.div_ceil(MR) {
        let rows = MR.min(mc - ir * MR);
        let row0 = i0 + ir * MR;
        let panel = &mut out[ir * kc * MR..][..kc * MR];
        if a.rs == 1 {
            // A transposed operand: the MR rows of one depth step are contiguous.
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let src = &a.data[(p0 + p) * a.cs + row0..];
                if rows == MR {
                    copy_fixed::<MR>(dst, src);
                } else {
                    dst[..rows].copy_from_slice(&src[..rows]);
                    dst[rows..].fill(0.0);
                }
            }
        } else if a.cs == 1 && rows == MR {
            // Row-major: read the MR rows side by side so that each depth step's MR values
            // are written together (a write per value at stride MR was 7% of a CIFAR step).
            let src: [&[f32]; MR] =
                std::array::from_fn(|r| &a.data[(row0 + r) * a.rs + p0..][..kc]);
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (d, s) in dst.iter_mut().zip(&src) {
                    *d = s[p];
                }
            }
        } else {
            for r in 0..MR {
                if r >= rows {
                    (0..kc).for_each(|p| panel[p * MR + r] = 0.0);
                } else {
                    (0..kc).for_each(|p| panel[p * MR + r] = a.at(row0 + r, p0 + p));
                }
            }
        }
    }
}

/// `dst[..N] = src[..N]` with N known to the compiler.
fn copy_fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
    let d: &mut [f32; N] = (&mut dst[..N]).try_into().expect("N elements");
    let s: &[f32; N] = src[..N].try_into().expect("N elements");
    *d = *s;
}
