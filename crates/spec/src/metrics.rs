//! Classification metrics from exact counts (so ranks can sum them and get the same answer).

use serde::{Deserialize, Serialize};

/// Counts that fully determine the evaluation metrics; additive across batches and ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalCounts {
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Samples whose label is among the 5 highest logits.
    pub top5_correct: u64,
    /// Sum of per-sample cross-entropy (no smoothing).
    pub loss_sum: f64,
}

impl EvalCounts {
    /// Zero counts for `k` classes.
    pub fn new(k: usize) -> Self {
        Self {
            confusion: vec![vec![0; k]; k],
            top5_correct: 0,
            loss_sum: 0.0,
        }
    }

    /// Adds another set of counts (same class count).
    pub fn merge(&mut self, other: &EvalCounts) {
        for (a, b) in self.confusion.iter_mut().zip(&other.confusion) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.top5_correct += other.top5_correct;
        self.loss_sum += other.loss_sum;
    }

    /// Total samples counted.
    pub fn total(&self) -> u64 {
        self.confusion.iter().flatten().sum()
    }

    /// Derives the report.
    pub fn report(&self, classes: &[String]) -> EvalReport {
        let k = self.confusion.len();
        let total = self.total();
        let correct: u64 = (0..k).map(|i| self.confusion[i][i]).sum();
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = self.confusion[c][c] as f64;
                let support: u64 = self.confusion[c].iter().sum();
                let predicted: u64 = (0..k).map(|r| self.confusion[r][c]).sum();
                let precision = div(tp, predicted as f64);
                let recall = div(tp, support as f64);
                ClassMetrics {
                    class: classes.get(c).cloned().unwrap_or_else(|| c.to_string()),
                    precision,
                    recall,
                    f1: div(2.0 * precision * recall, precision + recall),
                    support,
                }
            })
            .collect();
        let mean = |f: fn(&ClassMetrics) -> f64| div(per_class.iter().map(f).sum(), k as f64);
        EvalReport {
            samples: total,
            accuracy: div(correct as f64, total as f64),
            top5: div(self.top5_correct as f64, total as f64),
            loss: div(self.loss_sum, total as f64),
            macro_precision: mean(|c| c.precision),
            macro_recall: mean(|c| c.recall),
            macro_f1: mean(|c| c.f1),
            per_class,
            confusion: self.confusion.clone(),
        }
    }
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class name.
    pub class: String,
    /// TP / predicted as this class.
    pub precision: f64,
    /// TP / labelled as this class.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Samples labelled as this class.
    pub support: u64,
}

/// Everything `resnet eval` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Samples evaluated.
    pub samples: u64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Unweighted mean of per-class precision.
    pub macro_precision: f64,
    /// Unweighted mean of per-class recall.
    pub macro_recall: f64,
    /// Unweighted mean of per-class F1.
    pub macro_f1: f64,
    /// Per-class metrics.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Counts one batch from host-side logits `[n, k]` (row-major) and labels.
pub fn count_batch(logits: &[f32], labels: &[u16], k: usize, counts: &mut EvalCounts) {
    for (row, &label) in logits.chunks_exact(k).zip(labels) {
        let label = label as usize;
        let pred = argmax(row);
        counts.confusion[label][pred] += 1;
        let target = row[label];
        // Rank of the true class: how many logits beat it (ties resolved in its favour).
        let better = row.iter().filter(|&&v| v > target).count();
        if better < 5 {
            counts.top5_correct += 1;
        }
        let max = row[pred];
        let lse = max
            + row
                .iter()
                .map(|&v| ((v - max) as f64).exp())
                .sum::<f64>()
                .ln() as f32;
        counts.loss_sum += (lse - target) as f64;
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_known_confusion() {
        // 3 classes; rows = truth.
        let counts = EvalCounts {
            confusion: vec![vec![5, 0, 0], vec![2, 3, 0], vec![0, 1, 4]],
            top5_correct: 15,
            loss_sum: 3.0,
        };
        let r = counts.report(&["a".into(), "b".into(), "c".into()]);
        assert_eq!(r.samples, 15);
        assert!((r.accuracy - 12.0 / 15.0).abs() < 1e-12);
        assert!((r.per_class[0].precision - 5.0 / 7.0).abs() < 1e-12);
        assert!((r.per_class[1].recall - 3.0 / 5.0).abs() < 1e-12);
        let f1_c = 2.0 * 1.0 * 0.8 / 1.8;
        assert!((r.per_class[2].f1 - f1_c).abs() < 1e-12);
        assert!((r.loss - 0.2).abs() < 1e-12);
    }

    #[test]
    fn count_batch_top1_top5_and_loss() {
        let k = 6;
        let logits = [
            0.0, 5.0, 0.0, 0.0, 0.0, 0.0, // predicts 1, label 1
            6.0, 5.0, 4.0, 3.0, 2.0, 1.0, // label 5: rank 6, not in top-5
        ];
        let mut c = EvalCounts::new(k);
        count_batch(&logits, &[1, 5], k, &mut c);
        assert_eq!(c.confusion[1][1], 1);
        assert_eq!(c.confusion[5][0], 1);
        assert_eq!(c.top5_correct, 1);
        let l0 = (5.0f64.exp() + 5.0).ln() - 5.0;
        let l1 = (1..=6).map(|v| (v as f64).exp()).sum::<f64>().ln() - 1.0;
        assert!((c.loss_sum - (l0 + l1)).abs() < 1e-4);
    }
}
