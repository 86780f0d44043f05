//! The gRPC implementation of [`ControlPlane`], with connection retry and backoff.

use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::AttachToken;

use crate::checkpoint::CheckpointFiles;
use crate::domain::{
    Assignment, ControlError, ControlPlane, EpochReport, Finish, Heartbeat, HeartbeatReply,
    JoinRequest,
};
use crate::v1::coordinator_client::CoordinatorClient;

/// A blocking gRPC client; owns a small runtime so callers stay synchronous.
pub struct GrpcControlPlane {
    rt: tokio::runtime::Runtime,
    client: CoordinatorClient<InterceptedService<Channel, AttachToken>>,
    url: String,
    /// Largest checkpoint download accepted (`limit_downloads`).
    max_download: u64,
}

pub(crate) fn status(url: &str, what: &str, s: tonic::Status) -> ControlError {
    // A transport failure arrives as Unknown "transport error" with the reason in its sources.
    let message = match std::error::Error::source(&s) {
        Some(source) if s.code() == tonic::Code::Unknown => {
            // The message's own parts, then the sources' parts it does not already say.
            let mut parts: Vec<&str> = s
                .message()
                .split(": ")
                .filter(|p| *p != "transport error")
                .collect();
            let detail = causes(source);
            for p in detail.split(": ") {
                if !parts.contains(&p) {
                    parts.push(p);
                }
            }
            parts.join(": ")
        }
        _ => s.message().to_string(),
    };
    let transport = s.code() == tonic::Code::Unknown && std::error::Error::source(&s).is_some();
    ControlError(format!(
        "coordinator {url}: {what} refused: {message} ({:?}){}",
        s.code(),
        status_hint(url, s.code(), &message, transport)
    ))
}

/// What a status that is not the coordinator's own refusal means for the operator.
fn status_hint(url: &str, code: tonic::Code, m: &str, transport: bool) -> String {
    match code {
        // A failure of the HTTP/2 exchange itself (a protocol error, or the server closing the
        // connection mid-request), not an answer of the coordinator.
        tonic::Code::Unknown
            if transport
                || m.contains("h2 protocol error")
                || m.contains("http2 error")
                || m.contains("transport error") =>
        {
            format!(
                ": the server at {url} does not speak gRPC (HTTP/2): is this the coordinator's \
                 --listen address (not its --metrics-addr), and do both sides agree on TLS?"
            )
        }
        tonic::Code::Unimplemented => format!(
            ": the server at {url} speaks gRPC but not the resnet-cluster Coordinator service \
             (another server, or a coordinator of an incompatible version)"
        ),
        _ => String::new(),
    }
}

/// The chain of causes of `e` without repeats or tonic's bare "transport error", so a message
/// says "Connection refused (os error 111)" rather than "transport error".
pub(crate) fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Why a connection to `url` failed, with what to check.
fn connect_error(url: &str, e: &tonic::transport::Error) -> String {
    let cause = causes(e);
    let host = url.split("://").nth(1).unwrap_or(url);
    let hint = if cause.contains("Connection refused") {
        format!(" (nothing listens on {host}: is the coordinator running, and is this its --listen address?)")
    } else if cause.contains("dns error") || cause.contains("failed to lookup") {
        " (the host name does not resolve)".to_string()
    } else if cause.contains("InvalidContentType")
        || cause.contains("corrupt message")
        || cause.contains("HandshakeFailure")
        || cause.contains("tls")
    {
        " (the TLS handshake failed: the coordinator and this worker must both use --tls-*, with certificates from the same CA)".to_string()
    } else if cause.contains("timed out") {
        format!(" (no answer from {host}: a firewall, or the wrong address)")
    } else {
        String::new()
    };
    format!("{cause}{hint}")
}

impl GrpcControlPlane {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`), retrying with exponential backoff
    /// (100 ms doubling to 2 s) until `timeout`; the error names the address, the attempts and
    /// the last failure. `token` is sent with every request.
    pub fn connect(
        url: &str,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Self, ControlError> {
        Self::connect_with(url, timeout, token, None)
    }

    /// [`connect`](Self::connect) with mutual TLS (`http://` URLs are upgraded to `https://`).
    pub fn connect_with(
        url: &str,
        timeout: Duration,
        token: Option<&str>,
        tls: Option<&crate::TlsMaterial>,
    ) -> Result<Self, ControlError> {
        let attach = AttachToken::new(token)?;
        let (rt, channel, url) = open_channel(url, timeout, tls)?;
        let client = CoordinatorClient::with_interceptor(channel, attach)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        Ok(Self {
            rt,
            client,
            url,
            max_download: u64::MAX,
        })
    }
}

/// A runtime and a connected channel to `url`, retrying with exponential backoff (100 ms
/// doubling to 2 s) until `timeout`; the error names the address, the attempts and the last
/// failure. Returns the URL actually used (`https://` with TLS).
pub(crate) fn open_channel(
    url: &str,
    timeout: Duration,
    tls: Option<&crate::TlsMaterial>,
) -> Result<(tokio::runtime::Runtime, Channel, String), ControlError> {
    let url = match (tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_string(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ControlError(format!("cannot start the gRPC runtime: {e}")))?;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            ControlError(format!(
                "invalid coordinator address '{url}': {e} (expected e.g. http://host:50051)"
            ))
        })?
        .connect_timeout(Duration::from_secs(2));
    let endpoint = match tls {
        Some(t) => endpoint
            .tls_config(t.client_config())
            .map_err(|e| ControlError(format!("TLS for {url}: {e}")))?,
        None => endpoint,
    };
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match rt.block_on(endpoint.connect()) {
            Ok(channel) => return Ok((rt, channel, url)),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::info!(coordinator = %url, attempt = attempts, error = %causes(&e), "coordinator not reachable yet, retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(ControlError(format!(
                "cannot reach coordinator at {url} after {timeout:.0?} ({attempts} attempts): {}",
                connect_error(&url, &e)
            )))
            }
        }
    }
}

impl ControlPlane for GrpcControlPlane {
    fn limit_downloads(&mut self, max_bytes: u64) {
        self.max_download = max_bytes;
    }

    fn join(&mut self, req: JoinRequest) -> Result<Assignment, ControlError> {
        let r = self
            .rt
            .block_on(self.client.join(crate::v1::JoinRequest::from(req)));
        r.map(|r| r.into_inner().into())
            .map_err(|s| status(&self.url, "join", s))
    }
    fn run_config(&mut self, worker_id: &str) -> Result<String, ControlError> {
        let r = self
            .rt
            .block_on(self.client.run_config(crate::v1::RunConfigRequest {
                worker_id: worker_id.to_string(),
            }));
        r.map(|r| r.into_inner().run_config_json)
            .map_err(|s| status(&self.url, "run configuration", s))
    }
    fn heartbeat(&mut self, hb: Heartbeat) -> Result<HeartbeatReply, ControlError> {
        let r = self
            .rt
            .block_on(self.client.heartbeat(crate::v1::HeartbeatRequest::from(hb)));
        r.map(|r| {
            let r = r.into_inner();
            HeartbeatReply {
                stop: r.stop,
                regroup: r.regroup,
            }
        })
        .map_err(|s| status(&self.url, "heartbeat", s))
    }
    fn report_epoch(&mut self, report: EpochReport) -> Result<(), ControlError> {
        let r = self.rt.block_on(
            self.client
                .report_epoch(crate::v1::EpochReport::from(report)),
        );
        r.map(|_| ())
            .map_err(|s| status(&self.url, "epoch report", s))
    }
    fn finish(&mut self, f: Finish) -> Result<(), ControlError> {
        let r = self
            .rt
            .block_on(self.client.finish(crate::v1::FinishRequest::from(f)));
        r.map(|_| ()).map_err(|s| status(&self.url, "finish", s))
    }
    fn leave(&mut self, l: crate::Leave) -> Result<(), ControlError> {
        let r = self
            .rt
            .block_on(self.client.leave(crate::v1::LeaveRequest::from(l)));
        r.map(|_| ()).map_err(|s| status(&self.url, "leave", s))
    }
    fn upload_checkpoint(&mut self, c: &CheckpointFiles) -> Result<String, ControlError> {
        let chunks = crate::checkpoint::to_chunks(c);
        let r = self
            .rt
            .block_on(self.client.upload_checkpoint(tokio_stream::iter(chunks)));
        r.map(|r| r.into_inner().path)
            .map_err(|s| status(&self.url, "checkpoint upload", s))
    }
    fn download_checkpoint(
        &mut self,
        worker_id: &str,
        generation: u64,
        step: u64,
    ) -> Result<CheckpointFiles, ControlError> {
        let url = self.url.clone();
        let req = crate::v1::CheckpointRequest {
            worker_id: worker_id.to_string(),
            generation,
            step,
        };
        let client = &mut self.client;
        let max = self.max_download;
        self.rt.block_on(async move {
            let mut stream = client
                .download_checkpoint(req)
                .await
                .map_err(|s| status(&url, "checkpoint download", s))?
                .into_inner();
            let mut asm = crate::checkpoint::Assembler::new(max);
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| status(&url, "checkpoint download", s))?
            {
                asm.push(chunk)
                    .map_err(|e| ControlError(format!("checkpoint from {url}: {e}")))?;
            }
            asm.finish()
                .map_err(|e| ControlError(format!("checkpoint from {url}: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_name_the_os_error_once_and_drop_the_bare_transport_error() {
        let e = Wrap(
            "transport error",
            Some(Box::new(Wrap(
                "tcp connect error",
                Some(Box::new(Wrap("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            causes(&e),
            "tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn statuses_that_are_not_refusals_say_what_is_wrong() {
        let url = "http://127.0.0.1:9187";
        let h2 = status(
            url,
            "join",
            tonic::Status::unknown("h2 protocol error: http2 error"),
        );
        assert!(
            h2.0.contains("does not speak gRPC") && h2.0.contains("--metrics-addr"),
            "{h2}"
        );
        // The worker's "is the coordinator unreachable" test keeps working on it.
        assert!(h2.0.contains("(Unknown)"), "{h2}");
        let other = status(url, "join", tonic::Status::unimplemented("no such service"));
        assert!(
            other
                .0
                .contains("not the resnet-cluster Coordinator service"),
            "{other}"
        );
        let plain = status(url, "join", tonic::Status::not_found("unknown worker 'w1'"));
        assert_eq!(
            plain.0,
            "coordinator http://127.0.0.1:9187: join refused: unknown worker 'w1' (NotFound)"
        );
    }
}
