//! The pictures of `resnet report`, drawn with plotters into RGB buffers and saved as PNG.
//!
//! Text uses DejaVu Sans compiled into the binary (the `dejavu` crate), so reports render the
//! same on a bare server as on a laptop: no system fonts or fontconfig are read.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

/// One epoch's numbers for the curves.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// Epoch (1-based).
    pub epoch: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
    /// Test loss, when evaluated.
    pub test_loss: Option<f64>,
    /// Test accuracy, when evaluated.
    pub test_accuracy: Option<f64>,
}

/// A picture in a grid: an image with a caption; wrong predictions get a red frame.
#[derive(Debug, Clone)]
pub struct Tile {
    /// `[3, h, w]` u8 planes, as datasets store them.
    pub pixels: Vec<u8>,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Caption lines under the image.
    pub caption: [String; 2],
    /// Whether the prediction was wrong.
    pub wrong: bool,
}

const FONT: &str = "sans-serif";
const BLUE: RGBColor = RGBColor(8, 48, 107);
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const TEST: RGBColor = RGBColor(214, 39, 40);
const GOOD: RGBColor = RGBColor(44, 160, 44);

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu Sans font did not load"));
    });
    result
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Draws into a white `w` x `h` RGB canvas with `draw`, then writes `path` as PNG.
fn render(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("canvas size mismatch")?;
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Size of `curves.png`.
pub const CURVES_SIZE: (u32, u32) = (1200, 450);

/// Loss (left) and accuracy (right) per epoch, training and test.
pub fn curves(path: &Path, points: &[CurvePoint]) -> Result<()> {
    render(path, CURVES_SIZE, |root| {
        let (left, right) = root.split_horizontally(CURVES_SIZE.0 / 2);
        let series = |p: &CurvePoint| {
            [
                (Some(p.train_loss), p.test_loss),
                (Some(p.train_accuracy), p.test_accuracy),
            ]
        };
        for (i, (area, title)) in [(left, "loss"), (right, "accuracy")].iter().enumerate() {
            let train: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| series(p)[i].0.map(|v| (p.epoch, v)))
                .collect();
            let test: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| series(p)[i].1.map(|v| (p.epoch, v)))
                .collect();
            let ys = train.iter().chain(&test).map(|p| p.1);
            let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
            let (lo, hi) = if i == 1 {
                (0.0, 1.0)
            } else if lo.is_finite() {
                (0.0f64.min(lo), hi * 1.05 + 1e-9)
            } else {
                (0.0, 1.0)
            };
            let last = points.last().map_or(1.0, |p| p.epoch).max(1.0);
            let mut chart = ChartBuilder::on(area)
                .caption(*title, (FONT, 24))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.5..last + 0.5, lo..hi)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style((FONT, 14))
                .draw()
                .map_err(plot_err)?;
            for (data, color, name) in [(train, TRAIN, "train"), (test, TEST, "test")] {
                if data.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(plot_err)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// One line of `steps.jsonl` as drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPoint {
    /// Global step.
    pub step: f64,
    /// Mean training loss over the line's steps (None: no finite step).
    pub loss: Option<f64>,
    /// Learning rate (None: the line does not say, e.g. a coordinator's heartbeat line).
    pub lr: Option<f64>,
}

/// Size of `steps.png`.
pub const STEPS_SIZE: (u32, u32) = (1200, 450);

/// Training loss (left) and learning rate (right) per step; the LR panel stays empty when no
/// line carries one.
pub fn steps(path: &Path, points: &[StepPoint]) -> Result<()> {
    render(path, STEPS_SIZE, |root| {
        let (left, right) = root.split_horizontally(STEPS_SIZE.0 / 2);
        let last = points.iter().map(|p| p.step).fold(1.0, f64::max);
        for (area, title, data) in [
            (
                left,
                "training loss per step",
                points
                    .iter()
                    .filter_map(|p| p.loss.map(|v| (p.step, v)))
                    .collect::<Vec<_>>(),
            ),
            (
                right,
                "learning rate",
                points
                    .iter()
                    .filter_map(|p| p.lr.map(|v| (p.step, v)))
                    .collect::<Vec<_>>(),
            ),
        ] {
            let hi = data.iter().map(|p| p.1).fold(0.0, f64::max);
            let hi = if hi > 0.0 && hi.is_finite() {
                hi * 1.05
            } else {
                1.0
            };
            let mut chart = ChartBuilder::on(&area)
                .caption(title, (FONT, 24))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..last * 1.02, 0.0..hi)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 14))
                .draw()
                .map_err(plot_err)?;
            chart
                .draw_series(LineSeries::new(data.clone(), TRAIN.stroke_width(2)))
                .map_err(plot_err)?;
            if data.len() <= 50 {
                chart
                    .draw_series(data.iter().map(|&p| Circle::new(p, 3, TRAIN.filled())))
                    .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

/// Where the confusion matrix's cells are: left/top corner of cell (0, 0) and the cell side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeatmapLayout {
    /// x of the first column.
    pub x0: u32,
    /// y of the first row.
    pub y0: u32,
    /// Cell side in pixels.
    pub cell: u32,
    /// Canvas size.
    pub size: (u32, u32),
}

impl HeatmapLayout {
    /// The layout for `k` classes.
    pub fn for_classes(k: usize) -> Self {
        let cell = (720 / k.max(1) as u32).clamp(6, 60);
        let (x0, y0) = (170, 90);
        let side = cell * k as u32;
        Self {
            x0,
            y0,
            cell,
            size: (x0 + side + 30, y0 + side + 30),
        }
    }

    /// Centre pixel of cell (`row`, `col`).
    pub fn centre(&self, row: usize, col: usize) -> (u32, u32) {
        (
            self.x0 + col as u32 * self.cell + self.cell / 2,
            self.y0 + row as u32 * self.cell + self.cell / 2,
        )
    }
}

/// Cell colour: white for none of the row's samples, dark blue for all of them.
pub fn heat(fraction: f64) -> RGBColor {
    let t = fraction.clamp(0.0, 1.0);
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    RGBColor(mix(255, BLUE.0), mix(255, BLUE.1), mix(255, BLUE.2))
}

/// Confusion matrix heatmap: rows are true classes, columns predictions; colour is the share of
/// the row (recall for the diagonal), the number is the count (drawn when cells are big enough).
pub fn confusion(path: &Path, matrix: &[Vec<u64>], classes: &[String]) -> Result<HeatmapLayout> {
    let k = matrix.len();
    let lay = HeatmapLayout::for_classes(k);
    render(path, lay.size, |root| {
        root.draw(&Text::new(
            "confusion matrix (rows: true class, columns: predicted)",
            (lay.x0 as i32, 20),
            (FONT, 18).into_font(),
        ))
        .map_err(plot_err)?;
        let label = (FONT, (lay.cell as f64 * 0.45).clamp(9.0, 14.0)).into_font();
        for (r, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (c, &v) in row.iter().enumerate() {
                let x = (lay.x0 + c as u32 * lay.cell) as i32;
                let y = (lay.y0 + r as u32 * lay.cell) as i32;
                let frac = if total > 0 {
                    v as f64 / total as f64
                } else {
                    0.0
                };
                let cell = lay.cell as i32;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    heat(frac).filled(),
                ))
                .map_err(plot_err)?;
                if lay.cell >= 24 && v > 0 {
                    let ink = if frac > 0.5 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        v.to_string(),
                        (x + 3, y + cell / 2 - 6),
                        label.clone().color(&ink),
                    ))
                    .map_err(plot_err)?;
                }
            }
            if lay.cell >= 9 {
                let name = classes.get(r).map_or(String::new(), |s| s.clone());
                let y = (lay.y0 + r as u32 * lay.cell + lay.cell / 2) as i32 - 6;
                root.draw(&Text::new(format!("{r} {name}"), (8, y), label.clone()))
                    .map_err(plot_err)?;
                let x = (lay.x0 + r as u32 * lay.cell + 2) as i32;
                root.draw(&Text::new(
                    r.to_string(),
                    (x, lay.y0 as i32 - 18),
                    label.clone(),
                ))
                .map_err(plot_err)?;
            }
        }
        let side = (lay.cell * k as u32) as i32;
        root.draw(&Rectangle::new(
            [
                (lay.x0 as i32, lay.y0 as i32),
                (lay.x0 as i32 + side, lay.y0 as i32 + side),
            ],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?;
        Ok(())
    })?;
    Ok(lay)
}

/// Pixel magnification of grid images.
pub const TILE_SCALE: usize = 4;
const CAPTION: u32 = 36;
const GAP: u32 = 10;

/// Canvas size of a grid of `n` tiles of `h` x `w` images in `cols` columns.
pub fn grid_size(n: usize, cols: usize, h: usize, w: usize) -> (u32, u32) {
    let cols = cols.min(n).max(1) as u32;
    let rows = n.div_ceil(cols as usize).max(1) as u32;
    let tw = (w * TILE_SCALE) as u32 + GAP;
    let th = (h * TILE_SCALE) as u32 + CAPTION + GAP;
    (cols * tw + GAP, rows * th + GAP + 30)
}

/// A grid of images with captions under each; a red frame marks wrong predictions, a green
/// one right predictions.
pub fn image_grid(path: &Path, title: &str, tiles: &[Tile], cols: usize) -> Result<()> {
    let (h, w) = tiles.first().map_or((32, 32), |t| (t.h, t.w));
    let size = grid_size(tiles.len(), cols, h, w);
    let cols = cols.min(tiles.len()).max(1);
    render(path, size, |root| {
        root.draw(&Text::new(title, (GAP as i32, 8), (FONT, 18).into_font()))
            .map_err(plot_err)?;
        let tw = (w * TILE_SCALE) as u32 + GAP;
        let th = (h * TILE_SCALE) as u32 + CAPTION + GAP;
        for (i, t) in tiles.iter().enumerate() {
            let x0 = (GAP + (i % cols) as u32 * tw) as i32;
            let y0 = (30 + GAP + (i / cols) as u32 * th) as i32;
            let plane = t.h * t.w;
            let pixels =
                (0..t.h * TILE_SCALE).flat_map(|y| (0..t.w * TILE_SCALE).map(move |x| (x, y)));
            for (x, y) in pixels {
                let i = (y / TILE_SCALE) * t.w + x / TILE_SCALE;
                let c = RGBColor(t.pixels[i], t.pixels[plane + i], t.pixels[2 * plane + i]);
                root.draw_pixel((x0 + x as i32, y0 + y as i32), &c)
                    .map_err(plot_err)?;
            }
            let frame = if t.wrong { TEST } else { GOOD };
            let (fw, fh) = ((t.w * TILE_SCALE) as i32, (t.h * TILE_SCALE) as i32);
            root.draw(&Rectangle::new(
                [(x0 - 2, y0 - 2), (x0 + fw + 1, y0 + fh + 1)],
                frame.stroke_width(2),
            ))
            .map_err(plot_err)?;
            for (line, text) in t.caption.iter().enumerate() {
                let ink = if line == 1 && t.wrong { TEST } else { BLACK };
                root.draw(&Text::new(
                    text.clone(),
                    (x0, y0 + fh + 4 + 15 * line as i32),
                    (FONT, 13).into_font().color(&ink),
                ))
                .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}
