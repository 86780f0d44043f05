//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions on the CPU: the forward pass and the
//! input gradient (a 3x3 stride-1 convolution itself, with the weight flipped and transposed);
//! the weight gradient, the forward's adjoint, is `winograd_wgrad.rs`.
//!
//! A 2x2 output tile needs 16 multiplications per channel pair instead of 36: the input is cut
//! into overlapping 4x4 tiles and transformed (`V = Bᵀ d B`), the weight likewise
//! (`U = G g Gᵀ`), then for each of the 16 transformed positions ξ one GEMM sums over the input
//! channels, `M_ξ[Cout, T] = U_ξ[Cout, Cin] · V_ξ[Cin, T]`, and each tile's 4x4 `M` is
//! transformed back (`Y = Aᵀ M A`). The GEMMs do 16/36 of im2col's multiply-adds and read a
//! transformed input of 4 floats per output pixel instead of 9.
//!
//! Rounding differs from the direct convolution (the transforms add and halve before the
//! products; F(2x2, 3x3)'s constants 0, ±1, ±½ keep that error at a few ulps), so this is its
//! own kernel choice with its own golden hashes, tested against the GEMM kernel with a
//! tolerance.

use rayon::prelude::*;

pub use super::winograd_wgrad::grad_weight;

use super::cpu::{check_forward, Epilogue};
use super::{winograd_small, ConvGeom};
use crate::scratch::Scratch;
use crate::sgemm::{best_path, sgemm_rows, sgemm_rows_packed, PackedA, Path, View};
use crate::wide::avx512_too;

/// Transformed positions of a 4x4 tile.
pub(super) const XI: usize = 16;

/// Tiles a chunk aims for. The transforms are bound by memory (the transformed input and the
/// GEMMs' outputs are 16 floats per tile and channel), so small chunks that stay in cache win
/// until the GEMMs get too narrow: of 64-1024, 128 was fastest on ResNet-18's layers.
const CHUNK_TILES: usize = 128;

/// The epilogue of one chunk's output transform: the [`Epilogue`], with its residual already
/// offset to the chunk's first image.
pub(super) type ChunkEpilogue<'a> = Option<(&'a Epilogue<'a>, Option<&'a [f32]>)>;

/// Whether a convolution is one this kernel computes: 3x3, stride 1, padding at most 2.
pub fn handles(g: &ConvGeom) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.pad[0] <= 2 && g.pad[1] <= 2
}

/// Tiles a batch needs for Winograd to pay: the weight's transform and packing (16 matrices
/// of Cout x Cin) cost the same at any batch, and the GEMMs save 20 of every 36 multiply-adds
/// per tile. Measured on two Zen 4 cores (forward, ms, GEMM -> Winograd): 64 tiles 512 ch 2x2
/// b64 7.7 -> 10-12, 256 ch 8x8 b4 1.8-2.1 -> 2.5; 128 tiles about even (512 ch 4x4 b32
/// 14.2 -> 13.2-17.2, 512 ch 2x2 b128 15.7-16.3 -> 18-23); 256 tiles faster everywhere
/// (512 ch 4x4 b64 26.7 -> 18-20, 512 ch 2x2 b256 28-32 -> 20-21, 256 ch 8x8 b16 7.1-7.9 ->
/// 4.9-5.1, 64 ch 32x32 b4 1.9 -> 1.2-1.3). RESULTS.md, 2026-12-07.
const MIN_TILES: usize = 256;

/// Whether Winograd is faster than the GEMM kernels for `g`: a batch of at least
/// [`MIN_TILES`] tiles, on maps of at least 2x2 (a 1x1 map with padding reads one tap of
/// nine, which the GEMM kernels skip the rest of).
/// Only where the AVX-512 GEMM runs: that is where it was measured (elsewhere `winograd`
/// gives the `gemm` kernels, and their bits).
pub fn pays(g: &ConvGeom) -> bool {
    let [th, tw] = tiles(g);
    handles(g)
        && g.out_hw[0] >= 2
        && g.out_hw[1] >= 2
        && g.batch * th * tw >= MIN_TILES
        && best_path() == Path::Avx512
}

/// Whether the weight gradient pays as Winograd too: as [`pays`], with at least 32 input
/// channels — its GEMMs have Cin columns, and a 3-channel stem was 9x slower — on maps of at
/// least 8x8, or of 4x4 with 512 channels or more. Measured on two Zen 4 cores (ResNet-18
/// CIFAR stem, batch 64, per convolution): 64 ch 32x32 30 -> 24 ms, 128 ch 16x16 29 -> 21 ms,
/// 256 ch 8x8 31 -> 19 ms, 512 ch 4x4 36 -> 28-30 ms; but 128 ch 4x4 1.8 -> 2.2 ms and 256 ch
/// 4x4 7-9 -> 9-10 ms (its input transforms grow with the channels, its GEMMs with their
/// square). RESULTS.md, 2026-12-07.
pub fn pays_for_weight(g: &ConvGeom) -> bool {
    let small = g.out_hw[0] < 8 || g.out_hw[1] < 8;
    pays(g) && g.cin >= 32 && (!small || (g.out_hw[0] >= 4 && g.out_hw[1] >= 4 && g.cin >= 512))
}

/// Channel pairs [`transform_weight`] transforms together.
const LANES: usize = 16;

/// Output tiles of one image: (rows, columns).
pub(super) fn tiles(g: &ConvGeom) -> [usize; 2] {
    [g.out_hw[0].div_ceil(2), g.out_hw[1].div_ceil(2)]
}

/// `U_ξ[co, ci] = (G g Gᵀ)_ξ` for the weight `w` [Cout, Cin, 3, 3], as XI matrices
/// [Cout, Cin] one after the other; with `flip`, of every 3x3 kernel rotated by 180° (the
/// input gradient's weight, whose channel axes its GEMMs swap by reading U transposed).
/// Flipping here computes the same expression on the same values as transforming a flipped
/// copy: the same bits, without the copy.
///
/// In parallel over blocks of output channels: on the 4x4 maps of a 512-channel layer the
/// weight is four times the activation, and this loop was a fifth of the forward pass.
fn transform_weight(cout: usize, cin: usize, w: &[f32], flip: bool) -> Vec<f32> {
    let mut u = vec![0.0f32; XI * cout * cin];
    let rows = cout.div_ceil(4 * rayon::current_num_threads()).max(1);
    let block = rows * cin;
    // blocks[b][ξ]: output-channel block b of matrix U_ξ.
    let mut blocks: Vec<Vec<&mut [f32]>> = (0..cout.div_ceil(rows)).map(|_| Vec::new()).collect();
    for u_xi in u.chunks_mut((cout * cin).max(1)) {
        for (b, part) in u_xi.chunks_mut(block.max(1)).enumerate() {
            blocks[b].push(part);
        }
    }
    blocks
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut outs)| {
            let pairs = &w[b * block * 9..][..outs[0].len() * 9];
            // LANES channel pairs at a time, tap-major, so that every line below is one vector
            // operation and every store a run of LANES floats (the same operations per pair as
            // one at a time: the same bits).
            for (run, ks) in pairs.chunks(9 * LANES).enumerate() {
                let n = ks.len() / 9;
                let mut g = [[0.0f32; LANES]; 9];
                for (l, k) in ks.chunks_exact(9).enumerate() {
                    for (i, gi) in g.iter_mut().enumerate() {
                        gi[l] = if flip { k[8 - i] } else { k[i] };
                    }
                }
                let lanes = |f: &dyn Fn(usize) -> f32| -> [f32; LANES] { std::array::from_fn(f) };
                // G g: 4x3. G = [[1,0,0], [½,½,½], [½,-½,½], [0,0,1]].
                let mut t = [[[0.0f32; LANES]; 3]; 4];
                for j in 0..3 {
                    let (g0, g1, g2) = (&g[j], &g[3 + j], &g[6 + j]);
                    t[0][j] = *g0;
                    t[1][j] = lanes(&|l| 0.5 * (g0[l] + g1[l] + g2[l]));
                    t[2][j] = lanes(&|l| 0.5 * (g0[l] - g1[l] + g2[l]));
                    t[3][j] = *g2;
                }
                // (G g) Gᵀ: 4x4.
                for (i, r) in t.iter().enumerate() {
                    let row = [
                        r[0],
                        lanes(&|l| 0.5 * (r[0][l] + r[1][l] + r[2][l])),
                        lanes(&|l| 0.5 * (r[0][l] - r[1][l] + r[2][l])),
                        r[2],
                    ];
                    for (j, v) in row.iter().enumerate() {
                        outs[i * 4 + j][run * LANES..][..n].copy_from_slice(&v[..n]);
                    }
                }
            }
        });
    u
}

/// `V_ξ[c, t]` for the tiles of `imgs` images from `x` (each [Cin, H, W]): the chunk's
/// transformed input, XI matrices [Cin, T] one after the other (T = imgs · tiles per image).
/// Maps of up to [`winograd_small::MAX_TILES_PER_ROW`] tiles a row go through
/// [`winograd_small`], the rest a row of tiles at a time; the same bits either way.
pub(super) fn transform_input(g: &ConvGeom, x: &[f32], imgs: usize, v: &mut [f32]) {
    if tiles(g)[1] <= winograd_small::MAX_TILES_PER_ROW {
        winograd_small::transform_input(g, x, imgs, v);
    } else {
        transform_input_rows(g, x, imgs, v);
    }
}

avx512_too!(
    /// [`transform_input`] a row of tiles at a time.
    pub(super) fn transform_input_rows(g: &ConvGeom, x: &[f32], imgs: usize, v: &mut [f32])
        => transform_input_rows_body
);

#[inline(always)]
fn transform_input_rows_body(g: &ConvGeom, x: &[f32], imgs: usize, v: &mut [f32]) {
    let ([h, w], [ph, pw]) = (g.in_hw, g.pad);
    let [th, tw] = tiles(g);
    let per_img = th * tw;
    let t_all = imgs * per_img;
    // The plane with its padding, sized to whole tiles (2·t + 2 each way), its columns split
    // into even and odd ones: tile tx reads columns 2tx..2tx+4, i.e. even[tx], odd[tx],
    // even[tx + 1], odd[tx + 1], so every loop below runs at unit stride.
    let (hp, half) = (2 * th + 2, tw + 1);
    let mut even = vec![0.0f32; hp * half];
    let mut odd = vec![0.0f32; hp * half];
    // Bᵀ d for one row of tiles, per column parity: Bᵀ = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0],
    // [0,1,0,-1]].
    let mut bt = vec![0.0f32; 2 * 4 * half];
    for img in 0..imgs {
        for c in 0..g.cin {
            let plane = &x[(img * g.cin + c) * h * w..][..h * w];
            for (y, src) in plane.chunks_exact(w).enumerate() {
                let e = &mut even[(y + ph) * half..][..half];
                let o = &mut odd[(y + ph) * half..][..half];
                // Source column xx lands on padded column xx + pw: every other one, from
                // the first that lands on an even (odd) column, goes to `even` (`odd`).
                for (first, dst) in [(pw % 2, e), (1 - pw % 2, o)] {
                    let picked = src.iter().skip(first).step_by(2);
                    for (d, &val) in dst[(first + pw) / 2..].iter_mut().zip(picked) {
                        *d = val;
                    }
                }
            }
            for ty in 0..th {
                for (parity, src) in [&even, &odd].into_iter().enumerate() {
                    let d = |r: usize| &src[(2 * ty + r) * half..][..half];
                    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                    let out = &mut bt[parity * 4 * half..][..4 * half];
                    let (r0, rest) = out.split_at_mut(half);
                    let (r1, rest) = rest.split_at_mut(half);
                    let (r2, r3) = rest.split_at_mut(half);
                    for j in 0..half {
                        r0[j] = d0[j] - d2[j];
                        r1[j] = d1[j] + d2[j];
                        r2[j] = d2[j] - d1[j];
                        r3[j] = d1[j] - d3[j];
                    }
                }
                // (Bᵀ d) B over each tile's 4 columns.
                let t0 = img * per_img + ty * tw;
                for i in 0..4 {
                    let e = &bt[i * half..][..half];
                    let o = &bt[(4 + i) * half..][..half];
                    let at = |j: usize| (i * 4 + j) * g.cin * t_all + c * t_all + t0;
                    let (e0, e1, o0, o1) = (&e[..tw], &e[1..=tw], &o[..tw], &o[1..=tw]);
                    combine(&mut v[at(0)..][..tw], e0, e1, |p, q| p - q);
                    combine(&mut v[at(1)..][..tw], o0, e1, |p, q| p + q);
                    combine(&mut v[at(2)..][..tw], e1, o0, |p, q| p - q);
                    combine(&mut v[at(3)..][..tw], o0, o1, |p, q| p - q);
                }
            }
            // Each plane rewrites the same interior; the zero border is never written.
        }
    }
}

/// `dst[t] = f(p[t], q[t])`, inlined per `f` (a loop the compiler vectorises).
#[inline(always)]
fn combine(dst: &mut [f32], p: &[f32], q: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &a), &b) in dst.iter_mut().zip(p).zip(q) {
        *d = f(a, b);
    }
}

/// `Y = Aᵀ M A` for every tile, written into `imgs` output images `y` (each [Cout, Ho, Wo]),
/// cropped where Ho or Wo is odd: Aᵀ = [[1,1,1,0], [0,1,-1,-1]]. `m` holds XI matrices
/// [Cout, T].
/// With an epilogue (`residual` already offset to the chunk's first image), each output row
/// gets it as it is written, as the GEMM kernels' `scatter_images_then` applies it.
/// Through [`winograd_small`] on maps of few tiles a row, as [`transform_input`].
fn transform_output(
    g: &ConvGeom,
    m: &[f32],
    imgs: usize,
    y: &mut [f32],
    epilogue: ChunkEpilogue<'_>,
) {
    if tiles(g)[1] <= winograd_small::MAX_TILES_PER_ROW {
        winograd_small::transform_output(g, m, imgs, y, epilogue);
    } else {
        transform_output_rows(g, m, imgs, y, epilogue);
    }
}

avx512_too!(
    /// [`transform_output`] a row of tiles at a time.
    pub(super) fn transform_output_rows(
        g: &ConvGeom,
        m: &[f32],
        imgs: usize,
        y: &mut [f32],
        epilogue: ChunkEpilogue<'_>,
    )
        => transform_output_rows_body
);

#[inline(always)]
fn transform_output_rows_body(
    g: &ConvGeom,
    m: &[f32],
    imgs: usize,
    y: &mut [f32],
    epilogue: ChunkEpilogue<'_>,
) {
    let [oh, ow] = g.out_hw;
    let [th, tw] = tiles(g);
    let per_img = th * tw;
    let t_all = imgs * per_img;
    // s[r][j][tx]: row r of Aᵀ M, column j, for each tile of the row.
    let mut s = vec![0.0f32; 2 * 4 * tw];
    for img in 0..imgs {
        for co in 0..g.cout {
            let out = &mut y[(img * g.cout + co) * oh * ow..][..oh * ow];
            for ty in 0..th {
                let t0 = img * per_img + ty * tw;
                let at = |xi: usize| &m[xi * g.cout * t_all + co * t_all + t0..][..tw];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                    let (s0, s1) = s.split_at_mut(4 * tw);
                    let (s0, s1) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
                    for tx in 0..tw {
                        s0[tx] = m0[tx] + m1[tx] + m2[tx];
                        s1[tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                for r in 0..2 {
                    let oy = 2 * ty + r;
                    if oy >= oh {
                        break;
                    }
                    let row = &mut out[oy * ow..][..ow];
                    let sr = &s[r * 4 * tw..][..4 * tw];
                    let (c0, c1, c2, c3) = (
                        &sr[..tw],
                        &sr[tw..2 * tw],
                        &sr[2 * tw..3 * tw],
                        &sr[3 * tw..],
                    );
                    let cols = c0.iter().zip(c1).zip(c2).zip(c3);
                    for (pair, (((&a, &b), &c), &d)) in row.chunks_exact_mut(2).zip(cols) {
                        pair[0] = a + b + c;
                        pair[1] = b - c - d;
                    }
                    if ow % 2 == 1 {
                        let t = ow / 2;
                        row[ow - 1] = c0[t] + c1[t] + c2[t];
                    }
                    if let Some((e, residual)) = epilogue {
                        let at = (img * g.cout + co) * oh * ow + oy * ow;
                        let res = residual.map(|r| &r[at..][..ow]);
                        winograd_small::apply_epilogue(e, res, row, 0, co);
                    }
                }
            }
        }
    }
}

/// Images per chunk: about CHUNK_TILES tiles.
fn images_per_chunk(g: &ConvGeom) -> usize {
    let [th, tw] = tiles(g);
    CHUNK_TILES
        .div_ceil((th * tw).max(1))
        .clamp(1, g.batch.max(1))
}

/// How many parallel row blocks each chunk's GEMMs use: one when there are enough chunks to
/// keep every thread busy, else one per thread. Every chunk streams all 16 transformed
/// weight matrices through its GEMMs; on small maps (few tiles, a large weight) more and
/// smaller chunks would each stream all of them again.
fn gemm_splits(g: &ConvGeom) -> usize {
    let threads = rayon::current_num_threads();
    if g.batch.div_ceil(images_per_chunk(g)) >= 2 * threads {
        1
    } else {
        threads
    }
}

/// The forward convolution `x` [N, Cin, H, W] * `w` [Cout, Cin, 3, 3] → [N, Cout, Ho, Wo] of
/// a geometry [`handles`] accepts.
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_then(g, x, w, None)
}

/// [`forward`] with an [`Epilogue`] applied to every output value (evaluation with the
/// BatchNorm folded into the weight).
pub fn forward_then(g: &ConvGeom, x: &[f32], w: &[f32], epilogue: Option<&Epilogue>) -> Vec<f32> {
    assert!(
        handles(g),
        "Winograd F(2x2, 3x3) needs a 3x3 stride-1 convolution"
    );
    check_forward(g, x, w, epilogue);
    let u = transform_weight(g.cout, g.cin, w, false);
    run(g, x, &u, false, epilogue)
}

/// The input gradient of a geometry [`handles`] accepts: `dy` [N, Cout, Ho, Wo] and `w` →
/// [N, Cin, H, W], as the forward convolution of `dy` with the weight flipped and its channel
/// axes swapped, padded by 2 - pad.
pub fn grad_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(
        handles(g),
        "Winograd F(2x2, 3x3) needs a 3x3 stride-1 convolution"
    );
    assert_eq!(
        dy.len(),
        g.batch * g.out_len(),
        "conv grad input: gradient length"
    );
    assert_eq!(w.len(), g.cout * g.k(), "conv grad input: weight length");
    let adjoint = ConvGeom::new(
        [g.batch, g.cout, g.out_hw[0], g.out_hw[1]],
        [g.cin, g.cout, 3, 3],
        [1, 1],
        [2 - g.pad[0], 2 - g.pad[1]],
    )
    .expect("the adjoint of a valid stride-1 convolution is valid");
    assert_eq!(
        adjoint.out_hw, g.in_hw,
        "adjoint output is the input's size"
    );
    // U of the flipped kernels, [Cout, Cin] per ξ: the adjoint's [Cin, Cout] read transposed.
    let u = transform_weight(g.cout, g.cin, w, true);
    run(&adjoint, dy, &u, true, None)
}

/// The forward convolution of `g` from its transformed weight: `u` holds XI matrices
/// [Cout, Cin], or with `transposed` XI matrices [Cin, Cout] that the GEMMs read transposed.
fn run(
    g: &ConvGeom,
    x: &[f32],
    u: &[f32],
    transposed: bool,
    epilogue: Option<&Epilogue>,
) -> Vec<f32> {
    let (cin, cout) = (g.cin, g.cout);
    let u_view = |xi: usize| {
        let u_xi = &u[xi * cout * cin..][..cout * cin];
        if transposed {
            View::transposed(u_xi, cout)
        } else {
            View::row_major(u_xi, cin)
        }
    };
    let packed: Option<Vec<PackedA>> = (best_path() == Path::Avx512).then(|| {
        (0..XI)
            .map(|xi| PackedA::new(u_view(xi), [cout, cin], None))
            .collect()
    });
    let [th, tw] = tiles(g);
    let (per, splits) = (images_per_chunk(g), gemm_splits(g));
    let mut y = vec![0.0f32; g.batch * g.out_len()];
    y.par_chunks_mut((per * g.out_len()).max(1))
        .enumerate()
        .for_each(|(chunk, y_chunk)| {
            let imgs = y_chunk.len() / g.out_len();
            let t = imgs * th * tw;
            let x_chunk = &x[chunk * per * g.in_len()..][..imgs * g.in_len()];
            let mut v = Scratch::new(XI * cin * t);
            transform_input(g, x_chunk, imgs, &mut v);
            let mut m = Scratch::new(XI * cout * t);
            for xi in 0..XI {
                let vb = View::row_major(&v[xi * cin * t..][..cin * t], t);
                let mb = &mut m[xi * cout * t..][..cout * t];
                match &packed {
                    Some(p) => sgemm_rows_packed([cout, t, cin], mb, false, &p[xi], vb, splits),
                    None => sgemm_rows([cout, t, cin], mb, false, u_view(xi), vb, splits),
                }
            }
            let epilogue = epilogue.map(|e| {
                let residual = e.residual.map(|r| &r[chunk * per * g.out_len()..]);
                (e, residual)
            });
            transform_output(g, &m, imgs, y_chunk, epilogue);
        });
    y
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::conv::cpu;
    use crate::conv::cpu::tests::values;

    pub(in crate::conv) fn close(got: &[f32], want: &[f32], k: usize, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        // Sums of k products of values in [-1, 1]: a few ulps of the sum's magnitude.
        let tol = 1e-5 * (k as f32).sqrt() * 4.0;
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what} [{i}]: {a} vs {b}"
            );
        }
    }

    /// (batch, cin, cout, h, w, pad) of the tests of all three passes: even and odd sizes
    /// (cropped edge tiles), 1x1 and 2x2 maps, pads 0-2, batches of one and of several chunks
    /// and runs.
    pub(in crate::conv) const CASES: [(usize, usize, usize, usize, usize, usize); 10] = [
        (1, 3, 8, 32, 32, 1),
        (37, 5, 7, 9, 11, 1),
        (2, 16, 9, 4, 4, 1),
        (3, 7, 5, 1, 1, 1),
        (2, 4, 6, 2, 2, 1),
        (2, 6, 4, 7, 5, 0),
        (3, 5, 3, 6, 3, 2),
        (40, 12, 10, 8, 8, 1),
        (70, 12, 10, 8, 8, 1),
        // One chunk, its GEMMs split by rows across the threads.
        (3, 6, 70, 4, 4, 1),
    ];

    #[test]
    fn pays_needs_a_batch_of_enough_tiles() {
        let g = |batch, hw, c| {
            ConvGeom::new([batch, c, hw, hw], [c, c, 3, 3], [1, 1], [1, 1]).expect("fits")
        };
        // Only the AVX-512 GEMM was measured: elsewhere never.
        let avx = best_path() == Path::Avx512;
        assert_eq!(pays(&g(64, 4, 512)), avx, "256 tiles");
        assert!(!pays(&g(63, 4, 512)), "252 tiles");
        assert!(!pays(&g(1, 8, 256)), "16 tiles");
        assert_eq!(pays(&g(1, 32, 64)), avx, "256 tiles in one image");
        assert!(!pays(&g(1024, 1, 512)), "1x1 maps");
        assert_eq!(pays_for_weight(&g(64, 4, 512)), avx, "512 channels on 4x4");
        assert!(!pays_for_weight(&g(256, 4, 256)), "256 channels on 4x4");
        assert_eq!(pays_for_weight(&g(16, 8, 64)), avx, "8x8");
        assert!(!pays_for_weight(&g(16, 8, 16)), "16 input channels");
    }

    #[test]
    fn forward_and_input_gradient_match_the_gemm_kernel() {
        for (batch, cin, cout, h, w, pad) in CASES {
            let g = ConvGeom::new([batch, cin, h, w], [cout, cin, 3, 3], [1, 1], [pad, pad])
                .expect("fits");
            assert!(handles(&g));
            let x = values(batch * g.in_len(), 1);
            let wt = values(cout * g.k(), 2);
            let dy = values(batch * g.out_len(), 3);
            let name = g.key(batch);
            close(
                &forward(&g, &x, &wt),
                &cpu::forward(&g, &x, &wt),
                g.k(),
                &format!("{name} forward"),
            );
            let shift = values(cout, 4);
            let residual = values(batch * g.out_len(), 5);
            let e = Epilogue {
                shift: &shift,
                residual: Some(&residual),
                relu: true,
            };
            close(
                &forward_then(&g, &x, &wt, Some(&e)),
                &cpu::forward_then(&g, &x, &wt, true, Some(&e)),
                g.k(),
                &format!("{name} forward with epilogue"),
            );
            close(
                &grad_input(&g, &dy, &wt),
                &cpu::grad_input(&g, &dy, &wt),
                cout * 9,
                &format!("{name} input gradient"),
            );
        }
    }
}
