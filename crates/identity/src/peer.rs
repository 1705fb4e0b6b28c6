//! Who is on the other end: the SPIFFE ID carried by a certificate, the single URI SAN of an
//! X.509 SVID.

use rustls::CommonState;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{SpiffeId, SpiffeIdError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer certificate cannot be parsed: {reason}")]
    UnparsableCertificate { reason: String },
    #[error("the peer certificate carries no URI SAN, so no SPIFFE ID")]
    NoUriSan,
    #[error(
        "the peer certificate carries {count} URI SANs ({uris:?}); a SPIFFE certificate has exactly one"
    )]
    MultipleUriSans { count: usize, uris: Vec<String> },
    #[error("the peer certificate URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    InvalidSpiffeId { uri: String, source: SpiffeIdError },
    #[error("peer identity {found} is outside the trust domain {expected:?}")]
    ForeignTrustDomain { found: SpiffeId, expected: String },
}

/// The SPIFFE ID of the peer of an established TLS connection (client or server side): the URI
/// SAN of the first certificate the peer sent.
pub fn peer_identity(connection: &CommonState) -> Result<SpiffeId, PeerIdentityError> {
    let leaf = connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(PeerIdentityError::NoPeerCertificate)?;
    identity_from_certificate(leaf)
}

/// The SPIFFE ID a certificate was issued to. Exactly one URI SAN is required, as the X.509-SVID
/// specification demands; DNS or IP SANs next to it are ignored.
pub fn identity_from_certificate(der: &CertificateDer<'_>) -> Result<SpiffeId, PeerIdentityError> {
    let (_, certificate) = X509Certificate::from_der(der.as_ref()).map_err(|error| {
        PeerIdentityError::UnparsableCertificate {
            reason: error.to_string(),
        }
    })?;
    let uris = uri_sans(&certificate)
        .map_err(|reason| PeerIdentityError::UnparsableCertificate { reason })?;
    match uris.as_slice() {
        [] => Err(PeerIdentityError::NoUriSan),
        [uri] => uri
            .parse()
            .map_err(|source| PeerIdentityError::InvalidSpiffeId {
                uri: uri.clone(),
                source,
            }),
        _ => Err(PeerIdentityError::MultipleUriSans {
            count: uris.len(),
            uris,
        }),
    }
}

/// Refuses an identity from another trust domain.
pub fn require_trust_domain(
    identity: &SpiffeId,
    trust_domain: &str,
) -> Result<(), PeerIdentityError> {
    if identity.is_in_trust_domain(trust_domain) {
        Ok(())
    } else {
        Err(PeerIdentityError::ForeignTrustDomain {
            found: identity.clone(),
            expected: trust_domain.to_owned(),
        })
    }
}

/// All URI entries of the certificate's subject alternative name extension.
pub(crate) fn uri_sans(certificate: &X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = certificate
        .subject_alternative_name()
        .map_err(|error| format!("bad subject alternative name extension: {error}"))?;
    Ok(san
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}
