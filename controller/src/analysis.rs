//! Cross-resource checks, as `istioctl analyze` runs them (istio/istio
//! `pkg/config/analysis/analyzers`), with its message codes: routes to hosts, ports, subsets and
//! gateways that do not exist (IST0101), VirtualServices that claim the same host for the mesh
//! (IST0109), destinations that need a port (IST0112), policies whose selector matches no
//! workload (IST0127), VirtualService hosts a Gateway does not serve (IST0132), subsets that select
//! no pod (IST0173), DestinationRules for unknown hosts (IST0174), and policies attached to
//! something that is not a waypoint (IST0167). Every finding is a warning: a configuration that
//! references something missing still loads, as it does in Istio. A pure function of the index.

use std::collections::{BTreeMap, BTreeSet};

use weft_istio::labels::EXPORT_TO;

use crate::index::ConfigIndex;
use crate::model::ResourceKind;
use crate::model::gateway_api::WAYPOINT_GATEWAY_CLASS;
use crate::model::networking::{Destination, MESH_GATEWAY, VirtualService};
use crate::translate::MeshSettings;
use crate::translate::resolve::{
    enrolled, labels, name_of, namespace_of, qualify_host, selects, service_ports,
};
use crate::validation::names::hosts_overlap;
use crate::validation::{Code, FieldWarning, codes};

/// One finding about one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
    pub warning: FieldWarning,
}

struct Report {
    messages: Vec<Message>,
}

impl Report {
    fn add(
        &mut self,
        kind: ResourceKind,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        path: impl Into<String>,
        code: Code,
        reason: String,
    ) {
        self.messages.push(Message {
            kind,
            namespace: namespace_of(meta).to_owned(),
            name: name_of(meta).to_owned(),
            warning: FieldWarning {
                path: path.into(),
                reason,
                code: Some(code),
            },
        });
    }
}

fn not_found(what: &str, value: &str) -> String {
    format!("Referenced {what} not found: {value:?}")
}

/// A host the mesh knows: a Service or a ServiceEntry host, with its ports and the namespaces
/// it is visible in (`None`: every namespace).
struct KnownHost {
    host: String,
    ports: Vec<u32>,
    visible_in: Option<BTreeSet<String>>,
}

impl KnownHost {
    fn visible_from(&self, namespace: &str) -> bool {
        self.visible_in
            .as_ref()
            .is_none_or(|namespaces| namespaces.contains(namespace))
    }
}

/// The hosts the mesh knows, by lower-cased name, and the wildcard ones (`*.example.com`).
#[derive(Default)]
struct KnownHosts {
    exact: std::collections::HashMap<String, Vec<KnownHost>>,
    wildcards: Vec<KnownHost>,
}

impl KnownHosts {
    fn push(&mut self, host: KnownHost) {
        if host.host.starts_with('*') {
            self.wildcards.push(host);
        } else {
            self.exact
                .entry(host.host.to_ascii_lowercase())
                .or_default()
                .push(host);
        }
    }
}

/// Istio's `InitServiceEntryHostMap`: Services (visible as their `exportTo` annotation says)
/// and ServiceEntry hosts (visible as their `exportTo` says).
fn known_hosts(index: &ConfigIndex, settings: &MeshSettings) -> KnownHosts {
    let scope = |export_to: &[String], own: &str| -> Option<BTreeSet<String>> {
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            return None;
        }
        Some(
            export_to
                .iter()
                .map(|e| if e == "." { own.to_owned() } else { e.clone() })
                .collect(),
        )
    };
    let mut hosts = KnownHosts::default();
    for service in index.services.values() {
        let namespace = namespace_of(&service.metadata);
        let export_to: Vec<String> = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXPORT_TO))
            .map(|a| a.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default();
        hosts.push(KnownHost {
            host: crate::translate::resolve::hostname(service, settings),
            ports: service_ports(service)
                .iter()
                .filter_map(|p| u32::try_from(p.port).ok())
                .collect(),
            visible_in: scope(&export_to, namespace),
        });
    }
    for entry in index.service_entries.values() {
        let namespace = namespace_of(&entry.metadata);
        for host in &entry.spec.hosts {
            hosts.push(KnownHost {
                host: qualify_host(settings, host, namespace),
                ports: entry.spec.ports.iter().map(|p| p.number).collect(),
                visible_in: scope(&entry.spec.export_to, namespace),
            });
        }
    }
    hosts
}

/// Istio's `GetDestinationHost`: the host a destination of `namespace` names, exactly or under
/// a wildcard ServiceEntry host.
fn find_host<'a>(
    hosts: &'a KnownHosts,
    settings: &MeshSettings,
    namespace: &str,
    host: &str,
) -> Option<&'a KnownHost> {
    let fqdn = qualify_host(settings, host, namespace);
    hosts
        .exact
        .get(&fqdn.to_ascii_lowercase())
        .and_then(|known| known.iter().find(|h| h.visible_from(namespace)))
        .or_else(|| {
            hosts
                .wildcards
                .iter()
                .filter(|h| h.visible_from(namespace))
                .filter_map(|h| h.host.strip_prefix('*').map(|suffix| (h, suffix)))
                .find(|(_, suffix)| fqdn.trim_start_matches('*').ends_with(suffix))
                .map(|(h, _)| h)
        })
}

/// Every destination of a VirtualService, with its field path and whether it is a mirror.
fn destinations(vs: &VirtualService) -> Vec<(String, &Destination, bool)> {
    let mut out = Vec::new();
    for (i, route) in vs.spec.http.iter().enumerate() {
        for (j, r) in route.route.iter().enumerate() {
            if let Some(d) = &r.destination {
                out.push((format!("spec.http[{i}].route[{j}].destination"), d, false));
            }
        }
        if let Some(mirror) = &route.mirror {
            out.push((format!("spec.http[{i}].mirror"), mirror, true));
        }
        for (j, mirror) in route.mirrors.iter().enumerate() {
            if let Some(d) = &mirror.destination {
                out.push((format!("spec.http[{i}].mirrors[{j}].destination"), d, true));
            }
        }
    }
    for (i, route) in vs.spec.tcp.iter().enumerate() {
        for (j, r) in route.route.iter().enumerate() {
            if let Some(d) = &r.destination {
                out.push((format!("spec.tcp[{i}].route[{j}].destination"), d, false));
            }
        }
    }
    for (i, route) in vs.spec.tls.iter().enumerate() {
        for (j, r) in route.route.iter().enumerate() {
            if let Some(d) = &r.destination {
                out.push((format!("spec.tls[{i}].route[{j}].destination"), d, false));
            }
        }
    }
    out
}

/// Runs every check over the index.
pub fn analyze(index: &ConfigIndex, settings: &MeshSettings) -> Vec<Message> {
    let mut report = Report {
        messages: Vec::new(),
    };
    let hosts = known_hosts(index, settings);
    virtual_services(&mut report, index, settings, &hosts);
    conflicting_hosts(&mut report, index, settings);
    destination_rules(&mut report, index, settings, &hosts);
    authorization_policies(&mut report, index, settings);
    report.messages.sort();
    report.messages.dedup();
    report.messages
}

/// Istio's `DestinationHostAnalyzer`, `DestinationRuleAnalyzer` and `GatewayAnalyzer`.
fn virtual_services(
    report: &mut Report,
    index: &ConfigIndex,
    settings: &MeshSettings,
    hosts: &KnownHosts,
) {
    // (host as the DestinationRule's namespace qualifies it, subset) pairs.
    let subsets: BTreeSet<(String, String)> = index
        .destination_rules
        .values()
        .flat_map(|dr| {
            let host = qualify_host(settings, &dr.spec.host, namespace_of(&dr.metadata));
            dr.spec
                .subsets
                .iter()
                .map(move |s| (host.clone(), s.name.clone()))
        })
        .collect();
    for vs in index.virtual_services.values() {
        let namespace = namespace_of(&vs.metadata);
        for (path, destination, mirror) in destinations(vs) {
            let what = if mirror { "mirror host" } else { "host" };
            let Some(known) = find_host(hosts, settings, namespace, &destination.host) else {
                report.add(
                    ResourceKind::VirtualService,
                    &vs.metadata,
                    format!("{path}.host"),
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    not_found(what, &destination.host),
                );
                continue;
            };
            match &destination.port {
                None if known.ports.len() > 1 => report.add(
                    ResourceKind::VirtualService,
                    &vs.metadata,
                    format!("{path}.port"),
                    codes::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
                    format!(
                        "This VirtualService routes to a service {:?} that exposes multiple ports {:?}. Specifying a port in the destination is required to disambiguate.",
                        destination.host, known.ports
                    ),
                ),
                Some(port) if !known.ports.contains(&port.number) => report.add(
                    ResourceKind::VirtualService,
                    &vs.metadata,
                    format!("{path}.port.number"),
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    not_found(
                        "host:port",
                        &format!("{}:{}", destination.host, port.number),
                    ),
                ),
                _ => {}
            }
            if let Some(subset) = destination.subset.as_deref().filter(|s| !s.is_empty()) {
                let host = qualify_host(settings, &destination.host, namespace);
                if !subsets.contains(&(host, subset.to_owned())) {
                    let what = if mirror {
                        "mirror+subset in destinationrule"
                    } else {
                        "host+subset in destinationrule"
                    };
                    report.add(
                        ResourceKind::VirtualService,
                        &vs.metadata,
                        format!("{path}.subset"),
                        codes::REFERENCED_RESOURCE_NOT_FOUND,
                        not_found(what, &format!("{}+{subset}", destination.host)),
                    );
                }
            }
        }
        gateways(report, index, vs);
    }
}

/// `namespace/name` of a gateway reference (`name`, `namespace/name` or the legacy
/// `name.namespace`).
fn gateway_key(namespace: &str, reference: &str) -> String {
    match reference.split_once('/') {
        Some((ns, name)) => format!("{ns}/{name}"),
        None => match reference.split_once('.') {
            Some((name, rest)) => format!("{}/{name}", rest.split('.').next().unwrap_or(rest)),
            None => format!("{namespace}/{reference}"),
        },
    }
}

fn gateways(report: &mut Report, index: &ConfigIndex, vs: &VirtualService) {
    let namespace = namespace_of(&vs.metadata);
    for (i, reference) in vs.spec.gateways.iter().enumerate() {
        if reference == MESH_GATEWAY {
            continue;
        }
        let key = gateway_key(namespace, reference);
        let gateway_hosts: Option<Vec<String>> =
            match (index.istio_gateways.get(&key), index.gateways.get(&key)) {
                (Some(gateway), _) => Some(
                    gateway
                        .spec
                        .servers
                        .iter()
                        .flat_map(|s| &s.hosts)
                        .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_owned())
                        .collect(),
                ),
                (None, Some(gateway)) => Some(
                    gateway
                        .spec
                        .listeners
                        .iter()
                        .map(|l| l.hostname.clone().unwrap_or_else(|| "*".to_owned()))
                        .collect(),
                ),
                (None, None) => None,
            };
        let Some(gateway_hosts) = gateway_hosts else {
            report.add(
                ResourceKind::VirtualService,
                &vs.metadata,
                format!("spec.gateways[{i}]"),
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                not_found("gateway", reference),
            );
            continue;
        };
        let missing: Vec<&String> = vs
            .spec
            .hosts
            .iter()
            .filter(|h| !gateway_hosts.iter().any(|g| hosts_overlap(g, h)))
            .collect();
        if !missing.is_empty() {
            report.add(
                ResourceKind::VirtualService,
                &vs.metadata,
                format!("spec.gateways[{i}]"),
                codes::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                format!(
                    "one or more host {missing:?} defined in VirtualService {namespace}/{} not found in Gateway {key}.",
                    name_of(&vs.metadata)
                ),
            );
        }
    }
}

/// Istio's `ConflictingMeshGatewayHostsAnalyzer`: two VirtualServices bound to the mesh that
/// claim one host in one scope (namespace they are exported to, or `*`).
fn conflicting_hosts(report: &mut Report, index: &ConfigIndex, settings: &MeshSettings) {
    let mut by_scope: BTreeMap<(String, String), Vec<&VirtualService>> = BTreeMap::new();
    for vs in index.virtual_services.values() {
        let mesh =
            vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == MESH_GATEWAY);
        if !mesh {
            continue;
        }
        let namespace = namespace_of(&vs.metadata);
        let scopes: BTreeSet<String> =
            if vs.spec.export_to.is_empty() || vs.spec.export_to.iter().any(|e| e == "*") {
                BTreeSet::from(["*".to_owned()])
            } else {
                vs.spec
                    .export_to
                    .iter()
                    .map(|e| {
                        if e == "." {
                            namespace.to_owned()
                        } else {
                            e.clone()
                        }
                    })
                    .collect()
            };
        for scope in scopes {
            for host in &vs.spec.hosts {
                by_scope
                    .entry((scope.clone(), qualify_host(settings, host, namespace)))
                    .or_default()
                    .push(vs);
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host), list) in &by_scope {
        let mut all = list.clone();
        if scope != "*" {
            for ((other_scope, other_host), others) in &by_scope {
                if other_scope == "*" && hosts_overlap(host, other_host) {
                    all.extend(others);
                }
            }
        }
        if all.len() < 2 {
            continue;
        }
        let mut names: Vec<String> = all
            .iter()
            .map(|vs| format!("{}/{}", namespace_of(&vs.metadata), name_of(&vs.metadata)))
            .collect();
        names.sort();
        names.dedup();
        if names.len() < 2 {
            continue;
        }
        for vs in all {
            let key = format!("{}/{}", namespace_of(&vs.metadata), name_of(&vs.metadata));
            if !reported.insert(key) {
                continue;
            }
            report.add(
                ResourceKind::VirtualService,
                &vs.metadata,
                "spec.hosts",
                codes::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {scope}/{host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                    names.join(",")
                ),
            );
        }
    }
}

/// Istio's `SubsetSelectPodAnalyzer` (IST0173, IST0174).
fn destination_rules(
    report: &mut Report,
    index: &ConfigIndex,
    settings: &MeshSettings,
    hosts: &KnownHosts,
) {
    for dr in index.destination_rules.values() {
        let namespace = namespace_of(&dr.metadata);
        if find_host(hosts, settings, namespace, &dr.spec.host).is_none() {
            report.add(
                ResourceKind::DestinationRule,
                &dr.metadata,
                "spec.host",
                codes::UNKNOWN_DESTINATION_RULE_HOST,
                format!(
                    "The host {} defined in the DestinationRule does not match any services in the mesh.",
                    dr.spec.host
                ),
            );
            continue;
        }
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let selected = index.pods.values().any(|pod| {
                pod.metadata
                    .labels
                    .as_ref()
                    .map_or(subset.labels.is_empty(), |labels| {
                        selects(&subset.labels, labels)
                    })
            });
            if !selected {
                report.add(
                    ResourceKind::DestinationRule,
                    &dr.metadata,
                    format!("spec.subsets[{i}]"),
                    codes::DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
                    format!(
                        "The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).",
                        subset.name
                    ),
                );
            }
        }
    }
}

fn selector_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Istio's `AuthorizationPoliciesAnalyzer` (IST0127 for selectors that match no workload in the
/// mesh, IST0101 for namespaces that do not exist), and targets that do not exist (IST0101) or
/// are not waypoints (IST0167).
fn authorization_policies(report: &mut Report, index: &ConfigIndex, settings: &MeshSettings) {
    let mesh_pods: Vec<_> = index.pods.values().filter(|p| enrolled(index, p)).collect();
    for policy in index.authorization_policies.values() {
        let namespace = namespace_of(&policy.metadata);
        let targeted = policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty();
        let mesh_wide = namespace == settings.root_namespace;
        // The mesh's pods this policy can select: every one, or its namespace's.
        let local: Vec<_>;
        let in_scope: &[&k8s_openapi::api::core::v1::Pod] = if mesh_wide {
            &mesh_pods
        } else {
            local = crate::index::in_namespace(&index.pods, namespace)
                .filter(|p| namespace_of(&p.metadata) == namespace && enrolled(index, p))
                .collect();
            &local
        };
        match &policy.spec.selector {
            Some(selector) => {
                let matched = in_scope
                    .iter()
                    .any(|pod| selects(&selector.match_labels, &labels(&pod.metadata)));
                if !matched {
                    report.add(
                        ResourceKind::AuthorizationPolicy,
                        &policy.metadata,
                        "spec.selector",
                        codes::NO_MATCHING_WORKLOADS_FOUND,
                        format!(
                            "No matching workloads for this resource with the following labels: {}",
                            selector_text(&selector.match_labels)
                        ),
                    );
                }
            }
            None if !targeted && !mesh_wide && in_scope.is_empty() => {
                report.add(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    "spec",
                    codes::NO_MATCHING_WORKLOADS_FOUND,
                    "No matching workloads for this resource with the following labels: "
                        .to_owned(),
                );
            }
            None => {}
        }
        for (i, rule) in policy.spec.rules.iter().flatten().enumerate() {
            for (j, from) in rule.from.iter().flatten().enumerate() {
                let Some(source) = &from.source else { continue };
                for (field, values) in [
                    ("namespaces", &source.namespaces),
                    ("notNamespaces", &source.not_namespaces),
                ] {
                    for (k, value) in values.iter().enumerate() {
                        if !index
                            .namespaces
                            .keys()
                            .any(|ns| namespace_matches(ns, value))
                        {
                            report.add(
                                ResourceKind::AuthorizationPolicy,
                                &policy.metadata,
                                format!("spec.rules[{i}].from[{j}].source.{field}[{k}]"),
                                codes::REFERENCED_RESOURCE_NOT_FOUND,
                                not_found("namespace", value),
                            );
                        }
                    }
                }
            }
        }
        let targets = policy
            .spec
            .target_ref
            .iter()
            .map(|t| ("spec.targetRef".to_owned(), t))
            .chain(
                policy
                    .spec
                    .target_refs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)),
            );
        for (path, target) in targets {
            let key = format!("{namespace}/{}", target.name);
            let (exists, not_a_waypoint) = match target.kind.as_str() {
                "Gateway" => match index.gateways.get(&key) {
                    Some(gw) => (true, gw.spec.gateway_class_name != WAYPOINT_GATEWAY_CLASS),
                    None => (false, false),
                },
                "GatewayClass" => (
                    target.name == WAYPOINT_GATEWAY_CLASS
                        || index.gateway_classes.contains_key(&target.name),
                    false,
                ),
                "Service" => (index.services.contains_key(&key), false),
                "ServiceEntry" => (index.service_entries.contains_key(&key), false),
                _ => (true, false),
            };
            if !exists {
                report.add(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    path,
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    not_found(&target.kind.to_ascii_lowercase(), &target.name),
                );
            } else if not_a_waypoint {
                report.add(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    path,
                    codes::INEFFECTIVE_POLICY,
                    format!(
                        "The policy has no impact: Gateway {key} is not a waypoint (class {WAYPOINT_GATEWAY_CLASS})."
                    ),
                );
            }
        }
    }
}

/// Istio's `namespaceMatch`: exact, `*`, a `*` prefix or a `*` suffix.
fn namespace_matches(namespace: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return namespace.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return namespace.starts_with(prefix);
    }
    namespace.eq_ignore_ascii_case(pattern)
}

#[cfg(test)]
mod tests;
