//! Evaluation: exact counts over a dataset, from which every metric is derived.

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use resnet_data::{
    AugmentConfig, Batch, ImageDataset, Loader, LoaderConfig, Normalization, Transform,
};
use resnet_model::ResNet;

use crate::{count_batch, EvalCounts};

/// A host batch as an input tensor `[n, 3, h, w]`.
pub fn batch_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(batch.images.clone(), [batch.n, 3, batch.h, batch.w]),
        device,
    )
}

/// Runs `model` (inference backend: BatchNorm uses running statistics) over `indices` of `ds`.
pub fn evaluate<B: Backend>(
    model: &ResNet<B>,
    ds: Arc<ImageDataset>,
    indices: Vec<usize>,
    norm: Normalization,
    batch_size: usize,
    workers: usize,
    device: &B::Device,
) -> EvalCounts {
    let k = ds.classes.len();
    let cfg = LoaderConfig {
        batch_size,
        workers,
        prefetch: 2,
        drop_last: false,
    };
    let tf = Transform {
        augment: AugmentConfig::none(),
        norm,
        seed: 0,
        epoch: 0,
    };
    let mut counts = EvalCounts::new(k);
    for batch in Loader::new(ds, indices, &cfg, tf, 0) {
        let logits = model.forward(batch_tensor::<B>(&batch, device));
        let host: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        count_batch(&host, &batch.labels, k, &mut counts);
    }
    counts
}

/// Logits for every image of `ds` in order (for ensembles and prediction grids), `[n * k]`.
pub fn predict<B: Backend>(
    model: &ResNet<B>,
    ds: Arc<ImageDataset>,
    norm: Normalization,
    batch_size: usize,
    device: &B::Device,
) -> Vec<f32> {
    let n = ds.len();
    let cfg = LoaderConfig {
        batch_size,
        workers: 2,
        prefetch: 2,
        drop_last: false,
    };
    let tf = Transform {
        augment: AugmentConfig::none(),
        norm,
        seed: 0,
        epoch: 0,
    };
    let mut out = Vec::new();
    for batch in Loader::new(ds, (0..n).collect(), &cfg, tf, 0) {
        let logits = model.forward(batch_tensor::<B>(&batch, device));
        out.extend(
            logits
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default(),
        );
    }
    out
}
