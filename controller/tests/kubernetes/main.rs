//! The real `controller run` binary in Kubernetes mode against the fake API server (reached
//! through a kubeconfig file, so `kube`'s own config inference and client run): the root is
//! created in a Secret and published in a ConfigMap, delta ADS and the CA are served over TLS on
//! the gRPC-TLS port with a certificate that chains to that root, workloads follow the API
//! server's objects within a second or two, node agents' tokens are reviewed, and a restarted
//! controller keeps the same root. The validating webhook answers real AdmissionReviews over TLS,
//! trusted through the CA bundle the controller writes into its webhook configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_fake_apiserver::{FakeApiServer, TokenIdentity};
use weft_identity::{SpiffeId, WorkloadKey};
use weft_proto::istio::ca::IstioCertificateRequest;
use weft_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use weft_proto::{ADDRESS_TYPE_URL, envoy::config::core::v3::Node};
use weft_test_support::temp::TempDir;
use weft_xds::{DeltaClient, Target, Update};

mod credentials;

const SERVING_NAME: &str = "istiod.istio-system.svc";

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The controller process; killed when dropped.
struct Controller(Child);

/// Whether the controller's `/ready` on `monitoring` answers 200 (every gRPC port accepts).
fn is_ready(monitoring: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&monitoring, Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut response = String::new();
    stream
        .write_all(b"GET /ready HTTP/1.0\r\nHost: controller\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut response))
        .is_ok_and(|_| response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fake API server's kubeconfig, in a directory of this process's own.
fn write_kubeconfig(fake: &FakeApiServer, label: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(label);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    (dir, kubeconfig)
}

/// Waits until the controller is ready and has published its root; returns the root's PEM.
async fn ready_with_root(fake: &FakeApiServer, monitoring: SocketAddr) -> String {
    eventually(
        "the controller's readiness",
        Duration::from_secs(20),
        || is_ready(monitoring).then_some(()),
    )
    .await;
    eventually("the published root", Duration::from_secs(20), || {
        let map = fake.get("v1", "ConfigMap", "istio-system", "istio-ca-root-cert")?;
        map["data"]["root-cert.pem"].as_str().map(str::to_owned)
    })
    .await
}

fn start_controller(kubeconfig: &PathBuf, tls: SocketAddr, monitoring: SocketAddr) -> Controller {
    start_controller_with_webhook(kubeconfig, tls, monitoring, free_port())
}

fn start_controller_with_webhook(
    kubeconfig: &PathBuf,
    tls: SocketAddr,
    monitoring: SocketAddr,
    webhook: SocketAddr,
) -> Controller {
    let child = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("run")
        .args(["--tls-address", &tls.to_string()])
        .args(["--monitoring-address", &monitoring.to_string()])
        .args(["--webhook-address", &webhook.to_string()])
        .args(["--namespace", "istio-system"])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WEFT_CONFIG_DIR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .spawn()
        .expect("the controller binary starts");
    Controller(child)
}

async fn eventually<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}})
}

fn pod(name: &str, ip: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
           "spec": {"nodeName": node, "serviceAccountName": name,
                    "containers": [{"name": "app", "image": "x"}]},
           "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn uid(fake: &FakeApiServer, kind: &str, namespace: &str, name: &str) -> String {
    fake.get("v1", kind, namespace, name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The node agent's pod on node1 and its token, `node1-agent-token`.
fn add_node_agent(fake: &FakeApiServer) {
    fake.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "weft-node-agent-x", "namespace": "istio-system"},
        "spec": {"nodeName": "node1", "serviceAccountName": "weft-node-agent",
                 "containers": [{"name": "agent", "image": "weft"}]}}))
        .unwrap();
    let agent_uid = uid(fake, "Pod", "istio-system", "weft-node-agent-x");
    fake.add_token(
        "node1-agent-token",
        TokenIdentity::bound(
            "istio-system",
            "weft-node-agent",
            ("weft-node-agent-x", &agent_uid),
            None,
            "istio-ca",
        ),
    );
}

fn tls_channel(address: SocketAddr, root_pem: &str) -> Channel {
    weft_identity::install_default_provider();
    Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root_pem))
                .domain_name(SERVING_NAME),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

async fn wait_update(
    seen: &Arc<Mutex<Vec<(Instant, Update)>>>,
    index: usize,
    within: Duration,
) -> (Instant, Update) {
    eventually(&format!("update #{index}"), within, || {
        seen.lock().unwrap().get(index).cloned()
    })
    .await
}

fn names(update: &Update) -> Vec<String> {
    let mut names: Vec<String> = update.added.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

/// A node agent's xDS node on `node`, as the agent builds it.
fn agent_node(node: &str) -> Node {
    let value = |text: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.into())),
    };
    Node {
        id: format!("node-agent~{node}"),
        metadata: Some(prost_types::Struct {
            fields: [("NODE_NAME".to_string(), value(node))].into(),
        }),
        ..Default::default()
    }
}

/// Opens a discovery stream as `node` with `token` and returns the error that ends it; panics
/// if it receives any resource.
async fn refused_stream(channel: Channel, node: Node, token: Option<&'static str>) -> String {
    let mut client = DeltaClient::new(Target::Channel(channel), node).subscribe(
        ADDRESS_TYPE_URL,
        |update: Update| -> Result<(), String> {
            panic!("a refused stream received {} resources", update.added.len())
        },
    );
    if let Some(token) = token {
        client = client.with_bearer_token(Arc::new(move || Ok(token.to_string())));
    }
    let mut state = client.state();
    let task = tokio::spawn(client.run_until(std::future::pending::<()>()));
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .expect("the stream ends in time")
    .expect("client alive")
    .last_error
    .clone()
    .unwrap_or_default();
    task.abort();
    ended
}

async fn certificate(
    channel: Channel,
    token: &str,
    account: &str,
) -> Result<Vec<String>, tonic::Status> {
    let identity = SpiffeId::new("cluster.local", "shop", account).unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_for(&identity).unwrap();
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_serves_the_cluster_over_tls_and_follows_its_changes() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.create(namespace()).unwrap();
    fake.create(pod("a", "10.0.0.1", "node1")).unwrap();
    add_node_agent(&fake);

    let (_dir, kubeconfig) = write_kubeconfig(&fake, "kube-mode");
    let tls = free_port();
    let monitoring = free_port();
    let controller = start_controller(&kubeconfig, tls, monitoring);

    // First start: a root in istio-ca-secret, published in istio-ca-root-cert.
    let root = ready_with_root(&fake, monitoring).await;
    let secret = fake
        .get("v1", "Secret", "istio-system", "istio-ca-secret")
        .expect("the root is persisted");
    assert!(secret["data"]["ca-key.pem"].is_string());

    // Discovery streams need the CA's credential: none, or a node agent's token under another
    // node's name, are refused before anything is sent.
    let anonymous = refused_stream(tls_channel(tls, &root), agent_node("node1"), None).await;
    assert!(
        anonymous.contains("missing `authorization: Bearer <token>`"),
        "{anonymous}"
    );
    let elsewhere = refused_stream(
        tls_channel(tls, &root),
        agent_node("node2"),
        Some("node1-agent-token"),
    )
    .await;
    assert!(
        elsewhere.contains("token belongs to node node1, the stream's NODE_NAME is node2"),
        "{elsewhere}"
    );

    // Delta ADS over TLS, verified against that root under istiod's name, with the agent's
    // token.
    let seen: Arc<Mutex<Vec<(Instant, Update)>>> = Arc::default();
    let recorder = seen.clone();
    let client = DeltaClient::new(
        Target::Channel(tls_channel(tls, &root)),
        agent_node("node1"),
    )
    .with_bearer_token(Arc::new(|| Ok("node1-agent-token".to_string())))
    .subscribe(ADDRESS_TYPE_URL, move |update: Update| {
        recorder.lock().unwrap().push((Instant::now(), update));
        Ok(())
    });
    let client_state = client.state();
    let client_task = tokio::spawn(client.run_until(std::future::pending::<()>()));
    let (_, first) = wait_update(&seen, 0, Duration::from_secs(20)).await;
    assert!(first.full_state);
    // The agent's own pod has no address yet: no workload.
    assert_eq!(names(&first), [uid(&fake, "Pod", "shop", "a")]);

    // Create, modify, delete in the API server: each a delta of that workload, within 2 s.
    let created_at = Instant::now();
    fake.create(pod("b", "10.0.0.2", "node1")).unwrap();
    let b = uid(&fake, "Pod", "shop", "b");
    let (at, added) = wait_update(&seen, 1, Duration::from_secs(5)).await;
    assert!(
        at - created_at < Duration::from_secs(2),
        "{:?}",
        at - created_at
    );
    assert_eq!(names(&added), std::slice::from_ref(&b));
    assert!(!added.full_state);
    let modified_at = Instant::now();
    fake.update(pod("b", "10.0.0.3", "node1")).unwrap();
    let (at, modified) = wait_update(&seen, 2, Duration::from_secs(5)).await;
    assert!(
        at - modified_at < Duration::from_secs(2),
        "{:?}",
        at - modified_at
    );
    assert_eq!(names(&modified), std::slice::from_ref(&b));
    let deleted_at = Instant::now();
    fake.delete("v1", "Pod", "shop", "b").unwrap();
    let (at, deleted) = wait_update(&seen, 3, Duration::from_secs(5)).await;
    assert!(
        at - deleted_at < Duration::from_secs(2),
        "{:?}",
        at - deleted_at
    );
    assert_eq!(deleted.removed, [b]);

    // The CA over the same TLS port: the node agent's token for its node's pod, and nothing
    // else.
    let channel = tls_channel(tls, &root);
    let chain = certificate(channel.clone(), "node1-agent-token", "a")
        .await
        .unwrap();
    assert_eq!(chain.last().map(|r| r.trim()), Some(root.trim()));
    let unknown = certificate(channel.clone(), "not-a-token", "a")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
    fake.create(pod("c", "10.0.0.9", "node2")).unwrap();
    wait_update(&seen, 4, Duration::from_secs(5)).await;
    let elsewhere = certificate(channel, "node1-agent-token", "c")
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.code(),
        tonic::Code::PermissionDenied,
        "{}",
        elsewhere.message()
    );

    // A client that does not trust the mesh root gets no connection.
    let stranger = weft_identity::CertificateAuthority::generate().unwrap();
    let refused = certificate(
        tls_channel(tls, stranger.root_cert_pem()),
        "node1-agent-token",
        "a",
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // Restart: the same root (from the Secret) signs the new serving certificate, and the client
    // reconnects to the full state.
    let connections = client_state.borrow().connections;
    drop(controller);
    let _restarted = start_controller(&kubeconfig, tls, free_port());
    let (_, again) = wait_update(&seen, 5, Duration::from_secs(30)).await;
    assert!(again.full_state, "{again:?}");
    assert!(client_state.borrow().connections > connections);
    let map = fake
        .get("v1", "ConfigMap", "istio-system", "istio-ca-root-cert")
        .unwrap();
    assert_eq!(map["data"]["root-cert.pem"].as_str(), Some(root.as_str()));
    let secret_creates = fake
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST"
                && r.path == "/api/v1/namespaces/istio-system/secrets"
                && r.status == 201
        })
        .count();
    assert_eq!(secret_creates, 1);
    client_task.abort();
}

/// The ValidatingWebhookConfiguration as the chart installs it: no CA bundle yet.
fn webhook_configuration() -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
    "metadata": {"name": "weft-validator-istio-system"},
    "webhooks": [{
        "name": "validation.istio.io",
        "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system", "path": "/validate"}},
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["networking.istio.io", "security.istio.io"],
                   "apiVersions": ["*"], "resources": ["*"]}],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }]})
}

/// POSTs an AdmissionReview to the webhook over TLS, trusting only `bundle` (PEM) for the name
/// the API server uses (`istiod.istio-system.svc`), and returns the answer.
async fn post_review(webhook: SocketAddr, bundle: &str, review: &Value) -> Value {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(webhook).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVING_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the webhook's certificate verifies against the bundle");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/validate")
        .header("content-type", "application/json")
        .header("host", SERVING_NAME)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            review.to_string(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn admission_review(uid: &str, kind: &str, object: Value) -> Value {
    let group = object["apiVersion"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": group, "version": "v1", "kind": kind},
                    "resource": {"group": group, "version": "v1", "resource": "x"},
                    "namespace": "shop", "name": object["metadata"]["name"],
                    "operation": "CREATE", "object": object}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_bad_configuration_over_tls_trusted_through_the_bundle_it_keeps() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.create(webhook_configuration()).unwrap();
    let (_dir, kubeconfig) = write_kubeconfig(&fake, "webhook");
    let (monitoring, webhook) = (free_port(), free_port());
    let _controller = start_controller_with_webhook(&kubeconfig, free_port(), monitoring, webhook);
    let root = ready_with_root(&fake, monitoring).await;
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&root);
    let bundle_of = |fake: &FakeApiServer| {
        let configuration = fake.get(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            "",
            "weft-validator-istio-system",
        )?;
        configuration["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .map(str::to_owned)
    };
    let bundle = eventually(
        "the CA bundle in the webhook configuration",
        Duration::from_secs(20),
        || bundle_of(&fake).filter(|b| *b == encoded),
    )
    .await;
    let bundle_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
    )
    .unwrap();

    // A bad VirtualService: refused, with the messages `controller validate` prints.
    let bad = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["*"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}});
    let answer = post_review(
        webhook,
        &bundle_pem,
        &admission_review("u1", "VirtualService", bad),
    )
    .await;
    assert_eq!(answer["response"]["uid"], "u1");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "configuration is invalid: VirtualService shop/reviews: spec.hosts[0]: wildcard host * is not allowed for virtual services bound to the mesh gateway"
    );

    // A good one with a field Weft does not apply: allowed, with that warning.
    let good = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}});
    let answer = post_review(
        webhook,
        &bundle_pem,
        &admission_review("u2", "DestinationRule", good),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let warnings = answer["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings[0].as_str().unwrap().starts_with(
            "DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.simple: accepted but not applied"
        ),
        "{warnings:?}"
    );

    // `helm upgrade` puts the chart's configuration back, without the bundle: written again.
    let mut reset = fake
        .get(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            "",
            "weft-validator-istio-system",
        )
        .unwrap();
    reset["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    fake.update(reset).unwrap();
    assert_eq!(bundle_of(&fake), None);
    eventually(
        "the CA bundle written again",
        Duration::from_secs(20),
        || bundle_of(&fake).filter(|b| *b == encoded),
    )
    .await;
}

/// Every update of one type a stream receives, as `(name, resource bytes)`.
type Received = Arc<Mutex<Vec<Vec<(String, Vec<u8>)>>>>;

/// The `istio` ConfigMap with `mesh` as its mesh configuration.
fn mesh_config_map(mesh: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "istio", "namespace": "istio-system"},
           "data": {"mesh": mesh, "meshNetworks": "networks: {}"}})
}

fn outbound_mode(mode: &str) -> String {
    format!("outboundTrafficPolicy:\n  mode: {mode}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_follows_the_istio_config_map_and_keeps_the_last_good_mesh_config() {
    use prost::Message;
    use weft_proto::mesh::{MeshConfig, OutboundTrafficPolicy};

    let fake = FakeApiServer::start().await.unwrap();
    add_node_agent(&fake);
    // Read at start: the first push already carries REGISTRY_ONLY.
    fake.create(mesh_config_map(&outbound_mode("REGISTRY_ONLY")))
        .unwrap();

    let (dir, kubeconfig) = write_kubeconfig(&fake, "kube-mesh-config");
    let log = dir.join("controller.log");
    let (tls, monitoring) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("run")
        .args(["--tls-address", &tls.to_string()])
        .args(["--monitoring-address", &monitoring.to_string()])
        .args(["--webhook-address", &free_port().to_string()])
        .args(["--namespace", "istio-system"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WEFT_CONFIG_DIR")
        .env_remove("WEFT_MESH_CONFIG")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the controller binary starts");
    let _controller = Controller(child);
    let root = ready_with_root(&fake, monitoring).await;

    let modes: Arc<Mutex<Vec<OutboundTrafficPolicy>>> = Arc::default();
    let recorder = modes.clone();
    let client = DeltaClient::new(
        Target::Channel(tls_channel(tls, &root)),
        agent_node("node1"),
    )
    .with_bearer_token(Arc::new(|| Ok("node1-agent-token".to_string())))
    .subscribe(
        weft_proto::MESH_CONFIG_TYPE_URL,
        move |update: Update| -> Result<(), String> {
            for resource in &update.added {
                let body = resource.resource.as_ref().ok_or("no body")?;
                let config =
                    MeshConfig::decode(body.value.as_slice()).map_err(|e| e.to_string())?;
                recorder
                    .lock()
                    .unwrap()
                    .push(config.outbound_traffic_policy());
            }
            Ok(())
        },
    );
    let task = tokio::spawn(client.run_until(std::future::pending::<()>()));
    let received = |count: usize| {
        let modes = modes.clone();
        move || {
            let modes = modes.lock().unwrap();
            (modes.len() >= count).then(|| modes.clone())
        }
    };
    let first = eventually(
        "the first mesh config",
        Duration::from_secs(20),
        received(1),
    )
    .await;
    assert_eq!(first, [OutboundTrafficPolicy::RegistryOnly]);

    // A change of the ConfigMap reaches the agents.
    fake.update(mesh_config_map(&outbound_mode("ALLOW_ANY")))
        .unwrap();
    let seen = eventually("ALLOW_ANY pushed", Duration::from_secs(10), received(2)).await;
    assert_eq!(seen[1], OutboundTrafficPolicy::AllowAny);

    // A bad one is refused, and nothing is pushed for it: the next push is the next good one.
    fake.update(mesh_config_map(&outbound_mode("registry_only")))
        .unwrap();
    fake.update(mesh_config_map(&outbound_mode("REGISTRY_ONLY")))
        .unwrap();
    let seen = eventually("REGISTRY_ONLY pushed", Duration::from_secs(10), received(3)).await;
    assert_eq!(
        seen,
        [
            OutboundTrafficPolicy::RegistryOnly,
            OutboundTrafficPolicy::AllowAny,
            OutboundTrafficPolicy::RegistryOnly
        ]
    );
    // Events are handled in order: the refusal was logged before that last push.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(
            "ConfigMap istio-system/istio (key mesh): outboundTrafficPolicy.mode: unknown value \"registry_only\""
        ),
        "{logged}"
    );

    // Deleting the ConfigMap restores Istio's defaults.
    fake.delete("v1", "ConfigMap", "istio-system", "istio")
        .unwrap();
    let seen = eventually("the defaults pushed", Duration::from_secs(10), received(4)).await;
    assert_eq!(seen[3], OutboundTrafficPolicy::AllowAny);
    task.abort();
}
