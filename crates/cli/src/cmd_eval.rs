//! `resnet eval`.

use std::sync::Arc;

use anyhow::{Context, Result};
use resnet_train::{evaluate, load_model, resolve_checkpoint, EvalReport};

use crate::args::EvalArgs;
use crate::device::select;

/// Runs `resnet eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let sel = select(&args.device)?;
    let dir = resolve_checkpoint(&args.checkpoint)?;
    let (report, name) = crate::with_infer_backend!(sel, |B, device| {
        let (model, state) = load_model::<B>(&dir, &device)?;
        let mut cfg = state.config;
        if let Some(d) = &args.data {
            cfg.data.dir = d.clone();
        }
        cfg.data.download = false;
        if args.test_limit.is_some() {
            cfg.data.test_limit = args.test_limit;
        }
        // Only the test split is needed; keep training data small when it must be read anyway.
        cfg.data.train_limit = Some(1);
        let splits = cfg
            .data
            .load(cfg.seed, &mut |_, _| {})
            .with_context(|| format!("loading test data from {}", cfg.data.dir.display()))?;
        let test = Arc::new(splits.test);
        let counts = evaluate(
            &model,
            test.clone(),
            (0..test.len()).collect(),
            splits.norm,
            args.batch_size,
            2,
            &device,
        );
        (counts.report(&test.classes), test.name.clone())
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &name, &dir.display().to_string());
    }
    Ok(())
}

/// Human-readable evaluation report.
pub fn print_report(r: &EvalReport, data: &str, checkpoint: &str) {
    println!("checkpoint {checkpoint}");
    println!("data       {data} ({} images)", r.samples);
    println!(
        "accuracy   {:.4}   top-5 {:.4}   loss {:.4}",
        r.accuracy, r.top5, r.loss
    );
    println!(
        "macro      precision {:.4}   recall {:.4}   F1 {:.4}",
        r.macro_precision, r.macro_recall, r.macro_f1
    );
    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>8}",
        "class", "precision", "recall", "f1", "support"
    );
    for c in &r.per_class {
        println!(
            "{:<14} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            c.class, c.precision, c.recall, c.f1, c.support
        );
    }
    println!();
    println!("confusion matrix (rows: true, columns: predicted)");
    let w = r
        .confusion
        .iter()
        .flatten()
        .max()
        .map(|m| m.to_string().len())
        .unwrap_or(1)
        .max(3);
    print!("{:<14}", "");
    for i in 0..r.confusion.len() {
        print!(" {:>w$}", i);
    }
    println!();
    for (i, row) in r.confusion.iter().enumerate() {
        let name = r.per_class.get(i).map(|c| c.class.as_str()).unwrap_or("");
        print!("{:<14}", format!("{i} {name}"));
        for v in row {
            print!(" {v:>w$}");
        }
        println!();
    }
}
