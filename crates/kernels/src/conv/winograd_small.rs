//! Winograd F(2x2, 3x3)'s input and output transforms for maps of at most 8 tiles a row (up to
//! 16x16 outputs), vectorised over all the chunk's tiles of one channel instead of over the
//! tiles of one row.
//!
//! The row-vectorised transforms of `winograd.rs` run their loops over the one to eight tiles
//! of a row here, and write a few floats of each of 16·C rows per image: partial cache lines,
//! evicted and fetched again (a quarter of a 2x2 layer's forward). Here, for a block of
//! channels, the 16 inputs of every tile are gathered through an index table (padding reads a
//! zero), image by image; then each channel is transformed with whole-row operations over the
//! chunk's tiles and written as whole rows of V (the output: the reverse, scattered into the
//! planes). The operations are the same, in the same order, as the row-vectorised versions:
//! the same bits (tested).

use super::cpu::Epilogue;
use super::im2col::{im2col, Layout};
use super::taps::Taps;
use super::winograd::{tiles, ChunkEpilogue};
use super::ConvGeom;
use crate::wide::avx512_too;

/// Tiles per row up to which these transforms are used. Forward, ms, rows -> these (two
/// Zen 4 cores, alternating): 256 ch 8x8 b64 16.4-17.2 -> 14.2-14.8, 64 ch 8x8 b256 7.4-7.5
/// -> 5.0-5.9, 128 ch 16x16 b64 16.7-16.9 -> 15.3-15.8; on 32x32 maps within noise.
pub(super) const MAX_TILES_PER_ROW: usize = 8;

/// Channels gathered (input) or scattered (output) together, image by image.
const BLOCK: usize = 8;

/// Where each of a tile's `side`² inputs (4x4, offset by `-pad`) or outputs (2x2) lies in a
/// `[h, w]` plane, for every tile of one image (tiles 2 apart): `idx[k · tiles + j]`, or
/// `h · w` (one past the plane) outside it.
fn positions(side: usize, [th, tw]: [usize; 2], [h, w]: [usize; 2], pad: [usize; 2]) -> Vec<u32> {
    let per_img = th * tw;
    let outside = u32::try_from(h * w).expect("a plane of fewer than 2^32 floats");
    (0..side * side * per_img)
        .map(|i| {
            let (k, j) = (i / per_img, i % per_img);
            let y = (2 * (j / tw) + k / side).checked_sub(pad[0]);
            let x = (2 * (j % tw) + k % side).checked_sub(pad[1]);
            match (y, x) {
                // y · w + x < h · w = outside, which fits u32.
                (Some(y), Some(x)) if y < h && x < w => (y * w + x) as u32,
                _ => outside,
            }
        })
        .collect()
}

/// One plane's tile inputs: row k of `d` (rows `stride` apart) gets `plane[idx[k·per + j]]`
/// for its `per` tiles, zero where the index is past the plane. `buf` (the plane's length
/// plus one) holds the plane and a zero, so the loop reads without a branch or a bounds check
/// (the index is clamped).
#[inline(always)]
fn gather_plane(
    plane: &[f32],
    buf: &mut [f32],
    idx: &[u32],
    per: usize,
    d: &mut [f32],
    stride: usize,
) {
    let last = plane.len();
    buf[..last].copy_from_slice(plane);
    buf[last] = 0.0;
    let buf = &buf[..=last];
    for (k, ix) in idx.chunks_exact(per).enumerate() {
        let dst = &mut d[k * stride..][..per];
        for (o, &i) in dst.iter_mut().zip(ix) {
            *o = buf[(i as usize).min(last)];
        }
    }
}

/// How the input transform gathers its tiles' inputs (d[c · 16 + k][offset + j], rows `ld`
/// apart): as the column matrix of a 4x4 convolution with stride 2 where that
/// convolution's output is exactly the tile grid (even-sized maps, every ResNet layer) — the
/// im2col code, with its AVX-512 register permutes for planes of up to 16 floats — else through
/// an index table ([`gather_plane`]). The same values either way.
struct Gather {
    im2col: Option<(ConvGeom, Taps, Layout)>,
    idx: Vec<u32>,
    per: usize,
    /// The index table's plane buffer (a plane and a zero), allocated once per call.
    buf: Vec<f32>,
}

impl Gather {
    /// The gather of `g`'s 4x4 input tiles, 2 apart.
    fn new(g: &ConvGeom, tiles: [usize; 2]) -> Self {
        let im2col = ConvGeom::new([1, 1, g.in_hw[0], g.in_hw[1]], [1, 1, 4, 4], [2, 2], g.pad)
            .filter(|gg| gg.out_hw == tiles)
            .map(|gg| (gg, Taps::every(&gg), Layout::of(&gg)));
        let (idx, buf) = match im2col {
            Some(_) => (Vec::new(), Vec::new()),
            None => (
                positions(4, tiles, g.in_hw, g.pad),
                vec![0.0f32; g.in_hw[0] * g.in_hw[1] + 1],
            ),
        };
        Self {
            im2col,
            idx,
            per: tiles[0] * tiles[1],
            buf,
        }
    }

    /// The tiles of one image's `channels` consecutive planes into `d`.
    #[inline(always)]
    fn planes(&mut self, planes: &[f32], channels: usize, d: &mut [f32], ld: usize, offset: usize) {
        match &self.im2col {
            Some((gg, taps, layout)) => {
                let gg = ConvGeom {
                    cin: channels,
                    ..*gg
                };
                im2col(&gg, taps, layout, planes, d, ld, offset);
            }
            None => {
                let hw = planes.len() / channels.max(1);
                let rows = self.idx.len() / self.per.max(1);
                for (c, plane) in planes.chunks_exact(hw.max(1)).enumerate() {
                    let d = &mut d[c * rows * ld + offset..];
                    gather_plane(plane, &mut self.buf, &self.idx, self.per, d, ld);
                }
            }
        }
    }
}

/// The epilogue on finished outputs `out` of channel `co` (a plane, or a row of one), the
/// residual's matching values at `plane · out.len()`: the shift, the residual, the ReLU.
#[inline(always)]
pub(super) fn apply_epilogue(
    e: &Epilogue,
    residual: Option<&[f32]>,
    out: &mut [f32],
    plane: usize,
    co: usize,
) {
    let shift = e.shift[co];
    match residual {
        Some(res) => {
            let res = &res[plane * out.len()..][..out.len()];
            for (d, r) in out.iter_mut().zip(res) {
                *d = *d + shift + *r;
            }
        }
        None => out.iter_mut().for_each(|d| *d += shift),
    }
    if e.relu {
        out.iter_mut().for_each(|d| *d = d.max(0.0));
    }
}

/// `dst[t] = f(p[t], q[t])` over whole rows (a loop the compiler vectorises).
#[inline(always)]
fn rows(dst: &mut [f32], p: &[f32], q: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &a), &b) in dst.iter_mut().zip(p).zip(q) {
        *d = f(a, b);
    }
}

avx512_too!(
    /// `V_ξ[c, t] = (Bᵀ d_t B)_ξ` for the tiles of `imgs` images from `x` (each [Cin, H, W]),
    /// as `winograd::transform_input` lays it out.
    pub(super) fn transform_input(g: &ConvGeom, x: &[f32], imgs: usize, v: &mut [f32])
        => transform_input_body
);

#[inline(always)]
fn transform_input_body(g: &ConvGeom, x: &[f32], imgs: usize, v: &mut [f32]) {
    let [h, w] = g.in_hw;
    let [th, tw] = tiles(g);
    let (per_img, cin) = (th * tw, g.cin);
    let t_all = imgs * per_img;
    let mut gather = Gather::new(g, [th, tw]);
    // d[cc][k]: input k of every tile, for a block of channels; b[i · 4 + col]: row i of Bᵀ d.
    let mut d = vec![0.0f32; BLOCK * 16 * t_all];
    let mut b = vec![0.0f32; 16 * t_all];
    for c0 in (0..cin).step_by(BLOCK) {
        let cb = BLOCK.min(cin - c0);
        // Image-major over the block: each image's planes of the block are contiguous (one
        // plane at a time would read one cache line per Cin·H·W floats).
        for img in 0..imgs {
            let planes = &x[(img * cin + c0) * h * w..][..cb * h * w];
            gather.planes(planes, cb, &mut d, t_all, img * per_img);
        }
        for cc in 0..cb {
            let c = c0 + cc;
            let row = |k: usize| &d[(cc * 16 + k) * t_all..][..t_all];
            // Bᵀ d, Bᵀ = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]].
            for col in 0..4 {
                let (d0, d1, d2, d3) = (row(col), row(4 + col), row(8 + col), row(12 + col));
                let at = |i: usize| (i * 4 + col) * t_all;
                rows(&mut b[at(0)..][..t_all], d0, d2, |p, q| p - q);
                rows(&mut b[at(1)..][..t_all], d1, d2, |p, q| p + q);
                rows(&mut b[at(2)..][..t_all], d2, d1, |p, q| p - q);
                rows(&mut b[at(3)..][..t_all], d1, d3, |p, q| p - q);
            }
            // (Bᵀ d) B over each row, written as whole rows of V.
            for i in 0..4 {
                let r = |col: usize| &b[(i * 4 + col) * t_all..][..t_all];
                let at = |j: usize| ((i * 4 + j) * cin + c) * t_all;
                rows(&mut v[at(0)..][..t_all], r(0), r(2), |p, q| p - q);
                rows(&mut v[at(1)..][..t_all], r(1), r(2), |p, q| p + q);
                rows(&mut v[at(2)..][..t_all], r(2), r(1), |p, q| p - q);
                rows(&mut v[at(3)..][..t_all], r(1), r(3), |p, q| p - q);
            }
        }
    }
}

avx512_too!(
    /// `Y = Aᵀ M A` for every tile, written into `imgs` output images `y` (each
    /// [Cout, Ho, Wo]), as `winograd::transform_output` does it, epilogue included.
    pub(super) fn transform_output(
        g: &ConvGeom,
        m: &[f32],
        imgs: usize,
        y: &mut [f32],
        epilogue: ChunkEpilogue<'_>,
    ) => transform_output_body
);

#[inline(always)]
fn transform_output_body(
    g: &ConvGeom,
    m: &[f32],
    imgs: usize,
    y: &mut [f32],
    epilogue: ChunkEpilogue<'_>,
) {
    let [oh, ow] = g.out_hw;
    let [th, tw] = tiles(g);
    let (per_img, cout) = (th * tw, g.cout);
    let t_all = imgs * per_img;
    let idx = positions(2, [th, tw], g.out_hw, [0, 0]);
    // s[r · 4 + j]: row r of Aᵀ M; out[cc][r · 2 + c]: output (r, c) of every tile, for a
    // block of channels.
    let mut s = vec![0.0f32; 8 * t_all];
    let mut out = vec![0.0f32; BLOCK * 4 * t_all];
    let mut p = vec![0.0f32; t_all];
    for co0 in (0..cout).step_by(BLOCK) {
        let cb = BLOCK.min(cout - co0);
        for cc in 0..cb {
            let row = |xi: usize| &m[(xi * cout + co0 + cc) * t_all..][..t_all];
            // Aᵀ M, Aᵀ = [[1,1,1,0], [0,1,-1,-1]], then each row times A.
            for j in 0..4 {
                rows(&mut p, row(j), row(4 + j), |a, b| a + b);
                rows(&mut s[j * t_all..][..t_all], &p, row(8 + j), |a, b| a + b);
                rows(&mut p, row(4 + j), row(8 + j), |a, b| a - b);
                rows(
                    &mut s[(4 + j) * t_all..][..t_all],
                    &p,
                    row(12 + j),
                    |a, b| a - b,
                );
            }
            let out = &mut out[cc * 4 * t_all..][..4 * t_all];
            for r in 0..2 {
                let sr = |j: usize| &s[(r * 4 + j) * t_all..][..t_all];
                rows(&mut p, sr(0), sr(1), |a, b| a + b);
                rows(&mut out[2 * r * t_all..][..t_all], &p, sr(2), |a, b| a + b);
                rows(&mut p, sr(1), sr(2), |a, b| a - b);
                rows(
                    &mut out[(2 * r + 1) * t_all..][..t_all],
                    &p,
                    sr(3),
                    |a, b| a - b,
                );
            }
        }
        // Image-major, as the input's gather: the block's planes of an image are contiguous.
        for img in 0..imgs {
            for cc in 0..cb {
                let co = co0 + cc;
                let plane = &mut y[(img * cout + co) * oh * ow..][..oh * ow];
                for q in 0..4 {
                    let vals = &out[(cc * 4 + q) * t_all + img * per_img..][..per_img];
                    for (&i, &val) in idx[q * per_img..][..per_img].iter().zip(vals) {
                        if let Some(o) = plane.get_mut(i as usize) {
                            *o = val;
                        }
                    }
                }
                if let Some((e, residual)) = epilogue {
                    apply_epilogue(e, residual, plane, img * cout + co, co);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::cpu::tests::values;
    use crate::conv::winograd::{self, XI};

    /// Bit for bit against the row-vectorised transforms, on every map these take (and wider
    /// ones, which they also compute correctly), odd sizes and pads 0-2.
    #[test]
    fn small_transforms_give_the_row_vectorised_bits() {
        for (batch, c, h, w, pad) in [
            (3, 5, 4, 4, 1),
            (2, 3, 2, 2, 1),
            (2, 4, 1, 1, 1),
            (3, 2, 3, 5, 0),
            (2, 3, 3, 2, 2),
            (1, 2, 9, 7, 1),
        ] {
            let g = ConvGeom::new([batch, c, h, w], [c + 1, c, 3, 3], [1, 1], [pad, pad])
                .expect("fits");
            let [th, tw] = tiles(&g);
            let t = batch * th * tw;
            let x = values(batch * g.in_len(), 1);
            let (mut want, mut got) = (vec![0.0; XI * c * t], vec![1.0; XI * c * t]);
            winograd::transform_input_rows(&g, &x, batch, &mut want);
            transform_input(&g, &x, batch, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} input", g.key(batch));

            let m = values(XI * g.cout * t, 2);
            let shift = values(g.cout, 3);
            let residual = values(batch * g.out_len(), 4);
            for e in [
                None,
                Some(Epilogue {
                    shift: &shift,
                    residual: Some(&residual),
                    relu: true,
                }),
                Some(Epilogue {
                    shift: &shift,
                    residual: None,
                    relu: false,
                }),
            ] {
                let e = e.as_ref().map(|e| (e, e.residual));
                let n = batch * g.out_len();
                let (mut want, mut got) = (vec![0.0; n], vec![1.0; n]);
                winograd::transform_output_rows(&g, &m, batch, &mut want, e);
                transform_output(&g, &m, batch, &mut got, e);
                assert_eq!(bits(&got), bits(&want), "{} output", g.key(batch));
            }
        }
    }
}
