//! The certificate authority service: Istio's `IstioCertificateService/CreateCertificate`.
//!
//! A node agent sends a CSR for a workload identity; the service authenticates the caller (which
//! node is asking), checks that a pod running on that node has the identity, and signs it with the
//! mesh root. Any caller may also obtain its own identity (a waypoint does). Anything else is
//! refused with a status naming the reason and logged: a node agent can only ever obtain the
//! identities of its own node's pods.
//!
//! Callers authenticate with a local-mode bootstrap token ([`BootstrapTokens`]) or, in
//! Kubernetes, with their service-account token ([`kubernetes::TokenReviewAuthenticator`]).

pub mod kubernetes;

use std::{collections::HashMap, future::Future, path::Path, pin::Pin, sync::Arc, time::Duration};

use tonic::{Request, Response, Status, metadata::MetadataMap};
use weft_identity::{CertificateAuthority, SpiffeId};
use weft_proto::istio::ca::{
    IstioCertificateRequest, IstioCertificateResponse, NODE_HEADER,
    istio_certificate_service_server::{IstioCertificateService, IstioCertificateServiceServer},
};
use weft_xds::{Admission, ProxyIdentity};

use crate::{index::ConfigIndex, translate::resolve};

/// Certificate lifetime when the caller asks for none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime granted, whatever the caller asks.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Answers which identities run on a node. Implemented by the controller's index.
pub trait NodeDirectory: Send + Sync + 'static {
    /// Whether a pod scheduled on `node` runs as `identity`.
    fn runs_on(&self, node: &str, identity: &SpiffeId) -> bool;
}

/// The index's answer: a pod scheduled on `node`, not finished, running as `identity`, that the
/// mesh serves there: one in the mesh (its node agent holds its certificate), a waypoint's pod
/// or a gateway's (an Istio Gateway selects it), which run on a node like any pod and ask with
/// that node's credential. Pods outside the
/// mesh, and waypoints without a pod on the node, get nothing.
pub fn mesh_pod_runs_on(
    index: &ConfigIndex,
    node: &str,
    identity: &SpiffeId,
    trust_domain: &str,
) -> bool {
    identity.trust_domain() == trust_domain
        && index.pods.values().any(|pod| {
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && resolve::namespace_of(&pod.metadata) == identity.namespace()
                && resolve::service_account(pod) == identity.service_account()
                && !resolve::pod_terminated(pod)
                && (resolve::enrolled(index, pod)
                    || resolve::is_waypoint_pod(index, pod)
                    || crate::translate::waypoint::is_gateway_pod(index, pod))
        })
}

/// Who is asking, as its credential shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The node whose pods' identities the caller may obtain: set for node agents only.
    pub node: Option<String>,
    /// The caller's own identity (its service account), which it may always obtain.
    pub identity: Option<SpiffeId>,
}

/// Establishes who a caller is.
pub trait CallerAuthenticator: Send + Sync + 'static {
    /// The caller, from its request metadata, or a refusal.
    fn authenticate(
        &self,
        metadata: &MetadataMap,
    ) -> impl Future<Output = Result<Caller, Status>> + Send;
}

/// The bearer token of a request.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))
}

/// Refuses a caller whose `x-weft-node` header names another node than its credential.
pub fn check_claimed_node(metadata: &MetadataMap, node: &str) -> Result<(), Status> {
    match metadata.get(NODE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(claimed) if claimed != node => Err(Status::permission_denied(format!(
            "token belongs to node {node}, not {claimed}"
        ))),
        _ => Ok(()),
    }
}

/// Errors loading the bootstrap token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading bootstrap token file {0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("bootstrap token file {file} line {line}: expected `<node> <token>`")]
    Malformed { file: String, line: usize },
    #[error("bootstrap token file {file} line {line}: token shorter than 16 characters")]
    WeakToken { file: String, line: usize },
}

/// Local mode: one bearer token per node, from a file of `<node> <token>` lines.
#[derive(Debug, Clone, Default)]
pub struct BootstrapTokens {
    node_by_token: HashMap<String, String>,
}

impl BootstrapTokens {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let file = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| TokenFileError::Read(file.clone(), e))?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, TokenFileError> {
        let mut node_by_token = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(node), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(TokenFileError::Malformed {
                    file: file.into(),
                    line: index + 1,
                });
            };
            if token.len() < 16 {
                return Err(TokenFileError::WeakToken {
                    file: file.into(),
                    line: index + 1,
                });
            }
            node_by_token.insert(token.to_string(), node.to_string());
        }
        Ok(Self { node_by_token })
    }

    pub fn insert(&mut self, node: &str, token: &str) {
        self.node_by_token.insert(token.into(), node.into());
    }
}

impl BootstrapTokens {
    fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        let node = self
            .node_by_token
            .get(token)
            .ok_or_else(|| Status::unauthenticated("unknown bootstrap token"))?;
        check_claimed_node(metadata, node)?;
        Ok(Caller {
            node: Some(node.clone()),
            identity: None,
        })
    }
}

impl CallerAuthenticator for BootstrapTokens {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        self.caller(metadata)
    }
}

/// The authenticator of either mode.
pub enum Authenticator {
    Bootstrap(BootstrapTokens),
    TokenReview(kubernetes::TokenReviewAuthenticator),
}

impl CallerAuthenticator for Authenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        match self {
            Self::Bootstrap(tokens) => tokens.authenticate(metadata).await,
            Self::TokenReview(review) => review.authenticate(metadata).await,
        }
    }
}

impl<A: CallerAuthenticator> CallerAuthenticator for Arc<A> {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        A::authenticate(self, metadata).await
    }
}

/// The discovery streams' gate in Kubernetes mode: the same credential as the CA's (the
/// service-account token, checked with TokenReview), and a node agent only under the node its
/// token belongs to (the `NODE_NAME` of its xDS node).
pub struct XdsAdmission<A> {
    authenticator: A,
}

impl<A: CallerAuthenticator> XdsAdmission<A> {
    pub fn new(authenticator: A) -> Self {
        Self { authenticator }
    }

    /// The caller's identity once admitted: what the stream's scope trusts (gateway
    /// credentials go only to the identity of the gateway's pods).
    async fn check(
        &self,
        metadata: &MetadataMap,
        proxy: &ProxyIdentity,
    ) -> Result<Option<SpiffeId>, Status> {
        let caller = self.authenticator.authenticate(metadata).await?;
        if let Some(node) = &caller.node {
            match proxy.metadata_string("NODE_NAME") {
                Some(claimed) if claimed == node => {}
                claimed => {
                    return Err(Status::permission_denied(format!(
                        "token belongs to node {node}, the stream's NODE_NAME is {}",
                        claimed.unwrap_or("absent")
                    )));
                }
            }
        }
        if let Some(identity) = &caller.identity {
            claims_agree(proxy, identity)?;
        }
        Ok(caller.identity)
    }
}

/// Istio's `checkConnectionIdentity`: a proxy whose credential proves an identity may claim,
/// in its node, only that identity's namespace (the `NAMESPACE` metadata, and the
/// `<namespace>.svc.<domain>` field of an Istio-style node id) and service account (the
/// `SERVICE_ACCOUNT` metadata). Otherwise a waypoint could ask for another namespace's
/// waypoint configuration by naming it.
fn claims_agree(proxy: &ProxyIdentity, identity: &SpiffeId) -> Result<(), Status> {
    let id_namespace = proxy
        .id
        .split('~')
        .nth(3)
        .and_then(|domain| domain.split_once(".svc."))
        .map(|(namespace, _)| namespace);
    let claims = [
        (
            "namespace",
            proxy.metadata_string("NAMESPACE"),
            identity.namespace(),
        ),
        ("namespace", id_namespace, identity.namespace()),
        (
            "service account",
            proxy.metadata_string("SERVICE_ACCOUNT"),
            identity.service_account(),
        ),
    ];
    for (what, claimed, proven) in claims {
        match claimed {
            Some(claimed) if !claimed.is_empty() && claimed != proven => {
                return Err(Status::permission_denied(format!(
                    "the credential proves {identity}, the stream claims {what} {claimed}"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

impl<A: CallerAuthenticator> Admission for XdsAdmission<A> {
    fn admit(
        &self,
        metadata: MetadataMap,
        proxy: ProxyIdentity,
    ) -> Pin<Box<dyn Future<Output = Result<Option<SpiffeId>, Status>> + Send + '_>> {
        Box::pin(async move { self.check(&metadata, &proxy).await })
    }
}

/// The CA service.
pub struct CertificateService<A, D> {
    ca: Arc<CertificateAuthority>,
    authenticator: A,
    directory: D,
    trust_domain: String,
}

impl<A: CallerAuthenticator, D: NodeDirectory> CertificateService<A, D> {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: A,
        directory: D,
        trust_domain: String,
    ) -> Self {
        Self {
            ca,
            authenticator,
            directory,
            trust_domain,
        }
    }

    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// The whole decision, apart from the transport.
    pub async fn create(
        &self,
        metadata: &MetadataMap,
        request: &IstioCertificateRequest,
    ) -> Result<Vec<String>, Status> {
        let caller = self.authenticator.authenticate(metadata).await?;
        let identity = requested_identity(request)?;
        if !identity.is_in_trust_domain(&self.trust_domain) {
            return Err(Status::permission_denied(format!(
                "identity {identity} is outside the trust domain {}",
                self.trust_domain
            )));
        }
        let own = caller.identity.as_ref() == Some(&identity);
        let node = match (&caller.node, &caller.identity) {
            _ if own => caller.node.clone().unwrap_or_default(),
            (Some(node), _) if self.directory.runs_on(node, &identity) => node.clone(),
            (Some(node), _) => {
                return Err(Status::permission_denied(format!(
                    "no pod on node {node} runs as {identity}"
                )));
            }
            (None, Some(own_identity)) => {
                return Err(Status::permission_denied(format!(
                    "{own_identity} may obtain only its own identity, not {identity}"
                )));
            }
            (None, None) => {
                return Err(Status::permission_denied(format!(
                    "the caller may not obtain {identity}"
                )));
            }
        };
        let ttl = match request.validity_duration {
            seconds if seconds <= 0 => DEFAULT_TTL,
            seconds => Duration::from_secs(seconds as u64).min(MAX_TTL),
        };
        let chain = self
            .ca
            .sign_csr(&request.csr, &identity, ttl)
            .map_err(|e| Status::invalid_argument(format!("certificate request refused: {e}")))?;
        tracing::info!(%node, %identity, ttl_s = ttl.as_secs(), "issued workload certificate");
        Ok(chain.to_pem_list())
    }
}

/// The identity asked for: Istio's `ImpersonatedIdentity` metadata when present, else the URI
/// SAN the CSR requests.
fn requested_identity(request: &IstioCertificateRequest) -> Result<SpiffeId, Status> {
    let text = match request.impersonated_identity() {
        Some(text) => text.to_owned(),
        None => csr_uri_san(&request.csr)?,
    };
    text.parse()
        .map_err(|e| Status::invalid_argument(format!("requested identity {text:?}: {e}")))
}

fn csr_uri_san(pem: &str) -> Result<String, Status> {
    let params = rcgen::CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| Status::invalid_argument(format!("malformed certificate request: {e}")))?;
    params
        .params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(uri) => Some(uri.as_str().to_string()),
            _ => None,
        })
        .ok_or_else(|| {
            Status::invalid_argument("certificate request names no SPIFFE identity (URI SAN)")
        })
}

#[tonic::async_trait]
impl<A: CallerAuthenticator, D: NodeDirectory> IstioCertificateService
    for CertificateService<A, D>
{
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        match self.create(request.metadata(), request.get_ref()).await {
            Ok(cert_chain) => Ok(Response::new(IstioCertificateResponse {
                cert_chain,
                root_cert: None,
            })),
            Err(status) => {
                tracing::warn!(code = ?status.code(), reason = %status.message(), "certificate request refused");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests;
