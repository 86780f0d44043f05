//! `worker --gpus`: one process starts and watches a worker per GPU. Here the workers run on
//! the CPU (`--cpu`), numbered like GPUs: the same supervision a GPU node gets, without GPUs.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{free_port, spawn};

const RUN: &[&str] = &["--seed", "3", "--checkpoint-steps", "10", "--json"];

/// Starts a 2-worker coordinator (with a central store, so lost workers can be replaced) and
/// one `worker --gpus 0,1 --cpu --worker-id <id>` for it; returns both, the first child's
/// metrics port and the run directory.
fn start(
    epochs: &str,
    id: &str,
) -> (
    std::process::Child,
    std::process::Child,
    u16,
    tempfile::TempDir,
) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = tempfile::tempdir().expect("tmp");
    let mut args = vec![
        "--workers",
        "2",
        "--listen",
        &listen,
        "--out",
        out.path().to_str().expect("utf8"),
        "--regroup-timeout",
        "5",
        "--epochs",
        epochs,
    ];
    args.extend(common::SMALL_RUN);
    args.extend(RUN);
    let coord = spawn(env!("CARGO_BIN_EXE_coordinator"), &args);
    // Two children: the second serves its metrics one port above the first.
    let metrics = common::free_ports(2);
    let m = format!("127.0.0.1:{metrics}");
    let node = spawn(
        env!("CARGO_BIN_EXE_worker"),
        &[
            "--coordinator",
            &listen,
            "--gpus",
            "0,1",
            "--cpu",
            "--worker-id",
            id,
            "--metrics-addr",
            &m,
        ],
    );
    (coord, node, metrics, out)
}

fn summary(coord: std::process::Child) -> Value {
    let c = coord.wait_with_output().expect("coordinator");
    let stderr = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success(), "coordinator failed:\n{stderr}");
    serde_json::from_slice(&c.stdout).expect("summary JSON")
}

#[test]
fn one_command_starts_a_worker_per_gpu_with_its_own_id_ports_and_log_prefix() {
    let (coord, node, _metrics, _out) = start("1", "node-a");
    let o = node.wait_with_output().expect("supervisor");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "supervisor failed:\n{stderr}");
    assert!(
        stderr.contains("[gpu 0] ") && stderr.contains("[gpu 1] "),
        "{stderr}"
    );
    let s = summary(coord);
    assert_eq!(s["world"], 2, "{s}");
    assert_eq!(s["replicas_identical"], true, "{s}");
}

/// A child killed mid-run is started again under a new id; it joins the running job, so the
/// run ends with both workers, identical, and the supervisor succeeds.
#[test]
fn a_worker_that_dies_is_started_again_and_joins_the_running_job() {
    let (coord, node, metrics, _out) = start("6", "node-b");
    // The second child serves its metrics one port above the first.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let step = common::scrape(metrics + 1)
            .and_then(|t| common::value(&t, "resnet_cluster_step", &[]))
            .unwrap_or(0.0);
        if step >= 5.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the second worker never trained");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", "--", "--worker-id node-b-gpu1"])
        .status()
        .expect("pkill");
    assert!(killed.success(), "no process of the second worker found");
    let o = node.wait_with_output().expect("supervisor");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "supervisor failed:\n{stderr}");
    assert!(stderr.contains("starting it again"), "{stderr}");
    let s = summary(coord);
    assert_eq!(s["world"], 2, "{s}");
    assert_eq!(s["replicas_identical"], true, "{s}");
    let regroups = s["regroups"].as_array().expect("regroups");
    assert!(
        regroups
            .iter()
            .any(|r| r["joined"] == serde_json::json!(["node-b-gpu1-r1"])),
        "the restarted worker joined: {s}"
    );
}
