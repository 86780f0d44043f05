//! The Prometheus endpoint of a real run: `coordinator --local --metrics-addr` serves the
//! coordinator's and every in-process worker's series with the documented names and labels,
//! and the values agree with what the run did.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, scrape, value};

#[test]
fn local_run_exports_documented_series_with_values_matching_the_run() {
    let port = free_port();
    let out = tempfile::tempdir().expect("tmp");
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args([
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
            "--checkpoint-steps",
            "4",
            "--metrics-addr",
            &addr,
            "--metrics-linger",
            "20",
        ])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coordinator");

    // Poll until the run has finished (the endpoint lingers after it).
    let start = Instant::now();
    let text = loop {
        if let Some(t) = scrape(port) {
            if value(&t, "resnet_cluster_run_phase", &["phase=\"finished\""]) == Some(1.0) {
                break t;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "run did not finish"
        );
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("coordinator exited early ({status}) before finishing:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = child.kill();
    let _ = child.wait();

    // 256 images / 2 ranks / batch 16 = 8 steps per epoch, 2 epochs.
    for rank in ["rank=\"0\"", "rank=\"1\""] {
        assert_eq!(
            value(&text, "resnet_cluster_steps_total", &[rank]),
            Some(16.0),
            "{rank}"
        );
        assert_eq!(
            value(&text, "resnet_cluster_train_images_total", &[rank]),
            Some(256.0)
        );
        for phase in ["data", "forward", "backward", "allreduce", "optimizer"] {
            let p = format!("phase=\"{phase}\"");
            assert_eq!(
                value(
                    &text,
                    "resnet_cluster_step_phase_seconds_count",
                    &[rank, &p]
                ),
                Some(16.0),
                "{rank} {phase}"
            );
        }
        assert!(value(&text, "resnet_cluster_allreduce_bytes_total", &[rank]).unwrap_or(0.0) > 0.0);
        // The f32 wire (the default) saves nothing, and says so with a 0, not a missing series.
        assert_eq!(
            value(&text, "resnet_cluster_allreduce_saved_bytes_total", &[rank]),
            Some(0.0)
        );
        assert!(
            value(
                &text,
                "resnet_cluster_allreduce_bus_bandwidth_bytes_per_second",
                &[rank]
            )
            .unwrap_or(0.0)
                > 0.0
        );
    }
    assert!(text.contains("worker_id=\"local-0\""));
    assert!(text.contains("device=\"cpu\""));
    // Only rank 0 writes checkpoints: every 4 steps and at the end of each epoch.
    assert!(
        value(
            &text,
            "resnet_cluster_checkpoint_duration_seconds_count",
            &["rank=\"0\""]
        )
        .unwrap_or(0.0)
            >= 4.0
    );
    assert_eq!(
        value(
            &text,
            "resnet_cluster_checkpoint_size_bytes",
            &["rank=\"1\""]
        ),
        None
    );
    assert_eq!(
        value(
            &text,
            "resnet_cluster_checkpoint_failures_total",
            &["rank=\"0\""]
        ),
        Some(0.0)
    );
    // Coordinator view.
    assert_eq!(
        value(&text, "resnet_cluster_workers_required", &[]),
        Some(2.0)
    );
    assert_eq!(value(&text, "resnet_cluster_generation", &[]), Some(1.0));
    assert_eq!(
        value(&text, "resnet_cluster_run_epochs_completed", &[]),
        Some(2.0)
    );
    for event in ["joined", "finished"] {
        let e = format!("event=\"{event}\"");
        assert_eq!(
            value(&text, "resnet_cluster_membership_events_total", &[&e]),
            Some(2.0)
        );
    }
    assert_eq!(
        value(
            &text,
            "resnet_cluster_grpc_requests_total",
            &["method=\"Join\"", "code=\"OK\""]
        ),
        Some(2.0)
    );
    let acc = value(&text, "resnet_cluster_eval_accuracy_ratio", &[]).expect("eval accuracy");
    assert!((0.0..=1.0).contains(&acc));
    // The summary's final accuracy is the value exported.
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("summary.json")).expect("summary.json"),
    )
    .expect("json");
    let final_acc = summary["final_eval"]["accuracy"]
        .as_f64()
        .expect("accuracy");
    assert!((final_acc - acc).abs() < 1e-12, "{final_acc} vs {acc}");
    // The standard process collector's names, so stock process dashboards work.
    assert!(value(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 1e6);
    assert!(
        value(&text, "process_cpu_seconds_total", &[]).is_some(),
        "{text}"
    );
    assert!(value(&text, "process_open_fds", &[]).unwrap_or(0.0) >= 3.0);
    // Histograms (not summaries), in seconds.
    assert!(text.contains("# TYPE resnet_cluster_step_duration_seconds histogram"));
    assert!(text.contains("resnet_cluster_step_duration_seconds_bucket{"));
}

#[test]
fn busy_metrics_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--local", "--dataset", "synthetic", "--metrics-addr", &addr])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("metrics"), "{err}");
}
