//! Faults injected into real clusters on loopback: `kill -9` of a worker process mid-run. The
//! survivors re-form the group and finish; they end bit-identical, at most the step in flight is
//! lost, and training still converges like an undisturbed run.
//!
//! (Over 400 lines: one scenario per failure, each a whole cluster run, sharing the helpers above
//! them.)

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

/// [`common::SMALL_RUN`] with the rest of a run's flags.
fn run_args(rest: &[&'static str]) -> Vec<&'static str> {
    [common::SMALL_RUN, rest].concat()
}

/// Six epochs with checkpoints every 10 steps: long enough after a kill at step 25 for the
/// workers to notice a restart while training (faster CPUs finish 3 epochs within the
/// detection window). Gradient buckets of 500 floats: the all-reduce overlaps the backward in
/// dozens of buckets a step, so a kill lands in the middle of one.
fn run() -> Vec<&'static str> {
    run_args(&[
        "--epochs",
        "6",
        "--seed",
        "3",
        "--checkpoint-steps",
        "10",
        "--bucket-mb",
        "0.002",
        "--json",
    ])
}

/// A 3-worker run over TCP; with `kill_at`, worker 1 is killed with SIGKILL once it has done
/// that many steps, and once the group has re-formed without it a replacement worker "w9" is
/// started. Returns the coordinator's summary and the finishing workers' stdout.
fn run_with_kill(kill_at: Option<u64>) -> (Value, Vec<String>) {
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
    args.extend(run());
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
    let (calm, _) = run_with_kill(None);
    assert_eq!(calm["world"], 3);
    assert!(calm["regroups"].as_array().is_some_and(|r| r.is_empty()));

    let (s, outputs) = run_with_kill(Some(15));
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

/// [`run`] with two workers.
fn restart_run() -> Vec<&'static str> {
    [&["--workers", "2"][..], &run()].concat()
}

#[test]
fn a_killed_coordinator_restarted_with_resume_latest_takes_the_workers_back() {
    // The undisturbed run, for the final parameters (in-process: bit-identical to processes).
    let local = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--local")
        .args(restart_run())
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
        &[&["--listen", &listen, "--out", o][..], &restart_run()].concat(),
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

/// Rank 0 dies after joining, before any ring connection: a stand-in worker joins first (so it
/// is rank 0), takes its assignment and is gone. The two real workers load their data and try
/// to form the ring while heartbeating; the coordinator drops the silent rank 0, its regroup
/// answer aborts their formation (instead of waiting out the 120 s collective timeout), and
/// they re-form as a group of two, heal from the new rank 0 at step 0 and finish identical.
#[test]
fn a_rank_0_lost_while_the_ring_forms_is_regrouped_without() {
    use resnet_proto::{fingerprint, ControlPlane, GrpcControlPlane, JoinRequest};
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let out = tempfile::tempdir().expect("tmp");
    let coord_metrics = free_port();
    let cm = format!("127.0.0.1:{coord_metrics}");
    let mut args = vec![
        "--workers",
        "3",
        "--listen",
        &listen,
        "--out",
        out.path().to_str().expect("utf8"),
        "--heartbeat-timeout",
        "3",
        "--metrics-addr",
        &cm,
    ];
    args.extend(run_args(&["--epochs", "1", "--json"]));
    let coord = spawn(env!("CARGO_BIN_EXE_coordinator"), &args);

    // A data address nobody listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let ghost_url = url.clone();
    let ghost = std::thread::spawn(move || {
        let mut c =
            GrpcControlPlane::connect(&ghost_url, Duration::from_secs(30), None).expect("connect");
        let a = c
            .join(JoinRequest {
                protocol_version: resnet_proto::PROTOCOL_VERSION,
                worker_id: "ghost".into(),
                fingerprint: fingerprint(),
                data_addr: dead_addr,
                device: "cpu".into(),
                step: 0,
                rejoin: false,
                generation: 0,
                nccl_id: Vec::new(),
            })
            .expect("join");
        a.rank // and gone: no heartbeat, no ring connection
    });
    wait_for("the stand-in to join", || {
        common::scrape(coord_metrics)
            .and_then(|t| {
                common::value(
                    &t,
                    "resnet_cluster_membership_events_total",
                    &["event=\"joined\""],
                )
            })
            .is_some_and(|n| n >= 1.0)
    });
    let workers: Vec<Child> = ["w1", "w2"]
        .iter()
        .map(|id| {
            spawn(
                env!("CARGO_BIN_EXE_worker"),
                &["--coordinator", &url, "--worker-id", id],
            )
        })
        .collect();
    assert_eq!(ghost.join().expect("stand-in"), 0, "the stand-in is rank 0");
    let mut logs = String::new();
    for w in workers {
        let o = w.wait_with_output().expect("worker");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "worker failed:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        logs.push_str(&stderr);
    }
    assert!(
        logs.contains("ring formation aborted"),
        "the regroup should abort the formation, not wait out the timeout:\n{logs}"
    );
    let c = coord.wait_with_output().expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "coordinator failed:\n{stderr}");
    let s: Value = serde_json::from_slice(&c.stdout).expect("summary JSON");
    assert_eq!(s["world"], 2, "{s}");
    assert_eq!(s["replicas_identical"], true, "{s}");
    let r = &s["regroups"][0];
    assert_eq!(r["lost"], serde_json::json!(["ghost"]), "{s}");
    assert_eq!(r["resumed_step"], 0, "{s}");
    // 960 images, global batch 2 x 16: the whole epoch ran in the group of two.
    assert_eq!(s["steps"], 30, "{s}");
}

/// SIGTERM to one of three workers (a pod deleted, a node drained): it announces its leave and
/// exits with code 4; the coordinator re-forms the group without it at once, not after the
/// heartbeat timeout (60 s here, far beyond this run), and the two survivors finish identical.
#[test]
fn a_worker_sent_sigterm_leaves_and_the_others_re_form_without_waiting() {
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
        "--heartbeat-timeout",
        "60",
        "--regroup-timeout",
        "60",
    ];
    args.extend(run());
    let coord = spawn(env!("CARGO_BIN_EXE_coordinator"), &args);
    let metrics = free_port();
    let m = format!("127.0.0.1:{metrics}");
    let mut workers: Vec<Child> = (0..3)
        .map(|i| {
            let id = format!("w{i}");
            let mut a = vec!["--coordinator", &url, "--worker-id", &id];
            if i == 1 {
                a.extend(["--metrics-addr", &m]);
            }
            spawn(env!("CARGO_BIN_EXE_worker"), &a)
        })
        .collect();
    wait_for("worker 1 to train", || {
        gauge(metrics, "resnet_cluster_step").is_some_and(|s| s >= 5)
    });
    let pid = workers[1].id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let leaver = workers.remove(1).wait_with_output().expect("worker 1");
    let stderr = String::from_utf8_lossy(&leaver.stderr);
    assert_eq!(
        leaver.status.code(),
        Some(4),
        "exit code of a leave:\n{stderr}"
    );
    assert!(stderr.contains("left the group"), "{stderr}");
    for w in workers {
        let o = w.wait_with_output().expect("worker");
        assert!(
            o.status.success(),
            "survivor failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let c = coord.wait_with_output().expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "coordinator failed:\n{stderr}");
    assert!(stderr.contains("worker left the group"), "{stderr}");
    assert!(!stderr.contains("sent no heartbeat"), "{stderr}");
    let s: Value = serde_json::from_slice(&c.stdout).expect("summary JSON");
    assert_eq!(s["world"], 2, "{s}");
    assert_eq!(s["replicas_identical"], true, "{s}");
    let r = &s["regroups"][0];
    assert_eq!(r["lost"], serde_json::json!(["w1"]), "{s}");
    assert!(r["steps_lost"].as_u64().expect("lost") <= 1, "{r}");
}
