//! Localities at the waypoint, as istiod gives them to a waypoint's Envoy: every endpoint's
//! locality and topology labels (`AugmentLabels`), each of the proxy's own pods with its
//! node's locality, and per cluster the locality load balancing in force, resolved as
//! istiod's `GetEffectiveLbSetting` resolves it (`pilot/pkg/networking/core/loadbalancer`):
//! the DestinationRule's `localityLbSetting` first, then the service's traffic distribution,
//! then the mesh's default (enabled, nothing configured). The waypoint ranks the endpoints
//! relative to its own pod (`ApplyLocalityLoadBalancer`).

use k8s_openapi::api::core::v1::Pod;
use weft_proto::istio::workload;
use weft_proto::waypoint as wp;

use super::Compiler;
use crate::index::ConfigIndex;
use crate::model::networking::LocalityLbSetting;
use crate::translate::agent::locality::{
    HOSTNAME_LABEL, NETWORK_LABEL, REGION_LABEL, SUBZONE_LABEL, TrafficDistribution, ZONE_LABEL,
    namespace_annotations, pod_locality, topology_labels, traffic_distribution,
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
///   `failoverPriority` that is always applied (`Force`), else the mesh's default;
/// - `ApplyLocalityLoadBalancer`: `distribute` excludes failover; failover (by
///   `failoverPriority`, `failover` or the default region/zone/subzone ranking) needs outlier
///   detection ("otherwise Envoy will never drop down to a lower priority") unless forced.
///
/// `distribute` is not carried (the waypoint does not weigh localities): it is reported, and
/// with it set no failover applies, as in istiod.
pub(super) fn locality_load_balancing(
    setting: Option<&LocalityLbSetting>,
    distribution: TrafficDistribution,
    outlier_detection: bool,
) -> Option<wp::LocalityLoadBalancing> {
    let owned;
    let (setting, force) = match setting {
        Some(setting) if setting.enabled == Some(false) => return None,
        Some(setting) => (setting, false),
        None => {
            let labels = match distribution {
                TrafficDistribution::PreferSameZone => PREFER_SAME_ZONE,
                TrafficDistribution::PreferSameNode => PREFER_SAME_NODE,
                TrafficDistribution::Any => &[][..],
            };
            owned = LocalityLbSetting {
                failover_priority: labels.iter().map(|l| (*l).to_owned()).collect(),
                enabled: Some(true),
                ..Default::default()
            };
            (&owned, !labels.is_empty())
        }
    };
    if !setting.distribute.is_empty() || !(outlier_detection || force) {
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
    cluster_id: &str,
    pod: &Pod,
) -> (
    Option<wp::Locality>,
    std::collections::BTreeMap<String, String>,
) {
    let locality = pod_locality(index, pod);
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let labels = topology_labels(locality.as_ref(), cluster_id, node);
    (to_proto(locality), labels)
}

/// One of the proxy's own pods: its address, its node's locality, and its labels with the
/// topology labels over them (istiod's proxy labels, which `failoverPriority` compares
/// endpoints with).
pub(super) fn proxy_instance(
    index: &ConfigIndex,
    cluster_id: &str,
    pod: &Pod,
) -> Option<wp::ProxyInstance> {
    let address = resolve::pod_ips(pod).into_iter().next()?;
    let (locality, topology) = pod_topology(index, cluster_id, pod);
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
            .filter_map(|pod| proxy_instance(self.index, &self.settings.cluster_id, pod))
            .collect()
    }
}

#[cfg(test)]
mod tests;
