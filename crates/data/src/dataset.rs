//! The in-memory image dataset every source decodes into.

use serde::{Deserialize, Serialize};

/// Images as u8 `[N, 3, H, W]` (planar RGB, CIFAR's own layout) plus labels and class names.
///
/// Augmentation works on the u8 planes; conversion to f32 happens once per batch in the loader.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// Name for logs and reports (e.g. `cifar10/train`).
    pub name: String,
    /// `len * 3 * height * width` bytes.
    pub pixels: Vec<u8>,
    /// One label per image, `0..classes.len()`.
    pub labels: Vec<u16>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Class names, index = label.
    pub classes: Vec<String>,
}

impl ImageDataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (3 * H * W).
    pub fn image_bytes(&self) -> usize {
        3 * self.height * self.width
    }

    /// The planar RGB bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_bytes();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Keeps only the first `n` images (`--train-limit`/`--test-limit`).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.pixels.truncate(n * self.image_bytes());
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to 0..1.
    pub fn channel_stats(&self) -> Normalization {
        let plane = self.height * self.width;
        let mut sum = [0f64; 3];
        let mut sq = [0f64; 3];
        for img in self.pixels.chunks_exact(3 * plane) {
            for c in 0..3 {
                for &p in &img[c * plane..(c + 1) * plane] {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean = sum.map(|s| s / n);
        let std = [0, 1, 2].map(|c| (sq[c] / n - mean[c] * mean[c]).max(1e-12).sqrt());
        Normalization {
            mean: mean.map(|m| m as f32),
            std: std.map(|s| s as f32),
        }
    }
}

/// Per-channel normalisation applied after augmentation: `(x / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// RGB means in 0..1.
    pub mean: [f32; 3],
    /// RGB standard deviations in 0..1.
    pub std: [f32; 3],
}

impl Normalization {
    /// CIFAR-10 training-set statistics (the usual published values).
    pub const CIFAR10: Normalization = Normalization {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
    };
    /// CIFAR-100 training-set statistics.
    pub const CIFAR100: Normalization = Normalization {
        mean: [0.5071, 0.4865, 0.4409],
        std: [0.2673, 0.2564, 0.2762],
    };
    /// ImageNet statistics (torchvision's pretrained models).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    /// Maps 0..255 to roughly -1..1.
    pub const HALF: Normalization = Normalization {
        mean: [0.5, 0.5, 0.5],
        std: [0.5, 0.5, 0.5],
    };
}
