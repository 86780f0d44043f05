//! Wire-level fuzzing of the gRPC service: a real coordinator served on loopback receives, for
//! every method, protobuf bodies that are valid messages with arbitrary fields, the same bytes
//! truncated or bit-flipped, or plain noise — as one unary request, a client stream of chunks
//! (`UploadCheckpoint`) or a server-streaming request (`DownloadCheckpoint`). Every call must
//! be answered (a response or a status); no handler may panic; and afterwards the service
//! still answers a well-formed request. Bounded (proptest cases) so it runs in `cargo test`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::{Buf, BufMut};
use proptest::prelude::*;
use prost::Message;
use resnet_coordinator::{serve, Coordinator, CoordinatorConfig};
use resnet_proto::{fingerprint, v1};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Sends and receives raw message bodies (the bytes a generated client would have encoded).
#[derive(Clone, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

const UNARY: &[&str] = &[
    "Join",
    "Heartbeat",
    "ReportEpoch",
    "Finish",
    "Leave",
    "RunConfig",
];

/// Panics anywhere in this process (a handler's panic is caught by its task, so it would
/// otherwise only show as a failed call).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// A well-formed message of `method` with the given field values.
fn message(method: &str, s: &str, n: u64, x: f64, blob: &[u8]) -> Vec<u8> {
    match method {
        "Join" => v1::JoinRequest {
            protocol_version: n as u32,
            worker_id: s.into(),
            fingerprint: fingerprint(),
            data_addr: s.into(),
            device: "cpu".into(),
            step: n,
            rejoin: !n.is_multiple_of(2),
            generation: n % 3,
            nccl_id: blob.to_vec(),
        }
        .encode_to_vec(),
        "Heartbeat" => v1::HeartbeatRequest {
            worker_id: s.into(),
            rank: (n % 3) as u32,
            generation: n % 3,
            step: n,
            loss: x,
            images_per_sec: x,
        }
        .encode_to_vec(),
        "ReportEpoch" => v1::EpochReport {
            worker_id: s.into(),
            rank: (n % 3) as u32,
            generation: n % 3,
            epoch: n as u32,
            step: n,
            train_loss_sum: x,
            num_classes: (n % 12) as u32,
            confusion: blob.iter().map(|b| *b as u64).collect(),
            complete: n.is_multiple_of(2),
            ..Default::default()
        }
        .encode_to_vec(),
        "Finish" => v1::FinishRequest {
            worker_id: s.into(),
            rank: (n % 3) as u32,
            generation: n % 3,
            steps: n,
            param_hash: s.into(),
        }
        .encode_to_vec(),
        "Leave" => v1::LeaveRequest {
            worker_id: s.into(),
            rank: (n % 3) as u32,
            generation: n % 3,
            step: n,
            reason: s.into(),
            diverged: n.is_multiple_of(2),
            loss: x,
        }
        .encode_to_vec(),
        "RunConfig" => v1::RunConfigRequest {
            worker_id: s.into(),
        }
        .encode_to_vec(),
        "DownloadCheckpoint" => v1::CheckpointRequest {
            worker_id: s.into(),
            generation: n % 3,
            step: n,
        }
        .encode_to_vec(),
        _ => v1::CheckpointChunk {
            header: (n.is_multiple_of(2)).then(|| v1::CheckpointHeader {
                worker_id: s.into(),
                rank: (n % 3) as u32,
                generation: n % 3,
                step: n,
                ..Default::default()
            }),
            data: blob.to_vec(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

/// The body actually sent: the message as is, truncated, with a flipped bit, or noise.
fn damage(mut body: Vec<u8>, how: u8, at: usize, noise: &[u8]) -> Vec<u8> {
    match how % 4 {
        0 => body,
        1 => {
            body.truncate(at % (body.len() + 1));
            body
        }
        2 if !body.is_empty() => {
            let i = at % body.len();
            body[i] ^= 1 << (at % 8);
            body
        }
        _ => noise.to_vec(),
    }
}

/// Calls `method` with `body`; the answer (a response or a status) is all that is asked for.
async fn call(ch: Channel, method: &str, body: Vec<u8>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery =
        format!("/resnet_cluster.v1.Coordinator/{method}")
            .parse()
            .map_err(|_| tonic::Status::internal("path"))?;
    match method {
        "UploadCheckpoint" => {
            let chunks = tokio_stream_iter(vec![body.clone(), body]);
            grpc.client_streaming(tonic::Request::new(chunks), path, Raw)
                .await
                .map(|_| ())
        }
        "DownloadCheckpoint" => {
            let mut s = grpc
                .server_streaming(tonic::Request::new(body), path, Raw)
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        _ => grpc
            .unary(tonic::Request::new(body), path, Raw)
            .await
            .map(|_| ()),
    }
}

fn tokio_stream_iter(v: Vec<Vec<u8>>) -> impl tokio_stream::Stream<Item = Vec<u8>> {
    tokio_stream::iter(v)
}

struct Served {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    _out: tempfile::TempDir,
}

fn serve_one() -> Served {
    let out = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let coord = Arc::new(
        Coordinator::new(CoordinatorConfig {
            workers: 1,
            join_timeout: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_secs(60),
            min_workers: 1,
            max_workers: None,
            regroup_timeout: Duration::from_millis(50),
            run: Default::default(),
            out: Some(out.path().to_path_buf()),
            fingerprint: fingerprint(),
            resume: None,
        })
        .expect("coordinator"),
    );
    let channel = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(coord, listener, None, None));
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    });
    Served {
        rt,
        channel,
        _out: out,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn arbitrary_bodies_on_every_method_are_answered_without_a_panic(
        calls in proptest::collection::vec(
            (
                0usize..UNARY.len() + 2,
                // "w0" joins a group of one and then is its member: deeper paths.
                prop_oneof![Just("w0".to_string()), "[a-z0-9]{0,6}"],
                any::<u64>(),
                any::<f64>(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u8>(),
                any::<usize>(),
            ),
            1..8,
        )
    ) {
        count_panics();
        let before = PANICS.load(Ordering::SeqCst);
        let served = serve_one();
        for (m, s, n, x, blob, how, at) in calls {
            let method = match m {
                m if m < UNARY.len() => UNARY[m],
                m if m == UNARY.len() => "UploadCheckpoint",
                _ => "DownloadCheckpoint",
            };
            let n = if m == 0 { n % 4 } else { n }; // some joins with the right protocol version
            let body = damage(message(method, &s, n, x, &blob), how, at, &blob);
            let ch = served.channel.clone();
            // Every call ends (a join may wait for its group: the join timeout is 50 ms).
            let answered = served.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), call(ch, method, body)).await
            });
            prop_assert!(answered.is_ok(), "{method} was not answered");
        }
        // Still serving: a well-formed request gets its answer.
        let ch = served.channel.clone();
        let cfg = served.rt.block_on(call(ch, "RunConfig", message("RunConfig", "w0", 0, 0.0, &[])));
        prop_assert!(cfg.is_ok(), "the service stopped answering: {cfg:?}");
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "a handler panicked");
    }
}
