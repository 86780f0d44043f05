//! Dropout before the classifier with a mask drawn from `(seed, step, rank)`.
//!
//! Burn's `Dropout` draws from the backend's process-wide RNG, whose state is not part of a
//! checkpoint (a resumed run would drop different units) and is shared by replicas that are
//! threads of one process. This mask is a pure function of the step, so resumed and
//! data-parallel runs stay bit-exact.

use burn::tensor::backend::AutodiffBackend;
use resnet_model::ResNet;

use crate::TrainState;

/// Inverted-dropout mask `[n, features]` for this step (None when dropout is off).
pub(crate) fn dropout_mask<B: AutodiffBackend>(
    state: &TrainState,
    rank: usize,
    n: usize,
    model: &ResNet<B>,
) -> Option<burn::tensor::Tensor<B, 2>> {
    use rand::{Rng, SeedableRng};
    let p = state.config.model.dropout;
    if p <= 0.0 {
        return None;
    }
    let dim = model.fc.weight.dims()[0];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        state.config.seed
            ^ (state.global_step as u64).wrapping_mul(0xA076_1D64_78BD_642F)
            ^ (rank as u64).rotate_left(40)
            ^ 0x4452_4F50,
    );
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..n * dim)
        .map(|_| if rng.random_bool(1.0 - p) { keep } else { 0.0 })
        .collect();
    Some(burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(mask, [n, dim]),
        &model.fc.weight.device(),
    ))
}
