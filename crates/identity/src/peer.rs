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

/// The SPIFFE ID of the client of an HBONE connection, refused unless it belongs to
/// `trust_domain`. Every HBONE server of the mesh (the agents' and the waypoints') makes this
/// check on each connection: the mesh's root may also sign for other trust domains, and their
/// identities are nobody the mesh's policies know.
pub fn peer_identity_in(
    connection: &CommonState,
    trust_domain: &str,
) -> Result<SpiffeId, PeerIdentityError> {
    let identity = peer_identity(connection)?;
    require_trust_domain(&identity, trust_domain)?;
    Ok(identity)
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

/// One entry of a certificate's subject alternative name extension, of the kinds a SAN match
/// looks at (Envoy's DNS, URI, email and IP matchers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    Uri(String),
    Email(String),
    Ip(std::net::IpAddr),
}

/// Every DNS, URI, email and IP entry of `der`'s subject alternative name extension.
pub fn subject_alt_names(der: &CertificateDer<'_>) -> Result<Vec<SubjectAltName>, String> {
    let (_, certificate) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let san = certificate
        .subject_alternative_name()
        .map_err(|error| format!("bad subject alternative name extension: {error}"))?;
    let Some(extension) = san else {
        return Ok(Vec::new());
    };
    Ok(extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SubjectAltName::Dns((*dns).to_owned())),
            GeneralName::URI(uri) => Some(SubjectAltName::Uri((*uri).to_owned())),
            GeneralName::RFC822Name(email) => Some(SubjectAltName::Email((*email).to_owned())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| SubjectAltName::Ip(b.into())),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| SubjectAltName::Ip(b.into())),
                _ => None,
            },
            _ => None,
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;
    use crate::CertificateAuthority;

    fn certificate_with_sans(sans: Vec<SanType>) -> CertificateDer<'static> {
        let ca = CertificateAuthority::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        ca.sign_params_unchecked(&params, &KeyPair::generate().unwrap())
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(Ia5String::try_from(text).unwrap())
    }

    #[test]
    fn identity_is_the_single_uri_san() {
        let found = identity_from_certificate(&certificate_with_sans(vec![
            SanType::DnsName("reviews.bookinfo.svc".try_into().unwrap()),
            uri("spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        ]))
        .unwrap();
        assert_eq!(
            found.to_string(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
    }

    #[test]
    fn certificates_without_exactly_one_valid_spiffe_uri_are_refused() {
        assert_eq!(
            identity_from_certificate(&certificate_with_sans(vec![SanType::DnsName(
                "reviews".try_into().unwrap()
            )])),
            Err(PeerIdentityError::NoUriSan)
        );
        assert!(matches!(
            identity_from_certificate(&certificate_with_sans(vec![
                uri("spiffe://cluster.local/ns/a/sa/b"),
                uri("spiffe://cluster.local/ns/a/sa/c"),
            ])),
            Err(PeerIdentityError::MultipleUriSans { count: 2, .. })
        ));
        match identity_from_certificate(&certificate_with_sans(vec![uri(
            "https://cluster.local/ns/a/sa/b",
        )])) {
            Err(PeerIdentityError::InvalidSpiffeId { uri, source }) => {
                assert_eq!(uri, "https://cluster.local/ns/a/sa/b");
                assert!(matches!(source, SpiffeIdError::Scheme { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            identity_from_certificate(&CertificateDer::from(vec![0x30, 0x03, 0x01])),
            Err(PeerIdentityError::UnparsableCertificate { .. })
        ));
    }

    #[test]
    fn trust_domain_is_enforced() {
        let id: SpiffeId = "spiffe://other.mesh/ns/a/sa/b".parse().unwrap();
        assert!(require_trust_domain(&id, "other.mesh").is_ok());
        let error = require_trust_domain(&id, "cluster.local").unwrap_err();
        assert_eq!(
            error.to_string(),
            "peer identity spiffe://other.mesh/ns/a/sa/b is outside the trust domain \"cluster.local\""
        );
    }
}
