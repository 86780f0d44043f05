//! Faults injected into real clusters on loopback: `kill -9` of a worker process mid-run. The
//! survivors re-form the group and finish; they end bit-identical, at most the step in flight is
//! lost, and training still converges like an undisturbed run.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn(bin: &str, args: &[&str]) -> Child {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

/// A gauge from a metrics endpoint (the first sample whose line starts with `prefix`).
fn gauge(port: u16, prefix: &str) -> Option<u64> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
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
    "--epochs",
    "3",
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
        "3",
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
            gauge(metrics[1], "resnet_cluster_step{").is_some_and(|s| s >= k)
        });
        workers[1].kill().expect("kill -9");
        let _ = workers[1].wait();
        wait_for("the group to re-form", || {
            gauge(coord_metrics, "resnet_cluster_generation ").is_some_and(|g| g >= 2)
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
    assert_eq!(s["generation"], 3);
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
    let j = &s["regroups"][1];
    assert_eq!(j["joined"], serde_json::json!(["w9"]));
    assert_eq!(
        (j["world"].as_u64(), j["steps_lost"].as_u64()),
        (Some(3), Some(0))
    );
    // Training went on to the end of the 3 epochs and still learned: the final training loss is
    // no worse than the undisturbed run's (same data; while only 2 replicas ran, an epoch took
    // more, smaller steps, so it is often lower).
    let (a, b) = (last_train_loss(&calm), last_train_loss(&s));
    let first = s["epochs"][0]["train_loss"].as_f64().expect("first loss");
    assert!(b < first * 0.6, "did not keep learning: {first} -> {b}");
    assert!(b <= a * 1.25 + 0.05, "undisturbed {a} vs disturbed {b}");
}
