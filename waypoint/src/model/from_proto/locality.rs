//! Endpoint priorities by locality, relative to the pod this proxy runs in, as istiod computes
//! them for each Envoy (`ApplyLocalityLoadBalancer` in
//! `pilot/pkg/networking/core/loadbalancer/loadbalancer.go`): 0 is the closest, and the
//! balancer sends to a priority only as far as the closer ones lack healthy endpoints
//! ([`crate::upstream`]).

use std::collections::HashMap;

use weft_proto::waypoint as proto;

/// What a proxy knows of its own pod: its locality and its labels (with Istio's topology
/// labels), found in the configuration's instances by the pod's IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInstance {
    pub locality: proto::Locality,
    pub labels: HashMap<String, String>,
}

impl LocalInstance {
    /// This pod's entry among the configuration's `instances`; `None` when it is not listed
    /// (then, as an Envoy with no locality and no labels, every endpoint ranks alike).
    pub fn find(instances: &[proto::ProxyInstance], address: std::net::IpAddr) -> Option<Self> {
        let instance = instances
            .iter()
            .find(|i| i.address.parse() == Ok(address))?;
        Some(LocalInstance {
            locality: instance.locality.clone().unwrap_or_default(),
            labels: instance
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// Istio's separator between a `failoverPriority` label and the value that overrides the
/// proxy's (`FailoverPriorityLabelDefaultSeparator`).
const OVERRIDE_SEPARATOR: char = '=';

/// How many priorities istiod's locality failover uses (0 to 4), by which an earlier
/// `failoverPriority` rank is multiplied so both compose.
const LOCALITY_PRIORITIES: u32 = 5;

/// The priority of each of `endpoints` under `lb`, seen from `local`, compacted to 0..N
/// without gaps (as istiod leaves them for Envoy).
pub fn priorities(
    lb: &proto::LocalityLoadBalancing,
    local: Option<&LocalInstance>,
    endpoints: &[proto::Endpoint],
) -> Vec<u32> {
    let unknown = LocalInstance::default();
    let local = local.unwrap_or(&unknown);
    // istiod's `applyFailoverPriorities` does nothing for a proxy without labels.
    let by_labels = !lb.failover_priority.is_empty() && !local.labels.is_empty();
    let raw: Vec<u32> = endpoints
        .iter()
        .map(|endpoint| {
            let labelled = if by_labels {
                failover_priority_rank(&lb.failover_priority, &local.labels, endpoint)
            } else {
                0
            };
            if lb.failover_priority.is_empty() {
                // The default ranking, or the user's region failover.
                locality_rank(&local.locality, endpoint.locality.as_ref(), &lb.failover)
            } else if lb.failover.is_empty() {
                labelled
            } else {
                // "If failover is explicitly configured with failover priority, apply
                // failover settings also", within each label priority.
                labelled * LOCALITY_PRIORITIES
                    + locality_rank(&local.locality, endpoint.locality.as_ref(), &lb.failover)
            }
        })
        .collect();
    let mut levels: Vec<u32> = raw.clone();
    levels.sort_unstable();
    levels.dedup();
    raw.iter()
        .map(|p| u32::try_from(levels.partition_point(|l| l < p)).unwrap_or(u32::MAX))
        .collect()
}

/// istiod's `applyFailoverPriorityPerLocality`: 0 when the endpoint has the proxy's value of
/// every label, else `n - j` for the first label `j` (of `n`) where it differs; a
/// `label=value` entry compares the endpoint with `value` instead of the proxy's label.
/// An endpoint's labels are its own with its topology labels over them (`AugmentLabels`).
fn failover_priority_rank(
    failover_priority: &[String],
    proxy_labels: &HashMap<String, String>,
    endpoint: &proto::Endpoint,
) -> u32 {
    let endpoint_label = |name: &str| {
        endpoint
            .topology_labels
            .get(name)
            .or_else(|| endpoint.labels.get(name))
            .map_or("", String::as_str)
    };
    let lowest = u32::try_from(failover_priority.len()).unwrap_or(u32::MAX);
    for (j, entry) in failover_priority.iter().enumerate() {
        let parts: Vec<&str> = entry.split(OVERRIDE_SEPARATOR).collect();
        let name = parts[0];
        let proxy_value = match parts.as_slice() {
            [_, value] => *value,
            _ => proxy_labels.get(name).map_or("", String::as_str),
        };
        if proxy_value != endpoint_label(name) {
            return lowest - u32::try_from(j).unwrap_or(lowest);
        }
    }
    0
}

/// istiod's `LbPriority` with `applyLocalityFailover`'s region failover: 0 for the same
/// region, zone and subzone, 1 for the same zone, 2 for the same region, 3 for another region,
/// and 4 for a region other than the one `failover` names for the proxy's region (the first
/// entry from it decides). A missing locality is all empty parts.
fn locality_rank(
    local: &proto::Locality,
    endpoint: Option<&proto::Locality>,
    failover: &[proto::locality_load_balancing::Failover],
) -> u32 {
    let empty = proto::Locality::default();
    let endpoint = endpoint.unwrap_or(&empty);
    let rank = if local.region != endpoint.region {
        3
    } else if local.zone != endpoint.zone {
        2
    } else if local.subzone != endpoint.subzone {
        1
    } else {
        0
    };
    if rank == 3
        && let Some(rule) = failover.iter().find(|f| f.from == local.region)
        && endpoint.region != rule.to
    {
        return 4;
    }
    rank
}

#[cfg(test)]
mod tests;
