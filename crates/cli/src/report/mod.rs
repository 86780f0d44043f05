//! `resnet report`: pictures of a finished (or running) run: loss and accuracy curves per epoch
//! and per step, the confusion-matrix heatmap, a grid of test predictions and the most
//! confident mistakes, plus `report.json` with the evaluation the pictures were drawn from.
//! A run that never finished an epoch (e.g. `--max-steps`) has no epoch curves but still its
//! step curves and the evaluation of its checkpoint.

pub mod draw;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use resnet_train::{count_batch, load_model, predict, resolve_checkpoint, EvalCounts, EvalReport};
use serde::Serialize;

use crate::args::DeviceArgs;
use crate::device::select;
use draw::{CurvePoint, StepPoint, Tile};

/// `resnet report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory (of `resnet train` or `coordinator`): reads metrics.jsonl and the newest
    /// checkpoint.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Evaluate this checkpoint instead of the run's newest.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Where the pictures go [default: <run>/report].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Data directory; default: the one recorded in the run's config.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Evaluate only the first N test records.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Test images in the prediction grid (the first N of the test split).
    #[arg(long, default_value_t = 32)]
    pub grid: usize,
    /// Most confident mistakes to show.
    #[arg(long, default_value_t = 16)]
    pub mistakes: usize,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Device selection.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `report.json`: what the pictures show.
#[derive(Debug, Serialize)]
pub struct ReportSummary {
    /// The evaluated checkpoint.
    pub checkpoint: PathBuf,
    /// The evaluation drawn in confusion.png (same numbers as `resnet eval --json`).
    pub eval: EvalReport,
    /// Epochs plotted in curves.png (0: no epoch had finished; no curves.png).
    pub epochs: usize,
    /// Lines of steps.jsonl plotted in steps.png (0: none; no steps.png).
    pub step_lines: usize,
    /// Files written.
    pub files: Vec<PathBuf>,
}

const COLS: usize = 8;

/// Runs `resnet report`.
pub fn run(args: ReportArgs) -> Result<()> {
    let sel = select(&args.device)?;
    let kernels = crate::kernels::choose(&args.device)?;
    let out = args.out.clone().unwrap_or_else(|| args.run.join("report"));
    // Everything is read before the report directory is made: a run that cannot be reported
    // on leaves nothing behind.
    let points = read_curves(&args.run.join("metrics.jsonl"))?;
    let step_points = read_steps(&args.run.join(resnet_train::STEP_LOG))?;
    if points.is_empty() {
        crate::say!("no epoch has finished in this run: no epoch curves (curves.png)");
    }
    let ckpt = resolve_checkpoint(args.checkpoint.as_deref().unwrap_or(&args.run))?;
    let (test, logits) = crate::with_infer_backend!(sel, |B, device| {
        let (model, state) = load_model::<B>(&ckpt, &device)?;
        let model = model.with_kernels(kernels);
        let (test, norm, _) =
            crate::cmd_eval::load_test(&state.config, args.data.as_ref(), args.test_limit)?;
        crate::say!("evaluating {} test images ...", test.len());
        let logits = predict(&model, test.clone(), norm, args.batch_size, &device);
        (test, logits)
    });
    if test.is_empty() {
        bail!("{} has no test images to report on", test.name);
    }
    let k = test.classes.len();
    let mut counts = EvalCounts::new(k);
    count_batch(&logits, &test.labels, k, &mut counts);
    let eval = counts.report(&test.classes);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    let mut file = |name: &str| {
        let p = out.join(name);
        files.push(p.clone());
        p
    };
    if !points.is_empty() {
        draw::curves(&file("curves.png"), &points)?;
    }
    if !step_points.is_empty() {
        draw::steps(&file("steps.png"), &step_points)?;
    }
    draw::confusion(&file("confusion.png"), &eval.confusion, &test.classes)?;
    let preds = predictions(&logits, k);
    let first: Vec<usize> = (0..test.len().min(args.grid)).collect();
    let tiles = make_tiles(&test, &preds, &first);
    draw::image_grid(
        &file("predictions.png"),
        &format!(
            "first {} test images: true / predicted (red: wrong)",
            tiles.len()
        ),
        &tiles,
        COLS,
    )?;
    let worst = confident_mistakes(&preds, &test.labels, args.mistakes);
    if !worst.is_empty() {
        let tiles = make_tiles(&test, &preds, &worst);
        draw::image_grid(
            &file("mistakes.png"),
            &format!("{} most confident mistakes", tiles.len()),
            &tiles,
            COLS,
        )?;
    }
    let summary = ReportSummary {
        checkpoint: ckpt,
        eval,
        epochs: points.len(),
        step_lines: step_points.len(),
        files,
    };
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    for f in &summary.files {
        println!("{}", f.display());
    }
    println!("{}", path.display());
    Ok(())
}

/// Reads the curves from a `resnet train` or `coordinator` metrics.jsonl (both carry epoch,
/// train_loss, train_accuracy and an optional test object with loss and accuracy). A missing
/// file is a run that has not finished an epoch: no points.
pub fn read_curves(path: &Path) -> Result<Vec<CurvePoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut points = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let num = |field: &str| {
            v.get(field).and_then(|x| x.as_f64()).with_context(|| {
                format!(
                    "{} line {}: missing number '{field}'",
                    path.display(),
                    i + 1
                )
            })
        };
        let test = |field: &str| {
            v.get("test")
                .and_then(|t| t.get(field))
                .and_then(|x| x.as_f64())
        };
        points.push(CurvePoint {
            epoch: num("epoch")?,
            train_loss: num("train_loss")?,
            train_accuracy: num("train_accuracy")?,
            test_loss: test("loss"),
            test_accuracy: test("accuracy"),
        });
    }
    Ok(points)
}

/// Reads `steps.jsonl` (missing: no points); a malformed line is an error naming it.
pub fn read_steps(path: &Path) -> Result<Vec<StepPoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let r: resnet_train::StepRecord = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a step record", path.display(), i + 1))?;
            Ok(StepPoint {
                step: r.step as f64,
                loss: r.loss,
                lr: r.lr,
            })
        })
        .collect()
}

/// (predicted class, its softmax probability) per image.
fn predictions(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    logits
        .chunks_exact(k)
        .map(|row| {
            let p = resnet_train::argmax(row);
            let sum: f32 = row.iter().map(|v| (v - row[p]).exp()).sum();
            (p, 1.0 / sum)
        })
        .collect()
}

/// Indices of wrong predictions, most confident first (ties: lower index first).
pub fn confident_mistakes(preds: &[(usize, f32)], labels: &[u16], n: usize) -> Vec<usize> {
    let mut wrong: Vec<usize> = (0..preds.len())
        .filter(|&i| preds[i].0 != labels[i] as usize)
        .collect();
    wrong.sort_by(|&a, &b| preds[b].1.total_cmp(&preds[a].1).then(a.cmp(&b)));
    wrong.truncate(n);
    wrong
}

fn make_tiles(ds: &resnet_data::ImageDataset, preds: &[(usize, f32)], idx: &[usize]) -> Vec<Tile> {
    let name = |c: usize| ds.classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    idx.iter()
        .map(|&i| {
            let (p, prob) = preds[i];
            let truth = ds.labels[i] as usize;
            Tile {
                pixels: ds.image(i).to_vec(),
                h: ds.height,
                w: ds.width,
                caption: [
                    format!("true {}", name(truth)),
                    format!("pred {} {:.2}", name(p), prob),
                ],
                wrong: p != truth,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::draw::{confusion, grid_size, heat, HeatmapLayout};
    use super::*;

    #[test]
    fn heatmap_cells_show_the_matrix_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.png");
        let m = vec![vec![9, 1, 0], vec![0, 5, 5], vec![2, 0, 0]];
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let lay = confusion(&path, &m, &names).expect("drawn");
        let img = image::open(&path).expect("png").to_rgb8();
        assert_eq!(img.dimensions(), lay.size);
        // Sample each cell's corner area (away from the number) and compare with the colour
        // of its share of the row.
        for (r, row) in m.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (c, &v) in row.iter().enumerate() {
                let (cx, cy) = lay.centre(r, c);
                let px = img.get_pixel(cx + lay.cell / 2 - 3, cy + lay.cell / 2 - 3);
                let want = heat(v as f64 / total as f64);
                assert_eq!(px.0, [want.0, want.1, want.2], "cell ({r},{c}) = {v}");
            }
        }
        assert_eq!(HeatmapLayout::for_classes(3).size, lay.size);
        assert_eq!(grid_size(10, 8, 32, 32), (8 * 138 + 10, 2 * 174 + 40));
    }

    #[test]
    fn mistakes_are_ordered_by_confidence() {
        let preds = vec![(1, 0.9), (0, 0.99), (2, 0.6), (1, 0.95)];
        let labels = [0u16, 0, 1, 0];
        assert_eq!(confident_mistakes(&preds, &labels, 10), vec![3, 0, 2]);
        assert_eq!(confident_mistakes(&preds, &labels, 1), vec![3]);
    }
}
