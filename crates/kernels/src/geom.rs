//! Shapes the kernels share: one bias-free 2-D convolution ([`ConvGeom`], the description every
//! convolution kernel — CPU, CUDA, cuDNN — and every cache key is built from), which of its
//! three computations runs ([`Pass`]), and one max pool's windows ([`PoolGeom`]). Their own
//! file so that `conv`, `cudnn` and the pools depend on it rather than on each other.

/// The shape of one 2-D convolution (groups = 1, dilation = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding before each spatial axis; the padding after is whatever the output size
    /// implies (symmetric for the convolutions a ResNet uses).
    pub pad: [usize; 2],
    /// Output height and width.
    pub out_hw: [usize; 2],
}

impl ConvGeom {
    /// The geometry of a convolution with symmetric padding, or `None` when the kernel does
    /// not fit the padded input.
    pub fn new(
        input: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Option<Self> {
        let [batch, cin, h, w] = input;
        let [cout, wcin, kh, kw] = weight;
        if wcin != cin || stride.contains(&0) || kh == 0 || kw == 0 {
            return None;
        }
        let out = |size: usize, k: usize, s: usize, p: usize| {
            (size + 2 * p).checked_sub(k).map(|span| span / s + 1)
        };
        Some(Self {
            batch,
            cin,
            in_hw: [h, w],
            cout,
            kernel: [kh, kw],
            stride,
            pad,
            out_hw: [
                out(h, kh, stride[0], pad[0])?,
                out(w, kw, stride[1], pad[1])?,
            ],
        })
    }

    /// Rows of the column matrix: Cin·kh·kw.
    pub fn k(&self) -> usize {
        self.cin * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }

    /// Input elements per image: Cin·H·W.
    pub fn in_len(&self) -> usize {
        self.cin * self.in_hw[0] * self.in_hw[1]
    }

    /// Output elements per image: Cout·Ho·Wo.
    pub fn out_len(&self) -> usize {
        self.cout * self.p()
    }

    /// Multiply-adds of one forward pass (each gradient costs the same).
    pub fn macs(&self) -> u64 {
        (self.batch * self.cout * self.k() * self.p()) as u64
    }

    /// The shape part of a cache key, with `batch` images (callers round it or not):
    /// `n256 c64 32x32 -> c64 32x32 k3x3 s1x1 p1x1`.
    pub fn key(&self, batch: usize) -> String {
        format!(
            "n{batch} c{} {}x{} -> c{} {}x{} k{}x{} s{}x{} p{}x{}",
            self.cin,
            self.in_hw[0],
            self.in_hw[1],
            self.cout,
            self.out_hw[0],
            self.out_hw[1],
            self.kernel[0],
            self.kernel[1],
            self.stride[0],
            self.stride[1],
            self.pad[0],
            self.pad[1],
        )
    }
}

/// One of a convolution's three computations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The output from the input and the weights.
    Forward,
    /// The input's gradient from the output's.
    InputGrad,
    /// The weights' gradient from the input and the output's gradient.
    WeightGrad,
}

impl Pass {
    /// A short name, used in tuning keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::InputGrad => "input-grad",
            Self::WeightGrad => "weight-grad",
        }
    }
}

/// The window geometry of one max pool over `[N·C planes, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Padding before each spatial axis (symmetric).
    pub pad: [usize; 2],
    /// Output height and width.
    pub out_hw: [usize; 2],
}

impl PoolGeom {
    /// The geometry, or `None` when the window does not fit or a stride is 0.
    pub fn new(
        in_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
    ) -> Option<Self> {
        let out = |i: usize| {
            (in_hw[i] + 2 * pad[i])
                .checked_sub(kernel[i])
                .filter(|_| stride[i] > 0 && kernel[i] > 0)
                .map(|span| span / stride[i] + 1)
        };
        Some(Self {
            in_hw,
            kernel,
            stride,
            pad,
            out_hw: [out(0)?, out(1)?],
        })
    }
}
