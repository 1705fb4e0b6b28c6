//! The index: every valid resource the controller knows, by kind, from whichever source. An
//! invalid document never enters it; where a resource had a valid version before, that version
//! stays (the last good configuration keeps serving).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};

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
            // Not used by translation yet.
            Resource::ServiceEntry(_)
            | Resource::Gateway(_)
            | Resource::ServiceAccount(_)
            | Resource::EndpointSlice(_) => {}
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
