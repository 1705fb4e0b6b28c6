//! The Kubernetes source against the fake API server, with `kube`'s real watcher in between.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::loader;
use crate::source::kube::test_support::eventually;
use weft_fake_apiserver::{FakeApiServer, LoggedRequest, ServedKind};

type IndexKey = (ResourceKind, String, String);

/// What the controller's index will be, reduced to a map, plus a record of the calls it got.
#[derive(Default)]
struct TestIndex {
    objects: Mutex<BTreeMap<IndexKey, Resource>>,
    replaced: Mutex<BTreeMap<ResourceKind, usize>>,
    rejections: Mutex<Vec<Rejection>>,
}

impl ResourceSink for TestIndex {
    fn apply(&self, resource: Resource, _warnings: Vec<crate::validation::FieldWarning>) {
        let key = key_of(&resource);
        self.objects.lock().unwrap().insert(key, resource);
    }

    fn delete(&self, kind: ResourceKind, namespace: &str, name: &str) {
        let key = (kind, namespace.to_owned(), name.to_owned());
        self.objects.lock().unwrap().remove(&key);
    }

    fn replace_all(
        &self,
        kind: ResourceKind,
        resources: Vec<(Resource, Vec<crate::validation::FieldWarning>)>,
    ) {
        let mut objects = self.objects.lock().unwrap();
        objects.retain(|(k, _, _), _| *k != kind);
        for (resource, _) in resources {
            assert_eq!(resource.kind(), kind, "replace_all got a foreign kind");
            let key = key_of(&resource);
            assert!(
                objects.insert(key.clone(), resource).is_none(),
                "{key:?} listed twice"
            );
        }
        *self.replaced.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn rejected(&self, rejection: &Rejection) {
        self.rejections.lock().unwrap().push(rejection.clone());
    }
}

impl TestIndex {
    fn normalized(&self) -> BTreeMap<IndexKey, Resource> {
        let objects = self.objects.lock().unwrap();
        objects
            .iter()
            .map(|(key, resource)| (key.clone(), normalized(resource.clone())))
            .collect()
    }

    fn replaced(&self, kind: ResourceKind) -> usize {
        self.replaced
            .lock()
            .unwrap()
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }

    fn rejections(&self) -> Vec<Rejection> {
        self.rejections.lock().unwrap().clone()
    }
}

fn key_of(resource: &Resource) -> IndexKey {
    (
        resource.kind(),
        resource.namespace().to_owned(),
        resource.name().to_owned(),
    )
}

/// Drops what the API server adds (resourceVersion, uid), which YAML files do not carry.
fn normalized(mut resource: Resource) -> Resource {
    let metadata = resource.metadata_mut();
    metadata.resource_version = None;
    metadata.uid = None;
    resource
}

fn load(text: &str) -> Vec<Resource> {
    let report = loader::load_str(Path::new("test.yaml"), text);
    assert!(
        report.errors.is_empty(),
        "fixture does not load: {:?}",
        report.errors
    );
    report
        .resources
        .into_iter()
        .map(|loaded| loaded.resource)
        .collect()
}

fn json_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("fixture is YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// What the file loader makes of `texts`, keyed and normalized like the index.
fn expected_from(texts: &[String]) -> BTreeMap<IndexKey, Resource> {
    texts
        .iter()
        .flat_map(|text| load(text))
        .map(|resource| (key_of(&resource), normalized(resource)))
        .collect()
}

fn bookinfo_files() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo");
    let files = loader::collect_yaml_files(&dir).expect("bookinfo examples are readable");
    assert!(files.len() >= 10, "bookinfo examples missing in {dir:?}");
    files
        .iter()
        .map(|file| std::fs::read_to_string(file).expect("readable example"))
        .collect()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "controller=debug".into()),
        )
        .try_init();
}

struct Running {
    fake: FakeApiServer,
    index: Arc<TestIndex>,
    source_task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.source_task.abort();
    }
}

/// Starts the source against `fake` and waits (bounded) until every kind has been listed.
async fn start_source(fake: FakeApiServer) -> Running {
    let index = Arc::new(TestIndex::default());
    let source = KubeSource::new(fake.client().expect("client"), index.clone());
    let mut synced = source.synced();
    let source_task = tokio::spawn(source.run());
    let all_synced = synced.wait_for(|kinds| kinds.len() == ResourceKind::ALL.len());
    tokio::time::timeout(Duration::from_secs(20), all_synced)
        .await
        .expect("every kind listed within 20s")
        .expect("source still running");
    Running {
        fake,
        index,
        source_task,
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the index equals `expected`, then shows the difference if it never does.
async fn converge(index: &TestIndex, expected: &BTreeMap<IndexKey, Resource>, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let actual = index.normalized();
        if &actual == expected {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<_> = expected
                .keys()
                .filter(|k| !actual.contains_key(k))
                .collect();
            let extra: Vec<_> = actual
                .keys()
                .filter(|k| !expected.contains_key(k))
                .collect();
            let differing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| actual.get(k).is_some_and(|a| a != *v))
                .map(|(k, _)| k)
                .collect();
            panic!(
                "{what}: index did not converge; missing {missing:?}, extra {extra:?}, differing {differing:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn create_all(fake: &FakeApiServer, text: &str) {
    for object in json_documents(text) {
        fake.create(object).expect("fake accepts the fixture");
    }
}

fn lists_of(requests: &[LoggedRequest], path: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.is_list_of(path) && r.status == 200)
        .count()
}

const PODS: &str = "/api/v1/pods";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";

const REVIEWS_V3_RELABELED: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v3
  namespace: bookinfo
  labels: {app: reviews, version: v3, track: canary}
spec:
  serviceAccountName: bookinfo-reviews
  containers:
  - name: reviews
    image: docker.io/istio/examples-bookinfo-reviews-v3:1.20.2
";

const NEW_POD: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v4
  namespace: bookinfo
  labels: {app: reviews, version: v4}
spec:
  serviceAccountName: bookinfo-reviews
  containers:
  - name: reviews
    image: docker.io/istio/examples-bookinfo-reviews-v4:1.0
";

const REVIEWS_ALL_TO_V2: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
";

const ALLOW_PRODUCTPAGE: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-from-productpage
  namespace: bookinfo
spec:
  selector:
    matchLabels: {app: reviews}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/bookinfo/sa/bookinfo-productpage]
";

fn json_of(text: &str) -> Value {
    let mut documents = json_documents(text);
    assert_eq!(documents.len(), 1);
    documents.remove(0)
}

fn key(kind: ResourceKind, namespace: &str, name: &str) -> IndexKey {
    (kind, namespace.to_owned(), name.to_owned())
}

/// One object of each kind the bookinfo example does not show (the Gateway API's routes, the
/// Istio kinds not applied yet), at the version each is watched at.
const OTHER_KINDS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: bookinfo}
spec: {address: 10.9.0.5, labels: {app: ratings}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bookinfo}
spec: {jwtRules: [{issuer: "https://issuer.example.com", jwksUri: "https://issuer.example.com/jwks"}]}
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: sampling, namespace: bookinfo}
spec: {tracing: [{randomSamplingPercentage: 5}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 9090}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: bookinfo}
spec:
  parentRefs: [{name: waypoint}]
  rules: [{backendRefs: [{name: db, port: 5432}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: bookinfo}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: [secure.example.com]
  rules: [{backendRefs: [{name: db, port: 5432}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-shop, namespace: bookinfo}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
---
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/zone: eu-1}}
status: {conditions: [{type: Ready, status: "True"}]}
"#;

#[tokio::test]
async fn watched_objects_match_the_file_loader_through_create_modify_delete() {
    init_tracing();
    let mut files = bookinfo_files();
    files.push(OTHER_KINDS.to_owned());
    let fake = FakeApiServer::start().await.unwrap();
    for text in &files {
        create_all(&fake, text);
    }
    let mut expected = expected_from(&files);
    assert!(
        ResourceKind::ALL
            .iter()
            .all(|kind| expected.keys().any(|(k, _, _)| k == kind)),
        "the fixture covers every kind"
    );
    let running = start_source(fake).await;
    converge(&running.index, &expected, "initial list").await;

    // Modify a pod and a VirtualService, delete a Service, create a pod and an
    // AuthorizationPolicy; the file loader, given the same objects, must agree.
    let fake = &running.fake;
    fake.update(json_of(REVIEWS_V3_RELABELED)).unwrap();
    fake.update(json_of(REVIEWS_ALL_TO_V2)).unwrap();
    fake.delete("v1", "Service", "bookinfo", "details").unwrap();
    fake.create(json_of(NEW_POD)).unwrap();
    fake.create(json_of(ALLOW_PRODUCTPAGE)).unwrap();
    for text in [
        REVIEWS_V3_RELABELED,
        REVIEWS_ALL_TO_V2,
        NEW_POD,
        ALLOW_PRODUCTPAGE,
    ] {
        expected.extend(expected_from(&[text.to_owned()]));
    }
    assert!(
        expected
            .remove(&key(ResourceKind::Service, "bookinfo", "details"))
            .is_some()
    );
    converge(&running.index, &expected, "after changes").await;

    // Deleting a namespaced CR and a cluster-scoped object flows too.
    fake.delete(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "bookinfo",
        "reviews-from-productpage",
    )
    .unwrap();
    fake.delete("v1", "Namespace", "", "bookinfo").unwrap();
    expected.remove(&key(
        ResourceKind::AuthorizationPolicy,
        "bookinfo",
        "reviews-from-productpage",
    ));
    expected.remove(&key(ResourceKind::Namespace, "", "bookinfo"));
    converge(&running.index, &expected, "after deletes").await;

    // One list per kind was enough: changes arrived as watch events.
    assert_eq!(running.index.replaced(ResourceKind::Pod), 1);
    assert!(running.index.rejections().is_empty());
}

#[tokio::test]
async fn gone_resource_version_forces_a_relist_without_losing_or_duplicating_state() {
    init_tracing();
    let files = bookinfo_files();
    let fake = FakeApiServer::start().await.unwrap();
    for text in &files {
        create_all(&fake, text);
    }
    let mut expected = expected_from(&files);
    let running = start_source(fake).await;
    converge(&running.index, &expected, "initial list").await;
    let fake = &running.fake;
    let pod_lists_before = lists_of(&fake.requests(), PODS);
    assert_eq!(pod_lists_before, 1);

    // Changes made while the watches deliver nothing, then the history they would resume from
    // is compacted away: only a relist can show them.
    fake.hold_watches(true);
    fake.create(json_of(NEW_POD)).unwrap();
    fake.delete("v1", "Pod", "bookinfo", "ratings-v1").unwrap();
    fake.update(json_of(REVIEWS_V3_RELABELED)).unwrap();
    fake.update(json_of(REVIEWS_ALL_TO_V2)).unwrap();
    fake.expire();
    fake.hold_watches(false);
    expected.extend(expected_from(&[
        NEW_POD.to_owned(),
        REVIEWS_V3_RELABELED.to_owned(),
        REVIEWS_ALL_TO_V2.to_owned(),
    ]));
    expected.remove(&key(ResourceKind::Pod, "bookinfo", "ratings-v1"));
    converge(&running.index, &expected, "after relist").await;

    let requests = fake.requests();
    assert_eq!(
        lists_of(&requests, PODS),
        pod_lists_before + 1,
        "pods relisted exactly once"
    );
    let vs_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.path == VIRTUAL_SERVICES)
        .collect();
    assert_eq!(lists_of(&requests, VIRTUAL_SERVICES), 2, "{vs_requests:#?}");
    // Every kind was relisted, and nothing in between appeared twice (`replace_all` asserts).
    // Kinds whose content did not change may finish their relist after the others converged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ResourceKind::ALL
        .iter()
        .any(|kind| running.index.replaced(*kind) < 2)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for kind in ResourceKind::ALL {
        assert_eq!(running.index.replaced(kind), 2, "{kind} relisted once");
    }

    // The watches resumed after the relist: a later change still arrives.
    fake.delete("v1", "Pod", "bookinfo", "reviews-v4").unwrap();
    expected.remove(&key(ResourceKind::Pod, "bookinfo", "reviews-v4"));
    converge(&running.index, &expected, "after relist and delete").await;
    assert_eq!(lists_of(&fake.requests(), PODS), pod_lists_before + 1);
}

#[tokio::test]
async fn watch_reconnecting_from_a_compacted_version_relists() {
    init_tracing();
    let fake = FakeApiServer::start().await.unwrap();
    create_all(&fake, NEW_POD);
    let running = start_source(fake).await;
    let fake = &running.fake;
    let mut expected = expected_from(&[NEW_POD.to_owned()]);
    converge(&running.index, &expected, "initial list").await;
    let seen_version = fake.resource_version();

    // A change the open watch never delivers, the history compacted past it, then the watch
    // connection ends: the reconnect from the old version is answered 410 and must relist.
    fake.hold_watches(true);
    fake.create(json_of(REVIEWS_V3_RELABELED)).unwrap();
    fake.compact();
    fake.close_watches();
    fake.hold_watches(false);
    expected.extend(expected_from(&[REVIEWS_V3_RELABELED.to_owned()]));
    converge(&running.index, &expected, "after reconnect and relist").await;

    let requests = fake.requests();
    let stale_watch = requests
        .iter()
        .position(|r| {
            r.is_watch_of(PODS)
                && r.query.get("resourceVersion") == Some(&seen_version.to_string())
                && r.query.get("allowWatchBookmarks").map(String::as_str) == Some("true")
        })
        .expect("the watch resumed from the version it had seen");
    let relist = requests.iter().rposition(|r| r.is_list_of(PODS)).unwrap();
    assert!(
        stale_watch < relist,
        "the relist followed the refused watch"
    );
    assert_eq!(lists_of(&requests, PODS), 2);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    init_tracing();
    let fake = FakeApiServer::start().await.unwrap();
    create_all(&fake, NEW_POD);
    fake.fail_next(PODS, 2, 500);
    let running = start_source(fake).await;
    let expected = expected_from(&[NEW_POD.to_owned()]);
    converge(&running.index, &expected, "pods after errors").await;

    let requests = running.fake.requests();
    let pod_requests: Vec<u16> = requests
        .iter()
        .filter(|r| r.path == PODS)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        pod_requests.get(..3),
        Some(&[500, 500, 200][..]),
        "two failed lists, then a good one: {pod_requests:?}"
    );
    assert_eq!(lists_of(&requests, PODS), 1);
}

#[tokio::test]
async fn kinds_are_read_at_whichever_version_the_server_serves() {
    init_tracing();
    // An API server with an older Istio's CRDs: VirtualService only as v1alpha3.
    let kinds = ServedKind::mesh_kinds()
        .into_iter()
        .map(|mut kind| {
            if kind.kind == "VirtualService" {
                kind.version = "v1alpha3".to_owned();
            }
            kind
        })
        .collect();
    let fake = FakeApiServer::start_with(kinds, Duration::from_millis(500))
        .await
        .unwrap();
    let old = REVIEWS_ALL_TO_V2.replace("networking.istio.io/v1", "networking.istio.io/v1alpha3");
    create_all(&fake, &old);
    let running = start_source(fake).await;
    converge(
        &running.index,
        &expected_from(&[REVIEWS_ALL_TO_V2.to_owned()]),
        "the v1alpha3 VirtualService, read as the same kind",
    )
    .await;
    let requests = running.fake.requests();
    let lists = |path: &str, status: u16| {
        requests
            .iter()
            .filter(|r| r.is_list_of(path) && r.status == status)
            .count()
    };
    assert!(lists(VIRTUAL_SERVICES, 404) >= 1, "v1 was asked first");
    assert!(lists("/apis/networking.istio.io/v1beta1/virtualservices", 404) >= 1);
    assert!(lists("/apis/networking.istio.io/v1alpha3/virtualservices", 200) >= 1);
}

#[tokio::test]
async fn kinds_the_server_does_not_serve_count_as_listed_and_empty() {
    init_tracing();
    let kinds = ServedKind::mesh_kinds()
        .into_iter()
        .filter(|k| k.group != "gateway.networking.k8s.io")
        .collect();
    let fake = FakeApiServer::start_with(kinds, Duration::from_millis(500))
        .await
        .unwrap();
    create_all(&fake, NEW_POD);
    let running = start_source(fake).await;
    converge(
        &running.index,
        &expected_from(&[NEW_POD.to_owned()]),
        "pods flow without the Gateway API",
    )
    .await;
    const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
    eventually("the missing kind is retried", || {
        let requests = running.fake.requests();
        requests
            .iter()
            .filter(|r| r.is_list_of(GATEWAYS) && r.status == 404)
            .count()
            >= 2
    })
    .await;
    // Retries of a kind still missing do not churn the sink.
    assert_eq!(running.index.replaced(ResourceKind::KubernetesGateway), 1);
}

#[tokio::test]
async fn both_sources_feed_the_same_index_and_translate_identically() {
    use crate::{index::LiveIndex, translate::agent};
    let files = bookinfo_files();
    let fake = FakeApiServer::start().await.unwrap();
    for text in &files {
        create_all(&fake, text);
    }
    let live = Arc::new(LiveIndex::default());
    let source = KubeSource::new(fake.client().expect("client"), live.clone());
    let mut synced = source.synced();
    let task = tokio::spawn(source.run());
    tokio::time::timeout(
        Duration::from_secs(20),
        synced.wait_for(|kinds| kinds.len() == ResourceKind::ALL.len()),
    )
    .await
    .expect("every kind listed")
    .expect("source running");

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/bookinfo");
    let (from_files, rejections) =
        crate::index::ConfigIndex::from_report(loader::load_paths(&[dir]), None);
    assert!(rejections.is_empty(), "{rejections:?}");
    let settings = agent::MeshSettings::default();
    let from_kube = live.snapshot();
    assert!(!from_files.pods.is_empty());
    // The API server gives pods uids; local files leave them to a name-based default.
    let without_uids = |addresses: BTreeMap<String, weft_proto::istio::workload::Address>| {
        use weft_proto::istio::workload::address::Type;
        addresses
            .into_values()
            .map(|mut address| {
                let key = match &mut address.r#type {
                    Some(Type::Workload(w)) => {
                        w.uid.clear();
                        format!("pod {}/{}", w.namespace, w.name)
                    }
                    Some(Type::Service(s)) => format!("service {}/{}", s.namespace, s.hostname),
                    None => String::new(),
                };
                (key, address)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let from_kube_addresses = without_uids(agent::addresses(&from_kube, &settings));
    assert_eq!(
        from_kube_addresses,
        without_uids(agent::addresses(&from_files, &settings))
    );
    assert!(
        from_kube_addresses.keys().any(|k| k.starts_with("pod ")),
        "pods carry addresses"
    );
    assert_eq!(
        agent::authorizations(&from_kube, &settings),
        agent::authorizations(&from_files, &settings)
    );
    task.abort();
}

mod admission;
mod nodes;
