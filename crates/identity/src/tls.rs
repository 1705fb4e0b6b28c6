//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, aws-lc-rs with X25519MLKEM768
//! ([`provider`]), mutual authentication by
//! SPIFFE certificates chained to the mesh roots.
//!
//! SPIFFE certificates carry no DNS names, so no side checks names the usual way. The server
//! accepts any client chained to the roots that carries a SPIFFE ID (who may do what is policy's
//! job, through [`crate::peer_identity`]); the client accepts only a server whose SPIFFE ID is one
//! it expected for the destination, which is what makes a connection to a pod IP safe.
//!
//! # Server name
//!
//! rustls wants a [`ServerName`] for every client connection. HBONE uses the destination's IP
//! ([`hbone_server_name`]): an IP server name is never sent as SNI (RFC 6066 forbids IP literals
//! there, and SNI is switched off anyway), and [`SpiffeServerVerifier`] ignores the name, so the
//! value only labels the connection. The server therefore picks its certificate by the
//! destination address it was reached on, not by SNI, exactly as ztunnel does.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::{PeerIdentityError, SpiffeId, WorkloadCertificate, identity_from_certificate};

pub mod provider;

pub use provider::{
    COMPLIANCE_POLICY, CompliancePolicy, UnknownCompliancePolicy, crypto_provider,
    install_default_provider,
};

/// The only application protocol HBONE speaks.
pub const HBONE_ALPN: &[u8] = b"h2";

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("no trust roots given: every peer would be refused")]
    NoTrustRoots,
    #[error("trust root PEM cannot be read: {reason}")]
    TrustRootPem { reason: String },
    #[error("trust root {index} is not a usable trust anchor: {source}")]
    TrustRoot { index: usize, source: rustls::Error },
    #[error("no expected server identity given: every server would be refused")]
    NoExpectedIdentity,
    #[error("cannot build the client certificate verifier: {source}")]
    ClientVerifier {
        source: rustls::server::VerifierBuilderError,
    },
    #[error("rustls refused the TLS 1.3 configuration: {source}")]
    Protocol { source: rustls::Error },
    #[error("rustls refused the certificate of {identity}: {source}")]
    Certificate {
        identity: Box<SpiffeId>,
        source: rustls::Error,
    },
}

/// Why a server certificate was refused after its chain verified. Carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`, so a caller can downcast it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerIdentityError {
    #[error("server presented identity {found}, expected one of {expected:?}")]
    Unexpected {
        found: SpiffeId,
        expected: Vec<SpiffeId>,
    },
    #[error("server certificate carries no usable SPIFFE ID: {source}")]
    Missing { source: PeerIdentityError },
}

/// The CA certificates the mesh trusts.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
}

impl TrustRoots {
    /// From PEM text holding one or more certificates.
    pub fn from_pem(pem: &str) -> Result<Self, TlsConfigError> {
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsConfigError::TrustRootPem {
                reason: error.to_string(),
            })?;
        Self::from_der(certificates)
    }

    pub fn from_der(
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsConfigError> {
        let mut store = RootCertStore::empty();
        for (index, certificate) in certificates.into_iter().enumerate() {
            store
                .add(certificate)
                .map_err(|source| TlsConfigError::TrustRoot { index, source })?;
        }
        if store.is_empty() {
            return Err(TlsConfigError::NoTrustRoots);
        }
        Ok(TrustRoots {
            store: Arc::new(store),
        })
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

/// The server identities a client accepts for one destination: usually the destination
/// workload's, or its waypoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedServerIdentities(Vec<SpiffeId>);

impl ExpectedServerIdentities {
    pub fn contains(&self, identity: &SpiffeId) -> bool {
        self.0.contains(identity)
    }
}

impl From<SpiffeId> for ExpectedServerIdentities {
    fn from(identity: SpiffeId) -> Self {
        ExpectedServerIdentities(vec![identity])
    }
}

impl From<Vec<SpiffeId>> for ExpectedServerIdentities {
    fn from(identities: Vec<SpiffeId>) -> Self {
        ExpectedServerIdentities(identities)
    }
}

impl FromIterator<SpiffeId> for ExpectedServerIdentities {
    fn from_iter<I: IntoIterator<Item = SpiffeId>>(iter: I) -> Self {
        ExpectedServerIdentities(iter.into_iter().collect())
    }
}

/// The server name an HBONE client hands to rustls for a connection to `destination`; see the
/// module documentation for why an IP is used and why it never reaches the wire.
pub fn hbone_server_name(destination: IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(destination.into())
}

/// An HBONE server configuration presenting `certificate` and requiring a client certificate
/// chained to `roots` that carries a SPIFFE ID.
pub fn server_config(
    certificate: &WorkloadCertificate,
    roots: &TrustRoots,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    server_config_with(crypto_provider(), certificate, roots)
}

/// Like [`server_config`], with the mesh's client verifier handed to `check` first, which
/// returns the verifier the handshake uses (the mesh's, wrapped by a further check on the
/// client certificate: a client it refuses gets a TLS alert, not a completed handshake).
pub fn server_config_checking_clients(
    certificate: &WorkloadCertificate,
    roots: &TrustRoots,
    check: impl FnOnce(Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = crypto_provider();
    let verifier = check(Arc::new(SpiffeClientVerifier::new(
        roots,
        provider.clone(),
    )?));
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)
        .map_err(|source| TlsConfigError::Protocol { source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificate.chain().to_vec(), certificate.private_key())
        .map_err(|source| TlsConfigError::Certificate {
            identity: Box::new(certificate.identity().clone()),
            source,
        })?;
    Ok(finish_server(config))
}

fn server_config_with(
    provider: Arc<CryptoProvider>,
    certificate: &WorkloadCertificate,
    roots: &TrustRoots,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let config = server_builder(&provider, roots)?
        .with_single_cert(certificate.chain().to_vec(), certificate.private_key())
        .map_err(|source| TlsConfigError::Certificate {
            identity: Box::new(certificate.identity().clone()),
            source,
        })?;
    Ok(finish_server(config))
}

/// Like [`server_config`], for a listener that serves several workloads and picks the
/// certificate per connection (by destination address) through `resolver`.
pub fn server_config_with_resolver(
    resolver: Arc<dyn ResolvesServerCert>,
    roots: &TrustRoots,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = crypto_provider();
    let config = server_builder(&provider, roots)?.with_cert_resolver(resolver);
    Ok(finish_server(config))
}

fn server_builder(
    provider: &Arc<CryptoProvider>,
    roots: &TrustRoots,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsConfigError> {
    let verifier = SpiffeClientVerifier::new(roots, provider.clone())?;
    Ok(ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(TLS13_ONLY)
        .map_err(|source| TlsConfigError::Protocol { source })?
        .with_client_cert_verifier(Arc::new(verifier)))
}

fn finish_server(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![HBONE_ALPN.to_vec()];
    // No mesh client resumes (ours keeps no session, nor does ztunnel's): a session stored
    // or a ticket sent would only cost each handshake its two tickets' bytes and work, and
    // each configuration room for 256 sessions nobody comes back for.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

/// An HBONE client configuration presenting `certificate` and accepting only a server chained
/// to `roots` whose SPIFFE ID is one of `expected`.
pub fn client_config(
    certificate: &WorkloadCertificate,
    roots: &TrustRoots,
    expected: impl Into<ExpectedServerIdentities>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    client_config_with(crypto_provider(), certificate, roots, expected)
}

fn client_config_with(
    provider: Arc<CryptoProvider>,
    certificate: &WorkloadCertificate,
    roots: &TrustRoots,
    expected: impl Into<ExpectedServerIdentities>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let verifier = SpiffeServerVerifier::new(roots, expected, provider.clone())?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS13_ONLY)
        .map_err(|source| TlsConfigError::Protocol { source })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certificate.chain().to_vec(), certificate.private_key())
        .map_err(|source| TlsConfigError::Certificate {
            identity: Box::new(certificate.identity().clone()),
            source,
        })?;
    config.alpn_protocols = vec![HBONE_ALPN.to_vec()];
    config.enable_sni = false;
    // A configuration serves one connection (it names the peer expected there), so its session
    // cache could never resume anything: it only held the server's tickets, and rustls's
    // default cache (room for 256 servers) cost every pooled HBONE connection about 17 KiB.
    // ztunnel's HBONE client does not resume either.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Verifies a server's chain against the mesh roots with webpki (no name check: SPIFFE
/// certificates have none to check), then requires its SPIFFE ID to be one of those expected.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: ExpectedServerIdentities,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: &TrustRoots,
        expected: impl Into<ExpectedServerIdentities>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsConfigError> {
        let expected = expected.into();
        if expected.0.is_empty() {
            return Err(TlsConfigError::NoExpectedIdentity);
        }
        Ok(SpiffeServerVerifier {
            roots: roots.store.clone(),
            expected,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        certificate
            .verify_for_usage(
                self.algorithms.all,
                &self.roots.roots,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(pki_error)?;
        let found = identity_from_certificate(end_entity)
            .map_err(|source| identity_error(ServerIdentityError::Missing { source }))?;
        if !self.expected.contains(&found) {
            tracing::debug!(found = %found, "server identity not expected for this destination");
            return Err(identity_error(ServerIdentityError::Unexpected {
                found,
                expected: self.expected.0.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// rustls' webpki client verifier (mandatory client certificate, chain to the mesh roots,
/// clientAuth EKU), plus the requirement that the client certificate carries a SPIFFE ID, so
/// that a connection that completes always has a peer identity.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl SpiffeClientVerifier {
    fn new(roots: &TrustRoots, provider: Arc<CryptoProvider>) -> Result<Self, TlsConfigError> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots.store.clone(), provider)
            .build()
            .map_err(|source| TlsConfigError::ClientVerifier { source })?;
        Ok(SpiffeClientVerifier { inner })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        identity_from_certificate(end_entity).map_err(|error| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn identity_error(error: ServerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// webpki's verdict in rustls' vocabulary, so that the right TLS alert goes to the peer.
fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let certificate_error = match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

#[cfg(test)]
mod tests;
