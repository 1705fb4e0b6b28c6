//! The index: every valid resource the controller knows, by kind, from whichever source. An
//! invalid document never enters it; where a resource had a valid version before, that version
//! stays (the last good configuration keeps serving).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{
    loader::LoadReport,
    model::{
        AuthorizationPolicy, DestinationRule, KubernetesGateway, PeerAuthentication, Resource,
        ResourceKind, VirtualService,
    },
    validation,
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
    pub authorization_policies: BTreeMap<Key, AuthorizationPolicy>,
    pub peer_authentications: BTreeMap<Key, PeerAuthentication>,
    pub virtual_services: BTreeMap<Key, VirtualService>,
    pub destination_rules: BTreeMap<Key, DestinationRule>,
    pub gateways: BTreeMap<Key, KubernetesGateway>,
}

/// A document that was refused, as reported to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub message: String,
}

fn key(resource: &Resource) -> Key {
    if resource.kind().namespaced() {
        format!("{}/{}", resource.namespace(), resource.name())
    } else {
        resource.name().to_string()
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
            let errors = validation::validate(&loaded.resource);
            if !errors.is_empty() {
                for error in errors {
                    rejections.push(Rejection {
                        message: format!(
                            "{} {} {}/{}: {}: {}",
                            loaded.location,
                            loaded.resource.kind().display_name(),
                            loaded.resource.namespace(),
                            loaded.resource.name(),
                            error.path,
                            error.reason
                        ),
                    });
                }
                refused.push((loaded.resource.kind(), key(&loaded.resource)));
                continue;
            }
            index.insert(loaded.resource);
        }
        // Keep the last good version of what was refused this time.
        if let Some(previous) = previous {
            for (kind, key) in refused {
                index.keep_from(previous, kind, &key);
            }
        }
        (index, rejections)
    }

    pub fn insert(&mut self, resource: Resource) {
        let key = key(&resource);
        match resource {
            Resource::Namespace(r) => drop(self.namespaces.insert(key, r)),
            Resource::Pod(r) => drop(self.pods.insert(key, r)),
            Resource::Service(r) => drop(self.services.insert(key, r)),
            Resource::AuthorizationPolicy(r) => drop(self.authorization_policies.insert(key, r)),
            Resource::PeerAuthentication(r) => drop(self.peer_authentications.insert(key, r)),
            Resource::VirtualService(r) => drop(self.virtual_services.insert(key, r)),
            Resource::DestinationRule(r) => drop(self.destination_rules.insert(key, r)),
            Resource::KubernetesGateway(r) => drop(self.gateways.insert(key, r)),
            Resource::EndpointSlice(r) => drop(self.endpoint_slices.insert(key, r)),
            // Not used by translation yet. (A workload's service account is its pod's
            // `spec.serviceAccountName`; the ServiceAccount objects themselves add nothing.)
            Resource::ServiceEntry(_) | Resource::Gateway(_) | Resource::ServiceAccount(_) => {}
        }
    }

    /// Removes one resource.
    pub fn remove(&mut self, kind: ResourceKind, key: &str) {
        match kind {
            ResourceKind::Namespace => drop(self.namespaces.remove(key)),
            ResourceKind::Pod => drop(self.pods.remove(key)),
            ResourceKind::Service => drop(self.services.remove(key)),
            ResourceKind::AuthorizationPolicy => drop(self.authorization_policies.remove(key)),
            ResourceKind::PeerAuthentication => drop(self.peer_authentications.remove(key)),
            ResourceKind::VirtualService => drop(self.virtual_services.remove(key)),
            ResourceKind::DestinationRule => drop(self.destination_rules.remove(key)),
            ResourceKind::KubernetesGateway => drop(self.gateways.remove(key)),
            ResourceKind::EndpointSlice => drop(self.endpoint_slices.remove(key)),
            _ => {}
        }
    }

    /// Removes every resource of `kind`.
    pub fn clear(&mut self, kind: ResourceKind) {
        match kind {
            ResourceKind::Namespace => self.namespaces.clear(),
            ResourceKind::Pod => self.pods.clear(),
            ResourceKind::Service => self.services.clear(),
            ResourceKind::AuthorizationPolicy => self.authorization_policies.clear(),
            ResourceKind::PeerAuthentication => self.peer_authentications.clear(),
            ResourceKind::VirtualService => self.virtual_services.clear(),
            ResourceKind::DestinationRule => self.destination_rules.clear(),
            ResourceKind::KubernetesGateway => self.gateways.clear(),
            ResourceKind::EndpointSlice => self.endpoint_slices.clear(),
            _ => {}
        }
    }

    fn keep_from(&mut self, previous: &ConfigIndex, kind: ResourceKind, key: &str) {
        fn copy<T: Clone>(to: &mut BTreeMap<Key, T>, from: &BTreeMap<Key, T>, key: &str) {
            if let Some(value) = from.get(key) {
                to.insert(key.to_string(), value.clone());
            }
        }
        match kind {
            ResourceKind::Namespace => copy(&mut self.namespaces, &previous.namespaces, key),
            ResourceKind::Pod => copy(&mut self.pods, &previous.pods, key),
            ResourceKind::Service => copy(&mut self.services, &previous.services, key),
            ResourceKind::AuthorizationPolicy => copy(
                &mut self.authorization_policies,
                &previous.authorization_policies,
                key,
            ),
            ResourceKind::PeerAuthentication => copy(
                &mut self.peer_authentications,
                &previous.peer_authentications,
                key,
            ),
            ResourceKind::VirtualService => {
                copy(&mut self.virtual_services, &previous.virtual_services, key)
            }
            ResourceKind::DestinationRule => copy(
                &mut self.destination_rules,
                &previous.destination_rules,
                key,
            ),
            ResourceKind::KubernetesGateway => copy(&mut self.gateways, &previous.gateways, key),
            ResourceKind::EndpointSlice => {
                copy(&mut self.endpoint_slices, &previous.endpoint_slices, key)
            }
            _ => {}
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
/// [`ResourceSink`](crate::source::kube::ResourceSink)), the directory source a whole index at a
/// time ([`LiveIndex::replace`]). One writer at a time behind the lock, never held across an
/// `.await`; readers take cheap snapshots (the index is copied only when a snapshot is still
/// held at the next write) and wake on the generation watch.
#[derive(Debug)]
pub struct LiveIndex {
    index: std::sync::Mutex<Arc<ConfigIndex>>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for LiveIndex {
    fn default() -> Self {
        Self {
            index: Default::default(),
            generation: tokio::sync::watch::channel(0).0,
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

    fn change(&self, change: impl FnOnce(&mut ConfigIndex)) {
        {
            let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
            change(Arc::make_mut(&mut guard));
        }
        self.generation.send_modify(|g| *g += 1);
    }
}

fn key_of(kind: ResourceKind, namespace: &str, name: &str) -> Key {
    if kind.namespaced() {
        format!("{namespace}/{name}")
    } else {
        name.to_string()
    }
}

impl crate::source::kube::ResourceSink for LiveIndex {
    fn apply(&self, resource: Resource) {
        self.change(|index| index.insert(resource));
    }

    fn delete(&self, kind: ResourceKind, namespace: &str, name: &str) {
        self.change(|index| index.remove(kind, &key_of(kind, namespace, name)));
    }

    fn replace_all(&self, kind: ResourceKind, resources: Vec<Resource>) {
        self.change(|index| {
            index.clear(kind);
            for resource in resources {
                index.insert(resource);
            }
        });
    }
}
