//! Hyperparameter sweeps: `resnet sweep` ranks trials, successive halving stops the weak ones,
//! every trial reproduces from its own config file, and `coordinator --sweep` spreading the
//! same trials over two worker processes produces exactly the same results.

mod common;

use common::{finish, free_port, resnet_ok as resnet, spawn};
use std::path::Path;

const SPACE: &str = r#"
[params]
"optim.lr" = { log_uniform = [0.01, 0.2] }
label_smoothing = { uniform = [0.0, 0.2] }
batch_size = { choice = [16, 32] }
"#;

const BASE: &[&str] = &[
    "--trials",
    "4",
    "--method",
    "halving",
    "--eta",
    "2",
    "--min-epochs",
    "1",
    "--epochs",
    "2",
    "--width",
    "4",
    "--train-limit",
    "96",
    "--test-limit",
    "40",
    "--seed",
    "11",
];

fn rows(csv: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(csv)
        .expect("results.csv")
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn local_sweep_ranks_halves_and_reproduces_each_trial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = dir.path().join("space.toml");
    std::fs::write(&space, SPACE).expect("space");
    let out = dir.path().join("sweep");
    let mut args = vec!["sweep", "--space", space.to_str().expect("utf8")];
    args.extend(BASE);
    args.extend(["--parallel", "2", "--out", out.to_str().expect("utf8")]);
    resnet(&args);
    let csv = out.join("results.csv");
    let header = std::fs::read_to_string(&csv).expect("csv");
    assert!(header.starts_with(
        "rank,trial,seed,batch_size,label_smoothing,optim.lr,epochs,accuracy,loss,status,param_hash"
    ));
    let rows = rows(&csv);
    assert_eq!(rows.len(), 4);
    // Halving with eta 2: two trials reach epoch 2, two stop after epoch 1; finished trials
    // rank first, each group by accuracy.
    let status: Vec<&str> = rows.iter().map(|r| r[9].as_str()).collect();
    assert_eq!(status, ["completed", "completed", "stopped", "stopped"]);
    let epochs: Vec<&str> = rows.iter().map(|r| r[6].as_str()).collect();
    assert_eq!(epochs, ["2", "2", "1", "1"]);
    let acc = |r: &Vec<String>| r[7].parse::<f64>().expect("accuracy");
    assert!(acc(&rows[0]) >= acc(&rows[1]) && acc(&rows[2]) >= acc(&rows[3]));
    // Every trial reproduces from its config.toml: same final weights as in the sweep (the
    // completed ones were paused after rung 1 and resumed, the rerun goes straight through).
    for row in &rows {
        let trial_dir = out.join(format!("trial-{:03}", row[1].parse::<usize>().expect("id")));
        let rerun = dir.path().join(format!("rerun-{}", row[1]));
        let summary = resnet(&[
            "train",
            "--config",
            trial_dir.join("config.toml").to_str().expect("utf8"),
            "--out",
            rerun.to_str().expect("utf8"),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&summary).expect("json");
        assert_eq!(
            v["param_hash"].as_str(),
            Some(row[10].as_str()),
            "trial {}",
            row[1]
        );
    }
    // A second sweep with the same seed samples and trains exactly the same (one at a time).
    let again = dir.path().join("again");
    let mut args = vec!["sweep", "--space", space.to_str().expect("utf8")];
    args.extend(BASE);
    args.extend(["--out", again.to_str().expect("utf8")]);
    resnet(&args);
    assert_eq!(
        std::fs::read_to_string(&csv).expect("csv"),
        std::fs::read_to_string(again.join("results.csv")).expect("csv")
    );
}

#[test]
fn coordinator_sweep_over_two_workers_matches_the_local_sweep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = dir.path().join("space.toml");
    std::fs::write(&space, SPACE).expect("space");
    let local = dir.path().join("local");
    let mut args = vec!["sweep", "--space", space.to_str().expect("utf8")];
    args.extend(BASE);
    args.extend(["--out", local.to_str().expect("utf8")]);
    resnet(&args);

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let cluster = dir.path().join("cluster");
    let mut cargs = vec!["--sweep", space.to_str().expect("utf8")];
    cargs.extend(BASE);
    cargs.extend([
        "--listen",
        &listen,
        "--out",
        cluster.to_str().expect("utf8"),
    ]);
    let coord = spawn(env!("CARGO_BIN_EXE_coordinator"), &cargs);
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|id| {
            let out = dir.path().join(id);
            spawn(
                env!("CARGO_BIN_EXE_worker"),
                &[
                    "--coordinator",
                    &url,
                    "--worker-id",
                    id,
                    "--out",
                    out.to_str().expect("utf8"),
                ],
            )
        })
        .collect();
    let mut trained = 0;
    for (i, w) in workers.into_iter().enumerate() {
        let out = finish(w, &format!("worker {i}"));
        let n: usize = out
            .split("trained ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("worker output: {out}"));
        trained += n;
    }
    let table = finish(coord, "coordinator");
    assert!(table.contains("completed"), "{table}");
    // 4 first-rung runs + 2 promoted ones, spread over both workers.
    assert_eq!(trained, 6);
    assert_eq!(
        std::fs::read_to_string(local.join("results.csv")).expect("local csv"),
        std::fs::read_to_string(cluster.join("results.csv")).expect("cluster csv")
    );
}
