//! The training toolbox end to end through the `resnet` binary: augmentation and Mixup/CutMix
//! stay deterministic across resume, `schedule` prints what the trainer uses, ensembles average
//! members, `report` draws its pictures from the evaluation, `sweep` ranks reproducible trials.

mod common;

use std::path::Path;

use common::{resnet, resnet_ok as ok};
use serde_json::Value;

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

const TINY: &[&str] = &[
    "train",
    "--width",
    "4",
    "--batch-size",
    "16",
    "--train-limit",
    "96",
    "--test-limit",
    "40",
    "--epochs",
    "2",
    "--lr",
    "0.05",
    "--json",
];

fn train(out: &Path, extra: &[&str]) -> Value {
    let mut args = TINY.to_vec();
    args.extend(["--out", out.to_str().expect("utf8")]);
    args.extend(extra);
    json(&ok(&args))
}

const TOOLBOX: &[&str] = &[
    "--mixup",
    "0.4",
    "--cutmix",
    "1.0",
    "--cutout",
    "8",
    "--rotation",
    "10",
    "--scale",
    "0.1",
    "--color-jitter",
    "0.3,0.3,0.3",
    "--dropout",
    "0.1",
    "--label-smoothing",
    "0.1",
    "--schedule",
    "plateau",
    "--patience",
    "0",
];

/// Every new augmentation, Mixup/CutMix, dropout and the plateau schedule at once: a run
/// stopped after 4 steps and resumed ends bit-identical to the uninterrupted one, and differs
/// from the same run without them (so they did something).
#[test]
fn toolbox_run_resumes_bit_exactly_and_changes_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = train(&dir.path().join("full"), TOOLBOX);
    let part = dir.path().join("part");
    let mut first = TOOLBOX.to_vec();
    first.extend(["--max-steps", "4"]);
    train(&part, &first);
    let part_s = part.to_str().expect("utf8");
    let resumed = json(&ok(&[
        "train",
        "--out",
        part_s,
        "--resume",
        "latest",
        "--max-steps",
        "12",
        "--json",
    ]));
    assert_eq!(resumed["steps"], 12);
    assert_eq!(full["param_hash"], resumed["param_hash"]);
    let plain = train(&dir.path().join("plain"), &[]);
    assert_ne!(full["param_hash"], plain["param_hash"]);
    // The plateau LR the trainer used is the one `resnet schedule` predicts from the run's own
    // validation losses.
    let history = full["history"].as_array().expect("history");
    let losses: Vec<String> = history
        .iter()
        .map(|e| e["test"]["loss"].as_f64().expect("test loss").to_string())
        .collect();
    let table = json(&ok(&[
        "schedule",
        "--schedule",
        "plateau",
        "--patience",
        "0",
        "--lr",
        "0.05",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "6",
        "--val-losses",
        &losses.join(","),
        "--json",
    ]));
    for (rec, row) in history.iter().zip(table.as_array().expect("rows")) {
        assert_eq!(rec["lr"].as_f64(), row["last"].as_f64(), "{losses:?}");
    }
}

#[test]
fn schedule_prints_the_lr_the_trainer_uses() {
    let out = ok(&[
        "schedule",
        "--schedule",
        "cyclic",
        "--lr",
        "0.2",
        "--epochs",
        "8",
        "--cycle-epochs",
        "4",
        "--steps-per-epoch",
        "10",
        "--json",
    ]);
    let rows = json(&out);
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 8);
    assert!((rows[0]["first"].as_f64().expect("lr") - 0.02).abs() < 1e-12);
    assert!((rows[2]["first"].as_f64().expect("lr") - 0.2).abs() < 1e-12);
    assert!((rows[4]["first"].as_f64().expect("lr") - 0.02).abs() < 1e-12);
    // The trainer's recorded LR for a cosine run matches the printed table.
    let dir = tempfile::tempdir().expect("tempdir");
    let run = train(&dir.path().join("cos"), &["--warmup-epochs", "1"]);
    let table = json(&ok(&[
        "schedule",
        "--width",
        "4",
        "--batch-size",
        "16",
        "--train-limit",
        "96",
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "1",
        "--json",
    ]));
    for (rec, row) in run["history"]
        .as_array()
        .expect("history")
        .iter()
        .zip(table.as_array().expect("rows"))
    {
        assert_eq!(rec["lr"].as_f64(), row["last"].as_f64());
    }
    let (good, _, err) = resnet(&["schedule", "--schedule", "zigzag"]);
    assert!(
        !good && err.contains("zigzag") && err.contains("cyclic"),
        "{err}"
    );
}

#[test]
fn ensemble_averages_members_and_reports_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    train(&a, &["--seed", "1"]);
    train(&b, &["--seed", "2", "--depth", "34"]);
    let (a, b) = (a.to_str().expect("utf8"), b.to_str().expect("utf8"));
    let single = json(&ok(&["eval", "--checkpoint", a, "--json"]));
    let both = json(&ok(&[
        "eval",
        "--checkpoint",
        a,
        "--checkpoint",
        b,
        "--json",
    ]));
    let members = both["members"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["report"], single);
    assert_eq!(members[1]["depth"], 34);
    assert_eq!(both["ensemble"]["samples"], 40);
    // An ensemble of one model twice is that model (same predictions, same confusion).
    let twice = json(&ok(&[
        "eval",
        "--checkpoint",
        a,
        "--checkpoint",
        a,
        "--json",
    ]));
    assert_eq!(twice["ensemble"]["confusion"], single["confusion"]);
    assert_eq!(twice["ensemble"]["accuracy"], single["accuracy"]);
    let loss = |v: &Value| v["loss"].as_f64().expect("loss");
    assert!((loss(&twice["ensemble"]) - loss(&single)).abs() < 1e-4);
    let human = ok(&["eval", "--checkpoint", a, "--checkpoint", b]);
    assert!(human.contains("ensemble of 2 members"), "{human}");
}

/// A run stopped before its first epoch ended (`--max-steps`) has no epoch curves, but its
/// steps.jsonl gives the report a loss and LR curve, and the checkpoint its evaluation.
#[test]
fn report_works_on_a_run_that_never_finished_an_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    // 96 images in batches of 16: 6 steps per epoch; stop after 5.
    let s = train(&run, &["--max-steps", "5", "--step-metrics-every", "2"]);
    assert_eq!(s["epochs_completed"], 0);
    let lines: Vec<Value> = std::fs::read_to_string(run.join("steps.jsonl"))
        .expect("steps.jsonl")
        .lines()
        .map(json)
        .collect();
    let steps: Vec<u64> = lines
        .iter()
        .map(|l| l["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(
        steps,
        [2, 4, 5],
        "a line every 2 steps and one for the rest"
    );
    for l in &lines {
        assert!(l["loss"].as_f64().is_some_and(f64::is_finite), "{l}");
        assert!(
            l["lr"].as_f64().is_some_and(|v| v > 0.0 && v <= 0.05),
            "{l}"
        );
        assert!(l["images_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{l}");
        assert_eq!(l["phase_s"].as_array().map(Vec::len), Some(5), "{l}");
    }
    ok(&["report", "--run", run.to_str().expect("utf8")]);
    let report = run.join("report");
    assert!(image::open(report.join("steps.png")).is_ok());
    assert!(image::open(report.join("confusion.png")).is_ok());
    assert!(
        !report.join("curves.png").exists(),
        "no epoch, no epoch curves"
    );
    let summary = json(&std::fs::read_to_string(report.join("report.json")).expect("json"));
    assert_eq!(
        (summary["epochs"].as_u64(), summary["step_lines"].as_u64()),
        (Some(0), Some(3))
    );
}

#[test]
fn report_draws_pngs_from_the_evaluation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    train(&run, &[]);
    let run_s = run.to_str().expect("utf8");
    let listed = ok(&["report", "--run", run_s, "--grid", "10", "--mistakes", "5"]);
    let report = run.join("report");
    let size = |name: &str| {
        let img = image::open(report.join(name))
            .unwrap_or_else(|e| panic!("{name} is not a readable PNG: {e}"));
        (img.width(), img.height())
    };
    assert_eq!(size("curves.png"), (1200, 450));
    // 10 classes: 60-pixel cells (the largest).
    assert_eq!(size("confusion.png"), (170 + 600 + 30, 90 + 600 + 30));
    // 10 tiles in 8 columns of 32x32 images at 4x: 2 rows.
    assert_eq!(size("predictions.png"), (8 * 138 + 10, 2 * 174 + 40));
    let summary = json(&std::fs::read_to_string(report.join("report.json")).expect("json"));
    let eval = json(&ok(&["eval", "--checkpoint", run_s, "--json"]));
    assert_eq!(summary["eval"]["confusion"], eval["confusion"]);
    assert_eq!(summary["epochs"], 2);
    let files = summary["files"].as_array().expect("files").len();
    assert!(listed.lines().count() == files + 1, "{listed}");
    assert_eq!(size("steps.png"), (1200, 450));
    // 12 steps, a line every 10 and one for the last 2.
    assert_eq!(summary["step_lines"], 2);
    // Not a run directory: an error, and no empty report directory left behind.
    let (good, _, err) = resnet(&["report", "--run", dir.path().to_str().expect("utf8")]);
    assert!(!good && err.contains("checkpoint"), "{err}");
    assert!(!dir.path().join("report").exists());
    // A cluster run directory (the coordinator's metrics.jsonl and central checkpoints) works too.
    let cluster = dir.path().join("cluster");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
            "--local",
            "--workers",
            "2",
            "--width",
            "4",
            "--batch-size",
            "16",
        ])
        .args(["--train-limit", "96", "--test-limit", "40", "--epochs", "2"])
        .args(["--out", cluster.to_str().expect("utf8")])
        .output()
        .expect("coordinator");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    ok(&["report", "--run", cluster.to_str().expect("utf8")]);
    let summary = json(&std::fs::read_to_string(cluster.join("report/report.json")).expect("json"));
    assert_eq!(summary["epochs"], 2);
    assert_eq!(summary["eval"]["samples"], 40);
}
