//! The certificate manager: one workload certificate per identity a proxy speaks for (the node
//! agent: each service account of its pods; the waypoint: its own). Keys are generated here and
//! never leave the process; a [`CaClient`] has CSRs signed. Certificates are renewed at half
//! life, retried with jittered backoff on failure (200 ms doubling to 30 s, so that a fleet of
//! proxies does not retry in lockstep), and the current certificate keeps serving until its
//! replacement arrives. When the controller's stream connects again after a failure
//! ([`retry_on_reconnect`]), the identities waiting out a backoff try again within a second
//! instead: a certificate that expired while the controller was unreachable is replaced as soon
//! as it is back, not up to 30 s later.

mod ca_client;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::watch;
use weft_identity::{
    CertificateError, CertificateFuture, CertificateSource, CertificateSummary, SpiffeId,
    TrustRoots, WorkloadCertificate, WorkloadKey,
};

pub use ca_client::{GrpcCaClient, LocalCa};

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
/// After [`CertificateSource::retry_now`], the identities in backoff try again within this
/// (jittered, so a fleet does not send every request at once).
const RETRY_AFTER_RECONNECT: Duration = Duration::from_secs(1);
/// How long `fetch` waits for a first certificate before failing the connection.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One identity's certificate: `None` until the first one arrives.
type Slot = watch::Receiver<Option<Arc<WorkloadCertificate>>>;

/// Holds and renews certificates from a [`CaClient`]. Cheap to clone: clones share the
/// certificates and their renewal tasks.
pub struct CertificateManager<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for CertificateManager<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> std::fmt::Debug for CertificateManager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

struct Inner<C> {
    ca: C,
    ttl: Duration,
    roots: RwLock<Option<Arc<TrustRoots>>>,
    slots: Mutex<HashMap<SpiffeId, (Slot, tokio::task::JoinHandle<()>)>>,
    last_errors: Mutex<HashMap<SpiffeId, String>>,
    /// Counts the controller's reconnections: an identity whose request failed retries soon
    /// when it moved since that request began (so one during the request is not missed).
    reconnected: watch::Sender<u64>,
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, task) in slots.values() {
            task.abort();
        }
    }
}

impl<C: CaClient> CertificateManager<C> {
    /// `roots`: configured trust roots; without them, the root the CA returns is trusted.
    pub fn new(ca: C, ttl: Duration, roots: Option<TrustRoots>) -> Self {
        Self {
            inner: Arc::new(Inner {
                ca,
                ttl,
                roots: RwLock::new(roots.map(Arc::new)),
                slots: Mutex::default(),
                last_errors: Mutex::default(),
                reconnected: watch::Sender::new(0),
            }),
        }
    }

    /// The manager as the data path takes it.
    pub fn source(&self) -> Arc<dyn CertificateSource> {
        Arc::new(self.clone())
    }

    fn slot(&self, identity: &SpiffeId) -> Slot {
        let mut slots = lock(&self.inner.slots);
        if let Some((slot, _)) = slots.get(identity) {
            return slot.clone();
        }
        let (sender, receiver) = watch::channel(None);
        let task = tokio::spawn(renew_forever(
            Arc::downgrade(&self.inner),
            identity.clone(),
            sender,
        ));
        slots.insert(identity.clone(), (receiver.clone(), task));
        receiver
    }

    /// Stops renewing `identity` (no pod uses it any more) and drops its certificate.
    pub fn forget(&self, identity: &SpiffeId) {
        if let Some((_, task)) = lock(&self.inner.slots).remove(identity) {
            task.abort();
        }
    }

    /// The certificates held, without keys (for `/config_dump`).
    pub fn describe(&self) -> Vec<CertificateState> {
        let slots = lock(&self.inner.slots);
        let errors = lock(&self.inner.last_errors);
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

    async fn fetch_certificate(
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
            _ => Err(CertificateError::new(
                identity,
                lock(&self.inner.last_errors)
                    .get(identity)
                    .cloned()
                    .unwrap_or_else(|| "no certificate yet".into()),
            )),
        }
    }
}

impl<C: CaClient> Inner<C> {
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

/// Locks a map that is only ever updated whole (an insert or a remove), so a poisoned lock is
/// still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per identity: obtain, hold, renew at half life; on failure retry with backoff, keeping the
/// old certificate meanwhile.
async fn renew_forever<C: CaClient>(
    manager: Weak<Inner<C>>,
    identity: SpiffeId,
    sender: watch::Sender<Option<Arc<WorkloadCertificate>>>,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let Some(strong) = manager.upgrade() else {
            return;
        };
        let mut reconnected = strong.reconnected.subscribe();
        let result = strong.request(&identity).await;
        let failed = result.is_err();
        let wait = match result {
            Ok(certificate) => {
                retry = RETRY_FIRST;
                lock(&strong.last_errors).remove(&identity);
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
                lock(&strong.last_errors).insert(identity.clone(), reason);
                let wait = jitter(retry);
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        drop(strong);
        if failed {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Ok(()) = reconnected.changed() => {
                    retry = RETRY_FIRST;
                    tokio::time::sleep(jitter(RETRY_AFTER_RECONNECT)).await;
                }
            }
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Tells `certificates` whenever `state`'s stream opens again after it was closed, until the
/// stream's client goes away.
pub async fn retry_on_reconnect(
    certificates: Arc<dyn CertificateSource>,
    mut state: watch::Receiver<weft_xds::ConnectionState>,
) {
    let mut seen = state.borrow_and_update().connections;
    while state.changed().await.is_ok() {
        let connections = state.borrow_and_update().connections;
        if connections > seen {
            seen = connections;
            certificates.retry_now();
        }
    }
}

/// Between 75% and 100% of `delay`, so many proxies do not retry in lockstep.
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

impl<C: CaClient> CertificateSource for CertificateManager<C> {
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> CertificateFuture<'a> {
        Box::pin(self.fetch_certificate(identity))
    }

    fn retry_now(&self) {
        self.inner.reconnected.send_modify(|count| *count += 1);
    }

    fn current(&self, identity: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        lock(&self.inner.slots)
            .get(identity)
            .and_then(|(slot, _)| slot.borrow().clone())
    }

    fn trust_roots(&self) -> Option<Arc<TrustRoots>> {
        self.inner
            .roots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn held(&self) -> Vec<Arc<WorkloadCertificate>> {
        lock(&self.inner.slots)
            .values()
            .filter_map(|(slot, _)| slot.borrow().clone())
            .collect()
    }
}

/// One identity's certificate as `/config_dump` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateState {
    pub identity: String,
    pub certificate: Option<CertificateSummary>,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests;
