//! Translation: from the index to the resources each kind of proxy consumes. Pure functions over
//! an index snapshot; no I/O.
//!
//! - [`agent`]: node agents' `istio.workload.Address` and `istio.security.Authorization`.
//! - [`waypoint`]: one `weft.waypoint.v1.WaypointConfig` per waypoint, and the mesh's pods as
//!   request sources (`weft.waypoint.v1.SourceWorkload`), which every waypoint receives.
//! - [`auto_allocate`]: addresses for ServiceEntry hosts that declare none.
//! - [`resolve`]: how both read pods, services and waypoints (one place for labels, addresses,
//!   hostnames, identities and waypoint assignment).
//!
//! A resource that cannot be translated (fully) is reported as a [`TranslateError`] naming it;
//! what cannot be translated is skipped, translation never fails as a whole and never panics.

pub mod address_aliases;
pub mod agent;
pub mod auto_allocate;
pub mod credentials;
pub mod gateway_api;
pub mod provision;
pub mod resolve;
pub mod waypoint;
pub mod workload_name;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Name;
use weft_istio::defaults::{
    DEFAULT_CLUSTER_ID, DEFAULT_DOMAIN_SUFFIX, DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN,
};
use weft_proto::istio::{security, workload};
use weft_proto::mesh::MeshConfig;
use weft_proto::waypoint::{SourceWorkload, WaypointConfig};
use weft_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, MESH_CONFIG_NAME, MESH_CONFIG_TYPE_URL,
    SECRET_TYPE_URL, SOURCE_WORKLOAD_TYPE_URL, WAYPOINT_CONFIG_TYPE_URL,
};

use crate::{index::ConfigIndex, model::ResourceKind};

/// Mesh-wide settings translation needs.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub trust_domain: String,
    /// Policies here without a selector apply mesh-wide.
    pub root_namespace: String,
    pub cluster_id: String,
    pub domain_suffix: String,
    /// The key sets of `jwksUri`s, fetched by [`crate::jwks::JwksResolver::run`].
    pub jwks: std::sync::Arc<crate::jwks::JwksResolver>,
    /// Istio's `MeshConfig` in force, followed by [`crate::mesh_config::MeshConfigWatch::run`].
    pub mesh: std::sync::Arc<crate::mesh_config::MeshConfigWatch>,
    /// Mirrored requests keep their Host (istiod's `DISABLE_SHADOW_HOST_SUFFIX`, true by
    /// default since Istio 1.28); false: `-shadow` is appended to it, as before 1.28.
    pub disable_shadow_host_suffix: bool,
    /// Where ServiceEntry addresses are allocated (istiod's `PILOT_IP_AUTOALLOCATE_IPV4_PREFIX`
    /// and `PILOT_IP_AUTOALLOCATE_IPV6_PREFIX`); `None` when allocation is off (istiod's
    /// `PILOT_ENABLE_IP_AUTOALLOCATE=false`): no host gets an address it does not declare.
    pub auto_allocate: Option<auto_allocate::Ranges>,
    /// Counts the extension providers each translation drops for want of their service
    /// (istiod's `provider_lookup_cluster_failures`), shared with the monitoring port.
    pub provider_lookup_failures: std::sync::Arc<ProviderLookupFailures>,
}

/// Extension providers dropped because the service registry has no service for their
/// `service`, by istiod's `type` label of the provider's kind (`opentelemetry`,
/// `envoyOtelAls`, `envoyHTTPAls`, `envoyTCPAls`): one count per proxy configuration that
/// would have used the provider, at each translation, as istiod counts one per proxy push
/// (`IncLookupClusterFailures`).
#[derive(Debug, Default)]
pub struct ProviderLookupFailures(std::sync::Mutex<BTreeMap<&'static str, u64>>);

impl ProviderLookupFailures {
    /// Counts one failed lookup of a provider of `kind` (istiod's label value).
    pub fn failed(&self, kind: &'static str) {
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// The counts so far, by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().clone()
    }
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            domain_suffix: DEFAULT_DOMAIN_SUFFIX.into(),
            jwks: Default::default(),
            mesh: Default::default(),
            disable_shadow_host_suffix: true,
            auto_allocate: Some(Default::default()),
            provider_lookup_failures: Default::default(),
        }
    }
}

/// Why one resource could not be translated, or not completely.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
#[error("{kind} {}: {problem}", display_key(namespace, name))]
pub struct TranslateError {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
    pub problem: TranslateProblem,
}

fn display_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

impl TranslateError {
    pub fn new(kind: ResourceKind, meta: &ObjectMeta, problem: TranslateProblem) -> Self {
        Self {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            problem,
        }
    }
}

/// What was wrong. Variants with a `path` name the field (`spec.http[1].route[0]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum TranslateProblem {
    #[error("waypoint {namespace}/{name} does not exist (no Gateway of class istio-waypoint)")]
    UnknownWaypoint { namespace: String, name: String },
    #[error(
        "waypoint {namespace}/{name} does not admit namespace {from} (its listener's allowedRoutes); not used"
    )]
    WaypointNotAllowed {
        namespace: String,
        name: String,
        from: String,
    },
    #[error(
        "waypoint {namespace}/{name} takes {takes} traffic (istio.io/waypoint-for), not {asked} traffic; not used"
    )]
    WaypointNotFor {
        namespace: String,
        name: String,
        takes: &'static str,
        asked: &'static str,
    },
    #[error(
        "the waypoint has neither a Service nor a pod with an IP: traffic for its services and workloads fails until it has one"
    )]
    WaypointWithoutAddress,
    #[error(
        "backs services with different waypoints ({services}); its agent accepts traffic only through {waypoint}"
    )]
    ConflictingWaypoints { services: String, waypoint: String },
    #[error(
        "{path}: {host:?} is not a known service: requests of {service} routed there are answered 503 NC (no cluster outbound|{port}|{subset}|{host})"
    )]
    UnknownHost {
        path: String,
        host: String,
        subset: String,
        port: u32,
        service: String,
    },
    #[error(
        "{path}: subset {subset:?} of {host} is not defined by a DestinationRule: requests of {service} routed there are answered 503 NC (no cluster outbound|{port}|{subset}|{host})"
    )]
    UnknownSubset {
        path: String,
        host: String,
        subset: String,
        port: u32,
        service: String,
    },
    #[error(
        "{path}: {host} has no port {port}: requests of {service} routed there are answered 503 NC (no cluster outbound|{port}|{subset}|{host})"
    )]
    UnknownPort {
        path: String,
        host: String,
        subset: String,
        port: u32,
        service: String,
    },
    #[error(
        "{path}: {host} has several ports, the destination names none and none is the request's port {port}: requests of {service} routed there are answered 503 NC (no cluster outbound|{port}|{subset}|{host})"
    )]
    AmbiguousPort {
        path: String,
        host: String,
        subset: String,
        port: u32,
        service: String,
    },
    #[error(
        "{path}: {value:?} is not valid: {reason}; the VirtualService is skipped for {service}"
    )]
    InvalidValue {
        path: String,
        value: String,
        reason: String,
        service: String,
    },
    #[error(
        "{path}: {host} is served by waypoint {waypoint}, which applies only the routes of its own namespace and of the service's; this one is ignored there"
    )]
    OutsideWaypointNamespaces {
        path: String,
        host: String,
        waypoint: String,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    #[error(
        "waypoint {from} routes to it, but its pods accept only the traffic of its own waypoint {to}: those requests are refused"
    )]
    OtherWaypoint { from: String, to: String },
    #[error("targets {kind} {target}, which uses no waypoint: nothing enforces this policy")]
    UnenforcedPolicy { kind: &'static str, target: String },
    #[error(
        "{path}: the keys from {url} could not be fetched ({error}); {}",
        if *stale { "the last good keys stay in use" } else { "tokens of this issuer are refused until they are" }
    )]
    JwksUnavailable {
        path: String,
        url: String,
        error: String,
        stale: bool,
    },
    #[error(
        "{attributes}: {}",
        crate::model::security::http_attributes_at_node_agents(if *deny {
            crate::model::security::AuthorizationAction::Deny
        } else {
            crate::model::security::AuthorizationAction::Allow
        })
    )]
    HttpAttributesAtNodeAgent { attributes: String, deny: bool },
    #[error("server {server}: credential {resource}: {reason}; the server refuses TLS")]
    Credential {
        server: String,
        resource: String,
        reason: String,
    },
    #[error(
        "spec.trafficPolicy.tls.credentialName: credential {resource} for proxy {proxy}: {reason}; its connections to {host} fail (503 UF)"
    )]
    OriginationCredential {
        proxy: String,
        host: String,
        resource: String,
        reason: String,
    },
}

/// Everything the controller serves, and what could not be translated.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Translation {
    /// `istio.workload.Address`, by resource name.
    pub addresses: BTreeMap<String, workload::Address>,
    /// `istio.security.Authorization`, by resource name.
    pub authorizations: BTreeMap<String, security::Authorization>,
    /// `weft.waypoint.v1.WaypointConfig`, by resource name (`namespace/name`).
    pub waypoints: BTreeMap<String, WaypointConfig>,
    /// `weft.mesh.v1.MeshConfig`: the one resource [`MESH_CONFIG_NAME`], for node agents.
    pub mesh: BTreeMap<String, MeshConfig>,
    /// Gateway credentials (Envoy's SDS `Secret`), by resource name, each with its audience.
    pub credentials: BTreeMap<String, credentials::GatewayCredential>,
    /// `weft.waypoint.v1.SourceWorkload`, by resource name (the address): every waypoint's.
    pub source_workloads: BTreeMap<String, SourceWorkload>,
    /// Sorted, without duplicates.
    pub problems: Vec<TranslateError>,
}

/// Translates the whole index.
pub fn translate(index: &ConfigIndex, settings: &MeshSettings) -> Translation {
    let mut problems = resolve::assignment_problems(index);
    problems.extend(agent::authorization_problems(index));
    let mut waypoints = waypoint::waypoint_configs(index, settings, &mut problems);
    let gateways = waypoint::gateway_configs(index, settings, &mut problems);
    let mut credentials =
        credentials::gateway_credentials(index, settings, &gateways, &mut problems);
    for (name, config) in gateways {
        // A gateway's pod named as a waypoint of its namespace: the waypoint keeps its name.
        if waypoints.contains_key(&name) {
            problems.push(TranslateError {
                kind: ResourceKind::Gateway,
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                problem: TranslateProblem::Unsupported {
                    path: "metadata.name".to_owned(),
                    reason: format!("the gateway pod {name} has the name of a waypoint; it receives no configuration"),
                },
            });
            continue;
        }
        waypoints.insert(name, config);
    }
    credentials::origination_credentials(
        index,
        settings,
        &mut waypoints,
        &mut credentials,
        &mut problems,
    );
    problems.sort();
    problems.dedup();
    Translation {
        addresses: agent::addresses(index, settings),
        authorizations: agent::authorizations(index, settings),
        waypoints,
        mesh: BTreeMap::from([(MESH_CONFIG_NAME.to_owned(), settings.mesh.current())]),
        credentials,
        source_workloads: waypoint::source_workloads(index, settings),
        problems,
    }
}

/// Resources of one type.
pub type TypeResources = Vec<weft_xds::StoredResource>;

fn any<M: Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

impl Translation {
    /// Everything the controller serves, by type URL. Every type is always listed (possibly
    /// empty), so a type whose last resource went away is emptied. A new kind of proxy resource
    /// is one more entry here.
    pub fn resources(&self) -> Vec<(String, TypeResources)> {
        fn packed<M: Name>(resources: &BTreeMap<String, M>) -> TypeResources {
            resources
                .iter()
                .map(|(name, r)| weft_xds::StoredResource::new(name.clone(), any(r)))
                .collect()
        }
        let credentials = self
            .credentials
            .iter()
            .map(|(name, credential)| {
                weft_xds::StoredResource::new(name.clone(), any(&credential.secret))
                    .with_audience(std::sync::Arc::new(credential.audience.clone()))
            })
            .collect();
        let aliases = address_aliases::address_aliases(&self.addresses);
        let addresses = self
            .addresses
            .iter()
            .map(|(name, address)| {
                weft_xds::StoredResource::new(name.clone(), any(address))
                    .with_aliases(aliases.of(address))
            })
            .collect();
        vec![
            (ADDRESS_TYPE_URL.to_owned(), addresses),
            (
                AUTHORIZATION_TYPE_URL.to_owned(),
                packed(&self.authorizations),
            ),
            (WAYPOINT_CONFIG_TYPE_URL.to_owned(), packed(&self.waypoints)),
            (MESH_CONFIG_TYPE_URL.to_owned(), packed(&self.mesh)),
            (SECRET_TYPE_URL.to_owned(), credentials),
            (
                SOURCE_WORKLOAD_TYPE_URL.to_owned(),
                packed(&self.source_workloads),
            ),
        ]
    }
}

/// Everything the controller serves for `index`, by type URL (see [`Translation::resources`]).
pub fn resources(index: &ConfigIndex, settings: &MeshSettings) -> Vec<(String, TypeResources)> {
    translate(index, settings).resources()
}

#[cfg(test)]
mod tests;
