//! The workload side: a private key that never leaves the process that generated it, the CSR
//! sent to the CA, and the certificate that comes back, checked before it is used.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::SpiffeId;
use crate::ca::{hex, unix_seconds_to_system_time};
use crate::peer::uri_sans;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadCertificateError {
    #[error("cannot generate a P-256 key: {source}")]
    GenerateKey { source: rcgen::Error },
    #[error("cannot build a CSR for {identity}: {source}")]
    Csr {
        identity: SpiffeId,
        source: rcgen::Error,
    },
    #[error("certificate chain holds no certificate")]
    EmptyChain,
    #[error("certificate chain entry {index} is not PEM: {reason}")]
    ChainPem { index: usize, reason: String },
    #[error("leaf certificate cannot be parsed: {reason}")]
    LeafUnparsable { reason: String },
    #[error("leaf certificate names {found:?} but {expected} was requested")]
    LeafIdentityMismatch {
        expected: SpiffeId,
        found: Vec<String>,
    },
    #[error("leaf certificate public key does not match the local private key")]
    KeyMismatch,
    #[error("leaf certificate is a CA certificate, not a workload certificate")]
    LeafIsCa,
    #[error("rustls refused the key: {source}")]
    Rustls { source: rustls::Error },
}

/// A workload private key (ECDSA P-256), generated locally.
pub struct WorkloadKey {
    key_pair: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadKey(P-256, redacted)")
    }
}

impl WorkloadKey {
    pub fn generate() -> Result<Self, WorkloadCertificateError> {
        let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| WorkloadCertificateError::GenerateKey { source })?;
        Ok(WorkloadKey { key_pair })
    }

    /// A PEM CSR asking for `identity` as the only (URI) SAN, with an empty subject, signed by
    /// this key.
    pub fn csr_for(&self, identity: &SpiffeId) -> Result<String, WorkloadCertificateError> {
        let csr_error = |source| WorkloadCertificateError::Csr {
            identity: identity.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(identity.to_string()).map_err(csr_error)?,
        )];
        params
            .serialize_request(&self.key_pair)
            .and_then(|csr| csr.pem())
            .map_err(csr_error)
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn public_key_der(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.key_pair.subject_public_key_info()
    }

    fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pair.serialize_der()))
    }
}

/// A checked workload certificate and its key, ready to build rustls configurations.
pub struct WorkloadCertificate {
    identity: SpiffeId,
    /// Leaf first, then any intermediates. Self-signed roots from the CA's answer are kept apart
    /// in `ca_roots`: sending them would only add bytes to every handshake.
    chain: Vec<CertificateDer<'static>>,
    ca_roots: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When this value was built from the CA's answer.
    received_at: SystemTime,
    serial: String,
    issuer: String,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a config dump may show of a workload certificate: everything but the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSummary {
    pub identity: SpiffeId,
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    pub refresh_at: String,
    pub issuer: String,
    pub chain_len: usize,
}

impl WorkloadCertificate {
    /// Builds the certificate from the CA's answer (PEM strings, leaf first; an entry may hold
    /// several PEM blocks) and the local key, checking that the leaf names exactly `identity`,
    /// is not a CA, and carries the public half of `key`.
    pub fn from_pem_chain<S: AsRef<str>>(
        identity: &SpiffeId,
        chain_pem: &[S],
        key: WorkloadKey,
    ) -> Result<Self, WorkloadCertificateError> {
        let mut certificates = Vec::new();
        for (index, entry) in chain_pem.iter().enumerate() {
            for der in CertificateDer::pem_slice_iter(entry.as_ref().as_bytes()) {
                let der = der.map_err(|error| WorkloadCertificateError::ChainPem {
                    index,
                    reason: error.to_string(),
                })?;
                certificates.push(der);
            }
        }
        let leaf_der = certificates
            .first()
            .ok_or(WorkloadCertificateError::EmptyChain)?;
        let unparsable = |reason: String| WorkloadCertificateError::LeafUnparsable { reason };
        let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref())
            .map_err(|error| unparsable(error.to_string()))?;
        let uris = uri_sans(&leaf).map_err(unparsable)?;
        if uris != [identity.to_string()] {
            return Err(WorkloadCertificateError::LeafIdentityMismatch {
                expected: identity.clone(),
                found: uris,
            });
        }
        if leaf.is_ca() {
            return Err(WorkloadCertificateError::LeafIsCa);
        }
        if leaf.public_key().raw != key.public_key_der().as_slice() {
            return Err(WorkloadCertificateError::KeyMismatch);
        }
        let not_before = unix_seconds_to_system_time(leaf.validity().not_before.timestamp());
        let not_after = unix_seconds_to_system_time(leaf.validity().not_after.timestamp());
        let serial = hex(leaf.raw_serial());
        let issuer = leaf.issuer().to_string();

        let (ca_roots, chain): (Vec<_>, Vec<_>) = certificates
            .into_iter()
            .enumerate()
            .partition(|(position, der)| *position > 0 && is_self_signed(der));
        Ok(WorkloadCertificate {
            identity: identity.clone(),
            chain: chain.into_iter().map(|(_, der)| der).collect(),
            ca_roots: ca_roots.into_iter().map(|(_, der)| der).collect(),
            key: key.private_key_der(),
            not_before,
            not_after,
            received_at: SystemTime::now(),
            serial,
            issuer,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The certificates to present: leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Self-signed roots that came with the CA's answer (Istio's CA appends its root).
    pub fn ca_roots(&self) -> &[CertificateDer<'static>] {
        &self.ca_roots
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Time to ask for a new certificate: half way through the validity left when it arrived.
    /// Not half of `not_before..not_after`: the start is backdated for clock skew, so for a short
    /// lifetime that half way point can already be past on arrival.
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.not_before.max(self.received_at);
        let remaining = self
            .not_after
            .duration_since(start)
            .unwrap_or(Duration::ZERO);
        start + remaining / 2
    }

    /// Whether the certificate is past its `not_after` at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The rustls view of chain and key, for certificate resolvers that serve several
    /// workloads from one listener.
    pub fn certified_key(
        &self,
        provider: &CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, WorkloadCertificateError> {
        CertifiedKey::from_der(self.chain.clone(), self.private_key(), provider)
            .map(Arc::new)
            .map_err(|source| WorkloadCertificateError::Rustls { source })
    }

    pub fn describe(&self) -> CertificateSummary {
        CertificateSummary {
            identity: self.identity.clone(),
            serial: self.serial.clone(),
            not_before: rfc3339(self.not_before),
            not_after: rfc3339(self.not_after),
            refresh_at: rfc3339(self.refresh_at()),
            issuer: self.issuer.clone(),
            chain_len: self.chain.len(),
        }
    }
}

fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, certificate)| {
            certificate.subject().as_raw() == certificate.issuer().as_raw()
                && certificate.verify_signature(None).is_ok()
        })
        .unwrap_or(false)
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}

#[cfg(test)]
mod tests;
