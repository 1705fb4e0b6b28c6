//! The certificate manager: one workload certificate per identity (service account) of the pods
//! this agent serves. Keys are generated here and never leave the agent; the controller's CA signs
//! CSRs. Certificates are renewed at half life, retried with backoff on failure, and the current
//! certificate keeps serving until its replacement arrives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::watch;
use weft_identity::{CertificateSummary, SpiffeId, TrustRoots, WorkloadCertificate, WorkloadKey};

/// A certificate could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
#[error("certificate for {identity}: {reason}")]
pub struct CertificateError {
    pub identity: String,
    pub reason: String,
}

/// What the data path needs: certificates by identity, and the trust roots.
pub trait CertificateSource: Send + Sync + 'static {
    /// The current certificate for `identity`, fetching one (and starting its renewal) if none
    /// is held yet.
    fn fetch(
        &self,
        identity: &SpiffeId,
    ) -> impl Future<Output = Result<Arc<WorkloadCertificate>, CertificateError>> + Send;
    /// The mesh trust roots used to verify peers; known once a first certificate arrived (with
    /// its chain) or from configuration.
    fn trust_roots(&self) -> Option<Arc<TrustRoots>>;
}

/// Signs CSRs: the controller's `IstioCertificateService` in production.
pub trait CaClient: Send + Sync + 'static {
    /// Returns the PEM chain (leaf first, root last) for `csr`, issued to `identity`.
    fn sign(
        &self,
        identity: &SpiffeId,
        csr: String,
        ttl: Duration,
    ) -> impl Future<Output = Result<Vec<String>, String>> + Send;
}

/// Retry delays after a failed request: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Never renew more often than this, whatever the CA returns.
const MIN_RENEWAL_WAIT: Duration = Duration::from_millis(500);

/// One identity's certificate: `None` until the first one arrives.
type Slot = watch::Receiver<Option<Arc<WorkloadCertificate>>>;

/// Holds and renews certificates from a [`CaClient`].
pub struct CertificateManager<C> {
    ca: Arc<C>,
    ttl: Duration,
    roots: RwLock<Option<Arc<TrustRoots>>>,
    slots: Mutex<HashMap<SpiffeId, (Slot, tokio::task::JoinHandle<()>)>>,
    last_errors: Arc<Mutex<HashMap<SpiffeId, String>>>,
}

impl<C: CaClient> CertificateManager<C> {
    /// `roots`: configured trust roots; without them, the root the CA returns is trusted.
    pub fn new(ca: C, ttl: Duration, roots: Option<TrustRoots>) -> Arc<Self> {
        Arc::new(Self {
            ca: Arc::new(ca),
            ttl,
            roots: RwLock::new(roots.map(Arc::new)),
            slots: Mutex::default(),
            last_errors: Arc::default(),
        })
    }

    fn slot(self: &Arc<Self>, identity: &SpiffeId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((slot, _)) = slots.get(identity) {
            return slot.clone();
        }
        let (sender, receiver) = watch::channel(None);
        let manager = Arc::downgrade(self);
        let identity_for_task = identity.clone();
        let task = tokio::spawn(async move {
            renew_forever(manager, identity_for_task, sender).await;
        });
        slots.insert(identity.clone(), (receiver.clone(), task));
        receiver
    }

    /// Stops renewing `identity` (no pod uses it any more) and drops its certificate.
    pub fn forget(&self, identity: &SpiffeId) {
        if let Some((_, task)) = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(identity)
        {
            task.abort();
        }
    }

    /// The certificates held, without keys (for `/config_dump`).
    pub fn describe(&self) -> Vec<CertificateState> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let errors = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: Vec<_> = slots
            .iter()
            .map(|(identity, (slot, _))| CertificateState {
                identity: identity.to_string(),
                certificate: slot.borrow().as_ref().map(|c| c.describe()),
                last_error: errors.get(identity).cloned(),
            })
            .collect();
        states.sort_by(|a, b| a.identity.cmp(&b.identity));
        states
    }

    async fn request(&self, identity: &SpiffeId) -> Result<WorkloadCertificate, String> {
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let csr = key.csr_for(identity).map_err(|e| e.to_string())?;
        let chain = self.ca.sign(identity, csr, self.ttl).await?;
        let root = chain.last().ok_or("the CA returned an empty chain")?;
        let certificate = WorkloadCertificate::from_pem_chain(identity, &chain, key)
            .map_err(|e| e.to_string())?;
        self.add_root(root)?;
        Ok(certificate)
    }

    fn add_root(&self, root_pem: &str) -> Result<(), String> {
        let root = TrustRoots::from_pem(root_pem).map_err(|e| format!("CA root: {e}"))?;
        let mut roots = self.roots.write().unwrap_or_else(|p| p.into_inner());
        if roots.is_none() {
            *roots = Some(Arc::new(root));
        }
        Ok(())
    }
}

/// Per identity: obtain, hold, renew at half life; on failure retry with backoff, keeping the
/// old certificate meanwhile.
async fn renew_forever<C: CaClient>(
    manager: std::sync::Weak<CertificateManager<C>>,
    identity: SpiffeId,
    sender: watch::Sender<Option<Arc<WorkloadCertificate>>>,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let Some(strong) = manager.upgrade() else {
            return;
        };
        let result = strong.request(&identity).await;
        let errors = strong.last_errors.clone();
        drop(strong);
        let wait = match result {
            Ok(certificate) => {
                retry = RETRY_FIRST;
                errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&identity);
                // Half of the lifetime left on arrival (what /config_dump shows as refreshAt).
                let wait = certificate
                    .refresh_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::info!(%identity, not_after = ?certificate.not_after(), "workload certificate issued");
                sender.send_replace(Some(Arc::new(certificate)));
                wait.max(MIN_RENEWAL_WAIT)
            }
            Err(reason) => {
                tracing::warn!(%identity, %reason, retry_in_ms = retry.as_millis() as u64, "certificate request failed");
                errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(identity.clone(), reason);
                let wait = jitter(retry);
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Between 75% and 100% of `delay`, so many agents do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let fraction = (hasher.finish() % 1000) as f64 / 4000.0;
    delay.mul_f64(0.75 + fraction)
}

/// How long `fetch` waits for a first certificate before failing the connection.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl<C: CaClient> CertificateSource for Arc<CertificateManager<C>> {
    async fn fetch(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, CertificateError> {
        let mut slot = self.slot(identity);
        if let Some(certificate) = slot.borrow().clone() {
            return Ok(certificate);
        }
        let waited = tokio::time::timeout(FETCH_TIMEOUT, slot.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(certificate)) => Ok(certificate.clone().expect("waited for Some")),
            _ => Err(CertificateError {
                identity: identity.to_string(),
                reason: self
                    .last_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(identity)
                    .cloned()
                    .unwrap_or_else(|| "no certificate yet".into()),
            }),
        }
    }

    fn trust_roots(&self) -> Option<Arc<TrustRoots>> {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One identity's certificate as `/config_dump` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateState {
    pub identity: String,
    pub certificate: Option<CertificateSummary>,
    pub last_error: Option<String>,
}

pub use weft_identity::CaToken;

/// The controller's CA over gRPC (`IstioCertificateService/CreateCertificate`).
pub struct GrpcCaClient {
    client: weft_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient<
        tonic::transport::Channel,
    >,
    token: CaToken,
    node: String,
    cluster_id: Option<String>,
}

/// Header naming the requesting node, which the controller checks identities against.
pub const NODE_HEADER: &str = "x-weft-node";
/// Istio's header naming the caller's cluster (what ztunnel sends).
pub const CLUSTER_ID_HEADER: &str = "clusterid";
/// Istio's request metadata key naming the identity asked for (what ztunnel sends).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

impl GrpcCaClient {
    /// A lazily connected plaintext client for `address` (`http://host:port`).
    pub fn new(address: &str, token: String, node: String) -> Result<Self, String> {
        Self::connect(address, None, CaToken::Fixed(token), node)
    }

    /// A lazily connected client for `address`: plaintext for `http://`, TLS verified against
    /// `roots_pem` (required) for `https://` (the controller's 15012, whose certificate names
    /// the address's host).
    pub fn connect(
        address: &str,
        roots_pem: Option<&str>,
        token: CaToken,
        node: String,
    ) -> Result<Self, String> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_string())
            .map_err(|e| format!("CA address {address}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if address.starts_with("https://") {
            let roots = roots_pem
                .ok_or_else(|| format!("CA address {address} is TLS: ROOT_CERT_FILE is needed"))?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(roots)),
                )
                .map_err(|e| format!("CA address {address}: {e}"))?;
        }
        Ok(Self {
            client: weft_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient::new(endpoint.connect_lazy()),
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

impl CaClient for GrpcCaClient {
    async fn sign(
        &self,
        identity: &SpiffeId,
        csr: String,
        ttl: Duration,
    ) -> Result<Vec<String>, String> {
        let mut request = tonic::Request::new(weft_proto::istio::ca::IstioCertificateRequest {
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
            format!("Bearer {}", self.token.current()?)
                .parse()
                .map_err(|_| "the CA token is not a valid header value".to_string())?,
        );
        metadata.insert(
            NODE_HEADER,
            self.node
                .parse()
                .map_err(|_| "the node name is not a valid header value".to_string())?,
        );
        if let Some(cluster_id) = &self.cluster_id {
            metadata.insert(
                CLUSTER_ID_HEADER,
                cluster_id
                    .parse()
                    .map_err(|_| "the cluster id is not a valid header value".to_string())?,
            );
        }
        let mut client = self.client.clone();
        client
            .create_certificate(request)
            .await
            .map(|r| r.into_inner().cert_chain)
            .map_err(|status| format!("CA refused ({:?}): {}", status.code(), status.message()))
    }
}

#[cfg(test)]
mod tests;
