//! TLS origination to a cluster's endpoints (its host's DestinationRule says `tls.mode: SIMPLE`
//! or `MUTUAL`), as Envoy originates it: the client's plain HTTP goes out encrypted, to an
//! endpoint outside the mesh over TCP and to a mesh endpoint inside its HBONE tunnel (Istio's
//! waypoint wraps the TLS socket in the internal upstream the tunnel carries; the application
//! terminates it), with the configured SNI, the server verified against the configured CAs (else
//! the Mozilla root set) and names (`subjectAltNames`, else the SNI), and for MUTUAL the
//! configured client certificate, or those of the credential a `credentialName` names. Built
//! with the configuration and again when what it was built from changes, so that the next
//! connection uses a rotated certificate, CA or revocation list without a new configuration:
//! files (the settings' own, or a credentials directory's in local mode) are looked at before
//! each connection, as Envoy's file-watched secrets are, and a credential the controller
//! delivers over xDS (Kubernetes mode) is read when a connection is made.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_proto::waypoint as proto;

use verify::AnyOfNames;
pub(crate) use verify::Unverified;

use crate::gateway::credentials::xds::{Delivered, Material, XdsCredentials};
use crate::gateway::credentials::{
    CA_FILE, CA_SECRET_SUFFIX, CERTIFICATE_FILE, CRL_FILE, FileStamp, KEY_FILE, credential_paths,
    file_stamp,
};

/// Where the credentials a DestinationRule's `credentialName` names are found.
#[derive(Clone, Default)]
pub struct OriginationCredentials {
    /// Local mode: the credentials directory (`CREDENTIALS_DIR`).
    pub directory: Option<Arc<Path>>,
    /// Kubernetes mode: what the controller delivered (SDS `Secret` resources), used for
    /// settings that name a `credential_resource`.
    pub delivered: XdsCredentials,
}

impl OriginationCredentials {
    /// Credentials read from `directory` only.
    pub fn directory(directory: Option<&Path>) -> Self {
        OriginationCredentials {
            directory: directory.map(Arc::from),
            delivered: XdsCredentials::default(),
        }
    }
}

/// How the waypoint speaks TLS to a cluster's endpoints.
#[derive(Clone)]
pub struct OriginatedTls {
    /// The SNI the settings give (their `sni`, else the cluster's host); `None` for a wildcard
    /// host without an `sni`, whose connections name their endpoint's host.
    server_name: Option<ServerName<'static>>,
    /// Whether the settings name the SNI themselves; if not, a connection to an endpoint with
    /// a host of its own (`DYNAMIC_DNS`) presents and verifies that host (Envoy's `auto_sni`
    /// and `auto_san_validation`, which istiod sets when `tls.sni` is empty).
    sni_given: bool,
    connector: Connector,
    /// Unique to these settings as built: pooled connections made with them are kept apart
    /// from those of other settings to the same address (two hosts behind one CDN address,
    /// a CA that changed).
    id: u64,
}

#[derive(Clone)]
enum Connector {
    /// Built with the settings: the connector, or why the cluster's `credentialName` cannot
    /// be used (its connections then fail).
    Built(Result<TlsConnector, Arc<str>>),
    /// From a credential the controller delivers, built when a connection needs it.
    Delivered(Arc<DeliveredConnector>),
    /// From files, built again when one of them changes.
    Files(Arc<FilesConnector>),
}

/// A connector from files as they are now: before each connection the files' modification
/// times and sizes are looked at, and the connector is built again when one changed. A change
/// that cannot be used (a file missing, a PEM that does not parse) fails the cluster's
/// connections until the files are fixed: never the old CA or certificate, which a rotation
/// may have replaced for a reason.
struct FilesConnector {
    source: FileSource,
    verification: Verification,
    built: Mutex<FilesBuilt>,
}

/// The stamps of the files a connector was built from, and it.
struct FilesBuilt {
    stamp: Vec<FileStamp>,
    connector: Result<TlsConnector, Arc<str>>,
}

/// Where a [`FilesConnector`]'s files are.
enum FileSource {
    /// The settings' `caCertificates`, `caCrl`, `clientCertificate` and `privateKey`.
    Settings(TlsFiles),
    /// A `credentialName` under the credentials directory (local mode).
    Credential {
        directory: Arc<Path>,
        name: String,
        mutual: bool,
    },
}

impl FileSource {
    fn stamp(&self) -> Vec<FileStamp> {
        match self {
            FileSource::Settings(files) => files.paths().map(file_stamp).collect(),
            FileSource::Credential {
                directory, name, ..
            } => credential_paths(directory, name)
                .iter()
                .map(|p| file_stamp(p))
                .collect(),
        }
    }

    fn build(&self, verification: &Verification) -> Result<TlsConnector, String> {
        match self {
            FileSource::Settings(files) => files.read().and_then(|m| connector(&m, verification)),
            FileSource::Credential {
                directory,
                name,
                mutual,
            } => credential_files(name, *mutual, directory, verification.verifies())
                .and_then(|files| files.read())
                .and_then(|m| connector(&m, verification))
                .map_err(|e| format!("credential {name}: {e}")),
        }
    }
}

impl FilesConnector {
    /// Built from the files as they are now; `Err` is why they cannot be used.
    fn new(source: FileSource, verification: Verification) -> Self {
        // Stamped before reading: a file changing meanwhile is read again at the next look.
        let stamp = source.stamp();
        let connector = source.build(&verification).map_err(Arc::from);
        FilesConnector {
            source,
            verification,
            built: Mutex::new(FilesBuilt { stamp, connector }),
        }
    }

    fn current(&self) -> Result<TlsConnector, Arc<str>> {
        let stamp = self.source.stamp();
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if built.stamp != stamp {
            let connector = self.source.build(&self.verification).map_err(Arc::from);
            match &connector {
                Ok(_) => {
                    tracing::info!(files = %self.source, "tls origination files changed: new connections use them")
                }
                Err(reason) => {
                    tracing::warn!(files = %self.source, %reason, "tls origination files changed and cannot be used: the cluster's connections fail")
                }
            }
            *built = FilesBuilt { stamp, connector };
        }
        built.connector.clone()
    }
}

impl std::fmt::Display for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileSource::Settings(files) => {
                let paths: Vec<String> = files.paths().map(|p| p.display().to_string()).collect();
                f.write_str(&paths.join(","))
            }
            FileSource::Credential {
                directory, name, ..
            } => write!(f, "{}", directory.join(name).display()),
        }
    }
}

/// A connector from a delivered credential: the server's CA (`<resource>-cacert`) and, for
/// MUTUAL, the client pair (`<resource>`), as they are now. Built again when either changes,
/// so that the next connection uses a rotated credential; until both are delivered (or when
/// one is withdrawn) connections fail, as Envoy's do while a cluster's SDS secret is missing.
struct DeliveredConnector {
    resource: String,
    /// `<resource>-cacert`: the server's CA.
    ca_resource: String,
    mutual: bool,
    verification: Verification,
    credentials: XdsCredentials,
    /// The credentials the last connector was built from (CA, client pair), and it.
    built: Mutex<Option<BuiltFrom>>,
}

struct BuiltFrom {
    /// `None` when the server is not verified: no CA is needed.
    ca: Option<Arc<Delivered>>,
    client: Option<Arc<Delivered>>,
    connector: Result<TlsConnector, Arc<str>>,
}

impl DeliveredConnector {
    fn current(&self) -> Result<TlsConnector, Arc<str>> {
        let missing = |name: &str| -> Arc<str> {
            Arc::from(format!(
                "credential {name} not delivered by the controller (missing Secret?)"
            ))
        };
        let ca = if self.verification.verifies() {
            Some(
                self.credentials
                    .get(&self.ca_resource)
                    .ok_or_else(|| missing(&self.ca_resource))?,
            )
        } else {
            None
        };
        let client = if self.mutual {
            Some(
                self.credentials
                    .get(&self.resource)
                    .ok_or_else(|| missing(&self.resource))?,
            )
        } else {
            None
        };
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let same = |a: &Option<Arc<Delivered>>, b: &Option<Arc<Delivered>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if let Some(last) = &*built
            && same(&last.ca, &ca)
            && same(&last.client, &client)
        {
            return last.connector.clone();
        }
        let connector = self
            .material(ca.as_deref(), client.as_deref())
            .and_then(|material| connector(&material, &self.verification))
            .map_err(|e| Arc::from(format!("credential {}: {e}", self.resource)));
        if let Err(reason) = &connector {
            tracing::warn!(credential = %self.resource, %reason, "tls origination credential unusable: the cluster's connections fail");
        }
        *built = Some(BuiltFrom {
            ca,
            client,
            connector: connector.clone(),
        });
        connector
    }

    fn material(
        &self,
        ca: Option<&Delivered>,
        client: Option<&Delivered>,
    ) -> Result<TlsMaterial, String> {
        let ca = match ca.map(|c| &c.material) {
            None => None,
            Some(Material::Ca { ca, crl }) => Some((ca, crl)),
            Some(Material::Certificate { .. }) => {
                return Err(format!("{}{CA_SECRET_SUFFIX} holds no CA", self.resource));
            }
        };
        let client = match client.map(|c| &c.material) {
            None => None,
            Some(Material::Certificate { chain, key }) => Some((
                pem_certificates(chain, "certificate_chain")?,
                PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?,
            )),
            Some(Material::Ca { .. }) => return Err("holds no client certificate".to_owned()),
        };
        Ok(TlsMaterial {
            ca: ca
                .map(|(ca, _)| pem_certificates(ca, "trusted_ca"))
                .transpose()?,
            crls: ca
                .and_then(|(_, crl)| crl.as_deref())
                .map(|crl| pem_crls(crl, "crl"))
                .transpose()?
                .unwrap_or_default(),
            client,
        })
    }
}

/// The next [`OriginatedTls::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for OriginatedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginatedTls")
            .field("server_name", &self.server_name)
            .field("unusable", &self.unusable())
            .finish_non_exhaustive()
    }
}

/// The PEM files a client configuration is built from.
struct TlsFiles {
    /// The CAs that verify the server; `None`: the Mozilla root set.
    ca: Option<PathBuf>,
    /// Revocation lists checked with the CAs.
    crl: Option<PathBuf>,
    /// MUTUAL: the client certificate chain and its key.
    client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Every file named.
    fn paths(&self) -> impl Iterator<Item = &Path> {
        let client = self.client.as_ref();
        self.ca
            .as_deref()
            .into_iter()
            .chain(self.crl.as_deref())
            .chain(client.map(|(certificate, _)| certificate.as_path()))
            .chain(client.map(|(_, key)| key.as_path()))
    }

    fn read(&self) -> Result<TlsMaterial, String> {
        let client = match &self.client {
            None => None,
            Some((certificate, key)) => Some((
                certificates(certificate).map_err(|e| format!("clientCertificate {e}"))?,
                PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("privateKey {}: {e}", key.display()))?,
            )),
        };
        let crls = match &self.crl {
            None => Vec::new(),
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| format!("caCrl {}: {e}", path.display()))?;
                pem_crls(&pem, &format!("caCrl {}", path.display()))?
            }
        };
        Ok(TlsMaterial {
            ca: self
                .ca
                .as_ref()
                .map(|ca| certificates(ca).map_err(|e| format!("caCertificates {e}")))
                .transpose()?,
            crls,
            client,
        })
    }
}

/// What a client configuration is built from.
struct TlsMaterial {
    /// The CAs that verify the server; `None`: the Mozilla root set.
    ca: Option<Vec<CertificateDer<'static>>>,
    /// Revocation lists: a server certificate they revoke is refused. As Envoy's `crl`, a CA
    /// of the server's chain without a list of its own then fails the verification too.
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// MUTUAL: the client certificate chain and its key.
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl OriginatedTls {
    /// The TLS of `settings` for the cluster of `host`; an error names the file or value. A
    /// `credentialName` is read from `credentials`: the credential the controller delivers as
    /// the settings' `credential_resource` when they name one (read at each connection), else
    /// the credentials directory (`<dir>/<name>/ca.crt`, or Istio's separate CA Secret
    /// `<dir>/<name>-cacert/ca.crt`; for MUTUAL `tls.crt` and `tls.key`), in place of the file
    /// settings, as Istio takes it; a credential that cannot be used is no error here: the
    /// settings are built [`unusable`](Self::unusable) and their connections fail. Files are
    /// read now and again when they change; the settings' own files must be usable now.
    pub fn new(
        settings: &proto::UpstreamTls,
        host: &str,
        credentials: &OriginationCredentials,
    ) -> Result<Self, String> {
        let sni_given = !settings.sni.is_empty();
        let sni = if sni_given {
            Some(server_name(&settings.sni)?)
        } else if host.starts_with("*.") {
            None
        } else {
            Some(server_name(host)?)
        };
        let verification = if settings.insecure_skip_verify {
            Verification::Skip
        } else {
            Verification::Names(settings.subject_alt_names.clone())
        };
        // Not verifying, Istio gives Envoy no validation context: no CA nor revocation list
        // is read.
        let verifies = verification.verifies();
        let connector = if settings.credential_name.is_empty() {
            let files = TlsFiles {
                ca: non_empty(&settings.ca_certificates).filter(|_| verifies),
                crl: non_empty(&settings.ca_crl).filter(|_| verifies),
                client: non_empty(&settings.client_certificate)
                    .map(|c| (c, PathBuf::from(&settings.private_key))),
            };
            let mut files = FilesConnector::new(FileSource::Settings(files), verification);
            if let Err(reason) = &files.built.get_mut().expect("not shared yet").connector {
                return Err(reason.to_string());
            }
            Connector::Files(Arc::new(files))
        } else if !settings.credential_resource.is_empty() {
            Connector::Delivered(Arc::new(DeliveredConnector {
                resource: settings.credential_resource.clone(),
                ca_resource: format!("{}{CA_SECRET_SUFFIX}", settings.credential_resource),
                mutual: settings.mutual,
                verification,
                credentials: credentials.delivered.clone(),
                built: Mutex::new(None),
            }))
        } else {
            let name = &settings.credential_name;
            match credentials_directory(name, credentials.directory.as_ref()) {
                Ok(directory) => Connector::Files(Arc::new(FilesConnector::new(
                    FileSource::Credential {
                        directory: directory.clone(),
                        name: name.clone(),
                        mutual: settings.mutual,
                    },
                    verification,
                ))),
                Err(e) => Connector::Built(Err(Arc::from(format!("credential {name}: {e}")))),
            }
        };
        // Server names are checked now, whatever the credential.
        for name in &settings.subject_alt_names {
            server_name(name)?;
        }
        Ok(OriginatedTls {
            server_name: sni,
            sni_given,
            connector,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Settings no connection can be made with, for `reason`: the cluster fails closed.
    pub fn refused(reason: &str) -> Self {
        OriginatedTls {
            server_name: None,
            sni_given: false,
            connector: Connector::Built(Err(Arc::from(reason))),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// What tells these settings apart from every other built in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Why no connection can be made with these settings now (their credential cannot be
    /// used, or has not been delivered).
    pub fn unusable(&self) -> Option<Arc<str>> {
        self.connector().err()
    }

    /// Whether the credential comes from the controller, read at each connection (then a
    /// credential not delivered yet is no problem of the configuration).
    pub fn is_delivered(&self) -> bool {
        matches!(self.connector, Connector::Delivered(_))
    }

    fn connector(&self) -> Result<TlsConnector, Arc<str>> {
        match &self.connector {
            Connector::Built(built) => built.clone(),
            Connector::Delivered(delivered) => delivered.current(),
            Connector::Files(files) => files.current(),
        }
    }

    /// Whether connections to an endpoint with a host of its own present that host, so that
    /// pooled connections must be told apart by it.
    pub fn names_endpoint_hosts(&self) -> bool {
        !self.sni_given
    }

    /// The handshake over `io` (a TCP connection, or an HBONE tunnel to a mesh endpoint) to an
    /// endpoint whose host, if it has one of its own (a `DYNAMIC_DNS` request's host), is
    /// `endpoint_host`: the SNI is the settings' `sni`, else that host, else the cluster's;
    /// without `subjectAltNames` the server's certificate must be valid for the SNI sent.
    pub async fn connect<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        endpoint_host: Option<&str>,
    ) -> io::Result<TlsStream<IO>> {
        let connector = self
            .connector()
            .map_err(|reason| io::Error::other(reason.to_string()))?;
        let name = match endpoint_host.filter(|_| !self.sni_given) {
            Some(host) => server_name(host).map_err(io::Error::other)?,
            None => self
                .server_name
                .clone()
                .ok_or_else(|| io::Error::other("no server name for a wildcard host"))?,
        };
        connector.connect(name, io).await
    }
}

fn non_empty(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// The directory the credential `name` is read from: `credentials`, if the name is one path
/// component (`../x` never leaves the directory).
fn credentials_directory<'a>(
    name: &str,
    credentials: Option<&'a Arc<Path>>,
) -> Result<&'a Arc<Path>, String> {
    let one_component = Path::new(name).components().count() == 1
        && !name.contains('/')
        && name != "."
        && name != "..";
    if !one_component {
        return Err("not a credential name (one path component)".to_owned());
    }
    credentials.ok_or_else(|| {
        format!(
            "this proxy has no credentials (no {} directory): the Secret cannot be read",
            crate::config::CREDENTIALS_DIR
        )
    })
}

/// The files of the credential `name` under `dir`; they must exist (the server cannot be
/// verified without its CA). `verifies`: false when the server is not verified, so no CA is
/// read.
fn credential_files(
    name: &str,
    mutual: bool,
    dir: &Path,
    verifies: bool,
) -> Result<TlsFiles, String> {
    let own = dir.join(name);
    let client = mutual.then(|| (own.join(CERTIFICATE_FILE), own.join(KEY_FILE)));
    if !verifies {
        return Ok(TlsFiles {
            ca: None,
            crl: None,
            client,
        });
    }
    // The CA's directory: the credential's own, else its `-cacert` companion; a revocation
    // list beside it goes with it, as Istio pairs `ca.crt` and `ca.crl`.
    let ca_dir = [own.clone(), dir.join(format!("{name}{CA_SECRET_SUFFIX}"))]
        .into_iter()
        .find(|d| d.join(CA_FILE).is_file())
        .ok_or_else(|| {
            format!(
                "no {CA_FILE} in {} nor in {name}{CA_SECRET_SUFFIX} (missing Secret?)",
                own.display()
            )
        })?;
    let crl = Some(ca_dir.join(CRL_FILE)).filter(|p| p.is_file());
    let ca = ca_dir.join(CA_FILE);
    Ok(TlsFiles {
        ca: Some(ca),
        crl,
        client,
    })
}

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
enum Verification {
    /// Against the CAs, for one of these names (none: the SNI).
    Names(Vec<String>),
    /// Not at all: DestinationRule `insecureSkipVerify`.
    Skip,
}

impl Verification {
    fn verifies(&self) -> bool {
        matches!(self, Verification::Names(_))
    }
}

/// A client configuration verifying the server against `material.ca` (else the Mozilla
/// roots) for one of the names `verification` gives (else the SNI), or not at all, presenting
/// `material.client` if any.
fn connector(material: &TlsMaterial, verification: &Verification) -> Result<TlsConnector, String> {
    let provider = weft_identity::crypto_provider();
    let subject_alt_names = match verification {
        Verification::Names(names) => names,
        Verification::Skip => {
            let verifier = Arc::new(Unverified(provider.clone()));
            return client_config(provider, verifier, material);
        }
    };
    let mut roots = RootCertStore::empty();
    match &material.ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(ca) => {
            for certificate in ca {
                roots
                    .add(certificate.clone())
                    .map_err(|e| format!("caCertificates: {e}"))?;
            }
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(material.crls.iter().cloned())
        .build()
        .map_err(|e| format!("caCertificates: {e}"))?;
    let names = subject_alt_names
        .iter()
        .map(|n| server_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    client_config(provider, Arc::new(AnyOfNames { webpki, names }), material)
}

/// A client configuration checking the server with `verifier`, presenting `material.client`
/// if any.
fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    material: &TlsMaterial,
) -> Result<TlsConnector, String> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &material.client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("clientCertificate: {e}"))?,
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("server name {name:?}: {e}"))
}

/// The PEM certificates of `pem`, at least one; `field` names it in an error.
fn pem_certificates(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{field}: no certificate"));
    }
    Ok(certificates)
}

/// The PEM revocation lists of `pem`, at least one; `field` names it in an error.
fn pem_crls(pem: &[u8], field: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{field}: {e}"))?;
    if crls.is_empty() {
        return Err(format!("{field}: no PEM X509 CRL"));
    }
    Ok(crls)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certificates)
}

mod verify;

#[cfg(test)]
mod tests;
