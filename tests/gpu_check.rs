//! `scripts/gpu-check.sh --cpu-dry-run`: every step of the GPU check that does not need a GPU
//! runs here (on the CPU, tiny sizes) and lands in one valid JSON summary; the GPU-only steps
//! are recorded as skipped, never as passed.

use std::path::Path;
use std::process::Command;

/// Runs the script's CPU dry run with `extra` arguments; returns its summary (and the folder).
fn dry_run(extra: &[&str]) -> (serde_json::Value, String, tempfile::TempDir) {
    let bin = Path::new(env!("CARGO_BIN_EXE_resnet"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/gpu-check.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--bin", bin.to_str().expect("utf8")])
        .args(["--out", dir.path().to_str().expect("utf8")])
        .arg("--cpu-dry-run")
        .args(extra)
        .output()
        .expect("run gpu-check.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "gpu-check.sh {extra:?} failed:\n{stderr}"
    );
    let text = std::fs::read_to_string(dir.path().join("summary.json")).expect("summary");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    (v, text, dir)
}

/// Each kernel configuration's environment must reach every process of the benchmarks, the
/// two-worker cluster's included, whichever configuration comes out best (which one does on
/// the CPU depends on timing, so each is run alone here).
#[test]
fn every_kernel_configuration_runs_the_whole_pipeline() {
    for kind in ["tuned", "gemm", "gemm-spread-taps", "autotune"] {
        let (v, text, _dir) = dry_run(&["--kernels", kind, "--no-pytorch"]);
        assert_eq!(v["best_kernels"], kind, "{text}");
        for s in v["steps"].as_array().expect("steps") {
            assert!(s["ok"] != false, "{kind}: {s}");
        }
    }
}

#[test]
fn gpu_check_script_runs_its_non_gpu_steps_and_writes_the_summary() {
    let (v, text, dir) = dry_run(&[]);
    assert_eq!(v["dry_run"], true);
    let md = std::fs::read_to_string(dir.path().join("summary.md")).expect("summary.md");
    assert!(md.contains("| first-step-cudnn | ok |"), "{md}");
    let steps = v["steps"].as_array().expect("steps");
    let by_name = |n: &str| {
        steps
            .iter()
            .find(|s| s["step"] == n)
            .unwrap_or_else(|| panic!("step {n} missing:\n{text}"))
    };
    for name in [
        "conv-check-r18",
        "conv-check-r18-strict",
        "conv-check-r18-bf16",
        "conv-check-r50",
        "optim-check-r18",
        "first-step-cudnn",
        "bench-r18-cifar",
        "bench-r18-cifar-fused-optim",
        "bench-r18-cifar-bn-fused",
        "bench-r18-cifar-all-fused",
        "conv-check-r18-bn-fused",
        "bench-r18-cifar-eval",
        "bench-r18-cifar-eval-fused",
        "bench-r18-cifar-gemm",
        "train-cudnn-vs-gemm",
        "profile-r18-cifar",
        "profile-r18-all-fused",
        "bench-r50-imagenet-stem",
        "bench-r50-imagenet-stem-all-fused",
        "local-1-worker",
        "two-workers-tcp-ring",
        "nccl-buffers-host-vs-device",
        "bench-r18-cifar-bf16",
        "bench-r18-cifar-bf16-all-fused",
        "bench-r18-cifar-bf16-nhwc",
        "conv-check-r18-bf16-nhwc",
    ] {
        let s = by_name(name);
        assert_eq!(s["ok"], true, "{name}: {s}");
    }
    for name in [
        "first-step-cudnn",
        "bench-r18-cifar",
        "bench-r18-cifar-fused-optim",
        "bench-r18-cifar-eval",
        "bench-r18-cifar-eval-fused",
        "bench-r18-cifar-gemm",
        "bench-r50-imagenet-stem",
    ] {
        let r = &by_name(name)["result"];
        assert!(r["images_per_sec"].as_f64().expect("images/s") > 0.0, "{r}");
        assert!(r["first_step_s"].as_f64().expect("first step") > 0.0, "{r}");
    }
    // The numerical checks compared every pass of every shape, within their tolerance (on the
    // CPU: this crate's kernels against Burn's, 1e-4; bf16 3e-2).
    for (name, shapes, tol) in [
        ("conv-check-r18", 7, 1e-4),
        ("conv-check-r18-strict", 7, 1e-4),
        ("conv-check-r18-bf16", 7, 3e-2),
        ("conv-check-r18-bf16-nhwc", 7, 3e-2),
        ("conv-check-r50", 0, 1e-4),
    ] {
        let r = &by_name(name)["result"];
        assert_eq!(r["ok"], true, "{name}: {r}");
        assert_eq!(r["tolerance"], tol, "{name}: {r}");
        let n = r["shapes"].as_array().expect("shapes").len();
        assert!(n >= shapes.max(1), "{name}: {n} shapes: {r}");
        assert!(r["worst"].as_f64().expect("worst") <= tol, "{name}: {r}");
    }
    // Every BatchNorm shape: a training step and evaluation, each result within tolerance.
    for name in ["conv-check-r18", "conv-check-r18-bn-fused"] {
        let r = &by_name(name)["result"];
        let bn = r["bn"].as_array().expect("bn");
        assert!(!bn.is_empty(), "{name}: {r}");
        let tol = r["bn_tolerance"].as_f64().expect("bn tolerance");
        for s in bn {
            for field in [
                "forward",
                "input_grad",
                "running_stats",
                "residual_grad",
                "eval",
            ] {
                let e = s[field]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{name}: {field}: {s}"));
                assert!(e <= tol, "{name}: {field}: {s}");
            }
        }
    }
    // The optimizer check ran every rule (on the CPU: the fused update is Burn's bits).
    let o = &by_name("optim-check-r18")["result"];
    assert_eq!(o["ok"], true, "{o}");
    assert_eq!(o["optim"].as_array().expect("rules").len(), 5, "{o}");
    assert_eq!(o["optim_tolerance"], 0.0, "{o}");
    assert!(o["shapes"].as_array().expect("shapes").is_empty(), "{o}");
    let agree = &by_name("train-cudnn-vs-gemm")["result"];
    assert_eq!(agree["agree"], true, "{agree}");
    assert_eq!(
        agree["cudnn_losses"].as_array().expect("losses").len(),
        2,
        "{agree}"
    );
    assert_eq!(
        by_name("bench-r50-imagenet-stem")["result"]["model"],
        "resnet50"
    );
    assert_eq!(
        by_name("bench-r18-cifar-bf16")["result"]["conv_precision"],
        "bf16"
    );
    for name in ["local-1-worker", "two-workers-tcp-ring"] {
        let r = &by_name(name)["result"];
        assert_eq!(r["replicas_identical"], true, "{name}: {r}");
    }
    assert_eq!(by_name("two-workers-tcp-ring")["result"]["world"], 2);
    // On the CPU both runs use the TCP ring (no NCCL): the plumbing and the hash comparison.
    let b = &by_name("nccl-buffers-host-vs-device")["result"];
    assert_eq!(b["identical"], true, "{b}");
    assert!(b["steps"].as_u64().expect("steps") > 0, "{b}");
    assert!(b["host_hash"].as_str().is_some_and(|h| h.len() > 8), "{b}");
    assert_eq!(b["device_flat_hash"], b["host_hash"], "{b}");
    // `cudnn` finished, so its fallbacks did not run.
    for name in [
        "nvidia-smi",
        "nccl-world-1",
        "pytorch",
        "profile-r18-top",
        "first-step-tuned",
        "first-step-gemm",
    ] {
        let s = by_name(name);
        assert!(s["ok"].is_null() && s["skipped"].is_string(), "{name}: {s}");
    }
}

/// `--compare-kernels` runs every configuration cold and benchmarks the best, where the
/// default stops at the first that finishes.
#[test]
fn compare_kernels_runs_every_configuration() {
    let (v, text, _dir) = dry_run(&[
        "--kernels",
        "tuned gemm",
        "--compare-kernels",
        "--no-pytorch",
    ]);
    let steps = v["steps"].as_array().expect("steps");
    for name in ["first-step-tuned", "first-step-gemm"] {
        let s = steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert_eq!(s["ok"], true, "{name}: {s}");
    }
    let best = v["best_kernels"].as_str().expect("best");
    assert!(["tuned", "gemm"].contains(&best), "{text}");
}

/// Runs the repository's Python `script` with `args` (paths relative to the repository root, or
/// flags); returns its stdout, failing the test on a non-zero exit.
fn helper(script: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let args = args.iter().map(|a| match a.starts_with('-') {
        true => std::ffi::OsString::from(a),
        false => root.join(a).into_os_string(),
    });
    let out = Command::new("python3")
        .arg(root.join(script))
        .args(args)
        .output()
        .expect("python3 (needed by scripts/gpu-check.sh too)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}: {stderr}");
    String::from_utf8(out.stdout).expect("utf8")
}

/// The tuning summary reads cubecl's autotune log: this project's keys only, each candidate's
/// median in µs (ms and µs units), failures by kind, and the winner.
#[test]
fn tuning_summary_reads_the_autotune_log() {
    let out = helper(
        "benchmarks/summarize_tuning.py",
        &["tests/fixtures/tuning-sample.log", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let t = v["tunings"].as_array().expect("tunings");
    assert_eq!(
        t.len(),
        3,
        "the Reduce tuning between them is not ours: {v}"
    );
    assert_eq!(t[0]["fastest"], "implicit-tma-mma");
    assert_eq!(t[0]["candidates"]["gemm"], 795.186);
    assert_eq!(t[0]["candidates"]["implicit-async-mma"], "InvalidSamples");
    assert_eq!(t[1]["pass"], "weight-grad");
    assert_eq!(t[1]["candidates"]["gemm"], 12000.0);
    assert_eq!(t[1]["candidates"]["implicit-sync-mma"], 9000.0);
    assert_eq!(
        t[2]["key"],
        "input-grad f32 n256 c64 32x32 -> c128 16x16 k3x3 s2x2 p1x1"
    );
    let why = t[2]["candidates"]["implicit-tma-mma"]
        .as_str()
        .expect("reason");
    assert!(why.starts_with("Unknown: cubek's implicit-GEMM"), "{why}");
    let wg = &v["per_pass"]["weight-grad"];
    assert_eq!(wg["gemm_us_where_it_ran"], 12000.0);
    assert_eq!(wg["chosen_us_where_gemm_ran"], 1450.0);
    assert_eq!(v["per_pass"]["input-grad"]["gemm_shapes"], 0);
}

/// The Markdown summary of a real GPU check (the H200 session's second call, committed in
/// benchmarks/): every step a row, the numbers that matter in it.
#[test]
fn markdown_summary_of_a_real_gpu_check() {
    let md = helper(
        "benchmarks/summarize_gpu_check.py",
        &["benchmarks/gpu-h200-2026-11-27/call2-summary.json"],
    );
    assert!(md.starts_with("GPU: NVIDIA H200"), "{md}");
    assert!(
        md.contains("| bench-r18-cifar | ok | 2.66 | images/s 1,537; first step s 0.209;"),
        "{md}"
    );
    assert!(md.contains("| pytorch | skipped: --no-pytorch |"), "{md}");
    assert!(md.contains("bit-exact True"), "{md}");
}

/// `benchmarks/cubek_blocks.py` replays cubek 0.2's tiling heuristic (the grid `gemm` launches
/// per convolution pass). The expected grids are worked out by hand from cubek's source (see
/// the script's docstring): layer1's weight gradient is a 64 x 576 GEMM over k = 256·32·32,
/// tf32 tiles of 16x16 with 2 planes per block, so 2 x 18 blocks of 64 threads, 8,192 steps.
#[test]
fn block_model_gives_the_hand_derived_grids() {
    let grids = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&helper("benchmarks/cubek_blocks.py", &a)).expect("JSON")
    };
    let f32 = grids(&[]);
    let conv = |v: &serde_json::Value, name: &str| {
        v["convs"]
            .as_array()
            .expect("convs")
            .iter()
            .find(|c| c["conv"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {v}"))
            .clone()
    };
    let l1 = conv(&f32, "layer1.0.conv1");
    let grid = |g: &serde_json::Value| {
        (
            g["blocks"].clone(),
            g["threads"].clone(),
            g["k_steps"].clone(),
        )
    };
    assert_eq!(
        grid(&l1["weight-grad"]),
        (36.into(), 64.into(), 8192.into())
    );
    // The forward of the same layer: m = 256·32·32 rows, n = 64, k = 64·9 = 576.
    assert_eq!(grid(&l1["forward"]), (16384.into(), 64.into(), 18.into()));
    // The stem's 3 channels pad to 4 (128-bit loads): n = 36, so 2 x 2 blocks.
    assert_eq!(conv(&f32, "stem")["weight-grad"]["blocks"], 4);
    // layer4: 512 x 4608 over 256·4·4, 64x64 blocks of 4 planes.
    assert_eq!(
        grid(&conv(&f32, "layer4.1.conv2")["weight-grad"]),
        (576.into(), 128.into(), 128.into())
    );
    // gemm sends strided input gradients to Burn's transposed convolution.
    assert!(conv(&f32, "layer2.0.conv1")["input-grad"].is_null());
    assert_eq!(f32["short_weight_grads"], 13);
    assert_eq!(f32["serial_k_steps"], 52352);
    // bf16: 8x32x16 tiles and one plane-row each, 4 planes: 32 x 128 outputs per block.
    let bf16 = grids(&["--dtype=bf16"]);
    assert_eq!(
        grid(&conv(&bf16, "layer1.0.conv1")["weight-grad"]),
        (10.into(), 128.into(), 8192.into())
    );
    // ResNet-50 with the ImageNet stem reaches layer1 at 8x8: 16x shorter reductions.
    let r50 = grids(&["--model=resnet50", "--stem=imagenet"]);
    assert_eq!(conv(&r50, "layer1.0.conv2")["weight-grad"]["k_steps"], 512);
}

/// `resnet conv-check` compares every pass with Burn's on the CPU, and a pass outside the
/// tolerance is a failure: a non-zero exit, `ok: false` and the worst error in the JSON.
#[test]
fn conv_check_reports_each_pass_and_fails_above_its_tolerance() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args([
                "conv-check",
                "--cpu",
                "--width",
                "4",
                "--batch-size",
                "2",
                "--json",
            ])
            .args(extra)
            .output()
            .expect("run resnet conv-check");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
        (out.status.success(), v)
    };
    let (ok, v) = run(&[]);
    assert!(ok, "{v}");
    assert_eq!(v["tolerance"], 1e-4);
    let shapes = v["shapes"].as_array().expect("shapes");
    assert_eq!(shapes.len(), 11, "ResNet-18's distinct convolutions: {v}");
    for s in shapes {
        for pass in ["forward", "input_grad", "weight_grad"] {
            let e = s[pass].as_f64().expect("error");
            assert!(e.is_finite() && e <= 1e-4, "{pass}: {s}");
        }
    }
    // The CPU kernels are not bit-identical to Burn's (different summation order), so a zero
    // tolerance must fail.
    let (ok, v) = run(&["--tolerance", "0"]);
    assert!(!ok, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["worst"].as_f64().expect("worst") > 0.0, "{v}");
}
