//! `subjectAltNames` of a MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL server: a client certificate
//! must carry one of them. Istio turns each into an exact string matcher of Envoy's
//! `match_subject_alt_names`, which Envoy checks against the certificate's DNS, URI, email and
//! IP entries; a DNS entry matches as a DNS name does (a wildcard entry `*.example.com` in the
//! certificate covers `a.example.com`, one label, case aside).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use weft_identity::SubjectAltName;

/// Whether `certificate` carries one of `allowed` (any when `allowed` is empty).
pub(crate) fn carries_allowed_name(
    certificate: &CertificateDer<'_>,
    allowed: &[String],
) -> Result<(), String> {
    if allowed.is_empty() {
        return Ok(());
    }
    let names = weft_identity::subject_alt_names(certificate)?;
    if names.iter().any(|name| {
        allowed.iter().any(|wanted| match name {
            SubjectAltName::Dns(dns) => dns_name_matches(wanted, dns),
            SubjectAltName::Uri(value) | SubjectAltName::Email(value) => value == wanted,
            SubjectAltName::Ip(ip) => ip.to_string() == *wanted,
        })
    }) {
        Ok(())
    } else {
        Err(format!(
            "the client certificate carries none of the subject alt names {allowed:?}"
        ))
    }
}

/// Envoy's `dnsNameMatch`: `wanted` is the certificate's `pattern`, or falls under its wildcard
/// (`*.suffix` for one more label).
fn dns_name_matches(wanted: &str, pattern: &str) -> bool {
    if wanted.eq_ignore_ascii_case(pattern) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    if !suffix.starts_with('.') || wanted.len() <= suffix.len() {
        return false;
    }
    let (label, rest) = wanted.split_at(wanted.len() - suffix.len());
    rest.eq_ignore_ascii_case(suffix) && !label.contains('.')
}

/// A check a client certificate must also pass once its CA has verified it.
pub(crate) trait ClientCheck: std::fmt::Debug + Send + Sync {
    /// Why `certificate` is refused, if it is.
    fn refusal(&self, certificate: &CertificateDer<'_>) -> Option<String>;
}

/// The server's `subjectAltNames`: a client certificate must carry one of them.
#[derive(Debug)]
pub(crate) struct AllowedNames(pub(crate) Vec<String>);

impl ClientCheck for AllowedNames {
    fn refusal(&self, certificate: &CertificateDer<'_>) -> Option<String> {
        carries_allowed_name(certificate, &self.0).err()
    }
}

/// A client verifier that also requires what `check` requires; the refusal is a TLS alert
/// inside the handshake.
#[derive(Debug)]
pub(crate) struct AlsoChecking<C> {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) check: C,
}

impl<C: ClientCheck> ClientCertVerifier for AlsoChecking<C> {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
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
        match self.check.refusal(end_entity) {
            None => Ok(verified),
            Some(reason) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(Refused(reason)))),
            )),
        }
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

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

#[cfg(test)]
mod tests {
    use super::dns_name_matches;

    #[test]
    fn dns_names_match_as_envoy_matches_them() {
        assert!(dns_name_matches("a.example.com", "a.example.com"));
        assert!(dns_name_matches("A.Example.com", "a.example.com"));
        assert!(dns_name_matches("a.example.com", "*.example.com"));
        assert!(!dns_name_matches("b.a.example.com", "*.example.com"));
        assert!(!dns_name_matches("example.com", "*.example.com"));
        assert!(!dns_name_matches("b.example.com", "a.example.com"));
    }
}
