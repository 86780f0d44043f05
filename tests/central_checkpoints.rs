//! Central checkpoints: rank 0 streams them to the coordinator, which stores them atomically;
//! `coordinator --resume` serves them back to the workers and the run continues bit-exactly.
//! Corrupt checkpoints are skipped with a message, and nobody without the token can read or
//! write them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use resnet_model::BuildResNet;
use resnet_proto::{CheckpointFiles, ControlPlane, GrpcControlPlane};
use serde_json::Value;

mod common;

const RUN: &[&str] = &[
    "--local",
    "--workers",
    "2",
    "--dataset",
    "synthetic",
    "--width",
    "4",
    "--batch-size",
    "16",
    "--train-limit",
    "256",
    "--test-limit",
    "64",
    "--epochs",
    "3",
    "--seed",
    "5",
    "--checkpoint-steps",
    "4",
    "--json",
];

/// Runs `coordinator` with `args`; returns (success, stdout JSON or Null, stderr).
fn coordinator(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .output()
        .expect("run coordinator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with(extra: &[&str]) -> Vec<String> {
    RUN.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(args: &[String]) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, summary, stderr) = coordinator(&args);
    assert!(ok, "coordinator {args:?} failed:\n{stderr}");
    summary
}

fn hash(summary: &Value) -> String {
    assert_eq!(summary["replicas_identical"], true, "{summary}");
    summary["param_hashes"][0]
        .as_str()
        .expect("hash")
        .to_string()
}

fn names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .expect("checkpoints dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_cluster_run_stopped_and_resumed_from_the_coordinator_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let (full_s, part_s) = (full.to_str().expect("utf8"), part.to_str().expect("utf8"));

    let uninterrupted = hash(&run(&with(&["--out", full_s])));
    // Stop inside epoch 2 (8 steps per epoch), then resume from the coordinator's store.
    let stopped = run(&with(&["--out", part_s, "--max-steps", "12"]));
    assert_eq!(stopped["steps"], 12);
    // Central store: newest 3 plus the best by test accuracy; every one verifies.
    let root = part.join("checkpoints");
    assert_eq!(
        names(&root),
        ["step-00000004", "step-00000008", "step-00000012"]
    );
    let m = resnet_train::verify(&root.join("step-00000012")).expect("manifest verifies");
    assert_eq!((m.step, m.epoch, m.world_size), (12, 1, Some(2)));
    assert!(m.config_fingerprint.is_some());
    assert_eq!(
        std::fs::read_to_string(root.join("BEST")).expect("BEST"),
        "step-00000008"
    );

    let args = [
        "--local",
        "--workers",
        "2",
        "--json",
        "--out",
        part_s,
        "--resume",
        "latest",
        "--max-steps",
        "24",
    ];
    let (ok, resumed, stderr) = coordinator(&args);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("resuming from") && stderr.contains("step-00000012"),
        "{stderr}"
    );
    assert_eq!(resumed["steps"], 24);
    assert_eq!(hash(&resumed), uninterrupted, "resumed run diverged");
    // The epoch records are the same too (the partial epoch is counted once). Throughput is a
    // measurement and the eval loss a float sum in arrival order, so those are left out.
    let records = |d: &Path| -> Vec<Value> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json line");
                serde_json::json!([
                    v["epoch"],
                    v["step"],
                    v["train_loss"],
                    v["train_accuracy"],
                    v["lr"],
                    v["test"]["accuracy"],
                    v["test"]["confusion"]
                ])
            })
            .collect()
    };
    assert_eq!(records(&part), records(&full));

    // A central checkpoint is an ordinary checkpoint: `resnet eval` and `resnet train --resume`
    // read it.
    let eval = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["eval", "--checkpoint", part_s, "--json"])
        .output()
        .expect("resnet eval");
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report: Value = serde_json::from_slice(&eval.stdout).expect("eval JSON");
    let acc = report["accuracy"].as_f64().expect("accuracy");
    let cluster_acc = resumed["final_eval"]["accuracy"]
        .as_f64()
        .expect("final accuracy");
    assert!(
        (acc - cluster_acc).abs() < 1e-12,
        "eval {acc} vs cluster {cluster_acc}"
    );
    // ... and exports as torchvision-keyed safetensors that import back to the same model.
    let st = tmp.path().join("model.safetensors");
    let export = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["export", "--checkpoint", part_s, "--out"])
        .arg(&st)
        .output()
        .expect("resnet export");
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let device = Default::default();
    let dir = resnet_train::resolve_checkpoint(&part).expect("checkpoint");
    let (model, state) =
        resnet_train::load_model::<burn::backend::Flex>(&dir, &device).expect("load");
    let mut fresh = state
        .config
        .model
        .init::<burn::backend::Flex>(&device)
        .expect("init");
    let report = resnet_model::import_torchvision(&mut fresh, &st, false).expect("import");
    assert!(report.applied > 0, "{report:?}");
    assert_eq!(
        resnet_train::param_hash(&fresh),
        resnet_train::param_hash(&model),
        "export/import changed the model"
    );
    let bytes = std::fs::read(&st).expect("read");
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .expect("safetensors")
        .names()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    for key in [
        "conv1.weight",
        "layer1.0.bn1.running_var",
        "layer2.0.downsample.0.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "{key} missing: {names:?}");
    }
    let single = tmp.path().join("single");
    let train = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "train", "--resume", part_s, "--epochs", "4", "--json", "--out",
        ])
        .arg(&single)
        .stderr(Stdio::piped())
        .output()
        .expect("resnet train --resume");
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
}

#[test]
fn a_corrupted_newest_checkpoint_is_reported_and_the_previous_one_is_used() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let out_s = out.to_str().expect("utf8");
    run(&with(&["--out", out_s, "--max-steps", "12"]));
    let newest = out.join("checkpoints").join("step-00000012");
    let model = std::fs::read_dir(&newest)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("model"))
        })
        .expect("model file");
    let mut bytes = std::fs::read(&model).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&model, bytes).expect("write");

    let args = [
        "--local",
        "--workers",
        "2",
        "--json",
        "--out",
        out_s,
        "--resume",
        "latest",
        "--max-steps",
        "16",
    ];
    let (ok, summary, stderr) = coordinator(&args);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("step-00000012") && stderr.contains("sha256"),
        "the skipped checkpoint and why must be named:\n{stderr}"
    );
    assert!(
        stderr.contains("resuming from") && stderr.contains("step-00000008"),
        "{stderr}"
    );
    assert_eq!(summary["steps"], 16);
}

#[test]
fn without_the_token_nobody_reads_or_writes_checkpoints() {
    let tmp = tempfile::tempdir().expect("tmp");
    let token = tmp.path().join("token");
    std::fs::write(&token, "the-cluster-token-0123456789").expect("write");
    let out = tmp.path().join("run");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut coord = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
            "--workers",
            "2",
            "--listen",
            &listen,
            "--dataset",
            "synthetic",
        ])
        .arg("--token-file")
        .arg(&token)
        .arg("--out")
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator");
    let url = format!("http://{listen}");
    let upload = CheckpointFiles {
        worker_id: "intruder".into(),
        rank: 0,
        generation: 1,
        step: 99,
        epoch: 0,
        files: vec![("model.mpk".into(), vec![1, 2, 3])],
    };
    for tok in [None, Some("a-wrong-token-0123456789")] {
        let mut c = GrpcControlPlane::connect(&url, Duration::from_secs(20), tok).expect("connect");
        let e = c.upload_checkpoint(&upload).expect_err("upload refused");
        assert!(e.0.contains("Unauthenticated"), "{e}");
        let e = c
            .download_checkpoint("intruder", 1, 0)
            .expect_err("download refused");
        assert!(e.0.contains("Unauthenticated"), "{e}");
    }
    // With the token but not a member of the group: refused by name.
    let mut c = GrpcControlPlane::connect(
        &url,
        Duration::from_secs(20),
        Some("the-cluster-token-0123456789"),
    )
    .expect("connect");
    let e = c.upload_checkpoint(&upload).expect_err("not a member");
    assert!(e.0.contains("unknown worker 'intruder'"), "{e}");
    let _ = coord.kill();
    let _ = coord.wait();
    assert!(
        !out.join("checkpoints").exists() || names(&out.join("checkpoints")).is_empty(),
        "nothing may be stored"
    );
}

#[test]
fn time_based_checkpoints_are_agreed_by_the_whole_group() {
    // Every ~6 ms of rank 0's clock: far more often than the 8-step epochs, at steps the ranks
    // must agree on through the all-reduce flag (a disagreement would deadlock or fail).
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let args: Vec<String> = [
        "--local",
        "--workers",
        "2",
        "--dataset",
        "synthetic",
        "--width",
        "4",
        "--batch-size",
        "16",
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--epochs",
        "2",
        "--seed",
        "5",
        "--checkpoint-minutes",
        "0.0001",
        "--json",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().expect("utf8").to_string()])
    .collect();
    let summary = run(&args);
    assert_eq!(summary["steps"], 16);
    hash(&summary);
    let steps: Vec<u64> = names(&out.join("checkpoints"))
        .iter()
        .filter_map(|n| n.strip_prefix("step-")?.parse().ok())
        .collect();
    assert!(
        steps.iter().any(|s| s % 8 != 0),
        "only epoch-end checkpoints: {steps:?}"
    );
    let (ok, _, stderr) = coordinator(&["--local", "--checkpoint-minutes=-1"]);
    assert!(!ok && stderr.contains("checkpoint_minutes"), "{stderr}");
}
