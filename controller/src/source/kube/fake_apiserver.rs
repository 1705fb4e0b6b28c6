//! A fake Kubernetes API server for tests: plain HTTP/1.1 on 127.0.0.1, speaking enough of the
//! real list/watch protocol for `kube`'s own watcher to run against it unchanged.
//!
//! It serves collection lists (`limit`/`continue` pagination, `labelSelector`, `fieldSelector`),
//! single gets, and watches (`watch=true&resourceVersion=N`, newline-delimited `ADDED`,
//! `MODIFIED`, `DELETED`, `BOOKMARK` and `ERROR` events, `sendInitialEvents`), over core
//! (`/api/v1/...`) and group (`/apis/<group>/<version>/...`) paths, cluster-wide or namespaced.
//! It also takes creates (POST) and replaces (PUT) of any served kind, as the controller writes
//! its CA Secret and root ConfigMap, and answers TokenReviews for tokens registered with
//! [`FakeApiServer::add_token`]. Every change takes the next value of one global
//! resourceVersion counter and is kept in a history that watches replay.
//! [`FakeApiServer::expire`] makes older versions "too old" (410 Gone, forcing a relist),
//! [`FakeApiServer::fail_next`] answers the next requests with an error status, and every request
//! is logged for tests to assert on.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::model::ResourceKind;

/// Why a call on the fake failed.
#[derive(Debug, thiserror::Error)]
pub enum FakeApiError {
    #[error("cannot bind the fake API server: {0}")]
    Bind(std::io::Error),
    #[error("invalid URL {url}: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("cannot build a client for {url}: {source}")]
    Client {
        url: String,
        source: Box<::kube::Error>,
    },
    #[error("object is not a JSON mapping")]
    NotAnObject,
    #[error("object has no metadata.name")]
    MissingName,
    #[error("kind {kind:?} in {api_version:?} is not served")]
    UnknownKind { api_version: String, kind: String },
    #[error("{kind} {namespace}/{name} already exists")]
    AlreadyExists {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
}

/// One resource type the fake serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedKind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ServedKind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// What the controller itself reads and writes besides the watched kinds: Secrets (the CA),
    /// ConfigMaps (the published root) and its ValidatingWebhookConfiguration (the CA bundle).
    pub fn controller_kinds() -> Vec<ServedKind> {
        let core = |kind: &str, plural: &str| ServedKind {
            group: String::new(),
            version: "v1".to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced: true,
        };
        vec![
            core("Secret", "secrets"),
            core("ConfigMap", "configmaps"),
            ServedKind {
                group: "admissionregistration.k8s.io".to_owned(),
                version: "v1".to_owned(),
                kind: "ValidatingWebhookConfiguration".to_owned(),
                plural: "validatingwebhookconfigurations".to_owned(),
                namespaced: false,
            },
        ]
    }

    /// The kinds the mesh watches, at the versions the Kubernetes source asks for.
    pub fn mesh_kinds() -> Vec<ServedKind> {
        ResourceKind::ALL
            .into_iter()
            .map(|kind| {
                let api = super::api_resource(kind);
                ServedKind {
                    group: api.group,
                    version: api.version,
                    kind: api.kind,
                    plural: api.plural,
                    namespaced: kind.namespaced(),
                }
            })
            .collect()
    }
}

/// One request as the fake saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// The HTTP status answered (a watch that ends with a 410 ERROR event still answered 200).
    pub status: u16,
}

impl LoggedRequest {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1")
    }

    /// A list (not a watch, not a single get) of the collection at `path`.
    pub fn is_list_of(&self, path: &str) -> bool {
        self.method == "GET" && self.path == path && !self.is_watch()
    }

    pub fn is_watch_of(&self, path: &str) -> bool {
        self.method == "GET" && self.path == path && self.is_watch()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    resource_version: u64,
    kind_index: usize,
    event: EventType,
    object: Value,
}

/// (kind index, namespace, name)
type StoreKey = (usize, String, String);

#[derive(Debug)]
struct InjectedFailure {
    path_prefix: String,
    remaining: usize,
    status: u16,
}

#[derive(Debug, Default)]
struct Store {
    resource_version: u64,
    objects: BTreeMap<StoreKey, Value>,
    /// Every change since the start, oldest first.
    history: Vec<HistoryEntry>,
    /// Watches and continue tokens from before this version get 410 Gone (a watch from exactly
    /// this version needs no history, so it is served).
    oldest_served_version: u64,
    /// Bumped by `expire`: open watches started under an older epoch end with a 410 event.
    expiry_epoch: u64,
    /// Bumped by `close_watches`: open watches started under an older epoch end.
    close_epoch: u64,
    /// While set, open watches deliver nothing (events queue up in the history).
    watches_held: bool,
    failures: Vec<InjectedFailure>,
    log: Vec<LoggedRequest>,
    /// What TokenReview knows, by token.
    tokens: BTreeMap<String, TokenIdentity>,
}

/// Who a token belongs to, as TokenReview reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenIdentity {
    /// `system:serviceaccount:<namespace>:<name>` for a service account.
    pub username: String,
    /// The audiences the token was issued for (a review asking for others fails).
    pub audiences: Vec<String>,
    /// `user.extra`, e.g. the pod binding of a projected token.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl TokenIdentity {
    /// A projected token of service account `namespace/name`, bound to a pod (and, as from
    /// Kubernetes 1.30, to its node when `node` is given), for `audience`.
    pub fn bound(
        namespace: &str,
        name: &str,
        pod: (&str, &str),
        node: Option<&str>,
        audience: &str,
    ) -> Self {
        let mut extra = BTreeMap::from([
            (
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![pod.0.to_owned()],
            ),
            (
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec![pod.1.to_owned()],
            ),
        ]);
        if let Some(node) = node {
            extra.insert(
                "authentication.kubernetes.io/node-name".to_owned(),
                vec![node.to_owned()],
            );
        }
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            audiences: vec![audience.to_owned()],
            extra,
        }
    }
}

struct Shared {
    kinds: Vec<ServedKind>,
    store: Mutex<Store>,
    /// Bumped on every change of the store; open watches wait on it.
    changed: watch::Sender<u64>,
    bookmark_interval: Duration,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves consistent data (every mutation is one step).
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The fake API server; stops serving when dropped.
pub struct FakeApiServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl FakeApiServer {
    /// Starts a fake serving the mesh's kinds and the controller's own
    /// ([`ServedKind::mesh_kinds`], [`ServedKind::controller_kinds`]), and TokenReview.
    pub async fn start() -> Result<Self, FakeApiError> {
        let mut kinds = ServedKind::mesh_kinds();
        kinds.extend(ServedKind::controller_kinds());
        Self::start_with(kinds, Duration::from_millis(500)).await
    }

    /// The object stored under `api_version`/`kind`, `namespace`/`name`, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind_index = self.shared.kind_index(api_version, kind).ok()?;
        let namespace = if self.shared.kinds[kind_index].namespaced {
            namespace
        } else {
            ""
        };
        let key = (kind_index, namespace.to_owned(), name.to_owned());
        self.shared.store().objects.get(&key).cloned()
    }

    /// A kubeconfig file's text for a client of this fake (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Starts a fake serving `kinds`, sending watch bookmarks every `bookmark_interval`.
    pub async fn start_with(
        kinds: Vec<ServedKind>,
        bookmark_interval: Duration,
    ) -> Result<Self, FakeApiError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(FakeApiError::Bind)?;
        Self::serve(listener, kinds, bookmark_interval)
    }

    /// Starts a fake serving the mesh's and the controller's kinds on `listener` (bound by the
    /// caller, for example inside a network namespace other machines of a testbed reach).
    pub fn start_on(listener: std::net::TcpListener) -> Result<Self, FakeApiError> {
        listener.set_nonblocking(true).map_err(FakeApiError::Bind)?;
        let listener = TcpListener::from_std(listener).map_err(FakeApiError::Bind)?;
        let mut kinds = ServedKind::mesh_kinds();
        kinds.extend(ServedKind::controller_kinds());
        Self::serve(listener, kinds, Duration::from_millis(500))
    }

    fn serve(
        listener: TcpListener,
        kinds: Vec<ServedKind>,
        bookmark_interval: Duration,
    ) -> Result<Self, FakeApiError> {
        let address = listener.local_addr().map_err(FakeApiError::Bind)?;
        let shared = Arc::new(Shared {
            kinds,
            store: Mutex::new(Store {
                oldest_served_version: 0,
                ..Store::default()
            }),
            changed: watch::Sender::new(0),
            bookmark_interval,
        });
        let accept_shared = Arc::clone(&shared);
        let accept_task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _peer)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&accept_shared);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(shared, request).await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "fake api server connection ended");
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            address,
            shared,
            accept_task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A client for the fake: plain HTTP, no authentication.
    pub fn client(&self) -> Result<::kube::Client, FakeApiError> {
        let url = self.url();
        let uri = url
            .parse::<http::Uri>()
            .map_err(|source| FakeApiError::Url {
                url: url.clone(),
                source,
            })?;
        let config = ::kube::Config::new(uri);
        ::kube::Client::try_from(config).map_err(|source| FakeApiError::Client {
            url,
            source: Box::new(source),
        })
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version
    }

    /// Adds an object (its `apiVersion` and `kind` pick the collection; a namespaced object
    /// without a namespace goes to `default`). Returns its resourceVersion.
    pub fn create(&self, object: Value) -> Result<u64, FakeApiError> {
        self.mutate(object, EventType::Added)
    }

    /// Replaces an existing object. Returns its new resourceVersion.
    pub fn update(&self, object: Value) -> Result<u64, FakeApiError> {
        self.mutate(object, EventType::Modified)
    }

    /// Removes an object (`namespace` is ignored for cluster-scoped kinds).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<u64, FakeApiError> {
        let kind_index = self.kind_index(api_version, kind)?;
        let namespace = if self.shared.kinds[kind_index].namespaced {
            namespace
        } else {
            ""
        };
        let key = (kind_index, namespace.to_owned(), name.to_owned());
        let version = {
            let mut store = self.shared.store();
            let Some(mut object) = store.objects.remove(&key) else {
                return Err(FakeApiError::NotFound {
                    kind: kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                });
            };
            store.resource_version += 1;
            let version = store.resource_version;
            object["metadata"]["resourceVersion"] = Value::from(version.to_string());
            store.history.push(HistoryEntry {
                resource_version: version,
                kind_index,
                event: EventType::Deleted,
                object,
            });
            version
        };
        self.shared.notify();
        Ok(version)
    }

    /// Compacts the history: watches and continue tokens from any version before now get
    /// 410 Gone ("too old resource version"), so clients must relist. Open watches go on.
    pub fn compact(&self) {
        {
            let mut store = self.shared.store();
            store.oldest_served_version = store.resource_version;
        }
        self.shared.notify();
    }

    /// Compacts, and ends every open watch with an `ERROR` event (code 410), as the API server
    /// does to a watcher that fell behind its cache.
    pub fn expire(&self) {
        {
            let mut store = self.shared.store();
            store.oldest_served_version = store.resource_version;
            store.expiry_epoch += 1;
        }
        self.shared.notify();
    }

    /// Ends every open watch cleanly (as a watch timeout or an API server restart does);
    /// clients reconnect from the last version they saw.
    pub fn close_watches(&self) {
        self.shared.store().close_epoch += 1;
        self.shared.notify();
    }

    /// While held, open watches deliver nothing; changes wait in the history.
    pub fn hold_watches(&self, held: bool) {
        self.shared.store().watches_held = held;
        self.shared.notify();
    }

    /// The next `count` requests whose path starts with `path_prefix` are answered with `status`
    /// (and a `Status` body) instead of being served.
    pub fn fail_next(&self, path_prefix: &str, count: usize, status: u16) {
        self.shared.store().failures.push(InjectedFailure {
            path_prefix: path_prefix.to_owned(),
            remaining: count,
            status,
        });
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.store().log.clone()
    }

    fn kind_index(&self, api_version: &str, kind: &str) -> Result<usize, FakeApiError> {
        self.shared.kind_index(api_version, kind)
    }

    fn mutate(&self, object: Value, event: EventType) -> Result<u64, FakeApiError> {
        self.shared
            .mutate(object, event)
            .map(|(version, _)| version)
    }

    /// Makes `token` known to TokenReview as `identity`'s.
    pub fn add_token(&self, token: &str, identity: TokenIdentity) {
        self.shared
            .store()
            .tokens
            .insert(token.to_owned(), identity);
    }
}

impl Shared {
    fn kind_index(&self, api_version: &str, kind: &str) -> Result<usize, FakeApiError> {
        self.kinds
            .iter()
            .position(|k| k.kind == kind && k.api_version() == api_version)
            .ok_or_else(|| FakeApiError::UnknownKind {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            })
    }

    fn mutate(&self, mut object: Value, event: EventType) -> Result<(u64, Value), FakeApiError> {
        let Some(map) = object.as_object_mut() else {
            return Err(FakeApiError::NotAnObject);
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
        let kind_index = self.kind_index(api_version, kind)?;
        let served = &self.kinds[kind_index];
        let metadata = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(metadata) = metadata.as_object_mut() else {
            return Err(FakeApiError::NotAnObject);
        };
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(FakeApiError::MissingName)?
            .to_owned();
        let namespace = if served.namespaced {
            let namespace = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            metadata.insert("namespace".to_owned(), Value::from(namespace.clone()));
            namespace
        } else {
            metadata.remove("namespace");
            String::new()
        };
        let key = (kind_index, namespace.clone(), name.clone());
        let version = {
            let mut store = self.store();
            let existing = store.objects.get(&key).cloned();
            let uid = match (event, &existing) {
                (EventType::Added, Some(_)) => {
                    return Err(FakeApiError::AlreadyExists {
                        kind: served.kind.clone(),
                        namespace,
                        name,
                    });
                }
                (EventType::Modified, None) => {
                    return Err(FakeApiError::NotFound {
                        kind: served.kind.clone(),
                        namespace,
                        name,
                    });
                }
                (_, Some(existing)) => existing["metadata"]["uid"].clone(),
                (_, None) => Value::from(format!("fake-uid-{}", store.resource_version + 1)),
            };
            store.resource_version += 1;
            let version = store.resource_version;
            metadata.insert("resourceVersion".to_owned(), version.to_string().into());
            metadata.insert("uid".to_owned(), uid);
            store.objects.insert(key, object.clone());
            store.history.push(HistoryEntry {
                resource_version: version,
                kind_index,
                event,
                object: object.clone(),
            });
            version
        };
        self.notify();
        Ok((version, object))
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &status_object(code, reason, message))
}

/// What a path names: a collection (optionally in one namespace) or one object in it.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    kind_index: usize,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(kinds: &[ServedKind], path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", namespace, plural] => (Some(*namespace), *plural, None),
        ["namespaces", namespace, plural, name] => (Some(*namespace), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let kind_index = kinds
        .iter()
        .position(|k| k.group == group && k.version == version && k.plural == plural)?;
    if namespace.is_some() && !kinds[kind_index].namespaced {
        return None;
    }
    Some(Target {
        kind_index,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldTerm {
    Equals(String, String),
    NotEquals(String, String),
}

/// The subset of a request that picks objects.
#[derive(Debug, Clone, Default)]
struct Selection {
    namespace: Option<String>,
    labels: Vec<LabelTerm>,
    fields: Vec<FieldTerm>,
}

fn parse_label_selector(selector: &str) -> Result<Vec<LabelTerm>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if term.contains('(') || term.contains(' ') {
            return Err(format!(
                "set-based label selector {term:?} is not supported"
            ));
        }
        let parsed = if let Some((key, value)) = term.split_once("!=") {
            LabelTerm::NotEquals(key.to_owned(), value.to_owned())
        } else if let Some((key, value)) = term.split_once("==") {
            LabelTerm::Equals(key.to_owned(), value.to_owned())
        } else if let Some((key, value)) = term.split_once('=') {
            LabelTerm::Equals(key.to_owned(), value.to_owned())
        } else if let Some(key) = term.strip_prefix('!') {
            LabelTerm::Absent(key.to_owned())
        } else {
            LabelTerm::Exists(term.to_owned())
        };
        terms.push(parsed);
    }
    Ok(terms)
}

fn parse_field_selector(selector: &str) -> Result<Vec<FieldTerm>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("field selector {term:?} has no operator"));
        };
        // The generic fields, and the one pod field node-local watchers select by (the real
        // API server only supports it on pods; the fake does not check the kind).
        if !matches!(
            field,
            "metadata.name" | "metadata.namespace" | "spec.nodeName"
        ) {
            return Err(format!("field label not supported: {field}"));
        }
        terms.push(if equal {
            FieldTerm::Equals(field.to_owned(), value.to_owned())
        } else {
            FieldTerm::NotEquals(field.to_owned(), value.to_owned())
        });
    }
    Ok(terms)
}

impl Selection {
    fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let namespace = metadata["namespace"].as_str().unwrap_or("");
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let label = |key: &str| metadata["labels"][key].as_str();
        let labels_match = self.labels.iter().all(|term| match term {
            LabelTerm::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelTerm::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelTerm::Exists(k) => label(k).is_some(),
            LabelTerm::Absent(k) => label(k).is_none(),
        });
        let field = |name: &str| match name.split_once('.') {
            Some(("spec", rest)) => object["spec"][rest].as_str(),
            _ => metadata[name.trim_start_matches("metadata.")].as_str(),
        };
        let fields_match = self.fields.iter().all(|term| match term {
            FieldTerm::Equals(f, v) => field(f).unwrap_or("") == v,
            FieldTerm::NotEquals(f, v) => field(f).unwrap_or("") != v,
        });
        labels_match && fields_match
    }
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Request bodies above this are refused.
const MAX_BODY: usize = 1 << 20;

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query());
    let body = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let response = match body {
        Ok(body) => respond(&shared, &method, &path, &query, &body),
        Err(_) => status_response(413, "RequestEntityTooLarge", "request body too large"),
    };
    shared.store().log.push(LoggedRequest {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
    });
    response
}

fn respond(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Response<Body> {
    {
        let mut store = shared.store();
        let injected = store
            .failures
            .iter_mut()
            .find(|f| f.remaining > 0 && path.starts_with(&f.path_prefix));
        if let Some(failure) = injected {
            failure.remaining -= 1;
            let status = failure.status;
            return status_response(status, "InternalError", "injected failure");
        }
    }
    if path == TOKEN_REVIEWS {
        return match *method {
            Method::POST => token_review(shared, body),
            _ => status_response(405, "MethodNotAllowed", "tokenreviews are only created"),
        };
    }
    let Some(target) = parse_path(&shared.kinds, path) else {
        return status_response(
            404,
            "NotFound",
            &format!("the server could not find {path}"),
        );
    };
    match *method {
        Method::GET => {}
        Method::POST if target.name.is_none() => {
            return write(shared, &target, body, EventType::Added);
        }
        Method::PUT if target.name.is_some() => {
            return write(shared, &target, body, EventType::Modified);
        }
        _ => return status_response(405, "MethodNotAllowed", &format!("{method} {path}")),
    }
    let labels = match parse_label_selector(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(labels) => labels,
        Err(message) => return status_response(400, "BadRequest", &message),
    };
    let fields = match parse_field_selector(query.get("fieldSelector").map_or("", String::as_str)) {
        Ok(fields) => fields,
        Err(message) => return status_response(400, "BadRequest", &message),
    };
    let selection = Selection {
        namespace: target.namespace.clone(),
        labels,
        fields,
    };
    if let Some(name) = &target.name {
        return get(shared, target.kind_index, &selection, name);
    }
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if watching {
        watch(shared, target.kind_index, selection, query)
    } else {
        list(shared, target.kind_index, &selection, query)
    }
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A create (POST to the collection) or replace (PUT to the object), as the API server answers
/// it: 201 or 200 with the stored object, 409 when it exists, 404 when it does not.
fn write(shared: &Shared, target: &Target, body: &[u8], event: EventType) -> Response<Body> {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status_response(400, "BadRequest", "the body is not a JSON object");
    };
    let served = &shared.kinds[target.kind_index];
    let Some(map) = object.as_object_mut() else {
        return status_response(400, "BadRequest", "the body is not a JSON object");
    };
    map.insert("apiVersion".to_owned(), served.api_version().into());
    map.insert("kind".to_owned(), served.kind.clone().into());
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(namespace) = &target.namespace {
        metadata["namespace"] = Value::from(namespace.clone());
    }
    if let Some(name) = &target.name
        && metadata["name"].as_str() != Some(name.as_str())
    {
        return status_response(
            400,
            "BadRequest",
            "the name in the body differs from the URL",
        );
    }
    match shared.mutate(object, event) {
        Ok((_, stored)) => {
            let status = if event == EventType::Added {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(status, &stored)
        }
        Err(error @ FakeApiError::AlreadyExists { .. }) => {
            status_response(409, "AlreadyExists", &error.to_string())
        }
        Err(error @ FakeApiError::NotFound { .. }) => {
            status_response(404, "NotFound", &error.to_string())
        }
        Err(error) => status_response(400, "BadRequest", &error.to_string()),
    }
}

/// TokenReview: authenticated when the token is known and (if the review names audiences) was
/// issued for one of them.
fn token_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status_response(400, "BadRequest", "the body is not a TokenReview");
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let known = shared.store().tokens.get(token).cloned();
    let status = match known {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(identity) => {
            let audiences: Vec<String> = if wanted.is_empty() {
                identity.audiences.clone()
            } else {
                wanted
                    .iter()
                    .filter(|a| identity.audiences.contains(a))
                    .cloned()
                    .collect()
            };
            if audiences.is_empty() {
                json!({"authenticated": false, "error": "token audiences are invalid for the requested audiences"})
            } else {
                json!({
                    "authenticated": true,
                    "audiences": audiences,
                    "user": {
                        "username": identity.username,
                        "uid": format!("uid-{}", identity.username),
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "extra": identity.extra,
                    },
                })
            }
        }
    };
    let answer = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": review["spec"],
        "status": status,
    });
    json_response(StatusCode::CREATED, &answer)
}

fn get(shared: &Shared, kind_index: usize, selection: &Selection, name: &str) -> Response<Body> {
    let namespace = selection.namespace.clone().unwrap_or_default();
    let key = (kind_index, namespace, name.to_owned());
    match shared.store().objects.get(&key) {
        Some(object) => json_response(StatusCode::OK, object),
        None => status_response(404, "NotFound", &format!("{name} not found")),
    }
}

/// The objects of one kind as they were at `version`, rebuilt from the history.
fn snapshot_at(store: &Store, kind_index: usize, version: u64) -> BTreeMap<StoreKey, Value> {
    let mut objects = BTreeMap::new();
    for entry in store
        .history
        .iter()
        .filter(|e| e.kind_index == kind_index && e.resource_version <= version)
    {
        let metadata = &entry.object["metadata"];
        let key = (
            kind_index,
            metadata["namespace"].as_str().unwrap_or("").to_owned(),
            metadata["name"].as_str().unwrap_or("").to_owned(),
        );
        match entry.event {
            EventType::Added | EventType::Modified => {
                objects.insert(key, entry.object.clone());
            }
            EventType::Deleted => {
                objects.remove(&key);
            }
        }
    }
    objects
}

fn without_type(mut object: Value) -> Value {
    // As the real server does for typed lists: items carry no apiVersion/kind of their own.
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn list(
    shared: &Shared,
    kind_index: usize,
    selection: &Selection,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let served = &shared.kinds[kind_index];
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(0)) => None,
        Some(Ok(limit)) => Some(limit),
        Some(Err(_)) => return status_response(400, "BadRequest", "limit is not a number"),
    };
    let store = shared.store();
    // A continue token is "<list version>/<items already returned>".
    let (version, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (store.resource_version, 0),
        Some(token) => {
            let parsed = token
                .split_once('/')
                .and_then(|(v, o)| Some((v.parse::<u64>().ok()?, o.parse::<usize>().ok()?)));
            let Some((version, offset)) = parsed else {
                return status_response(400, "BadRequest", "malformed continue token");
            };
            if version < store.oldest_served_version {
                return status_response(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            (version, offset)
        }
    };
    let matching: Vec<Value> = snapshot_at(&store, kind_index, version)
        .into_values()
        .filter(|object| selection.matches(object))
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(without_type)
        .collect();
    let next = offset + page.len();
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if next < total {
        metadata["continue"] = Value::from(format!("{version}/{next}"));
        metadata["remainingItemCount"] = Value::from(total - next);
    }
    let body = json!({
        "apiVersion": served.api_version(),
        "kind": format!("{}List", served.kind),
        "metadata": metadata,
        "items": page,
    });
    json_response(StatusCode::OK, &body)
}

fn watch_line(event_type: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": event_type, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(served: &ServedKind, version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({
        "apiVersion": served.api_version(),
        "kind": served.kind,
        "metadata": metadata,
    });
    watch_line("BOOKMARK", &object)
}

fn too_old(requested: u64, oldest: u64) -> Bytes {
    let message = format!("too old resource version: {requested} ({oldest})");
    watch_line("ERROR", &status_object(410, "Expired", &message))
}

/// Where a watch starts: after version N, or (for `0`, none, or `sendInitialEvents`) with the
/// current objects as `ADDED` events.
enum WatchStart {
    After(u64),
    CurrentState { initial_events_end: bool },
}

fn watch(
    shared: &Arc<Shared>,
    kind_index: usize,
    selection: Selection,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let send_initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let start = match query.get("resourceVersion").map(String::as_str) {
        _ if send_initial_events => WatchStart::CurrentState {
            initial_events_end: true,
        },
        None | Some("" | "0") => WatchStart::CurrentState {
            initial_events_end: false,
        },
        Some(version) => match version.parse::<u64>() {
            Ok(version) => WatchStart::After(version),
            Err(_) => return status_response(400, "BadRequest", "resourceVersion is not a number"),
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);

    let (lines, receiver) = mpsc::channel::<Bytes>(64);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(
            timeout,
            stream_events(&shared, kind_index, &selection, start, bookmarks, &lines),
        )
        .await;
    });
    let body = StreamBody::new(ReceiverStream::new(receiver).map(|line| Ok(Frame::data(line))));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The first lines of a watch, the version it continues from (`None` when it must end at
/// once), and the expiry epoch it started in.
fn initial_events(
    shared: &Shared,
    kind_index: usize,
    selection: &Selection,
    start: WatchStart,
) -> (Vec<Bytes>, Option<u64>, u64) {
    let served = &shared.kinds[kind_index];
    let store = shared.store();
    let epoch = store.expiry_epoch;
    match start {
        WatchStart::After(version) if version < store.oldest_served_version => (
            vec![too_old(version, store.oldest_served_version)],
            None,
            epoch,
        ),
        WatchStart::After(version) => (Vec::new(), Some(version), epoch),
        WatchStart::CurrentState { initial_events_end } => {
            let version = store.resource_version;
            let mut initial: Vec<Bytes> = store
                .objects
                .iter()
                .filter(|((k, _, _), object)| *k == kind_index && selection.matches(object))
                .map(|(_, object)| watch_line("ADDED", object))
                .collect();
            if initial_events_end {
                initial.push(bookmark(served, version, true));
            }
            (initial, Some(version), epoch)
        }
    }
}

/// Feeds one watch until the client goes away, the history expires, or the caller's timeout.
async fn stream_events(
    shared: &Shared,
    kind_index: usize,
    selection: &Selection,
    start: WatchStart,
    bookmarks: bool,
    lines: &mpsc::Sender<Bytes>,
) {
    let served = &shared.kinds[kind_index];
    let mut changes = shared.changed.subscribe();
    changes.borrow_and_update();
    let close_epoch = shared.store().close_epoch;
    let (initial, cursor, epoch) = initial_events(shared, kind_index, selection, start);
    let Some(mut cursor) = cursor else {
        // Too old: the ERROR event is all this watch says.
        for line in initial {
            let _ = lines.send(line).await;
        }
        return;
    };
    for line in initial {
        if lines.send(line).await.is_err() {
            return;
        }
    }
    loop {
        let pending: Vec<Bytes> = {
            let store = shared.store();
            if store.expiry_epoch != epoch {
                vec![too_old(cursor, store.oldest_served_version), Bytes::new()]
            } else if store.close_epoch != close_epoch {
                vec![Bytes::new()]
            } else if store.watches_held {
                Vec::new()
            } else {
                let lines = store
                    .history
                    .iter()
                    .filter(|e| e.resource_version > cursor && e.kind_index == kind_index)
                    .filter(|e| selection.matches(&e.object))
                    .map(|e| watch_line(e.event.as_str(), &e.object))
                    .collect();
                cursor = store.resource_version;
                lines
            }
        };
        for line in pending {
            if line.is_empty() {
                // The stream ends here (after its ERROR event, if it expired).
                return;
            }
            if lines.send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                changes.borrow_and_update();
            }
            () = tokio::time::sleep(shared.bookmark_interval) => {
                let held = shared.store().watches_held;
                if bookmarks && !held && lines.send(bookmark(served, cursor, false)).await.is_err() {
                    return;
                }
                if lines.is_closed() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        let kinds = ServedKind::mesh_kinds();
        let index = |kind: &str, group: &str| {
            kinds
                .iter()
                .position(|k| k.kind == kind && k.group == group)
                .unwrap()
        };
        let cases = [
            ("/api/v1/pods", Some((index("Pod", ""), None, None))),
            (
                "/api/v1/namespaces/a/pods",
                Some((index("Pod", ""), Some("a"), None)),
            ),
            (
                "/api/v1/namespaces/a/pods/p",
                Some((index("Pod", ""), Some("a"), Some("p"))),
            ),
            (
                "/api/v1/namespaces",
                Some((index("Namespace", ""), None, None)),
            ),
            (
                "/api/v1/namespaces/a",
                Some((index("Namespace", ""), None, Some("a"))),
            ),
            (
                "/apis/networking.istio.io/v1/virtualservices",
                Some((index("VirtualService", "networking.istio.io"), None, None)),
            ),
            (
                "/apis/gateway.networking.k8s.io/v1/namespaces/x/gateways",
                Some((
                    index("Gateway", "gateway.networking.k8s.io"),
                    Some("x"),
                    None,
                )),
            ),
            ("/apis/networking.istio.io/v1alpha3/virtualservices", None),
            ("/api/v1/namespaces/a/namespaces", None),
            ("/healthz", None),
        ];
        for (path, expected) in cases {
            let expected = expected.map(
                |(kind_index, ns, name): (usize, Option<&str>, Option<&str>)| Target {
                    kind_index,
                    namespace: ns.map(str::to_owned),
                    name: name.map(str::to_owned),
                },
            );
            assert_eq!(parse_path(&kinds, path), expected, "{path}");
        }
    }

    #[test]
    fn selectors_pick_objects() {
        let object = json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": "x"}}});
        let cases = [
            ("", "", true),
            ("app=x", "", true),
            ("app==x", "", true),
            ("app!=x", "", false),
            ("app", "", true),
            ("!app", "", false),
            ("app=y", "", false),
            ("", "metadata.name=p", true),
            ("", "metadata.namespace!=a", false),
            ("app=x", "metadata.name=q", false),
        ];
        for (labels, fields, expected) in cases {
            let selection = Selection {
                namespace: None,
                labels: parse_label_selector(labels).unwrap(),
                fields: parse_field_selector(fields).unwrap(),
            };
            assert_eq!(
                selection.matches(&object),
                expected,
                "{labels:?} {fields:?}"
            );
        }
        assert!(parse_label_selector("app in (a,b)").is_err());
        assert!(parse_field_selector("status.phase=Running").is_err());
    }

    #[test]
    fn query_strings_are_decoded() {
        let query = parse_query(Some("labelSelector=app%3Dx%2Cb&watch=true&x"));
        assert_eq!(query["labelSelector"], "app=x,b");
        assert_eq!(query["watch"], "true");
        assert_eq!(query["x"], "");
    }

    fn pod(name: &str, app: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "a", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        })
    }

    #[tokio::test]
    async fn pages_come_from_one_snapshot_and_expire_with_the_history() {
        use ::kube::api::{Api, ListParams};
        use k8s_openapi::api::core::v1::Pod;

        let fake = FakeApiServer::start().await.unwrap();
        for name in ["p1", "p2", "p3"] {
            fake.create(pod(name, "x")).unwrap();
        }
        let pods: Api<Pod> = Api::namespaced(fake.client().unwrap(), "a");
        let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
        let names = |list: &::kube::core::ObjectList<Pod>| -> Vec<String> {
            list.items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect()
        };
        assert_eq!(names(&first), ["p1", "p2"]);
        let token = first.metadata.continue_.clone().expect("a continue token");
        // Changes after the first page do not leak into the next one.
        fake.create(pod("p0", "x")).unwrap();
        fake.delete("v1", "Pod", "a", "p3").unwrap();
        let second = pods
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(names(&second), ["p3"]);
        assert_eq!(second.metadata.continue_, None);
        assert_eq!(
            second.metadata.resource_version,
            first.metadata.resource_version
        );

        let selected = pods
            .list(
                &ListParams::default()
                    .labels("app=x")
                    .fields("metadata.name=p0"),
            )
            .await
            .unwrap();
        assert_eq!(names(&selected), ["p0"]);

        fake.compact();
        let expired = pods
            .list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .unwrap_err();
        assert!(
            matches!(&expired, ::kube::Error::Api(status) if status.code == 410),
            "{expired:?}"
        );
        let requests = fake.requests();
        assert_eq!(requests.last().unwrap().status, 410);
        assert_eq!(
            requests[0].query.get("limit").map(String::as_str),
            Some("2")
        );
    }

    #[tokio::test]
    async fn streaming_lists_end_with_the_initial_events_bookmark() {
        use ::kube::api::Api;
        use ::kube::runtime::watcher::{self, Event};
        use k8s_openapi::api::core::v1::Pod;

        let fake = FakeApiServer::start().await.unwrap();
        fake.create(pod("p1", "x")).unwrap();
        fake.create(pod("p2", "y")).unwrap();
        let pods: Api<Pod> = Api::all(fake.client().unwrap());
        let config = watcher::Config::default().streaming_lists().labels("app=x");
        let mut events = std::pin::pin!(watcher::watcher(pods, config));
        let mut listed = Vec::new();
        let collect = async {
            while let Some(event) = futures::StreamExt::next(&mut events).await {
                match event.unwrap() {
                    Event::InitApply(pod) => listed.push(pod.metadata.name.unwrap()),
                    Event::InitDone => break,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .expect("initial events end within 10s");
        assert_eq!(listed, ["p1"]);
        let request = &fake.requests()[0];
        assert!(request.is_watch_of("/api/v1/pods"));
        assert_eq!(
            request.query.get("sendInitialEvents").map(String::as_str),
            Some("true")
        );
    }
}
