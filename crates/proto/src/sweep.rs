//! The worker's side of `service Sweep`: a blocking client that asks for trials and reports
//! their results (see `coordinator --sweep`).

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::AttachToken;
use crate::client::{open_channel, status};
use crate::domain::ControlError;
use crate::v1::sweep_client::SweepClient;
use crate::v1::trial_assignment::Kind;
pub use crate::v1::{TrialAssignment, TrialReport};

/// What the coordinator answered.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialReply {
    /// Train this.
    Task(TrialAssignment),
    /// Nothing free now; ask again shortly.
    Wait,
    /// The sweep is over.
    Done,
}

/// A blocking `service Sweep` client.
pub struct GrpcSweep {
    rt: tokio::runtime::Runtime,
    client: SweepClient<InterceptedService<Channel, AttachToken>>,
    url: String,
}

impl GrpcSweep {
    /// Connects like [`crate::GrpcControlPlane::connect_with`].
    pub fn connect(
        url: &str,
        timeout: Duration,
        token: Option<&str>,
        tls: Option<&crate::TlsMaterial>,
    ) -> Result<Self, ControlError> {
        let attach = AttachToken::new(token)?;
        let (rt, channel, url) = open_channel(url, timeout, tls)?;
        let client = SweepClient::with_interceptor(channel, attach);
        Ok(Self { rt, client, url })
    }

    /// Asks for the next trial. `Ok(None)`: this coordinator runs a training job, not a sweep.
    pub fn next_trial(&mut self, worker_id: &str) -> Result<Option<TrialReply>, ControlError> {
        let req = crate::v1::TrialRequest {
            worker_id: worker_id.to_string(),
            fingerprint: crate::fingerprint(),
        };
        match self.rt.block_on(self.client.next_trial(req)) {
            Ok(r) => {
                let a = r.into_inner();
                Ok(Some(match a.kind() {
                    Kind::Task => TrialReply::Task(a),
                    Kind::Wait => TrialReply::Wait,
                    Kind::Done => TrialReply::Done,
                }))
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
            Err(s) => Err(status(&self.url, "next trial", s)),
        }
    }

    /// Sends a result, a failure or a heartbeat.
    pub fn report(&mut self, report: TrialReport) -> Result<(), ControlError> {
        self.rt
            .block_on(self.client.report_trial(report))
            .map(|_| ())
            .map_err(|s| status(&self.url, "trial report", s))
    }
}
