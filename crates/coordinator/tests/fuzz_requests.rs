//! Property test of the coordinator's request handling, in process (what the gRPC service calls
//! after decoding): any sequence of joins, heartbeats, epoch reports, finishes, checkpoint
//! requests and stop requests with arbitrary fields is answered or refused; the coordinator
//! never panics and its summary (when the run ends) is consistent.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use resnet_coordinator::{Coordinator, CoordinatorConfig};
use resnet_proto::{fingerprint, EpochReport, Finish, Heartbeat, JoinRequest, PROTOCOL_VERSION};

#[derive(Debug, Clone)]
enum Req {
    Join(String, u64, bool, u64),
    Beat(String, usize, u64, u64, f64),
    Report(String, usize, u64, u32, usize, Vec<u64>, f64, bool),
    Finish(String, usize, u64, u64),
    Download(String, u64, u64),
    Upload(String, usize, u64),
    Stop,
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![Just("w0".to_string()), Just("w1".to_string()), ".{0,8}"]
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        (id(), any::<u64>(), any::<bool>(), 0u64..3).prop_map(|(a, b, c, d)| Req::Join(a, b, c, d)),
        (id(), 0usize..3, 0u64..3, any::<u64>(), any::<f64>())
            .prop_map(|(a, b, c, d, e)| Req::Beat(a, b, c, d, e)),
        (
            id(),
            0usize..3,
            0u64..3,
            any::<u32>(),
            prop_oneof![Just(0usize), Just(10), any::<usize>()],
            proptest::collection::vec(any::<u64>(), 0..120),
            any::<f64>(),
            any::<bool>()
        )
            .prop_map(|(a, b, c, d, e, f, g, h)| Req::Report(a, b, c, d, e, f, g, h)),
        (id(), 0usize..3, 0u64..3, any::<u64>()).prop_map(|(a, b, c, d)| Req::Finish(a, b, c, d)),
        (id(), 0u64..3, any::<u64>()).prop_map(|(a, b, c)| Req::Download(a, b, c)),
        (id(), 0usize..3, 0u64..3).prop_map(|(a, b, c)| Req::Upload(a, b, c)),
        Just(Req::Stop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn arbitrary_request_sequences_never_panic(reqs in proptest::collection::vec(req(), 1..12)) {
        let out = tempfile::tempdir().expect("tmp");
        let c = Arc::new(
            Coordinator::new(CoordinatorConfig {
                workers: 1,
                join_timeout: Duration::from_millis(5),
                heartbeat_timeout: Duration::from_secs(60),
                min_workers: 1,
                max_workers: None,
                regroup_timeout: Duration::from_millis(5),
                run: Default::default(),
                out: Some(out.path().to_path_buf()),
                fingerprint: fingerprint(),
                resume: None,
            })
            .expect("coordinator"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for r in reqs {
            match r {
                Req::Join(worker_id, step, rejoin, generation) => {
                    let _ = rt.block_on(c.join(JoinRequest {
                        protocol_version: PROTOCOL_VERSION,
                        worker_id,
                        fingerprint: fingerprint(),
                        data_addr: "127.0.0.1:7000".into(),
                        device: "cpu".into(),
                        step,
                        rejoin,
                        generation,
                        nccl_id: Vec::new(),
                    }));
                }
                Req::Beat(worker_id, rank, generation, step, loss) => {
                    let _ = c.heartbeat(Heartbeat { worker_id, rank, generation, step, loss, images_per_sec: loss });
                }
                Req::Report(worker_id, rank, generation, epoch, num_classes, confusion, x, complete) => {
                    let _ = c.report_epoch(EpochReport {
                        worker_id, rank, generation, epoch, step: epoch as u64,
                        train_loss_sum: x, train_correct: 3, train_seen: 4, train_seconds: x,
                        lr: x, num_classes, confusion, top5_correct: 1, eval_loss_sum: x, complete,
                    });
                }
                Req::Finish(worker_id, rank, generation, steps) => {
                    let _ = c.finish(Finish { worker_id, rank, generation, steps, param_hash: "h".into() });
                }
                Req::Download(worker_id, generation, step) => {
                    let _ = c.resume_checkpoint(&worker_id, generation, step);
                }
                Req::Upload(worker_id, rank, generation) => {
                    let _ = c.checkpoint_upload_allowed(&worker_id, rank, generation);
                }
                Req::Stop => {
                    let _ = c.request_stop();
                }
            }
        }
        if let Some(s) = c.summary() {
            prop_assert_eq!(s.param_hashes.len(), s.world);
        }
    }
}
