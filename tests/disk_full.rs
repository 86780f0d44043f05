//! A checkpoint volume that fills up mid-run, on a real filesystem: a tmpfs mounted for the test
//! (so it needs root; `.ci/run` runs it as root with `--ignored`). The run must stop with exit
//! code 5, say "No space left on device" and which checkpoint is the newest, leave that
//! checkpoint intact, and a resume from it must finish the run.

use std::path::{Path, PathBuf};
use std::process::Command;

const ARGS: &[&str] = &[
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
    "--seed",
    "3",
    "--checkpoint-steps",
    "2",
];

/// A tmpfs of `bytes` at a fresh directory, unmounted on drop.
struct Tmpfs {
    at: PathBuf,
    /// Holds the mount point's parent until after the unmount.
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("vol");
        std::fs::create_dir_all(&at).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed: this test needs root");
        Self { at, _parent: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

fn train(out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(ARGS)
        .args(["--out", out.to_str().expect("utf-8")])
        .args(extra)
        .output()
        .expect("run resnet");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
#[ignore = "mounts a tmpfs (needs root); .ci/run runs it with --ignored"]
fn a_full_checkpoint_volume_stops_the_run_with_exit_5_and_the_last_good_checkpoint_resumes() {
    // How big one checkpoint of this model is, measured on the ordinary disk.
    let probe = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = train(probe.path(), &["--max-steps", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let one = dir_bytes(&probe.path().join("checkpoints/step-00000002"));
    assert!(one > 100_000, "a checkpoint of {one} bytes");

    // Room for the run's small files and two checkpoints, not three.
    let vol = Tmpfs::mount((2 * one + one / 2 + 64 * 1024).div_ceil(4096) * 4096);
    let out = vol.at.join("run");
    let (code, stderr) = train(&out, &["--max-steps", "20"]);
    assert_eq!(
        code,
        Some(5),
        "exit code 5 when checkpoints are lost\n{stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "the OS cause is kept\n{stderr}"
    );
    assert!(stderr.contains("3 checkpoints in a row"), "{stderr}");
    assert!(
        stderr.contains("step 10:"),
        "stopped at the third failure\n{stderr}"
    );
    assert!(
        stderr.contains("step-00000004"),
        "names the newest checkpoint\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let ckpts = out.join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&ckpts)
        .expect("checkpoints/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["LATEST", "step-00000002", "step-00000004"],
        "the good checkpoints, no staging debris"
    );
    assert_eq!(
        std::fs::read_to_string(ckpts.join("LATEST")).expect("LATEST"),
        "step-00000004"
    );

    // The newest good checkpoint is intact: copied to a disk with room, the run resumes from it
    // and finishes.
    let moved = tempfile::tempdir().expect("tempdir");
    let copy = moved.path().join("run");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&out)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(st.success());
    let (code, stderr) = train(&copy, &["--max-steps", "20", "--resume", "latest"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("step-00000004") || stderr.contains("step 4"),
        "{stderr}"
    );
    assert!(copy.join("checkpoints/step-00000020").is_dir());
}

/// The setup: a coordinator with `--out` on a small volume and workers as separate
/// processes. The coordinator stores two checkpoints, then cannot store more; before this, all
/// processes exited 0 with the final model lost. Now the coordinator and rank 0 exit 5, rank 0
/// keeps its local copy of the final checkpoint (its scratch directory would have vanished),
/// the summary lists every failed upload, and the stored checkpoints are intact.
#[test]
#[ignore = "mounts a tmpfs (needs root); .ci/run runs it with --ignored"]
fn a_full_central_store_fails_the_coordinator_and_rank_0_and_keeps_the_final_state() {
    let probe = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = train(probe.path(), &["--max-steps", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let one = dir_bytes(&probe.path().join("checkpoints/step-00000002"));
    let vol = Tmpfs::mount((2 * one + one / 2 + 64 * 1024).div_ceil(4096) * 4096);
    let out = vol.at.join("run");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let coord = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--workers", "2", "--listen", &listen, "--json"])
        .args(["--out", out.to_str().expect("utf-8")])
        .args(["--dataset", "synthetic", "--depth", "18", "--width", "4"])
        .args([
            "--batch-size",
            "16",
            "--train-limit",
            "320",
            "--test-limit",
            "64",
        ])
        .args([
            "--epochs",
            "3",
            "--seed",
            "3",
            "--checkpoint-steps",
            "2",
            "--max-steps",
            "12",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("coordinator");
    let workers: Vec<_> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_worker"))
                .args(["--coordinator", &listen, "--worker-id", &format!("w{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("worker")
        })
        .collect();
    let workers: Vec<_> = workers
        .into_iter()
        .map(|w| w.wait_with_output().expect("worker output"))
        .collect();
    let coord = coord.wait_with_output().expect("coordinator output");
    let cerr = String::from_utf8_lossy(&coord.stderr);
    assert_eq!(coord.status.code(), Some(5), "coordinator: exit 5\n{cerr}");
    assert!(cerr.contains("final checkpoint was not stored"), "{cerr}");
    assert!(cerr.contains("No space left on device"), "{cerr}");
    assert!(!cerr.contains("panicked"), "{cerr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&coord.stdout).expect("summary JSON on stdout");
    let failed: Vec<u64> = summary["failed_checkpoints"]
        .as_array()
        .expect("failed uploads listed")
        .iter()
        .filter_map(|f| f["step"].as_u64())
        .collect();
    assert_eq!(failed, [6, 8, 10, 12], "{summary}");
    assert_eq!(summary["stored_step"], 4, "{summary}");
    assert!(out
        .join("checkpoints/step-00000004/MANIFEST.json")
        .is_file());
    // Uploads are spooled to disk as they arrive; the failed ones leave no partial files.
    let mut left: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .expect("store")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["LATEST", "step-00000002", "step-00000004"],
        "nothing but the stored checkpoints"
    );

    // Rank 0 failed and kept its local copy; rank 1 had nothing to lose.
    let codes: Vec<Option<i32>> = workers.iter().map(|w| w.status.code()).collect();
    let rank0 = workers
        .iter()
        .find(|w| w.status.code() == Some(5))
        .unwrap_or_else(|| panic!("one worker (rank 0) exits 5: {codes:?}"));
    assert!(codes.contains(&Some(0)), "{codes:?}");
    let werr = String::from_utf8_lossy(&rank0.stderr);
    assert!(werr.contains("local copy is kept"), "{werr}");
    let kept = werr
        .split("newest checkpoint: ")
        .nth(1)
        .and_then(|t| t.split(". Fix").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("names the kept checkpoint\n{werr}"));
    assert!(kept.ends_with("step-00000012"), "{}", kept.display());
    assert!(kept.join("MANIFEST.json").is_file(), "{}", kept.display());
    if let Some(scratch) = kept.ancestors().nth(3) {
        let _ = std::fs::remove_dir_all(scratch);
    }
}
