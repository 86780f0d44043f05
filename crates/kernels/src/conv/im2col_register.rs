//! The narrow im2col and col2im for channel planes of at most 16 floats with at most 16 output
//! pixels — ResNet's 4x4, 2x2 and 1x1 maps, most of the ImageNet stem's layers at 32x32 inputs.
//! One AVX-512 register holds a whole plane, so a kernel tap's patch row is one masked permute
//! of it (lanes that read padding masked to zero), and its adjoint one permute and a masked add.
//! The gather table ([`super::im2col::Layout`]) moves one float per load/store pair instead.
//!
//! Same values, added in the same order (a tap reads each plane position at most once, so per
//! position the taps' additions happen in tap order either way): the same bits as the gather
//! table, tested below.

use std::arch::x86_64::{
    _mm512_loadu_si512, _mm512_mask_add_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_maskz_permutexvar_ps, _mm512_permutexvar_ps,
};

use crate::sgemm::{best_path, Path};

/// Floats in one AVX-512 register.
const LANES: usize = 16;

/// One tap's permute: lane j of the result is lane `idx[j]` of the source where bit j of
/// `mask` is set.
type Permute = ([u32; LANES], u16);

/// Per kernel tap, the permutes of a plane that fits one register.
pub(crate) struct RegisterPermutes {
    /// im2col: output pixel j reads plane position `idx[j]` (padding lanes masked off).
    gather: Vec<Permute>,
    /// col2im: plane position q receives output pixel `idx[q]` (positions no pixel of this
    /// tap reads masked off).
    scatter: Vec<Permute>,
    /// Floats per channel plane.
    plane: usize,
    /// Output pixels per image.
    p: usize,
}

/// The low `n` bits set (n ≤ 16).
fn low_bits(n: usize) -> u16 {
    if n >= LANES {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

impl RegisterPermutes {
    /// From a gather table (tap-major, `p` entries per tap, entries ≥ `plane` reading
    /// padding), when the plane and the output fit one register and the CPU has AVX-512.
    pub fn of(table: &[u32], plane: usize, p: usize) -> Option<Self> {
        if plane > LANES || p > LANES || p == 0 || best_path() != Path::Avx512 {
            return None;
        }
        let mut gather = Vec::new();
        let mut scatter = Vec::new();
        for entries in table.chunks_exact(p) {
            let (mut g, mut s): (Permute, Permute) = (([0; LANES], 0), ([0; LANES], 0));
            for (j, &q) in entries.iter().enumerate() {
                let q = q as usize;
                if q < plane {
                    g.0[j] = q as u32;
                    g.1 |= 1 << j;
                    assert!(s.1 & (1 << q) == 0, "a tap reads plane position {q} twice");
                    s.0[q] = j as u32;
                    s.1 |= 1 << q;
                }
            }
            gather.push(g);
            scatter.push(s);
        }
        Some(Self {
            gather,
            scatter,
            plane,
            p,
        })
    }

    /// Panics unless `cin` planes of `img`, rows `c · taps.len() + t` of `col` (columns
    /// `offset..offset + p`, rows `ld` apart) and every tap are in bounds, and AVX-512 runs.
    fn check(&self, taps: &[usize], cin: usize, img: usize, col: usize, ld: usize, offset: usize) {
        assert_eq!(
            best_path(),
            Path::Avx512,
            "AVX-512 permutes on a CPU without it"
        );
        assert!(
            img >= cin * self.plane,
            "im2col: image shorter than its planes"
        );
        let rows = cin * taps.len();
        assert!(
            rows == 0 || col >= (rows - 1) * ld + offset + self.p,
            "im2col: column matrix too small"
        );
        assert!(
            taps.iter().all(|&t| t < self.gather.len()),
            "im2col: a tap outside the kernel"
        );
    }

    /// One image's patches: `img` [cin, plane] → rows `(c · taps.len() + t)` of `col` [K, ld],
    /// columns `offset..offset + p`.
    #[allow(unsafe_code)]
    pub fn im2col(
        &self,
        taps: &[usize],
        cin: usize,
        img: &[f32],
        col: &mut [f32],
        ld: usize,
        offset: usize,
    ) {
        self.check(taps, cin, img.len(), col.len(), ld, offset);
        // SAFETY: `check` asserted AVX-512 and that every plane load (cin · plane floats of
        // img, masked to the plane) and every row store (p floats at (c·ta + t)·ld + offset)
        // lies inside the slices, and that every tap indexes `gather`.
        unsafe { self.im2col_avx512(taps, cin, img.as_ptr(), col.as_mut_ptr(), ld, offset) }
    }

    /// The adjoint of [`RegisterPermutes::im2col`]: adds rows of `dcol` back onto `img`.
    #[allow(unsafe_code)]
    pub fn col2im(
        &self,
        taps: &[usize],
        cin: usize,
        dcol: &[f32],
        ld: usize,
        offset: usize,
        img: &mut [f32],
    ) {
        self.check(taps, cin, img.len(), dcol.len(), ld, offset);
        // SAFETY: as in `im2col`, with the roles of the two slices swapped.
        unsafe { self.col2im_avx512(taps, cin, dcol.as_ptr(), ld, offset, img.as_mut_ptr()) }
    }

    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f")]
    unsafe fn im2col_avx512(
        &self,
        taps: &[usize],
        cin: usize,
        img: *const f32,
        col: *mut f32,
        ld: usize,
        offset: usize,
    ) {
        let (plane_mask, row_mask, ta) = (low_bits(self.plane), low_bits(self.p), taps.len());
        for c in 0..cin {
            // SAFETY (this function): the caller checked the bounds (`check`); masked-off
            // lanes are neither read nor written.
            let v = unsafe { _mm512_maskz_loadu_ps(plane_mask, img.add(c * self.plane)) };
            for (t, &tap) in taps.iter().enumerate() {
                let (idx, mask) = &self.gather[tap];
                let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
                let row = _mm512_maskz_permutexvar_ps(*mask, idx, v);
                unsafe {
                    _mm512_mask_storeu_ps(col.add((c * ta + t) * ld + offset), row_mask, row)
                };
            }
        }
    }

    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f")]
    unsafe fn col2im_avx512(
        &self,
        taps: &[usize],
        cin: usize,
        dcol: *const f32,
        ld: usize,
        offset: usize,
        img: *mut f32,
    ) {
        let (plane_mask, row_mask, ta) = (low_bits(self.plane), low_bits(self.p), taps.len());
        for c in 0..cin {
            // SAFETY (this function): as in `im2col_avx512`.
            let plane = unsafe { img.add(c * self.plane) };
            let mut acc = unsafe { _mm512_maskz_loadu_ps(plane_mask, plane) };
            for (t, &tap) in taps.iter().enumerate() {
                let row = unsafe {
                    _mm512_maskz_loadu_ps(row_mask, dcol.add((c * ta + t) * ld + offset))
                };
                let (idx, mask) = &self.scatter[tap];
                let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
                acc = _mm512_mask_add_ps(acc, *mask, acc, _mm512_permutexvar_ps(idx, row));
            }
            unsafe { _mm512_mask_storeu_ps(plane, plane_mask, acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::conv::cpu::tests::values;
    use crate::conv::im2col::{col2im, im2col, Layout};
    use crate::conv::taps::Taps;
    use crate::conv::ConvGeom;

    /// Register permutes against the gather table, bit for bit: im2col of two images into one
    /// column matrix (the second at an offset), then col2im of that matrix onto images that
    /// already hold values (so the order of the additions shows).
    #[test]
    fn register_permutes_give_the_gather_tables_bits() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            // Without AVX-512 the narrow passes must keep the gather table.
            let g = ConvGeom::new([1, 2, 4, 4], [2, 2, 3, 3], [1, 1], [1, 1]).expect("fits");
            assert!(!Layout::of(&g).has_registers());
            return;
        }
        // (input h, w, kernel, stride, pad): ResNet's small-map convolutions and odd ones.
        let cases = [
            (4, 4, 3, 1, 1),
            (4, 4, 3, 2, 1),
            (2, 2, 3, 1, 1),
            (2, 2, 3, 2, 1),
            (1, 1, 3, 1, 1),
            (4, 4, 1, 2, 0),
            (3, 5, 3, 1, 0),
            (2, 2, 3, 1, 2),
            (1, 3, 3, 1, 2),
            (3, 3, 2, 1, 1),
        ];
        for (h, w, k, s, pad) in cases {
            let cin = 3;
            let g =
                ConvGeom::new([2, cin, h, w], [5, cin, k, k], [s, s], [pad, pad]).expect("fits");
            let registers = Layout::of(&g);
            assert!(registers.has_registers(), "{h}x{w} k{k} s{s} p{pad}");
            let table = Layout::of(&g).without_registers();
            for taps in [Taps::every(&g), Taps::active(&g)] {
                let (p, rows) = (g.p(), cin * taps.list().len());
                let ld = 2 * p + 3;
                let x = values(2 * g.in_len(), 7);
                let run = |layout: &Layout| {
                    let mut col = vec![-9.0f32; rows * ld];
                    for i in 0..2 {
                        let img = &x[i * g.in_len()..][..g.in_len()];
                        im2col(&g, &taps, layout, img, &mut col, ld, i * p);
                    }
                    let mut back = values(2 * g.in_len(), 11);
                    let dcol = values(rows * ld, 5);
                    for i in 0..2 {
                        let img = &mut back[i * g.in_len()..][..g.in_len()];
                        col2im(&g, &taps, layout, &dcol, ld, i * p, img);
                    }
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    (bits(&col), bits(&back))
                };
                let (col_r, back_r) = run(&registers);
                let (col_t, back_t) = run(&table);
                let what = format!("{h}x{w} k{k} s{s} p{pad}, {} taps", taps.list().len());
                assert_eq!(col_r, col_t, "{what}: im2col");
                assert_eq!(back_r, back_t, "{what}: col2im");
            }
        }
        // Planes or outputs over 16 floats keep the gather table.
        let g = ConvGeom::new([1, 2, 5, 4], [2, 2, 3, 3], [1, 1], [1, 1]).expect("fits");
        assert!(!Layout::of(&g).has_registers());
    }
}
