//! The pure half of the cuDNN convolution: how a [`ConvGeom`] becomes cuDNN's tensor, filter
//! and convolution descriptors (dimensions, strides, padding, in NCHW or NHWC), which math mode
//! a pass runs in, which of the algorithms cuDNN measured is chosen, and how big the shared
//! workspace grows. No cuDNN call here, so every rule is a CPU test; `super::ffi` turns these
//! values into descriptors and calls.
//!
//! (Over 400 lines with its unit tests; the code is ~280.)

pub use crate::choice::CudaMath;
use crate::geom::ConvGeom;
use crate::geom::Pass;

pub use crate::choice::CudaLayout as Layout;

impl Layout {
    /// Element strides of a `[n, c, h, w]` tensor in this layout, in `[n, c, h, w]` order (the
    /// order cuDNN's Nd descriptors take them).
    pub fn strides(self, [_, c, h, w]: [usize; 4]) -> [usize; 4] {
        match self {
            Self::Nchw => [c * h * w, h * w, w, 1],
            Self::Nhwc => [h * w * c, 1, w * c, c],
        }
    }

    /// The shape a dense tensor of logical dimensions `[n, c, h, w]` has in memory in this
    /// layout: itself for NCHW, `[n, h, w, c]` for NHWC (filters: `[k, r, s, c]`). The
    /// convolution node holds NHWC operands as Burn tensors of that shape.
    pub fn physical(self, [n, c, h, w]: [usize; 4]) -> [usize; 4] {
        match self {
            Self::Nchw => [n, c, h, w],
            Self::Nhwc => [n, h, w, c],
        }
    }
}

/// Element type of a pass's operands and result. The accumulation is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// f32.
    F32,
    /// bf16 (`--conv-precision bf16`).
    Bf16,
}

impl Dtype {
    /// A short name for keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// cuDNN's math types, as their `cudnnMathType_t` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathType {
    /// `CUDNN_TENSOR_OP_MATH` (1): tensor cores (TF32 for f32 operands, native for bf16).
    TensorOp,
    /// `CUDNN_FMA_MATH` (3): no tensor cores, no down-conversion.
    Fma,
}

/// The math type of a pass on operands of `dtype` under `math`. bf16 always runs on the tensor
/// cores (there is nothing to keep "strict"); f32 does unless `strict` asks for FMA math.
pub fn math_type(dtype: Dtype, math: CudaMath) -> MathType {
    match (dtype, math) {
        (Dtype::Bf16, _) | (Dtype::F32, CudaMath::Tf32) => MathType::TensorOp,
        (Dtype::F32, CudaMath::Strict) => MathType::Fma,
    }
}

/// A 4-D tensor descriptor: dimensions and strides as the C `int`s cuDNN takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// `[n, c, h, w]` (filters: `[k, c, r, s]`).
    pub dims: [i32; 4],
    /// Element strides in the same order.
    pub strides: [i32; 4],
}

/// Why a shape cannot go to cuDNN (it then runs on the fallback kernels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// A dimension or stride does not fit cuDNN's 32-bit `int`.
    TooLarge {
        /// Which tensor.
        what: &'static str,
        /// The value that does not fit.
        value: usize,
    },
    /// cuDNN's output-size formula disagrees with the geometry (a bug in the caller).
    OutputMismatch {
        /// What the geometry says.
        geom: [usize; 2],
        /// What cuDNN will compute.
        cudnn: [usize; 2],
    },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { what, value } => {
                write!(f, "{what}: {value} does not fit cuDNN's 32-bit sizes")
            }
            Self::OutputMismatch { geom, cudnn } => write!(
                f,
                "output size {}x{} from the geometry, {}x{} from cuDNN's formula",
                geom[0], geom[1], cudnn[0], cudnn[1]
            ),
        }
    }
}

fn desc(what: &'static str, dims: [usize; 4], layout: Layout) -> Result<TensorDesc, PlanError> {
    let int = |v: usize| i32::try_from(v).map_err(|_| PlanError::TooLarge { what, value: v });
    let strides = layout.strides(dims);
    let total: usize = dims.iter().product();
    int(total)?;
    Ok(TensorDesc {
        dims: [int(dims[0])?, int(dims[1])?, int(dims[2])?, int(dims[3])?],
        strides: [
            int(strides[0])?,
            int(strides[1])?,
            int(strides[2])?,
            int(strides[3])?,
        ],
    })
}

/// Everything cuDNN needs to know about one convolution, whatever the pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPlan {
    /// The input (`x`; the input gradient has the same descriptor).
    pub x: TensorDesc,
    /// The filter (`w`; the weight gradient has the same descriptor), `[k, c, r, s]`.
    pub w: TensorDesc,
    /// The output (`y`; the output gradient has the same descriptor).
    pub y: TensorDesc,
    /// Zero padding `[h, w]`.
    pub pad: [i32; 2],
    /// Stride `[h, w]`.
    pub stride: [i32; 2],
    /// Dilation `[h, w]` (always 1 here).
    pub dilation: [i32; 2],
    /// The math type.
    pub math: MathType,
}

/// The descriptors of `g` in `layout`, or why cuDNN cannot take it.
pub fn plan(
    g: &ConvGeom,
    layout: Layout,
    dtype: Dtype,
    math: CudaMath,
) -> Result<ConvPlan, PlanError> {
    // cuDNN's formula (cudnnGetConvolution2dForwardOutputDim), which must agree with the
    // geometry's, or the output descriptor would describe a different tensor than cuDNN writes.
    let out = |i: usize| (g.in_hw[i] + 2 * g.pad[i] - g.kernel[i]) / g.stride[i] + 1;
    let cudnn = [out(0), out(1)];
    if cudnn != g.out_hw {
        return Err(PlanError::OutputMismatch {
            geom: g.out_hw,
            cudnn,
        });
    }
    let int = |what, v: usize| i32::try_from(v).map_err(|_| PlanError::TooLarge { what, value: v });
    Ok(ConvPlan {
        x: desc("input", [g.batch, g.cin, g.in_hw[0], g.in_hw[1]], layout)?,
        w: desc("filter", [g.cout, g.cin, g.kernel[0], g.kernel[1]], layout)?,
        y: desc(
            "output",
            [g.batch, g.cout, g.out_hw[0], g.out_hw[1]],
            layout,
        )?,
        pad: [int("padding", g.pad[0])?, int("padding", g.pad[1])?],
        stride: [int("stride", g.stride[0])?, int("stride", g.stride[1])?],
        dilation: [1, 1],
        math: math_type(dtype, math),
    })
}

/// The algorithm-cache key of `pass` on `g`: everything that can change which algorithm cuDNN
/// measures fastest or which it may use. The batch is exact (cuDNN's timings are per shape,
/// as PyTorch's `cudnn.benchmark` cache keys them).
pub fn algo_key(
    pass: Pass,
    g: &ConvGeom,
    layout: Layout,
    dtype: Dtype,
    math: CudaMath,
    deterministic: bool,
) -> String {
    format!(
        "{} {} {} {} {} {}",
        pass.name(),
        dtype.name(),
        layout.name(),
        math_type_name(math_type(dtype, math)),
        if deterministic { "det" } else { "any" },
        g.key(g.batch),
    )
}

fn math_type_name(m: MathType) -> &'static str {
    match m {
        MathType::TensorOp => "tensor-op",
        MathType::Fma => "fma",
    }
}

/// One algorithm as cuDNN's `cudnnFind*AlgorithmEx` reported it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// The algorithm's enum value for its pass.
    pub algo: i32,
    /// Whether the measurement succeeded (`CUDNN_STATUS_SUCCESS`).
    pub ok: bool,
    /// Milliseconds of one run.
    pub time_ms: f32,
    /// Workspace bytes it needs.
    pub memory: usize,
    /// Whether it gives the same bits on every run (`CUDNN_DETERMINISTIC`).
    pub deterministic: bool,
    /// The math type it ran with.
    pub math_tensor_op: bool,
}

/// The algorithm to use from cuDNN's measurements: the fastest that succeeded, fits in
/// `cap` bytes of workspace and, when `deterministic`, is deterministic. Ties go to the smaller
/// workspace, then the lower algorithm number, so the choice never depends on the report's
/// order. `None` when nothing qualifies (the pass then runs on the fallback kernels).
pub fn choose(measured: &[Measured], cap: usize, deterministic: bool) -> Option<Measured> {
    measured
        .iter()
        .filter(|m| m.ok && m.time_ms.is_finite() && m.time_ms >= 0.0)
        .filter(|m| m.memory <= cap)
        .filter(|m| !deterministic || m.deterministic)
        .min_by(|a, b| {
            a.time_ms
                .total_cmp(&b.time_ms)
                .then(a.memory.cmp(&b.memory))
                .then(a.algo.cmp(&b.algo))
        })
        .copied()
}

/// The one workspace all passes share: it grows to the largest chosen algorithm's need, never
/// past the cap, and never shrinks (so steady state allocates nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// Bytes allocated now.
    pub size: usize,
    /// The most it may grow to (`--cudnn-workspace-mb`).
    pub cap: usize,
}

impl Workspace {
    /// An empty workspace with a cap of `cap_mb` MiB.
    pub fn with_cap_mb(cap_mb: usize) -> Self {
        Self {
            size: 0,
            cap: cap_mb.saturating_mul(1 << 20),
        }
    }

    /// The size to grow to for an algorithm that needs `bytes`: `Some(new size)` when it must
    /// grow, `None` when the current allocation is enough. Needs past the cap are a caller bug
    /// ([`choose`] never picks them); they are clamped to the cap.
    pub fn grow_for(&mut self, bytes: usize) -> Option<usize> {
        let want = bytes.min(self.cap);
        (want > self.size).then(|| {
            self.size = want;
            want
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(input: [usize; 4], weight: [usize; 4], s: usize, p: usize) -> ConvGeom {
        ConvGeom::new(input, weight, [s, s], [p, p]).expect("fits")
    }

    #[test]
    fn a_dense_tensor_of_the_physical_shape_has_the_layouts_strides() {
        let dims = [2, 3, 4, 5];
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let p = layout.physical(dims);
            // Row-major strides of the physical shape...
            let row_major = [p[1] * p[2] * p[3], p[2] * p[3], p[3], 1];
            // ...put back in logical [n, c, h, w] order.
            let logical = match layout {
                Layout::Nchw => row_major,
                Layout::Nhwc => [row_major[0], row_major[3], row_major[1], row_major[2]],
            };
            assert_eq!(logical, layout.strides(dims), "{layout:?}");
        }
        assert_eq!(
            Layout::Nhwc.physical([64, 3, 7, 7]),
            [64, 7, 7, 3],
            "filters: KRSC"
        );
    }

    #[test]
    fn nchw_and_nhwc_strides_describe_the_same_logical_tensor() {
        let dims = [2, 3, 4, 5];
        assert_eq!(Layout::Nchw.strides(dims), [60, 20, 5, 1]);
        assert_eq!(Layout::Nhwc.strides(dims), [60, 1, 15, 3]);
        // Every element has a distinct offset below the element count, in both layouts.
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let s = layout.strides(dims);
            let mut seen = [false; 120];
            for n in 0..2 {
                for c in 0..3 {
                    for h in 0..4 {
                        for w in 0..5 {
                            let off = n * s[0] + c * s[1] + h * s[2] + w * s[3];
                            assert!(!seen[off], "{layout:?} offset {off} twice");
                            seen[off] = true;
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn resnet_shapes_plan_with_cudnns_output_formula() {
        // (input, weight, stride, pad): stem 7x7/2, 3x3/1, 3x3/2 on odd sizes, 1x1/2 shortcut.
        for (input, weight, s, p) in [
            ([256, 3, 224, 224], [64, 3, 7, 7], 2, 3),
            ([256, 64, 32, 32], [64, 64, 3, 3], 1, 1),
            ([3, 5, 9, 8], [6, 5, 3, 3], 2, 1),
            ([1, 64, 56, 56], [128, 64, 1, 1], 2, 0),
            ([37, 2, 7, 5], [3, 2, 3, 3], 1, 0),
        ] {
            let g = geom(input, weight, s, p);
            let plan = plan(&g, Layout::Nchw, Dtype::F32, CudaMath::Tf32).expect("plans");
            assert_eq!(plan.x.dims.map(|d| d as usize), input);
            assert_eq!(plan.w.dims.map(|d| d as usize), weight);
            assert_eq!(plan.y.dims[2] as usize, g.out_hw[0]);
            assert_eq!(plan.y.dims[3] as usize, g.out_hw[1]);
            assert_eq!(plan.pad, [p as i32; 2]);
            assert_eq!(plan.stride, [s as i32; 2]);
            assert_eq!(plan.dilation, [1, 1]);
            let y = g.out_hw;
            assert_eq!(
                plan.y.strides.map(|d| d as usize),
                Layout::Nchw.strides([g.batch, g.cout, y[0], y[1]])
            );
            let nhwc = super::plan(&g, Layout::Nhwc, Dtype::Bf16, CudaMath::Strict).expect("plans");
            assert_eq!(nhwc.x.dims, plan.x.dims, "dims are logical in both layouts");
            assert_eq!(nhwc.x.strides[1], 1, "channels innermost");
            assert_eq!(nhwc.math, MathType::TensorOp, "bf16 always on tensor cores");
        }
    }

    #[test]
    fn too_large_and_inconsistent_shapes_are_refused_with_a_reason() {
        let g = geom([70_000, 64, 224, 224], [64, 64, 3, 3], 1, 1);
        let e = plan(&g, Layout::Nchw, Dtype::F32, CudaMath::Tf32).expect_err("2^31 elements");
        assert!(
            matches!(e, PlanError::TooLarge { what: "input", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("32-bit"), "{e}");
        let mut g = geom([2, 3, 8, 8], [4, 3, 3, 3], 1, 1);
        g.out_hw = [7, 8];
        let e = plan(&g, Layout::Nchw, Dtype::F32, CudaMath::Tf32).expect_err("mismatch");
        assert_eq!(
            e.to_string(),
            "output size 7x8 from the geometry, 8x8 from cuDNN's formula"
        );
    }

    #[test]
    fn math_follows_pytorch_tf32_by_default_and_fma_when_strict() {
        assert_eq!(math_type(Dtype::F32, CudaMath::Tf32), MathType::TensorOp);
        assert_eq!(math_type(Dtype::F32, CudaMath::Strict), MathType::Fma);
        assert_eq!(math_type(Dtype::Bf16, CudaMath::Strict), MathType::TensorOp);
        assert_eq!(CudaMath::default(), CudaMath::Tf32);
        for m in [CudaMath::Tf32, CudaMath::Strict] {
            assert_eq!(m.name().parse::<CudaMath>(), Ok(m));
        }
        assert!("fp32".parse::<CudaMath>().is_err());
    }

    #[test]
    fn keys_separate_everything_that_changes_the_choice() {
        let g = geom([8, 16, 32, 32], [32, 16, 3, 3], 1, 1);
        let k = |pass, layout, dtype, math, det| algo_key(pass, &g, layout, dtype, math, det);
        let base = k(
            Pass::Forward,
            Layout::Nchw,
            Dtype::F32,
            CudaMath::Tf32,
            false,
        );
        assert_eq!(
            base,
            "forward f32 nchw tensor-op any n8 c16 32x32 -> c32 32x32 k3x3 s1x1 p1x1"
        );
        let others = [
            k(
                Pass::InputGrad,
                Layout::Nchw,
                Dtype::F32,
                CudaMath::Tf32,
                false,
            ),
            k(
                Pass::Forward,
                Layout::Nhwc,
                Dtype::F32,
                CudaMath::Tf32,
                false,
            ),
            k(
                Pass::Forward,
                Layout::Nchw,
                Dtype::Bf16,
                CudaMath::Tf32,
                false,
            ),
            k(
                Pass::Forward,
                Layout::Nchw,
                Dtype::F32,
                CudaMath::Strict,
                false,
            ),
            k(
                Pass::Forward,
                Layout::Nchw,
                Dtype::F32,
                CudaMath::Tf32,
                true,
            ),
            algo_key(
                Pass::Forward,
                &geom([9, 16, 32, 32], [32, 16, 3, 3], 1, 1),
                Layout::Nchw,
                Dtype::F32,
                CudaMath::Tf32,
                false,
            ),
        ];
        for o in &others {
            assert_ne!(o, &base);
            assert!(
                !o.contains('\t') && !o.contains('\n'),
                "keys are one field: {o}"
            );
        }
    }

    fn m(algo: i32, ok: bool, time_ms: f32, memory: usize, det: bool) -> Measured {
        Measured {
            algo,
            ok,
            time_ms,
            memory,
            deterministic: det,
            math_tensor_op: true,
        }
    }

    #[test]
    fn the_fastest_usable_algorithm_wins_whatever_the_report_order() {
        let results = [
            m(0, true, 3.0, 0, true),
            m(1, true, 1.0, 64 << 20, false), // fastest, but needs 64 MiB, nondeterministic
            m(2, false, 0.5, 0, true),        // failed
            m(6, true, 2.0, 1 << 20, true),
            m(7, true, f32::NAN, 0, true),  // no timing
            m(5, true, 2.0, 1 << 20, true), // ties with 6: lower number wins
        ];
        let pick = |cap, det| choose(&results, cap, det).map(|m| m.algo);
        assert_eq!(pick(128 << 20, false), Some(1));
        assert_eq!(pick(32 << 20, false), Some(5), "over the cap");
        assert_eq!(pick(128 << 20, true), Some(5), "deterministic only");
        assert_eq!(pick(0, true), Some(0), "no workspace at all");
        let mut reversed = results;
        reversed.reverse();
        assert_eq!(choose(&reversed, 32 << 20, false).map(|m| m.algo), Some(5));
        assert_eq!(choose(&[m(2, false, 0.5, 0, true)], 1 << 30, false), None);
    }

    #[test]
    fn the_workspace_grows_to_the_largest_need_within_the_cap() {
        let mut ws = Workspace::with_cap_mb(4);
        assert_eq!(ws.cap, 4 << 20);
        assert_eq!(ws.grow_for(0), None);
        assert_eq!(ws.grow_for(1 << 20), Some(1 << 20));
        assert_eq!(ws.grow_for(512), None, "never shrinks");
        assert_eq!(ws.grow_for(3 << 20), Some(3 << 20));
        assert_eq!(ws.grow_for(64 << 20), Some(4 << 20), "clamped to the cap");
        assert_eq!(ws.grow_for(5 << 20), None);
        assert_eq!(Workspace::with_cap_mb(usize::MAX).cap, usize::MAX);
    }
}
