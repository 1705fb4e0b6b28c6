//! The index: every valid resource the controller knows, by kind, from whichever source, with
//! the warnings each was accepted with. An invalid document never enters it; where a resource
//! had a valid version before, that version stays (the last good configuration keeps serving).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{
    loader::LoadReport,
    model::{
        AuthorizationPolicy, DestinationRule, GRPCRoute, Gateway, GatewayClass, HTTPRoute,
        KubernetesGateway, PeerAuthentication, ReferenceGrant, RequestAuthentication, Resource,
        ResourceKind, ServiceEntry, TCPRoute, TLSRoute, Telemetry, VirtualService, WorkloadEntry,
    },
    validation::{self, FieldWarning},
};

/// `namespace/name` (or `name` for cluster-scoped kinds).
pub type Key = String;

/// Every valid resource, by kind and key.
#[derive(Debug, Clone, Default)]
pub struct ConfigIndex {
    pub namespaces: BTreeMap<Key, Namespace>,
    pub pods: BTreeMap<Key, Pod>,
    pub services: BTreeMap<Key, Service>,
    /// Endpoints of Services, as the EndpointSlice controller (or an operator, for Services
    /// without a selector) writes them.
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    /// Nodes, by name, with only their name and labels: a pod's locality is its node's.
    pub nodes: BTreeMap<Key, Node>,
    pub authorization_policies: BTreeMap<Key, AuthorizationPolicy>,
    pub peer_authentications: BTreeMap<Key, PeerAuthentication>,
    pub request_authentications: BTreeMap<Key, RequestAuthentication>,
    pub telemetries: BTreeMap<Key, Telemetry>,
    pub virtual_services: BTreeMap<Key, VirtualService>,
    pub destination_rules: BTreeMap<Key, DestinationRule>,
    pub service_entries: BTreeMap<Key, ServiceEntry>,
    pub workload_entries: BTreeMap<Key, WorkloadEntry>,
    /// Istio's Gateways (`networking.istio.io`).
    pub istio_gateways: BTreeMap<Key, Gateway>,
    /// The Gateway API's Gateways: waypoints among them.
    pub gateways: BTreeMap<Key, KubernetesGateway>,
    pub gateway_classes: BTreeMap<Key, GatewayClass>,
    pub http_routes: BTreeMap<Key, HTTPRoute>,
    pub grpc_routes: BTreeMap<Key, GRPCRoute>,
    pub tcp_routes: BTreeMap<Key, TCPRoute>,
    pub tls_routes: BTreeMap<Key, TLSRoute>,
    pub reference_grants: BTreeMap<Key, ReferenceGrant>,
    /// The credential keys of the Secrets Gateways name (Kubernetes mode: the source keeps
    /// only those, `source::kube::secrets`), by `namespace/name`.
    pub secrets: BTreeMap<Key, crate::model::credential::CredentialSecret>,
    /// Secrets are watched (Kubernetes mode): gateway credentials are served from them. In
    /// local mode no Secret exists and the gateways read their credentials from files.
    pub secrets_watched: bool,
    /// What each resource was accepted with (Istio's warnings, fields not applied), by kind
    /// and key; resources without warnings have no entry.
    pub warnings: BTreeMap<(ResourceKind, Key), Vec<FieldWarning>>,
}

/// A document that was refused, as reported to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub message: String,
}

pub fn key(resource: &Resource) -> Key {
    key_of(resource.kind(), resource.namespace(), resource.name())
}

pub fn key_of(kind: ResourceKind, namespace: &str, name: &str) -> Key {
    if kind.namespaced() {
        format!("{namespace}/{name}")
    } else {
        name.to_string()
    }
}

/// The entries of one namespace in one of the index's maps, in key order. Keys are
/// `namespace/name`, so a namespace's entries are one range of the map (`/` sorts just before
/// `0`): translation reads a pod's services, a service's pods and a workload's policies this
/// way instead of walking every entry of the mesh (pods x services per translation). An object
/// that names no namespace (key `/name`) counts as `default`, as `resolve::namespace_of` reads it.
pub fn in_namespace<'a, T>(
    map: &'a BTreeMap<Key, T>,
    namespace: &str,
) -> impl Iterator<Item = &'a T> + 'a {
    entries_in_namespace(map, namespace).map(|(_, value)| value)
}

/// [`in_namespace`], with the keys.
pub fn entries_in_namespace<'a, T>(
    map: &'a BTreeMap<Key, T>,
    namespace: &str,
) -> impl Iterator<Item = (&'a Key, &'a T)> + 'a {
    let range = |ns: &str| map.range(format!("{ns}/")..format!("{ns}0"));
    let unnamed = (namespace == "default").then(|| range(""));
    unnamed.into_iter().flatten().chain(range(namespace))
}

/// Runs `$body` with `$map` bound to the index's map for `$kind`, borrowed as `[&]` or
/// `[&mut]` (kinds the index does not keep run nothing).
macro_rules! with_map {
    ([$($borrow:tt)*] $index:ident, $kind:expr, |$map:ident| $body:expr) => {
        match $kind {
            ResourceKind::Namespace => { let $map = $($borrow)* $index.namespaces; $body }
            ResourceKind::Pod => { let $map = $($borrow)* $index.pods; $body }
            ResourceKind::Service => { let $map = $($borrow)* $index.services; $body }
            ResourceKind::EndpointSlice => { let $map = $($borrow)* $index.endpoint_slices; $body }
            ResourceKind::Node => { let $map = $($borrow)* $index.nodes; $body }
            ResourceKind::AuthorizationPolicy => { let $map = $($borrow)* $index.authorization_policies; $body }
            ResourceKind::PeerAuthentication => { let $map = $($borrow)* $index.peer_authentications; $body }
            ResourceKind::RequestAuthentication => { let $map = $($borrow)* $index.request_authentications; $body }
            ResourceKind::Telemetry => { let $map = $($borrow)* $index.telemetries; $body }
            ResourceKind::VirtualService => { let $map = $($borrow)* $index.virtual_services; $body }
            ResourceKind::DestinationRule => { let $map = $($borrow)* $index.destination_rules; $body }
            ResourceKind::ServiceEntry => { let $map = $($borrow)* $index.service_entries; $body }
            ResourceKind::WorkloadEntry => { let $map = $($borrow)* $index.workload_entries; $body }
            ResourceKind::Gateway => { let $map = $($borrow)* $index.istio_gateways; $body }
            ResourceKind::KubernetesGateway => { let $map = $($borrow)* $index.gateways; $body }
            ResourceKind::GatewayClass => { let $map = $($borrow)* $index.gateway_classes; $body }
            ResourceKind::HTTPRoute => { let $map = $($borrow)* $index.http_routes; $body }
            ResourceKind::GRPCRoute => { let $map = $($borrow)* $index.grpc_routes; $body }
            ResourceKind::TCPRoute => { let $map = $($borrow)* $index.tcp_routes; $body }
            ResourceKind::TLSRoute => { let $map = $($borrow)* $index.tls_routes; $body }
            ResourceKind::ReferenceGrant => { let $map = $($borrow)* $index.reference_grants; $body }
            // A workload's service account is its pod's `spec.serviceAccountName`; the
            // ServiceAccount objects themselves add nothing.
            ResourceKind::ServiceAccount => {}
        }
    };
}

trait Entry: Sized {
    fn into_entry(resource: Resource) -> Option<Self>;
    fn into_resource(self) -> Resource;
}

macro_rules! entries {
    ($($variant:ident: $type:ty),* $(,)?) => {
        $(impl Entry for $type {
            fn into_entry(resource: Resource) -> Option<Self> {
                match resource {
                    Resource::$variant(r) => Some(r),
                    _ => None,
                }
            }

            fn into_resource(self) -> Resource {
                Resource::$variant(self)
            }
        })*
    };
}

entries!(
    Namespace: Namespace,
    Pod: Pod,
    Service: Service,
    EndpointSlice: EndpointSlice,
    Node: Node,
    AuthorizationPolicy: AuthorizationPolicy,
    PeerAuthentication: PeerAuthentication,
    RequestAuthentication: RequestAuthentication,
    Telemetry: Telemetry,
    VirtualService: VirtualService,
    DestinationRule: DestinationRule,
    ServiceEntry: ServiceEntry,
    WorkloadEntry: WorkloadEntry,
    Gateway: Gateway,
    KubernetesGateway: KubernetesGateway,
    GatewayClass: GatewayClass,
    HTTPRoute: HTTPRoute,
    GRPCRoute: GRPCRoute,
    TCPRoute: TCPRoute,
    TLSRoute: TLSRoute,
    ReferenceGrant: ReferenceGrant,
);

fn put<T: Entry>(map: &mut BTreeMap<Key, T>, key: Key, resource: Resource) {
    if let Some(entry) = T::into_entry(resource) {
        map.insert(key, entry);
    }
}

impl ConfigIndex {
    /// Builds the index from a load report: documents that failed to load or validate are
    /// rejected; for them, the version in `previous` (if any) is kept.
    pub fn from_report(
        report: LoadReport,
        previous: Option<&ConfigIndex>,
    ) -> (Self, Vec<Rejection>) {
        let mut index = Self::default();
        let mut rejections: Vec<Rejection> = report
            .errors
            .iter()
            .map(|e| Rejection {
                message: e.to_string(),
            })
            .collect();
        let mut refused: Vec<(ResourceKind, Key)> = Vec::new();
        for loaded in report.resources {
            let validation = validation::validate(&loaded.resource);
            if !validation.is_valid() {
                for error in validation.errors {
                    rejections.push(Rejection {
                        message: format!(
                            "{} {} {}: {}: {}",
                            loaded.location,
                            loaded.resource.kind().display_name(),
                            key(&loaded.resource),
                            error.path,
                            error.reason
                        ),
                    });
                }
                refused.push((loaded.resource.kind(), key(&loaded.resource)));
                continue;
            }
            let mut warnings = loaded.warnings;
            warnings.extend(validation.warnings);
            index.insert(loaded.resource, warnings);
        }
        // Keep the last good version of what was refused this time.
        if let Some(previous) = previous {
            for (kind, key) in refused {
                index.keep_from(previous, kind, &key);
            }
        }
        (index, rejections)
    }

    /// Adds (or replaces) a resource, with the warnings it was accepted with.
    pub fn insert(&mut self, resource: Resource, warnings: Vec<FieldWarning>) {
        let kind = resource.kind();
        let key = key(&resource);
        if warnings.is_empty() {
            self.warnings.remove(&(kind, key.clone()));
        } else {
            self.warnings.insert((kind, key.clone()), warnings);
        }
        with_map!([&mut] self, kind, |map| put(map, key, resource));
    }

    /// Removes one resource.
    pub fn remove(&mut self, kind: ResourceKind, key: &str) {
        self.warnings.remove(&(kind, key.to_owned()));
        with_map!([&mut] self, kind, |map| drop(map.remove(key)));
    }

    /// Removes every resource of `kind`.
    pub fn clear(&mut self, kind: ResourceKind) {
        self.warnings.retain(|(k, _), _| *k != kind);
        with_map!([&mut] self, kind, |map| map.clear());
    }

    fn keep_from(&mut self, previous: &ConfigIndex, kind: ResourceKind, key: &str) {
        let mut kept = None;
        with_map!([&] previous, kind, |map| kept = map.get(key).map(|r| r.clone().into_resource()));
        if let Some(resource) = kept {
            let warnings = previous
                .warnings
                .get(&(kind, key.to_owned()))
                .cloned()
                .unwrap_or_default();
            self.insert(resource, warnings);
        }
    }

    /// Labels of a namespace (empty when unknown).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(namespace)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

/// A shared, immutable view of the index.
pub type IndexSnapshot = Arc<ConfigIndex>;

/// The one index both sources feed: the Kubernetes source object by object (through
/// [`LiveIndex::change`]), the directory source a whole index at a
/// time ([`LiveIndex::replace`]). One writer at a time behind the lock, never held across an
/// `.await`; readers take cheap snapshots (the index is copied only when a snapshot is still
/// held at the next write) and wake on the generation watch.
#[derive(Debug)]
pub struct LiveIndex {
    index: std::sync::Mutex<Arc<ConfigIndex>>,
    generation: tokio::sync::watch::Sender<u64>,
    /// Resources refused by validation so far (each load of the configuration directory counts
    /// the documents it refuses; Kubernetes mode, each refused object event).
    rejections: std::sync::atomic::AtomicU64,
}

impl Default for LiveIndex {
    fn default() -> Self {
        Self {
            index: Default::default(),
            generation: tokio::sync::watch::channel(0).0,
            rejections: Default::default(),
        }
    }
}

impl LiveIndex {
    pub fn snapshot(&self) -> IndexSnapshot {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wakes on every change; the value counts the changes so far.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Replaces the whole index (the directory source, after each rescan).
    pub fn replace(&self, index: ConfigIndex) {
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Counts `count` resources refused by validation.
    pub fn count_rejections(&self, count: usize) {
        self.rejections
            .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resources refused by validation so far (the monitoring port's
    /// `weft_configuration_rejections`).
    pub fn rejections(&self) -> u64 {
        self.rejections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies `change` under the lock and wakes the readers: the Kubernetes source's writes,
    /// object by object (`source::kube`'s `ResourceSink` implementation).
    pub fn change(&self, change: impl FnOnce(&mut ConfigIndex)) {
        {
            let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
            change(Arc::make_mut(&mut guard));
        }
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A change waits this long for quiet before it is translated...
pub const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);
/// ...but never longer than this after the first change it carries.
pub const DEBOUNCE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for the next change of the index and lets it settle (100 ms of quiet, at most 1 s);
/// false when the index or the controller is going away.
pub async fn settled_change(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        changed = changes.changed() => if changed.is_err() { return false },
        _ = shutdown.wait_for(|s| *s) => return false,
    }
    let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return false;
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            () = quiet => break,
        }
    }
    changes.borrow_and_update();
    true
}
