//! The mesh certificate authority: a self-signed root (or one the operator supplies) that signs
//! workload CSRs for identities the caller has already authorized.
//!
//! The CA decides *what goes in a certificate*, never *who may ask*: the caller (the controller's
//! certificate service) authenticates the requester and passes the identity it is allowed to
//! hold. Whatever names the CSR asks for are ignored, except that a CSR naming a different SPIFFE
//! identity is refused outright, because it reveals a confused or malicious requester.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::SpiffeId;

/// File names inside the CA directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

const ROOT_ORGANIZATION: &str = "weft";
const ROOT_COMMON_NAME: &str = "weft mesh root CA";
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start this far in the past so that a peer whose clock runs slightly behind the CA's
/// does not reject a certificate that was issued a moment ago.
pub const LEAF_BACKDATE: Duration = Duration::from_secs(60);
const SERIAL_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "CA directory {dir} holds only one of {ROOT_CERT_FILE} and {ROOT_KEY_FILE}; refusing to overwrite it with a new root"
    )]
    PartialCaDirectory { dir: PathBuf },
    #[error("root certificate PEM holds no usable certificate: {reason}")]
    RootCertificatePem { reason: String },
    #[error("root certificate cannot be parsed: {reason}")]
    RootCertificate { reason: String },
    #[error("root certificate is not a CA (basicConstraints CA:true is missing)")]
    RootNotCa,
    #[error("root private key cannot be loaded: {source}")]
    RootKey { source: rcgen::Error },
    #[error("root private key does not match the public key of the root certificate")]
    RootKeyMismatch,
    #[error("cannot generate the root certificate: {source}")]
    GenerateRoot { source: rcgen::Error },
    #[error("CSR is not PEM with a CERTIFICATE REQUEST block: {reason}")]
    CsrPem { reason: String },
    #[error("CSR is malformed DER: {reason}")]
    CsrMalformed { reason: String },
    #[error("CSR signature does not verify against its own public key")]
    CsrSignature,
    #[error("CSR public key is not supported: {source}")]
    CsrPublicKey { source: rcgen::Error },
    #[error(
        "CSR asks for identity {requested:?} but the requester is only authorized for {authorized}"
    )]
    CsrIdentityMismatch {
        requested: String,
        authorized: SpiffeId,
    },
    #[error("cert-chain.pem: {reason}")]
    CertChain { reason: String },
    #[error("a serving certificate needs at least one name")]
    NoServingNames,
    #[error("serving certificate name {name:?} is neither a DNS name nor an IP address")]
    ServingName { name: String },
    #[error("cannot sign the serving certificate for {name}: {source}")]
    SignServing { name: String, source: rcgen::Error },
    #[error("requested certificate lifetime must be positive")]
    ZeroTtl,
    #[error("no randomness available for a serial number")]
    Randomness,
    #[error("cannot sign the certificate for {identity}: {source}")]
    Sign {
        identity: SpiffeId,
        source: rcgen::Error,
    },
}

/// The certificates the CA hands back: the leaf first, then the intermediates (when the CA signs
/// with an intermediate), then the root they chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateChain {
    pub leaf_pem: String,
    /// From the signing certificate up, excluding the root; empty when the root signs.
    pub intermediates_pem: Vec<String>,
    pub root_pem: String,
}

impl CertificateChain {
    /// The chain in the order Istio's `CreateCertificateResponse.cert_chain` carries it.
    pub fn to_pem_list(&self) -> Vec<String> {
        let mut list = Vec::with_capacity(self.intermediates_pem.len() + 2);
        list.push(self.leaf_pem.clone());
        list.extend(self.intermediates_pem.iter().cloned());
        list.push(self.root_pem.clone());
        list
    }
}

/// A TLS server certificate for a DNS name (the controller's own gRPC port), with its key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCertificate {
    /// Leaf first, then the intermediates; the root is left out (clients hold it).
    pub chain_pem: Vec<String>,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("chain_len", &self.chain_pem.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

pub struct CertificateAuthority {
    /// The trust anchor every peer holds.
    root_cert_pem: String,
    root_cert_der: CertificateDer<'static>,
    /// The signing certificate and the ones above it, excluding the root (empty when the root
    /// itself signs).
    intermediates_pem: Vec<String>,
    /// Nothing issued outlives the signing certificate.
    signing_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
    random: SystemRandom,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("signing_not_after", &self.signing_not_after)
            .field("intermediates", &self.intermediates_pem.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh in-memory root: ECDSA P-256, CA:true, valid for ten years.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::GenerateRoot { source })?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, ROOT_ORGANIZATION);
        name.push(DnType::CommonName, ROOT_COMMON_NAME);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - LEAF_BACKDATE).into();
        params.not_after = (now + ROOT_VALIDITY).into();
        params.serial_number = Some(random_serial(&SystemRandom::new())?);
        let certificate = params
            .self_signed(&key)
            .map_err(|source| CaError::GenerateRoot { source })?;
        Self::from_pem(&certificate.pem(), &key.serialize_pem())
    }

    /// An operator-supplied root: PEM certificate (CA:true) and its PEM (PKCS#8, SEC1 or PKCS#1)
    /// private key.
    pub fn from_pem(root_cert_pem: &str, root_key_pem: &str) -> Result<Self, CaError> {
        let root_cert_der =
            CertificateDer::from_pem_slice(root_cert_pem.as_bytes()).map_err(|error| {
                CaError::RootCertificatePem {
                    reason: error.to_string(),
                }
            })?;
        let (_, root) = X509Certificate::from_der(root_cert_der.as_ref()).map_err(|error| {
            CaError::RootCertificate {
                reason: error.to_string(),
            }
        })?;
        if !root.is_ca() {
            return Err(CaError::RootNotCa);
        }
        let key = KeyPair::from_pem(root_key_pem).map_err(|source| CaError::RootKey { source })?;
        if root.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::RootKeyMismatch);
        }
        let signing_not_after = unix_seconds_to_system_time(root.validity().not_after.timestamp());
        let issuer = Issuer::from_ca_cert_der(&root_cert_der, key).map_err(|error| {
            CaError::RootCertificate {
                reason: error.to_string(),
            }
        })?;
        Ok(CertificateAuthority {
            root_cert_pem: pem_of(&root_cert_der),
            root_cert_der,
            intermediates_pem: Vec::new(),
            signing_not_after,
            issuer,
            random: SystemRandom::new(),
        })
    }

    /// An operator-supplied intermediate, as Istio's `cacerts` Secret carries it: the signing
    /// certificate (`ca-cert.pem`) and its key (`ca-key.pem`), the chain from the signing
    /// certificate up to the root (`cert-chain.pem`; the signing certificate is added in front
    /// when missing, the root is dropped) and the root (`root-cert.pem`) peers trust. Each link of
    /// the chain must be signed by the next, the last by the root.
    pub fn from_intermediate_pem(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        cert_chain_pem: &str,
        root_cert_pem: &str,
    ) -> Result<Self, CaError> {
        let signing = Self::from_pem(ca_cert_pem, ca_key_pem)?;
        let root_der =
            CertificateDer::from_pem_slice(root_cert_pem.as_bytes()).map_err(|error| {
                CaError::RootCertificatePem {
                    reason: format!("root-cert.pem: {error}"),
                }
            })?;
        let (_, root) = X509Certificate::from_der(root_der.as_ref()).map_err(|error| {
            CaError::RootCertificate {
                reason: format!("root-cert.pem: {error}"),
            }
        })?;
        if !root.is_ca() {
            return Err(CaError::RootNotCa);
        }
        if root_der == signing.root_cert_der {
            // The operator plugged in the root itself.
            return Ok(signing);
        }
        let mut chain: Vec<CertificateDer<'static>> = Vec::new();
        for der in CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes()) {
            let der = der.map_err(|error| CaError::CertChain {
                reason: error.to_string(),
            })?;
            if der != root_der {
                chain.push(der);
            }
        }
        if chain.first() != Some(&signing.root_cert_der) {
            chain.insert(0, signing.root_cert_der.clone());
        }
        for (position, der) in chain.iter().enumerate() {
            let (_, certificate) =
                X509Certificate::from_der(der.as_ref()).map_err(|error| CaError::CertChain {
                    reason: format!("certificate {position}: {error}"),
                })?;
            let issuer_der = chain.get(position + 1).unwrap_or(&root_der);
            let (_, issuer) = X509Certificate::from_der(issuer_der.as_ref()).map_err(|error| {
                CaError::CertChain {
                    reason: format!("certificate {}: {error}", position + 1),
                }
            })?;
            certificate
                .verify_signature(Some(issuer.public_key()))
                .map_err(|_| CaError::CertChain {
                    reason: format!(
                        "certificate {position} ({}) is not signed by {}",
                        certificate.subject(),
                        issuer.subject()
                    ),
                })?;
        }
        Ok(CertificateAuthority {
            root_cert_pem: pem_of(&root_der),
            root_cert_der: root_der,
            intermediates_pem: chain.iter().map(pem_of).collect(),
            signing_not_after: signing.signing_not_after,
            issuer: signing.issuer,
            random: signing.random,
        })
    }

    /// Loads `root-cert.pem` and `root-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        if let Ok(metadata) = fs::metadata(&key_path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{:o}", metadata.permissions().mode() & 0o777),
                "root key file is readable by group or others"
            );
        }
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Loads the root from `dir`, or creates one there (key file mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let ca = Self::load(dir)?;
                tracing::info!(dir = %dir.display(), "loaded mesh root CA");
                Ok(ca)
            }
            (false, false) => {
                let ca = Self::generate()?;
                ca.persist(dir)?;
                tracing::info!(dir = %dir.display(), "created mesh root CA");
                Ok(ca)
            }
            _ => Err(CaError::PartialCaDirectory {
                dir: dir.to_owned(),
            }),
        }
    }

    fn persist(&self, dir: &Path) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(|source| CaError::Write {
            path: dir.to_owned(),
            source,
        })?;
        // Key first: a crash in between leaves a key without a cert, which load_or_create
        // reports instead of silently minting a second root.
        write_new_file(
            &dir.join(ROOT_KEY_FILE),
            &self.issuer.key().serialize_pem(),
            0o600,
        )?;
        write_new_file(&dir.join(ROOT_CERT_FILE), &self.root_cert_pem, 0o644)
    }

    /// The trust anchor (with an intermediate CA, the root above it, not the signing
    /// certificate).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// The signing key, PEM (PKCS#8): what a Kubernetes Secret or the CA directory persists.
    pub fn signing_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A TLS server certificate for `names` (the first is also the common name): each a DNS
    /// name, or an IP address literal that becomes an IP SAN (clients that dial by address
    /// verify it with no name override). A fresh ECDSA P-256 key, valid for `ttl` (never past
    /// the signing certificate).
    pub fn issue_serving_certificate(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<ServingCertificate, CaError> {
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let Some(first) = names.first() else {
            return Err(CaError::NoServingNames);
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::GenerateRoot { source })?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, ROOT_ORGANIZATION);
        name.push(DnType::CommonName, first.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = names
            .iter()
            .map(|name| {
                if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                    return Ok(SanType::IpAddress(ip));
                }
                let invalid = || CaError::ServingName { name: name.clone() };
                rustls_pki_types::DnsName::try_from(name.as_str()).map_err(|_| invalid())?;
                Ia5String::try_from(name.as_str())
                    .map(SanType::DnsName)
                    .map_err(|_| invalid())
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.signing_not_after);
        params.not_before = (now - LEAF_BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial(&self.random)?);
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::SignServing {
                name: first.clone(),
                source,
            })?;
        let mut chain_pem = vec![leaf.pem()];
        chain_pem.extend(self.intermediates_pem.iter().cloned());
        Ok(ServingCertificate {
            chain_pem,
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    pub fn root_cert_der(&self) -> &CertificateDer<'static> {
        &self.root_cert_der
    }

    /// Issues a workload certificate for `identity`, which the caller has authorized, over the
    /// public key of `csr_pem`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<CertificateChain, CaError> {
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let csr_der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|error| {
                CaError::CsrPem {
                    reason: error.to_string(),
                }
            })?;
        let (rest, csr) =
            X509CertificationRequest::from_der(csr_der.as_ref()).map_err(|error| {
                CaError::CsrMalformed {
                    reason: error.to_string(),
                }
            })?;
        if !rest.is_empty() {
            return Err(CaError::CsrMalformed {
                reason: format!("{} trailing bytes after the request", rest.len()),
            });
        }
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
        check_requested_identity(&csr, identity)?;
        let public_key =
            SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|source| CaError::CsrPublicKey { source })?;

        let uri = Ia5String::try_from(identity.to_string()).map_err(|source| CaError::Sign {
            identity: identity.clone(),
            source,
        })?;
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.signing_not_after);
        let serial = random_serial(&self.random)?;
        let serial_hex = hex(&serial.to_bytes());
        let mut params = leaf_params(vec![SanType::URI(uri)], now - LEAF_BACKDATE, not_after);
        params.serial_number = Some(serial);
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| CaError::Sign {
                identity: identity.clone(),
                source,
            })?;
        tracing::info!(
            identity = %identity,
            serial = %serial_hex,
            ttl_secs = ttl.as_secs(),
            "issued workload certificate"
        );
        Ok(CertificateChain {
            leaf_pem: leaf.pem(),
            intermediates_pem: self.intermediates_pem.clone(),
            root_pem: self.root_cert_pem.clone(),
        })
    }
}

/// A workload certificate's parameters: `sans`, valid from `not_before` to `not_after`.
fn leaf_params(
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    // An empty subject makes rcgen mark the SAN extension critical, as RFC 5280 requires and
    // as Istio's workload certificates do.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

#[cfg(any(test, feature = "testing"))]
impl CertificateAuthority {
    /// Signs arbitrary parameters, for tests that need certificates this CA would never issue.
    pub fn sign_params_unchecked(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> CertificateDer<'static> {
        params.signed_by(key, &self.issuer).unwrap().der().clone()
    }

    /// Signs a workload certificate as this CA would, but for any `sans` and validity, over a
    /// fresh key (returned with it): other trust domains, odd SPIFFE forms, expired ones.
    pub fn sign_leaf_unchecked(
        &self,
        sans: Vec<SanType>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let leaf = self.sign_params_unchecked(&leaf_params(sans, not_before, not_after), &key);
        (leaf, key)
    }
}

/// Refuses a CSR whose URI SANs name anything other than the authorized identity. DNS or IP SANs
/// are ignored (they never reach the certificate).
fn check_requested_identity(
    csr: &X509CertificationRequest<'_>,
    authorized: &SpiffeId,
) -> Result<(), CaError> {
    let authorized_uri = authorized.to_string();
    for extension in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else {
            continue;
        };
        for name in &san.general_names {
            if let GeneralName::URI(requested) = name
                && *requested != authorized_uri
            {
                return Err(CaError::CsrIdentityMismatch {
                    requested: (*requested).to_owned(),
                    authorized: authorized.clone(),
                });
            }
        }
    }
    Ok(())
}

fn random_serial(random: &SystemRandom) -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    random.fill(&mut bytes).map_err(|_| CaError::Randomness)?;
    // A positive INTEGER without a leading zero byte, never zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unix_seconds_to_system_time(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

pub(crate) fn pem_of(der: &CertificateDer<'_>) -> String {
    let body = base64_encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_new_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let write_error = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    // The mode given at creation is filtered by the umask; make the key's mode exact.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(contents.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

#[cfg(test)]
mod tests;
