//! The gRPC face of [`Coordinator`]: converts types, maps refusals to status codes, logs.

// tonic's handler signatures fix `Result<_, Status>`; boxing it here would only unbox again.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use resnet_proto::v1;
use resnet_proto::v1::coordinator_server::Coordinator as CoordinatorRpc;
use tonic::{Request, Response, Status};

use crate::state::{Coordinator, Refusal};

/// tonic service over a shared [`Coordinator`].
pub struct CoordinatorService(pub Arc<Coordinator>);

fn status(method: &str, r: Refusal) -> Status {
    tracing::warn!(method, reason = %r, "request refused");
    match r {
        Refusal::Incompatible(m) | Refusal::NotJoinable(m) => Status::failed_precondition(m),
        Refusal::Unknown(m) => Status::not_found(m),
        Refusal::Invalid(m) => Status::invalid_argument(m),
        Refusal::Timeout(m) => Status::deadline_exceeded(m),
        Refusal::Storage(m) => Status::internal(m),
    }
}

/// Counts a handled request by method and outcome.
fn observe<T>(method: &'static str, started: Instant, r: Result<T, Status>) -> Result<T, Status> {
    let code = r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
    crate::metrics::grpc(method, code, started.elapsed().as_secs_f64());
    r
}

/// The token check, counting what it turns away (the method is not known at this layer, so
/// those requests are counted as `method="*"`).
#[derive(Clone)]
struct CountingAuth(resnet_proto::RequireToken);

impl tonic::service::Interceptor for CountingAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.0
            .call(req)
            .inspect_err(|s| crate::metrics::grpc("*", s.code(), 0.0))
    }
}

type ChunkStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::CheckpointChunk, Status>> + Send>>;

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    type DownloadCheckpointStream = ChunkStream;

    async fn upload_checkpoint(
        &self,
        req: Request<tonic::Streaming<v1::CheckpointChunk>>,
    ) -> Result<Response<v1::CheckpointAck>, Status> {
        let t = Instant::now();
        let r = self.receive_checkpoint(req.into_inner()).await;
        observe("UploadCheckpoint", t, r.map(Response::new))
    }

    async fn download_checkpoint(
        &self,
        req: Request<v1::CheckpointRequest>,
    ) -> Result<Response<Self::DownloadCheckpointStream>, Status> {
        let t = Instant::now();
        let req = req.into_inner();
        let coord = self.0.clone();
        let files = tokio::task::spawn_blocking(move || {
            coord.resume_checkpoint(&req.worker_id, req.generation, req.step)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))
        .and_then(|r| r.map_err(|r| status("DownloadCheckpoint", r)));
        let r = files.map(|f| {
            let chunks = resnet_proto::checkpoint::to_chunks(&f);
            Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok))) as ChunkStream)
        });
        observe("DownloadCheckpoint", t, r)
    }

    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let t = Instant::now();
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::debug!(%peer, "join request");
        let a = self
            .0
            .join(req.into_inner().into())
            .await
            .map_err(|r| status("Join", r));
        observe("Join", t, a.map(|a| Response::new(a.into())))
    }

    async fn run_config(
        &self,
        _req: Request<v1::RunConfigRequest>,
    ) -> Result<Response<v1::RunConfigResponse>, Status> {
        let t = Instant::now();
        let r = Ok(Response::new(v1::RunConfigResponse {
            run_config_json: self.0.run_config_json(),
        }));
        observe("RunConfig", t, r)
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let t = Instant::now();
        let r = self
            .0
            .heartbeat(req.into_inner().into())
            .map_err(|r| status("Heartbeat", r));
        observe(
            "Heartbeat",
            t,
            r.map(|h| {
                Response::new(v1::HeartbeatResponse {
                    stop: h.stop,
                    regroup: h.regroup,
                })
            }),
        )
    }

    async fn report_epoch(
        &self,
        req: Request<v1::EpochReport>,
    ) -> Result<Response<v1::Ack>, Status> {
        let t = Instant::now();
        let r = self
            .0
            .report_epoch(req.into_inner().into())
            .map_err(|r| status("ReportEpoch", r));
        observe("ReportEpoch", t, r.map(|()| Response::new(v1::Ack {})))
    }

    async fn finish(&self, req: Request<v1::FinishRequest>) -> Result<Response<v1::Ack>, Status> {
        let t = Instant::now();
        let r = self
            .0
            .finish(req.into_inner().into())
            .map_err(|r| status("Finish", r));
        observe("Finish", t, r.map(|()| Response::new(v1::Ack {})))
    }

    async fn leave(&self, req: Request<v1::LeaveRequest>) -> Result<Response<v1::Ack>, Status> {
        let t = Instant::now();
        let r = self
            .0
            .leave_group(req.into_inner().into())
            .map_err(|r| status("Leave", r));
        observe("Leave", t, r.map(|()| Response::new(v1::Ack {})))
    }
}

impl CoordinatorService {
    /// Reads an upload stream, checking the sender first and every chunk as it arrives, then
    /// stores it off the async runtime.
    async fn receive_checkpoint(
        &self,
        mut stream: tonic::Streaming<v1::CheckpointChunk>,
    ) -> Result<v1::CheckpointAck, Status> {
        let bad = |m: String| {
            tracing::warn!(method = "UploadCheckpoint", reason = %m, "request refused");
            Status::invalid_argument(m)
        };
        // Chunks go to disk as they arrive (one chunk in memory at a time), checked as the
        // Assembler would; the spool directory vanishes with any error.
        let mut spool: Option<(resnet_proto::spool::Spool, u64)> = None;
        let coord = self.0.clone();
        let failed = |step: u64, e: resnet_proto::spool::SpoolError| match e {
            resnet_proto::spool::SpoolError::Stream(m) => bad(m),
            io => status(
                "UploadCheckpoint",
                coord.store_failed(Some(step), io.to_string()),
            ),
        };
        while let Some(chunk) = stream.message().await? {
            let (s, step) = match &mut spool {
                Some(s) => s,
                None => {
                    let h = chunk
                        .header
                        .as_ref()
                        .ok_or_else(|| bad("the first chunk carries no header".into()))?;
                    let max = self
                        .0
                        .checkpoint_upload_allowed(&h.worker_id, h.rank as usize, h.generation)
                        .map_err(|r| status("UploadCheckpoint", r))?;
                    let s = self
                        .0
                        .upload_spool(max)
                        .map_err(|r| status("UploadCheckpoint", r))?;
                    spool.insert((s, h.step))
                }
            };
            let step = *step;
            // A small blocking write (at most one chunk, 1 MiB) on this runtime thread: cheaper
            // than a hand-off per chunk, and it works on any runtime flavour.
            s.push(chunk).map_err(|e| failed(step, e))?;
        }
        let (s, step) = spool.ok_or_else(|| bad("empty checkpoint stream".into()))?;
        let coord = self.0.clone();
        // Verifying (fsync of every file) and storing are blocking file I/O: off the runtime.
        let stored = tokio::task::spawn_blocking(move || {
            let done = s.finish().map_err(|e| match e {
                resnet_proto::spool::SpoolError::Stream(m) => Refusal::Invalid(m),
                io => coord.store_failed(Some(step), io.to_string()),
            })?;
            coord.store_spooled(done)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|r| status("UploadCheckpoint", r))?;
        Ok(v1::CheckpointAck {
            path: stored.dir.display().to_string(),
            bytes: stored.bytes,
        })
    }
}

/// Serves the coordinator, gRPC health (`grpc.health.v1`) and reflection on `listener` until
/// the run finishes, then shuts down gracefully (in-flight responses complete).
///
/// With `token`, every coordinator RPC must carry it (`UNAUTHENTICATED` otherwise; health and
/// reflection stay open for probes). With `tls`, everything is served over TLS and every client
/// must present a certificate signed by the cluster CA (mutual TLS).
pub async fn serve(
    coord: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    tls: Option<resnet_proto::TlsMaterial>,
) -> Result<(), String> {
    let (mut reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<v1::coordinator_server::CoordinatorServer<CoordinatorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let svc = v1::coordinator_server::CoordinatorServer::new(CoordinatorService(coord.clone()))
        .max_decoding_message_size(16 << 20);
    let svc = tonic::service::interceptor::InterceptedService::new(
        svc,
        CountingAuth(resnet_proto::RequireToken::new(token.as_deref())),
    );
    let done = coord.clone();
    let progress = tokio::spawn(log_progress(coord.clone()));
    let incoming = tokio_stream_from(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        builder = builder
            .tls_config(t.server_config())
            .map_err(|e| format!("TLS: {e}"))?;
    }
    let result = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            done.wait_finished().await;
            // Let the last Finish response reach its worker before the listener closes.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        })
        .await
        .map_err(|e| e.to_string());
    progress.abort();
    result
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// Checks liveness every second and logs a progress line every 10 s while training: each
/// worker's step, loss, throughput and how long it has been silent.
async fn log_progress(coord: Arc<Coordinator>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        coord.check_liveness();
        n += 1;
        if coord.phase() != crate::state::Phase::Running || !n.is_multiple_of(10) {
            continue;
        }
        for (id, step, loss, ips, silent) in coord.progress() {
            tracing::info!(worker = %id, step, loss = format!("{loss:.4}"), images_per_sec = format!("{ips:.0}"), silent_s = format!("{silent:.1}"), "progress");
        }
    }
}
