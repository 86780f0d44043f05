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

use rayon::prelude::*;

use super::ConvGeom;
use crate::scratch::Scratch;
use crate::sgemm::{sgemm_rows, View};

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

/// Forward convolution: `x` [N, Cin, H, W], `w` [Cout, Cin, kh, kw] → [N, Cout, Ho, Wo].
pub fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.in_len(), "conv forward: input length");
    assert_eq!(w.len(), g.cout * g.k(), "conv forward: weight length");
    let (k, p, per) = (g.k(), g.p(), images_per_chunk(g));
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
                im2col(g, img, &mut col, cols, i * p);
            }
            let mut out = Scratch::new(g.cout * cols);
            // out[Cout, cols] = W[Cout, K] · col[K, cols]
            sgemm_rows(
                [g.cout, cols, k],
                &mut out,
                false,
                View::row_major(w, k),
                View::row_major(&col, cols),
                gemm_splits(g),
            );
            scatter_images(g, &out, y_chunk, cols);
        });
    y
}

/// Gradient with respect to the input: `dy` [N, Cout, Ho, Wo], `w` → [N, Cin, H, W].
pub fn grad_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    assert_eq!(
        dy.len(),
        g.batch * g.out_len(),
        "conv grad input: gradient length"
    );
    assert_eq!(w.len(), g.cout * g.k(), "conv grad input: weight length");
    let (k, p, per) = (g.k(), g.p(), images_per_chunk(g));
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
            sgemm_rows(
                [k, cols, g.cout],
                &mut dcol,
                false,
                View::transposed(w, k),
                View::row_major(&dy_packed, cols),
                gemm_splits(g),
            );
            for i in 0..imgs {
                let img = &mut dx_chunk[i * g.in_len()..][..g.in_len()];
                col2im(g, &dcol, cols, i * p, img);
            }
        });
    dx
}

/// Gradient with respect to the weight: `x` [N, Cin, H, W], `dy` → [Cout, Cin, kh, kw].
///
/// Computed transposed, dWᵀ[K, Cout] = col[K, cols] · dYᵀ[cols, Cout]: the operand that has
/// to be read across its rows while packing is then the small dY, not the K-row column matrix.
pub fn grad_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
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
    let (k, p, per) = (g.k(), g.p(), images_per_chunk(g));
    let chunks: Vec<usize> = (0..g.batch).step_by(per).collect();
    // Contiguous runs of chunks, one per thread, each with its own accumulator.
    let runs = chunks.len().min(rayon::current_num_threads()).max(1);
    let per_run = chunks.len().div_ceil(runs).max(1);
    let dwt = chunks
        .par_chunks(per_run)
        .map(|run| {
            let mut dwt = vec![0.0f32; k * g.cout];
            for &first in run {
                let imgs = per.min(g.batch - first);
                let cols = imgs * p;
                let mut col = Scratch::new(k * cols);
                for i in 0..imgs {
                    let img = &x[(first + i) * g.in_len()..][..g.in_len()];
                    im2col(g, img, &mut col, cols, i * p);
                }
                let dy_packed = gather_images(g, dy, first, imgs);
                sgemm_rows(
                    [k, g.cout, cols],
                    &mut dwt,
                    true,
                    View::row_major(&col, cols),
                    View::transposed(&dy_packed, cols),
                    gemm_splits(g),
                );
            }
            dwt
        })
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0f32; k * g.cout]);
    transpose(&dwt, k, g.cout)
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

/// Writes one image's patches into columns `offset..offset + P` of `col` [K, ld].
fn im2col(g: &ConvGeom, img: &[f32], col: &mut [f32], ld: usize, offset: usize) {
    if g.out_hw[1] < NARROW {
        return im2col_narrow(g, img, col, ld, offset);
    }
    let ([h, w], [kh, kw], [oh, ow]) = (g.in_hw, g.kernel, g.out_hw);
    for c in 0..g.cin {
        let plane = &img[c * h * w..][..h * w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = (c * kh + ki) * kw + kj;
                let dst = &mut col[row * ld + offset..][..oh * ow];
                for oy in 0..oh {
                    let out_row = &mut dst[oy * ow..][..ow];
                    match source_row(oy, ki, g.stride[0], g.pad[0], h) {
                        Some(iy) => {
                            let src = &plane[iy * w..][..w];
                            let (lo, hi) = valid_columns(kj, g.stride[1], g.pad[1], w, ow);
                            out_row[..lo].fill(0.0);
                            out_row[hi..].fill(0.0);
                            if lo == hi {
                                continue;
                            }
                            let start = lo * g.stride[1] + kj - g.pad[1];
                            if g.stride[1] == 1 {
                                out_row[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                            } else {
                                let picked = src[start..].iter().step_by(g.stride[1]);
                                out_row[lo..hi]
                                    .iter_mut()
                                    .zip(picked)
                                    .for_each(|(d, s)| *d = *s);
                            }
                        }
                        None => out_row.fill(0.0),
                    }
                }
            }
        }
    }
}

/// Adds columns `offset..offset + P` of `dcol` [K, ld] back onto one image's pixels.
fn col2im(g: &ConvGeom, dcol: &[f32], ld: usize, offset: usize, img: &mut [f32]) {
    if g.out_hw[1] < NARROW {
        return col2im_narrow(g, dcol, ld, offset, img);
    }
    let ([h, w], [kh, kw], [oh, ow]) = (g.in_hw, g.kernel, g.out_hw);
    for c in 0..g.cin {
        let plane = &mut img[c * h * w..][..h * w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = (c * kh + ki) * kw + kj;
                let src = &dcol[row * ld + offset..][..oh * ow];
                let (lo, hi) = valid_columns(kj, g.stride[1], g.pad[1], w, ow);
                if lo == hi {
                    continue;
                }
                for oy in 0..oh {
                    let Some(iy) = source_row(oy, ki, g.stride[0], g.pad[0], h) else {
                        continue;
                    };
                    let dst = &mut plane[iy * w..][..w];
                    let from = &src[oy * ow..][lo..hi];
                    let start = lo * g.stride[1] + kj - g.pad[1];
                    if g.stride[1] == 1 {
                        dst[start..start + hi - lo]
                            .iter_mut()
                            .zip(from)
                            .for_each(|(d, s)| *d += s);
                    } else {
                        dst[start..]
                            .iter_mut()
                            .step_by(g.stride[1])
                            .zip(from)
                            .for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    }
}

/// Output widths below this use the gather-table im2col/col2im: with rows of 1–8 pixels the
/// per-row slicing and copy calls of the row-wise version cost more than the data movement.
const NARROW: usize = 16;

/// For each kernel tap (ki, kj) and output pixel, the offset of the input pixel it reads within
/// a channel plane; reads of padding point one past the plane, where the narrow im2col keeps a
/// zero (so the gather loop has no branch). Same for every channel and image.
fn gather_table(g: &ConvGeom) -> Vec<u32> {
    let ([h, w], [kh, kw], [oh, ow]) = (g.in_hw, g.kernel, g.out_hw);
    let pad_slot = (h * w) as u32;
    let mut table = Vec::with_capacity(kh * kw * oh * ow);
    for ki in 0..kh {
        for kj in 0..kw {
            for oy in 0..oh {
                let iy = source_row(oy, ki, g.stride[0], g.pad[0], h);
                for ox in 0..ow {
                    let ix = source_row(ox, kj, g.stride[1], g.pad[1], w);
                    table.push(iy.zip(ix).map_or(pad_slot, |(y, x)| (y * w + x) as u32));
                }
            }
        }
    }
    table
}

fn im2col_narrow(g: &ConvGeom, img: &[f32], col: &mut [f32], ld: usize, offset: usize) {
    let (plane_len, p) = (g.in_hw[0] * g.in_hw[1], g.p());
    let table = gather_table(g);
    let taps = g.kernel[0] * g.kernel[1];
    // The plane plus one zero at `plane_len`, the slot padding reads point to.
    let mut ext = vec![0.0f32; plane_len + 1];
    for c in 0..g.cin {
        ext[..plane_len].copy_from_slice(&img[c * plane_len..][..plane_len]);
        for t in 0..taps {
            let dst = &mut col[(c * taps + t) * ld + offset..][..p];
            for (d, at) in dst.iter_mut().zip(&table[t * p..][..p]) {
                *d = ext[*at as usize];
            }
        }
    }
}

fn col2im_narrow(g: &ConvGeom, dcol: &[f32], ld: usize, offset: usize, img: &mut [f32]) {
    let (plane_len, p) = (g.in_hw[0] * g.in_hw[1], g.p());
    let table = gather_table(g);
    let taps = g.kernel[0] * g.kernel[1];
    // Accumulate into the plane plus a discard slot for the taps that read padding.
    let mut ext = vec![0.0f32; plane_len + 1];
    for c in 0..g.cin {
        let plane = &mut img[c * plane_len..][..plane_len];
        ext[..plane_len].copy_from_slice(plane);
        for t in 0..taps {
            let src = &dcol[(c * taps + t) * ld + offset..][..p];
            for (v, at) in src.iter().zip(&table[t * p..][..p]) {
                ext[*at as usize] += v;
            }
        }
        plane.copy_from_slice(&ext[..plane_len]);
    }
}

/// The input row read by output row `o` at kernel row `k`, if it lies inside the image.
fn source_row(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// The output columns `lo..hi` whose input column (at kernel column `k`) is inside the image.
fn valid_columns(k: usize, stride: usize, pad: usize, size: usize, out: usize) -> (usize, usize) {
    // First o with o·s + k >= pad; last o with o·s + k - pad <= size - 1.
    let lo = pad.saturating_sub(k).div_ceil(stride).min(out);
    let hi = if size + pad > k {
        ((size + pad - k - 1) / stride + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
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
