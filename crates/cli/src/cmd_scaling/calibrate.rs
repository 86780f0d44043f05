//! `resnet scaling --calibrate FILE`: the model's predictions against test-bed runs
//! (`scripts/netbed.sh` JSON lines). Each group of runs with the same width, batch and worker
//! count needs an unthrottled (`rate: off`) run: its step is the compute the model adds the
//! all-reduce to (it already holds the veth transfer, which is small next to a throttled one).
//! Runs with `"overlap": "on"` (and their `bucket_mb`) are compared with the model's overlapped
//! step for that bucket size, the others with its step without overlap.
//!
//! (Over 400 lines with its unit tests; the code is ~280.)

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use resnet_collective::cost::{self, Compute};
use serde::Serialize;

use super::{topology, Layers, ScalingArgs};

/// One test-bed run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    width: usize,
    batch: usize,
    workers: usize,
    rate: String,
    /// Overlapped all-reduce: its bucket size, MB (None: all-reduce after the backward).
    overlap_mb: Option<f64>,
    /// Seconds per step: global batch / images per second.
    step_s: f64,
}

/// Parses the runs of a netbed JSONL file; failed runs (`ok: false`) are counted, not used.
pub(crate) fn parse(text: &str, path: &Path, a: &ScalingArgs) -> Result<(Vec<Run>, usize)> {
    let (mut runs, mut failed) = (vec![], 0);
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        if v.get("ok").and_then(|o| o.as_bool()) == Some(false) {
            failed += 1;
            continue;
        }
        let field = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
        let rate = v
            .get("rate")
            .and_then(|r| r.as_str())
            .with_context(|| format!("{}: no \"rate\" (e.g. \"1gbit\" or \"off\")", at()))?;
        let workers = field("workers")
            .filter(|&w| w >= 1)
            .with_context(|| format!("{}: no \"workers\" count", at()))?;
        let ips: Vec<f64> = v
            .get("images_per_sec")
            .and_then(|x| x.as_array())
            .map(|xs| xs.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        anyhow::ensure!(
            !ips.is_empty() && ips.iter().all(|&x| x > 0.0),
            "{}: \"images_per_sec\" must list positive numbers",
            at()
        );
        let ips = ips.iter().sum::<f64>() / ips.len() as f64;
        let batch = field("batch_size").unwrap_or(a.shape.batch_size);
        let overlap_mb = match v.get("overlap").and_then(|o| o.as_str()) {
            None | Some("off") => None,
            Some("on") => Some(
                v.get("bucket_mb")
                    .and_then(|b| b.as_f64())
                    .filter(|b| *b > 0.0)
                    .with_context(|| {
                        format!(
                            "{}: \"overlap\": \"on\" needs a positive \"bucket_mb\"",
                            at()
                        )
                    })?,
            ),
            Some(o) => anyhow::bail!("{}: \"overlap\": \"{o}\": expected \"on\" or \"off\"", at()),
        };
        runs.push(Run {
            width: field("width").unwrap_or(a.shape.width),
            batch,
            workers,
            rate: rate.to_string(),
            overlap_mb,
            step_s: (workers * batch) as f64 / ips,
        });
    }
    Ok((runs, failed))
}

/// The median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One compared cell.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    width: usize,
    batch: usize,
    workers: usize,
    rate: String,
    runs: usize,
    /// The runs' overlap bucket size, MB (None: no overlap).
    overlap_mb: Option<f64>,
    /// Median measured step, seconds.
    measured_s: f64,
    /// The unthrottled step the prediction starts from.
    off_s: f64,
    /// Predicted step in the runs' mode: without overlap, off + the ring all-reduce; with it,
    /// off + what the buckets leave exposed.
    predicted_s: f64,
    /// (predicted - measured) / measured.
    error: f64,
    /// Predicted step with the all-reduce bucketed (at the runs' bucket size, or
    /// `--bucket-mb`) and overlapped with the backward.
    overlap_predicted_s: f64,
    /// Predicted step without overlap.
    flat_predicted_s: f64,
}

/// Runs the comparison.
pub(crate) fn run(a: &ScalingArgs, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let (runs, failed) = parse(&text, path, a)?;
    anyhow::ensure!(!runs.is_empty(), "{path:?} holds no successful run");
    let rows = compare(a, &runs).with_context(|| format!("{path:?}"))?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{} runs from {} ({} failed, not used); wire efficiency {}, latency {} µs per ring step",
        runs.len(),
        path.display(),
        failed,
        a.wire_efficiency,
        a.network_latency_us
    );
    print_rows(&rows);
    Ok(())
}

/// A cell: width, batch, workers, link, overlap bucket size in kB (None: off).
type Cell = (usize, usize, usize, String, Option<u64>);

/// Predicts every throttled cell of `runs` from its group's unthrottled step (runs at
/// `rate: off` without overlap, or with it when there are none without).
pub(crate) fn compare(a: &ScalingArgs, runs: &[Run]) -> Result<Vec<Row>> {
    let kb = |mb: Option<f64>| mb.map(|m| (m * 1e3).round() as u64);
    let mut cells: BTreeMap<Cell, Vec<f64>> = BTreeMap::new();
    for r in runs {
        cells
            .entry((
                r.width,
                r.batch,
                r.workers,
                r.rate.clone(),
                kb(r.overlap_mb),
            ))
            .or_default()
            .push(r.step_s);
    }
    let mut layers_of: BTreeMap<usize, Layers> = BTreeMap::new();
    let mut rows = vec![];
    for ((width, batch, workers, rate, bucket_kb), steps) in &cells {
        if rate == "off" {
            continue;
        }
        let off: Vec<f64> = match cells.get(&(*width, *batch, *workers, "off".into(), None)) {
            Some(off) => off.clone(),
            None => cells
                .iter()
                .filter(|((w, b, n, r, _), _)| {
                    (w, b, n, r.as_str()) == (width, batch, workers, "off")
                })
                .flat_map(|(_, s)| s.iter().copied())
                .collect(),
        };
        anyhow::ensure!(
            !off.is_empty(),
            "no `off` run for width {width}, batch {batch}, {workers} workers: the model needs \
             one as the compute it adds the all-reduce to"
        );
        let off_s = median(off);
        if !layers_of.contains_key(width) {
            let shape = crate::args::ModelShapeArgs {
                width: *width,
                ..a.shape.clone()
            };
            let cfg = shape.config(a.num_classes)?;
            layers_of.insert(*width, Layers::of(&cfg, a.shape.image_size)?);
        }
        let layers = &layers_of[width];
        let topo = topology(a, 1, rate)?;
        // The unthrottled step, split into forward and backward by multiply-adds: where the
        // overlapped buckets become ready.
        let shares = layers.backward_shares_by_macs();
        let (fwd, bwd) = (
            layers.forward_macs(),
            shares.iter().map(|s| s.1).sum::<f64>(),
        );
        let compute = Compute {
            forward_s: off_s * fwd / (fwd + bwd),
            backward_s: off_s * bwd / (fwd + bwd),
            optimizer_s: 0.0,
        };
        let grads = Layers::grads(&shares, compute.backward_s);
        let bucket_mb = bucket_kb.map_or(a.bucket_mb, |k| k as f64 / 1e3);
        let p = cost::predict(*workers, &topo, &compute, &grads, bucket_mb * 1e6);
        let measured_s = median(steps.clone());
        let predicted_s = match bucket_kb {
            None => p.step_s,
            Some(_) => p.overlap_step_s,
        };
        rows.push(Row {
            width: *width,
            batch: *batch,
            workers: *workers,
            rate: rate.clone(),
            runs: steps.len(),
            overlap_mb: bucket_kb.map(|k| k as f64 / 1e3),
            measured_s,
            off_s,
            predicted_s,
            error: (predicted_s - measured_s) / measured_s,
            overlap_predicted_s: p.overlap_step_s,
            flat_predicted_s: p.step_s,
        });
    }
    Ok(rows)
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:>5} {:>5} {:>7} {:>9} {:>9} {:>4} | {:>9} {:>9} {:>9} {:>7} | {:>9} {:>9}",
        "width",
        "batch",
        "workers",
        "link",
        "overlap",
        "runs",
        "off",
        "measured",
        "predicted",
        "error",
        "no overlap",
        "overlap"
    );
    for r in rows {
        let overlap = r.overlap_mb.map_or("no".to_string(), |m| format!("{m} MB"));
        println!(
            "{:>5} {:>5} {:>7} {:>9} {:>9} {:>4} | {:>7.3} s {:>7.3} s {:>7.3} s {:>+6.1}% | {:>8.3} s {:>7.3} s",
            r.width,
            r.batch,
            r.workers,
            r.rate,
            overlap,
            r.runs,
            r.off_s,
            r.measured_s,
            r.predicted_s,
            100.0 * r.error,
            r.flat_predicted_s,
            r.overlap_predicted_s
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> ScalingArgs {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: ScalingArgs,
        }
        let argv = ["scaling", "--width", "8", "--batch-size", "4"];
        let argv = argv.into_iter().chain(extra.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").a
    }

    fn line(rate: &str, workers: usize, ips: f64) -> String {
        format!("{{\"rate\": \"{rate}\", \"workers\": {workers}, \"ok\": true, \"images_per_sec\": [{ips}]}}")
    }

    #[test]
    fn runs_parse_with_defaults_and_failures_are_counted() {
        let a = args(&[]);
        let text = [
            line("off", 2, 80.0),
            String::new(),
            "{\"rate\": \"1gbit\", \"workers\": 2, \"ok\": false}".into(),
            "{\"width\": 16, \"batch_size\": 8, \"rate\": \"1gbit\", \"workers\": 3, \"images_per_sec\": [20, 30]}".into(),
        ]
        .join("\n");
        let (runs, failed) = parse(&text, Path::new("bed.jsonl"), &a).expect("parse");
        assert_eq!(failed, 1);
        assert_eq!(runs.len(), 2);
        // 2 workers x batch 4 at 80 images/s: 0.1 s a step; the second line's own width and
        // batch, its two epochs averaged: 24 images at 25 images/s.
        assert_eq!((runs[0].width, runs[0].batch, runs[0].step_s), (8, 4, 0.1));
        assert_eq!(
            (runs[1].width, runs[1].batch, runs[1].step_s),
            (16, 8, 0.96)
        );

        for (bad, says) in [
            ("not json", "bed.jsonl:1: not JSON"),
            (
                "{\"workers\": 2, \"images_per_sec\": [1]}",
                "bed.jsonl:1: no \"rate\"",
            ),
            (
                "{\"rate\": \"off\", \"images_per_sec\": [1]}",
                "bed.jsonl:1: no \"workers\"",
            ),
            (
                "{\"rate\": \"off\", \"workers\": 2, \"images_per_sec\": [0]}",
                "positive",
            ),
        ] {
            let e = parse(bad, Path::new("bed.jsonl"), &a)
                .err()
                .map(|e| format!("{e:#}"));
            assert!(
                e.as_deref().is_some_and(|e| e.contains(says)),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn a_throttled_cell_is_its_off_step_plus_the_ring() {
        let a = args(&[]);
        let shape = crate::args::ModelShapeArgs { ..a.shape.clone() };
        let bytes = Layers::of(&shape.config(10).expect("config"), 32)
            .expect("layers")
            .bytes();
        // 3 workers at 1 Gbit/s: 2*2/3 * bytes / 125e6 s plus 4 ring steps of 5 us.
        let ring = 4.0 / 3.0 * bytes / 125e6 + 4.0 * 5e-6;
        let run = |rate: &str, step_s| Run {
            width: 8,
            batch: 4,
            workers: 3,
            rate: rate.into(),
            overlap_mb: None,
            step_s,
        };
        let runs = [
            run("off", 0.2),
            run("off", 0.4),
            run("off", 0.3),
            run("1gbit", 0.5),
        ];
        let rows = compare(&a, &runs).expect("compare");
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.off_s, r.measured_s, r.runs), (0.3, 0.5, 1));
        assert!((r.predicted_s - (0.3 + ring)).abs() < 1e-12);
        assert!((r.error - (0.3 + ring - 0.5) / 0.5).abs() < 1e-12);
        // At width 8 the gradients are far below one 25 MB bucket: overlap changes nothing.
        assert!((r.overlap_predicted_s - r.predicted_s).abs() < 1e-12);

        let e = compare(&a, &runs[3..]).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("no `off` run for width 8, batch 4, 3 workers")));
    }

    #[test]
    fn overlapped_runs_are_compared_with_the_overlap_prediction_at_their_bucket_size() {
        // Width 64: 44.7 MB of gradients, so the bucket size matters.
        let a = args(&[]);
        let text = [
            "{\"width\": 64, \"batch_size\": 4, \"rate\": \"off\", \"workers\": 2, \"images_per_sec\": [8]}",
            "{\"width\": 64, \"batch_size\": 4, \"rate\": \"1gbit\", \"workers\": 2, \"images_per_sec\": [5]}",
            "{\"overlap\": \"on\", \"bucket_mb\": 5, \"width\": 64, \"batch_size\": 4, \"rate\": \"1gbit\", \"workers\": 2, \"images_per_sec\": [7]}",
            "{\"overlap\": \"on\", \"bucket_mb\": 25, \"width\": 64, \"batch_size\": 4, \"rate\": \"1gbit\", \"workers\": 2, \"images_per_sec\": [6]}",
        ]
        .join("\n");
        let (runs, _) = parse(&text, Path::new("bed.jsonl"), &a).expect("parse");
        assert_eq!(runs[2].overlap_mb, Some(5.0));
        let rows = compare(&a, &runs).expect("compare");
        assert_eq!(rows.len(), 3);
        let (flat, five, big) = (&rows[0], &rows[1], &rows[2]);
        assert_eq!(
            (flat.overlap_mb, five.overlap_mb, big.overlap_mb),
            (None, Some(5.0), Some(25.0))
        );
        // Each row's prediction is its own mode's; the flat one is the same for all.
        assert_eq!(flat.predicted_s, flat.flat_predicted_s);
        assert_eq!(five.predicted_s, five.overlap_predicted_s);
        assert_eq!(five.flat_predicted_s, flat.predicted_s);
        // Smaller buckets leave less exposed; both beat no overlap.
        assert!(five.predicted_s < big.predicted_s && big.predicted_s < flat.predicted_s);
        assert_eq!((five.measured_s, five.off_s), (8.0 / 7.0, 1.0));

        let bad =
            "{\"overlap\": \"yes\", \"rate\": \"off\", \"workers\": 2, \"images_per_sec\": [1]}";
        let e = parse(bad, Path::new("bed.jsonl"), &a)
            .err()
            .map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("expected \"on\" or \"off\"")));
        let bad =
            "{\"overlap\": \"on\", \"rate\": \"off\", \"workers\": 2, \"images_per_sec\": [1]}";
        let e = parse(bad, Path::new("bed.jsonl"), &a)
            .err()
            .map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("needs a positive \"bucket_mb\"")));
    }
}
