//! Faults injected into real clusters on loopback: `kill -9` of a worker process mid-run. The
//! survivors re-form the group and finish; they end bit-identical, at most the step in flight is
//! lost, and training still converges like an undisturbed run.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{free_port, spawn};

/// A gauge from a metrics endpoint, as an integer.
fn gauge(port: u16, name: &str) -> Option<u64> {
    common::value(&common::scrape(port)?, name, &[]).map(|v| v as u64)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const RUN: &[&str] = &[
    "--dataset",
    "synthetic",
    "--width",
    "4",
    "--batch-size",
    "16",
    "--train-limit",
    "960",
    "--test-limit",
    "64",
    // Long enough after the kill at step 25 for the workers to notice the restart while
    // training (faster CPUs finish 3 epochs within the detection window).
    "--epochs",
    "6",
    "--seed",
    "3",
    "--checkpoint-steps",
    "10",
    "--json",
];

/// A 3-worker run over TCP; with `kill_at`, worker 1 is killed with SIGKILL once it has done
/// that many steps, and once the group has re-formed without it a replacement worker "w9" is
/// started. Returns the coordinator's summary and the finishing workers' stdout.
fn run(kill_at: Option<u64>) -> (Value, Vec<String>) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let out = tempfile::tempdir().expect("tmp");
    let mut args = vec![
        "--workers",
        "3",
        "--listen",
        &listen,
        "--out",
        out.path().to_str().expect("utf8"),
        "--regroup-timeout",
        "5",
    ];
    let coord_metrics = free_port();
    let cm = format!("127.0.0.1:{coord_metrics}");
    args.extend(["--metrics-addr", &cm]);
    args.extend(RUN);
    let coord = spawn(env!("CARGO_BIN_EXE_coordinator"), &args);
    let metrics: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut workers: Vec<Child> = (0..3)
        .map(|i| {
            let m = format!("127.0.0.1:{}", metrics[i]);
            let id = format!("w{i}");
            spawn(
                env!("CARGO_BIN_EXE_worker"),
                &[
                    "--coordinator",
                    &url,
                    "--worker-id",
                    &id,
                    "--metrics-addr",
                    &m,
                ],
            )
        })
        .collect();
    let mut replacement = None;
    if let Some(k) = kill_at {
        wait_for("worker 1 to reach the step", || {
            gauge(metrics[1], "resnet_cluster_step").is_some_and(|s| s >= k)
        });
        workers[1].kill().expect("kill -9");
        let _ = workers[1].wait();
        wait_for("the group to re-form", || {
            gauge(coord_metrics, "resnet_cluster_generation").is_some_and(|g| g >= 2)
        });
        replacement = Some(spawn(
            env!("CARGO_BIN_EXE_worker"),
            &["--coordinator", &url, "--worker-id", "w9"],
        ));
    }
    let mut outputs = Vec::new();
    let finishing = workers
        .into_iter()
        .enumerate()
        .filter(|(i, _)| kill_at.is_none() || *i != 1)
        .chain(replacement.map(|r| (9, r)));
    for (i, w) in finishing {
        let o = w.wait_with_output().expect("worker");
        assert!(
            o.status.success(),
            "worker {i} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        outputs.push(String::from_utf8_lossy(&o.stdout).into_owned());
    }
    let c = coord.wait_with_output().expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "coordinator failed:\n{stderr}");
    let summary: Value = serde_json::from_slice(&c.stdout).expect("summary JSON");
    (summary, outputs)
}

fn last_train_loss(s: &Value) -> f64 {
    s["epochs"]
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["train_loss"].as_f64())
        .expect("train loss")
}

#[test]
fn a_killed_worker_costs_at_most_one_step_and_a_replacement_restores_the_world_size() {
    let (calm, _) = run(None);
    assert_eq!(calm["world"], 3);
    assert!(calm["regroups"].as_array().is_some_and(|r| r.is_empty()));

    let (s, outputs) = run(Some(15));
    // Lost one, re-formed with two, a replacement joined: three again, all identical.
    assert_eq!(s["world"], 3, "{s}");
    assert!(s["generation"].as_u64().expect("generation") >= 3);
    assert_eq!(s["replicas_identical"], true, "{s}");
    let hashes = s["param_hashes"].as_array().expect("hashes");
    assert_eq!(hashes.len(), 3);
    assert_eq!(outputs.len(), 3);
    for o in &outputs {
        assert!(o.contains(hashes[0].as_str().expect("hash")), "{o}");
    }
    let r = &s["regroups"][0];
    assert_eq!(r["lost"], serde_json::json!(["w1"]));
    assert!(r["resumed_step"].as_u64().expect("step") >= 15);
    assert!(r["steps_lost"].as_u64().expect("lost") <= 1, "{r}");
    assert_eq!(r["world"], 2);
    let regroups = s["regroups"].as_array().expect("regroups");
    let j = regroups
        .iter()
        .find(|r| r["joined"] == serde_json::json!(["w9"]))
        .expect("the replacement joined");
    assert_eq!(j["world"], 3);
    for r in regroups {
        assert!(r["steps_lost"].as_u64().expect("lost") <= 1, "{r}");
    }
    // Training went on to the end of the 3 epochs and still learned: the final training loss is
    // no worse than the undisturbed run's (same data; while only 2 replicas ran, an epoch took
    // more, smaller steps, so it is often lower).
    let (a, b) = (last_train_loss(&calm), last_train_loss(&s));
    let first = s["epochs"][0]["train_loss"].as_f64().expect("first loss");
    assert!(b < first * 0.6, "did not keep learning: {first} -> {b}");
    assert!(b <= a * 1.25 + 0.05, "undisturbed {a} vs disturbed {b}");
}

const RESTART_RUN: &[&str] = &[
    "--workers",
    "2",
    "--dataset",
    "synthetic",
    "--width",
    "4",
    "--batch-size",
    "16",
    "--train-limit",
    "960",
    "--test-limit",
    "64",
    // Long enough after the kill at step 25 for the workers to notice the restart while
    // training (faster CPUs finish 3 epochs within the detection window).
    "--epochs",
    "6",
    "--seed",
    "3",
    "--checkpoint-steps",
    "10",
    "--json",
];

#[test]
fn a_killed_coordinator_restarted_with_resume_latest_takes_the_workers_back() {
    // The undisturbed run, for the final parameters (in-process: bit-identical to processes).
    let local = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--local")
        .args(RESTART_RUN)
        .output()
        .expect("local run");
    assert!(local.status.success());
    let calm: Value = serde_json::from_slice(&local.stdout).expect("summary");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let out = tempfile::tempdir().expect("tmp");
    let o = out.path().to_str().expect("utf8");
    let mut first = spawn(
        env!("CARGO_BIN_EXE_coordinator"),
        &[&["--listen", &listen, "--out", o], RESTART_RUN].concat(),
    );
    let metrics = free_port();
    let m = format!("127.0.0.1:{metrics}");
    let w0 = spawn(
        env!("CARGO_BIN_EXE_worker"),
        &[
            "--coordinator",
            &url,
            "--worker-id",
            "w0",
            "--metrics-addr",
            &m,
        ],
    );
    let w1 = spawn(
        env!("CARGO_BIN_EXE_worker"),
        &["--coordinator", &url, "--worker-id", "w1"],
    );
    wait_for("step 25", || {
        gauge(metrics, "resnet_cluster_step").is_some_and(|s| s >= 25)
    });
    let killed_at = gauge(metrics, "resnet_cluster_step").unwrap_or(25);
    first.kill().expect("kill -9 the coordinator");
    let _ = first.wait();
    std::thread::sleep(Duration::from_millis(500));

    // Same address and --out; only the resume flag is new.
    let second = spawn(
        env!("CARGO_BIN_EXE_coordinator"),
        &[
            "--listen",
            &listen,
            "--out",
            o,
            "--json",
            "--resume",
            "latest",
            "--workers",
            "2",
        ],
    );
    for (name, w) in [("w0", w0), ("w1", w1)] {
        let r = w.wait_with_output().expect("worker");
        assert!(
            r.status.success(),
            "{name} failed:\n{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let c = second.wait_with_output().expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "{stderr}");
    let s: Value = serde_json::from_slice(&c.stdout).expect("summary");
    // The step counter went back at most to the last checkpoint before the kill (checkpoints
    // every 10 steps; `killed_at` was read just before the kill, so the kill came at or after it).
    let resumed: u64 = stderr
        .split("(step ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("resuming from ... (step N, ...)");
    assert!(
        resumed.is_multiple_of(10) && resumed >= killed_at / 10 * 10 && resumed <= killed_at + 10,
        "killed at step {killed_at} or a little later, resumed at {resumed}"
    );
    assert_eq!(s["steps"], 180);
    assert_eq!(s["replicas_identical"], true);
    // The restarted coordinator formed one group and kept it: a regroup here would mean a
    // worker broke its new ring on a stale heartbeat answer (the race behind a CI failure).
    assert_eq!(
        s["regroups"],
        serde_json::json!([]),
        "unexpected regroup after the restart"
    );
    // On a mismatch, say where the run resumed and what the restarted coordinator saw (this
    // failed once in CI under load, never locally in 13 runs: the log is the evidence).
    let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
    assert_eq!(
        s["param_hashes"][0],
        calm["param_hashes"][0],
        "the run continued from its checkpoint exactly (killed at step {killed_at}, resumed at \
         {resumed}); the restarted coordinator's last lines:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
