//! Who signs: the controller's CA over gRPC (`IstioCertificateService/CreateCertificate`, as
//! ztunnel calls it), or a CA held in the process (a waypoint given a CA directory: tests and
//! single-machine demos).

use std::{sync::Arc, time::Duration};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_identity::{CaToken, CertificateAuthority, SpiffeId};
use weft_proto::istio::ca::{
    CLUSTER_ID_HEADER, IMPERSONATED_IDENTITY, IstioCertificateRequest, NODE_HEADER,
    istio_certificate_service_client::IstioCertificateServiceClient,
};

use super::CaClient;

/// The controller's CA over gRPC.
pub struct GrpcCaClient {
    client: IstioCertificateServiceClient<Channel>,
    token: CaToken,
    /// The caller's node, when it has one (a node agent always; a waypoint in local mode).
    node: Option<String>,
    cluster_id: Option<String>,
}

impl GrpcCaClient {
    /// A lazily connected plaintext client for `address` (`http://host:port`).
    pub fn new(address: &str, token: String, node: String) -> Result<Self, String> {
        Self::connect(address, None, CaToken::Fixed(token), Some(node))
    }

    /// A lazily connected client for `address`: plaintext for `http://`, TLS verified against
    /// `roots_pem` (required) for `https://` (the controller's 15012, whose certificate names
    /// the address's host). The token is read for every request.
    pub fn connect(
        address: &str,
        roots_pem: Option<&str>,
        token: CaToken,
        node: Option<String>,
    ) -> Result<Self, String> {
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| format!("CA address {address}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if address.starts_with("https://") {
            let roots = roots_pem
                .ok_or_else(|| format!("CA address {address} is TLS: ROOT_CERT_FILE is needed"))?;
            weft_identity::install_default_provider();
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(roots)))
                .map_err(|e| format!("CA address {address}: {e}"))?;
        }
        Ok(Self {
            client: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
            token,
            node,
            cluster_id: None,
        })
    }

    /// Also sends Istio's `ClusterID` header, as ztunnel does, so an Istio CA accepts the call.
    pub fn with_cluster_id(mut self, cluster_id: impl Into<String>) -> Self {
        self.cluster_id = Some(cluster_id.into());
        self
    }
}

fn header(value: &str, what: &str) -> Result<tonic::metadata::AsciiMetadataValue, String> {
    value
        .parse()
        .map_err(|_| format!("the {what} is not a valid header value"))
}

impl CaClient for GrpcCaClient {
    async fn sign(
        &self,
        identity: &SpiffeId,
        csr: String,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: ttl.as_secs() as i64,
            metadata: Some(prost_types::Struct {
                fields: [(
                    IMPERSONATED_IDENTITY.to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                    },
                )]
                .into(),
            }),
        });
        let metadata = request.metadata_mut();
        metadata.insert(
            "authorization",
            header(&format!("Bearer {}", self.token.current()?), "CA token")?,
        );
        if let Some(node) = &self.node {
            metadata.insert(NODE_HEADER, header(node, "node name")?);
        }
        if let Some(cluster_id) = &self.cluster_id {
            metadata.insert(CLUSTER_ID_HEADER, header(cluster_id, "cluster id")?);
        }
        let mut client = self.client.clone();
        client
            .create_certificate(request)
            .await
            .map(|r| r.into_inner().cert_chain)
            .map_err(|status| format!("CA refused ({:?}): {}", status.code(), status.message()))
    }
}

/// Signs with a CA held in this process.
pub struct LocalCa(pub Arc<CertificateAuthority>);

impl CaClient for LocalCa {
    async fn sign(
        &self,
        identity: &SpiffeId,
        csr: String,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        self.0
            .sign_csr(&csr, identity, ttl)
            .map(|c| c.to_pem_list())
            .map_err(|e| e.to_string())
    }
}
