//! Certificates of the servers that terminate TLS. In Kubernetes mode the controller serves
//! them over xDS ([`xds`]: Envoy's SDS `Secret` resources, named by the server's
//! `credential_resource`), built from the Kubernetes Secrets the Gateways name. In local mode a
//! credential is a directory named after its `credentialName` under the credentials directory,
//! holding the keys of Istio's Secrets as files: `tls.crt` (the chain, leaf first), `tls.key`,
//! and for MUTUAL `ca.crt` (or, as Istio's separate CA Secret, `<name>-cacert/ca.crt`), with
//! `ca.crl` beside it when client certificates are revoked (the controller serves it as the CA
//! resource's `crl`). A server uses the controller's credential when one was delivered, else
//! the directory's.
//!
//! A credential is read when a handshake first needs it and again whenever it changed (a new
//! version from the controller; a file's size or modification time, a few `stat` calls per
//! handshake), so a rotated certificate serves the next connection without a restart. A
//! missing or broken credential fails only the servers naming it: their handshakes are
//! refused, reported once per change of the credential, and every other server keeps serving.
//!
//! A server names up to two credentials (Istio's `credentialNames`, typically one RSA and one
//! ECDSA certificate): the one presented suits the client's signature schemes ([`choice`]);
//! the first one's CA verifies MUTUAL's clients, as in Istio. Without a credential name, a
//! server reads the files Istio's file-mounted gateways name (`serverCertificate` and
//! `privateKey` or `tlsCertificates`, `caCertificates`, `caCrl`: paths in the gateway's pod),
//! checked for changes as a directory's are. `subjectAltNames` restrict the client
//! certificates MUTUAL, OPTIONAL_MUTUAL and ISTIO_MUTUAL accept during the handshake
//! ([`client_sans`]): a client carrying none of them gets a TLS alert, as from Envoy. MUTUAL
//! and OPTIONAL_MUTUAL also check `verifyCertificateSpki` and `verifyCertificateHash` there
//! ([`pins`]).
//!
//! ISTIO_MUTUAL servers need no credential: they present the gateway's own mesh certificate
//! and require a client certificate the mesh's CA issued (verified against the mesh's roots, a
//! SPIFFE identity of the mesh's trust domain), as Istio's gateways do with their workload
//! certificate. OPTIONAL_MUTUAL verifies a client certificate with MUTUAL's CA when one is
//! presented and lets a client without one through.

mod choice;
mod client_sans;
mod pins;
pub mod xds;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tracing::warn;
use weft_identity::{CertificateSource, SpiffeId, WorkloadCertificate};

use crate::model::gateway::{EdgeServer, ServerTls, ServerTlsMode, TlsFiles, TlsVersion};
use choice::BySignatureScheme;
use client_sans::{AllowedNames, AlsoChecking};
use pins::Pins;
use xds::{Material, XdsCredentials};

/// Istio's Secret keys, as file names.
pub const CERTIFICATE_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";
/// Revocation lists beside the CA (Istio's `ca.crl`).
pub const CRL_FILE: &str = "ca.crl";
/// Istio's separate CA Secret for MUTUAL: `<credentialName>-cacert` (and the SDS resource of
/// the CA: `<credential resource>-cacert`).
pub const CA_SECRET_SUFFIX: &str = "-cacert";

/// Why a server cannot terminate TLS. Origins are file paths or SDS resource names.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("reading {0}: {1}")]
    Read(String, String),
    #[error("{0}: no certificate")]
    NoCertificate(String),
    #[error("{0}: {1}")]
    Invalid(String, String),
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("MUTUAL needs {CA_FILE} in the credential or a {CA_SECRET_SUFFIX} credential")]
    NoCa,
    #[error(
        "credential {0} was not delivered by the controller (its Secret is missing or unusable, or this gateway may not use it)"
    )]
    NotDelivered(String),
    #[error("{0}")]
    Settings(String),
    #[error("ISTIO_MUTUAL: the gateway's mesh certificate: {0}")]
    MeshCertificate(String),
}

/// Why a client that completed the handshake is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientRefused {
    #[error(transparent)]
    Identity(#[from] weft_identity::PeerIdentityError),
}

/// Where credentials come from: the controller's, and in local mode a directory.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    /// Local mode: `<dir>/<credentialName>/tls.crt`, ...
    pub directory: Option<PathBuf>,
    /// What the controller delivered over xDS.
    pub xds: XdsCredentials,
}

impl CredentialSource {
    /// A directory only (local mode without a controller's credentials).
    pub fn directory(dir: PathBuf) -> Self {
        CredentialSource {
            directory: Some(dir),
            xds: XdsCredentials::default(),
        }
    }
}

/// One credential as it was read: read again when this changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    /// The files' stamps.
    Files(Vec<FileStamp>),
    /// The versions of the certificate's and the CA's resources.
    Xds(Option<String>, Option<String>),
}

struct Entry {
    /// The stamps of the server's credentials, in order.
    stamp: Vec<Stamp>,
    /// The server configurations built from it, by the server's TLS settings.
    configs: HashMap<ServerTls, Result<Arc<ServerConfig>, CredentialError>>,
}

/// PEM bytes and where they came from (for errors).
struct Pem {
    origin: String,
    bytes: Vec<u8>,
}

/// What one server's configuration is built from.
struct Credential {
    /// Each certificate chain and its key: one, or two to choose from by the client.
    certificates: Vec<(Pem, Pem)>,
    ca: Option<Pem>,
    /// Revocation lists checked with the CA (Istio's `ca.crl` beside `ca.crt`).
    crl: Option<Pem>,
}

/// Reads a credential's material when its configuration must be built.
type Reader<'a> = Box<dyn Fn() -> Result<Credential, CredentialError> + 'a>;

/// One credential of a server, found: the name it is cached and reported by, what tells that
/// it changed, and how to read it.
struct Located<'a> {
    key: String,
    stamp: Stamp,
    read: Reader<'a>,
}

/// The configurations built for one mesh certificate, by whether they carry HTTP and by the
/// `subjectAltNames` their clients must carry.
type MeshConfigs = (
    Arc<WorkloadCertificate>,
    HashMap<(bool, Vec<String>), Arc<ServerConfig>>,
);

/// The gateway's own identity and where its certificate comes from (ISTIO_MUTUAL).
struct MeshIdentity {
    identity: SpiffeId,
    certificates: Arc<dyn CertificateSource>,
    /// The configurations built for the last certificate, by whether they carry HTTP and the
    /// SANs required; rebuilt only when the certificate changes.
    built: Mutex<Option<MeshConfigs>>,
}

/// The credentials of one gateway proxy.
pub struct CredentialStore {
    source: CredentialSource,
    provider: Arc<CryptoProvider>,
    entries: Mutex<HashMap<String, Entry>>,
    mesh: Option<MeshIdentity>,
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
            mesh: None,
        }
    }

    /// With the gateway's own identity, which ISTIO_MUTUAL servers present.
    pub fn with_mesh_identity(
        mut self,
        identity: SpiffeId,
        certificates: Arc<dyn CertificateSource>,
    ) -> Self {
        self.mesh = Some(MeshIdentity {
            identity,
            certificates,
            built: Mutex::new(None),
        });
        self
    }

    /// The mesh's trust domain, whose identities ISTIO_MUTUAL clients must have.
    pub fn trust_domain(&self) -> Option<&str> {
        self.mesh.as_ref().map(|m| m.identity.trust_domain())
    }

    /// ISTIO_MUTUAL: the gateway's mesh certificate, client certificates verified against the
    /// mesh's roots (TLS 1.3, as every mesh connection: stricter than Envoy's 1.2 minimum) and,
    /// when `subject_alt_names` are given, required to carry one of them during the handshake
    /// (Envoy's `match_subject_alt_names` in the validation context: a client refused gets a
    /// TLS alert).
    async fn mesh_config(
        &self,
        http: bool,
        subject_alt_names: &[String],
    ) -> Result<Arc<ServerConfig>, CredentialError> {
        let mesh = self.mesh.as_ref().ok_or_else(|| {
            CredentialError::MeshCertificate("this proxy has no mesh identity".to_owned())
        })?;
        let certificate = mesh
            .certificates
            .fetch(&mesh.identity)
            .await
            .map_err(|e| CredentialError::MeshCertificate(e.to_string()))?;
        let mut built = mesh.built.lock().unwrap_or_else(|e| e.into_inner());
        if built
            .as_ref()
            .is_none_or(|(for_certificate, _)| !Arc::ptr_eq(for_certificate, &certificate))
        {
            *built = Some((Arc::clone(&certificate), HashMap::new()));
        }
        let Some((_, configs)) = built.as_mut() else {
            unreachable!("set above");
        };
        let key = (http, subject_alt_names.to_vec());
        if let Some(config) = configs.get(&key) {
            return Ok(Arc::clone(config));
        }
        let roots = mesh.certificates.trust_roots().ok_or_else(|| {
            CredentialError::MeshCertificate("the mesh's roots are not known yet".to_owned())
        })?;
        let hbone = if subject_alt_names.is_empty() {
            weft_identity::server_config(&certificate, &roots)
        } else {
            weft_identity::server_config_checking_clients(&certificate, &roots, |mesh| {
                Arc::new(AlsoChecking {
                    inner: mesh,
                    check: AllowedNames(subject_alt_names.to_vec()),
                })
            })
        }
        .map_err(|e| CredentialError::MeshCertificate(e.to_string()))?;
        let mut config = ServerConfig::clone(&hbone);
        config.alpn_protocols = if http {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            Vec::new()
        };
        let config = Arc::new(config);
        configs.insert(key, Arc::clone(&config));
        Ok(config)
    }

    /// The SPIFFE identity of the verified client certificate of a connection `server`
    /// terminated: the requests' principal for AuthorizationPolicy, as Envoy takes it from the
    /// peer certificate's URI SAN. ISTIO_MUTUAL requires one of the mesh's trust domain (the
    /// mesh's root may sign for others; its `subjectAltNames` were checked in the handshake);
    /// for MUTUAL and OPTIONAL_MUTUAL a certificate without one, or none, leaves the requests
    /// without a principal.
    pub fn client_identity(
        &self,
        server: &EdgeServer,
        connection: &rustls::CommonState,
    ) -> Result<Option<SpiffeId>, ClientRefused> {
        let istio_mutual = server
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == ServerTlsMode::IstioMutual);
        if istio_mutual {
            let trust_domain = self.trust_domain().unwrap_or_default();
            let identity = weft_identity::peer_identity_in(connection, trust_domain)?;
            return Ok(Some(identity));
        }
        Ok(weft_identity::peer_identity(connection).ok())
    }

    /// The TLS configuration `server` terminates with: its credential's, or for ISTIO_MUTUAL
    /// the gateway's mesh certificate's.
    pub async fn terminating_config(
        &self,
        server: &EdgeServer,
    ) -> Result<Arc<ServerConfig>, CredentialError> {
        if let Some(tls) = server
            .tls
            .as_ref()
            .filter(|t| t.mode == ServerTlsMode::IstioMutual)
        {
            let result = self
                .mesh_config(server.carries_http(), &tls.subject_alt_names)
                .await;
            if let Err(error) = &result {
                warn!(gateway = %server.gateway, server = %server.name, %error, "no mesh certificate: the server refuses TLS");
            }
            return result;
        }
        self.server_config(server)
    }

    /// The TLS configuration `server` terminates with, from its credentials as they are now.
    pub fn server_config(&self, server: &EdgeServer) -> Result<Arc<ServerConfig>, CredentialError> {
        let tls = server
            .tls
            .as_ref()
            .ok_or_else(|| CredentialError::Settings("no TLS settings".to_owned()))?;
        let located: Vec<Located> = match &tls.files {
            Some(files) if tls.credential_name.is_empty() => vec![files_located(files)],
            _ => std::iter::once((
                tls.credential_name.as_str(),
                tls.credential_resource.as_str(),
            ))
            .chain(
                tls.additional_credentials
                    .iter()
                    .map(|c| (c.name.as_str(), c.resource.as_str())),
            )
            .map(|(name, resource)| self.locate(name, resource))
            .collect::<Result<_, _>>()?,
        };
        let key = located
            .iter()
            .map(|l| l.key.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let stamp: Vec<Stamp> = located.iter().map(|l| l.stamp.clone()).collect();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
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
        let result = read_all(&located)
            .and_then(|credential| build(&self.provider, credential, tls, server.carries_http()))
            .map(Arc::new);
        if let Err(error) = &result {
            // Once per change of the credential: the handshakes it refuses meanwhile say nothing.
            warn!(gateway = %server.gateway, server = %server.name, credential = %key, %error, "credential unusable: the server refuses TLS");
        }
        entry.configs.insert(tls.clone(), result.clone());
        result
    }

    /// Where the credential `name` (served as `resource`) is: the controller's when it
    /// delivered it, else the credentials directory's in local mode.
    fn locate<'a>(&self, name: &'a str, resource: &'a str) -> Result<Located<'a>, CredentialError> {
        let delivered = (!resource.is_empty())
            .then(|| self.source.xds.get(resource))
            .flatten();
        Ok(match (delivered, &self.source.directory) {
            (Some(certificate), _) => {
                let ca_name = format!("{resource}{CA_SECRET_SUFFIX}");
                let ca = self.source.xds.get(&ca_name);
                let stamp = Stamp::Xds(
                    Some(certificate.version.clone()),
                    ca.as_ref().map(|c| c.version.clone()),
                );
                Located {
                    key: resource.to_owned(),
                    stamp,
                    read: Box::new(move || {
                        delivered_credential(
                            resource,
                            &certificate.material,
                            ca.as_deref().map(|c| (&ca_name, &c.material)),
                        )
                    }),
                }
            }
            (None, Some(dir)) => {
                // A name is one path component: `../x` never leaves the credentials directory.
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(CredentialError::Settings(format!(
                        "credentialName {name:?} is not a credential name"
                    )));
                }
                let paths = credential_paths(dir, name);
                let stamp = Stamp::Files(paths.iter().map(|p| file_stamp(p)).collect());
                Located {
                    key: name.to_owned(),
                    stamp,
                    read: Box::new(move || file_credential(&paths)),
                }
            }
            (None, None) => {
                let name = if resource.is_empty() { name } else { resource };
                Located {
                    key: name.to_owned(),
                    stamp: Stamp::Xds(None, None),
                    read: Box::new(move || Err(CredentialError::NotDelivered(name.to_owned()))),
                }
            }
        })
    }
}

/// A server's credentials read: the first one's certificate and CA, the others' certificates.
fn read_all(located: &[Located]) -> Result<Credential, CredentialError> {
    let mut credentials = located.iter().map(|l| (l.read)());
    let mut first = credentials
        .next()
        .ok_or_else(|| CredentialError::Settings("no credential".to_owned()))??;
    for other in credentials {
        first.certificates.extend(other?.certificates);
    }
    Ok(first)
}

/// The certificate files of Istio's file-mounted gateway, as one credential.
fn files_located(files: &TlsFiles) -> Located<'static> {
    let mut paths: Vec<PathBuf> = files
        .certificates
        .iter()
        .flat_map(|c| [&c.certificate_chain, &c.private_key])
        .map(PathBuf::from)
        .collect();
    paths.extend(files.ca_certificates.iter().map(PathBuf::from));
    paths.extend(files.ca_crl.iter().map(PathBuf::from));
    let stamp = Stamp::Files(paths.iter().map(|p| file_stamp(p)).collect());
    let key = format!(
        "files:{}",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let files = files.clone();
    Located {
        key,
        stamp,
        read: Box::new(move || {
            Ok(Credential {
                certificates: files
                    .certificates
                    .iter()
                    .map(|c| {
                        Ok((
                            read(Path::new(&c.certificate_chain))?,
                            read(Path::new(&c.private_key))?,
                        ))
                    })
                    .collect::<Result<_, CredentialError>>()?,
                ca: files
                    .ca_certificates
                    .as_deref()
                    .map(|p| read(Path::new(p)))
                    .transpose()?,
                crl: files
                    .ca_crl
                    .as_deref()
                    .map(|p| read(Path::new(p)))
                    .transpose()?,
            })
        }),
    }
}

/// A delivered certificate and, if delivered, the CA resource beside it.
fn delivered_credential(
    resource: &str,
    certificate: &Material,
    ca: Option<(&String, &Material)>,
) -> Result<Credential, CredentialError> {
    let Material::Certificate { chain, key } = certificate else {
        return Err(CredentialError::Invalid(
            resource.to_owned(),
            "holds a CA, not a certificate and key".to_owned(),
        ));
    };
    let (ca, crl) = match ca {
        None => (None, None),
        Some((name, Material::Ca { ca, crl })) => (
            Some(Pem {
                origin: name.clone(),
                bytes: ca.clone(),
            }),
            crl.as_ref().map(|crl| Pem {
                origin: name.clone(),
                bytes: crl.clone(),
            }),
        ),
        Some((name, Material::Certificate { .. })) => {
            return Err(CredentialError::Invalid(
                name.clone(),
                "holds a certificate, not a CA".to_owned(),
            ));
        }
    };
    Ok(Credential {
        certificates: vec![(
            Pem {
                origin: resource.to_owned(),
                bytes: chain.clone(),
            },
            Pem {
                origin: resource.to_owned(),
                bytes: key.clone(),
            },
        )],
        ca,
        crl,
    })
}

/// The files of the credential `name` under `dir`: its certificate, key, CA and revocation
/// list, then the CA and list of Istio's separate CA Secret (`<name>-cacert`).
pub(crate) fn credential_paths(dir: &Path, name: &str) -> [PathBuf; 6] {
    let own = dir.join(name);
    let ca_secret = dir.join(format!("{name}{CA_SECRET_SUFFIX}"));
    [
        own.join(CERTIFICATE_FILE),
        own.join(KEY_FILE),
        own.join(CA_FILE),
        own.join(CRL_FILE),
        ca_secret.join(CA_FILE),
        ca_secret.join(CRL_FILE),
    ]
}

/// A credential directory's files.
fn file_credential(paths: &[PathBuf; 6]) -> Result<Credential, CredentialError> {
    let [certificate, key, ca, crl, ca_secret, crl_secret] = paths;
    // A revocation list goes with the CA beside it.
    let (ca, crl) = if ca.exists() {
        (Some(read(ca)?), crl)
    } else if ca_secret.exists() {
        (Some(read(ca_secret)?), crl_secret)
    } else {
        (None, crl)
    };
    Ok(Credential {
        certificates: vec![(read(certificate)?, read(key)?)],
        crl: if ca.is_some() && crl.exists() {
            Some(read(crl)?)
        } else {
            None
        },
        ca,
    })
}

/// What tells that a file changed: its inode (a file replaced by a rename, as Kubernetes
/// updates a mounted Secret, is another), modification time and size; `None` when it cannot
/// be read.
pub(crate) type FileStamp = Option<(u64, SystemTime, u64)>;

/// The [`FileStamp`] of `path`, through symbolic links.
pub(crate) fn file_stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.ino(), metadata.modified().ok()?, metadata.len()))
}

fn read(path: &Path) -> Result<Pem, CredentialError> {
    let origin = path.display().to_string();
    std::fs::read(path)
        .map(|bytes| Pem {
            origin: origin.clone(),
            bytes,
        })
        .map_err(|e| CredentialError::Read(origin, e.to_string()))
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let certificates = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialError::Invalid(pem.origin.clone(), e.to_string()))?;
    if certificates.is_empty() {
        return Err(CredentialError::NoCertificate(pem.origin.clone()));
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

/// A certificate chain and its key, checked to match.
fn certified_key(
    provider: &CryptoProvider,
    certificate: &Pem,
    key: &Pem,
) -> Result<CertifiedKey, CredentialError> {
    let chain = certificates(certificate)?;
    let der = PrivateKeyDer::from_pem_slice(&key.bytes)
        .map_err(|e| CredentialError::Invalid(key.origin.clone(), e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| CredentialError::Invalid(key.origin.clone(), e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| CredentialError::KeyMismatch(e.to_string()))?;
    Ok(certified)
}

fn build(
    base: &Arc<CryptoProvider>,
    credential: Credential,
    tls: &ServerTls,
    http: bool,
) -> Result<ServerConfig, CredentialError> {
    let provider = Arc::new(provider_for(base, tls)?);
    let certified = credential
        .certificates
        .iter()
        .map(|(certificate, key)| certified_key(&provider, certificate, key).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(tls)?)
        .map_err(|e| CredentialError::Settings(e.to_string()))?;
    let builder = if tls.mode.verifies_with_credential_ca() {
        let ca = credential.ca.as_ref().ok_or(CredentialError::NoCa)?;
        let mut roots = RootCertStore::empty();
        for certificate in certificates(ca)? {
            roots
                .add(certificate)
                .map_err(|e| CredentialError::Invalid(ca.origin.clone(), e.to_string()))?;
        }
        let crls = match &credential.crl {
            None => Vec::new(),
            Some(crl) => CertificateRevocationListDer::pem_slice_iter(&crl.bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CredentialError::Invalid(crl.origin.clone(), e.to_string()))?,
        };
        // As Envoy's `crl`: a client certificate a list revokes is refused.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).with_crls(crls);
        // OPTIONAL_MUTUAL: a client without a certificate is let through; one presented must
        // still verify.
        let verifier = if tls.mode == ServerTlsMode::OptionalMutual {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier
            .build()
            .map_err(|e| CredentialError::Invalid(ca.origin.clone(), e.to_string()))?;
        let verifier: Arc<dyn ClientCertVerifier> = if tls.subject_alt_names.is_empty() {
            verifier
        } else {
            Arc::new(AlsoChecking {
                inner: verifier,
                check: AllowedNames(tls.subject_alt_names.clone()),
            })
        };
        let pins = Pins::parse(&tls.verify_certificate_spki, &tls.verify_certificate_hash)
            .map_err(CredentialError::Settings)?;
        match pins {
            None => builder.with_client_cert_verifier(verifier),
            Some(pins) => builder.with_client_cert_verifier(Arc::new(AlsoChecking {
                inner: verifier,
                check: pins,
            })),
        }
    } else {
        builder.with_no_client_auth()
    };
    let mut config = match <[_; 1]>::try_from(certified) {
        Ok([single]) => {
            builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(single)))
        }
        Err(several) => builder.with_cert_resolver(Arc::new(BySignatureScheme::new(several))),
    };
    if http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

#[cfg(test)]
mod mutual_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_fields_tests;
