//! Certificates of the servers that terminate TLS, by `credentialName`. In local mode a
//! credential is a directory named after it under the credentials directory, holding the keys
//! of Istio's Secrets as files: `tls.crt` (the chain, leaf first), `tls.key`, and for MUTUAL
//! `ca.crt` (or, as Istio's separate CA Secret, `<name>-cacert/ca.crt`).
//!
//! A credential is read when a handshake first needs it and again whenever one of its files
//! changed (size or modification time, checked per handshake: a few `stat` calls), so a rotated
//! certificate serves the next connection without a restart. A missing or broken credential
//! fails only the servers naming it: their handshakes are refused, reported once per change of
//! its files, and every other server keeps serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tracing::warn;

use crate::model::gateway::{EdgeServer, ServerTls, ServerTlsMode, TlsVersion};

/// Istio's Secret keys, as file names.
pub const CERTIFICATE_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";
/// Istio's separate CA Secret for MUTUAL: `<credentialName>-cacert`.
pub const CA_SECRET_SUFFIX: &str = "-cacert";

/// Why a server cannot terminate TLS.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: no certificate")]
    NoCertificate(PathBuf),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("MUTUAL needs {CA_FILE} in the credential or a {CA_SECRET_SUFFIX} credential")]
    NoCa,
    #[error("{0}")]
    Settings(String),
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// Local mode: `<dir>/<credentialName>/tls.crt`, ...
    Directory(PathBuf),
}

/// The files a credential was read from, as they were: read again when this changes.
type Stamp = Vec<Option<(SystemTime, u64)>>;

struct Entry {
    stamp: Stamp,
    /// The server configurations built from it, by the server's TLS settings.
    configs: HashMap<ServerTls, Result<Arc<ServerConfig>, CredentialError>>,
}

/// The credentials of one gateway proxy.
pub struct CredentialStore {
    source: CredentialSource,
    provider: Arc<CryptoProvider>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    pub fn new(source: CredentialSource) -> Self {
        CredentialStore {
            source,
            // The process's provider, under its compliance policy, as every TLS configuration.
            provider: weft_identity::crypto_provider(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn paths(&self, name: &str) -> [PathBuf; 4] {
        let CredentialSource::Directory(dir) = &self.source;
        let own = dir.join(name);
        [
            own.join(CERTIFICATE_FILE),
            own.join(KEY_FILE),
            own.join(CA_FILE),
            dir.join(format!("{name}{CA_SECRET_SUFFIX}")).join(CA_FILE),
        ]
    }

    /// The TLS configuration `server` terminates with, from its credential as it is now.
    pub fn server_config(&self, server: &EdgeServer) -> Result<Arc<ServerConfig>, CredentialError> {
        let tls = server
            .tls
            .as_ref()
            .ok_or_else(|| CredentialError::Settings("no TLS settings".to_owned()))?;
        let name = tls.credential_name.as_str();
        // A name is one path component: `../x` never leaves the credentials directory.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CredentialError::Settings(format!(
                "credentialName {name:?} is not a credential name"
            )));
        }
        let paths = self.paths(name);
        let stamp: Stamp = paths.iter().map(|p| file_stamp(p)).collect();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(name.to_owned()).or_insert_with(|| Entry {
            stamp: stamp.clone(),
            configs: HashMap::new(),
        });
        if entry.stamp != stamp {
            entry.stamp = stamp;
            entry.configs.clear();
        }
        if let Some(result) = entry.configs.get(tls) {
            return result.clone();
        }
        let result = build(&self.provider, &paths, tls, server.carries_http()).map(Arc::new);
        if let Err(error) = &result {
            // Once per change of the files: the handshakes it refuses meanwhile say nothing.
            warn!(gateway = %server.gateway, server = %server.name, credential = %name, %error, "credential unusable: the server refuses TLS");
        }
        entry.configs.insert(tls.clone(), result.clone());
        result
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|e| CredentialError::Read(path.to_owned(), e.to_string()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let bytes = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialError::Invalid(path.to_owned(), e.to_string()))?;
    if certificates.is_empty() {
        return Err(CredentialError::NoCertificate(path.to_owned()));
    }
    Ok(certificates)
}

/// The protocol versions of `tls`: TLS 1.2 and 1.3 at most, as rustls speaks them; a minimum
/// below 1.2 still means 1.2 (deliberately stricter than Envoy, which would offer 1.0 and 1.1).
fn versions(tls: &ServerTls) -> Result<Vec<&'static SupportedProtocolVersion>, CredentialError> {
    let min = tls.min_version.max(TlsVersion::V1_2);
    let max = match tls.max_version {
        TlsVersion::Auto => TlsVersion::V1_3,
        other => other,
    };
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::V1_2, &rustls::version::TLS12),
        (TlsVersion::V1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, v)| v)
    .collect();
    if versions.is_empty() {
        return Err(CredentialError::Settings(format!(
            "no TLS version between {:?} and {:?} is served (TLS 1.2 and 1.3 only)",
            tls.min_version, tls.max_version
        )));
    }
    Ok(versions)
}

/// OpenSSL's names of the TLS 1.2 suites rustls offers. As in Envoy, `cipherSuites` choose
/// among TLS 1.2 suites; TLS 1.3's are always offered.
const TLS12_SUITES: [(&str, &str); 6] = [
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

fn provider_for(base: &CryptoProvider, tls: &ServerTls) -> Result<CryptoProvider, CredentialError> {
    let mut provider = base.clone();
    if tls.cipher_suites.is_empty() {
        return Ok(provider);
    }
    let wanted: Vec<&str> = tls
        .cipher_suites
        .iter()
        .filter_map(|name| {
            TLS12_SUITES
                .iter()
                .find(|(openssl, _)| openssl.eq_ignore_ascii_case(name))
                .map(|(_, rustls)| *rustls)
        })
        .collect();
    if wanted.is_empty() {
        return Err(CredentialError::Settings(format!(
            "none of the cipher suites {:?} is supported",
            tls.cipher_suites
        )));
    }
    provider.cipher_suites.retain(|suite| {
        suite.version() == &rustls::version::TLS13
            || suite
                .suite()
                .as_str()
                .is_some_and(|name| wanted.contains(&name))
    });
    Ok(provider)
}

fn build(
    base: &Arc<CryptoProvider>,
    paths: &[PathBuf; 4],
    tls: &ServerTls,
    http: bool,
) -> Result<ServerConfig, CredentialError> {
    let [certificate_path, key_path, ca_path, ca_secret_path] = paths;
    let chain = certificates(certificate_path)?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|e| CredentialError::Invalid(key_path.clone(), e.to_string()))?;
    let provider = Arc::new(provider_for(base, tls)?);
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CredentialError::Invalid(key_path.clone(), e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| CredentialError::KeyMismatch(e.to_string()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(tls)?)
        .map_err(|e| CredentialError::Settings(e.to_string()))?;
    let builder = if tls.mode == ServerTlsMode::Mutual {
        let ca = if ca_path.exists() {
            ca_path
        } else if ca_secret_path.exists() {
            ca_secret_path
        } else {
            return Err(CredentialError::NoCa);
        };
        let mut roots = RootCertStore::empty();
        for certificate in certificates(ca)? {
            roots
                .add(certificate)
                .map_err(|e| CredentialError::Invalid(ca.clone(), e.to_string()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| CredentialError::Invalid(ca.clone(), e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
        Arc::new(certified),
    )));
    if http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
