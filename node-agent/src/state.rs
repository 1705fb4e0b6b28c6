//! What the agent knows about the mesh: workloads, services and L4 authorization policies, as
//! pushed by the controller. One writer (the xDS handlers) and many readers (every connection):
//! indexes live behind one `RwLock` that is never held across an `.await`, readers take cheap
//! `Arc` clones out of it, and a `watch` channel wakes whoever waits for a change.
//!
//! Protobuf stops here: `TryFrom<proto::X>` turns each pushed resource into a domain type, and a
//! resource that does not convert is an error the xDS handler turns into a NACK.

mod convert;
mod on_demand;
mod policies;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, OnceLock, RwLock},
};

use serde::Serialize;
use weft_identity::SpiffeId;
use weft_policy::l4::Authorization;

pub use convert::{AddressResource, ConversionError, authorization_from_proto};
pub use on_demand::{
    Crowded, DEFAULT_ON_DEMAND_IDLE, DemandLease, ON_DEMAND_WAIT, OnDemandMetrics,
};
pub use policies::PolicyIndex;

/// Istio's HBONE port, the default for workloads and waypoints.
pub use weft_hbone::HBONE_PORT;

/// How a workload's traffic reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is not in the mesh.
    None,
    /// HBONE to the workload's address on port 15008.
    Hbone,
}

/// Where a waypoint is: an address, or a service resolved through the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayDestination {
    Address(IpAddr),
    /// `namespace/hostname` of a service.
    Service(NamespacedHostname),
}

/// A waypoint or gateway reference, with its HBONE port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_port: u16,
}

/// A service's key: its namespace and fully qualified hostname. Serializes as
/// `namespace/hostname` (it is a map key in dumps).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

impl Serialize for NamespacedHostname {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

/// One workload (a pod, in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    /// A name to resolve when `addresses` is empty (a ServiceEntry's DNS endpoint).
    pub hostname: String,
    pub trust_domain: String,
    pub service_account: String,
    pub node: String,
    pub tunnel: TunnelProtocol,
    pub waypoint: Option<GatewayAddress>,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub cluster_id: String,
    pub healthy: bool,
    /// Services this workload backs, with `service port -> target port`.
    pub services: BTreeMap<NamespacedHostname, BTreeMap<u16, u16>>,
    /// Keys (`namespace/name`) of the authorization policies that select this workload.
    pub authorization_policies: Vec<String>,
    /// Its share of a service's connections relative to the other endpoints (Istio's workload
    /// `capacity`, a ServiceEntry endpoint's `weight`; 1 when unset), as ztunnel balances.
    pub capacity: u32,
    /// Where it runs, for a service's locality preferences (empty parts when unknown); boxed,
    /// being rarely set, to keep a workload small.
    pub locality: Box<Locality>,
}

/// A workload's region, zone and subzone (Istio's `Locality`); an unset part is empty and
/// matches only another empty one, as in ztunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// What Istio's workload uids of ServiceEntry endpoints hold
/// (`<cluster>/networking.istio.io/ServiceEntry/<namespace>/<name>/<address>`).
const SERVICE_ENTRY_UID: &str = "/networking.istio.io/ServiceEntry/";

impl Workload {
    /// An endpoint a ServiceEntry declares (outside the mesh, with no agent of its own).
    pub fn is_service_entry_endpoint(&self) -> bool {
        self.uid.contains(SERVICE_ENTRY_UID)
    }

    /// The workload's SPIFFE identity.
    pub fn identity(&self) -> Result<SpiffeId, weft_identity::SpiffeIdError> {
        SpiffeId::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

/// How a service picks endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancingMode {
    /// Round robin over healthy endpoints (the default).
    Standard,
    /// Only endpoints that meet every routing preference.
    Strict,
    /// Prefer endpoints that meet the preferences, then any.
    Failover,
    /// No endpoint selection: connect to the original destination.
    Passthrough,
}

/// A locality scope a service's traffic prefers to stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingPreference {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

/// A service: virtual IPs and ports in front of a set of workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// `service port -> target port` (0: the workload's own mapping decides).
    pub ports: BTreeMap<u16, u16>,
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
    pub load_balancing: LoadBalancingMode,
    pub routing_preferences: Vec<RoutingPreference>,
    /// Whether unhealthy endpoints may be chosen.
    pub allow_unhealthy: bool,
}

impl Service {
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname {
            namespace: self.namespace.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// Istio's `outboundTrafficPolicy.mode` (the controller's mesh configuration): what a
/// connection to an address that is no known service, ServiceEntry or workload becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Carried to the address the application chose (Istio's `PassthroughCluster`).
    #[default]
    AllowAny,
    /// Refused (Istio's `BlackHoleCluster`).
    RegistryOnly,
}

/// Maps read on every connection: a fast hash (keys come from the controller, not from peers).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The indexes. Only the store's writer methods change them.
#[derive(Debug, Default)]
struct Indexes {
    workloads_by_uid: FastMap<String, Arc<Workload>>,
    workloads_by_ip: FastMap<IpAddr, Arc<Workload>>,
    services_by_key: FastMap<NamespacedHostname, Arc<Service>>,
    services_by_vip: FastMap<IpAddr, Arc<Service>>,
    /// Services (with VIPs or headless) by hostname (lower case), for the DNS proxy; one hostname can be
    /// a service of several namespaces.
    services_by_hostname: FastMap<String, Vec<Arc<Service>>>,
    /// Workload uids backing each service.
    endpoints: FastMap<NamespacedHostname, Vec<String>>,
    policies: FastMap<String, Arc<Authorization>>,
    /// Addresses of the hostnames of workloads that have none, as last resolved
    /// ([`crate::dns`]).
    resolved: FastMap<String, Arc<[IpAddr]>>,
    /// `policies` in evaluation order (namespace, name) and by what they apply to, rebuilt on
    /// every policy change so that a connection's authorization only takes a reference and
    /// reads its destination's policies.
    policy_index: Arc<PolicyIndex>,
    outbound_traffic_policy: OutboundTrafficPolicy,
}

/// The agent's view of the mesh. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct WorkloadStore {
    indexes: Arc<RwLock<Indexes>>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    /// Asks the controller for an address the store lacks (on-demand mode only), and what
    /// it fetched so, for idle eviction.
    demand: Arc<OnceLock<on_demand::OnDemand>>,
    on_demand_metrics: Arc<OnDemandMetrics>,
}

impl Default for WorkloadStore {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkloadStore {
    pub fn new() -> Self {
        Self {
            indexes: Arc::default(),
            generation: Arc::new(tokio::sync::watch::channel(0).0),
            demand: Arc::default(),
            on_demand_metrics: Arc::default(),
        }
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Indexes> {
        self.indexes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, change: impl FnOnce(&mut Indexes)) {
        {
            let mut indexes = self.indexes.write().unwrap_or_else(|p| p.into_inner());
            change(&mut indexes);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    // ---- readers ----

    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.read().workloads_by_uid.get(uid).cloned()
    }

    /// The workload of `uid`, waiting up to `deadline` for the controller to describe it: a pod
    /// is served as soon as it is enrolled, which can be before its workload arrives (a new pod
    /// whose address the controller has not seen yet, or the next agent of a rolling update
    /// taking pods over before its first configuration), as ztunnel waits for a workload.
    pub async fn wait_for_workload_by_uid(
        &self,
        uid: &str,
        deadline: std::time::Duration,
    ) -> Option<Arc<Workload>> {
        // The common case costs one lookup; only a miss subscribes (then looks again, so a
        // workload arriving in between is not missed).
        if let Some(workload) = self.workload_by_uid(uid) {
            return Some(workload);
        }
        let mut changes = self.subscribe();
        if let Some(workload) = self.workload_by_uid(uid) {
            return Some(workload);
        }
        tokio::time::timeout(deadline, async {
            loop {
                if changes.changed().await.is_err() {
                    return None;
                }
                if let Some(workload) = self.workload_by_uid(uid) {
                    return Some(workload);
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.read().workloads_by_ip.get(&ip).cloned()
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.read().services_by_vip.get(&ip).cloned()
    }

    pub fn service(&self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        self.read().services_by_key.get(key).cloned()
    }

    /// The services named `hostname` (lower case, no trailing dot), with VIPs or headless, of
    /// every namespace, in no particular order.
    pub fn services_by_hostname(&self, hostname: &str) -> Vec<Arc<Service>> {
        self.read()
            .services_by_hostname
            .get(hostname)
            .cloned()
            .unwrap_or_default()
    }

    /// The workloads backing `service`, in a stable order.
    pub fn endpoints(&self, service: &NamespacedHostname) -> Vec<Arc<Workload>> {
        let indexes = self.read();
        indexes
            .endpoints
            .get(service)
            .map(|uids| {
                uids.iter()
                    .filter_map(|uid| indexes.workloads_by_uid.get(uid).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first address `hostname` last resolved to.
    pub fn resolved_address(&self, hostname: &str) -> Option<IpAddr> {
        self.read().resolved.get(hostname)?.first().copied()
    }

    /// The hostnames of workloads without addresses, each once, in order.
    pub fn hostnames_to_resolve(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .read()
            .workloads_by_uid
            .values()
            .filter(|w| w.addresses.is_empty() && !w.hostname.is_empty())
            .map(|w| w.hostname.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn policy(&self, key: &str) -> Option<Arc<Authorization>> {
        self.read().policies.get(key).cloned()
    }

    /// Every policy in evaluation order (namespace, name).
    pub fn policies(&self) -> Vec<Arc<Authorization>> {
        self.read().policy_index.all().to_vec()
    }

    /// The policies indexed by what they apply to, for a connection's authorization
    /// ([`PolicyIndex::applicable`]). Shared, not copied.
    pub fn policy_index(&self) -> Arc<PolicyIndex> {
        self.read().policy_index.clone()
    }

    /// The mesh's outbound traffic policy, read for each connection.
    pub fn outbound_traffic_policy(&self) -> OutboundTrafficPolicy {
        self.read().outbound_traffic_policy
    }

    /// Everything, for `/config_dump`.
    pub fn dump(&self) -> StoreDump {
        let indexes = self.read();
        let mut workloads: Vec<_> = indexes.workloads_by_uid.values().cloned().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = indexes.services_by_key.values().cloned().collect();
        services.sort_by_key(|s| s.key());
        let outbound_traffic_policy = indexes.outbound_traffic_policy;
        drop(indexes);
        StoreDump {
            workloads,
            services,
            policies: self.policies(),
            outbound_traffic_policy,
        }
    }

    // ---- the writer ----

    /// Adds or replaces a workload.
    pub fn insert_workload(&self, workload: Workload) {
        self.write(|ix| insert_workload(ix, workload));
    }

    pub fn remove_workload(&self, uid: &str) {
        self.write(|ix| remove_workload(ix, uid));
    }

    /// Adds or replaces a service.
    pub fn insert_service(&self, service: Service) {
        self.write(|ix| insert_service(ix, service));
    }

    pub fn remove_service(&self, key: &NamespacedHostname) {
        self.write(|ix| remove_service(ix, key));
    }

    /// Applies one address update as one change: removes `removed` (workload uids, service keys
    /// `namespace/hostname`), then adds or replaces `added`, under one write and with one
    /// wake-up of whoever waits for a change, not one per resource (a first update carries
    /// every address of the mesh).
    pub fn apply_addresses(&self, removed: &[String], added: Vec<AddressResource>) {
        if removed.is_empty() && added.is_empty() {
            return;
        }
        self.write(|ix| {
            for name in removed {
                // A name with a slash is a service (`namespace/hostname`); uids carry none in
                // practice but both are removed to be safe.
                if let Some((namespace, hostname)) = name.split_once('/') {
                    remove_service(
                        ix,
                        &NamespacedHostname {
                            namespace: namespace.to_string(),
                            hostname: hostname.to_string(),
                        },
                    );
                }
                remove_workload(ix, name);
            }
            for address in added {
                match address {
                    AddressResource::Workload(workload) => insert_workload(ix, workload),
                    AddressResource::Service(service) => insert_service(ix, service),
                }
            }
        });
    }

    /// Records what `hostname` resolved to; a name no workload holds any more is forgotten.
    /// Unchanged addresses change nothing (no wake-up).
    pub fn set_resolved(&self, hostname: &str, addresses: Vec<IpAddr>) {
        if self.read().resolved.get(hostname).map(|a| &a[..]) == Some(&addresses[..]) {
            return;
        }
        self.write(|ix| {
            ix.resolved.insert(hostname.to_owned(), addresses.into());
        });
    }

    /// Forgets every resolved name but `keep`.
    pub fn retain_resolved(&self, keep: &[String]) {
        if self.read().resolved.keys().all(|k| keep.contains(k)) {
            return;
        }
        self.write(|ix| ix.resolved.retain(|k, _| keep.contains(k)));
    }

    /// Sets the mesh's outbound traffic policy; the same one again changes nothing.
    pub fn set_outbound_traffic_policy(&self, policy: OutboundTrafficPolicy) {
        if self.outbound_traffic_policy() != policy {
            self.write(|ix| ix.outbound_traffic_policy = policy);
        }
    }

    /// Adds or replaces a policy (keyed `namespace/name`).
    pub fn insert_policy(&self, policy: Authorization) {
        self.apply_policies(&[], vec![policy]);
    }

    pub fn remove_policy(&self, key: &str) {
        self.apply_policies(&[key.to_string()], Vec::new());
    }

    /// Applies one policy update as one change: removes the policies keyed `removed`, then adds
    /// or replaces `added`, and indexes the result once. An index built per policy would cost
    /// the square of the mesh's policies on an agent's first update, which carries them all.
    pub fn apply_policies(&self, removed: &[String], added: Vec<Authorization>) {
        let known = {
            let ix = self.read();
            removed.iter().any(|key| ix.policies.contains_key(key))
        };
        if !known && added.is_empty() {
            return;
        }
        self.write(|ix| {
            for key in removed {
                ix.policies.remove(key);
            }
            for policy in added {
                ix.policies.insert(
                    format!("{}/{}", policy.namespace, policy.name),
                    Arc::new(policy),
                );
            }
            sort_policies(ix);
        });
    }
}

fn sort_policies(ix: &mut Indexes) {
    ix.policy_index = Arc::new(PolicyIndex::new(ix.policies.values().cloned()));
}

fn insert_workload(ix: &mut Indexes, workload: Workload) {
    remove_workload(ix, &workload.uid);
    let workload = Arc::new(workload);
    for ip in &workload.addresses {
        ix.workloads_by_ip.insert(*ip, workload.clone());
    }
    for service in workload.services.keys() {
        ix.endpoints
            .entry(service.clone())
            .or_default()
            .push(workload.uid.clone());
    }
    ix.workloads_by_uid.insert(workload.uid.clone(), workload);
}

fn insert_service(ix: &mut Indexes, service: Service) {
    let key = service.key();
    remove_service(ix, &key);
    let service = Arc::new(service);
    for vip in &service.vips {
        ix.services_by_vip.insert(*vip, service.clone());
    }
    ix.services_by_hostname
        .entry(service.hostname.to_ascii_lowercase())
        .or_default()
        .push(service.clone());
    ix.services_by_key.insert(key, service);
}

fn remove_workload(ix: &mut Indexes, uid: &str) {
    let Some(old) = ix.workloads_by_uid.remove(uid) else {
        return;
    };
    for ip in &old.addresses {
        if ix.workloads_by_ip.get(ip).is_some_and(|w| w.uid == uid) {
            ix.workloads_by_ip.remove(ip);
        }
    }
    for service in old.services.keys() {
        if let Some(uids) = ix.endpoints.get_mut(service) {
            uids.retain(|u| u != uid);
            if uids.is_empty() {
                ix.endpoints.remove(service);
            }
        }
    }
}

fn remove_service(ix: &mut Indexes, key: &NamespacedHostname) {
    let Some(old) = ix.services_by_key.remove(key) else {
        return;
    };
    for vip in &old.vips {
        if ix.services_by_vip.get(vip).is_some_and(|s| s.key() == *key) {
            ix.services_by_vip.remove(vip);
        }
    }
    let hostname = old.hostname.to_ascii_lowercase();
    if let Some(named) = ix.services_by_hostname.get_mut(&hostname) {
        named.retain(|s| s.key() != *key);
        if named.is_empty() {
            ix.services_by_hostname.remove(&hostname);
        }
    }
}

/// A consistent copy of the store, for the admin endpoint.
#[derive(Debug, Serialize)]
pub struct StoreDump {
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<Authorization>>,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

#[cfg(test)]
mod tests;
