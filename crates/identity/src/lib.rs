//! SPIFFE identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), the mesh certificate authority,
//! workload keys and certificates, and the rustls client and server configurations that HBONE
//! uses to authenticate peers by SPIFFE ID. This crate owns every X.509 and TLS decision of the
//! mesh so that the controller, the node agent and the waypoint agree on them, and the trait
//! through which the data path asks for certificates ([`CertificateSource`]; the manager that
//! obtains and renews them lives in `weft-proxy-core`); it does no network
//! or Kubernetes I/O of its own (the only files it touches are the CA's root cert and key, and a
//! proxy's CA token file) and it
//! never decides *authorization*: it says who a peer is, policy says what the peer may do.

mod ca;
mod credential;
mod peer;
mod source;
mod spiffe;
mod tls;
mod workload;

#[cfg(test)]
mod test_support;

pub use ca::{
    CaError, CertificateAuthority, CertificateChain, LEAF_BACKDATE, ROOT_CERT_FILE, ROOT_KEY_FILE,
    ServingCertificate,
};
pub use credential::CaToken;
pub use peer::{
    PeerIdentityError, SubjectAltName, identity_from_certificate, peer_identity, peer_identity_in,
    require_trust_domain, subject_alt_names,
};
pub use source::{CertificateError, CertificateFuture, CertificateSource};
pub use spiffe::{PathSegment, SpiffeId, SpiffeIdError};
pub use tls::{
    COMPLIANCE_POLICY, CompliancePolicy, ExpectedServerIdentities, HBONE_ALPN, ServerIdentityError,
    SpiffeServerVerifier, TlsConfigError, TrustRoots, UnknownCompliancePolicy, client_config,
    crypto_provider, hbone_server_name, install_default_provider, server_config,
    server_config_checking_clients, server_config_with_resolver,
};
pub use workload::{
    CertificateSummary, WorkloadCertificate, WorkloadCertificateError, WorkloadKey,
};
