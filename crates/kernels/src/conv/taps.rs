//! Which kernel taps of a convolution ever read inside the image.
//!
//! On small feature maps most taps of a 3x3 convolution read only padding: on a ResNet's 1x1
//! last stage (ImageNet stem, 32x32 inputs) 8 of 9 taps do, so 8/9 of the column matrix is
//! zeros and the GEMMs of all three passes multiply them. A tap is *active* when at least one
//! output pixel reads an input pixel through it; the kernels build the column matrix from the
//! active taps only. Rows of the column matrix are `(channel, tap)` in that order, compact
//! over the active taps.
//!
//! Exactness: the inactive rows are zeros, so they add nothing but `+0` to any sum; the weight
//! and input gradients drop whole rows of their GEMM output (rows are computed independently),
//! and the forward keeps the GEMM's depth blocks where they were ([`Taps::depth_blocks`]), so
//! every pass gives the same bits with and without skipping.

use super::ConvGeom;

/// The active taps of one convolution, as tap indices `ki·kw + kj` in ascending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Taps {
    active: Vec<usize>,
    all: usize,
}

impl Taps {
    /// Every tap, active or not (the column matrix of plain im2col).
    pub fn every(g: &ConvGeom) -> Self {
        let all = g.kernel[0] * g.kernel[1];
        Self {
            active: (0..all).collect(),
            all,
        }
    }

    /// The taps some output pixel reads inside the image through.
    pub fn active(g: &ConvGeom) -> Self {
        let ([h, w], [kh, kw], [oh, ow]) = (g.in_hw, g.kernel, g.out_hw);
        let reads = |k: usize, stride: usize, pad: usize, size: usize, out: usize| {
            (0..out).any(|o| source_row(o, k, stride, pad, size).is_some())
        };
        let rows: Vec<bool> = (0..kh)
            .map(|ki| reads(ki, g.stride[0], g.pad[0], h, oh))
            .collect();
        let cols: Vec<bool> = (0..kw)
            .map(|kj| reads(kj, g.stride[1], g.pad[1], w, ow))
            .collect();
        let active = (0..kh * kw)
            .filter(|t| rows[t / kw] && cols[t % kw])
            .collect();
        Self {
            active,
            all: kh * kw,
        }
    }

    /// The active tap indices.
    pub fn list(&self) -> &[usize] {
        &self.active
    }

    /// Whether every tap is active (the column matrix is the plain im2col one).
    pub fn is_every(&self) -> bool {
        self.active.len() == self.all
    }

    /// Rows of the compact column matrix: Cin · active taps.
    pub fn k(&self, g: &ConvGeom) -> usize {
        g.cin * self.active.len()
    }

    /// The original (all-taps) row of compact row `r`.
    fn original_row(&self, r: usize) -> usize {
        let ta = self.active.len();
        (r / ta) * self.all + self.active[r % ta]
    }

    /// The weight [Cout, K] restricted to the active taps: [Cout, Cin · active].
    pub fn compact_weight(&self, g: &ConvGeom, w: &[f32]) -> Vec<f32> {
        let (k, kc) = (g.k(), self.k(g));
        let mut out = Vec::with_capacity(g.cout * kc);
        for row in w.chunks_exact(k.max(1)).take(g.cout) {
            out.extend((0..kc).map(|r| row[self.original_row(r)]));
        }
        out
    }

    /// A weight gradient [Cout, Cin · active] spread to [Cout, K], zero for the inactive taps
    /// (exactly what the full GEMM gives for their all-zero column rows).
    pub fn expand_weight(&self, g: &ConvGeom, compact: &[f32]) -> Vec<f32> {
        let (k, kc) = (g.k(), self.k(g));
        let mut out = vec![0.0f32; g.cout * k];
        if kc == 0 {
            return out;
        }
        for (dst, src) in out.chunks_exact_mut(k).zip(compact.chunks_exact(kc)) {
            for (r, v) in src.iter().enumerate() {
                dst[self.original_row(r)] = *v;
            }
        }
        out
    }

    /// Where the forward GEMM's depth blocks end, in compact rows: the full-K GEMM sums each
    /// block of `block` original rows on its own and then adds it to the output, so the compact
    /// GEMM must cut its depth where those blocks are cut, or it would round differently.
    /// Blocks with no active row vanish (they add `+0`).
    pub fn depth_blocks(&self, g: &ConvGeom, block: usize) -> Vec<usize> {
        let kc = self.k(g);
        let mut ends = Vec::new();
        for r in 1..=kc {
            let ends_here =
                r == kc || self.original_row(r) / block != self.original_row(r - 1) / block;
            if ends_here {
                ends.push(r);
            }
        }
        ends
    }
}

/// The input row read by output row `o` at kernel row `k`, if it lies inside the image.
pub(crate) fn source_row(
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(hw: usize, kernel: usize, stride: usize, pad: usize) -> ConvGeom {
        ConvGeom::new(
            [2, 3, hw, hw],
            [4, 3, kernel, kernel],
            [stride; 2],
            [pad; 2],
        )
        .expect("fits")
    }

    #[test]
    fn a_3x3_convolution_on_a_1x1_map_reads_only_its_centre_tap() {
        assert_eq!(Taps::active(&geom(1, 3, 1, 1)).list(), &[4]);
        // 2x2 -> 1x1 with stride 2: rows and columns 1 and 2 of the kernel.
        assert_eq!(Taps::active(&geom(2, 3, 2, 1)).list(), &[4, 5, 7, 8]);
        // 2x2 stride 1: every tap reaches the image from some output pixel.
        assert!(Taps::active(&geom(2, 3, 1, 1)).is_every());
        assert!(Taps::active(&geom(32, 7, 2, 3)).is_every());
        // Every tap reads padding: no active tap at all.
        let g = ConvGeom::new([1, 2, 2, 2], [3, 2, 1, 1], [5, 5], [3, 3]).expect("fits");
        assert!(Taps::active(&g).list().is_empty());
    }

    #[test]
    fn compact_weights_round_trip_and_zero_the_inactive_taps() {
        let g = geom(2, 3, 2, 1);
        let taps = Taps::active(&g);
        let w: Vec<f32> = (0..g.cout * g.k()).map(|i| i as f32 + 1.0).collect();
        let compact = taps.compact_weight(&g, &w);
        assert_eq!(compact.len(), g.cout * g.cin * 4);
        // Output channel 1, input channel 2, taps 4 5 7 8.
        let at = |co: usize, c: usize, t: usize| w[co * g.k() + c * 9 + t];
        assert_eq!(
            &compact[(g.cin + 2) * 4..][..4],
            &[at(1, 2, 4), at(1, 2, 5), at(1, 2, 7), at(1, 2, 8)]
        );
        let back = taps.expand_weight(&g, &compact);
        for (i, (b, w)) in back.iter().zip(&w).enumerate() {
            let tap = i % 9;
            let want = if [4, 5, 7, 8].contains(&tap) { *w } else { 0.0 };
            assert_eq!(*b, want, "element {i}");
        }
        // Every tap: the identity.
        let every = Taps::every(&g);
        assert_eq!(every.compact_weight(&g, &w), w);
        assert_eq!(every.expand_weight(&g, &w), w);
    }

    #[test]
    fn depth_blocks_follow_the_full_gemm_blocks() {
        // 64 channels, centre tap only: original rows c·9 + 4; blocks of 128 original rows hold
        // channels 0..=13 (row 121), 14..=27 (row 125 < 256), ...
        let g = ConvGeom::new([1, 64, 1, 1], [8, 64, 3, 3], [1, 1], [1, 1]).expect("fits");
        let taps = Taps::active(&g);
        let ends = taps.depth_blocks(&g, 128);
        let mut want = Vec::new();
        for c in 1..=64 {
            if c == 64 || (c * 9 + 4) / 128 != ((c - 1) * 9 + 4) / 128 {
                want.push(c);
            }
        }
        assert_eq!(ends, want);
        assert_eq!(ends[0], 14);
        // Every tap active: exactly the full GEMM's blocks.
        let g = geom(8, 3, 1, 1);
        assert_eq!(Taps::every(&g).depth_blocks(&g, 10), vec![10, 20, 27]);
        // No active tap: no block.
        let g = ConvGeom::new([1, 2, 2, 2], [3, 2, 1, 1], [5, 5], [3, 3]).expect("fits");
        assert!(Taps::active(&g).depth_blocks(&g, 128).is_empty());
    }
}
