//! The CA in Kubernetes: its root kept in Secrets under Istio's names and keys, the root
//! published for proxies in a ConfigMap, and callers authenticated by their service-account
//! token through a TokenReview.
//!
//! - `cacerts` (operator-supplied, Istio's plug-in CA): `ca-cert.pem`, `ca-key.pem`,
//!   `root-cert.pem`, `cert-chain.pem`. When present it wins and is never written.
//! - `istio-ca-secret` (self-signed, istiod's): `ca-cert.pem`, `ca-key.pem`. Created on first
//!   start; a controller that loses the race to create it loads the winner's.
//! - `istio-ca-root-cert` ConfigMap, key `root-cert.pem`: the trust anchor, written (and
//!   rewritten when it differs) in the controller's namespace for the node agents to mount, and
//!   in every other namespace for the proxies there ([`namespaces`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use tonic::{Status, metadata::MetadataMap};
use weft_identity::{CaError, CertificateAuthority, SpiffeId};

pub mod namespaces;

use super::{Caller, CallerAuthenticator, bearer_token, check_claimed_node};
use crate::index::LiveIndex;

/// Istio's plug-in CA Secret.
pub const PLUGGED_CA_SECRET: &str = "cacerts";
/// Istio's self-signed CA Secret.
pub const SELF_SIGNED_CA_SECRET: &str = "istio-ca-secret";
/// Istio's ConfigMap of the mesh root.
pub const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
pub const CA_CERT_KEY: &str = "ca-cert.pem";
pub const CA_KEY_KEY: &str = "ca-key.pem";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
pub const CERT_CHAIN_KEY: &str = "cert-chain.pem";
/// The Secret type istiod gives its self-signed root.
const SELF_SIGNED_CA_TYPE: &str = "istio.io/ca-root";

/// Extras a bound service-account token carries (Kubernetes 1.30+ adds the node's).
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Why the CA could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum KubeCaError {
    #[error("reading Secret {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("creating Secret {namespace}/{name}: {source}")]
    Create {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} has no key {key}")]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name} key {key} is not UTF-8 PEM")]
    NotText {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name}: {source}")]
    Invalid {
        namespace: String,
        name: String,
        source: Box<CaError>,
    },
    #[error("generating the root: {0}")]
    Generate(#[source] CaError),
    #[error("writing ConfigMap {namespace}/{ROOT_CONFIG_MAP}: {source}")]
    PublishRoot {
        namespace: String,
        source: Box<kube::Error>,
    },
}

/// Where the CA in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    /// `cacerts`, supplied by the operator.
    Plugged,
    /// `istio-ca-secret`, created by an earlier start.
    Loaded,
    /// `istio-ca-secret`, created now.
    Created,
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

fn text<'a>(
    secret: &'a Secret,
    namespace: &str,
    key: &'static str,
) -> Result<Option<&'a str>, KubeCaError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    match secret.data.as_ref().and_then(|data| data.get(key)) {
        None => Ok(None),
        Some(ByteString(bytes)) => {
            std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|_| KubeCaError::NotText {
                    namespace: namespace.to_owned(),
                    name,
                    key,
                })
        }
    }
}

fn required<'a>(
    secret: &'a Secret,
    namespace: &str,
    key: &'static str,
) -> Result<&'a str, KubeCaError> {
    text(secret, namespace, key)?.ok_or_else(|| KubeCaError::MissingKey {
        namespace: namespace.to_owned(),
        name: secret.metadata.name.clone().unwrap_or_default(),
        key,
    })
}

async fn get_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, KubeCaError> {
    secrets
        .get_opt(name)
        .await
        .map_err(|source| KubeCaError::Read {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })
}

fn self_signed_from(secret: &Secret, namespace: &str) -> Result<CertificateAuthority, KubeCaError> {
    let cert = required(secret, namespace, CA_CERT_KEY)?;
    let key = required(secret, namespace, CA_KEY_KEY)?;
    CertificateAuthority::from_pem(cert, key).map_err(|source| KubeCaError::Invalid {
        namespace: namespace.to_owned(),
        name: SELF_SIGNED_CA_SECRET.to_owned(),
        source: Box::new(source),
    })
}

/// The mesh CA of this cluster: the operator's `cacerts`, else `istio-ca-secret`, else a new
/// root stored as `istio-ca-secret`.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
) -> Result<(CertificateAuthority, CaOrigin), KubeCaError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(plugged) = get_secret(&secrets, namespace, PLUGGED_CA_SECRET).await? {
        let cert = required(&plugged, namespace, CA_CERT_KEY)?;
        let key = required(&plugged, namespace, CA_KEY_KEY)?;
        let root = required(&plugged, namespace, ROOT_CERT_KEY)?;
        let chain = text(&plugged, namespace, CERT_CHAIN_KEY)?.unwrap_or_default();
        let ca = CertificateAuthority::from_intermediate_pem(cert, key, chain, root).map_err(
            |source| KubeCaError::Invalid {
                namespace: namespace.to_owned(),
                name: PLUGGED_CA_SECRET.to_owned(),
                source: Box::new(source),
            },
        )?;
        tracing::info!(%namespace, secret = PLUGGED_CA_SECRET, "loaded the operator's CA");
        return Ok((ca, CaOrigin::Plugged));
    }
    if let Some(existing) = get_secret(&secrets, namespace, SELF_SIGNED_CA_SECRET).await? {
        let ca = self_signed_from(&existing, namespace)?;
        tracing::info!(%namespace, secret = SELF_SIGNED_CA_SECRET, "loaded mesh root CA");
        return Ok((ca, CaOrigin::Loaded));
    }
    let ca = CertificateAuthority::generate().map_err(KubeCaError::Generate)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED_CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some(SELF_SIGNED_CA_TYPE.to_owned()),
        data: Some(BTreeMap::from([
            (
                CA_CERT_KEY.to_owned(),
                ByteString(ca.root_cert_pem().as_bytes().to_vec()),
            ),
            (
                CA_KEY_KEY.to_owned(),
                ByteString(ca.signing_key_pem().into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(%namespace, secret = SELF_SIGNED_CA_SECRET, "created mesh root CA");
            Ok((ca, CaOrigin::Created))
        }
        // Another controller created it first: use that one, so there is one root.
        Err(error) if is_status(&error, 409) => {
            let winner = get_secret(&secrets, namespace, SELF_SIGNED_CA_SECRET)
                .await?
                .ok_or_else(|| KubeCaError::Create {
                    namespace: namespace.to_owned(),
                    name: SELF_SIGNED_CA_SECRET.to_owned(),
                    source: Box::new(error),
                })?;
            tracing::info!(%namespace, "another controller created the root first; using it");
            Ok((self_signed_from(&winner, namespace)?, CaOrigin::Loaded))
        }
        Err(source) => Err(KubeCaError::Create {
            namespace: namespace.to_owned(),
            name: SELF_SIGNED_CA_SECRET.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Writes the root into the `istio-ca-root-cert` ConfigMap (created, or replaced when it
/// holds anything else).
pub async fn publish_root(
    client: Client,
    namespace: &str,
    root_pem: &str,
) -> Result<(), KubeCaError> {
    let maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    let error = |source: kube::Error| KubeCaError::PublishRoot {
        namespace: namespace.to_owned(),
        source: Box::new(source),
    };
    let data = BTreeMap::from([(ROOT_CERT_KEY.to_owned(), root_pem.to_owned())]);
    match maps.get_opt(ROOT_CONFIG_MAP).await.map_err(error)? {
        Some(existing) if existing.data.as_ref() == Some(&data) => Ok(()),
        Some(mut existing) => {
            existing.data = Some(data);
            maps.replace(ROOT_CONFIG_MAP, &PostParams::default(), &existing)
                .await
                .map_err(error)?;
            tracing::info!(%namespace, config_map = ROOT_CONFIG_MAP, "updated the published root");
            Ok(())
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CONFIG_MAP.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    // istiod's label on the ConfigMaps it publishes.
                    labels: Some(BTreeMap::from([(
                        "istio.io/config".to_owned(),
                        "true".to_owned(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            maps.create(&PostParams::default(), &map)
                .await
                .map_err(error)?;
            tracing::info!(%namespace, config_map = ROOT_CONFIG_MAP, "published the root");
            Ok(())
        }
    }
}

/// Authenticates callers by their service-account token (a TokenReview with the API server).
///
/// Every authenticated service account may obtain its own identity. The node agents' service
/// accounts (`node_agents`) may also obtain the identities of pods on their node, which the
/// token's pod binding names: the node-name extra, or else the bound pod (looked up in the
/// index, its uid checked against the token's) and the node it is scheduled on.
pub struct TokenReviewAuthenticator {
    client: Client,
    audiences: Vec<String>,
    trust_domain: String,
    node_agents: BTreeSet<(String, String)>,
    index: Arc<LiveIndex>,
}

impl TokenReviewAuthenticator {
    /// `node_agents` are `(namespace, service account)` pairs.
    pub fn new(
        client: Client,
        audiences: Vec<String>,
        trust_domain: String,
        node_agents: impl IntoIterator<Item = (String, String)>,
        index: Arc<LiveIndex>,
    ) -> Self {
        Self {
            client,
            audiences,
            trust_domain,
            node_agents: node_agents.into_iter().collect(),
            index,
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, Status> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            status: None,
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("cannot review the token: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(Status::unauthenticated(format!(
                "token refused by the API server: {reason}"
            )));
        }
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(Status::unauthenticated(format!(
                    "token is not for audience {}",
                    self.audiences.join(",")
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, account)) = username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(Status::unauthenticated(format!(
                "token belongs to {username:?}, not to a service account"
            )));
        };
        let identity = SpiffeId::new(self.trust_domain.clone(), namespace, account)
            .map_err(|e| Status::unauthenticated(format!("service account {username}: {e}")))?;
        if !self
            .node_agents
            .contains(&(namespace.to_owned(), account.to_owned()))
        {
            return Ok(Caller {
                node: None,
                identity: Some(identity),
            });
        }
        let extras = user.extra.unwrap_or_default();
        let extra = |key: &str| {
            extras
                .get(key)
                .and_then(|values| values.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let node = match (extra(NODE_NAME_EXTRA), extra(POD_NAME_EXTRA)) {
            (Some(node), _) => node,
            (None, Some(pod)) => self.node_of_pod(namespace, &pod, extra(POD_UID_EXTRA))?,
            (None, None) => {
                return Err(Status::permission_denied(format!(
                    "node agent {username}: the token is bound to no pod, so its node is unknown (use a projected service-account token)"
                )));
            }
        };
        Ok(Caller {
            node: Some(node),
            identity: Some(identity),
        })
    }

    fn node_of_pod(
        &self,
        namespace: &str,
        pod: &str,
        uid: Option<String>,
    ) -> Result<String, Status> {
        let index = self.index.snapshot();
        let found = index
            .pods
            .get(&format!("{namespace}/{pod}"))
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "the token's pod {namespace}/{pod} is not known (yet)"
                ))
            })?;
        if let Some(uid) = uid
            && found.metadata.uid.as_deref() != Some(uid.as_str())
        {
            return Err(Status::permission_denied(format!(
                "the token's pod {namespace}/{pod} (uid {uid}) no longer exists"
            )));
        }
        found
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "the token's pod {namespace}/{pod} is not scheduled on a node"
                ))
            })
    }
}

impl CallerAuthenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        let caller = self.review(token).await?;
        if let Some(node) = &caller.node {
            check_claimed_node(metadata, node)?;
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests;
