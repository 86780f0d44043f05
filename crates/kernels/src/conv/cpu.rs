//! f32 convolution on plain NCHW slices as im2col + one large GEMM per chunk of images,
//! for the forward pass and both gradients.
//!
//! Why this exists: Burn 0.21's flex backend computes the weight gradient as a convolution of
//! the input with the output gradient used as a kernel (batch and channel axes swapped). For a
//! 32x32 CIFAR layer that is a 32x32 kernel with a 3x3 output, i.e. GEMMs with 9 rows that
//! re-stream the whole output gradient once per input channel. Here every pass is one GEMM
//! whose output dimension is large:
//!
//! ```text
//! forward      Y[Cout, G·P]  = W[Cout, K]   · col[K, G·P]
//! grad input   dcol[K, G·P]  = Wᵀ[K, Cout]  · dY[Cout, G·P]     then col2im into dX
//! grad weight  dW[Cout, K]  += dY[Cout, G·P] · colᵀ[G·P, K]
//! ```
//!
//! with K = Cin·kh·kw, P = Hout·Wout and G images per chunk (about 512 columns). Chunks run in
//! parallel on the rayon pool (the one Burn's flex backend uses); when a layer has too few
//! chunks to occupy every thread, each chunk's GEMM is split by rows instead.
//!
//! On the AVX-512 GEMM the column matrix holds only the taps that read inside the image
//! ([`Taps`]; 1 of 9 on a 1x1 map), with the same bits as the full one. The portable GEMM
//! (CPUs without AVX-512) picks its own depth blocks, so there every tap is kept.
//!
//! (About 400 lines with its unit tests; the code is ~340.)

use rayon::prelude::*;

use super::im2col::{col2im, im2col, Layout};
use super::taps::Taps;
use super::ConvGeom;
use crate::scratch::Scratch;
use crate::sgemm::{best_path, sgemm_rows, sgemm_rows_packed, PackedA, Path, View, DEPTH_BLOCK};

/// Output columns (G·P) a chunk aims for: enough for the GEMM micro-kernels to run full
/// tiles, small enough that the column buffer stays in cache.
const CHUNK_COLUMNS: usize = 512;

/// Images per chunk: enough for about CHUNK_COLUMNS output columns.
fn images_per_chunk(g: &ConvGeom) -> usize {
    CHUNK_COLUMNS
        .div_ceil(g.p().max(1))
        .clamp(1, g.batch.max(1))
}

/// How many parallel row blocks each chunk's GEMM uses: one when there are enough chunks
/// to keep every thread busy, else one per thread (small-spatial layers give few chunks).
fn gemm_splits(g: &ConvGeom) -> usize {
    let threads = rayon::current_num_threads();
    let chunks = g.batch.div_ceil(images_per_chunk(g));
    if chunks >= 2 * threads {
        1
    } else {
        threads
    }
}

/// The taps the column matrix holds: the active ones where the GEMM can keep the full
/// product's rounding (AVX-512), else every tap.
fn taps_for(g: &ConvGeom, skip: bool) -> Taps {
    if skip && best_path() == Path::Avx512 {
        Taps::active(g)
    } else {
        Taps::every(g)
    }
}

/// Forward convolution: `x` [N, Cin, H, W], `w` [Cout, Cin, kh, kw] → [N, Cout, Ho, Wo].
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_with(g, x, w, true)
}

/// [`forward`], with `skip` false keeping every tap (the tests compare both).
pub fn forward_with(g: &ConvGeom, x: &[f32], w: &[f32], skip: bool) -> Vec<f32> {
    forward_then(g, x, w, skip, None)
}

/// What the forward applies to each output value as it writes it: a per-channel shift, then
/// a residual added, then a ReLU. With a BatchNorm folded into the weights (evaluation) this
/// is the BatchNorm's shift and the block's `relu(bn(conv(x)) + identity)`, in the one write
/// of the output instead of two more passes over it.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Added per output channel, `[Cout]`.
    pub shift: &'a [f32],
    /// Added element-wise after the shift, the output's shape.
    pub residual: Option<&'a [f32]>,
    /// `max(·, 0)` last.
    pub relu: bool,
}

/// [`forward_with`] with an [`Epilogue`] applied to every output value.
pub fn forward_then(
    g: &ConvGeom,
    x: &[f32],
    w: &[f32],
    skip: bool,
    epilogue: Option<&Epilogue>,
) -> Vec<f32> {
    check_forward(g, x, w, epilogue);
    let taps = taps_for(g, skip);
    let layout = Layout::of(g);
    let compact;
    let (w, blocks) = if taps.is_every() {
        (w, None)
    } else {
        compact = taps.compact_weight(g, w);
        (&compact[..], Some(taps.depth_blocks(g, DEPTH_BLOCK)))
    };
    let (k, p, per) = (taps.k(g), g.p(), images_per_chunk(g));
    // The weight is every chunk's A operand: packed once here, not once per chunk.
    let packed = (best_path() == Path::Avx512)
        .then(|| PackedA::new(View::row_major(w, k), [g.cout, k], blocks.as_deref()));
    let mut y = vec![0.0f32; g.batch * g.out_len()];
    y.par_chunks_mut((per * g.out_len()).max(1))
        .enumerate()
        .for_each(|(chunk, y_chunk)| {
            let first = chunk * per;
            let imgs = y_chunk.len() / g.out_len();
            let cols = imgs * p;
            let mut col = Scratch::new(k * cols);
            for i in 0..imgs {
                let img = &x[(first + i) * g.in_len()..][..g.in_len()];
                im2col(g, &taps, &layout, img, &mut col, cols, i * p);
            }
            let mut out = Scratch::new(g.cout * cols);
            // out[Cout, cols] = W[Cout, K] · col[K, cols]
            let (wv, cv) = (View::row_major(w, k), View::row_major(&col, cols));
            let dims = [g.cout, cols, k];
            match &packed {
                Some(wp) => sgemm_rows_packed(dims, &mut out, false, wp, cv, gemm_splits(g)),
                None => sgemm_rows(dims, &mut out, false, wv, cv, gemm_splits(g)),
            }
            match epilogue {
                None => scatter_images(g, &out, y_chunk, cols),
                Some(e) => scatter_images_then(g, &out, y_chunk, cols, first, e),
            }
        });
    y
}

/// Panics unless the forward's operands (and epilogue) have `g`'s sizes.
pub(crate) fn check_forward(g: &ConvGeom, x: &[f32], w: &[f32], epilogue: Option<&Epilogue>) {
    if let Some(e) = epilogue {
        assert_eq!(e.shift.len(), g.cout, "conv epilogue: shift length");
        if let Some(r) = e.residual {
            assert_eq!(
                r.len(),
                g.batch * g.out_len(),
                "conv epilogue: residual length"
            );
        }
    }
    assert_eq!(x.len(), g.batch * g.in_len(), "conv forward: input length");
    assert_eq!(w.len(), g.cout * g.k(), "conv forward: weight length");
}

/// Gradient with respect to the input: `dy` [N, Cout, Ho, Wo], `w` → [N, Cin, H, W].
pub fn grad_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    grad_input_with(g, dy, w, true)
}

/// [`grad_input`], with `skip` false keeping every tap. The rows of dcol are independent
/// GEMM rows, and an inactive tap's row is only ever added to padding: dropping it changes
/// no bit.
pub fn grad_input_with(g: &ConvGeom, dy: &[f32], w: &[f32], skip: bool) -> Vec<f32> {
    assert_eq!(
        dy.len(),
        g.batch * g.out_len(),
        "conv grad input: gradient length"
    );
    assert_eq!(w.len(), g.cout * g.k(), "conv grad input: weight length");
    let taps = taps_for(g, skip);
    let layout = Layout::of(g);
    let compact;
    let w = if taps.is_every() {
        w
    } else {
        compact = taps.compact_weight(g, w);
        &compact[..]
    };
    let (k, p, per) = (taps.k(g), g.p(), images_per_chunk(g));
    let wt = View::transposed(w, k);
    let packed = (best_path() == Path::Avx512).then(|| PackedA::new(wt, [k, g.cout], None));
    let mut dx = vec![0.0f32; g.batch * g.in_len()];
    dx.par_chunks_mut((per * g.in_len()).max(1))
        .enumerate()
        .for_each(|(chunk, dx_chunk)| {
            let first = chunk * per;
            let imgs = dx_chunk.len() / g.in_len();
            let cols = imgs * p;
            let dy_packed = gather_images(g, dy, first, imgs);
            let mut dcol = Scratch::new(k * cols);
            // dcol[K, cols] = Wᵀ[K, Cout] · dY[Cout, cols]
            let (dims, dyv, splits) = (
                [k, cols, g.cout],
                View::row_major(&dy_packed, cols),
                gemm_splits(g),
            );
            match &packed {
                Some(wp) => sgemm_rows_packed(dims, &mut dcol, false, wp, dyv, splits),
                None => sgemm_rows(dims, &mut dcol, false, wt, dyv, splits),
            }
            for i in 0..imgs {
                let img = &mut dx_chunk[i * g.in_len()..][..g.in_len()];
                col2im(g, &taps, &layout, &dcol, cols, i * p, img);
            }
        });
    dx
}

/// Gradient with respect to the weight: `x` [N, Cin, H, W], `dy` → [Cout, Cin, kh, kw].
///
/// Computed transposed, dWᵀ[K, Cout] = col[K, cols] · dYᵀ[cols, Cout]: the operand that has
/// to be read across its rows while packing is then the small dY, not the K-row column matrix.
pub fn grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    grad_weight_with(g, x, dy, true)
}

/// [`grad_weight`], with `skip` false keeping every tap. Each row of dWᵀ is its own GEMM row
/// over the same depth (the batch's pixels), and an inactive tap's row is all `+0`: the
/// compact product spread back ([`Taps::expand_weight`]) has the same bits.
pub fn grad_weight_with(g: &ConvGeom, x: &[f32], dy: &[f32], skip: bool) -> Vec<f32> {
    check_grad_weight(g, x, dy);
    let taps = taps_for(g, skip);
    let layout = Layout::of(g);
    let (k, p, per) = (taps.k(g), g.p(), images_per_chunk(g));
    let chunks: Vec<usize> = (0..g.batch).step_by(per).collect();
    let dwt = sum_runs(&chunks, k * g.cout, |first, dwt| {
        let imgs = per.min(g.batch - first);
        let cols = imgs * p;
        let mut col = Scratch::new(k * cols);
        for i in 0..imgs {
            let img = &x[(first + i) * g.in_len()..][..g.in_len()];
            im2col(g, &taps, &layout, img, &mut col, cols, i * p);
        }
        let dy_packed = gather_images(g, dy, first, imgs);
        sgemm_rows(
            [k, g.cout, cols],
            dwt,
            true,
            View::row_major(&col, cols),
            View::transposed(&dy_packed, cols),
            gemm_splits(g),
        );
    });
    let dw = transpose(&dwt, k, g.cout);
    if taps.is_every() {
        dw
    } else {
        taps.expand_weight(g, &dw)
    }
}

/// Panics unless `x` and `dy` hold a batch of `g`'s inputs and output gradients.
pub(super) fn check_grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) {
    assert_eq!(
        x.len(),
        g.batch * g.in_len(),
        "conv grad weight: input length"
    );
    assert_eq!(
        dy.len(),
        g.batch * g.out_len(),
        "conv grad weight: gradient length"
    );
}

/// A weight gradient's sum over chunks of images (`chunks` holds each chunk's first image):
/// contiguous runs of chunks, one per thread, each adding its chunks into its own accumulator of
/// `len` zeros, then the runs' accumulators summed in run order — so the bits depend on the
/// thread count only, never on which thread finished first.
pub(super) fn sum_runs(
    chunks: &[usize],
    len: usize,
    add: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let runs = chunks.len().min(rayon::current_num_threads()).max(1);
    let per_run = chunks.len().div_ceil(runs).max(1);
    let parts: Vec<Vec<f32>> = chunks
        .par_chunks(per_run)
        .map(|run| {
            let mut acc = vec![0.0f32; len];
            for &first in run {
                add(first, &mut acc);
            }
            acc
        })
        .collect();
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0.0f32; len]);
    for part in parts {
        sum.iter_mut().zip(&part).for_each(|(s, p)| *s += p);
    }
    sum
}

/// The transpose of a row-major `rows x cols` matrix, in 32x32 tiles so that both the reads
/// and the writes stay within a few cache lines (a naive column walk of a 4608 x 512 weight
/// gradient costs more than the GEMM that produced it).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut dst = vec![0.0f32; rows * cols];
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    dst
}

/// Copies images `first..first + imgs` of an NCHW output-shaped tensor into [Cout, imgs·P].
fn gather_images(g: &ConvGeom, t: &[f32], first: usize, imgs: usize) -> Scratch {
    let (p, cols) = (g.p(), imgs * g.p());
    let mut packed = Scratch::new(g.cout * cols);
    for i in 0..imgs {
        let img = &t[(first + i) * g.out_len()..][..g.out_len()];
        for c in 0..g.cout {
            packed[c * cols + i * p..][..p].copy_from_slice(&img[c * p..][..p]);
        }
    }
    packed
}

/// The inverse of `gather_images`: [Cout, imgs·P] into consecutive NCHW images.
fn scatter_images(g: &ConvGeom, packed: &[f32], out: &mut [f32], cols: usize) {
    let p = g.p();
    for (i, img) in out.chunks_mut(g.out_len()).enumerate() {
        for c in 0..g.cout {
            img[c * p..][..p].copy_from_slice(&packed[c * cols + i * p..][..p]);
        }
    }
}

/// [`scatter_images`] applying `e` on the way; `first` is the chunk's first image (for the
/// residual's offset).
fn scatter_images_then(
    g: &ConvGeom,
    packed: &[f32],
    out: &mut [f32],
    cols: usize,
    first: usize,
    e: &Epilogue,
) {
    let p = g.p();
    for (i, img) in out.chunks_mut(g.out_len()).enumerate() {
        let residual = e
            .residual
            .map(|r| &r[(first + i) * g.out_len()..][..g.out_len()]);
        for c in 0..g.cout {
            let dst = &mut img[c * p..][..p];
            let src = &packed[c * cols + i * p..][..p];
            let shift = e.shift[c];
            match residual {
                Some(r) => {
                    let r = &r[c * p..][..p];
                    for ((d, s), r) in dst.iter_mut().zip(src).zip(r) {
                        *d = *s + shift + *r;
                    }
                }
                None => dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s + shift),
            }
            if e.relu {
                dst.iter_mut().for_each(|d| *d = d.max(0.0));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1] (shared with the Winograd tests).
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2654435761) >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Skipping the taps that read only padding changes no bit of any pass, also when the
    /// depth (Cin · taps) spans several GEMM depth blocks and the batch several chunks.
    #[test]
    fn skipping_padding_taps_gives_the_same_bits_in_every_pass() {
        if best_path() != Path::Avx512 {
            eprintln!("no AVX-512 on this CPU: every tap is kept, nothing to compare");
            return;
        }
        // (batch, cin, cout, input, kernel, stride, pad): 1x1 maps (centre tap only), 2x2 -> 1x1
        // with stride 2 (4 of 9 taps), a strip whose rows only partly reach the image, a 5x5
        // kernel, a batch of more than one chunk, and one where no tap reaches the image.
        let cases = [
            (3, 200, 13, [1, 1], 3, 1, 1),
            (5, 70, 9, [2, 2], 3, 2, 1),
            (2, 30, 7, [1, 9], 3, 1, 1),
            (2, 20, 5, [2, 3], 5, 1, 2),
            (600, 40, 6, [1, 1], 3, 1, 1),
            (2, 4, 3, [2, 2], 1, 5, 3),
        ];
        for (batch, cin, cout, hw, kernel, stride, pad) in cases {
            let g = ConvGeom::new(
                [batch, cin, hw[0], hw[1]],
                [cout, cin, kernel, kernel],
                [stride; 2],
                [pad; 2],
            )
            .expect("fits");
            assert!(!Taps::active(&g).is_every(), "{g:?} should skip taps");
            let x = values(batch * g.in_len(), 1);
            let w = values(cout * g.k(), 2);
            let dy = values(batch * g.out_len(), 3);
            let name = g.key(batch);
            assert_eq!(
                bits(&forward_with(&g, &x, &w, true)),
                bits(&forward_with(&g, &x, &w, false)),
                "{name}: forward"
            );
            assert_eq!(
                bits(&grad_input_with(&g, &dy, &w, true)),
                bits(&grad_input_with(&g, &dy, &w, false)),
                "{name}: input gradient"
            );
            assert_eq!(
                bits(&grad_weight_with(&g, &x, &dy, true)),
                bits(&grad_weight_with(&g, &x, &dy, false)),
                "{name}: weight gradient"
            );
        }
    }
}
