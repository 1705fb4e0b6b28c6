//! The controller's push, end to end over real gRPC: a delta ADS client subscribes, gets the full
//! state, sees each file edit as a delta within a second, NACKs a resource and still receives
//! later updates, and gets the full state again after a controller restart. A waypoint receives
//! its own `WaypointConfig` (and no other), node agents none.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

mod common;

use common::{grpc_url, local_config, start, wait_for_text};
use prost::Message as _;
use weft_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, WAYPOINT_CONFIG_TYPE_URL,
    envoy::config::core::v3::Node, waypoint as wp,
};
use weft_test_support::temp::TempDir;
use weft_xds::{DeltaClient, Target, Update};

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n";

fn pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: uid-{name}, labels: {{app: {name}}}}}\nspec: {{nodeName: node1, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: {ip}}}\n"
    )
}

/// What the client's handlers saw.
#[derive(Default)]
struct Seen {
    updates: Vec<(Instant, Update)>,
}

fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!("{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

async fn wait_for(seen: &Arc<Mutex<Seen>>, after: usize, within: Duration) -> (Duration, Update) {
    let started = Instant::now();
    loop {
        if let Some((at, update)) = seen.lock().unwrap().updates.get(after) {
            return (at.duration_since(started), update.clone());
        }
        assert!(
            started.elapsed() < within,
            "no update #{after} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_follow_edits_nacks_are_survived_and_restarts_resend_everything() {
    let dir = TempDir::new("push");
    let config = local_config(dir.path(), "node1 node1-token-0123456789\n");
    let config_dir = dir.join("config");
    write(&config_dir, "ns.yaml", NAMESPACE);
    write(&config_dir, "a.yaml", &pod("a", "10.0.0.1"));
    let controller = start(&config).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = seen.clone();
    let rejected: Arc<Mutex<Vec<String>>> = Arc::default();
    let rejections = rejected.clone();
    let client = DeltaClient::new(
        Target::address(&grpc_url(&config)).unwrap(),
        Node {
            id: "node-agent~node1".into(),
            ..Default::default()
        },
    )
    .subscribe(ADDRESS_TYPE_URL, move |update: Update| {
        recorder
            .lock()
            .unwrap()
            .updates
            .push((Instant::now(), update));
        Ok(())
    })
    .subscribe(AUTHORIZATION_TYPE_URL, move |update: Update| {
        if update.added.iter().any(|r| r.name == "shop/reject-me") {
            rejections.lock().unwrap().push("shop/reject-me".into());
            return Err("the agent cannot apply shop/reject-me".into());
        }
        Ok(())
    });
    let client_state = client.state();
    let client_task = tokio::spawn(client.run_until(std::future::pending::<()>()));

    // The full state first.
    let (_, first) = wait_for(&seen, 0, Duration::from_secs(5)).await;
    assert!(first.full_state);
    assert_eq!(
        first
            .added
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["uid-a"]
    );

    // Add, change, delete: each a delta of exactly that resource, within a second.
    write(&config_dir, "b.yaml", &pod("b", "10.0.0.2"));
    let (latency, added) = wait_for(&seen, 1, Duration::from_secs(3)).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(
        added
            .added
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["uid-b"]
    );
    assert!(!added.full_state);
    write(&config_dir, "b.yaml", &pod("b", "10.0.0.3"));
    let (latency, changed) = wait_for(&seen, 2, Duration::from_secs(3)).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(changed.added.len(), 1);
    std::fs::remove_file(config_dir.join("b.yaml")).unwrap();
    let (latency, removed) = wait_for(&seen, 3, Duration::from_secs(3)).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(removed.removed, ["uid-b"]);

    // A resource the client NACKs: counted by the controller; later updates still arrive.
    write(
        &config_dir,
        "policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: reject-me, namespace: shop}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while rejected.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the policy never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let monitoring = format!("http://{}/metrics", config.monitoring_address);
    wait_for_text(
        &monitoring,
        "pilot_total_xds_rejects{type=\"wads\"} 1",
        Duration::from_secs(3),
    )
    .await;
    write(&config_dir, "c.yaml", &pod("c", "10.0.0.4"));
    let (_, after_nack) = wait_for(&seen, 4, Duration::from_secs(3)).await;
    assert_eq!(after_nack.added[0].name, "uid-c");

    // Restart: the client reconnects and receives the full state again.
    let connections_before = client_state.borrow().connections;
    controller.stop().await;
    let _restarted = start(&config).await;
    let (_, again) = wait_for(&seen, 5, Duration::from_secs(20)).await;
    assert!(again.full_state, "{again:?}");
    let mut names: Vec<_> = again.added.iter().map(|r| r.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["uid-a", "uid-c"]);
    assert!(client_state.borrow().connections > connections_before);
    client_task.abort();
}

const WAYPOINT_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: shop, uid: uid-waypoint-0, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: node1, serviceAccountName: waypoint, containers: [{name: waypoint, image: x}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, uid: uid-reviews-v1, labels: {app: reviews, version: v1}}
spec: {nodeName: node1, serviceAccountName: reviews, containers: [{name: app, image: x}]}
status: {podIP: 10.0.0.11}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"#;

fn reviews_route(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n  - name: {name}\n    route: [{{destination: {{host: reviews, subset: v1}}}}]\n"
    )
}

/// The route names of a waypoint update, after the waypoint's own model accepted it.
fn route_names(update: &Update) -> Result<Vec<String>, String> {
    let [resource] = update.added.as_slice() else {
        return Err(format!("expected one resource, got {update:?}"));
    };
    let any = resource.resource.as_ref().ok_or("no body")?;
    let config = wp::WaypointConfig::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
    let names = config
        .services
        .iter()
        .flat_map(|s| {
            s.http_routes
                .iter()
                .map(|r| format!("{}:{}", s.name, r.name))
        })
        .collect();
    waypoint::model::WaypointConfig::try_from(config).map_err(|e| e.to_string())?;
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gets_its_config_and_follows_edits_and_agents_get_none() {
    let dir = TempDir::new("push-waypoint");
    let config = local_config(dir.path(), "node1 node1-token-0123456789\n");
    let config_dir = dir.join("config");
    write(&config_dir, "mesh.yaml", WAYPOINT_MESH);
    let controller = start(&config).await;
    let target = || Target::address(&grpc_url(&config)).unwrap();

    // The waypoint's node and subscription, exactly as the waypoint binary sends them; it also
    // asks for another waypoint's config, which it must not get.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = seen.clone();
    let waypoint = DeltaClient::new(target(), waypoint_node()).subscribe_names(
        WAYPOINT_CONFIG_TYPE_URL,
        vec!["shop/waypoint".into(), "shop/other".into()],
        move |update: Update| {
            let verdict = route_names(&update).and_then(|names| {
                if names.iter().any(|n| n.ends_with(":nack-me")) {
                    Err("the waypoint cannot apply route nack-me".to_owned())
                } else {
                    Ok(())
                }
            });
            recorder
                .lock()
                .unwrap()
                .updates
                .push((Instant::now(), update));
            verdict
        },
    );
    let waypoint_task = tokio::spawn(waypoint.run_until(std::future::pending::<()>()));

    // A node agent asking for every WaypointConfig gets an empty full state and nothing after.
    let agent_seen = Arc::new(Mutex::new(Seen::default()));
    let agent_recorder = agent_seen.clone();
    let agent_policies = Arc::new(Mutex::new(Seen::default()));
    let policy_recorder = agent_policies.clone();
    let agent = DeltaClient::new(
        target(),
        Node {
            id: "node-agent~node1".into(),
            ..Default::default()
        },
    )
    .subscribe(WAYPOINT_CONFIG_TYPE_URL, move |update: Update| {
        agent_recorder
            .lock()
            .unwrap()
            .updates
            .push((Instant::now(), update));
        Ok(())
    })
    // Its policies show when the controller has published an edit meant for agents only.
    .subscribe(AUTHORIZATION_TYPE_URL, move |update: Update| {
        policy_recorder
            .lock()
            .unwrap()
            .updates
            .push((Instant::now(), update));
        Ok(())
    });
    let agent_task = tokio::spawn(agent.run_until(std::future::pending::<()>()));

    let (_, first) = wait_for(&seen, 0, Duration::from_secs(5)).await;
    assert!(first.full_state);
    assert_eq!(
        first
            .added
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["shop/waypoint"]
    );
    assert_eq!(route_names(&first).unwrap(), ["reviews:default"]);

    // A VirtualService appears: a delta of the waypoint's config within a second.
    write(&config_dir, "reviews-vs.yaml", &reviews_route("to-v1"));
    let (latency, routed) = wait_for(&seen, 1, Duration::from_secs(3)).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert!(!routed.full_state);
    assert_eq!(
        route_names(&routed).unwrap(),
        ["reviews:to-v1", "reviews:default"]
    );

    // A version the waypoint refuses is NACKed (and counted); the next edit still arrives.
    write(&config_dir, "reviews-vs.yaml", &reviews_route("nack-me"));
    let (_, refused) = wait_for(&seen, 2, Duration::from_secs(3)).await;
    assert_eq!(
        route_names(&refused).unwrap(),
        ["reviews:nack-me", "reviews:default"]
    );
    let monitoring = format!("http://{}/metrics", config.monitoring_address);
    wait_for_text(
        &monitoring,
        "pilot_total_xds_rejects{type=\"waypoint_config\"} 1",
        Duration::from_secs(3),
    )
    .await;
    write(&config_dir, "reviews-vs.yaml", &reviews_route("after-nack"));
    let (latency, recovered) = wait_for(&seen, 3, Duration::from_secs(3)).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(
        route_names(&recovered).unwrap(),
        ["reviews:after-nack", "reviews:default"]
    );

    // An edit for node agents only (a workload-selector policy) leaves the waypoint's config
    // as it was: same bytes, no push. Once the agent has the policy, the controller has
    // published the edit; a later route edit then reaches the waypoint as its very next
    // update, with nothing pushed in between.
    let policies_before = agent_policies.lock().unwrap().updates.len();
    write(
        &config_dir,
        "l4-policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: l4, namespace: shop}\nspec: {selector: {matchLabels: {app: reviews}}, action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}\n",
    );
    let (_, policy) = wait_for(&agent_policies, policies_before, Duration::from_secs(3)).await;
    assert_eq!(
        policy
            .added
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["shop/l4"]
    );
    write(&config_dir, "reviews-vs.yaml", &reviews_route("marker"));
    let (_, next) = wait_for(&seen, 4, Duration::from_secs(3)).await;
    assert_eq!(
        route_names(&next).unwrap(),
        ["reviews:marker", "reviews:default"],
        "the agents-only edit pushed the waypoint's config"
    );
    assert_eq!(seen.lock().unwrap().updates.len(), 5, "no spurious push");

    let agent_updates = agent_seen.lock().unwrap().updates.clone();
    assert_eq!(agent_updates.len(), 1, "{agent_updates:?}");
    assert!(agent_updates[0].1.full_state);
    assert!(agent_updates[0].1.added.is_empty(), "{agent_updates:?}");

    waypoint_task.abort();
    agent_task.abort();
    controller.stop().await;
}

const KEYS: &str = r#"{"keys":[{"crv":"Ed25519","kid":"k1","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

/// The node of the waypoint `shop/waypoint`, exactly as the waypoint binary sends it.
fn waypoint_node() -> Node {
    Node {
        id: "waypoint~0.0.0.0~waypoint.shop~shop.svc.cluster.local".into(),
        cluster: "waypoint".into(),
        ..Default::default()
    }
}

/// The waypoint `shop/waypoint` subscribed to its config, accepting every update: what it saw.
fn waypoint_recorder(
    config: &controller::server::ServerConfig,
) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = seen.clone();
    let waypoint = DeltaClient::new(Target::address(&grpc_url(config)).unwrap(), waypoint_node())
        .subscribe_names(
            WAYPOINT_CONFIG_TYPE_URL,
            vec!["shop/waypoint".into()],
            move |update: Update| {
                recorder
                    .lock()
                    .unwrap()
                    .updates
                    .push((Instant::now(), update));
                Ok(())
            },
        );
    let task = tokio::spawn(async move {
        let _ = waypoint.run_until(std::future::pending::<()>()).await;
    });
    (seen, task)
}

/// The JWKS of the waypoint's first JWT rule in a pushed update.
fn pushed_jwks(update: &Update) -> String {
    let any = update.added[0].resource.as_ref().expect("a body");
    let config = wp::WaypointConfig::decode(any.value.as_slice()).unwrap();
    let rule = &config.request_authentications[0].jwt_rules[0];
    assert_eq!(rule.issuer, "https://issuer.example");
    waypoint::model::WaypointConfig::try_from(config.clone()).expect("the waypoint applies it");
    config.request_authentications[0].jwt_rules[0].jwks.clone()
}

/// Serves `KEYS` on `address` (plain HTTP/1.1) until the task is aborted.
async fn serve_keys(address: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(KEYS.as_bytes()),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_uri_keys_are_fetched_by_the_controller_and_pushed_inline() {
    let dir = TempDir::new("push-jwks");
    let config = local_config(dir.path(), "node1 node1-token-0123456789\n");
    let config_dir = dir.join("config");
    // The key server is not up yet: the first configuration has no key for the issuer.
    let keys_address = common::free_port();
    let request_authentication = format!(
        "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  jwtRules: [{{issuer: 'https://issuer.example', jwksUri: 'http://{keys_address}/keys'}}]\n"
    );
    write(
        &config_dir,
        "mesh.yaml",
        &format!("{WAYPOINT_MESH}{request_authentication}"),
    );
    let controller = start(&config).await;
    let (seen, waypoint_task) = waypoint_recorder(&config);

    let (_, first) = wait_for(&seen, 0, Duration::from_secs(5)).await;
    assert_eq!(pushed_jwks(&first), "", "no key before a fetch succeeded");
    // Once the server answers, a retry (1 s, then doubling) fetches the keys and the controller
    // republishes on its own: no configuration changed.
    let server = serve_keys(keys_address).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next = 1;
    loop {
        let (_, update) = wait_for(&seen, next, deadline - Instant::now()).await;
        if pushed_jwks(&update) == KEYS {
            break;
        }
        next += 1;
    }

    server.abort();
    waypoint_task.abort();
    controller.stop().await;
}

/// The tracing of the waypoint's config in a pushed update, after the waypoint's own model
/// accepted it.
fn pushed_tracing(update: &Update) -> Option<wp::Tracing> {
    let [resource] = update.added.as_slice() else {
        panic!("expected one resource, got {update:?}");
    };
    let any = resource.resource.as_ref().expect("a body");
    let config = wp::WaypointConfig::decode(any.value.as_slice()).unwrap();
    waypoint::model::WaypointConfig::try_from(config.clone()).expect("the waypoint applies it");
    config.tracing
}

fn tracing_mesh_config(service: &str, sampling: u32) -> String {
    format!(
        "defaultConfig: {{tracing: {{sampling: {sampling}}}}}\ndefaultProviders: {{tracing: [otel]}}\nextensionProviders: [{{name: otel, opentelemetry: {{service: {service}, port: 4317}}}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_mesh_config_file_changes_the_waypoints_tracing() {
    let dir = TempDir::new("push-mesh-tracing");
    let mut config = local_config(dir.path(), "node1 node1-token-0123456789\n");
    write(&dir.join("config"), "mesh.yaml", WAYPOINT_MESH);
    // The collectors' hosts are in the registry: a provider whose service is not is skipped.
    write(
        &dir.join("config"),
        "collectors.yaml",
        "{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: collectors, namespace: observability}, spec: {hosts: [collector.example.com, traces.example.com], ports: [{number: 4317, name: grpc, protocol: GRPC}], resolution: DNS}}",
    );
    write(
        dir.path(),
        "mesh-config.yaml",
        &tracing_mesh_config("collector.example.com", 10),
    );
    config.settings.mesh = Arc::new(
        controller::mesh_config::MeshConfigWatch::load(dir.join("mesh-config.yaml")).unwrap(),
    );
    let controller = start(&config).await;
    let (seen, waypoint_task) = waypoint_recorder(&config);

    let (_, first) = wait_for(&seen, 0, Duration::from_secs(5)).await;
    let tracing = pushed_tracing(&first).expect("the file's tracing is pushed");
    assert_eq!(tracing.provider, "otel");
    assert_eq!(tracing.collector, ["collector.example.com:4317"]);
    assert_eq!(tracing.random_sampling_percentage, 10.0);

    // The file changes: the new collector and sampling reach the waypoint, as a delta.
    write(
        dir.path(),
        "mesh-config.yaml",
        &tracing_mesh_config("traces.example.com", 50),
    );
    let (_, changed) = wait_for(&seen, 1, Duration::from_secs(3)).await;
    assert!(!changed.full_state);
    let tracing = pushed_tracing(&changed).expect("tracing stays on");
    assert_eq!(tracing.collector, ["traces.example.com:4317"]);
    assert_eq!(tracing.random_sampling_percentage, 50.0);

    // An invalid change (an OTLP/HTTP header no HTTP request can carry) is refused and pushes
    // nothing: the next update the waypoint sees is the valid change after it, which turns
    // tracing off.
    write(
        dir.path(),
        "mesh-config.yaml",
        "defaultProviders: {tracing: [otel]}\nextensionProviders: [{name: otel, opentelemetry: {service: c, port: 4318, http: {path: /v1/traces, headers: [{name: 'bad name', value: x}]}}}]\n",
    );
    let error = config.settings.mesh.reload().unwrap_err().to_string();
    assert!(
        error.contains("extensionProviders[0].opentelemetry.http.headers[0].name"),
        "{error}"
    );
    assert_eq!(config.settings.mesh.tracing().sampling, 50.0);
    write(dir.path(), "mesh-config.yaml", "");
    let (_, off) = wait_for(&seen, 2, Duration::from_secs(3)).await;
    assert_eq!(pushed_tracing(&off), None);
    assert_eq!(seen.lock().unwrap().updates.len(), 3);

    waypoint_task.abort();
    controller.stop().await;
}
