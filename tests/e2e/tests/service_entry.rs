//! ServiceEntry applied: an enrolled pod reaches a host outside the cluster and the mesh (a
//! namespace of the testbed that no Pod object names, never enrolled) by the ServiceEntry's VIP,
//! in plain TCP from its node agent to the STATIC endpoint, counted under the ServiceEntry's
//! host and held to the endpoint's L4 policy; and an endpoint given by name, which the agent
//! resolves itself. Needs root.

use weft_e2e::{Mesh, MeshOptions, PodSpec};

/// The ServiceEntry's VIP: nothing answers there, the agent resolves it.
const VIP: &str = "10.96.200.10";
const HOST: &str = "api.payments.example";

fn mesh() -> Mesh {
    Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("orders", "node1", "shop", "orders", "v1"),
            PodSpec::app("payments", "node2", "shop", "payments", "v1").outside_cluster(),
        ],
        MeshOptions::default(),
    )
    .expect("start the mesh")
}

fn service_entry(endpoint: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments-api
  namespace: shop
  labels: {{app: payments-api}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - {{address: {endpoint}, ports: {{http: 8080}}}}
"#
    )
}

/// A DENY for the client, selecting the ServiceEntry's endpoints by the ServiceEntry's labels
/// (as istiod attaches selector policies to them).
const DENY_CLIENT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-payments-for-client, namespace: shop}
spec:
  selector: {matchLabels: {app: payments-api}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]
"#;

/// The value of the first sample of `family` whose line holds every one of `labels`.
fn sample(metrics: &str, family: &str, labels: &[&str]) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn an_external_host_is_reached_by_its_service_entry_through_the_agent() {
    let mesh = mesh();
    let endpoint = mesh.pod("payments").ip.to_string();
    mesh.kubectl_apply(&service_entry(&endpoint)).unwrap();
    mesh.await_agents("the ServiceEntry", |state| {
        state["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["hostname"] == HOST))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // By the VIP: the agent picks the endpoint and its port (8080, not 80), in plain TCP.
    let (status, body) = mesh.curl("client", &format!("http://{VIP}/egress"));
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"payments\""), "{body}");

    // Counted by the client's agent under the ServiceEntry's host, as Istio labels it.
    let host_label = format!("destination_service=\"{HOST}\"");
    let labels = [
        "reporter=\"source\"",
        host_label.as_str(),
        "destination_service_name=\"payments-api\"",
        "destination_service_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
    ];
    let metrics = mesh.metrics("node1");
    let opened = sample(&metrics, "istio_tcp_connections_opened_total", &labels);
    assert!(opened.is_some_and(|n| n >= 1), "{metrics}");
    let received = sample(&metrics, "istio_tcp_received_bytes_total", &labels);
    assert!(received.is_some_and(|n| n > 0), "{metrics}");
    // The endpoint's node has no part in it: the traffic left from the client's agent.
    assert!(
        !mesh.metrics("node2").contains(&host_label),
        "the external host's traffic went through another agent"
    );

    // The endpoint's L4 policy, enforced by the client's agent: the next connection is refused
    // and counted with the DENY flag.
    mesh.kubectl_apply(DENY_CLIENT).unwrap();
    mesh.await_agents("the DENY policy", |state| {
        state["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "no-payments-for-client"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (status, body) = mesh.curl("client", &format!("http://{VIP}/egress"));
    assert_ne!(status, 200, "{body}");
    let denied = [host_label.as_str(), "response_flags=\"DENY\""];
    let metrics = mesh.metrics("node1");
    assert!(
        sample(&metrics, "istio_tcp_connections_closed_total", &denied).is_some_and(|n| n >= 1),
        "{metrics}"
    );
}

/// `resolution: DNS` with an endpoint by name: `localhost`, from the hosts file (no query leaves
/// the machine), which the agent connects to from inside the calling pod.
const BY_NAME: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local-api, namespace: shop}
spec:
  hosts: [local.api.example]
  addresses: [10.96.200.20]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - {address: localhost, ports: {http: 8080}}
"#;

#[test]
fn an_endpoint_given_by_name_is_resolved_by_the_agent() {
    let mesh = mesh();
    mesh.kubectl_apply(BY_NAME).unwrap();
    mesh.await_agents("the ServiceEntry", |state| {
        state["workloads"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["hostname"] == "localhost"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The name is resolved off the connection path: retry until the agent knows its address.
    let reached = mesh.eventually(std::time::Duration::from_secs(10), || {
        let (status, body) = mesh.curl("orders", "http://10.96.200.20/by-name");
        status == 200 && body.contains("\"pod\":\"orders\"")
    });
    assert!(
        reached,
        "the endpoint by name was never reached\n{}",
        mesh.logs()
    );
    let metrics = mesh.metrics("node1");
    assert!(
        sample(
            &metrics,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"local.api.example\""]
        )
        .is_some_and(|n| n >= 1),
        "{metrics}"
    );
}
