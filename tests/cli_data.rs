//! Bad input through the binary: every failure is an error that names what and where, never a panic.

mod common;

use common::resnet;
use std::process::Command;

fn record(label: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(128u8, 3072));
    r
}

#[test]
fn corrupt_cifar_label_is_reported_with_file_and_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good: Vec<u8> = (0..4).flat_map(record).collect();
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        std::fs::write(dir.path().join(f), &good).expect("write");
    }
    let bad: Vec<u8> = [record(1), record(2), record(17)].concat();
    std::fs::write(dir.path().join("data_batch_3.bin"), bad).expect("write");
    let (ok, _, stderr) = resnet(&[
        "train",
        "--dataset",
        "cifar10",
        "--data",
        dir.path().to_str().expect("utf8"),
        "--width",
        "4",
        "--max-steps",
        "1",
        "--out",
        dir.path().join("run").to_str().expect("utf8"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("data_batch_3.bin")
            && stderr.contains("record 2")
            && stderr.contains("label 17, expected 0..9"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_cifar_says_how_to_get_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, stderr) = resnet(&[
        "train",
        "--dataset",
        "cifar10",
        "--data",
        dir.path().to_str().expect("utf8"),
        "--out",
        dir.path().join("run").to_str().expect("utf8"),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--download") && stderr.contains("test_batch.bin"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_and_config_values_are_named() {
    let (ok, _, stderr) = resnet(&["train", "--depth", "20", "--max-steps", "1"]);
    assert!(!ok && stderr.contains("depth 20"), "{stderr}");
    let (ok, _, stderr) = resnet(&["train", "--optimizer", "rmsprop"]);
    // clap names the flag and lists what it takes.
    assert!(
        !ok && stderr.contains("invalid value 'rmsprop' for '--optimizer <OPTIMIZER>'")
            && stderr.contains("[possible values: sgd, adam, adamw]"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, "epochs = 3\n[optim]\nlearning_rate = 0.1\n").expect("write");
    let (ok, _, stderr) = resnet(&["train", "--config", cfg.to_str().expect("utf8")]);
    assert!(
        !ok && stderr.contains("run.toml") && stderr.contains("learning_rate"),
        "{stderr}"
    );
    let (ok, _, stderr) = resnet(&["eval", "--checkpoint", dir.path().to_str().expect("utf8")]);
    assert!(!ok && stderr.contains("no checkpoint found"), "{stderr}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_without_cuda_build_is_a_clear_error() {
    let (ok, _, stderr) = resnet(&["bench", "--gpu", "0", "--steps", "1"]);
    assert!(!ok && stderr.contains("without CUDA support"), "{stderr}");
}

#[test]
fn info_reports_torchvision_counts_and_shapes() {
    let (ok, stdout, stderr) = resnet(&[
        "info",
        "--depth",
        "50",
        "--num-classes",
        "1000",
        "--stem",
        "imagenet",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["trainable_params"], 25_557_032);
    assert!(v["total_params"].as_u64().expect("total") > 25_557_032);
    let stages = v["stages"].as_array().expect("stages");
    let shape = |name: &str| {
        stages
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["shape"].clone())
            .expect("stage")
    };
    // 32x32 through the ImageNet stem: 16 after conv1, 8 after max-pool; layer4 is 1x1.
    assert_eq!(shape("layer1"), serde_json::json!([256, 8, 8]));
    assert_eq!(shape("layer4"), serde_json::json!([2048, 1, 1]));
}

#[test]
fn config_file_and_env_layer_under_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, "epochs = 1\nbatch_size = 16\n[model]\nwidth = 4\n[data]\ntrain_limit = 32\ntest_limit = 16\n[optim]\nlr = 0.02\n").expect("write");
    let out = dir.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "train",
            "--config",
            cfg.to_str().expect("utf8"),
            "--lr",
            "0.03",
            "--out",
            out.to_str().expect("utf8"),
            "--json",
        ])
        .env("RESNET_CLUSTER__SEED", "99")
        .env("RESNET_CLUSTER__OPTIM__LR", "0.5")
        .output()
        .expect("run");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let resolved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(resolved["model"]["width"], 4); // file
    assert_eq!(resolved["seed"], 99); // env
    assert_eq!(resolved["optim"]["lr"], 0.03); // flag beats env and file
    assert_eq!(resolved["batch_size"], 16);
}

#[test]
fn image_folder_trains_and_resume_refuses_config_changes_but_not_a_repeated_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (class, colour) in [("red", [220u8, 20, 20]), ("blue", [20, 20, 220])] {
        for split in ["train", "test"] {
            let d = dir.path().join("imgs").join(split).join(class);
            std::fs::create_dir_all(&d).expect("mkdir");
            for i in 0..8u8 {
                let img = image::RgbImage::from_fn(20, 12, |x, y| {
                    let n = (x as u8).wrapping_mul(7) ^ (y as u8).wrapping_mul(13) ^ i;
                    image::Rgb([
                        colour[0] ^ (n & 15),
                        colour[1] ^ (n & 15),
                        colour[2] ^ (n & 15),
                    ])
                });
                img.save(d.join(format!("{i}.png"))).expect("save");
            }
        }
    }
    let data = dir.path().join("imgs");
    let out = dir.path().join("run");
    // The run's command, for `epochs` epochs into `out`, then `extra`.
    let command = |epochs: &'static str, out: &std::path::Path, extra: &[&'static str]| {
        let mut v = vec![
            "train".to_string(),
            "--dataset".into(),
            "folder".into(),
            "--data".into(),
            data.to_str().expect("utf8").into(),
            "--width".into(),
            "4".into(),
            "--batch-size".into(),
            "8".into(),
            "--epochs".into(),
            epochs.into(),
            "--out".into(),
            out.to_str().expect("utf8").into(),
            "--json".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| resnet(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, stdout, stderr) = run(command("1", &out, &[]));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("16 train / 16 test images of 32x32, 2 classes"),
        "{stderr}"
    );
    let s: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(s["steps"], 2);
    assert_eq!(s["final_eval"]["samples"], 16);
    let (ok, _, stderr) = resnet(&[
        "train",
        "--resume",
        "latest",
        "--out",
        out.to_str().expect("utf8"),
        "--lr",
        "0.5",
        "--depth",
        "50",
    ]);
    assert!(
        !ok && stderr.contains("--depth, --lr would change it: model.depth: checkpoint 18, given 50; optim.lr: checkpoint 0.1, given 0.5"),
        "{stderr}"
    );
    // Repeating the command that started the run is not a change: it continues (2 epochs).
    let (ok, stdout, stderr) = run(command("2", &out, &["--resume", "latest"]));
    assert!(ok && stderr.contains("resuming from"), "{stderr}");
    let s: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(s["steps"], 4, "{stdout}");
    // `--resume auto`: a new run where --out has no checkpoint, the newest one where it has.
    let fresh = dir.path().join("auto");
    let (ok, stdout, stderr) = run(command("2", &fresh, &["--resume", "auto"]));
    assert!(ok && stderr.contains("no checkpoint under"), "{stderr}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).expect("json")["steps"],
        4
    );
    let (ok, _, stderr) = run(command("2", &fresh, &["--resume", "auto"]));
    assert!(ok && stderr.contains("resuming from"), "{stderr}");

    // The run recorded its classes and normalisation, so a folder holding only some classes
    // (here: only test/red, no training split at all) is evaluated with the model's labels.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(saved["data"]["classes"], serde_json::json!(["blue", "red"]));
    assert!(saved["data"]["normalization"]["mean"].is_array(), "{saved}");
    let only = dir.path().join("only-red");
    std::fs::create_dir_all(only.join("test")).expect("mkdir");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read").flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    };
    copy(&data.join("test/red"), &only.join("test/red"));
    let eval_at = |run: &std::path::Path, data: &std::path::Path| {
        let (ok, stdout, stderr) = resnet(&[
            "eval",
            "--checkpoint",
            run.to_str().expect("utf8"),
            "--data",
            data.to_str().expect("utf8"),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("eval json")
    };
    let whole = eval_at(&out, &data);
    let red = eval_at(&out, &only);
    assert_eq!(red["samples"], 8, "{red}");
    // Every image is a red one (row 1 of the confusion matrix), none is counted as blue...
    assert_eq!(red["confusion"][0], serde_json::json!([0, 0]), "{red}");
    let row = |v: &serde_json::Value| -> Vec<u64> {
        v["confusion"][1]
            .as_array()
            .expect("row")
            .iter()
            .map(|c| c.as_u64().expect("count"))
            .collect()
    };
    // ...and classified exactly as in the full folder: same labels, same normalisation.
    assert_eq!(row(&red), row(&whole), "{red}\n{whole}");
    // A cluster run records them too (each worker, in the checkpoints it writes): two
    // in-process workers, then the same test-only folder through the coordinator's checkpoint.
    let cluster = dir.path().join("cluster");
    let o = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--local", "--workers", "2", "--dataset", "folder", "--data"])
        .arg(&data)
        .args([
            "--width",
            "4",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--out",
        ])
        .arg(&cluster)
        .output()
        .expect("run coordinator");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let red = eval_at(&cluster, &only);
    assert_eq!(red["samples"], 8, "{red}");
    assert_eq!(red["confusion"][0], serde_json::json!([0, 0]), "{red}");
    // A class the model never saw is an error naming it.
    copy(&data.join("test/red"), &only.join("test/green"));
    let (ok, _, stderr) = resnet(&[
        "eval",
        "--checkpoint",
        out.to_str().expect("utf8"),
        "--data",
        only.to_str().expect("utf8"),
    ]);
    assert!(
        !ok && stderr.contains("class 'green' is not one of the training split's classes"),
        "{stderr}"
    );
}

/// A CPU benchmark line names the kernels that ran, so A/B lines describe themselves, and the
/// optimizer variant follows `RESNET_OPTIM` (the fused and Burn's updates give the same losses).
#[test]
fn bench_lines_name_the_cpu_kernels_and_the_optimizer_variants_agree() {
    let run = |optim: &str| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args([
                "bench",
                "--width",
                "4",
                "--batch-size",
                "2",
                "--warmup",
                "0",
                "--steps",
                "1",
                "--optimizer",
                "adam",
                "--json",
            ])
            .env("RESNET_OPTIM", optim)
            .output()
            .expect("run resnet");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).expect("one JSON line")
    };
    let fused = run("fused");
    let burn = run("burn");
    assert_eq!(fused["cpu_kernels"], "conv=winograd bn=fused optim=fused");
    assert_eq!(burn["cpu_kernels"], "conv=winograd bn=fused optim=burn");
    assert_eq!(
        fused["losses"], burn["losses"],
        "same bits, so the same losses"
    );
}
