//! The one in-memory index of valid configuration. Sources (the local directory, Kubernetes
//! watchers) write through [`ConfigIndex`]; every write validates first, so an invalid resource
//! never enters, and the previous good version of that resource stays. Readers take a cheap
//! [`Snapshot`] (`Arc`) and wait for change on a `watch` of the generation number.
//!
//! One writer: all mutations go through one mutex that is never held across an `.await`; each
//! mutation builds a new snapshot (copy-on-write of the per-kind maps), so readers never block
//! writers and never see a half-applied change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use tokio::sync::watch;

use crate::model::{
    AuthorizationPolicy, DestinationRule, KubernetesGateway, PeerAuthentication, Resource,
    ResourceKind, VirtualService,
};
use crate::validation::{self, FieldError};

/// Identity of a resource in the index: kind, namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: ResourceKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(resource: &Resource) -> Self {
        Self::new(resource.kind(), resource.namespace(), resource.name())
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A named producer of resources, e.g. `file:/etc/weft/config`. [`ConfigIndex::replace_all`]
/// replaces exactly what one source owns and leaves the others alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub String);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a resource was refused by the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("{key}: {}", join_field_errors(errors))]
    Invalid {
        key: ResourceKey,
        errors: Vec<FieldError>,
    },
    #[error("{key}: metadata.name is empty")]
    Unnamed { key: ResourceKey },
}

fn join_field_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

type Store = BTreeMap<(String, String), Arc<Resource>>;

/// An immutable view of the index at one generation.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    generation: u64,
    stores: BTreeMap<ResourceKind, Arc<Store>>,
}

macro_rules! typed_list {
    ($fn_name:ident, $kind:ident, $ty:ty) => {
        #[doc = concat!("Every ", stringify!($kind), ", sorted by namespace and name.")]
        pub fn $fn_name(&self) -> impl Iterator<Item = &$ty> {
            self.list(ResourceKind::$kind).filter_map(|r| match r {
                Resource::$kind(inner) => Some(inner),
                _ => None,
            })
        }
    };
}

impl Snapshot {
    /// Builds a snapshot straight from resources, without validation (tests and tools).
    pub fn from_resources(resources: impl IntoIterator<Item = Resource>) -> Self {
        let mut stores: BTreeMap<ResourceKind, Store> = BTreeMap::new();
        for resource in resources {
            let key = ResourceKey::of(&resource);
            stores
                .entry(key.kind)
                .or_default()
                .insert((key.namespace, key.name), Arc::new(resource));
        }
        Self {
            generation: 0,
            stores: stores.into_iter().map(|(k, s)| (k, Arc::new(s))).collect(),
        }
    }

    /// Increases by one on every change that altered the content.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn get(&self, kind: ResourceKind, namespace: &str, name: &str) -> Option<&Resource> {
        self.stores
            .get(&kind)?
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(Arc::as_ref)
    }

    /// All resources of a kind, sorted by namespace and name.
    pub fn list(&self, kind: ResourceKind) -> impl Iterator<Item = &Resource> {
        self.stores
            .get(&kind)
            .into_iter()
            .flat_map(|store| store.values().map(Arc::as_ref))
    }

    /// Resources of a kind in one namespace, sorted by name.
    pub fn list_in(&self, kind: ResourceKind, namespace: &str) -> impl Iterator<Item = &Resource> {
        self.list(kind).filter(move |r| r.namespace() == namespace)
    }

    pub fn len(&self) -> usize {
        self.stores.values().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<ResourceKey> {
        self.stores
            .iter()
            .flat_map(|(kind, store)| {
                store
                    .keys()
                    .map(|(ns, name)| ResourceKey::new(*kind, ns.clone(), name.clone()))
            })
            .collect()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        match self.get(ResourceKind::Namespace, "", name)? {
            Resource::Namespace(ns) => Some(ns),
            _ => None,
        }
    }

    typed_list!(pods, Pod, Pod);
    typed_list!(services, Service, Service);
    typed_list!(virtual_services, VirtualService, VirtualService);
    typed_list!(destination_rules, DestinationRule, DestinationRule);
    typed_list!(
        authorization_policies,
        AuthorizationPolicy,
        AuthorizationPolicy
    );
    typed_list!(peer_authentications, PeerAuthentication, PeerAuthentication);
    typed_list!(kubernetes_gateways, KubernetesGateway, KubernetesGateway);
}

#[derive(Debug, Default)]
struct State {
    snapshot: Arc<Snapshot>,
    /// Which source put each key there; keys written by `apply` have no owner entry.
    owners: BTreeMap<ResourceKey, SourceId>,
}

impl State {
    fn current(&self, key: &ResourceKey) -> Option<&Resource> {
        self.snapshot.get(key.kind, &key.namespace, &key.name)
    }
}

/// The outcome of [`ConfigIndex::replace_all`].
#[derive(Debug, Default)]
pub struct ReplaceReport {
    /// Resources refused by validation; for each, any previous good version was kept.
    pub invalid: Vec<IndexError>,
    /// Keys that kept their previous version because the new one was invalid.
    pub kept: Vec<ResourceKey>,
    pub changed: bool,
}

/// The configuration index: one writer, many snapshot readers.
#[derive(Debug)]
pub struct ConfigIndex {
    state: Mutex<State>,
    generation: watch::Sender<u64>,
}

impl Default for ConfigIndex {
    fn default() -> Self {
        Self::new()
    }
}

fn check(resource: &Resource) -> Result<(), IndexError> {
    let key = ResourceKey::of(resource);
    if key.name.is_empty() {
        return Err(IndexError::Unnamed { key });
    }
    let errors = validation::validate(resource);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(IndexError::Invalid { key, errors })
    }
}

impl ConfigIndex {
    pub fn new() -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            state: Mutex::new(State::default()),
            generation,
        }
    }

    /// The current snapshot; cheap (one `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.lock().snapshot.clone()
    }

    /// A receiver that wakes when the generation changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every mutation
        // swaps in a fully built snapshot, so the data behind a poisoned lock is still whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces one resource (event-driven sources). Invalid resources are refused and
    /// the previous version stays. Returns whether the content changed.
    pub fn apply(&self, resource: Resource) -> Result<bool, IndexError> {
        if let Err(error) = check(&resource) {
            tracing::warn!(%error, "invalid resource refused; previous version kept");
            return Err(error);
        }
        let key = ResourceKey::of(&resource);
        let mut state = self.lock();
        if state.current(&key) == Some(&resource) {
            return Ok(false);
        }
        state.owners.remove(&key);
        let mut edits = BTreeMap::new();
        edits.insert(key, Some(resource));
        self.commit(&mut state, edits);
        Ok(true)
    }

    /// Removes one resource; returns whether it was present.
    pub fn delete(&self, kind: ResourceKind, namespace: &str, name: &str) -> bool {
        let key = ResourceKey::new(kind, namespace, name);
        let mut state = self.lock();
        if state.current(&key).is_none() {
            return false;
        }
        state.owners.remove(&key);
        let mut edits = BTreeMap::new();
        edits.insert(key, None);
        self.commit(&mut state, edits);
        true
    }

    /// Replaces everything `source` owns with `resources`: keys it no longer lists are removed,
    /// invalid resources are refused and the previous good version of each is kept.
    pub fn replace_all(&self, source: &SourceId, resources: Vec<Resource>) -> ReplaceReport {
        let mut report = ReplaceReport::default();
        let mut desired: BTreeMap<ResourceKey, Option<Resource>> = BTreeMap::new();
        let mut listed: BTreeSet<ResourceKey> = BTreeSet::new();
        for resource in resources {
            let key = ResourceKey::of(&resource);
            listed.insert(key.clone());
            match check(&resource) {
                Ok(()) => {
                    desired.insert(key, Some(resource));
                }
                Err(error) => report.invalid.push(error),
            }
        }
        let mut state = self.lock();
        let mut edits = BTreeMap::new();
        for (key, owner) in &state.owners {
            if owner == source && !listed.contains(key) {
                edits.insert(key.clone(), None);
            }
        }
        for key in &listed {
            if !desired.contains_key(key) && state.current(key).is_some() {
                report.kept.push(key.clone());
            }
        }
        for (key, resource) in desired {
            if state.current(&key) != resource.as_ref() {
                edits.insert(key.clone(), resource);
            }
            state.owners.insert(key, source.clone());
        }
        for key in edits.keys() {
            if edits.get(key).is_some_and(Option::is_none) {
                state.owners.remove(key);
            }
        }
        report.changed = !edits.is_empty();
        if report.changed {
            self.commit(&mut state, edits);
        }
        report
    }

    /// Applies edits (`None` deletes) as one new snapshot and wakes readers.
    fn commit(&self, state: &mut State, edits: BTreeMap<ResourceKey, Option<Resource>>) {
        let mut stores = state.snapshot.stores.clone();
        for (key, resource) in edits {
            let store = Arc::make_mut(stores.entry(key.kind).or_default());
            match resource {
                Some(resource) => {
                    store.insert((key.namespace, key.name), Arc::new(resource));
                }
                None => {
                    store.remove(&(key.namespace, key.name));
                }
            }
        }
        stores.retain(|_, store| !store.is_empty());
        let generation = state.snapshot.generation + 1;
        state.snapshot = Arc::new(Snapshot { generation, stores });
        self.generation.send_replace(generation);
        tracing::debug!(generation, "configuration index updated");
    }
}

#[cfg(test)]
mod tests;
