//! Endpoint priorities and locality weights, relative to the pod this proxy runs in, as istiod
//! computes them for each Envoy (`ApplyLocalityLoadBalancer` in
//! `pilot/pkg/networking/core/loadbalancer/loadbalancer.go`): with `distribute`, a weight for
//! each locality and no endpoint in a locality it does not name (`applyLocalityWeights`);
//! otherwise a priority for each endpoint, 0 the closest, and the balancer sends to a priority
//! only as far as the closer ones lack healthy endpoints ([`crate::upstream`]).

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
    // `distribute` excludes failover: every endpoint is in one priority, weighed instead.
    if !lb.distribute.is_empty() {
        return vec![0; endpoints.len()];
    }
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

/// The localities of a cluster's endpoints and the share of traffic each is given, as istiod's
/// `applyLocalityWeights` leaves them for Envoy's locality-weighted load balancing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityWeights {
    /// The weight of each locality (in the order their first endpoint comes).
    pub weights: Vec<u32>,
    /// Each endpoint's locality, an index into `weights`; `None`: in a locality `to` does not
    /// name, so left out of the cluster (istiod removes its endpoints).
    pub of_endpoint: Vec<Option<u32>>,
}

/// istiod's `applyLocalityWeights` for this proxy: the first `distribute` entry whose `from`
/// matches the proxy's locality decides; `None` when there is no `distribute` or no entry
/// matches (then nothing changes: no weights, and no failover either). The endpoints are
/// grouped by locality (region, zone and subzone alike), each group weighing the sum of its
/// endpoints' weights, as istiod's `LocalityLbEndpoints`. Each `to` pattern, in the order of
/// the map (istiod's is Go's map order, unspecified), takes the groups it matches that no
/// earlier pattern took and shares its weight among them in proportion to their own weights,
/// rounded up; groups no pattern takes are left out.
pub fn locality_weights(
    lb: &proto::LocalityLoadBalancing,
    local: Option<&LocalInstance>,
    endpoints: &[proto::Endpoint],
) -> Option<LocalityWeights> {
    let unknown = LocalInstance::default();
    let local = local.unwrap_or(&unknown);
    let rule = lb
        .distribute
        .iter()
        .find(|d| locality_match(&local.locality, &d.from))?;
    let empty = proto::Locality::default();
    let mut groups: Vec<(&proto::Locality, u64)> = Vec::new();
    let mut of_endpoint = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let locality = endpoint.locality.as_ref().unwrap_or(&empty);
        let weight = u64::from(endpoint.weight.max(1));
        let index = match groups.iter().position(|(l, _)| *l == locality) {
            Some(index) => {
                groups[index].1 += weight;
                index
            }
            None => {
                groups.push((locality, weight));
                groups.len() - 1
            }
        };
        of_endpoint.push(index);
    }
    let mut assigned: Vec<Option<u32>> = vec![None; groups.len()];
    for (pattern, weight) in &rule.to {
        let matched: Vec<usize> = (0..groups.len())
            .filter(|i| assigned[*i].is_none() && locality_match(groups[*i].0, pattern))
            .collect();
        let total: u64 = matched.iter().map(|i| groups[*i].1).sum();
        for i in matched {
            // ceil(original × weight / total), as istiod rounds it.
            let share = (groups[i].1 * u64::from(*weight)).div_ceil(total);
            assigned[i] = Some(u32::try_from(share).unwrap_or(u32::MAX));
        }
    }
    // Only the localities that keep endpoints are numbered.
    let mut weights = Vec::new();
    let mut renumbered: Vec<Option<u32>> = vec![None; groups.len()];
    for (i, weight) in assigned.iter().enumerate() {
        if let Some(weight) = weight {
            renumbered[i] = u32::try_from(weights.len()).ok();
            weights.push(*weight);
        }
    }
    Some(LocalityWeights {
        weights,
        of_endpoint: of_endpoint.into_iter().map(|i| renumbered[i]).collect(),
    })
}

/// istiod's `LocalityMatch`: a `region/zone/subzone` pattern against a locality; `*` matches
/// any part, and a part the pattern leaves out matches anything (`us` matches every zone of
/// `us`); the region must be given.
fn locality_match(locality: &proto::Locality, pattern: &str) -> bool {
    let mut parts = pattern.split('/');
    let (region, zone, subzone) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    (region == "*" || region == locality.region)
        && (zone.is_empty() || zone == "*" || zone == locality.zone)
        && (subzone.is_empty() || subzone == "*" || subzone == locality.subzone)
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
