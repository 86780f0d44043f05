//! BatchNorm (+ optional ReLU) on plain NCHW f32 slices: statistics, normalisation and the
//! backward pass in two memory passes each, parallel over channels / planes.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::wide::avx512_too;

/// `[N, C, H·W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnGeom {
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Pixels per plane.
    pub hw: usize,
}

impl BnGeom {
    fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Planes handed to one rayon task: at least ~16K floats, so that the 4x4 planes of a
    /// ResNet's last stage do not become one task each.
    fn planes_per_task(&self) -> usize {
        (16384 / self.hw.max(1)).max(1)
    }

    /// The `hw`-long planes of channel `ch`, one per image.
    fn planes<'a>(&self, t: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (c, hw) = (self.c, self.hw);
        (0..self.n).map(move |i| &t[(i * c + ch) * hw..][..hw])
    }
}

/// Per-channel mean and biased variance, accumulated in f64.
pub fn stats(g: &BnGeom, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), g.len(), "batchnorm input length");
    let count = (g.n * g.hw).max(1) as f64;
    (0..g.c)
        .into_par_iter()
        .map(|ch| {
            let (s, ss) = channel_sums(g, x, ch);
            let mean = s / count;
            ((mean) as f32, (ss / count - mean * mean).max(0.0) as f32)
        })
        .unzip()
}

/// `y = x · scale[c] + shift[c]`, then `max(y, 0)` when `relu`.
///
/// Written straight into a fresh buffer by the parallel tasks: a copy of `x` first (then an
/// in-place pass) was a single-threaded memcpy of every activation.
#[allow(unsafe_code)]
pub fn scale_shift(g: &BnGeom, x: &[f32], scale: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
    check_scale_shift(g, x, scale, shift);
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let out = &mut y.spare_capacity_mut()[..x.len()];
    let (per, hw) = (g.planes_per_task(), g.hw.max(1));
    out.par_chunks_mut(per * hw)
        .zip(x.par_chunks(per * hw))
        .enumerate()
        .for_each(|(task, (out, x))| task_scale_shift(g, task * per, out, x, [scale, shift], relu));
    // SAFETY: `out` is the first x.len() slots of y's capacity, and the chunks above cover it
    // exactly (both sides are cut into the same chunk and plane lengths), each slot written
    // once.
    unsafe { y.set_len(x.len()) };
    y
}

/// [`scale_shift`] overwriting its input (evaluation, where the input is not needed again:
/// no fresh multi-megabyte allocation to fault in).
pub fn scale_shift_in_place(g: &BnGeom, x: &mut [f32], scale: &[f32], shift: &[f32], relu: bool) {
    check_scale_shift(g, x, scale, shift);
    let per = g.planes_per_task();
    x.par_chunks_mut(per * g.hw.max(1))
        .enumerate()
        .for_each(|(task, x)| task_scale_shift_in_place(g, task * per, x, [scale, shift], relu));
}

fn check_scale_shift(g: &BnGeom, x: &[f32], scale: &[f32], shift: &[f32]) {
    assert_eq!(x.len(), g.len(), "batchnorm input length");
    assert!(
        scale.len() == g.c && shift.len() == g.c,
        "batchnorm channel count"
    );
}

/// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean · scale`.
pub fn fold(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(var)
        .map(|(g, v)| (*g as f64 / (*v as f64 + eps).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

/// Gradients of training-mode BatchNorm (+ ReLU) given the forward's input `x`, output `y`
/// (for the ReLU mask), the batch mean and `invstd = 1/sqrt(var + eps)`:
/// returns (dx, dgamma, dbeta).
///
/// With x̂ = (x − mean)·invstd and dŷ the output gradient (zeroed where the ReLU clipped),
/// dbeta = Σ dŷ, dgamma = Σ dŷ·x̂ and dx = gamma·invstd·(dŷ − dbeta/M − x̂·dgamma/M).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &BnGeom,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(x.len() == g.len() && y.len() == g.len() && dy.len() == g.len());
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = (0..g.c)
        .into_par_iter()
        .map(|ch| {
            let (sg, sb) = channel_grad_sums(g, [x, y, dy], ch, [mean[ch], invstd[ch]], relu);
            (sg as f32, sb as f32)
        })
        .unzip();
    let count = (g.n * g.hw).max(1) as f32;
    let mut dx = vec![0.0f32; g.len()];
    let per = g.planes_per_task();
    // Per channel: [mean, invstd, gamma·invstd, dbeta/M, dgamma/M].
    let consts: Vec<[f32; 5]> = (0..g.c)
        .map(|ch| {
            let (m, is) = (mean[ch], invstd[ch]);
            [m, is, gamma[ch] * is, dbeta[ch] / count, dgamma[ch] / count]
        })
        .collect();
    dx.par_chunks_mut(per * g.hw.max(1))
        .enumerate()
        .for_each(|(task, dx)| task_dx(g, task * per, dx, [x, y, dy], &consts, relu));
    (dx, dgamma, dbeta)
}

// The loops over a channel's planes or a task's planes, compiled for AVX-512 where the CPU
// has it (crate::wide), entered once per channel or task rather than once per plane (the
// ImageNet stem's last stages have 1x1 to 4x4 planes). Element-wise or in 16 explicit lanes:
// the same bits at either width.

avx512_too!(
    /// (Σ x, Σ x²) of channel `ch`: f32 lanes within a plane (at most a few thousand values),
    /// f64 across planes.
    fn channel_sums(g: &BnGeom, x: &[f32], ch: usize) -> (f64, f64) => channel_sums_body
);

#[inline(always)]
fn channel_sums_body(g: &BnGeom, x: &[f32], ch: usize) -> (f64, f64) {
    let (mut s, mut ss) = (0.0f64, 0.0f64);
    for plane in g.planes(x, ch) {
        let (ps, pss) = lane_sums(plane, plane, plane, |x, _, _| (x, x * x));
        s += ps as f64;
        ss += pss as f64;
    }
    (s, ss)
}

avx512_too!(
    /// (Σ dŷ·x̂, Σ dŷ) of channel `ch` from `[x, y, dy]` and its `[mean, invstd]`. The ReLU's
    /// mask is applied inside the sum: no buffer per plane (with 1x1 to 8x8 planes, allocating
    /// one was most of the ImageNet stem's BatchNorm backward).
    fn channel_grad_sums(g: &BnGeom, t: [&[f32]; 3], ch: usize, c: [f32; 2], relu: bool) -> (f64, f64)
        => channel_grad_sums_body
);

#[inline(always)]
fn channel_grad_sums_body(
    g: &BnGeom,
    [x, y, dy]: [&[f32]; 3],
    ch: usize,
    [m, is]: [f32; 2],
    relu: bool,
) -> (f64, f64) {
    let (mut sg, mut sb) = (0.0f64, 0.0f64);
    for ((x, y), dy) in g.planes(x, ch).zip(g.planes(y, ch)).zip(g.planes(dy, ch)) {
        let (pg, pb) = lane_sums(x, y, dy, |x, y, dy| {
            let d = through_relu(relu, y, dy);
            (d * (x - m) * is, d)
        });
        sg += pg as f64;
        sb += pb as f64;
    }
    (sg, sb)
}

avx512_too!(
    /// `out = x · scale[c] + shift[c]` (then the ReLU) for a task's planes, the first being
    /// plane `first` of the tensor, into uninitialised memory.
    fn task_scale_shift(
        g: &BnGeom,
        first: usize,
        out: &mut [MaybeUninit<f32>],
        x: &[f32],
        affine: [&[f32]; 2],
        relu: bool,
    ) => task_scale_shift_body
);

#[inline(always)]
fn task_scale_shift_body(
    g: &BnGeom,
    first: usize,
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    [scale, shift]: [&[f32]; 2],
    relu: bool,
) {
    let hw = g.hw.max(1);
    for (i, (out, x)) in out.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
        let ch = (first + i) % g.c;
        let (a, b) = (scale[ch], shift[ch]);
        let pairs = out.iter_mut().zip(x);
        if relu {
            pairs.for_each(|(o, x)| {
                o.write((x * a + b).max(0.0));
            });
        } else {
            pairs.for_each(|(o, x)| {
                o.write(x * a + b);
            });
        }
    }
}

avx512_too!(
    /// [`task_scale_shift`] in place.
    fn task_scale_shift_in_place(g: &BnGeom, first: usize, x: &mut [f32], affine: [&[f32]; 2], relu: bool)
        => task_scale_shift_in_place_body
);

#[inline(always)]
fn task_scale_shift_in_place_body(
    g: &BnGeom,
    first: usize,
    x: &mut [f32],
    [scale, shift]: [&[f32]; 2],
    relu: bool,
) {
    for (i, x) in x.chunks_mut(g.hw.max(1)).enumerate() {
        let ch = (first + i) % g.c;
        let (a, b) = (scale[ch], shift[ch]);
        if relu {
            x.iter_mut().for_each(|x| *x = (*x * a + b).max(0.0));
        } else {
            x.iter_mut().for_each(|x| *x = *x * a + b);
        }
    }
}

/// The output gradient through the ReLU: zero where the ReLU clipped.
#[inline(always)]
fn through_relu(relu: bool, y: f32, dy: f32) -> f32 {
    if relu && y <= 0.0 {
        0.0
    } else {
        dy
    }
}

avx512_too!(
    /// dx for a task's planes (the first is plane `first`) from `[x, y, dy]` and each channel's
    /// `[mean, invstd, gamma·invstd, dbeta/M, dgamma/M]`.
    fn task_dx(g: &BnGeom, first: usize, dx: &mut [f32], t: [&[f32]; 3], consts: &[[f32; 5]], relu: bool)
        => task_dx_body
);

#[inline(always)]
fn task_dx_body(
    g: &BnGeom,
    first: usize,
    dx: &mut [f32],
    [x, y, dy]: [&[f32]; 3],
    consts: &[[f32; 5]],
    relu: bool,
) {
    let hw = g.hw.max(1);
    for (i, dx) in dx.chunks_mut(hw).enumerate() {
        let plane = first + i;
        let [m, is, k, db, dg] = consts[plane % g.c];
        let at = plane * g.hw;
        let n = dx.len();
        let (x, y, dy) = (&x[at..][..n], &y[at..][..n], &dy[at..][..n]);
        for (i, dx) in dx.iter_mut().enumerate() {
            let xhat = (x[i] - m) * is;
            *dx = k * (through_relu(relu, y[i], dy[i]) - db - xhat * dg);
        }
    }
}

/// Σ f(x_i, y_i, z_i) over three equally long slices, as two sums kept in 16 independent lanes:
/// a single accumulator serialises every addition on its latency and cannot be vectorised.
#[inline(always)]
fn lane_sums(
    x: &[f32],
    y: &[f32],
    z: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f32, f32) {
    const LANES: usize = 16;
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, yc, zc) = (
        x.chunks_exact(LANES),
        y.chunks_exact(LANES),
        z.chunks_exact(LANES),
    );
    let (xr, yr, zr) = (xc.remainder(), yc.remainder(), zc.remainder());
    for ((xs, ys), zs) in xc.zip(yc).zip(zc) {
        for l in 0..LANES {
            let (u, v) = f(xs[l], ys[l], zs[l]);
            a[l] += u;
            b[l] += v;
        }
    }
    for (l, ((xv, yv), zv)) in xr.iter().zip(yr).zip(zr).enumerate() {
        let (u, v) = f(*xv, *yv, *zv);
        a[l] += u;
        b[l] += v;
    }
    (a.iter().sum(), b.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::cpu::tests::values;

    #[test]
    fn scale_shift_into_a_fresh_buffer_equals_the_in_place_pass() {
        // Planes of 1, 7 and 1024 pixels: one task, and several tasks with partial last ones.
        for (n, c, hw) in [(3, 5, 1), (2, 3, 7), (5, 4, 1024), (7, 3, 1024), (0, 3, 4)] {
            let g = BnGeom { n, c, hw };
            let x = values(g.len(), 1);
            let (scale, shift) = (values(c, 2), values(c, 3));
            for relu in [false, true] {
                let mut want = x.clone();
                scale_shift_in_place(&g, &mut want, &scale, &shift, relu);
                let got = scale_shift(&g, &x, &scale, &shift, relu);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{n}x{c}x{hw} relu {relu}");
            }
        }
    }
}
