//! The cluster's security flags and files, shared by `coordinator` and `worker`: mutual TLS
//! (`--tls-cert/--tls-key/--tls-ca`) and the shared token (`--token-file`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::Digest;

/// Mutual TLS for the control plane and the ring (all three or none).
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// This node's certificate (PEM, signed by the cluster CA, SAN DNS:resnet-cluster). With
    /// --tls-key and --tls-ca: gRPC and the gradient ring use mutual TLS.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate (PEM): peers must present certificates it signed.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The loaded material for gRPC and the ring, or None without the flags.
    pub fn load(
        &self,
    ) -> Result<Option<(resnet_proto::TlsMaterial, resnet_collective::tcp::RingTls)>> {
        let (Some(c), Some(k), Some(a)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) else {
            return Ok(None);
        };
        let m = resnet_proto::TlsMaterial::load(c, k, a)?;
        let ring = resnet_collective::tcp::RingTls::from_pem(&m.cert, &m.key, &m.ca)
            .with_context(|| format!("--tls-cert {} / --tls-key {}", c.display(), k.display()))?;
        Ok(Some((m, ring)))
    }
}

/// The token from `--token-file` (if any) and its SHA-256 for the ring handshake.
pub(crate) fn load_token(file: &Option<PathBuf>) -> Result<(Option<String>, [u8; 32])> {
    let Some(f) = file else {
        return Ok((None, [0; 32]));
    };
    let token = resnet_proto::read_token_file(f)?;
    let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    Ok((Some(token), digest))
}
