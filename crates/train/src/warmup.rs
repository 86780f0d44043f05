//! One throwaway training step at the run's shapes, before a GPU worker joins its group.
//!
//! On CUDA the first step compiles every kernel it uses (about two minutes for ResNet-18 on an
//! H200 with an empty kernel cache). Inside the first real step that time is spent while the
//! peers wait in the first all-reduce, against the collective timeout; spent before joining, it
//! only delays the rendezvous, where waiting is normal. The step runs on a model of its own
//! (BatchNorm's running statistics are shared between clones, so the trainer's model is never
//! touched) and on a zero batch; kernels compiled here land in the kernel cache.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use resnet_data::DatasetKind;
use resnet_kernels::KernelChoice;

use crate::{smoothed_targets, soft_cross_entropy, targets_tensor, TrainConfig, TrainError};

/// What the warm-up step took.
#[derive(Debug, Clone, Copy)]
pub struct WarmUp {
    /// Seconds of the forward pass and the loss.
    pub forward_s: f64,
    /// Seconds of the backward pass.
    pub backward_s: f64,
}

/// Runs one forward and backward pass of `cfg`'s model on a zero batch of `cfg.batch_size`
/// images on `device`, with the kernels `kernels` chooses in the run's convolution precision. Reports each half through
/// `progress` as it finishes (a cold step takes minutes on a GPU).
pub fn warm_up<B: AutodiffBackend>(
    cfg: &TrainConfig,
    kernels: KernelChoice,
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<WarmUp, TrainError> {
    cfg.model
        .validate()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let kernels = crate::trainer::run_kernels(kernels, cfg);
    let side = match cfg.data.dataset {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => 32,
        DatasetKind::Folder | DatasetKind::Synthetic => cfg.data.image_size,
    };
    // The trainer takes the class count from the data; the CIFAR ones are known up front.
    let mut cfg = cfg.clone();
    match cfg.data.dataset {
        DatasetKind::Cifar10 => cfg.model.num_classes = 10,
        DatasetKind::Cifar100 => cfg.model.num_classes = 100,
        DatasetKind::Folder | DatasetKind::Synthetic => {}
    }
    let model = crate::trainer::init_model::<B>(&cfg, device)?.with_kernels(kernels);
    let (n, k) = (cfg.batch_size, cfg.model.num_classes);
    let x = Tensor::<B, 4>::zeros([n, 3, side, side], device);
    let targets = targets_tensor::<B>(smoothed_targets(&vec![0; n], k, 0.0), n, k, device);
    progress(&format!(
        "warm-up: one training step at batch {n}, {side}x{side} (compiles the kernels on first use)"
    ));
    let t0 = Instant::now();
    let loss = soft_cross_entropy(model.forward(x), targets);
    // Reading the loss waits for the device.
    let _ = loss.clone().into_scalar().elem::<f32>();
    let forward_s = t0.elapsed().as_secs_f64();
    progress(&format!("warm-up: forward {forward_s:.2} s"));
    let t1 = Instant::now();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    B::sync(device).map_err(|e| TrainError::Config(format!("warm-up: device: {e:?}")))?;
    drop(grads);
    let backward_s = t1.elapsed().as_secs_f64();
    progress(&format!("warm-up: backward {backward_s:.2} s"));
    Ok(WarmUp {
        forward_s,
        backward_s,
    })
}
