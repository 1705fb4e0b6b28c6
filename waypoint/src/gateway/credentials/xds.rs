//! Credentials the controller serves over xDS (Kubernetes mode): Envoy's SDS `Secret`
//! resources, as istiod serves gateways theirs, kept by name. The controller sends a gateway
//! only the credentials of its own Gateways' servers; what arrives is held here until it changes
//! or is withdrawn, and read by the next handshake.
//!
//! A resource the proxy cannot take (no certificate nor CA, or anything but inline bytes: the
//! proxy never reads a path or a variable a control plane names) NACKs the response and changes
//! nothing. Its PEM is checked where it is used, per server, as a file's would be.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prost::Message;
use tracing::{info, warn};
use weft_proto::envoy::config::core::v3::{DataSource, data_source::Specifier};
use weft_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use weft_xds::{Handler, Update};

/// What one credential holds.
#[derive(Clone, PartialEq, Eq)]
pub enum Material {
    /// A certificate chain (PEM, leaf first) and its private key (PEM).
    Certificate { chain: Vec<u8>, key: Vec<u8> },
    /// CA certificates (PEM) that verify the peer (a MUTUAL server's clients, the server TLS
    /// is originated to), and the revocation lists (PEM) that go with them, if any.
    Ca { ca: Vec<u8>, crl: Option<Vec<u8>> },
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Material::Certificate { .. } => "Certificate",
            Material::Ca { .. } => "Ca",
        })
    }
}

/// One credential as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The controller's version of the resource: a change rebuilds what uses it.
    pub version: String,
    pub material: Material,
}

fn inline(source: Option<&DataSource>, field: &str) -> Result<Vec<u8>, String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(bytes)) => Ok(bytes.clone()),
        Some(Specifier::InlineString(text)) => Ok(text.as_bytes().to_vec()),
        Some(_) => Err(format!("{field}: only inline credentials are taken")),
        None => Err(format!("{field}: missing")),
    }
}

impl TryFrom<&Secret> for Material {
    type Error = String;

    fn try_from(secret: &Secret) -> Result<Self, String> {
        match &secret.r#type {
            Some(secret::Type::TlsCertificate(tls)) => Ok(Material::Certificate {
                chain: inline(tls.certificate_chain.as_ref(), "certificate_chain")?,
                key: inline(tls.private_key.as_ref(), "private_key")?,
            }),
            Some(secret::Type::ValidationContext(context)) => Ok(Material::Ca {
                ca: inline(context.trusted_ca.as_ref(), "trusted_ca")?,
                crl: context
                    .crl
                    .as_ref()
                    .map(|crl| inline(Some(crl), "crl"))
                    .transpose()?,
            }),
            None => Err("neither a certificate nor a validation context".to_owned()),
        }
    }
}

/// The credentials delivered so far, by resource name. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct XdsCredentials {
    by_name: Arc<RwLock<BTreeMap<String, Arc<Delivered>>>>,
}

impl std::fmt::Debug for XdsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl XdsCredentials {
    /// The credential named `resource`, if delivered.
    pub fn get(&self, resource: &str) -> Option<Arc<Delivered>> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        map.get(resource).cloned()
    }

    /// The names delivered, with their versions (never their contents).
    pub fn names(&self) -> Vec<(String, String)> {
        let map = self.by_name.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(name, d)| (name.clone(), d.version.clone()))
            .collect()
    }

    /// The handler of the SDS `Secret` type ([`weft_proto::SECRET_TYPE_URL`]) feeding this.
    pub fn handler(&self) -> SecretHandler {
        SecretHandler {
            credentials: self.clone(),
        }
    }
}

/// Delta ADS handler of gateway credentials.
#[derive(Debug)]
pub struct SecretHandler {
    credentials: XdsCredentials,
}

impl Handler for SecretHandler {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        // Everything is checked before anything changes: a NACK keeps the last good state.
        let mut added = Vec::with_capacity(update.added.len());
        for resource in &update.added {
            let any = resource
                .resource
                .as_ref()
                .ok_or_else(|| format!("credential {} has no body", resource.name))?;
            let secret = Secret::decode(any.value.as_slice())
                .map_err(|e| format!("credential {}: {e}", resource.name))?;
            let material = Material::try_from(&secret)
                .map_err(|e| format!("credential {}: {e}", resource.name))?;
            added.push((
                resource.name.clone(),
                Arc::new(Delivered {
                    version: resource.version.clone(),
                    material,
                }),
            ));
        }
        let mut map = self
            .credentials
            .by_name
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for name in &update.removed {
            if map.remove(name).is_some() {
                warn!(credential = %name, "credential withdrawn by the controller: servers using it refuse TLS");
            }
        }
        for (name, delivered) in added {
            info!(credential = %name, version = %delivered.version, kind = ?delivered.material, "credential received");
            map.insert(name, delivered);
        }
        Ok(())
    }
}
