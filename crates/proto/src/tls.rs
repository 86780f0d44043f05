//! Mutual TLS for the control plane: the coordinator serves gRPC over TLS and requires a client
//! certificate signed by the cluster CA; workers present theirs and verify the coordinator's.
//! Certificates name the cluster, not a host ([`TLS_SERVER_NAME`]), so one CA-signed node
//! certificate works for every address.

use std::path::Path;

use crate::ControlError;

/// The name every node certificate must carry (SAN `DNS:resnet-cluster`).
pub const TLS_SERVER_NAME: &str = "resnet-cluster";

/// PEM files of one node: its certificate chain, its private key, and the cluster CA.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Certificate chain (PEM).
    pub cert: Vec<u8>,
    /// Private key (PEM).
    pub key: Vec<u8>,
    /// Cluster CA certificate(s) (PEM).
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial(..)") // never print the key
    }
}

impl TlsMaterial {
    /// Reads the three files; errors name the file.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, ControlError> {
        let read = |what: &str, p: &Path| {
            let bytes = std::fs::read(p)
                .map_err(|e| ControlError(format!("TLS {what} {}: {e}", p.display())))?;
            if !bytes.starts_with(b"-----BEGIN") {
                return Err(ControlError(format!(
                    "TLS {what} {}: not a PEM file",
                    p.display()
                )));
            }
            Ok(bytes)
        };
        Ok(Self {
            cert: read("certificate", cert)?,
            key: read("key", key)?,
            ca: read("CA", ca)?,
        })
    }

    /// The client side for tonic.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .domain_name(TLS_SERVER_NAME)
    }

    /// The server side for tonic: requires client certificates signed by the CA.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca))
    }
}
