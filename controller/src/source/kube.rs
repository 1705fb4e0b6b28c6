//! The Kubernetes source: one `kube` watcher per kind the mesh reads (Namespace, Pod, Service,
//! ServiceAccount, EndpointSlice, the six Istio kinds and the Gateway API Gateway), feeding a
//! [`ResourceSink`]. Every object is decoded and validated before it reaches the sink; a refused
//! object is logged (kind, namespace, name, field path, reason), reported to the sink, and the
//! previous good version of it stays in place. A (re)list replaces the kind's whole set at once.
//!
//! Objects are watched untyped ([`DynamicObject`]) and decoded one by one, so that one object
//! breaking the schema (Istio's CRDs keep unknown fields under `spec`) cannot stall its whole kind.

#[cfg(any(test, feature = "testing"))]
pub mod fake_apiserver;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use ::kube::Client;
use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::Instrument;

use crate::model::{
    AuthorizationPolicy, DestinationRule, Gateway, KubernetesGateway, PeerAuthentication, Resource,
    ResourceKind, ServiceEntry, VirtualService,
};
use crate::validation::{self, FieldError};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Where the sources deliver configuration. Implemented by the controller's index.
///
/// Resources are identified by kind, namespace (empty for cluster-scoped kinds) and name.
pub trait ResourceSink: Send + Sync {
    /// Adds a resource, or replaces the one with the same identity.
    fn apply(&self, resource: Resource);
    /// Removes a resource; an unknown one is ignored.
    fn delete(&self, kind: ResourceKind, namespace: &str, name: &str);
    /// Replaces every resource of `kind` with `resources` in one step, so that readers never see
    /// a half-listed kind. Called after each (re)list.
    fn replace_all(&self, kind: ResourceKind, resources: Vec<Resource>);
    /// Hears about a refused resource (for status reporting); nothing was changed for it.
    fn rejected(&self, _rejection: &Rejection) {}
}

/// A resource the source refused, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
    pub problems: Vec<FieldError>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}:", self.kind, self.name)?;
        } else {
            write!(f, "{} {}/{}:", self.kind, self.namespace, self.name)?;
        }
        for (i, problem) in self.problems.iter().enumerate() {
            let separator = if i == 0 { " " } else { "; " };
            write!(f, "{separator}{problem}")?;
        }
        Ok(())
    }
}

/// The API coordinates (group, version, kind, plural) the source watches for `kind`.
pub fn api_resource(kind: ResourceKind) -> ApiResource {
    match kind {
        ResourceKind::VirtualService => ApiResource::erase::<VirtualService>(&()),
        ResourceKind::DestinationRule => ApiResource::erase::<DestinationRule>(&()),
        ResourceKind::ServiceEntry => ApiResource::erase::<ServiceEntry>(&()),
        ResourceKind::Gateway => ApiResource::erase::<Gateway>(&()),
        ResourceKind::AuthorizationPolicy => ApiResource::erase::<AuthorizationPolicy>(&()),
        ResourceKind::PeerAuthentication => ApiResource::erase::<PeerAuthentication>(&()),
        ResourceKind::KubernetesGateway => ApiResource::erase::<KubernetesGateway>(&()),
        ResourceKind::Namespace => ApiResource::erase::<Namespace>(&()),
        ResourceKind::Pod => ApiResource::erase::<Pod>(&()),
        ResourceKind::Service => ApiResource::erase::<Service>(&()),
        ResourceKind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        ResourceKind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
    }
}

const OBJECT_ROOT_PATH: &str = "<object>";

/// Turns an object read from the API server into a [`Resource`], with the same schema rules as
/// the YAML loader. The error names the field path and the reason.
pub fn decode(kind: ResourceKind, object: &DynamicObject) -> Result<Resource, FieldError> {
    let schema_error = |path: &str, reason: String| FieldError {
        path: path.to_owned(),
        reason,
    };
    let mut value = serde_json::to_value(object)
        .map_err(|e| schema_error(OBJECT_ROOT_PATH, format!("cannot re-encode: {e}")))?;
    let Some(map) = value.as_object_mut() else {
        return Err(schema_error(
            OBJECT_ROOT_PATH,
            "object is not a mapping".to_owned(),
        ));
    };
    // List items come without their type; the source knows it from the endpoint it watched.
    let api = api_resource(kind);
    map.insert("apiVersion".to_owned(), api.api_version.into());
    map.insert("kind".to_owned(), api.kind.into());
    let is_istio = matches!(
        kind,
        ResourceKind::VirtualService
            | ResourceKind::DestinationRule
            | ResourceKind::ServiceEntry
            | ResourceKind::Gateway
            | ResourceKind::AuthorizationPolicy
            | ResourceKind::PeerAuthentication
    );
    // `spec` may be left out entirely (an AuthorizationPolicy without spec denies all).
    if is_istio && map.get("spec").is_none_or(serde_json::Value::is_null) {
        map.insert(
            "spec".to_owned(),
            serde_json::Value::Object(Default::default()),
        );
    }

    fn parse<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, FieldError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            FieldError {
                path: if path == "." {
                    OBJECT_ROOT_PATH.to_owned()
                } else {
                    path
                },
                reason: e.into_inner().to_string(),
            }
        })
    }
    Ok(match kind {
        ResourceKind::VirtualService => Resource::VirtualService(parse(value)?),
        ResourceKind::DestinationRule => Resource::DestinationRule(parse(value)?),
        ResourceKind::ServiceEntry => Resource::ServiceEntry(parse(value)?),
        ResourceKind::Gateway => Resource::Gateway(parse(value)?),
        ResourceKind::AuthorizationPolicy => Resource::AuthorizationPolicy(parse(value)?),
        ResourceKind::PeerAuthentication => Resource::PeerAuthentication(parse(value)?),
        ResourceKind::KubernetesGateway => Resource::KubernetesGateway(parse(value)?),
        ResourceKind::Namespace => Resource::Namespace(parse(value)?),
        ResourceKind::Pod => Resource::Pod(parse(value)?),
        ResourceKind::Service => Resource::Service(parse(value)?),
        ResourceKind::ServiceAccount => Resource::ServiceAccount(parse(value)?),
        ResourceKind::EndpointSlice => Resource::EndpointSlice(parse(value)?),
    })
}

/// Decodes and validates one object: the resource, or why it was refused.
pub fn admit(kind: ResourceKind, object: &DynamicObject) -> Result<Resource, Rejection> {
    let problems = match decode(kind, object) {
        Ok(resource) => {
            let problems = validation::validate(&resource);
            if problems.is_empty() {
                return Ok(resource);
            }
            problems
        }
        Err(problem) => vec![problem],
    };
    Err(Rejection {
        kind,
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
        problems,
    })
}

type ObjectKey = (String, String);

fn object_key(object: &DynamicObject) -> ObjectKey {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// Turns one kind's watcher events into sink calls, remembering the last good version of each
/// object so that a refused update or a relist carrying a refused object keeps it.
pub struct KindTracker {
    kind: ResourceKind,
    last_good: BTreeMap<ObjectKey, Resource>,
    /// Objects of a (re)list in progress; `None` outside of one.
    listing: Option<BTreeMap<ObjectKey, Resource>>,
    /// Whether the sink has had a full set of this kind (possibly empty).
    listed: bool,
}

/// What a watcher event did to the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing reached the sink: a list is being gathered, or nothing changed.
    Pending,
    Applied,
    Deleted,
    /// A (re)list finished and replaced the kind's set.
    Replaced,
    Rejected,
}

impl KindTracker {
    pub fn new(kind: ResourceKind) -> Self {
        Self {
            kind,
            last_good: BTreeMap::new(),
            listing: None,
            listed: false,
        }
    }

    /// The API server does not serve the kind (its CRD is not installed): there are none of it.
    /// Replaces the kind's set with nothing the first time, and again only if it held objects.
    pub fn not_served(&mut self, sink: &dyn ResourceSink) -> Outcome {
        self.listing = None;
        if self.listed && self.last_good.is_empty() {
            return Outcome::Pending;
        }
        self.last_good.clear();
        self.listed = true;
        sink.replace_all(self.kind, Vec::new());
        Outcome::Replaced
    }

    /// `Init`/`InitApply`/`InitDone` gather a (re)list and hand it over with one
    /// [`ResourceSink::replace_all`]; `Apply` and `Delete` pass through one by one. Refused
    /// objects are logged and reported, and never replace an accepted version.
    pub fn handle(&mut self, event: Event<DynamicObject>, sink: &dyn ResourceSink) -> Outcome {
        let kind = self.kind;
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                Outcome::Pending
            }
            Event::InitApply(object) => {
                let key = object_key(&object);
                let admitted = self.admit(&object, sink);
                let listing = self.listing.get_or_insert_with(BTreeMap::new);
                match admitted {
                    Some(resource) => {
                        listing.insert(key, resource);
                        Outcome::Pending
                    }
                    None => {
                        if let Some(previous) = self.last_good.get(&key) {
                            tracing::info!(kind = %kind, namespace = %key.0, name = %key.1,
                                "keeping the previous version of a refused resource");
                            listing.insert(key, previous.clone());
                        }
                        Outcome::Rejected
                    }
                }
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let resources = listed.values().cloned().collect::<Vec<_>>();
                tracing::debug!(kind = %kind, count = resources.len(), "listed");
                self.last_good = listed;
                self.listed = true;
                sink.replace_all(kind, resources);
                Outcome::Replaced
            }
            Event::Apply(object) => match self.admit(&object, sink) {
                Some(resource) => {
                    self.last_good.insert(object_key(&object), resource.clone());
                    sink.apply(resource);
                    Outcome::Applied
                }
                None => Outcome::Rejected,
            },
            Event::Delete(object) => {
                let key = object_key(&object);
                self.last_good.remove(&key);
                sink.delete(kind, &key.0, &key.1);
                Outcome::Deleted
            }
        }
    }

    fn admit(&self, object: &DynamicObject, sink: &dyn ResourceSink) -> Option<Resource> {
        match admit(self.kind, object) {
            Ok(resource) => Some(resource),
            Err(rejection) => {
                for problem in &rejection.problems {
                    tracing::warn!(
                        kind = %rejection.kind,
                        namespace = %rejection.namespace,
                        name = %rejection.name,
                        path = %problem.path,
                        reason = %problem.reason,
                        "resource refused"
                    );
                }
                sink.rejected(&rejection);
                None
            }
        }
    }
}

/// Watches the API server and feeds a [`ResourceSink`].
pub struct KubeSource {
    client: Client,
    sink: Arc<dyn ResourceSink>,
    kinds: Vec<ResourceKind>,
    synced: watch::Sender<BTreeSet<ResourceKind>>,
}

impl KubeSource {
    /// A source over every kind of [`ResourceKind::ALL`].
    pub fn new(client: Client, sink: Arc<dyn ResourceSink>) -> Self {
        Self {
            client,
            sink,
            kinds: ResourceKind::ALL.to_vec(),
            synced: watch::Sender::new(BTreeSet::new()),
        }
    }

    /// Restricts the watched kinds (for instance when the Gateway API CRDs are not installed).
    pub fn with_kinds(mut self, kinds: impl IntoIterator<Item = ResourceKind>) -> Self {
        self.kinds = kinds
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self
    }

    /// The kinds whose first list has reached the sink; grows until it holds every watched kind.
    pub fn synced(&self) -> watch::Receiver<BTreeSet<ResourceKind>> {
        self.synced.subscribe()
    }

    pub fn kinds(&self) -> &[ResourceKind] {
        &self.kinds
    }

    /// Runs the watchers until the future is dropped. Errors are logged and retried with
    /// `kube`'s default exponential backoff (0.8 s doubling to 30 s). A kind the API server
    /// does not serve (404, e.g. the Gateway API CRDs are missing) counts as listed and empty,
    /// and is retried with the same backoff in case it appears.
    pub async fn run(self) {
        let watchers = self.kinds.iter().map(|&kind| {
            let span = tracing::info_span!("kube_watch", kind = %kind);
            watch_kind(
                self.client.clone(),
                kind,
                Arc::clone(&self.sink),
                self.synced.clone(),
            )
            .instrument(span)
        });
        futures::future::join_all(watchers).await;
    }
}

async fn watch_kind(
    client: Client,
    kind: ResourceKind,
    sink: Arc<dyn ResourceSink>,
    synced: watch::Sender<BTreeSet<ResourceKind>>,
) {
    let api = Api::<DynamicObject>::all_with(client, &api_resource(kind));
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut tracker = KindTracker::new(kind);
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if tracker.handle(event, sink.as_ref()) == Outcome::Replaced {
                    synced.send_if_modified(|kinds| kinds.insert(kind));
                }
            }
            Err(error) if is_not_served(&error) => {
                if tracker.not_served(sink.as_ref()) == Outcome::Replaced {
                    tracing::info!(kind = %kind, "kind not served by the API server; none of it until it is");
                    synced.send_if_modified(|kinds| kinds.insert(kind));
                }
            }
            Err(error) => tracing::warn!(kind = %kind, %error, "watch failed; retrying"),
        }
    }
}

/// A 404 on the list: the resource type does not exist (yet) on this API server.
fn is_not_served(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(::kube::Error::Api(status)) if status.code == 404
    )
}
