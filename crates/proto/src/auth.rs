//! The shared cluster token: required on every control-plane RPC (gRPC `authorization`
//! metadata) and, as a SHA-256 digest, in the data-plane ring handshake. It is read from a file
//! (`--token-file`, or the file named by `RESNET_CLUSTER_TOKEN_FILE`) so the secret never appears
//! on a command line that `ps` shows.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::domain::ControlError;

const HEADER: &str = "authorization";

/// Reads a token file: the trimmed contents, at least 16 printable ASCII characters.
pub fn read_token_file(path: &Path) -> Result<String, ControlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ControlError(format!("token file {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ControlError(format!(
            "token file {}: expected at least 16 printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)",
            path.display()
        )));
    }
    Ok(token)
}

/// Client side: adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Default)]
pub struct AttachToken(Option<MetadataValue<Ascii>>);

impl AttachToken {
    /// Attaches `token` (or nothing).
    pub fn new(token: Option<&str>) -> Result<Self, ControlError> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ControlError("token is not valid ASCII metadata".into()))
            })
            .transpose()
            .map(AttachToken)
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(HEADER, v.clone());
        }
        Ok(req)
    }
}

/// Server side: refuses requests without the right token with `UNAUTHENTICATED` (logged).
#[derive(Clone, Default)]
pub struct RequireToken(Option<Vec<u8>>);

impl RequireToken {
    /// Requires `token`; `None` admits every request.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| format!("Bearer {t}").into_bytes()))
    }
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else { return Ok(req) };
        let got = req
            .metadata()
            .get(HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(got, want) {
            Ok(req)
        } else {
            tracing::warn!(peer = ?req.remote_addr(), token_present = !got.is_empty(), "unauthenticated request refused");
            Err(Status::unauthenticated("missing or wrong cluster token"))
        }
    }
}
