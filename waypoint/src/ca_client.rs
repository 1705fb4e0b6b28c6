//! Obtains the waypoint's certificate from the controller's CA
//! (`istio.v1.auth.IstioCertificateService/CreateCertificate`): a fresh key, a CSR naming the
//! waypoint's SPIFFE identity, a bootstrap token as `authorization: Bearer`, and a chain back.
//! The key never leaves the process.

use std::time::{Duration, SystemTime};

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{info, warn};
use weft_identity::{CaToken, SpiffeId, TrustRoots, WorkloadCertificate, WorkloadKey};
use weft_proto::istio::ca::IstioCertificateRequest;
use weft_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;

use crate::identity::{IdentityError, RotatingCertificate, TlsMaterial};

/// Metadata key naming the caller's node, as the controller's CA reads it.
pub const NODE_HEADER: &str = "x-weft-node";
/// Validity asked for.
pub const REQUESTED_TTL: Duration = Duration::from_secs(24 * 3600);

/// How to reach the CA.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `http://host:15010` (local mode) or `https://host:15012`.
    pub address: String,
    /// PEM roots that verify the CA's TLS certificate (for `https://`) and, when the CA's answer
    /// carries no roots, the mesh's peers.
    pub roots_pem: Option<String>,
    /// Read for every request (a projected token rotates).
    pub token: CaToken,
    pub node: Option<String>,
}

fn ca_error(config: &CaClientConfig, reason: impl ToString) -> IdentityError {
    IdentityError::Ca {
        address: config.address.clone(),
        reason: reason.to_string(),
    }
}

async fn channel(config: &CaClientConfig) -> Result<Channel, IdentityError> {
    let mut endpoint = Endpoint::from_shared(config.address.clone())
        .map_err(|e| ca_error(config, e))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15));
    if config.address.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(roots) = &config.roots_pem {
            tls = tls.ca_certificate(Certificate::from_pem(roots));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| ca_error(config, e))?;
    }
    endpoint.connect().await.map_err(|e| ca_error(config, e))
}

/// Asks the CA for a certificate for `identity`.
pub async fn fetch_certificate(
    config: &CaClientConfig,
    identity: &SpiffeId,
) -> Result<TlsMaterial, IdentityError> {
    let key = WorkloadKey::generate().map_err(IdentityError::certificate(identity))?;
    let csr = key
        .csr_for(identity)
        .map_err(IdentityError::certificate(identity))?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: REQUESTED_TTL.as_secs() as i64,
        metadata: None,
    });
    let token = config.token.current().map_err(|e| ca_error(config, e))?;
    let bearer =
        MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| ca_error(config, e))?;
    request.metadata_mut().insert("authorization", bearer);
    if let Some(node) = &config.node {
        let node = MetadataValue::try_from(node.as_str()).map_err(|e| ca_error(config, e))?;
        request.metadata_mut().insert(NODE_HEADER, node);
    }
    let response = IstioCertificateServiceClient::new(channel(config).await?)
        .create_certificate(request)
        .await
        .map_err(|status| ca_error(config, format!("{:?}: {}", status.code(), status.message())))?
        .into_inner();
    let roots_pem = match response.root_cert {
        Some(roots) if !roots.ca_cert.is_empty() => roots.ca_cert.join("\n"),
        _ => match &config.roots_pem {
            Some(roots) => roots.clone(),
            // Without separate roots, the last entry of the chain holds them.
            None => response
                .cert_chain
                .last()
                .cloned()
                .ok_or_else(|| ca_error(config, "empty certificate chain"))?,
        },
    };
    let certificate = WorkloadCertificate::from_pem_chain(identity, &response.cert_chain, key)
        .map_err(IdentityError::certificate(identity))?;
    let roots = TrustRoots::from_pem(&roots_pem)?;
    TlsMaterial::new(certificate, roots)
}

/// Renews the certificate in `target` at each certificate's refresh time (half life), retrying
/// every 10 s after a failure, for as long as the returned task runs.
pub fn spawn_rotation(
    config: CaClientConfig,
    identity: SpiffeId,
    target: std::sync::Arc<RotatingCertificate>,
) -> tokio::task::JoinHandle<()> {
    use crate::identity::CertificateSource;
    tokio::spawn(async move {
        loop {
            let refresh_at = target.current().certificate.refresh_at();
            let wait = refresh_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match fetch_certificate(&config, &identity).await {
                Ok(material) => {
                    info!(%identity, "waypoint certificate renewed");
                    target.replace(material);
                }
                Err(error) => {
                    warn!(%error, "renewing the waypoint certificate failed");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    })
}
