//! The control plane's wire format and its edge: generated gRPC code for `resnet_cluster.v1`,
//! domain types with conversions, the blocking [`ControlPlane`] trait the worker programs
//! against, and its gRPC client. Nothing here knows about Burn.

pub mod auth;
pub mod checkpoint;
pub mod client;
pub mod domain;
pub mod spool;
pub mod sweep;
pub mod tls;

pub use auth::{read_token_file, AttachToken, RequireToken};
pub use checkpoint::CheckpointFiles;
pub use client::GrpcControlPlane;
pub use domain::{
    Assignment, ControlError, ControlPlane, EpochReport, Finish, Heartbeat, HeartbeatReply,
    JoinRequest, Leave,
};
pub use sweep::{GrpcSweep, TrialReply};
pub use tls::TlsMaterial;

/// Generated code for `resnet_cluster.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("resnet_cluster.v1");

    /// Encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("resnet_cluster_v1");
}

/// Bumped on any incompatible change to the control protocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// How often workers send heartbeats; the coordinator counts a miss for every further interval
/// of silence.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What must match between coordinator and worker builds: package version, protocol, Burn.
pub fn fingerprint() -> String {
    format!(
        "resnet-cluster/{}/proto-v{PROTOCOL_VERSION}/burn-0.21.0",
        env!("CARGO_PKG_VERSION")
    )
}
