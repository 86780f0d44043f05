//! A batch loader that augments on background threads and keeps batches ready ahead of the model.
//!
//! Worker thread `w` builds batches `w, w + W, w + 2W, ...` into its own bounded channel; the
//! consumer reads batch `b` from channel `b % W`, so batches arrive in order without a reorder
//! buffer, and each worker stays at most `prefetch` batches ahead. Dropping the loader stops the
//! threads (their next send fails).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::augment::{augment_into, AugmentConfig};
use crate::{ImageDataset, Normalization};

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Background threads building batches (at least 1).
    pub workers: usize,
    /// Batches each thread may keep ready.
    pub prefetch: usize,
    /// Drop a final partial batch.
    pub drop_last: bool,
}

/// One batch, ready to be copied into a tensor.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Batch number within the epoch.
    pub number: usize,
    /// f32 `[n, 3, h, w]`, normalised.
    pub images: Vec<f32>,
    /// Labels, `[n]`.
    pub labels: Vec<u16>,
    /// Dataset indices of the images (for prediction grids and debugging).
    pub indices: Vec<usize>,
    /// Images in the batch.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

/// What is applied to every image: augmentation (seeded per epoch) and normalisation.
#[derive(Debug, Clone)]
pub struct Transform {
    /// Augmentation; `AugmentConfig::none()` for evaluation.
    pub augment: AugmentConfig,
    /// Normalisation after augmentation.
    pub norm: Normalization,
    /// Run seed.
    pub seed: u64,
    /// Epoch (augmentation draws change each epoch).
    pub epoch: u64,
}

/// Iterator over the batches of one epoch's indices.
pub struct Loader {
    receivers: Vec<Receiver<Batch>>,
    next: usize,
    end: usize,
    handles: Vec<JoinHandle<()>>,
}

/// Number of batches `len` samples make.
pub fn num_batches(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// Builds one batch synchronously (also used by the threads).
pub fn build_batch(
    ds: &ImageDataset,
    indices: &[usize],
    number: usize,
    batch_size: usize,
    tf: &Transform,
) -> Batch {
    let start = number * batch_size;
    let idx: Vec<usize> = indices[start..(start + batch_size).min(indices.len())].to_vec();
    let (h, w) = (ds.height, ds.width);
    let per = 3 * h * w;
    let mut images = vec![0f32; idx.len() * per];
    for (slot, &i) in idx.iter().enumerate() {
        let draw = tf.augment.draw(tf.seed, tf.epoch, i as u64, h, w);
        augment_into(
            ds.image(i),
            h,
            w,
            &tf.augment,
            draw,
            &tf.norm,
            &mut images[slot * per..(slot + 1) * per],
        );
    }
    Batch {
        number,
        labels: idx.iter().map(|&i| ds.labels[i]).collect(),
        n: idx.len(),
        indices: idx,
        images,
        h,
        w,
    }
}

impl Loader {
    /// Starts the threads for batches `start_batch..` of `indices`.
    pub fn new(
        ds: Arc<ImageDataset>,
        indices: Vec<usize>,
        cfg: &LoaderConfig,
        tf: Transform,
        start_batch: usize,
    ) -> Self {
        let batch_size = cfg.batch_size.max(1);
        let end = num_batches(indices.len(), batch_size, cfg.drop_last);
        let workers = cfg.workers.max(1);
        let indices = Arc::new(indices);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for wid in 0..workers {
            let (tx, rx) = sync_channel(cfg.prefetch.max(1));
            let (ds, indices, tf) = (ds.clone(), indices.clone(), tf.clone());
            // Batch b is served by channel b % workers; this thread owns those b >= start_batch.
            let first = start_batch + (wid + workers - start_batch % workers) % workers;
            handles.push(std::thread::spawn(move || {
                for b in (first..end).step_by(workers) {
                    if tx
                        .send(build_batch(&ds, &indices, b, batch_size, &tf))
                        .is_err()
                    {
                        return;
                    }
                }
            }));
            receivers.push(rx);
        }
        Self {
            receivers,
            next: start_batch,
            end,
            handles,
        }
    }

    /// Batches left to deliver.
    pub fn remaining(&self) -> usize {
        self.end.saturating_sub(self.next)
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        let batch = rx.recv().ok()?;
        self.next += 1;
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the receivers makes every pending send fail, so the threads exit promptly.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::synthetic;

    fn tf() -> Transform {
        Transform {
            augment: AugmentConfig::default(),
            norm: Normalization::HALF,
            seed: 5,
            epoch: 2,
        }
    }

    #[test]
    fn threaded_batches_equal_synchronous_ones_in_order() {
        let ds = Arc::new(synthetic(23, 8, 1, true));
        let idx: Vec<usize> = (0..23).rev().collect();
        for workers in [1, 3] {
            let cfg = LoaderConfig {
                batch_size: 5,
                workers,
                prefetch: 2,
                drop_last: false,
            };
            let got: Vec<Batch> = Loader::new(ds.clone(), idx.clone(), &cfg, tf(), 0).collect();
            assert_eq!(got.len(), 5);
            for (b, batch) in got.iter().enumerate() {
                let want = build_batch(&ds, &idx, b, 5, &tf());
                assert_eq!(batch.number, b);
                assert_eq!(batch.images, want.images);
                assert_eq!(batch.labels, want.labels);
            }
            assert_eq!(got[4].n, 3);
        }
    }

    #[test]
    fn start_batch_and_drop_last() {
        let ds = Arc::new(synthetic(23, 8, 1, true));
        let idx: Vec<usize> = (0..23).collect();
        let cfg = LoaderConfig {
            batch_size: 5,
            workers: 2,
            prefetch: 1,
            drop_last: true,
        };
        let nums: Vec<usize> = Loader::new(ds.clone(), idx.clone(), &cfg, tf(), 3)
            .map(|b| b.number)
            .collect();
        assert_eq!(nums, vec![3]);
        // Dropping a loader early must not hang.
        let mut l = Loader::new(ds, idx, &cfg, tf(), 0);
        assert!(l.next().is_some());
        drop(l);
    }
}
