//! `verifyCertificateSpki` and `verifyCertificateHash` of a MUTUAL or OPTIONAL_MUTUAL server:
//! a client certificate the CA signed must also match one of the pins, as Envoy's
//! `CertificateValidationContext` checks them. A pin is the base64 SHA-256 of the certificate's
//! DER SubjectPublicKeyInfo, or the hex SHA-256 of the certificate's DER (colons allowed, either
//! case). When both lists are set, a match in either suffices. A pin that is not a SHA-256
//! digest refuses the server's configuration, as Envoy refuses the listener.

use base64::Engine;
use rustls::pki_types::CertificateDer;

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

impl super::client_sans::ClientCheck for Pins {
    fn refusal(&self, certificate: &CertificateDer<'_>) -> Option<String> {
        match self.matches(certificate) {
            Ok(true) => None,
            Ok(false) => Some(
                "the client certificate matches none of verifyCertificateSpki and verifyCertificateHash"
                    .to_owned(),
            ),
            Err(reason) => Some(reason),
        }
    }
}

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
