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
use super::ConvGeom;
use crate::scratch::Scratch;
use crate::sgemm::{best_path, sgemm_rows, sgemm_rows_packed, PackedA, Path, View};

/// Transformed positions of a 4x4 tile.
pub(super) const XI: usize = 16;

/// Tiles a chunk aims for. The transforms are bound by memory (the transformed input and the
/// GEMMs' outputs are 16 floats per tile and channel), so small chunks that stay in cache win
/// until the GEMMs get too narrow: of 64-1024, 128 was fastest on ResNet-18's layers.
const CHUNK_TILES: usize = 128;

/// Whether a convolution is one this kernel computes: 3x3, stride 1, padding at most 2.
pub fn handles(g: &ConvGeom) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.pad[0] <= 2 && g.pad[1] <= 2
}

/// Whether Winograd is faster than the GEMM kernels for `g`: measured on two Zen 4 cores at
/// ResNet-18's sizes (forward, batch 64 and 256), 1.4-1.8x on 32x32, 16x16 and 8x8 maps,
/// slower on 4x4 and 2x2, where a chunk's tiles are too few for the GEMMs (RESULTS.md,
/// 2026-12-07).
/// Only where the AVX-512 GEMM runs: that is where it was measured (elsewhere `winograd`
/// gives the `gemm` kernels, and their bits).
pub fn pays(g: &ConvGeom) -> bool {
    handles(g) && g.out_hw[0] >= 8 && g.out_hw[1] >= 8 && best_path() == Path::Avx512
}

/// Whether the weight gradient pays as Winograd too: as [`pays`], with at least 32 input
/// channels — its GEMMs have Cin columns, and a 3-channel stem was 9x slower. Measured on two
/// Zen 4 cores (ResNet-18 CIFAR stem, batch 64, per convolution): 64 ch 32x32 30 -> 24 ms,
/// 128 ch 16x16 29 -> 21 ms, 256 ch 8x8 32 -> 23 ms (RESULTS.md, 2026-12-07).
pub fn pays_for_weight(g: &ConvGeom) -> bool {
    pays(g) && g.cin >= 32
}

/// Output tiles of one image: (rows, columns).
pub(super) fn tiles(g: &ConvGeom) -> [usize; 2] {
    [g.out_hw[0].div_ceil(2), g.out_hw[1].div_ceil(2)]
}

/// `U_ξ[co, ci] = (G g Gᵀ)_ξ` for the weight `w` [Cout, Cin, 3, 3], as XI matrices
/// [Cout, Cin] one after the other.
fn transform_weight(cout: usize, cin: usize, w: &[f32]) -> Vec<f32> {
    let mut u = vec![0.0f32; XI * cout * cin];
    for (pair, g) in w.chunks_exact(9).enumerate() {
        // G g: 4x3. G = [[1,0,0], [½,½,½], [½,-½,½], [0,0,1]].
        let mut t = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        // (G g) Gᵀ: 4x4.
        for (i, r) in t.iter().enumerate() {
            let row = [
                r[0],
                0.5 * (r[0] + r[1] + r[2]),
                0.5 * (r[0] - r[1] + r[2]),
                r[2],
            ];
            for (j, v) in row.into_iter().enumerate() {
                u[(i * 4 + j) * cout * cin + pair] = v;
            }
        }
    }
    u
}

/// `V_ξ[c, t]` for the tiles of `imgs` images from `x` (each [Cin, H, W]): the chunk's
/// transformed input, XI matrices [Cin, T] one after the other (T = imgs · tiles per image).
pub(super) fn transform_input(g: &ConvGeom, x: &[f32], imgs: usize, v: &mut [f32]) {
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
fn transform_output(
    g: &ConvGeom,
    m: &[f32],
    imgs: usize,
    y: &mut [f32],
    epilogue: Option<(&Epilogue, Option<&[f32]>)>,
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
                        let shift = e.shift[co];
                        match residual {
                            Some(res) => {
                                let res = &res[(img * g.cout + co) * oh * ow + oy * ow..][..ow];
                                for (d, r) in row.iter_mut().zip(res) {
                                    *d = *d + shift + *r;
                                }
                            }
                            None => row.iter_mut().for_each(|d| *d += shift),
                        }
                        if e.relu {
                            row.iter_mut().for_each(|d| *d = d.max(0.0));
                        }
                    }
                }
            }
        }
    }
}

/// Images per chunk: about CHUNK_TILES tiles, but at least two chunks per thread when the
/// batch allows (the chunks are the parallel work).
fn images_per_chunk(g: &ConvGeom) -> usize {
    let [th, tw] = tiles(g);
    let spread = g.batch / (2 * rayon::current_num_threads());
    CHUNK_TILES
        .div_ceil((th * tw).max(1))
        .min(spread.max(1))
        .clamp(1, g.batch.max(1))
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
    let (cin, cout) = (g.cin, g.cout);
    let u = transform_weight(cout, cin, w);
    let packed: Option<Vec<PackedA>> = (best_path() == Path::Avx512).then(|| {
        (0..XI)
            .map(|xi| {
                PackedA::new(
                    View::row_major(&u[xi * cout * cin..][..cout * cin], cin),
                    [cout, cin],
                    None,
                )
            })
            .collect()
    });
    let [th, tw] = tiles(g);
    let per = images_per_chunk(g);
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
                    Some(p) => sgemm_rows_packed([cout, t, cin], mb, false, &p[xi], vb, 1),
                    None => sgemm_rows(
                        [cout, t, cin],
                        mb,
                        false,
                        View::row_major(&u[xi * cout * cin..][..cout * cin], cin),
                        vb,
                        1,
                    ),
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

/// The input gradient of a geometry [`handles`] accepts: `dy` [N, Cout, Ho, Wo] and `w` →
/// [N, Cin, H, W], as the forward convolution of `dy` with the weight flipped and its channel
/// axes swapped, padded by 2 - pad.
pub fn grad_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(
        handles(g),
        "Winograd F(2x2, 3x3) needs a 3x3 stride-1 convolution"
    );
    let mut wt = vec![0.0f32; w.len()];
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for t in 0..9 {
                wt[(ci * g.cout + co) * 9 + 8 - t] = w[(co * g.cin + ci) * 9 + t];
            }
        }
    }
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
    forward(&adjoint, dy, &wt)
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
    pub(in crate::conv) const CASES: [(usize, usize, usize, usize, usize, usize); 9] = [
        (1, 3, 8, 32, 32, 1),
        (37, 5, 7, 9, 11, 1),
        (2, 16, 9, 4, 4, 1),
        (3, 7, 5, 1, 1, 1),
        (2, 4, 6, 2, 2, 1),
        (2, 6, 4, 7, 5, 0),
        (3, 5, 3, 6, 3, 2),
        (40, 12, 10, 8, 8, 1),
        (70, 12, 10, 8, 8, 1),
    ];

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
