//! The waypoint's own certificate: a [`CertificateSource`] the binary fills (from the
//! controller's CA or from files) and the listener and upstream read on every new connection,
//! so a rotated certificate takes effect without a restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use weft_identity::{
    CertificateAuthority, SpiffeId, TlsConfigError, TrustRoots, WorkloadCertificate,
    WorkloadCertificateError, WorkloadKey, server_config,
};

/// Errors obtaining or using the waypoint's certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate for {identity}: {source}")]
    Certificate {
        identity: Box<SpiffeId>,
        #[source]
        source: Box<WorkloadCertificateError>,
    },
    #[error("trust roots: {0}")]
    Tls(#[from] TlsConfigError),
    #[error("certificate authority {address}: {reason}")]
    Ca { address: String, reason: String },
}

impl IdentityError {
    pub(crate) fn certificate(
        identity: &SpiffeId,
    ) -> impl FnOnce(WorkloadCertificateError) -> Self + '_ {
        move |source| IdentityError::Certificate {
            identity: Box::new(identity.clone()),
            source: Box::new(source),
        }
    }
}

/// A certificate with the roots that verify peers, and the HBONE server config built from them.
pub struct TlsMaterial {
    pub certificate: WorkloadCertificate,
    pub roots: TrustRoots,
    pub server: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", self.certificate.identity())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    pub fn new(certificate: WorkloadCertificate, roots: TrustRoots) -> Result<Self, IdentityError> {
        let server = server_config(&certificate, &roots)?;
        Ok(TlsMaterial {
            certificate,
            roots,
            server,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        self.certificate.identity()
    }

    /// Issues a certificate for `identity` from an in-process CA (tests, local demos).
    pub fn issue(ca: &CertificateAuthority, identity: &SpiffeId) -> Result<Self, IdentityError> {
        let ca_error = |reason: String| IdentityError::Ca {
            address: "in-process".to_owned(),
            reason,
        };
        let key = WorkloadKey::generate().map_err(IdentityError::certificate(identity))?;
        let csr = key
            .csr_for(identity)
            .map_err(IdentityError::certificate(identity))?;
        let chain = ca
            .sign_csr(&csr, identity, Duration::from_secs(24 * 3600))
            .map_err(|e| ca_error(e.to_string()))?;
        let certificate = WorkloadCertificate::from_pem_chain(identity, &chain.to_pem_list(), key)
            .map_err(IdentityError::certificate(identity))?;
        let roots = TrustRoots::from_pem(ca.root_cert_pem())?;
        TlsMaterial::new(certificate, roots)
    }
}

/// Where the listener and the upstream get the current certificate.
pub trait CertificateSource: Send + Sync + 'static {
    fn current(&self) -> Arc<TlsMaterial>;
}

/// A certificate that can be replaced (rotation).
#[derive(Debug)]
pub struct RotatingCertificate {
    current: RwLock<Arc<TlsMaterial>>,
}

impl RotatingCertificate {
    pub fn new(material: TlsMaterial) -> Self {
        RotatingCertificate {
            current: RwLock::new(Arc::new(material)),
        }
    }

    pub fn replace(&self, material: TlsMaterial) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(material);
    }
}

impl CertificateSource for RotatingCertificate {
    fn current(&self) -> Arc<TlsMaterial> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}
