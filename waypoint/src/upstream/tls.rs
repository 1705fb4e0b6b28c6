//! TLS origination to endpoints outside the mesh (a ServiceEntry host whose DestinationRule
//! says `tls.mode: SIMPLE` or `MUTUAL`), as Envoy originates it: the client's plain HTTP goes
//! out encrypted, with the configured SNI, the server verified against the configured CAs (else
//! the Mozilla root set) and names (`subjectAltNames`, else the SNI), and for MUTUAL the
//! configured client certificate. Built once per configuration; files are read then.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_proto::waypoint as proto;

/// How the waypoint speaks TLS to a cluster's endpoints.
#[derive(Clone)]
pub struct OriginatedTls {
    server_name: ServerName<'static>,
    connector: TlsConnector,
    /// Unique to these settings as built: pooled connections made with them are kept apart
    /// from those of other settings to the same address (two hosts behind one CDN address,
    /// a CA that changed).
    id: u64,
}

/// The next [`OriginatedTls::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for OriginatedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginatedTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl OriginatedTls {
    /// The TLS of `settings` for the cluster of `host`; an error names the file or value.
    pub fn new(settings: &proto::UpstreamTls, host: &str) -> Result<Self, String> {
        let name = if settings.sni.is_empty() {
            host
        } else {
            &settings.sni
        };
        let sni = server_name(name)?;
        let provider = weft_identity::crypto_provider();
        let mut roots = RootCertStore::empty();
        if settings.ca_certificates.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for certificate in certificates(&settings.ca_certificates)? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("caCertificates {}: {e}", settings.ca_certificates))?;
            }
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("caCertificates: {e}"))?;
        let names = settings
            .subject_alt_names
            .iter()
            .map(|n| server_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyOfNames { webpki, names }));
        let config = if settings.client_certificate.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain = certificates(&settings.client_certificate)?;
            let key = PrivateKeyDer::from_pem_file(&settings.private_key)
                .map_err(|e| format!("privateKey {}: {e}", settings.private_key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("clientCertificate {}: {e}", settings.client_certificate))?
        };
        Ok(OriginatedTls {
            server_name: sni,
            connector: TlsConnector::from(Arc::new(config)),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// What tells these settings apart from every other built in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The handshake over `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("server name {name:?}: {e}"))
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{path}: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{path}: no certificate"));
    }
    Ok(certificates)
}

/// Verifies the server's chain as webpki does, for the SNI or, when `subjectAltNames` are
/// given, for any one of them (Envoy's `match_subject_alt_names`).
#[derive(Debug)]
struct AnyOfNames {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyOfNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |name: &ServerName<'_>| {
            self.webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
        };
        let mut result = Err(rustls::Error::General("no subject alt name".to_owned()));
        if self.names.is_empty() {
            return verify(server_name);
        }
        for name in &self.names {
            result = verify(name);
            if result.is_ok() {
                break;
            }
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
