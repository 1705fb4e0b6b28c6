//! Gateway credentials served over SDS, as istiod serves them (`pilot/pkg/xds/sds.go`): one
//! Envoy `Secret` resource per credential a gateway proxy terminates TLS with, built from the
//! Kubernetes Secret it names, and sent only to the identities of the pods of the Gateways
//! that may use it (its audience, checked by [`crate::push::ProxyScope`] against the stream's
//! authenticated identity).
//!
//! Names follow istiod's: `kubernetes://<namespace>/<name>` for an Istio Gateway's
//! `credentialName`, always in the namespace of the gateway's pod (Istio resolves
//! `kubernetes://<name>` in the proxy's namespace, and refuses a proxy a Secret of another);
//! `kubernetes-gateway://<namespace>/<name>` for a Gateway API listener's `certificateRefs`,
//! in the Gateway's namespace or another one a ReferenceGrant opens (checked when the listener
//! was resolved). MUTUAL's CA is `<resource>-cacert`: the Secret `<name>-cacert`, else the
//! `cacert`/`ca.crt` key of the Secret itself, as istiod's `GetCaCert`.
//!
//! A missing or unusable Secret is a [`TranslateProblem::Credential`] naming the Gateway, the
//! server and the Secret; the resource is not served and the proxy refuses TLS on that server
//! only. Only in Kubernetes mode ([`ConfigIndex::secrets_watched`]): in local mode the gateways
//! read their credentials from files.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use weft_identity::SpiffeId;
use weft_proto::envoy::config::core::v3::{DataSource, data_source::Specifier};
use weft_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use weft_proto::waypoint as wp;

use crate::index::ConfigIndex;
use crate::model::ResourceKind;
use crate::model::networking::{DestinationRuleSpec, ServerTlsMode};
use crate::translate::gateway_api::ingress::{ListenerTls, ingress_gateways};
use crate::translate::resolve::{self, WaypointRef, namespace_of};
use crate::translate::{MeshSettings, TranslateError, TranslateProblem};

/// istiod's resource name prefixes (`pilot/pkg/model/credentials`).
pub const KUBERNETES_PREFIX: &str = "kubernetes://";
pub const KUBERNETES_GATEWAY_PREFIX: &str = "kubernetes-gateway://";
/// The CA that verifies MUTUAL clients: `<resource>-cacert`, as Istio's `SdsCaSuffix`.
pub const CA_SUFFIX: &str = "-cacert";

/// The resource of an Istio Gateway server's `credentialName`, for a gateway pod in
/// `pod_namespace`. As istiod's `ParseResourceName`: `name` and `kubernetes://name` are in the
/// pod's namespace; `kubernetes://ns/name` names its namespace (and is refused when it is not
/// the pod's).
pub fn istio_resource(pod_namespace: &str, credential_name: &str) -> String {
    let name = credential_name
        .strip_prefix(KUBERNETES_PREFIX)
        .unwrap_or(credential_name);
    if name.contains('/') {
        format!("{KUBERNETES_PREFIX}{name}")
    } else {
        format!("{KUBERNETES_PREFIX}{pod_namespace}/{name}")
    }
}

/// The resource of a Gateway API listener's Secret.
pub fn gateway_api_resource(namespace: &str, name: &str) -> String {
    format!("{KUBERNETES_GATEWAY_PREFIX}{namespace}/{name}")
}

/// `(kind of Gateway naming it, namespace, Secret name)` of a resource name.
fn parse_resource(resource: &str) -> Option<(ResourceKind, &str, &str)> {
    let (kind, rest) = match resource.strip_prefix(KUBERNETES_GATEWAY_PREFIX) {
        Some(rest) => (ResourceKind::KubernetesGateway, rest),
        None => (
            ResourceKind::Gateway,
            resource.strip_prefix(KUBERNETES_PREFIX)?,
        ),
    };
    let (namespace, name) = rest.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then_some((kind, namespace, name))
}

/// One SDS resource and who may receive it. Its `Debug` never shows the key.
#[derive(Clone, PartialEq)]
pub struct GatewayCredential {
    pub secret: Secret,
    pub audience: BTreeSet<SpiffeId>,
}

impl std::fmt::Debug for GatewayCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCredential")
            .field("name", &self.secret.name)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The Secrets (`namespace/name`) Gateways name, with their `-cacert` companions: what the
/// Kubernetes source keeps of all Secrets. Istio Gateways' `credentialName` in the namespace of
/// each pod they select; Gateway API listeners' `certificateRefs` where permitted.
pub fn referenced_secrets(index: &ConfigIndex) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut add = |namespace: &str, name: &str| {
        names.insert(format!("{namespace}/{name}"));
        names.insert(format!("{namespace}/{name}{CA_SUFFIX}"));
    };
    // The namespaces of proxies that may originate TLS with a DestinationRule's credential.
    let mut proxy_namespaces: BTreeSet<&str> = resolve::waypoint_gateways(index)
        .map(|gateway| namespace_of(&gateway.metadata))
        .collect();
    for gateway in index.istio_gateways.values() {
        if gateway.spec.selector.is_empty() {
            continue;
        }
        // The namespaces of the pods the Gateway selects: its proxies'.
        let namespaces: BTreeSet<&str> = index
            .pods
            .values()
            .filter(|p| !resolve::pod_terminated(p))
            .filter(|p| resolve::selects(&gateway.spec.selector, &resolve::labels(&p.metadata)))
            .map(|p| namespace_of(&p.metadata))
            .collect();
        proxy_namespaces.extend(namespaces.iter().copied());
        let credentials: Vec<&str> = gateway
            .spec
            .servers
            .iter()
            .filter_map(|s| s.tls.as_ref())
            .filter(|t| {
                !matches!(
                    t.mode,
                    Some(ServerTlsMode::Passthrough | ServerTlsMode::IstioMutual)
                )
            })
            .flat_map(|t| {
                t.credential_name
                    .as_deref()
                    .into_iter()
                    .chain(t.credential_names().iter().map(String::as_str))
            })
            .filter(|n| !n.is_empty())
            .collect();
        if credentials.is_empty() {
            continue;
        }
        for namespace in namespaces {
            for credential in &credentials {
                let resource = istio_resource(namespace, credential);
                // Another namespace's Secret is never served to this gateway: not kept.
                if let Some((_, ns, name)) = parse_resource(&resource)
                    && ns == namespace
                {
                    add(ns, name);
                }
            }
        }
    }
    for gateway in ingress_gateways(index, &[]) {
        proxy_namespaces.insert(namespace_of(&gateway.gateway.metadata));
        for listener in &gateway.listeners {
            if let ListenerTls::Terminate {
                secret: Some((namespace, name)),
            } = &listener.tls
            {
                add(namespace, name);
            }
        }
    }
    for rule in index.destination_rules.values() {
        for credential in origination_credential_names(&rule.spec) {
            for namespace in &proxy_namespaces {
                if let Some((_, ns, name)) = parse_resource(&istio_resource(namespace, credential))
                    && ns == *namespace
                {
                    add(ns, name);
                }
            }
        }
    }
    names
}

/// Every `tls.credentialName` of a DestinationRule: its traffic policy's, its ports', its
/// subsets'.
fn origination_credential_names(spec: &DestinationRuleSpec) -> impl Iterator<Item = &str> {
    let policies = spec.traffic_policy.iter().chain(
        spec.subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_ref()),
    );
    policies
        .flat_map(|policy| {
            policy.tls.iter().chain(
                policy
                    .port_level_settings
                    .iter()
                    .filter_map(|p| p.tls.as_ref()),
            )
        })
        .filter_map(|tls| tls.credential_name.as_deref())
        .filter(|name| !name.is_empty())
}

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.to_vec())),
    })
}

/// What a proxy needs of one resource.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    CertificateAndKey,
    /// A CA, and what it is for (said when there is none).
    Ca(&'static str),
}

/// The CA of a MUTUAL server, which verifies its clients.
const CLIENT_CA: Need = Need::Ca("MUTUAL needs a CA");
/// The CA verifying the server TLS is originated to.
const SERVER_CA: Need = Need::Ca("no CA to verify the server");

/// The Envoy `Secret` of `resource` from the index's Secrets, or why there is none.
fn build(index: &ConfigIndex, resource: &str, need: Need) -> Result<Secret, String> {
    let (_, namespace, name) =
        parse_resource(resource).ok_or_else(|| format!("{resource:?} is not a Secret"))?;
    let secret = |name: &str| index.secrets.get(&format!("{namespace}/{name}"));
    let kind = match need {
        Need::CertificateAndKey => {
            let found =
                secret(name).ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
            let (certificate, key) = found
                .certificate_and_key()
                .map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
            check_pem(certificate, "CERTIFICATE")
                .map_err(|e| format!("Secret {namespace}/{name}: certificate: {e}"))?;
            secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(certificate),
                private_key: inline(key),
            })
        }
        Need::Ca(why) => {
            // `name` ends with the suffix: its own Secret first, else the credential's keys.
            let base = name.strip_suffix(CA_SUFFIX).unwrap_or(name);
            let (from, ca, crl) = match secret(name) {
                Some(own) => (name, own.ca(), own.crl()),
                None => match secret(base) {
                    Some(credential) => (base, credential.ca(), credential.crl()),
                    None => {
                        return Err(format!(
                            "{why}: neither Secret {namespace}/{name} nor {namespace}/{base} exists"
                        ));
                    }
                },
            };
            let ca = ca.map_err(|e| format!("Secret {namespace}/{from}: {why}: {e}"))?;
            check_pem(ca, "CERTIFICATE")
                .map_err(|e| format!("Secret {namespace}/{from}: CA: {e}"))?;
            if let Some(crl) = crl {
                check_pem(crl, "X509 CRL")
                    .map_err(|e| format!("Secret {namespace}/{from}: CRL: {e}"))?;
            }
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(ca),
                crl: crl.and_then(inline),
            })
        }
    };
    Ok(Secret {
        name: resource.to_owned(),
        r#type: Some(kind),
    })
}

/// At least one PEM block labelled `label`: a Secret holding something else is reported here,
/// by the controller, not only by the proxy's handshakes.
fn check_pem(bytes: &[u8], label: &str) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not PEM text".to_owned())?;
    if text.contains(&format!("-----BEGIN {label}-----")) {
        Ok(())
    } else {
        Err(format!("no PEM {label}"))
    }
}

/// Why the Secret `namespace/name` cannot serve a Gateway API listener, as Istio's gateway
/// controller checks a `certificateRefs` Secret (`buildSecretReference`): it must exist, hold a
/// certificate and key (the generic `cert`/`key` or `tls.crt`/`tls.key`), and the two must
/// parse as a key pair (Go's `tls.X509KeyPair`: PEM certificates, a PEM key, the key the
/// leaf's). `None` when it can serve.
pub fn listener_secret_problem(index: &ConfigIndex, namespace: &str, name: &str) -> Option<String> {
    let Some(secret) = index.secrets.get(&format!("{namespace}/{name}")) else {
        return Some(format!("secret {namespace}/{name} not found"));
    };
    let (certificate, key) = match secret.certificate_and_key() {
        Ok(pair) => pair,
        Err(reason) => return Some(format!("secret {namespace}/{name}: {reason}")),
    };
    key_pair_problem(certificate, key)
        .map(|reason| format!("the certificate is malformed: secret {namespace}/{name}: {reason}"))
}

/// Why `certificate` (a PEM chain, leaf first) and `key` (PEM) are not a usable key pair.
fn key_pair_problem(certificate: &[u8], key: &[u8]) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = match CertificateDer::pem_slice_iter(certificate).collect::<Result<Vec<_>, _>>() {
        Ok(chain) if chain.is_empty() => return Some("no PEM certificate".to_owned()),
        Ok(chain) => chain,
        Err(error) => return Some(format!("certificate: {error}")),
    };
    let key = match PrivateKeyDer::from_pem_slice(key) {
        Ok(key) => key,
        Err(error) => return Some(format!("private key: {error}")),
    };
    let signing = match weft_identity::crypto_provider()
        .key_provider
        .load_private_key(key)
    {
        Ok(signing) => signing,
        Err(error) => return Some(format!("private key: {error}")),
    };
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .err()
        .map(|error| format!("the private key does not match the certificate: {error}"))
}

/// Every credential the gateway proxies of `configs` (by `namespace/pod`) terminate TLS with,
/// by resource name, each for the identities of the pods that use it. What cannot be served
/// is reported once per Gateway server.
pub fn gateway_credentials(
    index: &ConfigIndex,
    settings: &MeshSettings,
    configs: &BTreeMap<String, wp::WaypointConfig>,
    problems: &mut Vec<TranslateError>,
) -> BTreeMap<String, GatewayCredential> {
    let mut served: BTreeMap<String, GatewayCredential> = BTreeMap::new();
    if !index.secrets_watched {
        // Local mode: the gateways read their credentials from files, and say so when one is
        // missing; there is no Secret to serve or to miss.
        return served;
    }
    let mut refused: BTreeSet<String> = BTreeSet::new();
    for (key, config) in configs {
        let Some(gateway) = &config.gateway else {
            continue;
        };
        let Some(pod) = index.pods.get(key) else {
            continue;
        };
        let pod_namespace = namespace_of(&pod.metadata);
        let Ok(identity) = SpiffeId::new(
            settings.trust_domain.clone(),
            pod_namespace,
            resolve::service_account(pod),
        ) else {
            continue;
        };
        for server in gateway.listeners.iter().flat_map(|l| &l.servers) {
            let Some(tls) = &server.tls else { continue };
            let mode = tls.mode;
            // Every credential's certificate; MUTUAL's CA is the first one's, as in Istio.
            let mut needs: Vec<(String, Need)> = std::iter::once(&tls.credential_resource)
                .chain(tls.additional_credentials.iter().map(|c| &c.resource))
                .filter(|r| !r.is_empty())
                .map(|r| (r.clone(), Need::CertificateAndKey))
                .collect();
            if mode == wp::ServerTlsMode::Mutual as i32
                || mode == wp::ServerTlsMode::OptionalMutual as i32
            {
                if !tls.credential_resource.is_empty() {
                    needs.push((format!("{}{CA_SUFFIX}", tls.credential_resource), CLIENT_CA));
                }
            } else if mode != wp::ServerTlsMode::Simple as i32 {
                continue;
            }
            for (resource, need) in needs {
                let Some((kind, namespace, _)) = parse_resource(&resource) else {
                    continue;
                };
                let result = if kind == ResourceKind::Gateway && namespace != pod_namespace {
                    // Istio's rule: a gateway reads the Secrets of its own namespace only.
                    Err(format!(
                        "credentialName names a Secret of namespace {namespace}; the gateway's pod {key} may use only Secrets of its own namespace"
                    ))
                } else {
                    serve(
                        index,
                        &mut served,
                        &resource,
                        need,
                        std::slice::from_ref(&identity),
                    )
                };
                match result {
                    Ok(()) => {}
                    Err(reason) => {
                        if refused.insert(format!("{}|{}|{resource}", server.gateway, server.name))
                        {
                            let (gateway_namespace, gateway_name) = server
                                .gateway
                                .split_once('/')
                                .unwrap_or(("", &server.gateway));
                            problems.push(TranslateError {
                                kind,
                                namespace: gateway_namespace.to_owned(),
                                name: gateway_name.to_owned(),
                                problem: TranslateProblem::Credential {
                                    server: server.name.clone(),
                                    resource,
                                    reason,
                                },
                            });
                        }
                    }
                }
            }
        }
    }
    served
}

/// Serves `resource` to `audience` as well: built from its Secret the first time, or why it
/// cannot be.
fn serve(
    index: &ConfigIndex,
    served: &mut BTreeMap<String, GatewayCredential>,
    resource: &str,
    need: Need,
    audience: &[SpiffeId],
) -> Result<(), String> {
    if let Some(existing) = served.get_mut(resource) {
        existing.audience.extend(audience.iter().cloned());
        return Ok(());
    }
    let secret = build(index, resource, need)?;
    served.insert(
        resource.to_owned(),
        GatewayCredential {
            secret,
            audience: audience.iter().cloned().collect(),
        },
    );
    Ok(())
}

/// The TLS origination credentials (a DestinationRule's `credentialName`) of the proxies of
/// `configs` (waypoints by `namespace/name`, gateways by `namespace/pod`), served as istiod
/// serves a proxy the credentials its clusters name: `kubernetes://<namespace>/<name>` in the
/// proxy's own namespace (a name in another namespace is refused, Istio's rule), the client
/// certificate and key for MUTUAL, and always the CA that verifies the server as
/// `<resource>-cacert` (the proxies always verify the server). Each cluster's settings get the
/// resource (`credential_resource`), whose audience is the identities of the proxy's pods. A
/// Secret that cannot serve is reported once per DestinationRule, proxy and resource, and the
/// cluster's connections fail at the proxy. Kubernetes mode only: in local mode the proxies
/// read their credentials directory.
pub fn origination_credentials(
    index: &ConfigIndex,
    settings: &MeshSettings,
    configs: &mut BTreeMap<String, wp::WaypointConfig>,
    served: &mut BTreeMap<String, GatewayCredential>,
    problems: &mut Vec<TranslateError>,
) {
    if !index.secrets_watched {
        return;
    }
    let mut reported: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (key, config) in configs.iter_mut() {
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        if !config.clusters.iter().any(|c| {
            c.tls
                .as_ref()
                .is_some_and(|t| !t.credential_name.is_empty())
        }) {
            continue;
        }
        let waypoint = WaypointRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let pods: Vec<&Pod> = if config.gateway.is_some() {
            index.pods.get(key).into_iter().collect()
        } else {
            resolve::waypoint_pods(index, &waypoint)
                .filter(|p| !resolve::pod_terminated(p))
                .collect()
        };
        let audience: Vec<SpiffeId> = pods
            .iter()
            .filter_map(|pod| {
                SpiffeId::new(
                    settings.trust_domain.clone(),
                    namespace,
                    resolve::service_account(pod),
                )
                .ok()
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for cluster in &mut config.clusters {
            let Some(tls) = cluster.tls.as_mut() else {
                continue;
            };
            if tls.credential_name.is_empty() {
                continue;
            }
            let resource = istio_resource(namespace, &tls.credential_name);
            tls.credential_resource = resource.clone();
            let mut needs = vec![(format!("{resource}{CA_SUFFIX}"), SERVER_CA)];
            if tls.mutual {
                needs.insert(0, (resource.clone(), Need::CertificateAndKey));
            }
            for (resource, need) in needs {
                let result = match parse_resource(&resource) {
                    None => Err(format!("{resource:?} is not a Secret")),
                    Some((_, ns, _)) if ns != namespace => Err(format!(
                        "credentialName names a Secret of namespace {ns}; the proxy {key} may use only Secrets of its own namespace"
                    )),
                    Some(_) => serve(index, served, &resource, need, &audience),
                };
                let Err(reason) = result else { continue };
                let rule = cluster.destination_rule.clone();
                if reported.insert((rule.clone(), key.clone(), resource.clone())) {
                    let (rule_namespace, rule_name) =
                        rule.split_once('/').unwrap_or((namespace, rule.as_str()));
                    problems.push(TranslateError {
                        kind: ResourceKind::DestinationRule,
                        namespace: rule_namespace.to_owned(),
                        name: rule_name.to_owned(),
                        problem: TranslateProblem::OriginationCredential {
                            proxy: key.clone(),
                            host: cluster.host.clone(),
                            resource,
                            reason,
                        },
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
