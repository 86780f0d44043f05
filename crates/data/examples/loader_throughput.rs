//! How many augmented images per second the batch loader delivers, per loader-thread count:
//! the ceiling the data pipeline puts on a GPU replica (PyTorch trains ResNet-18's CIFAR stem at
//! ~20,000 images/s on an H200, benchmarks/RESULTS.md).
//!
//!     cargo run --release -p resnet-data --example loader_throughput -- [IMAGES] [BATCH] [WORKERS...]
//!
//! Defaults: 50,000 synthetic 32x32 images (CIFAR-10's training set size), batch 256, 1 and 2
//! loader threads; each count runs one epoch with the default augmentation (pad-4 crop + flip)
//! and one with every augmentation on (rotation, zoom, colour jitter, cutout).

use std::sync::Arc;
use std::time::Instant;

use resnet_data::{synthetic, AugmentConfig, Loader, LoaderConfig, Transform};

fn arg(args: &[String], i: usize, default: usize) -> usize {
    match args.get(i) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!(
                "argument {i} ({v:?}) is not a whole number; usage: [IMAGES] [BATCH] [WORKERS...]"
            );
            std::process::exit(2)
        }),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = arg(&args, 0, 50_000);
    let batch = arg(&args, 1, 256).max(1);
    let workers: Vec<usize> = if args.len() > 2 {
        (2..args.len()).map(|i| arg(&args, i, 1)).collect()
    } else {
        vec![1, 2]
    };
    let ds = Arc::new(synthetic(n, 32, 1, true));
    let norm = ds.channel_stats();
    let heavy = AugmentConfig {
        rotation: 15.0,
        scale: 0.1,
        brightness: 0.2,
        contrast: 0.2,
        saturation: 0.2,
        cutout: 16,
        ..AugmentConfig::default()
    };
    println!("{n} images of 32x32, batch {batch}");
    for (name, augment) in [("crop+flip", AugmentConfig::default()), ("all", heavy)] {
        for &w in &workers {
            let cfg = LoaderConfig {
                batch_size: batch,
                workers: w,
                prefetch: 2,
                drop_last: true,
            };
            let tf = Transform {
                augment: augment.clone(),
                norm,
                seed: 7,
                epoch: 0,
            };
            let t0 = Instant::now();
            let mut images = 0usize;
            for b in Loader::new(ds.clone(), (0..n).collect(), &cfg, tf, 0) {
                images += b.n;
            }
            let s = t0.elapsed().as_secs_f64();
            println!(
                "augment {name:9} loader threads {w}: {images} images in {s:.2} s = {:.0} images/s",
                images as f64 / s
            );
        }
    }
}
