//! The residual blocks. One struct serves both kinds so that field names are exactly
//! torchvision's (`conv1 bn1 conv2 bn2 [conv3 bn3] downsample`) and a stage is a plain `Vec`.

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{backend::Backend, Tensor};
use resnet_kernels::KernelChoice;

use crate::batchnorm::BatchNorm2d;
use resnet_spec::{BlockKind, ResNetConfig};

/// A bias-free convolution initialised as torchvision does:
/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, i.e. std = sqrt(2 / fan_out).
pub(crate) fn conv<B: Backend>(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

pub(crate) fn bn<B: Backend>(
    channels: usize,
    cfg: &ResNetConfig,
    zero: bool,
    device: &B::Device,
) -> BatchNorm2d<B> {
    BatchNorm2d::new(channels, cfg.bn_momentum, cfg.bn_eps, zero, device)
}

/// The 1x1 conv + BN shortcut used when a block changes resolution or channels.
/// Stored as `downsample.conv`/`downsample.bn`; weight import maps them to torchvision's
/// `downsample.0`/`downsample.1`.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1x1 projection with the block's stride.
    pub conv: Conv2d<B>,
    /// Its BatchNorm.
    pub bn: BatchNorm2d<B>,
}

/// A BasicBlock (conv3/bn3 absent) or a Bottleneck (conv3/bn3 present).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Basic: 3x3 with the block's stride. Bottleneck: 1x1 reduce.
    pub conv1: Conv2d<B>,
    /// BatchNorm after conv1.
    pub bn1: BatchNorm2d<B>,
    /// Basic: 3x3 stride 1. Bottleneck: 3x3 with the block's stride (torchvision's v1.5 placement).
    pub conv2: Conv2d<B>,
    /// BatchNorm after conv2.
    pub bn2: BatchNorm2d<B>,
    /// Bottleneck only: 1x1 expand to planes * 4.
    pub conv3: Option<Conv2d<B>>,
    /// Bottleneck only: BatchNorm after conv3.
    pub bn3: Option<BatchNorm2d<B>>,
    /// Projection shortcut when the shape changes.
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    /// A block taking `in_ch` channels to `planes * expansion`, striding by `stride`.
    pub fn new(
        kind: BlockKind,
        in_ch: usize,
        planes: usize,
        stride: usize,
        cfg: &ResNetConfig,
        device: &B::Device,
    ) -> Self {
        let out_ch = planes * kind.expansion();
        let zero = cfg.zero_init_residual;
        let downsample = (stride != 1 || in_ch != out_ch).then(|| Downsample {
            conv: conv(in_ch, out_ch, 1, stride, 0, device),
            bn: bn(out_ch, cfg, false, device),
        });
        match kind {
            BlockKind::Basic => Self {
                conv1: conv(in_ch, planes, 3, stride, 1, device),
                bn1: bn(planes, cfg, false, device),
                conv2: conv(planes, planes, 3, 1, 1, device),
                bn2: bn(planes, cfg, zero, device),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Self {
                conv1: conv(in_ch, planes, 1, 1, 0, device),
                bn1: bn(planes, cfg, false, device),
                conv2: conv(planes, planes, 3, stride, 1, device),
                bn2: bn(planes, cfg, false, device),
                conv3: Some(conv(planes, out_ch, 1, 1, 0, device)),
                bn3: Some(bn(out_ch, cfg, zero, device)),
                downsample,
            },
        }
    }

    /// `x: [N, C_in, H, W]` -> `[N, C_out, H / stride, W / stride]`, with the kernels `k` chose.
    ///
    /// Each convolution goes through its BatchNorm's [`BatchNorm2d::after_conv`], the last one
    /// with the residual and the ReLU, so evaluation on the CPU folds all of it into the
    /// convolutions; training runs conv, BatchNorm(+ReLU), add, ReLU as separate ops.
    pub fn forward(&self, k: &KernelChoice, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.after_conv(k, &d.conv, x.clone(), None, false),
            None => x.clone(),
        };
        let out = self.bn1.after_conv(k, &self.conv1, x, None, true);
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let out = self.bn2.after_conv(k, &self.conv2, out, None, true);
                bn3.after_conv(k, conv3, out, Some(identity), true)
            }
            _ => self
                .bn2
                .after_conv(k, &self.conv2, out, Some(identity), true),
        }
    }

    /// Every BatchNorm of the block, shortcut included.
    pub fn batchnorms(&self) -> Vec<&BatchNorm2d<B>> {
        let mut v = vec![&self.bn1, &self.bn2];
        v.extend(self.bn3.iter());
        v.extend(self.downsample.iter().map(|d| &d.bn));
        v
    }

    /// Mutable access to every BatchNorm of the block.
    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d<B>> {
        let mut v = vec![&mut self.bn1, &mut self.bn2];
        v.extend(self.bn3.iter_mut());
        v.extend(self.downsample.iter_mut().map(|d| &mut d.bn));
        v
    }
}
