//! End-to-end runs of the `resnet` binary on synthetic data with tiny widths.
//!
//! (Over 400 lines: one end-to-end scenario per test, sharing the run helpers.)

mod common;

use std::path::Path;

use common::resnet;

use serde_json::Value;

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

const SMALL: &[&str] = &[
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
    "2",
    "--lr",
    "0.05",
    "--seed",
    "7",
    "--json",
];

fn run_small(out: &Path, extra: &[&str]) -> Value {
    let mut args = SMALL.to_vec();
    args.extend(["--out", out.to_str().expect("utf8")]);
    args.extend(extra);
    let (ok, stdout, stderr) = resnet(&args);
    assert!(ok, "resnet train failed:\n{stderr}");
    json(&stdout)
}

/// Train 14 steps straight vs. 6 steps, stop, `--resume latest`, continue to 14 (crossing an
/// epoch boundary with its evaluation and checkpoint): the final weights are bit-identical.
#[test]
fn resume_reproduces_uninterrupted_run_bit_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let straight = run_small(&a, &["--max-steps", "14"]);
    assert_eq!(straight["steps"], 14);
    let first = run_small(&b, &["--max-steps", "6"]);
    assert_eq!(first["steps"], 6);
    assert_ne!(first["param_hash"], straight["param_hash"]);
    let (ok, stdout, stderr) = resnet(&[
        "train",
        "--resume",
        "latest",
        "--out",
        b.to_str().expect("utf8"),
        "--max-steps",
        "14",
        "--json",
    ]);
    assert!(ok, "resume failed:\n{stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    let resumed = json(&stdout);
    assert_eq!(resumed["steps"], 14);
    assert_eq!(
        resumed["param_hash"], straight["param_hash"],
        "resumed weights differ from the uninterrupted run"
    );
    // The completed epoch's record is identical too (its running sums were checkpointed
    // mid-epoch); only wall-clock fields may differ.
    let strip = |v: &Value| -> Vec<Value> {
        v["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|r| {
                let mut r = r.clone();
                let o = r.as_object_mut().expect("record");
                o.remove("seconds");
                o.remove("images_per_sec");
                r
            })
            .collect()
    };
    assert_eq!(strip(&resumed), strip(&straight));
    assert_eq!(strip(&straight).len(), 1);
    // Starting a fresh run over an existing one is refused rather than overwriting it.
    let (ok, _, stderr) = resnet(&[SMALL, &["--out", b.to_str().expect("utf8")]].concat());
    assert!(!ok && stderr.contains("--resume"), "{stderr}");
}

/// A ResNet learns the synthetic shapes; files land in --out; `resnet eval` on the checkpoint
/// reproduces the final evaluation exactly.
#[test]
fn trains_evaluates_and_writes_run_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let o = out.to_str().expect("utf8");
    let (ok, stdout, stderr) = resnet(&[
        "train",
        "--dataset",
        "synthetic",
        "--depth",
        "18",
        "--width",
        "8",
        "--batch-size",
        "32",
        "--train-limit",
        "1280",
        "--test-limit",
        "320",
        "--epochs",
        "4",
        "--lr",
        "0.05",
        "--seed",
        "1",
        "--out",
        o,
        "--json",
    ]);
    assert!(ok, "train failed:\n{stderr}");
    let s = json(&stdout);
    let hist = s["history"].as_array().expect("history");
    assert_eq!(hist.len(), 4);
    let loss = |i: usize| hist[i]["train_loss"].as_f64().expect("loss");
    assert!(
        loss(3) < loss(0) * 0.8,
        "training loss did not fall: {} -> {}",
        loss(0),
        loss(3)
    );
    let acc = s["final_eval"]["accuracy"].as_f64().expect("acc");
    assert!(acc > 0.3, "test accuracy {acc} is near chance (0.1)");
    for f in ["config.json", "metrics.jsonl", "summary.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().count(), 4);
    assert!(
        stderr.contains("epoch   4"),
        "no per-epoch progress line:\n{stderr}"
    );

    let (ok, stdout, stderr) = resnet(&["eval", "--checkpoint", o, "--json"]);
    assert!(ok, "eval failed:\n{stderr}");
    let e = json(&stdout);
    assert_eq!(e["accuracy"], s["final_eval"]["accuracy"]);
    assert_eq!(e["samples"], 320);
    let confusion = e["confusion"].as_array().expect("confusion");
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().expect("row"))
        .map(|v| v.as_u64().expect("n"))
        .sum();
    assert_eq!(total, 320);
    assert_eq!(e["per_class"].as_array().expect("per class").len(), 10);
    // Human output has the table and the matrix.
    let (ok, stdout, _) = resnet(&["eval", "--checkpoint", o]);
    assert!(
        ok && stdout.contains("confusion matrix") && stdout.contains("precision"),
        "{stdout}"
    );
}

/// Checkpoints that cannot be written (a file where `checkpoints/` should be: every write fails,
/// as root too): each is retried and reported; three in a row stop the run with exit code 5;
/// with `--max-checkpoint-failures 0` training reaches its end, but the final checkpoint failing
/// still exits 5, and `summary.json` lists every failed save.
#[test]
fn failed_checkpoint_writes_are_loud_and_never_end_as_success() {
    let dir = tempfile::tempdir().expect("tmp");
    for (limit, stop_step) in [(None, 15), (Some("0"), 20)] {
        let out = dir
            .path()
            .join(format!("run-{}", limit.unwrap_or("default")));
        std::fs::create_dir_all(&out).expect("mkdir");
        std::fs::write(out.join("checkpoints"), b"in the way").expect("write");
        let out_s = out.to_str().expect("utf-8");
        let mut args = SMALL.to_vec();
        args.extend(["--checkpoint-steps", "5", "--out", out_s]);
        if let Some(n) = limit {
            args.extend(["--max-checkpoint-failures", n]);
        }
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(&args)
            .output()
            .expect("run resnet");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(5), "{limit:?}: exit code 5\n{stderr}");
        assert!(stderr.contains("CHECKPOINT FAILED"), "{stderr}");
        assert!(stderr.contains("retrying once"), "{stderr}");
        assert!(stderr.contains("newest checkpoint: none in"), "{stderr}");
        assert!(stderr.contains(&format!("step {stop_step}:")), "{stderr}");
        match limit {
            None => assert!(stderr.contains("3 checkpoints in a row"), "{stderr}"),
            Some(_) => {
                assert!(
                    stderr.contains("final checkpoint could not be written"),
                    "{stderr}"
                );
                let summary: Value = serde_json::from_str(
                    &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
                )
                .expect("json");
                assert_eq!(summary["epochs_completed"], 2, "trained to the end");
                let failed = summary["failed_checkpoints"].as_array().expect("listed");
                let steps: Vec<u64> = failed.iter().filter_map(|f| f["step"].as_u64()).collect();
                assert_eq!(steps, [5, 10, 15, 20], "{summary}");
                assert!(failed[0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("checkpoints")));
            }
        }
        assert_eq!(
            std::fs::read(out.join("checkpoints")).expect("still a file"),
            b"in the way"
        );
    }
}

/// `--conv-precision bf16`: recorded in config.json, really applied (the weights differ from
/// the f32 run with the same seed) without changing what is learned much, and carried by the
/// checkpoint: a resumed run continues in bf16, bit-exactly. A bad value is a named error.
#[test]
fn bf16_convolutions_train_are_recorded_and_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let f32_run = run_small(&p("f32"), &["--max-steps", "14"]);
    let bf16 = ["--conv-precision", "bf16"];
    let straight = run_small(&p("bf16"), &[&bf16[..], &["--max-steps", "14"]].concat());
    assert_ne!(straight["param_hash"], f32_run["param_hash"]);
    let loss = |v: &Value| v["history"][0]["train_loss"].as_f64().expect("loss");
    let (a, b) = (loss(&f32_run), loss(&straight));
    assert!((a - b).abs() < 0.05 * a, "f32 loss {a} vs bf16 {b}");
    let cfg = std::fs::read_to_string(p("bf16").join("config.json")).expect("config.json");
    assert!(cfg.contains("\"conv_precision\": \"bf16\""), "{cfg}");

    let first = run_small(&p("resumed"), &[&bf16[..], &["--max-steps", "6"]].concat());
    assert_eq!(first["steps"], 6);
    let (ok, stdout, stderr) = resnet(&[
        "train",
        "--resume",
        "latest",
        "--out",
        p("resumed").to_str().expect("utf8"),
        "--max-steps",
        "14",
        "--json",
    ]);
    assert!(ok, "resume failed:\n{stderr}");
    assert_eq!(
        json(&stdout)["param_hash"],
        straight["param_hash"],
        "the resumed run did not continue in bf16"
    );

    let (ok, _, stderr) = resnet(&[SMALL, &["--conv-precision", "fp16"]].concat());
    assert!(
        !ok && stderr.contains("--conv-precision") && stderr.contains("fp16"),
        "{stderr}"
    );
}

/// `--grad-wire` alone: recorded (a checkpoint resumed on a cluster keeps it), the run is the
/// f32 run bit for bit (a single process transfers nothing) and the log says the flag has no
/// effect here; a bad value is a named error.
#[test]
fn grad_wire_on_a_single_process_is_recorded_warned_about_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let f32_run = run_small(&p("f32"), &["--max-steps", "4"]);
    let mut args = SMALL.to_vec();
    let out = p("bf16");
    args.extend(["--out", out.to_str().expect("utf8"), "--max-steps", "4"]);
    args.extend(["--grad-wire", "bf16"]);
    let (ok, stdout, stderr) = resnet(&args);
    assert!(ok, "resnet train failed:\n{stderr}");
    assert_eq!(json(&stdout)["param_hash"], f32_run["param_hash"]);
    assert!(
        stderr.contains("--grad-wire applies to data-parallel runs"),
        "{stderr}"
    );
    let cfg = std::fs::read_to_string(out.join("config.json")).expect("config.json");
    assert!(cfg.contains("\"grad_wire\": \"bf16\""), "{cfg}");
    let f32_cfg = std::fs::read_to_string(p("f32").join("config.json")).expect("config.json");
    assert!(
        !f32_cfg.contains("grad_wire"),
        "f32 is the default and not written: {f32_cfg}"
    );

    let (ok, _, stderr) = resnet(&[SMALL, &["--grad-wire", "fp8"]].concat());
    assert!(
        !ok && stderr.contains("--grad-wire") && stderr.contains("fp8"),
        "{stderr}"
    );
}

/// `--overlap` and `--bucket-mb`: recorded when not the defaults (which are not written, so
/// older runs' config fingerprints stay), a single process trains exactly as without them, and
/// bad values are named errors.
#[test]
fn overlap_flags_are_recorded_only_when_set_and_bad_values_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let plain = run_small(&p("plain"), &["--max-steps", "2"]);
    let set = run_small(
        &p("set"),
        &["--max-steps", "2", "--overlap", "off", "--bucket-mb", "5"],
    );
    assert_eq!(set["param_hash"], plain["param_hash"]);
    let cfg = |n: &str| std::fs::read_to_string(p(n).join("config.json")).expect("config.json");
    let (plain_cfg, set_cfg) = (cfg("plain"), cfg("set"));
    assert!(
        !plain_cfg.contains("overlap") && !plain_cfg.contains("bucket_mb"),
        "defaults are not written: {plain_cfg}"
    );
    assert!(
        set_cfg.contains("\"overlap\": false") && set_cfg.contains("\"bucket_mb\": 5.0"),
        "{set_cfg}"
    );
    for (bad, says) in [
        (
            &["--overlap", "maybe"][..],
            "invalid value 'maybe' for '--overlap <on|off>'",
        ),
        (
            &["--bucket-mb", "0"][..],
            "bucket_mb must be a positive number of MB",
        ),
        (
            &["--bucket-mb=-3"][..],
            "bucket_mb must be a positive number of MB",
        ),
    ] {
        let (ok, _, stderr) = resnet(&[SMALL, bad].concat());
        assert!(!ok && stderr.contains(says), "{bad:?}: {stderr}");
    }
}

#[test]
fn sigterm_stops_at_a_step_boundary_with_a_checkpoint_and_exit_code_4() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let mut args: Vec<&str> = SMALL.to_vec();
    // Long enough that the signal always lands mid-run.
    let epochs = args.iter().position(|a| *a == "--epochs").expect("epochs") + 1;
    args[epochs] = "1000";
    args.extend(["--out", out.to_str().expect("utf8")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait for the first step's line, then signal.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).expect("read") > 0 {
        seen.push_str(&line);
        if line.contains("step 1 ") || line.contains("epoch 1 1/") {
            break;
        }
        line.clear();
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("rest");
    seen.push_str(&rest);
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
        .expect("stdout");
    let code = child.wait().expect("wait").code();
    assert_eq!(code, Some(4), "{seen}");
    assert!(seen.contains("interrupted by a signal at step"), "{seen}");
    let s = json(&stdout);
    assert_eq!(s["interrupted"], true);
    let steps = s["steps"].as_u64().expect("steps");
    assert!((1..1000 * 10).contains(&steps), "{steps}");
    assert!(s["checkpoint"].is_string(), "{stdout}");
    // The saved state continues: two more steps, then a normal end.
    let more = (steps + 2).to_string();
    let (ok, stdout, stderr) = resnet(&[
        "train",
        "--resume",
        "latest",
        "--out",
        out.to_str().expect("utf8"),
        "--max-steps",
        &more,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(json(&stdout)["steps"].as_u64(), Some(steps + 2), "{stdout}");
}

/// A checkpoint whose `state.json` describes another model than its weights (here depth 34
/// over ResNet-18 weights, the manifest re-hashed so it verifies): `resnet eval` and `--resume`
/// name the mismatch instead of panicking inside Burn's loader.
#[test]
fn a_checkpoint_whose_config_disagrees_with_its_weights_is_a_named_error() {
    use sha2::Digest;
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("run");
    run_small(&out, &["--max-steps", "1"]);
    let ck = out.join("checkpoints/step-00000001");
    let state = std::fs::read_to_string(ck.join("state.json")).expect("state.json");
    assert!(state.contains("\"depth\": 18"), "{state}");
    let state = state.replace("\"depth\": 18", "\"depth\": 34");
    std::fs::write(ck.join("state.json"), &state).expect("write");
    let mpath = ck.join("MANIFEST.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).expect("manifest")).expect("json");
    for f in manifest["files"].as_array_mut().expect("files") {
        if f["name"] == "state.json" {
            f["sha256"] = Value::from(
                sha2::Sha256::digest(state.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            );
            f["bytes"] = Value::from(state.len());
        }
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&manifest).expect("json")).expect("write");
    let ck_s = ck.to_str().expect("utf-8");
    let out_s = out.to_str().expect("utf-8");
    for args in [
        vec!["eval", "--checkpoint", ck_s],
        vec![
            "train",
            "--resume",
            "latest",
            "--out",
            out_s,
            "--max-steps",
            "2",
        ],
    ] {
        let (ok, _, stderr) = resnet(&args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            stderr.contains("does not hold the model state.json describes (ResNet-34"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("model.mpk"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Every stderr line of a JSON-logging run is a JSON object (progress, epoch lines, where the
/// checkpoints went, and the final error, with its exit code), so a log collector never meets
/// free text; human logs written to a pipe carry no colour codes.
#[test]
fn json_logs_are_json_lines_only_and_piped_logs_have_no_colour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let every_line_json = |what: &str, stderr: &str| {
        assert!(!stderr.trim().is_empty(), "{what}: no log at all");
        for line in stderr.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {line}"));
            assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        }
    };
    let out = dir.path().join("a");
    let mut args = SMALL.to_vec();
    args.extend(["--out", out.to_str().expect("utf8"), "--log-format", "json"]);
    let (ok, _, stderr) = resnet(&args);
    assert!(ok, "{stderr}");
    every_line_json("resnet train", &stderr);
    assert!(stderr.contains("epoch"), "{stderr}");
    // A failure too: the run refuses to overwrite `out`, as one JSON error line with its code.
    let (ok, _, stderr) = resnet(&args);
    assert!(!ok);
    every_line_json("a refused run", &stderr);
    assert!(stderr.contains("\"exit_code\":1"), "{stderr}");
    // A whole cluster in one process.
    let c = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
            "--local",
            "--workers",
            "2",
            "--width",
            "4",
            "--batch-size",
            "16",
        ])
        .args(["--train-limit", "96", "--test-limit", "32", "--epochs", "1"])
        .args(["--log-format", "json"])
        .output()
        .expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "{stderr}");
    every_line_json("coordinator --local", &stderr);
    // Human format into a pipe: plain text.
    let piped = dir.path().join("b");
    let (ok, _, stderr) = resnet(
        &[
            &SMALL[..SMALL.len() - 1],
            &["--max-steps", "2", "--out", piped.to_str().expect("utf8")],
        ]
        .concat(),
    );
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in piped output:\n{stderr}"
    );
}
