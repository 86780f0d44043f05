//! The divergence guard and input bounds, end to end through the `resnet` binary: a diverging
//! run stops with exit code 3 before the non-finite step is applied or saved; `skip-step` skips
//! and gives up after a streak; non-finite and out-of-range options are named errors, never
//! panics.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs `resnet` with `args`: (exit code, stdout, stderr).
fn resnet_code(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("run resnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn train_args<'a>(out: &'a Path, lr: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--dataset",
        "synthetic",
        "--depth",
        "18",
        "--width",
        "4",
        "--batch-size",
        "32",
        "--train-limit",
        "320",
        "--test-limit",
        "64",
        "--epochs",
        "3",
        "--seed",
        "5",
        "--lr",
        lr,
        "--checkpoint-steps",
        "1",
        "--out",
        out.to_str().expect("utf8"),
    ];
    a.extend(extra);
    a
}

/// Steps of the checkpoints under `out/checkpoints` (directories `step-NNNNNNNN`).
fn checkpoint_steps(out: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = std::fs::read_dir(out.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("step-")?.parse().ok()
            })
            .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable();
    steps
}

/// The step number in "step N: the training loss is …".
fn diverged_step(stderr: &str) -> usize {
    let at = stderr
        .find("the training loss is")
        .unwrap_or_else(|| panic!("no divergence message:\n{stderr}"));
    let head = &stderr[..at];
    let num = head
        .rsplit("step ")
        .next()
        .and_then(|t| t.trim_end_matches(": ").trim().parse().ok());
    num.unwrap_or_else(|| panic!("no step number before the message:\n{stderr}"))
}

#[test]
fn a_diverging_run_stops_with_exit_code_3_and_never_saves_the_nonfinite_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    // An LR of 1e30 overflows the logits within a few steps: the loss becomes NaN or infinite.
    let (code, _, stderr) = resnet_code(&train_args(&out, "1e30", &[]));
    assert_eq!(code, 3, "exit code for a diverged run:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("diverged") && stderr.contains("on_nonfinite = stop"),
        "{stderr}"
    );
    let step = diverged_step(&stderr);
    assert!(step >= 1, "{stderr}");
    // Every step before it was checkpointed (`--checkpoint-steps 1`), the non-finite one not.
    let saved = checkpoint_steps(&out);
    assert!(
        saved.iter().all(|s| *s < step),
        "a checkpoint at or after the diverged step {step}: {saved:?}"
    );
    if step > 1 {
        assert_eq!(saved.last(), Some(&(step - 1)), "{saved:?}");
    }
}

/// `skip-step` drops steps whose loss is not finite (tested step by step in `resnet-train`'s
/// rollback tests); it cannot take back a step already applied. An LR of 1e30 gives a finite
/// loss whose gradient makes the weights infinite: the run stops there (exit code 3) before
/// anything saves those weights, instead of skipping NaN steps on NaN weights.
#[test]
fn skip_step_stops_when_an_applied_step_left_non_finite_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let (code, _, stderr) = resnet_code(&train_args(
        &out,
        "1e30",
        &["--on-nonfinite", "skip-step", "--log-format", "human"],
    ));
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("weights after this step are not finite")
            && stderr.contains("on_nonfinite = skip-step"),
        "{stderr}"
    );
    let step = diverged_step(&stderr);
    let saved = checkpoint_steps(&out);
    assert!(saved.iter().all(|s| *s < step), "{step}: {saved:?}");
}

/// `rollback` goes back to the newest checkpoint's state and passes over the batches that led
/// into the divergence; an LR of 1e30 diverges again every time, so after 3 rollbacks the run
/// stops as `stop` does, every checkpoint on disk finite (written before the first bad step).
#[test]
fn rollback_returns_to_the_checkpoint_and_gives_up_after_three_tries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let (code, _, stderr) = resnet_code(&train_args(
        &out,
        "1e30",
        &["--on-nonfinite", "rollback", "--log-format", "human"],
    ));
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr
            .matches("rolled back to the newest checkpoint")
            .count(),
        resnet_train::MAX_ROLLBACKS,
        "{stderr}"
    );
    assert!(stderr.contains("rollbacks did not get past"), "{stderr}");
    let first_bad = stderr
        .lines()
        .find(|l| l.contains("rolled back to the newest checkpoint"))
        .and_then(|l| l.split(" step=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no step in the first rollback line:\n{stderr}"));
    let saved = checkpoint_steps(&out);
    assert!(
        saved.iter().all(|s| *s < first_bad),
        "a checkpoint at or after the first non-finite step {first_bad}: {saved:?}"
    );
}

#[test]
fn nonfinite_and_out_of_range_options_are_named_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let (code, _, stderr) = resnet_code(&train_args(&out, "inf", &[]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("optim.lr: must be a finite number > 0"),
        "{stderr}"
    );
    let config = dir.path().join("run.toml");
    for (size, want) in [
        (
            "0",
            "data.image_size = 0: must be between 1 and 1024 pixels",
        ),
        ("100000", "data.image_size = 100000"),
    ] {
        std::fs::write(&config, format!("[data]\nimage_size = {size}\n")).expect("write");
        let (code, _, stderr) = resnet_code(&train_args(
            &out,
            "0.1",
            &["--config", config.to_str().expect("utf8")],
        ));
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A cluster that diverges: every rank stops at the same step with exit code 3, and tells the
/// coordinator why, which ends the run at once with exit code 3 and the reason (instead of
/// waiting for its silent workers: its heartbeat timeout here is 60 s).
#[test]
fn a_diverging_cluster_stops_every_process_with_exit_code_3() {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let out = tempfile::tempdir().expect("tmp");
    let mut args = vec![
        "--workers",
        "2",
        "--listen",
        &listen,
        "--out",
        out.path().to_str().expect("utf8"),
        "--heartbeat-timeout",
        "60",
    ];
    // The run flags of `resnet train` above, without the subcommand and its --out.
    let run = train_args(out.path(), "1e30", &[]);
    args.extend(&run[1..run.len() - 2]);
    let coord = common::spawn(env!("CARGO_BIN_EXE_coordinator"), &args);
    let workers: Vec<_> = ["w0", "w1"]
        .iter()
        .map(|id| {
            common::spawn(
                env!("CARGO_BIN_EXE_worker"),
                &["--coordinator", &url, "--worker-id", id],
            )
        })
        .collect();
    let mut steps = Vec::new();
    for w in workers {
        let o = w.wait_with_output().expect("worker");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "worker:\n{stderr}");
        steps.push(diverged_step(&stderr));
    }
    assert_eq!(steps[0], steps[1], "every rank stops at the same step");
    let c = coord.wait_with_output().expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert_eq!(c.status.code(), Some(3), "coordinator:\n{stderr}");
    assert_eq!(diverged_step(&stderr), steps[0], "{stderr}");
    assert!(stderr.contains("reported by worker"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
