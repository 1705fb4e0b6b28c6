//! Which of a server's certificates a client is given. Istio's `credentialNames` and
//! `tlsCertificates` name up to two, typically one RSA and one ECDSA; Envoy presents the
//! ECDSA one to a client that can verify it and the RSA one to the others. Here the choice is
//! made from the ClientHello's signature schemes: the first certificate whose key is not RSA and
//! can sign with a scheme the client offers, else the first whose key can, else the first (the
//! handshake then fails as it would with that certificate alone).

use std::sync::Arc;

use rustls::SignatureAlgorithm;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates chosen per ClientHello by signature scheme.
#[derive(Debug)]
pub(crate) struct BySignatureScheme {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl BySignatureScheme {
    /// `certificates` is never empty (a server has at least one).
    pub(crate) fn new(certificates: Vec<Arc<CertifiedKey>>) -> Self {
        BySignatureScheme { certificates }
    }

    /// The index of the certificate offered to a client signing with `offered`.
    pub(crate) fn choose(&self, offered: &[rustls::SignatureScheme]) -> usize {
        let usable = |c: &&Arc<CertifiedKey>| c.key.choose_scheme(offered).is_some();
        let position = |preferred: &dyn Fn(&Arc<CertifiedKey>) -> bool| {
            self.certificates
                .iter()
                .position(|c| preferred(c) && usable(&c))
        };
        position(&|c| c.key.algorithm() != SignatureAlgorithm::RSA)
            .or_else(|| position(&|_| true))
            .unwrap_or(0)
    }
}

impl ResolvesServerCert for BySignatureScheme {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = self.choose(client_hello.signature_schemes());
        self.certificates.get(chosen).cloned()
    }
}
