//! Interim interface of the certificate manager (replaced by the full manager).
use std::sync::Arc;

use weft_identity::{SpiffeId, TrustRoots, WorkloadCertificate};

#[derive(Debug, thiserror::Error)]
#[error("certificate for {identity}: {reason}")]
pub struct CertificateError {
    pub identity: String,
    pub reason: String,
}

pub trait CertificateSource: Send + Sync + 'static {
    fn fetch(
        &self,
        identity: &SpiffeId,
    ) -> impl Future<Output = Result<Arc<WorkloadCertificate>, CertificateError>> + Send;
    fn trust_roots(&self) -> Arc<TrustRoots>;
}
