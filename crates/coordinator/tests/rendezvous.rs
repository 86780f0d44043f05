//! The coordinator's admission and bookkeeping rules, driven in-process (no network): every bad
//! request is refused with a precise reason, and nothing is left half-registered.
//!
//! (Over 400 lines: one scenario per rule of the rendezvous, sharing the fixtures.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use resnet_coordinator::{Coordinator, CoordinatorConfig, Phase, Refusal};
use resnet_proto::{
    fingerprint, EpochReport, Finish, Heartbeat, JoinRequest, Leave, PROTOCOL_VERSION,
};

fn coord(workers: usize, join_timeout_ms: u64) -> Arc<Coordinator> {
    Arc::new(
        Coordinator::new(CoordinatorConfig {
            workers,
            join_timeout: Duration::from_millis(join_timeout_ms),
            heartbeat_timeout: Duration::from_secs(60),
            min_workers: 1,
            max_workers: None,
            regroup_timeout: Duration::from_secs(5),
            run: Default::default(),
            out: None,
            fingerprint: fingerprint(),
            resume: None,
        })
        .expect("coordinator"),
    )
}

fn join_req(id: &str) -> JoinRequest {
    JoinRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: id.into(),
        fingerprint: fingerprint(),
        data_addr: "127.0.0.1:7000".into(),
        device: "cpu".into(),
        step: 0,
        rejoin: false,
        generation: 0,
        nccl_id: Vec::new(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn incompatible_builds_and_bad_fields_are_refused() {
    let rt = rt();
    let c = coord(2, 1000);
    let bad_fp = JoinRequest {
        fingerprint: "resnet-cluster/0.0.0/proto-v1/burn-0.20".into(),
        ..join_req("a")
    };
    let e = rt.block_on(c.join(bad_fp)).expect_err("fingerprint");
    assert!(
        matches!(&e, Refusal::Incompatible(m) if m.contains("does not match")),
        "{e}"
    );
    let bad_proto = JoinRequest {
        protocol_version: 99,
        ..join_req("a")
    };
    let e = rt.block_on(c.join(bad_proto)).expect_err("protocol");
    assert!(
        matches!(&e, Refusal::Incompatible(m) if m.contains("protocol v99")),
        "{e}"
    );
    let e = rt
        .block_on(c.join(JoinRequest {
            data_addr: "nonsense".into(),
            ..join_req("a")
        }))
        .expect_err("addr");
    assert!(matches!(e, Refusal::Invalid(_)));
    assert!(
        c.members().is_empty(),
        "refused workers must not be registered"
    );
}

/// Joins `a` and `b` with the given (device, nccl id) and returns their assignments' NCCL ids.
fn nccl_ids(a: (&str, Vec<u8>), b: (&str, Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
    let rt = rt();
    let c = coord(2, 5000);
    let (c1, c2) = (c.clone(), c.clone());
    let ra = JoinRequest {
        device: a.0.into(),
        nccl_id: a.1,
        ..join_req("a")
    };
    let rb = JoinRequest {
        device: b.0.into(),
        nccl_id: b.1,
        ..join_req("b")
    };
    let ja = rt.spawn(async move { c1.join(ra).await });
    std::thread::sleep(Duration::from_millis(100));
    let jb = rt.spawn(async move { c2.join(rb).await });
    let (x, y) = (
        rt.block_on(ja).expect("task").expect("join a"),
        rt.block_on(jb).expect("task").expect("join b"),
    );
    (x.nccl_id, y.nccl_id)
}

#[test]
fn nccl_is_chosen_only_when_every_rank_offers_it() {
    // Both CUDA with NCCL: everyone gets rank 0's id.
    let (a, b) = nccl_ids(("cuda:0", vec![1; 128]), ("cuda:1", vec![2; 128]));
    assert_eq!((a.clone(), b), (vec![1; 128], vec![1; 128]));
    // A CPU rank (or a CUDA rank without NCCL) in the group: the TCP ring for all.
    let (a, b) = nccl_ids(("cuda:0", vec![1; 128]), ("cpu", Vec::new()));
    assert!(a.is_empty() && b.is_empty());
    let (a, b) = nccl_ids(("cuda:0", vec![1; 128]), ("cuda:0", Vec::new()));
    assert!(a.is_empty() && b.is_empty());
}

#[test]
fn rendezvous_assigns_ranks_and_refuses_latecomers_and_duplicates() {
    let rt = rt();
    let c = coord(2, 5000);
    let (c1, c2) = (c.clone(), c.clone());
    let a = rt.spawn(async move { c1.join(join_req("a")).await });
    std::thread::sleep(Duration::from_millis(100));
    let dup = rt
        .block_on(c.join(join_req("a")))
        .expect_err("duplicate id");
    assert!(
        matches!(&dup, Refusal::NotJoinable(m) if m.contains("already joined")),
        "{dup}"
    );
    let b = rt.spawn(async move { c2.join(join_req("b")).await });
    let (a, b) = (
        rt.block_on(a).expect("task").expect("join a"),
        rt.block_on(b).expect("task").expect("join b"),
    );
    assert_eq!((a.rank, b.rank, a.world, a.generation), (0, 1, 2, 1));
    assert_eq!(a.peers, b.peers);
    assert_eq!(c.phase(), Phase::Running);
    let late = rt.block_on(c.join(join_req("c"))).expect_err("full");
    assert!(
        matches!(&late, Refusal::NotJoinable(m) if m.contains("already has its 2 workers")),
        "{late}"
    );
}

#[test]
fn join_timeout_unregisters_the_worker() {
    let rt = rt();
    let c = coord(2, 200);
    let e = rt
        .block_on(c.join(join_req("lonely")))
        .expect_err("timeout");
    assert!(
        matches!(&e, Refusal::Timeout(m) if m.contains("1 of 2 workers")),
        "{e}"
    );
    assert!(c.members().is_empty());
    assert_eq!(c.phase(), Phase::Waiting);
}

#[test]
fn stale_unknown_and_malformed_reports_are_refused_and_counts_are_summed() {
    let rt = rt();
    let c = coord(1, 1000);
    let a = rt.block_on(c.join(join_req("a"))).expect("join");
    let hb = Heartbeat {
        worker_id: "a".into(),
        rank: 0,
        generation: a.generation,
        step: 3,
        loss: 1.0,
        images_per_sec: 10.0,
    };
    assert_eq!(c.heartbeat(hb.clone()), Ok(Default::default()));
    assert!(
        matches!(c.heartbeat(Heartbeat { generation: 7, ..hb.clone() }), Err(Refusal::Unknown(m)) if m.contains("stale generation 7"))
    );
    assert!(matches!(
        c.heartbeat(Heartbeat {
            worker_id: "ghost".into(),
            ..hb.clone()
        }),
        Err(Refusal::Unknown(_))
    ));
    assert!(
        matches!(c.heartbeat(Heartbeat { rank: 5, ..hb }), Err(Refusal::Unknown(m)) if m.contains("has rank 0"))
    );
    let report = EpochReport {
        worker_id: "a".into(),
        rank: 0,
        generation: a.generation,
        epoch: 1,
        step: 10,
        train_loss_sum: 20.0,
        train_correct: 5,
        train_seen: 10,
        train_seconds: 2.0,
        lr: 0.1,
        num_classes: 2,
        confusion: vec![3, 1, 0, 4],
        top5_correct: 8,
        eval_loss_sum: 4.0,
        complete: true,
    };
    let bad = EpochReport {
        confusion: vec![1, 2, 3],
        ..report.clone()
    };
    assert!(
        matches!(c.report_epoch(bad), Err(Refusal::Invalid(m)) if m.contains("expected num_classes^2 = 4"))
    );
    c.report_epoch(report).expect("report");
    c.finish(Finish {
        worker_id: "a".into(),
        rank: 0,
        generation: a.generation,
        steps: 10,
        param_hash: "h".into(),
    })
    .expect("finish");
    assert_eq!(c.phase(), Phase::Finished);
    let s = c.summary().expect("summary");
    assert_eq!(s.epochs[0].train_loss, 2.0);
    let t = s.final_eval.expect("eval");
    assert_eq!((t.samples, t.accuracy), (8, 7.0 / 8.0));
    assert!(s.replicas_identical);
}

#[test]
fn survivors_re_form_the_group_ranked_by_progress_and_the_silent_worker_is_dropped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let c = Arc::new(
        Coordinator::new(CoordinatorConfig {
            workers: 3,
            join_timeout: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(60),
            min_workers: 2,
            max_workers: None,
            regroup_timeout: Duration::from_millis(400),
            run: Default::default(),
            out: Some(tmp.path().to_path_buf()),
            fingerprint: fingerprint(),
            resume: None,
        })
        .expect("coordinator"),
    );
    let rt = rt();
    let first: Vec<_> = rt.block_on(async {
        let joins = ["a", "b", "c"].map(|id| {
            let c = c.clone();
            tokio::spawn(async move { c.join(join_req(id)).await })
        });
        let mut out = Vec::new();
        for j in joins {
            out.push(j.await.expect("task").expect("join"));
        }
        out
    });
    assert_eq!(first[0].generation, 1);
    // "a" and "c" survive (c one step further); "b" is gone for good.
    let rejoin = |id: &str, step: u64| JoinRequest {
        step,
        rejoin: true,
        ..join_req(id)
    };
    let second: Vec<_> = rt.block_on(async {
        let a = tokio::spawn({
            let c = c.clone();
            let r = rejoin("a", 10);
            async move { c.join(r).await }
        });
        let cc = tokio::spawn({
            let c = c.clone();
            let r = rejoin("c", 11);
            async move { c.join(r).await }
        });
        // While re-forming, members of the old generation are told to regroup.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = c
            .heartbeat(Heartbeat {
                worker_id: "b".into(),
                rank: 1,
                generation: 1,
                step: 10,
                loss: 1.0,
                images_per_sec: 1.0,
            })
            .expect("heartbeat");
        assert!(reply.regroup);
        // The deadline (400 ms) passes in check_liveness (the service calls it every second),
        // here looked at half a second ahead instead of slept through.
        c.check_liveness_at(Instant::now() + Duration::from_millis(500));
        vec![
            a.await.expect("task").expect("a rejoined"),
            cc.await.expect("task").expect("c rejoined"),
        ]
    });
    let (a, cc) = (&second[0], &second[1]);
    assert_eq!((cc.rank, a.rank), (0, 1), "the most advanced replica leads");
    assert_eq!((a.world, a.generation, cc.generation), (2, 2, 2));
    assert_eq!(a.resume_step, 11);
    assert_eq!(a.peers.len(), 2);
    // "b" cannot come back into the new generation.
    let e = rt.block_on(c.join(rejoin("b", 12))).expect_err("dropped");
    assert!(matches!(e, Refusal::Unknown(_)), "{e:?}");
    assert_eq!(c.phase(), Phase::Running);
}

#[test]
fn below_min_workers_the_group_waits_for_a_replacement_then_fails_without_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let make = |join_ms: u64| {
        Arc::new(
            Coordinator::new(CoordinatorConfig {
                workers: 2,
                join_timeout: Duration::from_millis(join_ms),
                heartbeat_timeout: Duration::from_secs(60),
                min_workers: 2,
                max_workers: None,
                regroup_timeout: Duration::from_millis(200),
                run: Default::default(),
                out: Some(tmp.path().to_path_buf()),
                fingerprint: fingerprint(),
                resume: None,
            })
            .expect("coordinator"),
        )
    };
    let rt = rt();
    let form = |c: &Arc<Coordinator>| {
        rt.block_on(async {
            let a = tokio::spawn({
                let c = c.clone();
                async move { c.join(join_req("a")).await }
            });
            c.join(join_req("b")).await.expect("b");
            a.await.expect("task").expect("a");
        })
    };
    let rejoin_a = JoinRequest {
        step: 5,
        rejoin: true,
        generation: 1,
        ..join_req("a")
    };

    // "b" is lost; "a" alone is below --min-workers 2, so the group waits; "c" arrives.
    let c = make(5000);
    form(&c);
    let (a, newcomer) = rt.block_on(async {
        let a = tokio::spawn({
            let (c, r) = (c.clone(), rejoin_a.clone());
            async move { c.join(r).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.check_liveness();
        assert_eq!(c.phase(), Phase::Running, "waiting, not failed");
        let n = c.join(join_req("c")).await.expect("replacement");
        (a.await.expect("task").expect("a"), n)
    });
    assert_eq!((a.rank, newcomer.rank, a.world, a.generation), (0, 1, 2, 2));
    assert!(a.heal && newcomer.heal);

    // No replacement within the join timeout: the run fails and says why.
    let c = make(600);
    form(&c);
    let r = rt.block_on(async {
        let h = tokio::spawn({
            let (c, r) = (c.clone(), rejoin_a.clone());
            async move { c.join(r).await }
        });
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.check_liveness();
        }
        h.await.expect("task")
    });
    assert!(r.is_err());
    assert_eq!(c.phase(), Phase::Failed);
    let why = c.failure().expect("reason");
    assert!(
        why.contains("lost: b") && why.contains("--min-workers 2"),
        "{why}"
    );
}

/// `DownloadCheckpoint` checks membership before touching the store: a stranger learns
/// nothing (not even whether a step exists) and costs no hashing.
#[test]
fn checkpoint_downloads_check_membership_before_reading_anything() {
    let tmp = tempfile::tempdir().expect("tmp");
    let c = Coordinator::new(CoordinatorConfig {
        workers: 1,
        join_timeout: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(60),
        min_workers: 1,
        max_workers: None,
        regroup_timeout: Duration::from_secs(5),
        run: Default::default(),
        out: Some(tmp.path().to_path_buf()),
        fingerprint: fingerprint(),
        resume: None,
    })
    .expect("coordinator");
    // Uploads are capped at what this run's checkpoints can weigh (default run: ResNet-18,
    // 11.7M parameters, SGD momentum: ~94 MB of tensors), not at 16 GiB.
    let a = rt().block_on(c.join(join_req("a"))).expect("join");
    let max = c
        .checkpoint_upload_allowed("a", 0, a.generation)
        .expect("rank 0 may upload");
    assert!((150 << 20..400 << 20).contains(&max), "{max}");
    // Step 7 was never stored: a member would hear "missing manifest"; a stranger only that it
    // is unknown.
    match c.resume_checkpoint("stranger", 1, 7) {
        Err(Refusal::Unknown(m)) => assert!(m.contains("unknown worker 'stranger'"), "{m}"),
        other => panic!("expected an unknown-worker refusal, got {other:?}"),
    }
}

fn leave(id: &str, rank: usize, step: u64) -> Leave {
    Leave {
        worker_id: id.into(),
        rank,
        generation: 1,
        step,
        reason: "SIGTERM".into(),
        diverged: false,
        loss: f64::NAN,
    }
}

/// A worker that announces its leave (SIGTERM) is dropped at once: the survivors' heartbeats
/// are answered "regroup" right away (no heartbeat timeout: it is 60 s here), and the group
/// re-forms as soon as both survivors rejoin, without waiting for the regroup deadline.
#[test]
fn a_worker_that_leaves_is_dropped_at_once_and_the_survivors_re_form_without_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let c = Arc::new(
        Coordinator::new(CoordinatorConfig {
            workers: 3,
            join_timeout: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(60),
            min_workers: 1,
            max_workers: None,
            regroup_timeout: Duration::from_secs(60),
            run: Default::default(),
            out: Some(tmp.path().to_path_buf()),
            fingerprint: fingerprint(),
            resume: None,
        })
        .expect("coordinator"),
    );
    let rt = rt();
    rt.block_on(async {
        let joins = ["a", "b", "c"].map(|id| {
            let c = c.clone();
            tokio::spawn(async move { c.join(join_req(id)).await })
        });
        for j in joins {
            j.await.expect("task").expect("join");
        }
    });
    let beat = |id: &str, rank: usize| {
        c.heartbeat(Heartbeat {
            worker_id: id.into(),
            rank,
            generation: 1,
            step: 7,
            loss: 1.0,
            images_per_sec: 1.0,
        })
    };
    assert!(!beat("a", 0).expect("beat").regroup);
    c.leave_group(leave("b", 1, 7)).expect("leave");
    assert!(
        beat("a", 0).expect("beat").regroup,
        "survivors learn it at once"
    );
    // A stranger cannot make anyone leave.
    let e = c.leave_group(leave("zz", 0, 1)).expect_err("not a member");
    assert!(matches!(e, Refusal::Unknown(_)), "{e:?}");
    let started = std::time::Instant::now();
    let second: Vec<_> = rt.block_on(async {
        let rejoins = [("a", 7), ("c", 7)].map(|(id, step)| {
            let c = c.clone();
            let r = JoinRequest {
                step,
                rejoin: true,
                generation: 1,
                ..join_req(id)
            };
            tokio::spawn(async move { c.join(r).await })
        });
        let mut out = Vec::new();
        for j in rejoins {
            out.push(j.await.expect("task").expect("rejoin"));
        }
        out
    });
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the group waited for the leaver (regroup deadline 60 s)"
    );
    assert_eq!((second[0].rank, second[1].rank), (0, 1));
    assert_eq!((second[0].world, second[0].generation), (2, 2));
    assert_eq!(c.phase(), Phase::Running);
    // The leaver cannot come back into the new generation as a member.
    let e = rt
        .block_on(c.join(JoinRequest {
            step: 7,
            rejoin: true,
            generation: 1,
            ..join_req("b")
        }))
        .expect_err("it left");
    assert!(matches!(e, Refusal::Unknown(_)), "{e:?}");
}

/// The last worker leaving, or any worker of a run that cannot re-form (no checkpoint store),
/// fails the run with a reason naming it, instead of waiting for a heartbeat timeout.
#[test]
fn a_leave_that_the_group_cannot_survive_fails_the_run_naming_the_worker() {
    let c = coord(2, 5_000);
    let rt = rt();
    rt.block_on(async {
        let joins = ["a", "b"].map(|id| {
            let c = c.clone();
            tokio::spawn(async move { c.join(join_req(id)).await })
        });
        for j in joins {
            j.await.expect("task").expect("join");
        }
    });
    c.leave_group(leave("b", 1, 3)).expect("leave");
    assert_eq!(c.phase(), Phase::Failed);
    let why = c.failure().expect("a reason");
    assert!(why.contains("'b' left at step 3 (SIGTERM)"), "{why}");
    assert!(why.contains("--out"), "{why}");
}

/// `--max-workers`: by default the group never grows past `--workers` (an extra worker would
/// silently grow the global batch), and above the limit a joining worker is refused by name;
/// with a higher limit a worker joins the running job until the limit is reached.
#[test]
fn workers_joining_a_running_job_are_admitted_up_to_max_workers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let make = |max: Option<usize>, join_ms: u64| {
        Coordinator::new(CoordinatorConfig {
            workers: 2,
            join_timeout: Duration::from_millis(join_ms),
            heartbeat_timeout: Duration::from_secs(60),
            min_workers: 1,
            max_workers: max,
            regroup_timeout: Duration::from_secs(10),
            run: Default::default(),
            out: Some(tmp.path().to_path_buf()),
            fingerprint: fingerprint(),
            resume: None,
        })
        .map(Arc::new)
    };
    let e = make(Some(1), 1000).err().expect("max below workers");
    assert!(e.contains("--max-workers 1"), "{e}");
    let rt = rt();
    let form = |c: &Arc<Coordinator>| {
        rt.block_on(async {
            let joins = ["a", "b"].map(|id| {
                let c = c.clone();
                tokio::spawn(async move { c.join(join_req(id)).await })
            });
            for j in joins {
                j.await.expect("task").expect("join");
            }
        })
    };
    // A full group: the newcomer waits for a place (the join timeout, 1 s here), then is refused.
    let c = make(None, 1000).expect("coordinator");
    form(&c);
    let e = rt.block_on(c.join(join_req("c"))).expect_err("full");
    assert!(
        matches!(&e, Refusal::NotJoinable(m) if m.contains("--max-workers 2") && m.contains("'c'")),
        "{e:?}"
    );
    assert_eq!(c.phase(), Phase::Running, "the refusal changes nothing");

    let c = make(Some(3), 2000).expect("coordinator");
    form(&c);
    let assigned = rt.block_on(async {
        let newcomer = tokio::spawn({
            let c = c.clone();
            async move { c.join(join_req("c")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rejoins = ["a", "b"].map(|id| {
            let c = c.clone();
            let r = JoinRequest {
                step: 4,
                rejoin: true,
                generation: 1,
                ..join_req(id)
            };
            tokio::spawn(async move { c.join(r).await })
        });
        for j in rejoins {
            j.await.expect("task").expect("rejoin");
        }
        newcomer.await.expect("task").expect("admitted")
    });
    assert_eq!((assigned.rank, assigned.world), (2, 3));
    let e = rt.block_on(c.join(join_req("d"))).expect_err("full at 3");
    assert!(
        matches!(&e, Refusal::NotJoinable(m) if m.contains("--max-workers 3")),
        "{e:?}"
    );
}

/// When every worker holding the run's state is gone, a worker that joins has nothing to heal
/// the group from (its model is fresh): the run fails with what to do, instead of continuing
/// from a fresh model or stranding the newcomer.
#[test]
fn newcomers_alone_cannot_continue_a_run_whose_state_holders_are_all_lost() {
    let tmp = tempfile::tempdir().expect("tmp");
    let c = Arc::new(
        Coordinator::new(CoordinatorConfig {
            workers: 1,
            join_timeout: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_millis(200),
            min_workers: 1,
            max_workers: None,
            regroup_timeout: Duration::from_millis(200),
            run: Default::default(),
            out: Some(tmp.path().to_path_buf()),
            fingerprint: fingerprint(),
            resume: None,
        })
        .expect("coordinator"),
    );
    let rt = rt();
    rt.block_on(c.join(join_req("a"))).expect("a joins");
    let e = rt.block_on(async {
        // "a" falls silent (200 ms heartbeat timeout, seen 300 ms ahead): the group re-forms
        // without it; once the regroup deadline (200 ms more) has passed, it waits for a
        // replacement.
        c.check_liveness_at(Instant::now() + Duration::from_millis(300));
        c.check_liveness_at(Instant::now() + Duration::from_millis(600));
        assert_eq!(c.phase(), Phase::Running, "waiting for a replacement");
        c.join(join_req("b"))
            .await
            .expect_err("nothing to heal from")
    });
    assert!(matches!(e, Refusal::NotJoinable(_)), "{e:?}");
    assert_eq!(c.phase(), Phase::Failed);
    let why = c.failure().expect("reason");
    assert!(
        why.contains("every worker holding the run's state is lost")
            && why.contains("--resume auto"),
        "{why}"
    );
}
