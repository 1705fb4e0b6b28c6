//! Where workloads are and how a service prefers to reach them, as istiod's ambient index sends
//! them to ztunnel: a pod's locality is its node's (`nodes.go`, `getPodLocality`), and a
//! service's routing preferences come from `internalTrafficPolicy` and its traffic
//! distribution (`services.go`, `constructService`; `model.GetTrafficDistribution`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use weft_proto::istio::workload::{self, load_balancing};

use crate::index::ConfigIndex;

/// A node's region, as Kubernetes labels it.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// A node's zone, as Kubernetes labels it.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// A node's subzone, as Istio labels it (Kubernetes has no such level).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// The cluster a workload runs in, as Istio labels it.
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// The network a workload is on, as Istio labels it.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// The node a pod runs on, as Kubernetes labels a node (and istiod a pod's endpoint).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Istio's annotation asking for a traffic distribution, on a Service, a ServiceEntry or their
/// namespace; the older way of saying `spec.trafficDistribution`.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";

/// istiod's `nodeLocality`: the node's topology labels; none when all three are unset.
pub fn node_locality(node: &Node) -> Option<workload::Locality> {
    let labels = node.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).cloned().unwrap_or_default();
    let locality = workload::Locality {
        region: label(REGION_LABEL),
        zone: label(ZONE_LABEL),
        subzone: label(SUBZONE_LABEL),
    };
    (!locality.region.is_empty() || !locality.zone.is_empty() || !locality.subzone.is_empty())
        .then_some(locality)
}

/// istiod's `getPodLocality`: the locality of the node the pod is scheduled on; none before it
/// is scheduled or while its node is unknown. istiod's ambient index does not read the pod's
/// `istio-locality` label (its sidecar registry does), so neither does this.
pub fn pod_locality(index: &ConfigIndex, pod: &Pod) -> Option<workload::Locality> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    node_locality(index.nodes.get(node)?)
}

/// istiod's `SplitLocalityLabel` as it reads a WorkloadEntry's or ServiceEntry endpoint's
/// `locality` (`getWorkloadEntryLocality`): `region/zone/subzone`, split at `/`, missing parts
/// empty and parts after the third dropped; none at all when every part is empty.
pub fn split_locality(value: Option<&str>) -> Option<workload::Locality> {
    let mut parts = value.unwrap_or_default().split('/');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    let (region, zone, subzone) = (next(), next(), next());
    (!region.is_empty() || !zone.is_empty() || !subzone.is_empty()).then_some(workload::Locality {
        region,
        zone,
        subzone,
    })
}

/// The labels istiod adds to a workload's own (`AugmentLabels`), which `failoverPriority`
/// compares: its locality's non-empty parts, its cluster, its node and its network (none when
/// the mesh is one network, as istiod leaves it unlabelled then).
pub fn topology_labels(
    locality: Option<&workload::Locality>,
    cluster_id: &str,
    node: Option<&str>,
    network: Option<&str>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut add = |key: &str, value: &str| {
        if !value.is_empty() {
            labels.insert(key.to_owned(), value.to_owned());
        }
    };
    if let Some(locality) = locality {
        add(REGION_LABEL, &locality.region);
        add(ZONE_LABEL, &locality.zone);
        add(SUBZONE_LABEL, &locality.subzone);
    }
    add(CLUSTER_LABEL, cluster_id);
    add(HOSTNAME_LABEL, node.unwrap_or_default());
    add(NETWORK_LABEL, network.unwrap_or_default());
    labels
}

/// The network of a workload, in istiod's order (`Network`, `networkFromSystemNamespace`):
/// `own` (a WorkloadEntry's or ServiceEntry endpoint's `network`), else the object's
/// `topology.istio.io/network` label, else its namespace's, else the root namespace's (the
/// cluster's network); none when none is set.
pub fn workload_network<'a>(
    index: &'a ConfigIndex,
    root_namespace: &str,
    metadata: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    own: Option<&'a str>,
) -> Option<&'a str> {
    let label = |labels: Option<&'a BTreeMap<String, String>>| {
        labels
            .and_then(|l| l.get(NETWORK_LABEL))
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    };
    let namespace = |name: &str| index.namespaces.get(name).map(|n| &n.metadata);
    own.filter(|n| !n.is_empty())
        .or_else(|| label(metadata.labels.as_ref()))
        .or_else(|| label(namespace(super::namespace_of(metadata))?.labels.as_ref()))
        .or_else(|| label(namespace(root_namespace)?.labels.as_ref()))
}

/// The traffic distributions istiod tells apart (`model.TrafficDistribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficDistribution {
    Any,
    /// `PreferSameZone`, and `PreferClose`, its older name.
    PreferSameZone,
    PreferSameNode,
}

/// istiod's `GetTrafficDistribution`: the Service's `spec.trafficDistribution` first (a value
/// it does not know is passed over), then the object's annotation, then its namespace's (an
/// annotation is read without regard to case, and a value it does not know means `Any`).
pub fn traffic_distribution(
    spec: Option<&str>,
    annotations: Option<&BTreeMap<String, String>>,
    namespace_annotations: Option<&BTreeMap<String, String>>,
) -> TrafficDistribution {
    match spec {
        Some("PreferSameZone" | "PreferClose") => return TrafficDistribution::PreferSameZone,
        Some("PreferSameNode") => return TrafficDistribution::PreferSameNode,
        _ => {}
    }
    let annotation = |map: Option<&BTreeMap<String, String>>| {
        map.and_then(|m| m.get(TRAFFIC_DISTRIBUTION_ANNOTATION))
            .map(|v| v.to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    };
    let Some(value) = annotation(annotations).or_else(|| annotation(namespace_annotations)) else {
        return TrafficDistribution::Any;
    };
    match value.as_str() {
        "preferclose" | "prefersamezone" => TrafficDistribution::PreferSameZone,
        "prefersamenode" => TrafficDistribution::PreferSameNode,
        _ => TrafficDistribution::Any,
    }
}

/// The load balancing of a traffic distribution (istiod's `preferSameZoneLoadBalancer` and
/// `preferSameNodeLoadBalancer`): closer endpoints first, failing over to the others. Istio
/// leaves the subzone out of `PreferSameZone` (and so of `PreferClose`).
pub fn distribution_load_balancing(
    distribution: TrafficDistribution,
) -> Option<workload::LoadBalancing> {
    use load_balancing::Scope;
    let scopes: &[Scope] = match distribution {
        TrafficDistribution::Any => return None,
        TrafficDistribution::PreferSameZone => &[Scope::Network, Scope::Region, Scope::Zone],
        TrafficDistribution::PreferSameNode => &[
            Scope::Network,
            Scope::Region,
            Scope::Zone,
            Scope::Subzone,
            Scope::Node,
        ],
    };
    Some(workload::LoadBalancing {
        routing_preference: scopes.iter().map(|s| *s as i32).collect(),
        mode: load_balancing::Mode::Failover as i32,
        ..Default::default()
    })
}

/// A Kubernetes Service's load balancing, as istiod's `constructService` decides it:
/// `internalTrafficPolicy: Local` keeps traffic on the client's node (`NODE`, `STRICT`: no
/// endpoint there, no connection), else the traffic distribution; `publishNotReadyAddresses`
/// lets endpoints that are not ready be chosen.
pub fn service_load_balancing(
    index: &ConfigIndex,
    service: &Service,
) -> Option<workload::LoadBalancing> {
    let spec = service.spec.as_ref();
    let local = spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local");
    let mut load_balancing = if local {
        Some(workload::LoadBalancing {
            routing_preference: vec![load_balancing::Scope::Node as i32],
            mode: load_balancing::Mode::Strict as i32,
            ..Default::default()
        })
    } else {
        distribution_load_balancing(traffic_distribution(
            spec.and_then(|s| s.traffic_distribution.as_deref()),
            service.metadata.annotations.as_ref(),
            namespace_annotations(index, &service.metadata),
        ))
    };
    if spec.and_then(|s| s.publish_not_ready_addresses) == Some(true) {
        load_balancing.get_or_insert_default().health_policy =
            load_balancing::HealthPolicy::AllowAll as i32;
    }
    load_balancing
}

/// The annotations of the object's namespace, which a traffic distribution is inherited from.
pub fn namespace_annotations<'a>(
    index: &'a ConfigIndex,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&'a BTreeMap<String, String>> {
    let namespace = super::namespace_of(metadata);
    index
        .namespaces
        .get(namespace)
        .and_then(|n| n.metadata.annotations.as_ref())
}
