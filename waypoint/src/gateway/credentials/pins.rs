//! `verifyCertificateSpki` and `verifyCertificateHash` of a MUTUAL or OPTIONAL_MUTUAL server:
//! a client certificate the CA signed must also match one of the pins, as Envoy's
//! `CertificateValidationContext` checks them. A pin is the base64 SHA-256 of the certificate's
//! DER SubjectPublicKeyInfo, or the hex SHA-256 of the certificate's DER (colons allowed, either
//! case). When both lists are set, a match in either suffices. A pin that is not a SHA-256
//! digest refuses the server's configuration, as Envoy refuses the listener.

use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

type Digest = [u8; 32];

/// A server's pins, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pins {
    spki: Vec<Digest>,
    hash: Vec<Digest>,
}

impl Pins {
    /// The pins of `spki` and `hash`; `None` when both are empty (no pinning).
    pub(crate) fn parse(spki: &[String], hash: &[String]) -> Result<Option<Pins>, String> {
        if spki.is_empty() && hash.is_empty() {
            return Ok(None);
        }
        let spki = spki
            .iter()
            .map(|pin| {
                base64::engine::general_purpose::STANDARD
                    .decode(pin)
                    .ok()
                    .and_then(|bytes| Digest::try_from(bytes).ok())
                    .ok_or_else(|| {
                        format!("verifyCertificateSpki: invalid base64-encoded SHA-256 {pin}")
                    })
            })
            .collect::<Result<_, _>>()?;
        let hash = hash
            .iter()
            .map(|pin| {
                hex_digest(&pin.replace(':', "")).ok_or_else(|| {
                    format!("verifyCertificateHash: invalid hex-encoded SHA-256 {pin}")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Pins { spki, hash }))
    }

    /// Whether `certificate` matches one of the pins.
    fn matches(&self, certificate: &CertificateDer<'_>) -> Result<bool, String> {
        if self.hash.contains(&sha256(certificate.as_ref())) {
            return Ok(true);
        }
        if self.spki.is_empty() {
            return Ok(false);
        }
        let parsed = webpki::EndEntityCert::try_from(certificate)
            .map_err(|e| format!("the client certificate: {e}"))?;
        Ok(self
            .spki
            .contains(&sha256(parsed.subject_public_key_info().as_ref())))
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A client verifier that also requires the client certificate to match one of the pins.
#[derive(Debug)]
pub(crate) struct RequirePinned {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) pins: Pins,
}

impl ClientCertVerifier for RequirePinned {
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
        let refused = |reason: String| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(NotPinned(reason)),
            )))
        };
        if !self.pins.matches(end_entity).map_err(refused)? {
            return Err(refused(
                "the client certificate matches none of verifyCertificateSpki and verifyCertificateHash"
                    .to_owned(),
            ));
        }
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

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotPinned(String);

#[cfg(test)]
mod tests {
    use super::Pins;

    #[test]
    fn pins_must_be_sha256_digests_as_envoy_requires() {
        let digest = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert!(
            Pins::parse(&[], &[digest.clone(), colons])
                .unwrap()
                .is_some()
        );
        assert_eq!(Pins::parse(&[], &[]), Ok(None));
        assert!(Pins::parse(&[], &["ab".repeat(31)]).is_err());
        assert!(Pins::parse(&[], &["zz".repeat(32)]).is_err());
        let spki = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
        assert!(Pins::parse(&[spki], &[]).unwrap().is_some());
        assert!(
            Pins::parse(&[digest], &[]).is_err(),
            "hex is not base64 of 32 bytes"
        );
    }
}
