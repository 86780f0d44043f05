//! The column matrix of a convolution and its adjoint: `im2col` copies one image's patches into
//! columns of a [K, ld] matrix, `col2im` adds such columns back onto an image. Rows are
//! `(channel, tap)` over the taps in a [`Taps`] (every tap, or only those that read inside the
//! image).

#[cfg(target_arch = "x86_64")]
use super::im2col_register::RegisterPermutes;
use super::taps::{source_row, Taps};
use super::ConvGeom;

/// Output widths below this use the gather-table im2col/col2im: with rows of 1–8 pixels the
/// per-row slicing and copy calls of the row-wise version cost more than the data movement.
const NARROW: usize = 16;

/// Writes one image's patches into columns `offset..offset + P` of `col` [K, ld].
pub(crate) fn im2col(
    g: &ConvGeom,
    taps: &Taps,
    layout: &Layout,
    img: &[f32],
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    if g.out_hw[1] < NARROW {
        return im2col_narrow(g, taps, layout, img, col, ld, offset);
    }
    let ([h, w], kw, [oh, ow]) = (g.in_hw, g.kernel[1], g.out_hw);
    let ta = taps.list().len();
    for c in 0..g.cin {
        let plane = &img[c * h * w..][..h * w];
        for (t, &tap) in taps.list().iter().enumerate() {
            let (ki, kj) = (tap / kw, tap % kw);
            let dst = &mut col[(c * ta + t) * ld + offset..][..oh * ow];
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

/// Adds columns `offset..offset + P` of `dcol` [K, ld] back onto one image's pixels.
pub(crate) fn col2im(
    g: &ConvGeom,
    taps: &Taps,
    layout: &Layout,
    dcol: &[f32],
    ld: usize,
    offset: usize,
    img: &mut [f32],
) {
    if g.out_hw[1] < NARROW {
        return col2im_narrow(g, taps, layout, dcol, ld, offset, img);
    }
    let ([h, w], kw, [oh, ow]) = (g.in_hw, g.kernel[1], g.out_hw);
    let ta = taps.list().len();
    for c in 0..g.cin {
        let plane = &mut img[c * h * w..][..h * w];
        for (t, &tap) in taps.list().iter().enumerate() {
            let (ki, kj) = (tap / kw, tap % kw);
            let src = &dcol[(c * ta + t) * ld + offset..][..oh * ow];
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

/// For each kernel tap (ki, kj) and output pixel, the offset of the input pixel it reads within
/// a channel plane; reads of padding point one past the plane, where the narrow im2col keeps a
/// zero (so the gather loop has no branch). Same for every channel and image, so it is built
/// once per pass ([`Layout::of`]), not per image. Empty for the row-wise im2col.
pub(crate) struct Layout {
    /// Tap-major, P entries per tap; every entry is below `slots` (by construction).
    table: Vec<u32>,
    /// The plane's length plus the padding slot.
    slots: usize,
    /// The same table as register permutes, where a plane and the output fit one AVX-512
    /// register (then the narrow im2col/col2im use these).
    #[cfg(target_arch = "x86_64")]
    registers: Option<RegisterPermutes>,
}

impl Layout {
    /// The layout of `g`'s column matrix: a gather table when the output is narrow.
    pub fn of(g: &ConvGeom) -> Self {
        let ([h, w], [kh, kw], [oh, ow]) = (g.in_hw, g.kernel, g.out_hw);
        let slots = h * w + 1;
        if ow >= NARROW {
            return Self {
                table: Vec::new(),
                slots,
                #[cfg(target_arch = "x86_64")]
                registers: None,
            };
        }
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
        Self {
            #[cfg(target_arch = "x86_64")]
            registers: RegisterPermutes::of(&table, h * w, oh * ow),
            table,
            slots,
        }
    }

    /// This layout without its register permutes: the gather table only (to test one
    /// against the other).
    #[cfg(all(test, target_arch = "x86_64"))]
    pub fn without_registers(mut self) -> Self {
        self.registers = None;
        self
    }

    /// Whether the narrow passes run as register permutes.
    #[cfg(all(test, target_arch = "x86_64"))]
    pub fn has_registers(&self) -> bool {
        self.registers.is_some()
    }

    /// The table entries of kernel tap `tap` for `p` output pixels.
    fn at(&self, tap: usize, p: usize) -> &[u32] {
        &self.table[tap * p..][..p]
    }

    /// `dst[j] = ext[table[tap][j]]`: one channel plane's patch row for kernel tap `tap`.
    fn gather(&self, tap: usize, dst: &mut [f32], ext: &[f32]) {
        assert_eq!(
            ext.len(),
            self.slots,
            "gather: the plane plus its padding slot"
        );
        let at = self.at(tap, dst.len());
        let base = ext.as_ptr();
        for (d, &i) in dst.iter_mut().zip(at) {
            // SAFETY: every table entry is below `slots` (built so in `of`), which is ext's
            // length (asserted above). A raw read: the bounds check (and `get_unchecked`'s
            // debug precondition check) was most of this loop's time. (AVX-512 gathers were
            // measured slower than this loop on this Zen 4.)
            #[allow(unsafe_code)]
            let v = unsafe { *base.add(i as usize) };
            *d = v;
        }
    }

    /// `ext[table[tap][j]] += src[j]`: the adjoint of [`Layout::gather`], in the same order.
    fn scatter_add(&self, tap: usize, src: &[f32], ext: &mut [f32]) {
        assert_eq!(
            ext.len(),
            self.slots,
            "scatter: the plane plus its padding slot"
        );
        let base = ext.as_mut_ptr();
        for (v, &i) in src.iter().zip(self.at(tap, src.len())) {
            // SAFETY: as in `gather`: every entry is below `slots` = ext.len(), and `ext` is
            // borrowed mutably for the whole loop.
            #[allow(unsafe_code)]
            unsafe {
                *base.add(i as usize) += v
            };
        }
    }
}

fn im2col_narrow(
    g: &ConvGeom,
    taps: &Taps,
    layout: &Layout,
    img: &[f32],
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(r) = &layout.registers {
        return r.im2col(taps.list(), g.cin, img, col, ld, offset);
    }
    let (plane_len, p) = (g.in_hw[0] * g.in_hw[1], g.p());
    let ta = taps.list().len();
    // The plane plus one zero at `plane_len`, the slot padding reads point to.
    let mut ext = vec![0.0f32; plane_len + 1];
    for c in 0..g.cin {
        ext[..plane_len].copy_from_slice(&img[c * plane_len..][..plane_len]);
        for (t, &tap) in taps.list().iter().enumerate() {
            let dst = &mut col[(c * ta + t) * ld + offset..][..p];
            layout.gather(tap, dst, &ext);
        }
    }
}

fn col2im_narrow(
    g: &ConvGeom,
    taps: &Taps,
    layout: &Layout,
    dcol: &[f32],
    ld: usize,
    offset: usize,
    img: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(r) = &layout.registers {
        return r.col2im(taps.list(), g.cin, dcol, ld, offset, img);
    }
    let (plane_len, p) = (g.in_hw[0] * g.in_hw[1], g.p());
    let ta = taps.list().len();
    // Accumulate into the plane plus a discard slot for the taps that read padding.
    let mut ext = vec![0.0f32; plane_len + 1];
    for c in 0..g.cin {
        let plane = &mut img[c * plane_len..][..plane_len];
        ext[..plane_len].copy_from_slice(plane);
        for (t, &tap) in taps.list().iter().enumerate() {
            let src = &dcol[(c * ta + t) * ld + offset..][..p];
            layout.scatter_add(tap, src, &mut ext);
        }
        plane.copy_from_slice(&ext[..plane_len]);
    }
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
