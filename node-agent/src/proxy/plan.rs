//! Where a connection goes, decided without I/O: outbound resolution (service VIP -> endpoint,
//! pod IP, waypoint, or plain passthrough) and the inbound checks (is this address served here,
//! is the peer allowed). Table-tested; the listeners only execute the plans.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use weft_identity::SpiffeId;
use weft_policy::{
    Decision,
    l4::{ConnectionContext, evaluate},
};

use crate::state::{
    GatewayAddress, GatewayDestination, LoadBalancingMode, OutboundTrafficPolicy,
    RoutingPreference, Service, TunnelProtocol, Workload, WorkloadStore,
};

// The ports the agent itself listens on inside a pod (ztunnel's `illegal_ports`): never a valid
// destination for forwarded traffic (a connection to them would loop through the agent). Its
// admin, metrics and readiness ports are in the node's namespace: inside a pod, 15000, 15020
// and 15021 are the application's and are served like any other port.
use weft_ebpf_common::ports::AGENT_IN_POD as AGENT_PORTS;

/// How an outbound connection is carried.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboundPlan {
    /// Plain TCP to `target`: the destination is outside the mesh (Istio's
    /// `PassthroughCluster`).
    Passthrough { target: SocketAddr },
    /// Refused: `target` is no known service, ServiceEntry or workload and the mesh's
    /// `outboundTrafficPolicy` is `REGISTRY_ONLY` (Istio's `BlackHoleCluster`).
    BlackHole { target: SocketAddr },
    /// HBONE to `gateway` (an endpoint's or a waypoint's `ip:15008`) asking for `target`.
    Hbone {
        gateway: SocketAddr,
        target: SocketAddr,
        /// The identity the server at `gateway` must prove.
        expected_identity: SpiffeId,
        /// The endpoint the connection is for; `None` through a waypoint to a service without
        /// endpoints (a `DYNAMIC_DNS` ServiceEntry's host, which the waypoint resolves).
        destination: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
        via_waypoint: bool,
    },
    /// Plain TCP to `target`, a destination outside the mesh that a service names: an endpoint
    /// without a tunnel (a ServiceEntry's, a selectorless Service's), or the original
    /// destination of a service without endpoint selection (a `resolution: NONE`
    /// ServiceEntry). Reported under the service; a ServiceEntry endpoint's L4 policy is
    /// enforced here, having no agent of its own.
    External {
        target: SocketAddr,
        destination: Option<Arc<Workload>>,
        service: Arc<Service>,
    },
    /// The destination is a pod this agent serves: no TLS, but its inbound policy still applies.
    Local {
        target: SocketAddr,
        destination: Arc<Workload>,
        service: Option<Arc<Service>>,
    },
}

/// Why an outbound connection cannot be carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoHealthyEndpoint { service: String, port: u16 },
    #[error("waypoint {0} cannot be resolved")]
    UnknownWaypoint(String),
    #[error("destination {0} is an agent port")]
    AgentPort(SocketAddr),
    #[error("workload {uid} has an invalid identity: {reason}")]
    BadIdentity { uid: String, reason: String },
}

/// Decides how `source` reaches `original`. `is_local(uid)` says whether this agent serves the
/// pod; `roll` drives round robin (the caller passes an incrementing counter).
pub fn plan_outbound(
    store: &WorkloadStore,
    source: &Workload,
    original: SocketAddr,
    is_local: impl Fn(&str) -> bool,
    roll: usize,
) -> Result<OutboundPlan, OutboundError> {
    if AGENT_PORTS.contains(&original.port()) && source.addresses.contains(&original.ip()) {
        return Err(OutboundError::AgentPort(original));
    }
    if let Some(service) = store.service_by_vip(original.ip()) {
        return plan_service(store, source, service, original, is_local, roll);
    }
    if let Some(destination) = store.workload_by_ip(original.ip()) {
        if let Some(waypoint) = destination.waypoint.as_ref()
            && !is_waypoint_itself(store, source, waypoint)
        {
            return plan_waypoint(
                store,
                source,
                waypoint,
                original,
                Some(destination.clone()),
                None,
                roll,
            );
        }
        // An external host is in the registry as its ServiceEntry's host, reached by the
        // host's addresses: its endpoint's own address is not (a sidecar has no listener for it).
        if destination.is_service_entry_endpoint()
            && store.outbound_traffic_policy() == OutboundTrafficPolicy::RegistryOnly
        {
            return Ok(OutboundPlan::BlackHole { target: original });
        }
        return plan_workload(destination, None, original, &is_local);
    }
    // Read per connection: a change of the mesh configuration decides the next connection.
    Ok(match store.outbound_traffic_policy() {
        OutboundTrafficPolicy::AllowAny => OutboundPlan::Passthrough { target: original },
        OutboundTrafficPolicy::RegistryOnly => OutboundPlan::BlackHole { target: original },
    })
}

fn plan_service(
    store: &WorkloadStore,
    source: &Workload,
    service: Arc<Service>,
    original: SocketAddr,
    is_local: impl Fn(&str) -> bool,
    roll: usize,
) -> Result<OutboundPlan, OutboundError> {
    if service.load_balancing == LoadBalancingMode::Passthrough {
        return Ok(OutboundPlan::External {
            target: original,
            destination: None,
            service,
        });
    }
    let key = service.key();
    let endpoints = store.endpoints(&key);
    let port = original.port();
    // Candidates: endpoints that serve this port and are healthy (unless the service says any).
    let candidates: Vec<(Arc<Workload>, u16)> = endpoints
        .into_iter()
        .filter(|w| w.healthy || service.allow_unhealthy)
        .filter_map(|w| {
            let target = w
                .services
                .get(&key)
                .and_then(|ports| ports.get(&port).copied())
                .filter(|p| *p != 0)
                .or_else(|| service.ports.get(&port).copied().filter(|p| *p != 0))
                .or_else(|| service.ports.is_empty().then_some(port))?;
            Some((w, target))
        })
        .collect();
    let candidates = prefer_locality(&service, source, candidates, |(w, _)| w);
    if let Some(waypoint) = service.waypoint.clone()
        && !is_waypoint_itself(store, source, &waypoint)
    {
        // As ztunnel: the waypoint picks the endpoint, so a service without one of its own
        // (a DYNAMIC_DNS host, whose endpoint is the name each request gives) goes there too;
        // the first candidate only names the destination in the metrics.
        let destination = candidates.first().map(|(w, _)| w.clone());
        return plan_waypoint(
            store,
            source,
            &waypoint,
            original,
            destination,
            Some(service),
            roll,
        );
    }
    if candidates.is_empty() {
        return Err(OutboundError::NoHealthyEndpoint {
            service: key.to_string(),
            port,
        });
    }
    let (endpoint, target_port) = weighted_pick(&candidates, roll).clone();
    let address = endpoint.addresses.first().copied();
    let Some(ip) = address.or_else(|| store.resolved_address(&endpoint.hostname)) else {
        return Err(OutboundError::NoHealthyEndpoint {
            service: key.to_string(),
            port,
        });
    };
    plan_workload(
        endpoint,
        Some(service),
        SocketAddr::new(ip, target_port),
        &is_local,
    )
}

/// Round robin weighted by the endpoints' capacity: over every run of `sum of capacities`
/// consecutive rolls, each endpoint is picked as many times as its capacity (ztunnel picks at
/// random with the same weights). `candidates` is not empty.
fn weighted_pick(candidates: &[(Arc<Workload>, u16)], roll: usize) -> &(Arc<Workload>, u16) {
    let total: u64 = candidates.iter().map(|(w, _)| u64::from(w.capacity)).sum();
    let mut point = (roll as u64) % total.max(1);
    for candidate in candidates {
        let capacity = u64::from(candidate.0.capacity);
        if point < capacity {
            return candidate;
        }
        point -= capacity;
    }
    &candidates[roll % candidates.len()]
}

/// Applies the service's routing preferences as ztunnel ranks endpoints: an endpoint's rank is
/// the number of leading preferences it shares with the client (region, zone, subzone, node,
/// cluster); `Strict` keeps only endpoints matching all of them, `Failover` keeps the
/// best-ranked group. Networks are not known to the agent: `Network` counts as matching.
fn prefer_locality<T>(
    service: &Service,
    source: &Workload,
    candidates: Vec<T>,
    workload: impl Fn(&T) -> &Workload,
) -> Vec<T> {
    if service.routing_preferences.is_empty()
        || !matches!(
            service.load_balancing,
            LoadBalancingMode::Strict | LoadBalancingMode::Failover
        )
    {
        return candidates;
    }
    let rank = |w: &Workload| {
        service
            .routing_preferences
            .iter()
            .take_while(|p| match p {
                RoutingPreference::Region => w.locality.region == source.locality.region,
                RoutingPreference::Zone => w.locality.zone == source.locality.zone,
                RoutingPreference::Subzone => w.locality.subzone == source.locality.subzone,
                RoutingPreference::Node => w.node == source.node,
                RoutingPreference::Cluster => w.cluster_id == source.cluster_id,
                RoutingPreference::Network => true,
            })
            .count()
    };
    let full = service.routing_preferences.len();
    let best = match service.load_balancing {
        LoadBalancingMode::Strict => full,
        _ => candidates
            .iter()
            .map(|c| rank(workload(c)))
            .max()
            .unwrap_or(0),
    };
    candidates
        .into_iter()
        .filter(|c| rank(workload(c)) == best)
        .collect()
}

fn plan_workload(
    destination: Arc<Workload>,
    service: Option<Arc<Service>>,
    target: SocketAddr,
    is_local: &impl Fn(&str) -> bool,
) -> Result<OutboundPlan, OutboundError> {
    if destination.tunnel == TunnelProtocol::None {
        return Ok(match service {
            Some(service) => OutboundPlan::External {
                target,
                destination: Some(destination),
                service,
            },
            None => OutboundPlan::Passthrough { target },
        });
    }
    if is_local(&destination.uid) {
        return Ok(OutboundPlan::Local {
            target,
            destination,
            service,
        });
    }
    let expected_identity = identity_of(&destination)?;
    Ok(OutboundPlan::Hbone {
        gateway: SocketAddr::new(target.ip(), weft_hbone::HBONE_PORT),
        target,
        expected_identity,
        destination: Some(destination),
        service,
        via_waypoint: false,
    })
}

fn plan_waypoint(
    store: &WorkloadStore,
    source: &Workload,
    waypoint: &GatewayAddress,
    original: SocketAddr,
    destination: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
    roll: usize,
) -> Result<OutboundPlan, OutboundError> {
    let waypoint_workload = resolve_waypoint(store, source, waypoint, roll)?;
    let ip = waypoint_workload
        .addresses
        .first()
        .copied()
        .ok_or_else(|| OutboundError::UnknownWaypoint(waypoint_workload.uid.clone()))?;
    Ok(OutboundPlan::Hbone {
        gateway: SocketAddr::new(ip, waypoint.hbone_port),
        target: original,
        expected_identity: identity_of(&waypoint_workload)?,
        destination,
        service,
        via_waypoint: true,
    })
}

/// The waypoint's workload for `source`: by address, or one of its service's endpoints. The
/// waypoint is a service like any other (ztunnel's `load_balance`): its routing preferences
/// (its `trafficDistribution`, its `networking.istio.io/traffic-distribution` annotation) rank
/// its pods for the client, so that `PreferClose` keeps a client on a replica in its zone.
pub fn resolve_waypoint(
    store: &WorkloadStore,
    source: &Workload,
    waypoint: &GatewayAddress,
    roll: usize,
) -> Result<Arc<Workload>, OutboundError> {
    match &waypoint.destination {
        GatewayDestination::Address(ip) => store
            .workload_by_ip(*ip)
            .ok_or_else(|| OutboundError::UnknownWaypoint(ip.to_string())),
        GatewayDestination::Service(key) => {
            let endpoints: Vec<_> = store
                .endpoints(key)
                .into_iter()
                .filter(|w| w.healthy)
                .collect();
            let endpoints = match store.service(key) {
                Some(service) => prefer_locality(&service, source, endpoints, |w| w),
                None => endpoints,
            };
            if endpoints.is_empty() {
                return Err(OutboundError::UnknownWaypoint(key.to_string()));
            }
            Ok(endpoints[roll % endpoints.len()].clone())
        }
    }
}

/// The identities a waypoint's traffic arrives with: its workload's, or those of every workload
/// behind its service (replicas usually share one).
fn waypoint_identities(store: &WorkloadStore, waypoint: &GatewayAddress) -> Vec<SpiffeId> {
    let workloads = match &waypoint.destination {
        GatewayDestination::Address(ip) => store.workload_by_ip(*ip).into_iter().collect(),
        GatewayDestination::Service(key) => store.endpoints(key),
    };
    workloads.iter().filter_map(|w| w.identity().ok()).collect()
}

fn is_waypoint_itself(store: &WorkloadStore, source: &Workload, waypoint: &GatewayAddress) -> bool {
    match &waypoint.destination {
        GatewayDestination::Address(ip) => source.addresses.contains(ip),
        GatewayDestination::Service(key) => {
            store.endpoints(key).iter().any(|w| w.uid == source.uid)
        }
    }
}

fn identity_of(workload: &Workload) -> Result<SpiffeId, OutboundError> {
    workload.identity().map_err(|e| OutboundError::BadIdentity {
        uid: workload.uid.clone(),
        reason: e.to_string(),
    })
}

/// Why an inbound connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundRefusal {
    #[error("{0} is not an address of this pod")]
    NotServedHere(SocketAddr),
    #[error("{0} is an agent port")]
    AgentPort(SocketAddr),
    #[error("peer {peer} is not the waypoint {waypoint} this workload requires")]
    WaypointBypass { peer: String, waypoint: String },
    /// L4 authorization refused it (the reason names the policy).
    #[error("{0}")]
    Denied(String),
}

/// The service an inbound connection to `destination` on `port` most likely came through, for
/// the `destination_service` labels: the destination side only sees the pod's address, so it
/// takes the first service the workload backs whose target port is `port` (a service port with
/// no target port of its own matches itself). `None` when no service maps to the port.
pub fn inbound_service(
    store: &WorkloadStore,
    destination: &Workload,
    port: u16,
) -> Option<Arc<Service>> {
    destination
        .services
        .iter()
        .find(|(_, ports)| {
            ports.iter().any(|(&service_port, &target_port)| {
                target_port == port || (target_port == 0 && service_port == port)
            })
        })
        .and_then(|(key, _)| store.service(key))
}

/// The source address an inbound tunnel is authorized and reported with. A peer may claim
/// another source (`forwarded: for=`) only when it is `destination`'s waypoint, which forwards
/// other workloads' traffic; anyone else's claim is ignored and the connection's own peer
/// address is used, as ztunnel authorizes with the TCP peer. Believing every authenticated peer
/// would let any holder of a mesh certificate pass for the pod itself (skipping "only the
/// waypoint may reach this pod") or for an address outside an `ipBlocks` rule.
pub fn inbound_source(
    store: &WorkloadStore,
    destination: &Workload,
    peer: &SpiffeId,
    claimed: Option<IpAddr>,
    connection_peer: IpAddr,
) -> IpAddr {
    match (claimed, destination.waypoint.as_ref()) {
        (Some(claimed), Some(waypoint)) if waypoint_identities(store, waypoint).contains(peer) => {
            claimed
        }
        _ => connection_peer,
    }
}

/// The inbound checks for a connection to `destination` (a pod this agent serves) at `target`:
/// the address belongs to the pod, it is not an agent port, a workload behind a waypoint is
/// reached only through it, and L4 authorization allows it.
pub fn authorize_inbound(
    store: &WorkloadStore,
    destination: &Workload,
    peer: Option<&SpiffeId>,
    source_ip: IpAddr,
    target: SocketAddr,
) -> Result<(), InboundRefusal> {
    if !destination.addresses.contains(&target.ip()) {
        return Err(InboundRefusal::NotServedHere(target));
    }
    if AGENT_PORTS.contains(&target.port()) {
        return Err(InboundRefusal::AgentPort(target));
    }
    if let Some(waypoint) = destination.waypoint.as_ref()
        && !destination.addresses.contains(&source_ip)
    {
        // Fail closed: a waypoint that cannot be resolved (yet) is replaced by nobody.
        let accepted = waypoint_identities(store, waypoint);
        if !peer.is_some_and(|peer| accepted.contains(peer)) {
            return Err(InboundRefusal::WaypointBypass {
                peer: peer.map_or_else(|| "plaintext".to_string(), ToString::to_string),
                waypoint: match accepted.first() {
                    Some(identity) => identity.to_string(),
                    None => match &waypoint.destination {
                        GatewayDestination::Address(ip) => format!("{ip} (unknown)"),
                        GatewayDestination::Service(key) => format!("{key} (no endpoints)"),
                    },
                },
            });
        }
    }
    authorize_policy(store, destination, peer, source_ip, target)
}

/// The checks a connection the agent carries to `destination` gets: for a ServiceEntry
/// endpoint, which has no agent of its own and may be known by name only, its L4 policy; for a
/// pod, everything [`authorize_inbound`] checks.
pub fn authorize_connection(
    store: &WorkloadStore,
    destination: &Workload,
    peer: Option<&SpiffeId>,
    source_ip: IpAddr,
    target: SocketAddr,
) -> Result<(), InboundRefusal> {
    if destination.is_service_entry_endpoint() {
        authorize_policy(store, destination, peer, source_ip, target)
    } else {
        authorize_inbound(store, destination, peer, source_ip, target)
    }
}

/// L4 authorization of a connection to `destination` at `target`.
fn authorize_policy(
    store: &WorkloadStore,
    destination: &Workload,
    peer: Option<&SpiffeId>,
    source_ip: IpAddr,
    target: SocketAddr,
) -> Result<(), InboundRefusal> {
    let policies = store.policy_index();
    let applicable =
        policies.applicable(&destination.namespace, &destination.authorization_policies);
    let context = ConnectionContext {
        src_identity: peer.cloned(),
        src_ip: source_ip,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    match evaluate(applicable, &context) {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(InboundRefusal::Denied(reason.to_string())),
    }
}

#[cfg(test)]
mod tests;
