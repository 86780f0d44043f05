//! The weight gradient of a 3x3 stride-1 convolution as Winograd F(2x2, 3x3)'s adjoint.
//!
//! The forward pass computes each 2x2 output tile as `Y = Aᵀ [Σ_ci U[co, ci] ⊙ V[ci]] A` with
//! `U = G g Gᵀ` and `V = Bᵀ d B`. Its adjoint with respect to the weight is
//! `dg[co, ci] = Gᵀ (Σ_tiles dM[co] ⊙ V[ci]) G` with `dM = A dY Aᵀ`: the same input transform,
//! the output gradient's 2x2 tiles spread to 4x4, and for each of the 16 positions ξ one GEMM
//! that sums over the tiles, `dU_ξ[Cout, Cin] = dM_ξ[Cout, T] · V_ξ[Cin, T]ᵀ`. 16/36 of the
//! im2col GEMM's multiply-adds.
//!
//! Both transforms write rows of [channels, T] at unit stride, and the GEMM reads V transposed
//! (as the im2col weight gradient reads its output gradient). A first version that wrote dM as
//! [T, Cout], one float per cache line touched, spent the saved multiply-adds on memory traffic
//! and was a wash (RESULTS.md, 2026-12-07). The chunks' sums are added in a fixed order
//! ([`sum_runs`]), so the bits depend on the thread count only.

use super::cpu::{check_grad_weight, sum_runs};
use super::winograd::{handles, tiles, transform_input, XI};
use super::ConvGeom;
use crate::scratch::Scratch;
use crate::sgemm::{sgemm_rows, View};
use crate::wide::avx512_too;

/// Tiles a chunk aims for: as in the forward pass, the transforms are bound by memory, so a
/// chunk's transformed input and output gradient should stay in the core's cache.
const CHUNK_TILES: usize = 128;

avx512_too!(
    /// `dM_ξ[co, t] = (A dY_t Aᵀ)_ξ` for the 2x2 output-gradient tiles of `imgs` images from `dy`
    /// (each [Cout, Ho, Wo]; positions past an odd edge are zero), as XI matrices [Cout, T] one
    /// after the other — laid out as [`transform_input`]'s V, so every loop runs at unit stride.
    fn transform_grad(g: &ConvGeom, dy: &[f32], imgs: usize, dm: &mut [f32])
        => transform_grad_body
);

#[inline(always)]
fn transform_grad_body(g: &ConvGeom, dy: &[f32], imgs: usize, dm: &mut [f32]) {
    let [oh, ow] = g.out_hw;
    let [th, tw] = tiles(g);
    let per_img = th * tw;
    let t_all = imgs * per_img;
    // One row of tiles: the two output rows split by column parity (a, b: the first row's even
    // and odd columns; c, d: the second row's), zero past the edges.
    let mut parts = vec![0.0f32; 4 * tw];
    // A dY with A = [[1,0], [1,1], [1,-1], [0,-1]]: rows 1-3 as (p, q) column pairs (row 0 is
    // (a, b) itself).
    let mut rows = vec![0.0f32; 6 * tw];
    for img in 0..imgs {
        for co in 0..g.cout {
            let plane = &dy[(img * g.cout + co) * oh * ow..][..oh * ow];
            for ty in 0..th {
                parts.fill(0.0);
                let (ab, cd) = parts.split_at_mut(2 * tw);
                for (y, dst) in [(2 * ty, ab), (2 * ty + 1, cd)] {
                    if y < oh {
                        let src = &plane[y * ow..][..ow];
                        let (even, odd) = dst.split_at_mut(tw);
                        even.iter_mut()
                            .zip(src.iter().step_by(2))
                            .for_each(|(d, s)| *d = *s);
                        let odd_src = src.iter().skip(1).step_by(2);
                        odd.iter_mut().zip(odd_src).for_each(|(d, s)| *d = *s);
                    }
                }
                let (a, rest) = parts.split_at(tw);
                let (b, rest) = rest.split_at(tw);
                let (c, d) = rest.split_at(tw);
                {
                    let (p1, rest) = rows.split_at_mut(tw);
                    let (q1, rest) = rest.split_at_mut(tw);
                    let (p2, rest) = rest.split_at_mut(tw);
                    let (q2, rest) = rest.split_at_mut(tw);
                    let (p3, q3) = rest.split_at_mut(tw);
                    for j in 0..tw {
                        p1[j] = a[j] + c[j];
                        q1[j] = b[j] + d[j];
                        p2[j] = a[j] - c[j];
                        q2[j] = b[j] - d[j];
                        p3[j] = -c[j];
                        q3[j] = -d[j];
                    }
                }
                // Each row (p, q) times Aᵀ: [p, p + q, p - q, -q].
                let t0 = img * per_img + ty * tw;
                for i in 0..4 {
                    let (p, q) = if i == 0 {
                        (a, b)
                    } else {
                        let r = &rows[(i - 1) * 2 * tw..][..2 * tw];
                        r.split_at(tw)
                    };
                    let row = |j: usize| ((i * 4 + j) * g.cout + co) * t_all + t0;
                    dm[row(0)..][..tw].copy_from_slice(p);
                    let sums = dm[row(1)..][..tw].iter_mut().zip(p.iter().zip(q));
                    sums.for_each(|(o, (p, q))| *o = p + q);
                    let diffs = dm[row(2)..][..tw].iter_mut().zip(p.iter().zip(q));
                    diffs.for_each(|(o, (p, q))| *o = p - q);
                    dm[row(3)..][..tw]
                        .iter_mut()
                        .zip(q)
                        .for_each(|(o, q)| *o = -q);
                }
            }
        }
    }
}

/// `dg = Gᵀ dU G` for every channel pair: `du` holds XI matrices [Cout, Cin]; the result is
/// [Cout, Cin, 3, 3]. Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]].
fn transform_back(cout: usize, cin: usize, du: &[f32]) -> Vec<f32> {
    let pairs = cout * cin;
    let mut dw = vec![0.0f32; pairs * 9];
    for (pair, out) in dw.chunks_exact_mut(9).enumerate() {
        let u = |xi: usize| du[xi * pairs + pair];
        // Gᵀ dU, a column at a time: column j of the 3x4 product.
        let col: [[f32; 3]; 4] = std::array::from_fn(|j| {
            let (u0, u1, u2, u3) = (u(j), u(4 + j), u(8 + j), u(12 + j));
            [u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3]
        });
        // (Gᵀ dU) G: each row [p0, p1, p2, p3] -> [p0 + ½(p1 + p2), ½(p1 - p2), ½(p1 + p2) + p3].
        for (i, out) in out.chunks_exact_mut(3).enumerate() {
            let p = [col[0][i], col[1][i], col[2][i], col[3][i]];
            out[0] = p[0] + 0.5 * (p[1] + p[2]);
            out[1] = 0.5 * (p[1] - p[2]);
            out[2] = 0.5 * (p[1] + p[2]) + p[3];
        }
    }
    dw
}

/// The weight gradient of a geometry [`handles`] accepts: `x` [N, Cin, H, W] and `dy`
/// [N, Cout, Ho, Wo] → [Cout, Cin, 3, 3].
pub fn grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        handles(g),
        "Winograd F(2x2, 3x3) needs a 3x3 stride-1 convolution"
    );
    check_grad_weight(g, x, dy);
    let (cin, cout) = (g.cin, g.cout);
    let [th, tw] = tiles(g);
    let per = CHUNK_TILES
        .div_ceil((th * tw).max(1))
        .clamp(1, g.batch.max(1));
    let chunks: Vec<usize> = (0..g.batch).step_by(per).collect();
    let du = sum_runs(&chunks, XI * cout * cin, |first, du| {
        let imgs = per.min(g.batch - first);
        let t = imgs * th * tw;
        let mut v = Scratch::new(XI * cin * t);
        transform_input(
            g,
            &x[first * g.in_len()..][..imgs * g.in_len()],
            imgs,
            &mut v,
        );
        let mut dm = Scratch::new(XI * cout * t);
        transform_grad(
            g,
            &dy[first * g.out_len()..][..imgs * g.out_len()],
            imgs,
            &mut dm,
        );
        for xi in 0..XI {
            // dU_ξ[Cout, Cin] += dM_ξ[Cout, T] · V_ξ[Cin, T]ᵀ
            sgemm_rows(
                [cout, cin, t],
                &mut du[xi * cout * cin..][..cout * cin],
                true,
                View::row_major(&dm[xi * cout * t..][..cout * t], t),
                View::transposed(&v[xi * cin * t..][..cin * t], t),
                1,
            );
        }
    });
    transform_back(cout, cin, &du)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::cpu;
    use crate::conv::cpu::tests::values;
    use crate::conv::winograd::tests::{close, CASES};

    #[test]
    fn weight_gradient_matches_the_gemm_kernel() {
        for (batch, cin, cout, h, w, pad) in CASES {
            let g = ConvGeom::new([batch, cin, h, w], [cout, cin, 3, 3], [1, 1], [pad, pad])
                .expect("fits");
            let x = values(batch * g.in_len(), 1);
            let dy = values(batch * g.out_len(), 3);
            // Each entry sums batch · Ho · Wo products.
            close(
                &grad_weight(&g, &x, &dy),
                &cpu::grad_weight(&g, &x, &dy),
                batch * g.out_hw[0] * g.out_hw[1],
                &format!("{} weight gradient", g.key(batch)),
            );
        }
    }
}
