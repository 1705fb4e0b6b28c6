//! What node agents receive: `istio.workload.Address` (a Workload per pod, a Service per
//! Kubernetes Service) and `istio.security.Authorization` (the L4 part of AuthorizationPolicy,
//! and PeerAuthentication STRICT as the DENY rule istiod generates).

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Pod, Service};
use weft_policy::l4::{
    EffectivePeerAuthentication, MtlsMode as PolicyMtlsMode, PolicyScope,
    peer_authentication_policy,
};
use weft_proto::istio::{security, workload};

use crate::{
    index::ConfigIndex,
    model::security::{AuthorizationAction, AuthorizationPolicy, MtlsMode, Rule},
};

/// Label that enrolls a namespace or pod (`ambient`) or opts a pod out (`none`).
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Label naming the waypoint a namespace, service or pod uses.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Label Istio puts on a gateway's (waypoint's) pods.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
pub const HBONE_PORT: u32 = 15008;

/// Mesh-wide settings translation needs.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub trust_domain: String,
    /// Policies here without a selector apply mesh-wide.
    pub root_namespace: String,
    pub cluster_id: String,
    pub domain_suffix: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            cluster_id: "Kubernetes".into(),
            domain_suffix: "cluster.local".into(),
        }
    }
}

fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the pod is in the mesh (ambient): its label, else its namespace's.
pub fn enrolled(index: &ConfigIndex, pod: &Pod) -> bool {
    let pod_labels = labels(&pod.metadata);
    match pod_labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("ambient") => true,
        Some(_) => false,
        None => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            index
                .namespace_labels(namespace)
                .get(DATAPLANE_MODE)
                .map(String::as_str)
                == Some("ambient")
        }
    }
}

/// The uid a pod is known by (Kubernetes' uid, or a stable name-based one in local mode).
pub fn pod_uid(index_cluster: &str, pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{index_cluster}//Pod/{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn hostname(service: &Service, settings: &MeshSettings) -> String {
    format!(
        "{}.{}.svc.{}",
        service.metadata.name.as_deref().unwrap_or_default(),
        service.metadata.namespace.as_deref().unwrap_or("default"),
        settings.domain_suffix
    )
}

fn service_selects(service: &Service, pod: &Pod) -> bool {
    if service.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    match service.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(selector) if !selector.is_empty() => selects(selector, &labels(&pod.metadata)),
        _ => false,
    }
}

/// The target port of `port` on `pod`: numeric, or a named container port.
fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<u32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => Some(port.port as u32),
        Some(IntOrString::Int(n)) => Some(*n as u32),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u32),
    }
}

/// The waypoint named by `name` in `namespace`: the address of one of its pods.
fn waypoint_address(
    index: &ConfigIndex,
    namespace: &str,
    name: &str,
) -> Option<workload::GatewayAddress> {
    let pod = index.pods.values().find(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace)
            && labels(&pod.metadata).get(GATEWAY_NAME).map(String::as_str) == Some(name)
    })?;
    let ip = *pod_ips(pod).first()?;
    Some(workload::GatewayAddress {
        destination: Some(workload::gateway_address::Destination::Address(
            workload::NetworkAddress {
                network: String::new(),
                address: ip_bytes(ip),
            },
        )),
        hbone_mtls_port: HBONE_PORT,
    })
}

/// The waypoint a resource uses: its own label, else its namespace's; `none` opts out.
fn waypoint_for(
    index: &ConfigIndex,
    namespace: &str,
    own_labels: &BTreeMap<String, String>,
) -> Option<workload::GatewayAddress> {
    let name = own_labels
        .get(USE_WAYPOINT)
        .cloned()
        .or_else(|| index.namespace_labels(namespace).get(USE_WAYPOINT).cloned())?;
    if name == "none" {
        return None;
    }
    waypoint_address(index, namespace, &name)
}

/// Every `istio.workload.Address`, keyed by resource name (uid for workloads,
/// `namespace/hostname` for services).
pub fn addresses(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, workload::Address> {
    let mut out = BTreeMap::new();
    let policies_by_pod = selected_policies(index, settings);
    let slice_endpoints = endpoints_of_selectorless_services(index, settings);
    for (key, pod) in &index.pods {
        let ips = pod_ips(pod);
        if ips.is_empty() {
            continue;
        }
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let pod_labels = labels(&pod.metadata);
        let in_mesh = enrolled(index, pod);
        let mut services = std::collections::HashMap::new();
        for service in index.services.values().filter(|s| service_selects(s, pod)) {
            let ports = service
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some(workload::Port {
                        service_port: p.port as u32,
                        target_port: target_port(p, pod)?,
                    })
                })
                .collect();
            services.insert(
                format!(
                    "{}/{}",
                    service.metadata.namespace.as_deref().unwrap_or("default"),
                    hostname(service, settings)
                ),
                workload::PortList { ports },
            );
        }
        for (service_key, ports) in slice_endpoints.pod_services.get(key).into_iter().flatten() {
            services.insert(service_key.clone(), ports.clone());
        }
        let is_waypoint = pod_labels.contains_key(GATEWAY_NAME);
        let uid = pod_uid(&settings.cluster_id, pod);
        let workload = workload::Workload {
            uid: uid.clone(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            addresses: ips.iter().map(|ip| ip_bytes(*ip)).collect(),
            network: String::new(),
            tunnel_protocol: if in_mesh || is_waypoint {
                workload::TunnelProtocol::Hbone as i32
            } else {
                workload::TunnelProtocol::None as i32
            },
            trust_domain: settings.trust_domain.clone(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            waypoint: if in_mesh && !is_waypoint {
                waypoint_for(index, &namespace, &pod_labels)
            } else {
                None
            },
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            canonical_name: pod_labels
                .get("service.istio.io/canonical-name")
                .or_else(|| pod_labels.get("app.kubernetes.io/name"))
                .or_else(|| pod_labels.get("app"))
                .cloned()
                .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default()),
            canonical_revision: pod_labels
                .get("service.istio.io/canonical-revision")
                .or_else(|| pod_labels.get("app.kubernetes.io/version"))
                .or_else(|| pod_labels.get("version"))
                .cloned()
                .unwrap_or_else(|| "latest".into()),
            workload_type: workload::WorkloadType::Pod as i32,
            workload_name: pod_labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default()),
            cluster_id: settings.cluster_id.clone(),
            services,
            authorization_policies: policies_by_pod.get(key).cloned().unwrap_or_default(),
            status: if pod_ready(pod) {
                workload::WorkloadStatus::Healthy as i32
            } else {
                workload::WorkloadStatus::Unhealthy as i32
            },
            ..Default::default()
        };
        out.insert(
            uid,
            workload::Address {
                r#type: Some(workload::address::Type::Workload(workload)),
            },
        );
    }
    for workload in slice_endpoints.workloads {
        out.insert(
            workload.uid.clone(),
            workload::Address {
                r#type: Some(workload::address::Type::Workload(workload)),
            },
        );
    }
    for service in index.services.values() {
        let namespace = service
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let spec = service.spec.clone().unwrap_or_default();
        let vips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let host = hostname(service, settings);
        let record = workload::Service {
            name: service.metadata.name.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            hostname: host.clone(),
            addresses: vips
                .iter()
                .map(|ip| workload::NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(*ip),
                })
                .collect(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| workload::Port {
                    service_port: p.port as u32,
                    target_port: match &p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                            *n as u32
                        }
                        // Named: resolved per workload.
                        Some(_) => 0,
                        None => p.port as u32,
                    },
                })
                .collect(),
            waypoint: waypoint_for(index, &namespace, &labels(&service.metadata)),
            ..Default::default()
        };
        out.insert(
            format!("{namespace}/{host}"),
            workload::Address {
                r#type: Some(workload::address::Type::Service(record)),
            },
        );
    }
    out
}

/// Whether a pod takes traffic: not terminating, and Ready when it reports conditions at all.
///
/// A pod read from the API server always reports conditions once it runs; pods written by hand
/// for local mode usually carry none, and count as ready.
pub fn pod_ready(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    match conditions {
        None => true,
        Some(conditions) if conditions.is_empty() => true,
        Some(conditions) => conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
    }
}

/// Label the EndpointSlice controller puts on a slice: the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the EndpointSlices of Services *without* a selector add: such a Service's endpoints are
/// whatever its slices list, so they are the only source of them.
#[derive(Debug, Default)]
struct SliceEndpoints {
    /// Pods a slice names (by `targetRef`, at one of the pod's addresses): services to add to
    /// those pods' workloads, keyed by pod key.
    pod_services: BTreeMap<String, Vec<(String, workload::PortList)>>,
    /// Endpoints that are no known pod (a VM, an external address): one workload each, outside
    /// the mesh (no HBONE), healthy as the slice's `ready` condition says.
    workloads: Vec<workload::Workload>,
}

/// For Services with a selector, pods and the selector are the endpoints, as in istiod: the
/// EndpointSlice controller derives those slices from the same pods (their addresses and Ready
/// condition), so reading them again would add nothing the pods do not say.
fn endpoints_of_selectorless_services(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    for (slice_key, slice) in &index.endpoint_slices {
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        let Some(service_name) = labels(&slice.metadata).get(SERVICE_NAME_LABEL).cloned() else {
            continue;
        };
        let Some(service) = index.services.get(&format!("{namespace}/{service_name}")) else {
            continue;
        };
        let has_selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|selector| !selector.is_empty());
        if has_selector {
            continue;
        }
        let service_key = format!("{namespace}/{}", hostname(service, settings));
        let ports = slice_ports(service, slice);
        let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
        for endpoint in &slice.endpoints {
            let addresses: Vec<IpAddr> = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            let Some(first) = addresses.first() else {
                continue;
            };
            let pod_key = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let pod_namespace = r.namespace.as_deref().unwrap_or(namespace);
                    Some(format!("{pod_namespace}/{}", r.name.as_deref()?))
                })
                .filter(|key| {
                    index
                        .pods
                        .get(key)
                        .is_some_and(|pod| pod_ips(pod).iter().any(|ip| addresses.contains(ip)))
                });
            if let Some(pod_key) = pod_key {
                out.pod_services
                    .entry(pod_key)
                    .or_default()
                    .push((service_key.clone(), ports.clone()));
                continue;
            }
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                // The API: an unset `ready` is to be read as ready.
                .unwrap_or(true);
            let name = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| endpoint.hostname.clone())
                .unwrap_or_else(|| slice_name.to_owned());
            out.workloads.push(workload::Workload {
                uid: format!(
                    "{}/discovery.k8s.io/EndpointSlice/{slice_key}/{first}",
                    settings.cluster_id
                ),
                name: name.clone(),
                namespace: namespace.to_owned(),
                addresses: addresses.iter().map(|ip| ip_bytes(*ip)).collect(),
                tunnel_protocol: workload::TunnelProtocol::None as i32,
                trust_domain: settings.trust_domain.clone(),
                service_account: "default".into(),
                node: endpoint.node_name.clone().unwrap_or_default(),
                canonical_name: service_name.clone(),
                canonical_revision: "latest".into(),
                workload_type: workload::WorkloadType::Pod as i32,
                workload_name: name,
                cluster_id: settings.cluster_id.clone(),
                services: [(service_key.clone(), ports.clone())].into(),
                status: if ready {
                    workload::WorkloadStatus::Healthy as i32
                } else {
                    workload::WorkloadStatus::Unhealthy as i32
                },
                ..Default::default()
            });
        }
    }
    out
}

/// The service's ports mapped to the slice's: the slice lists target ports under the service
/// port's name.
fn slice_ports(
    service: &Service,
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> workload::PortList {
    let service_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten();
    let ports = service_ports
        .filter_map(|service_port| {
            let wanted = service_port.name.as_deref().unwrap_or_default();
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or_default() == wanted)?;
            Some(workload::Port {
                service_port: service_port.port as u32,
                target_port: slice_port.port? as u32,
            })
        })
        .collect();
    workload::PortList { ports }
}

/// For each pod key, the keys (`namespace/name`) of the selector-scoped policies selecting it.
fn selected_policies(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pod_key, pod) in &index.pods {
        let pod_labels = labels(&pod.metadata);
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        for (key, policy) in &index.authorization_policies {
            let spec = &policy.spec;
            if !spec.target_refs.is_empty() || spec.target_ref.is_some() {
                continue;
            }
            let policy_namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(selector) = &spec.selector
                && (policy_namespace == namespace || policy_namespace == settings.root_namespace)
                && selects(&selector.match_labels, &pod_labels)
            {
                out.entry(pod_key.clone()).or_default().push(key.clone());
            }
        }
        for (key, pa) in &index.peer_authentications {
            let pa_namespace = pa.metadata.namespace.as_deref().unwrap_or("default");
            if let Some(selector) = &pa.spec.selector
                && pa_namespace == namespace
                && selects(&selector.match_labels, &pod_labels)
            {
                let name = key.split_once('/').map_or(key.as_str(), |(_, n)| n);
                out.entry(pod_key.clone())
                    .or_default()
                    .push(format!("{pa_namespace}/{}", converted_name(name)));
            }
        }
    }
    out
}

fn converted_name(name: &str) -> String {
    format!(
        "{}{name}",
        weft_policy::l4::PEER_AUTHENTICATION_POLICY_PREFIX
    )
}

fn string_match(value: &str) -> security::StringMatch {
    use security::string_match::MatchType;
    let match_type = if value == "*" {
        MatchType::Presence(())
    } else if let Some(suffix) = value.strip_prefix('*') {
        MatchType::Suffix(suffix.to_string())
    } else if let Some(prefix) = value.strip_suffix('*') {
        MatchType::Prefix(prefix.to_string())
    } else {
        MatchType::Exact(value.to_string())
    };
    security::StringMatch {
        match_type: Some(match_type),
    }
}

fn cidr(value: &str) -> Option<security::Address> {
    let (ip, length) = match value.split_once('/') {
        Some((ip, length)) => (ip.parse::<IpAddr>().ok()?, length.parse().ok()?),
        None => {
            let ip: IpAddr = value.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    Some(security::Address {
        address: ip_bytes(ip),
        length,
    })
}

fn principal(value: &str) -> String {
    value.strip_prefix("spiffe://").unwrap_or(value).to_string()
}

/// The L4 translation of one rule: clauses ANDed, each clause's matches ORed. `None` when the
/// rule cannot be enforced at L4 and must not match at all (an ALLOW rule with L7 attributes).
fn rule_to_l4(rule: &Rule, action: AuthorizationAction) -> Option<security::Rule> {
    let mut clauses = Vec::new();
    let mut has_l7 = false;
    if let Some(from) = &rule.from {
        let mut matches = Vec::new();
        for source in from.iter().filter_map(|f| f.source.as_ref()) {
            if !source.request_principals.is_empty() || !source.not_request_principals.is_empty() {
                has_l7 = true;
            }
            matches.push(security::Match {
                principals: source
                    .principals
                    .iter()
                    .map(|p| string_match(&principal(p)))
                    .collect(),
                not_principals: source
                    .not_principals
                    .iter()
                    .map(|p| string_match(&principal(p)))
                    .collect(),
                namespaces: source.namespaces.iter().map(|n| string_match(n)).collect(),
                not_namespaces: source
                    .not_namespaces
                    .iter()
                    .map(|n| string_match(n))
                    .collect(),
                service_accounts: source
                    .service_accounts
                    .iter()
                    .filter_map(|sa| sa.split_once('/'))
                    .map(|(ns, sa)| security::ServiceAccountMatch {
                        namespace: ns.into(),
                        service_account: sa.into(),
                    })
                    .collect(),
                not_service_accounts: source
                    .not_service_accounts
                    .iter()
                    .filter_map(|sa| sa.split_once('/'))
                    .map(|(ns, sa)| security::ServiceAccountMatch {
                        namespace: ns.into(),
                        service_account: sa.into(),
                    })
                    .collect(),
                source_ips: source
                    .ip_blocks
                    .iter()
                    .chain(&source.remote_ip_blocks)
                    .filter_map(|c| cidr(c))
                    .collect(),
                not_source_ips: source
                    .not_ip_blocks
                    .iter()
                    .chain(&source.not_remote_ip_blocks)
                    .filter_map(|c| cidr(c))
                    .collect(),
                ..Default::default()
            });
        }
        if !matches.is_empty() {
            clauses.push(security::Clause { matches });
        }
    }
    if let Some(to) = &rule.to {
        let mut matches = Vec::new();
        for operation in to.iter().filter_map(|t| t.operation.as_ref()) {
            if !operation.hosts.is_empty()
                || !operation.not_hosts.is_empty()
                || !operation.methods.is_empty()
                || !operation.not_methods.is_empty()
                || !operation.paths.is_empty()
                || !operation.not_paths.is_empty()
            {
                has_l7 = true;
            }
            matches.push(security::Match {
                destination_ports: operation
                    .ports
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect(),
                not_destination_ports: operation
                    .not_ports
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect(),
                ..Default::default()
            });
        }
        if !matches.is_empty() {
            clauses.push(security::Clause { matches });
        }
    }
    for condition in &rule.when {
        let values = &condition.values;
        let not_values = &condition.not_values;
        let m = match condition.key.as_str() {
            "source.ip" | "remote.ip" => security::Match {
                source_ips: values.iter().filter_map(|c| cidr(c)).collect(),
                not_source_ips: not_values.iter().filter_map(|c| cidr(c)).collect(),
                ..Default::default()
            },
            "source.namespace" => security::Match {
                namespaces: values.iter().map(|v| string_match(v)).collect(),
                not_namespaces: not_values.iter().map(|v| string_match(v)).collect(),
                ..Default::default()
            },
            "source.principal" => security::Match {
                principals: values.iter().map(|v| string_match(&principal(v))).collect(),
                not_principals: not_values
                    .iter()
                    .map(|v| string_match(&principal(v)))
                    .collect(),
                ..Default::default()
            },
            "destination.ip" => security::Match {
                destination_ips: values.iter().filter_map(|c| cidr(c)).collect(),
                not_destination_ips: not_values.iter().filter_map(|c| cidr(c)).collect(),
                ..Default::default()
            },
            "destination.port" => security::Match {
                destination_ports: values.iter().filter_map(|p| p.parse().ok()).collect(),
                not_destination_ports: not_values.iter().filter_map(|p| p.parse().ok()).collect(),
                ..Default::default()
            },
            _ => {
                has_l7 = true;
                continue;
            }
        };
        clauses.push(security::Clause { matches: vec![m] });
    }
    if has_l7 && action == AuthorizationAction::Allow {
        // An ALLOW that depends on what only L7 can see must not allow anything at L4.
        return None;
    }
    Some(security::Rule { clauses })
}

/// Every `istio.security.Authorization` for node agents, keyed `namespace/name`.
pub fn authorizations(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, security::Authorization> {
    let mut out = BTreeMap::new();
    for policy in index.authorization_policies.values() {
        if let Some(translated) = authorization(policy, settings) {
            out.insert(
                format!("{}/{}", translated.namespace, translated.name),
                translated,
            );
        }
    }
    for pa in index.peer_authentications.values() {
        let namespace = pa
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pa.metadata.name.clone().unwrap_or_default();
        let mode = |m: Option<&crate::model::security::MutualTls>| match m.and_then(|m| m.mode) {
            Some(MtlsMode::Strict) => PolicyMtlsMode::Strict,
            Some(MtlsMode::Permissive) => PolicyMtlsMode::Permissive,
            Some(MtlsMode::Disable) => PolicyMtlsMode::Disable,
            Some(MtlsMode::Unset) | None => PolicyMtlsMode::Unset,
        };
        let scope = if pa.spec.selector.is_some() {
            PolicyScope::WorkloadSelector
        } else if namespace == settings.root_namespace {
            PolicyScope::Global
        } else {
            PolicyScope::Namespace
        };
        let effective = EffectivePeerAuthentication {
            name: name.clone(),
            namespace: namespace.clone(),
            scope,
            mode: mode(pa.spec.mtls.as_ref()),
            port_level: pa
                .spec
                .port_level_mtls
                .iter()
                .flatten()
                .filter_map(|(port, m)| Some((u16::try_from(*port).ok()?, mode(Some(m)))))
                .collect(),
        };
        let Some(policy) = peer_authentication_policy(&effective) else {
            continue;
        };
        out.insert(
            format!("{}/{}", policy.namespace, policy.name),
            l4_to_proto(&policy),
        );
    }
    out
}

fn authorization(
    policy: &AuthorizationPolicy,
    settings: &MeshSettings,
) -> Option<security::Authorization> {
    let spec = &policy.spec;
    // targetRef(s) policies belong to waypoints, not to node agents.
    if !spec.target_refs.is_empty() || spec.target_ref.is_some() {
        return None;
    }
    let action = spec.action.unwrap_or_default();
    let proto_action = match action {
        AuthorizationAction::Allow => security::Action::Allow,
        AuthorizationAction::Deny => security::Action::Deny,
        // AUDIT and CUSTOM are not enforced by node agents.
        AuthorizationAction::Audit | AuthorizationAction::Custom => return None,
    };
    let namespace = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let scope = if spec.selector.is_some() {
        security::Scope::WorkloadSelector
    } else if namespace == settings.root_namespace {
        security::Scope::Global
    } else {
        security::Scope::Namespace
    };
    let rules = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| rule_to_l4(rule, action))
        .collect();
    Some(security::Authorization {
        name: policy.metadata.name.clone().unwrap_or_default(),
        namespace,
        scope: scope as i32,
        action: proto_action as i32,
        rules,
        dry_run: false,
    })
}

/// The proto form of a policy built by the policy crate (PeerAuthentication's DENY rule).
fn l4_to_proto(policy: &weft_policy::l4::Authorization) -> security::Authorization {
    use weft_policy::WildcardMatch;
    let strings = |list: &[WildcardMatch]| -> Vec<security::StringMatch> {
        list.iter()
            .map(|m| {
                use security::string_match::MatchType;
                security::StringMatch {
                    match_type: Some(match m {
                        WildcardMatch::Exact(s) => MatchType::Exact(s.clone()),
                        WildcardMatch::Prefix(s) => MatchType::Prefix(s.clone()),
                        WildcardMatch::Suffix(s) => MatchType::Suffix(s.clone()),
                        WildcardMatch::Presence => MatchType::Presence(()),
                    }),
                }
            })
            .collect()
    };
    security::Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: match policy.scope {
            PolicyScope::Global => security::Scope::Global,
            PolicyScope::Namespace => security::Scope::Namespace,
            PolicyScope::WorkloadSelector => security::Scope::WorkloadSelector,
        } as i32,
        action: match policy.action {
            weft_policy::PolicyAction::Allow => security::Action::Allow,
            weft_policy::PolicyAction::Deny => security::Action::Deny,
        } as i32,
        rules: policy
            .rules
            .iter()
            .map(|rule| security::Rule {
                clauses: rule
                    .clauses
                    .iter()
                    .map(|clause| security::Clause {
                        matches: clause
                            .matches
                            .iter()
                            .map(|m| security::Match {
                                principals: strings(&m.principals),
                                not_principals: strings(&m.not_principals),
                                namespaces: strings(&m.namespaces),
                                not_namespaces: strings(&m.not_namespaces),
                                destination_ports: m
                                    .destination_ports
                                    .iter()
                                    .map(|p| u32::from(*p))
                                    .collect(),
                                not_destination_ports: m
                                    .not_destination_ports
                                    .iter()
                                    .map(|p| u32::from(*p))
                                    .collect(),
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: policy.dry_run,
    }
}

#[cfg(test)]
mod tests;
