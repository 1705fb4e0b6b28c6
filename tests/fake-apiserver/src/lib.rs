//! A fake Kubernetes API server for tests: plain HTTP/1.1 on 127.0.0.1, speaking enough of the
//! real list/watch protocol for `kube`'s own watcher to run against it unchanged.
//!
//! It serves collection lists (`limit`/`continue` pagination, `labelSelector`, `fieldSelector`),
//! single gets, and watches (`watch=true&resourceVersion=N`, newline-delimited `ADDED`,
//! `MODIFIED`, `DELETED`, `BOOKMARK` and `ERROR` events, `sendInitialEvents`), over core
//! (`/api/v1/...`) and group (`/apis/<group>/<version>/...`) paths, cluster-wide or namespaced.
//! It also takes creates (POST) and replaces (PUT) of any served kind, as the controller writes
//! its CA Secret and root ConfigMap (and the Deployments, Services and ServiceAccounts of
//! Gateways), merge patches (PATCH) of an object's `status` subresource,
//! as the controller writes Gateway API route status, and answers TokenReviews for tokens registered with
//! [`FakeApiServer::add_token`]. It serves pods' port-forward subresource over a WebSocket
//! (`v4.channel.k8s.io`, as `kubectl port-forward` uses it) to the TCP addresses registered with
//! [`FakeApiServer::forward_pod_port`]. Every change takes the next value of one global
//! resourceVersion counter and is kept in a history that watches replay.
//! [`FakeApiServer::expire`] makes older versions "too old" (410 Gone, forcing a relist),
//! [`FakeApiServer::fail_next`] answers the next requests with an error status, and every request
//! is logged for tests to assert on.
//!
//! It knows the mesh's kinds from the controller (their API coordinates) and nothing else of it;
//! it is a test fixture, never linked into a binary that ships.

mod portforward;
mod request;
mod serve;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use controller::model::ResourceKind;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

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
            // Gateways' proxies, provisioned by the controller.
            ServedKind {
                group: "apps".to_owned(),
                version: "v1".to_owned(),
                kind: "Deployment".to_owned(),
                plural: "deployments".to_owned(),
                namespaced: true,
            },
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
                let api = controller::source::kube::api_resource(kind);
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
    /// Objects and history entries looked at to serve lists and watches.
    served_work: u64,
    /// Where a pod's port is reached through port-forward, by (namespace, pod, port).
    pod_ports: BTreeMap<(String, String, u16), SocketAddr>,
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

    /// How many objects and history entries the fake looked at to serve lists and watches so
    /// far: its own cost, which tests bound so that a benchmark's figures are the client's.
    pub fn served_work(&self) -> u64 {
        self.shared.store().served_work
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
                        async move { Ok::<_, Infallible>(serve::handle(shared, request).await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
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
        weft_identity::install_default_provider();
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

    /// Makes port `port` of pod `namespace/pod` reach `target` through the port-forward
    /// endpoint (the pod itself must be stored, as the API server looks it up first). A port
    /// forwarded without a registration gets "connection refused" on its error channel.
    pub fn forward_pod_port(&self, namespace: &str, pod: &str, port: u16, target: SocketAddr) {
        self.shared
            .store()
            .pod_ports
            .insert((namespace.to_owned(), pod.to_owned(), port), target);
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
    /// The status of the next injected failure for `path`, if one is pending (and counts it).
    fn take_failure(&self, path: &str) -> Option<u16> {
        let mut store = self.store();
        let failure = store
            .failures
            .iter_mut()
            .find(|f| f.remaining > 0 && path.starts_with(&f.path_prefix))?;
        failure.remaining -= 1;
        Some(failure.status)
    }

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
