//! The Kubernetes source: one `kube` watcher per kind the mesh reads (Namespace, Pod, Service,
//! ServiceAccount, EndpointSlice, Node, the Istio kinds and the Gateway API kinds), feeding a
//! [`ResourceSink`]. Every object is decoded and validated before it reaches the sink; a refused
//! object is logged (kind, namespace, name, field path, reason), reported to the sink, and the
//! previous good version of it stays in place. A (re)list replaces the kind's whole set at once.
//!
//! Objects are watched untyped ([`DynamicObject`]) and decoded one by one, so that one object
//! breaking the schema cannot stall its whole kind. Fields the model does not know (CRDs of a
//! newer Istio may keep them) are accepted with a warning, as istiod accepts them. Each kind is
//! watched at the first of its versions the API server serves (Istio's and the Gateway API's
//! CRDs serve several versions of one schema, so any one returns every object).

pub mod entry_status;
pub mod mesh_config;
pub mod provision;
pub mod route_status;
pub mod secrets;
#[cfg(test)]
pub(crate) mod test_support;
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
use tokio::sync::watch;
use tracing::Instrument;

use crate::index::{LiveIndex, key_of};
use crate::loader::unknown_field_warning;
use crate::model::decode::{self, UnknownFields};
use crate::model::{Resource, ResourceKind};
use crate::validation::{self, FieldError, FieldWarning};

/// Where the sources deliver configuration. Implemented by the controller's index.
///
/// Resources are identified by kind, namespace (empty for cluster-scoped kinds) and name.
pub trait ResourceSink: Send + Sync {
    /// Adds a resource, or replaces the one with the same identity, with the warnings it was
    /// accepted with.
    fn apply(&self, resource: Resource, warnings: Vec<FieldWarning>);
    /// Removes a resource; an unknown one is ignored.
    fn delete(&self, kind: ResourceKind, namespace: &str, name: &str);
    /// Replaces every resource of `kind` with `resources` in one step, so that readers never see
    /// a half-listed kind. Called after each (re)list.
    fn replace_all(&self, kind: ResourceKind, resources: Vec<(Resource, Vec<FieldWarning>)>);
    /// Hears about a refused resource (for status reporting); nothing was changed for it.
    fn rejected(&self, _rejection: &Rejection) {}
}

/// The controller's index, fed object by object.
impl ResourceSink for LiveIndex {
    fn apply(&self, resource: Resource, warnings: Vec<FieldWarning>) {
        // A Node is kept as its name and labels: an update of anything else (its status, at
        // every heartbeat) is no change of the mesh and must not start a translation.
        if let Resource::Node(node) = &resource
            && self
                .snapshot()
                .nodes
                .get(node.metadata.name.as_deref().unwrap_or_default())
                == Some(node)
        {
            return;
        }
        self.change(|index| index.insert(resource, warnings));
    }

    fn delete(&self, kind: ResourceKind, namespace: &str, name: &str) {
        self.change(|index| index.remove(kind, &key_of(kind, namespace, name)));
    }

    fn replace_all(&self, kind: ResourceKind, resources: Vec<(Resource, Vec<FieldWarning>)>) {
        self.change(|index| {
            index.clear(kind);
            for (resource, warnings) in resources {
                index.insert(resource, warnings);
            }
        });
    }

    fn rejected(&self, _rejection: &Rejection) {
        self.count_rejections(1);
    }
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

/// The API coordinates (group, version, kind, plural) of `kind` at `version` (one of
/// [`ResourceKind::versions`]).
pub fn api_resource_at(kind: ResourceKind, version: &str) -> ApiResource {
    let group = kind.group();
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.kind().to_owned(),
        plural: plural(kind).to_owned(),
    }
}

/// The API coordinates of `kind` at its stored version.
pub fn api_resource(kind: ResourceKind) -> ApiResource {
    api_resource_at(kind, kind.versions()[0])
}

fn plural(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::VirtualService => "virtualservices",
        ResourceKind::DestinationRule => "destinationrules",
        ResourceKind::ServiceEntry => "serviceentries",
        ResourceKind::WorkloadEntry => "workloadentries",
        ResourceKind::Gateway | ResourceKind::KubernetesGateway => "gateways",
        ResourceKind::AuthorizationPolicy => "authorizationpolicies",
        ResourceKind::PeerAuthentication => "peerauthentications",
        ResourceKind::RequestAuthentication => "requestauthentications",
        ResourceKind::Telemetry => "telemetries",
        ResourceKind::GatewayClass => "gatewayclasses",
        ResourceKind::HTTPRoute => "httproutes",
        ResourceKind::GRPCRoute => "grpcroutes",
        ResourceKind::TCPRoute => "tcproutes",
        ResourceKind::TLSRoute => "tlsroutes",
        ResourceKind::ReferenceGrant => "referencegrants",
        ResourceKind::Namespace => "namespaces",
        ResourceKind::Pod => "pods",
        ResourceKind::Service => "services",
        ResourceKind::ServiceAccount => "serviceaccounts",
        ResourceKind::EndpointSlice => "endpointslices",
        ResourceKind::Node => "nodes",
    }
}

const OBJECT_ROOT_PATH: &str = "<object>";

/// Turns an object read from the API server (or an admission review) into a [`Resource`], with
/// the same schema as the YAML loader: the resource and what it set that the model does not
/// know, or the field path and reason it breaks the schema.
pub fn decode(
    kind: ResourceKind,
    object: serde_json::Value,
) -> Result<(Resource, Vec<FieldWarning>), FieldError> {
    let mut value = object;
    let Some(map) = value.as_object_mut() else {
        return Err(FieldError {
            path: OBJECT_ROOT_PATH.to_owned(),
            reason: "object is not a mapping".to_owned(),
        });
    };
    // List items come without their type; the source knows it from the endpoint it watched.
    let api = api_resource(kind);
    map.insert("apiVersion".to_owned(), api.api_version.into());
    map.insert("kind".to_owned(), api.kind.into());
    // `spec` may be left out entirely (an AuthorizationPolicy without spec denies all).
    if kind.is_istio() && map.get("spec").is_none_or(serde_json::Value::is_null) {
        map.insert(
            "spec".to_owned(),
            serde_json::Value::Object(Default::default()),
        );
    }
    let decoded = decode::decode(kind, value).map_err(|mut e| {
        if e.path == decode::ROOT_PATH {
            e.path = OBJECT_ROOT_PATH.to_owned();
        }
        e
    })?;
    let warnings = match decode::unknown_field_policy(kind, UnknownFields::Warn) {
        Some(_) => decoded
            .unknown_fields
            .into_iter()
            .map(unknown_field_warning)
            .collect(),
        None => Vec::new(),
    };
    Ok((decoded.resource, warnings))
}

/// A resource accepted, with its warnings.
pub type Admitted = (Resource, Vec<FieldWarning>);

/// Decodes and validates one object: the resource and its warnings, or why it was refused.
pub fn admit_value(
    kind: ResourceKind,
    object: serde_json::Value,
    namespace: &str,
    name: &str,
) -> Result<Admitted, Rejection> {
    let problems = match decode(kind, object) {
        Ok((resource, mut warnings)) => {
            let validation = validation::validate(&resource);
            if validation.is_valid() {
                warnings.extend(validation.warnings);
                return Ok((resource, warnings));
            }
            validation.errors
        }
        Err(problem) => vec![problem],
    };
    Err(Rejection {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        problems,
    })
}

/// [`admit_value`] for an object from a watch.
pub fn admit(kind: ResourceKind, object: &DynamicObject) -> Result<Admitted, Rejection> {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let value = serde_json::to_value(object).map_err(|e| Rejection {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
        problems: vec![FieldError {
            path: OBJECT_ROOT_PATH.to_owned(),
            reason: format!("cannot re-encode: {e}"),
        }],
    })?;
    admit_value(kind, value, &namespace, &name)
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
    last_good: BTreeMap<ObjectKey, Admitted>,
    /// Objects of a (re)list in progress; `None` outside of one.
    listing: Option<BTreeMap<ObjectKey, Admitted>>,
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
                Some(admitted) => {
                    self.last_good.insert(object_key(&object), admitted.clone());
                    sink.apply(admitted.0, admitted.1);
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

    fn admit(&self, object: &DynamicObject, sink: &dyn ResourceSink) -> Option<Admitted> {
        match admit(self.kind, object) {
            Ok(admitted) => Some(admitted),
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

/// While no version of a kind is served, it is looked for again after this, doubling up to
/// [`NOT_SERVED_RETRY_MAX`] (as `kube`'s default backoff does for other errors).
const NOT_SERVED_RETRY: std::time::Duration = std::time::Duration::from_millis(800);
const NOT_SERVED_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

async fn watch_kind(
    client: Client,
    kind: ResourceKind,
    sink: Arc<dyn ResourceSink>,
    synced: watch::Sender<BTreeSet<ResourceKind>>,
) {
    let versions = kind.versions();
    let mut tracker = KindTracker::new(kind);
    let mut version = 0;
    let mut retry = NOT_SERVED_RETRY;
    loop {
        let api = Api::<DynamicObject>::all_with(
            client.clone(),
            &api_resource_at(kind, versions[version]),
        );
        let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut not_served = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    retry = NOT_SERVED_RETRY;
                    if tracker.handle(event, sink.as_ref()) == Outcome::Replaced {
                        synced.send_if_modified(|kinds| kinds.insert(kind));
                    }
                }
                Err(error) if is_not_served(&error) => {
                    not_served = true;
                    break;
                }
                Err(error) => tracing::warn!(kind = %kind, %error, "watch failed; retrying"),
            }
        }
        if !not_served {
            return;
        }
        if version + 1 < versions.len() {
            // Try the kind's next version at once.
            version += 1;
            continue;
        }
        if tracker.not_served(sink.as_ref()) == Outcome::Replaced {
            tracing::info!(kind = %kind, versions = ?versions, "kind not served by the API server; none of it until it is");
            synced.send_if_modified(|kinds| kinds.insert(kind));
        }
        version = 0;
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(NOT_SERVED_RETRY_MAX);
    }
}

/// A 404 on the list: the resource type does not exist (yet) on this API server.
fn is_not_served(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(::kube::Error::Api(status)) if status.code == 404
    )
}
