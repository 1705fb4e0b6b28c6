//! Localities at the waypoint, as istiod gives them to a waypoint's Envoy: every endpoint's
//! locality and topology labels (`AugmentLabels`), each of the proxy's own pods with its
//! node's locality, and per cluster the locality load balancing in force, resolved as
//! istiod's `GetEffectiveLbSetting` resolves it (`pilot/pkg/networking/core/loadbalancer`):
//! the DestinationRule's `localityLbSetting` first, then the service's traffic distribution,
//! then the mesh's `localityLbSetting` (unset: enabled, nothing configured). The waypoint ranks
//! or weighs the endpoints relative to its own pod (`ApplyLocalityLoadBalancer`).

use k8s_openapi::api::core::v1::Pod;
use weft_proto::istio::workload;
use weft_proto::waypoint as wp;

use super::Compiler;
use crate::index::ConfigIndex;
use crate::model::networking::LocalityLbSetting;
use crate::translate::MeshSettings;
use crate::translate::agent::locality::{
    HOSTNAME_LABEL, NETWORK_LABEL, REGION_LABEL, SUBZONE_LABEL, TrafficDistribution, ZONE_LABEL,
    namespace_annotations, pod_locality, topology_labels, traffic_distribution, workload_network,
};
use crate::translate::resolve;

/// The `failoverPriority` istiod gives `PreferSameZone` (and `PreferClose`): same network,
/// region, zone; the subzone is left out.
const PREFER_SAME_ZONE: &[&str] = &[NETWORK_LABEL, REGION_LABEL, ZONE_LABEL];
/// The `failoverPriority` istiod gives `PreferSameNode`.
const PREFER_SAME_NODE: &[&str] = &[
    NETWORK_LABEL,
    REGION_LABEL,
    ZONE_LABEL,
    SUBZONE_LABEL,
    HOSTNAME_LABEL,
];

/// A cluster's locality load balancing, or `None` when it changes nothing:
/// - istiod's `GetEffectiveLbSetting`: the DestinationRule's `localityLbSetting` (none at all
///   when it says `enabled: false`), else the service's traffic distribution as a
///   `failoverPriority` that is always applied (`Force`), else the mesh's
///   `meshConfig.localityLbSetting` (none when it says `enabled: false`; unset, Istio's default:
///   enabled, nothing configured);
/// - `ApplyLocalityLoadBalancer`: `distribute` is carried alone (it excludes failover) and
///   needs no outlier detection; failover (by `failoverPriority`, `failover` or the default
///   region/zone/subzone ranking) needs outlier detection ("otherwise Envoy will never drop
///   down to a lower priority") unless forced.
pub(super) fn locality_load_balancing(
    setting: Option<&LocalityLbSetting>,
    distribution: TrafficDistribution,
    mesh: Option<&LocalityLbSetting>,
    outlier_detection: bool,
) -> Option<wp::LocalityLoadBalancing> {
    let owned;
    let (setting, force) = match setting {
        Some(setting) if setting.enabled == Some(false) => return None,
        Some(setting) => (setting, false),
        None if distribution != TrafficDistribution::Any => {
            let labels = match distribution {
                TrafficDistribution::PreferSameNode => PREFER_SAME_NODE,
                _ => PREFER_SAME_ZONE,
            };
            owned = LocalityLbSetting {
                failover_priority: labels.iter().map(|l| (*l).to_owned()).collect(),
                enabled: Some(true),
                ..Default::default()
            };
            (&owned, true)
        }
        None => match mesh {
            Some(mesh) if mesh.enabled == Some(false) => return None,
            Some(mesh) => (mesh, false),
            None => {
                owned = LocalityLbSetting::default();
                (&owned, false)
            }
        },
    };
    if !setting.distribute.is_empty() {
        return Some(wp::LocalityLoadBalancing {
            distribute: setting
                .distribute
                .iter()
                .map(|d| wp::locality_load_balancing::Distribute {
                    from: d.from.clone(),
                    to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })
                .collect(),
            ..Default::default()
        });
    }
    if !(outlier_detection || force) {
        return None;
    }
    Some(wp::LocalityLoadBalancing {
        failover_priority: setting.failover_priority.clone(),
        failover: setting
            .failover
            .iter()
            .map(|f| wp::locality_load_balancing::Failover {
                from: f.from.clone(),
                to: f.to.clone(),
            })
            .collect(),
        distribute: Vec::new(),
    })
}

/// The waypoint's form of a workload's locality.
pub(super) fn to_proto(locality: Option<workload::Locality>) -> Option<wp::Locality> {
    locality.map(|l| wp::Locality {
        region: l.region,
        zone: l.zone,
        subzone: l.subzone,
    })
}

/// A pod's locality (its node's) and its topology labels, as its endpoint carries them.
pub(super) fn pod_topology(
    index: &ConfigIndex,
    settings: &MeshSettings,
    pod: &Pod,
) -> (
    Option<wp::Locality>,
    std::collections::BTreeMap<String, String>,
) {
    let locality = pod_locality(index, pod);
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let network = workload_network(index, &settings.root_namespace, &pod.metadata, None);
    let labels = topology_labels(locality.as_ref(), &settings.cluster_id, node, network);
    (to_proto(locality), labels)
}

/// One of the proxy's own pods: its address, its node's locality, and its labels with the
/// topology labels over them (istiod's proxy labels, which `failoverPriority` compares
/// endpoints with; as in istiod, the network label is the proxy's network, whatever its pod's
/// labels say).
pub(super) fn proxy_instance(
    index: &ConfigIndex,
    settings: &MeshSettings,
    pod: &Pod,
) -> Option<wp::ProxyInstance> {
    let address = resolve::pod_ips(pod).into_iter().next()?;
    let (locality, topology) = pod_topology(index, settings, pod);
    let mut labels = resolve::labels(&pod.metadata);
    labels.extend(topology);
    Some(wp::ProxyInstance {
        address: address.to_string(),
        locality,
        labels,
    })
}

impl Compiler<'_, '_> {
    /// The traffic distribution of the service or ServiceEntry behind `host` (a ServiceEntry
    /// has only the annotation, its own or its namespace's).
    pub(super) fn host_distribution(&self, host: &str) -> TrafficDistribution {
        if let Some(service) = self.services.get(host) {
            return traffic_distribution(
                service
                    .spec
                    .as_ref()
                    .and_then(|s| s.traffic_distribution.as_deref()),
                service.metadata.annotations.as_ref(),
                namespace_annotations(self.index, &service.metadata),
            );
        }
        match self.entries.iter().find(|(h, _)| h == host) {
            Some((_, entry)) => traffic_distribution(
                None,
                entry.metadata.annotations.as_ref(),
                namespace_annotations(self.index, &entry.metadata),
            ),
            None => TrafficDistribution::Any,
        }
    }

    /// The waypoint's own pods (not terminated), each with its locality.
    pub(super) fn instances(&self) -> Vec<wp::ProxyInstance> {
        resolve::waypoint_pods(self.index, &self.waypoint)
            .filter(|pod| !resolve::pod_terminated(pod))
            .filter_map(|pod| proxy_instance(self.index, self.settings, pod))
            .collect()
    }
}

#[cfg(test)]
mod tests;
