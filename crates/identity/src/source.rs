//! What the data path asks of whoever holds the workload certificates: the current certificate
//! of an identity (obtained on first use) and the roots that verify peers. The node agent holds
//! one identity per service account of its pods, the waypoint exactly one; both ask through
//! this one trait, which the HBONE dialer and acceptor take as `Arc<dyn CertificateSource>`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{SpiffeId, TrustRoots, WorkloadCertificate};

/// A certificate could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate for {identity}: {reason}")]
pub struct CertificateError {
    pub identity: String,
    pub reason: String,
}

impl CertificateError {
    pub fn new(identity: &SpiffeId, reason: impl Into<String>) -> Self {
        Self {
            identity: identity.to_string(),
            reason: reason.into(),
        }
    }
}

/// What [`CertificateSource::fetch`] returns. Boxed so that the trait can be used as
/// `dyn CertificateSource`: one allocation per new TLS connection, next to a handshake.
pub type CertificateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<WorkloadCertificate>, CertificateError>> + Send + 'a>>;

/// Certificates by identity, and the mesh's trust roots.
pub trait CertificateSource: Send + Sync + 'static {
    /// The current certificate for `identity`, obtaining one first if none is held yet.
    fn fetch<'a>(&'a self, identity: &'a SpiffeId) -> CertificateFuture<'a>;

    /// The certificate held for `identity` now, if any, without asking for one (for dumps).
    fn current(&self, identity: &SpiffeId) -> Option<Arc<WorkloadCertificate>>;

    /// The roots that verify peers; known once a first certificate arrived (with its chain),
    /// or from configuration.
    fn trust_roots(&self) -> Option<Arc<TrustRoots>>;

    /// Every certificate held now (for the expiry metric); a source that cannot list them
    /// reports none.
    fn held(&self) -> Vec<Arc<WorkloadCertificate>> {
        Vec::new()
    }

    /// The CA is reachable again (the controller's stream reconnected): requests waiting out a
    /// failure's backoff go now. A source that does not retry does nothing.
    fn retry_now(&self) {}
}
