//! The ResNet itself: stem, four stages, global average pool, dropout, classifier.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{backend::Backend, Tensor};
use resnet_kernels::matmul::linear;
use resnet_kernels::KernelChoice;

use crate::batchnorm::BatchNorm2d;
use crate::block::{bn, conv, Block};
use crate::ModelError;
use resnet_spec::{ResNetConfig, Stem};

/// ResNet 18/34/50/101/152 with torchvision's module names
/// (`conv1 bn1 layer1..layer4 fc`; `maxpool` has no parameters).
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution: 3x3/1 (CIFAR) or 7x7/2 (ImageNet).
    pub conv1: Conv2d<B>,
    /// Stem BatchNorm.
    pub bn1: BatchNorm2d<B>,
    /// 3x3/2 max-pool of the ImageNet stem; absent for the CIFAR stem.
    pub maxpool: Option<MaxPool2d>,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Block<B>>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Block<B>>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Block<B>>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<Block<B>>,
    /// Dropout before the classifier (identity at p = 0 and in evaluation).
    pub dropout: Dropout,
    /// Classifier. Burn stores the weight as `[in, out]`; import/export transposes.
    pub fc: Linear<B>,
    /// Which kernels run the layers: a setting, not state. Not saved with the weights (a
    /// loaded checkpoint keeps the receiving model's choice), kept by `valid()` and `clone()`.
    #[module(skip)]
    pub kernels: KernelChoice,
}

/// Builds a network from its configuration: `cfg.init::<B>(&device)`. A trait because the
/// configuration is the Burn-free [`ResNetConfig`] of `resnet-spec`.
pub trait BuildResNet {
    /// Builds the network with freshly initialised weights on `device`.
    fn init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>, ModelError>;
}

impl BuildResNet for ResNetConfig {
    fn init<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>, ModelError> {
        self.validate()?;
        let (blocks, kind) = self.stage_plan()?;
        let w = self.width;
        let (conv1, maxpool) = match self.stem {
            Stem::Cifar => (conv(3, w, 3, 1, 1, device), None),
            Stem::Imagenet => (
                conv(3, w, 7, 2, 3, device),
                Some(
                    MaxPool2dConfig::new([3, 3])
                        .with_strides([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(),
                ),
            ),
        };
        let mut in_ch = w;
        let mut stage = |planes: usize, count: usize, stride: usize| -> Vec<Block<B>> {
            (0..count)
                .map(|i| {
                    let s = if i == 0 { stride } else { 1 };
                    let block = Block::new(kind, in_ch, planes, s, self, device);
                    in_ch = planes * kind.expansion();
                    block
                })
                .collect()
        };
        let layer1 = stage(w, blocks[0], 1);
        let layer2 = stage(w * 2, blocks[1], 2);
        let layer3 = stage(w * 4, blocks[2], 2);
        let layer4 = stage(w * 8, blocks[3], 2);
        Ok(ResNet {
            conv1,
            bn1: bn(w, self, false, device),
            maxpool,
            layer1,
            layer2,
            layer3,
            layer4,
            dropout: DropoutConfig::new(self.dropout).init(),
            // Burn's default Linear init is PyTorch's: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            fc: LinearConfig::new(self.feature_dim()?, self.num_classes).init(device),
            kernels: KernelChoice::default(),
        })
    }
}

impl<B: Backend> ResNet<B> {
    /// The same network, running its layers with the kernels `k` chooses (the default is
    /// [`KernelChoice::default`]: this crate's CPU kernels, Burn's own on CUDA, f32).
    pub fn with_kernels(mut self, k: KernelChoice) -> Self {
        self.kernels = k;
        self
    }

    /// `x: [N, 3, H, W]` (normalised images) -> logits `[N, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let features = self.features(x);
        linear(&self.kernels, &self.fc, self.dropout.forward(features))
    }

    /// Everything before dropout and the classifier: `[N, 3, H, W]` -> pooled `[N, feature_dim]`.
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.stem(x);
        let x = self.stages().into_iter().fold(x, |x, stage| {
            stage
                .iter()
                .fold(x, |x, block| block.forward(&self.kernels, x))
        });
        let [n, c, h, w] = x.dims();
        // Global average pool as one reduction over the flattened spatial axis.
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }

    fn stem(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let k = &self.kernels;
        let x = self.bn1.after_conv(k, &self.conv1, x, None, true);
        match &self.maxpool {
            Some(pool) => resnet_kernels::pool::max_pool2d(k, pool, x),
            None => x,
        }
    }

    /// The four stages in order.
    pub fn stages(&self) -> [&Vec<Block<B>>; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    /// Every BatchNorm in forward order.
    pub fn batchnorms(&self) -> Vec<&BatchNorm2d<B>> {
        let mut v = vec![&self.bn1];
        for stage in self.stages() {
            for block in stage {
                v.extend(block.batchnorms());
            }
        }
        v
    }

    /// Mutable access to every BatchNorm, in forward order.
    pub fn batchnorms_mut(&mut self) -> Vec<&mut BatchNorm2d<B>> {
        let mut v = vec![&mut self.bn1];
        for stage in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ] {
            for block in stage.iter_mut() {
                v.extend(block.batchnorms_mut());
            }
        }
        v
    }

    /// Trainable parameters (BatchNorm running statistics excluded), torchvision's count.
    pub fn trainable_params(&self) -> usize {
        self.num_params() - self.running_stat_count()
    }

    /// Elements of BatchNorm running statistics (mean and variance).
    pub fn running_stat_count(&self) -> usize {
        self.batchnorms().iter().map(|b| 2 * b.channels()).sum()
    }

    /// Freeze (or unfreeze) BatchNorm statistics everywhere: training-mode forwards then use
    /// and keep the running statistics.
    pub fn set_frozen_batchnorm(mut self, frozen: bool) -> Self {
        for b in self.batchnorms_mut() {
            b.frozen_stats = frozen;
        }
        self
    }
}
