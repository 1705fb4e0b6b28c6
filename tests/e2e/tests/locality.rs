//! Locality-aware load balancing end to end: the controller gives each pod its node's locality
//! and each Service istiod's routing preferences, and the client's agent keeps traffic close;
//! waypoints rank endpoints and weigh localities (`distribute`) relative to their own pod.
//! Also a Kubernetes Service (a selector) backed by a WorkloadEntry. Needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use weft_e2e::{Mesh, MeshOptions, PodSpec, curl::answering_pods};
use weft_test_support::prometheus::Exposition;

/// Three nodes: the client's (`node1`) and `node2` in zone `eu-1`, `node3` in `eu-2`.
const ZONED_NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1}}
---
apiVersion: v1
kind: Node
metadata: {name: node2, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1}}
---
apiVersion: v1
kind: Node
metadata: {name: node3, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-2}}
---
"#;

/// `cart`, `PreferClose`, and `cart-local`, node-local.
const CART_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
  trafficDistribution: PreferClose
---
apiVersion: v1
kind: Service
metadata: {name: cart-local, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
  internalTrafficPolicy: Local
"#;

fn pods(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn prefer_close_keeps_traffic_in_the_clients_zone_and_fails_over_when_it_empties() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-1", "node2", "shop", "cart", "v1"),
            PodSpec::app("cart-2", "node3", "shop", "cart", "v2"),
        ],
        MeshOptions {
            config: format!("{ZONED_NODES}{CART_SERVICES}"),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let close = ["-H", "Connection: close"];

    // Each request on its own connection (the agent picks an endpoint per connection): only the
    // endpoint in the client's zone answers, though it is on another node.
    let answers = mesh
        .curl_bodies("client", "http://10.96.0.10/", 12, &close)
        .unwrap();
    assert_eq!(
        answering_pods(&answers),
        pods(&["cart-1"]),
        "{answers:?}\n{}",
        mesh.logs()
    );

    // internalTrafficPolicy Local: no endpoint on the client's node, so no connection, as
    // ztunnel refuses it (it never leaves the node).
    let refused = mesh
        .curl_bodies("client", "http://10.96.0.11/", 2, &close)
        .unwrap();
    assert!(
        refused.iter().all(|(status, _)| *status != 200),
        "a node-local service answered from another node: {refused:?}"
    );

    // The zone's endpoint goes away: the next connections fail over to the other zone.
    mesh.delete_pod("cart-1", |mesh| {
        if !mesh.eventually(Duration::from_secs(20), || {
            mesh.curl_bodies("client", "http://10.96.0.10/", 1, &close)
                .is_ok_and(|a| {
                    a.iter()
                        .all(|(s, b)| *s == 200 && b.contains("\"pod\":\"cart-2\""))
                })
        }) {
            anyhow::bail!("no failover to cart-2\n{}", mesh.logs());
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let answers = mesh
        .curl_bodies("client", "http://10.96.0.10/", 8, &close)
        .unwrap();
    assert_eq!(answering_pods(&answers), pods(&["cart-2"]), "{answers:?}");

    // It comes back: traffic returns to the client's zone.
    mesh.create_pod("cart-1").unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            mesh.curl_bodies("client", "http://10.96.0.10/", 1, &close)
                .is_ok_and(|a| {
                    a.iter()
                        .all(|(s, b)| *s == 200 && b.contains("\"pod\":\"cart-1\""))
                })
        }),
        "traffic did not return to the client's zone\n{}",
        mesh.logs()
    );
    let answers = mesh
        .curl_bodies("client", "http://10.96.0.10/", 8, &close)
        .unwrap();
    assert_eq!(answering_pods(&answers), pods(&["cart-1"]), "{answers:?}");
}

/// A WorkloadEntry selected by a Kubernetes Service's selector is one of its endpoints (istiod's
/// `ENABLE_K8S_SERVICE_SELECT_WORKLOAD_ENTRIES`): a VM outside the mesh, reached in plain TCP
/// next to the Service's pod.
#[test]
fn a_kubernetes_service_selects_a_workload_entry() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-1", "node2", "shop", "cart", "v1"),
            PodSpec::app("cart-vm", "node2", "shop", "cart-vm", "v1").outside_cluster(),
        ],
        MeshOptions::default(),
    )
    .expect("start the mesh");
    let vm = mesh.pod("cart-vm").ip;
    mesh.kubectl_apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: cart-vm, namespace: shop}}
spec: {{address: "{vm}", labels: {{app: cart}}, serviceAccount: cart}}
---
apiVersion: v1
kind: Service
metadata: {{name: cart, namespace: shop}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: cart}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    ))
    .unwrap();
    mesh.await_agents("the WorkloadEntry backing the Service", |state| {
        state["workloads"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w["name"] == "cart-vm" && w["services"].to_string().contains("cart.shop.svc")
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let close = ["-H", "Connection: close"];
    let answers = mesh
        .curl_bodies("client", "http://10.96.0.10/", 12, &close)
        .unwrap();
    assert_eq!(
        answering_pods(&answers),
        pods(&["cart-1", "cart-vm"]),
        "{answers:?}\n{}",
        mesh.logs()
    );
}

/// A `PreferClose` Service `cart` behind a waypoint with a replica in each zone, whose own
/// Service prefers the close replica too.
const BEHIND_A_WAYPOINT: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  clusterIP: 10.96.0.2
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
  trafficDistribution: PreferClose
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
  trafficDistribution: PreferClose
"#;

/// Requests the waypoint replica `name` served.
fn served(mesh: &Mesh, name: &str) -> f64 {
    Exposition::parse(&mesh.waypoint_metrics(name)).sum("istio_requests_total", &[])
}

/// Istio's locality load balancing at the waypoint: the client's agent sends to the waypoint
/// replica in its zone (the waypoint's Service prefers it, as ztunnel balances a waypoint),
/// that replica, knowing its own zone and its endpoints', sends every request to the endpoint
/// in its zone (istiod's PreferClose failoverPriority), and fails over to the other zone when
/// that endpoint goes away, coming back when it returns.
#[test]
fn prefer_close_behind_a_waypoint_keeps_traffic_in_the_clients_zone_and_fails_over() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::waypoint_replica("waypoint-near", "waypoint", "node1", "shop"),
            PodSpec::waypoint_replica("waypoint-far", "waypoint", "node3", "shop"),
            PodSpec::app("cart-1", "node2", "shop", "cart", "v1"),
            PodSpec::app("cart-2", "node3", "shop", "cart", "v2"),
        ],
        MeshOptions {
            config: format!("{ZONED_NODES}{BEHIND_A_WAYPOINT}"),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let close = ["-H", "Connection: close"];
    let url = "http://10.96.0.10/";
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            mesh.curl_bodies("client", url, 1, &close)
                .is_ok_and(|a| a.iter().all(|(s, _)| *s == 200))
        }),
        "the service is not reachable through its waypoint\n{}",
        mesh.logs()
    );

    // Each request on its own connection: every one through the near waypoint, and from there
    // to the endpoint in the zone, though both endpoints are on other nodes.
    let before = (
        served(&mesh, "waypoint-near"),
        served(&mesh, "waypoint-far"),
    );
    let answers = mesh.curl_bodies("client", url, 12, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        pods(&["cart-1"]),
        "{answers:?}\n{}",
        mesh.logs()
    );
    assert_eq!(
        (
            served(&mesh, "waypoint-near") - before.0,
            served(&mesh, "waypoint-far") - before.1
        ),
        (12.0, 0.0),
        "requests by waypoint replica"
    );

    // The zone's endpoint goes away: the waypoint fails over to the other zone.
    mesh.delete_pod("cart-1", |mesh| {
        if !mesh.eventually(Duration::from_secs(20), || {
            mesh.curl_bodies("client", url, 1, &close).is_ok_and(|a| {
                a.iter()
                    .all(|(s, b)| *s == 200 && b.contains("\"pod\":\"cart-2\""))
            })
        }) {
            anyhow::bail!("no failover to cart-2\n{}", mesh.logs());
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let answers = mesh.curl_bodies("client", url, 8, &close).unwrap();
    assert_eq!(answering_pods(&answers), pods(&["cart-2"]), "{answers:?}");

    // It comes back: traffic returns to the zone.
    mesh.create_pod("cart-1").unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            mesh.curl_bodies("client", url, 1, &close).is_ok_and(|a| {
                a.iter()
                    .all(|(s, b)| *s == 200 && b.contains("\"pod\":\"cart-1\""))
            })
        }),
        "traffic did not return to the client's zone\n{}",
        mesh.logs()
    );
    let answers = mesh.curl_bodies("client", url, 8, &close).unwrap();
    assert_eq!(answering_pods(&answers), pods(&["cart-1"]), "{answers:?}");
}

/// A fourth node, in another region: no `distribute` rule below names it.
const FAR_NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node4, labels: {topology.kubernetes.io/region: us, topology.kubernetes.io/zone: us-1}}
---
"#;

/// `cart` behind a waypoint, with no traffic distribution of its own.
const CART_BEHIND_A_WAYPOINT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// How many of `answers` each pod gave; every answer must be a 200.
fn answers_by_pod(answers: &[(u16, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (status, body) in answers {
        assert_eq!(*status, 200, "{body}");
        let reply: serde_json::Value = serde_json::from_str(body).expect("a JSON reply");
        *counts
            .entry(reply["pod"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    counts
}

/// `localityLbSetting.distribute` at the waypoint (Envoy's locality-weighted load balancing
/// with istiod's weights): the mesh's default sends everything from the waypoint's zone to
/// `eu-2`; a DestinationRule's own 80/20 split between `eu-1` and `eu-2` then wins over it,
/// and the `us` endpoint, in no locality the rule names, gets nothing; `enabled: false` on
/// the DestinationRule turns locality load balancing off, the mesh's default with it.
#[test]
fn distribute_splits_traffic_between_localities_by_weight_at_the_waypoint() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::waypoint("waypoint", "node1", "shop"),
            PodSpec::app("cart-1", "node2", "shop", "cart", "v1"),
            PodSpec::app("cart-2", "node3", "shop", "cart", "v2"),
            PodSpec::app("cart-3", "node4", "shop", "cart", "v3"),
        ],
        MeshOptions {
            config: format!("{ZONED_NODES}{FAR_NODE}{CART_BEHIND_A_WAYPOINT}"),
            mesh_config:
                "localityLbSetting:\n  distribute:\n  - from: eu/eu-1/*\n    to: {eu/eu-2/*: 100}\n"
                    .to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let url = "http://10.96.0.10/";
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            mesh.curl_bodies("client", url, 1, &[])
                .is_ok_and(|a| a.iter().all(|(s, _)| *s == 200))
        }),
        "the service is not reachable through its waypoint\n{}",
        mesh.logs()
    );

    // The mesh's default: everything from eu-1 to eu-2.
    let answers = mesh.curl_bodies("client", url, 40, &[]).unwrap();
    assert_eq!(
        answers_by_pod(&answers),
        [("cart-2".to_owned(), 40)].into(),
        "the mesh's localityLbSetting\n{}",
        mesh.logs()
    );

    // The DestinationRule's 80/20 wins over it.
    mesh.write_waypoint_config(
        "waypoint",
        "cart-distribute.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: eu/eu-1/*
          to: {eu/eu-1/*: 80, eu/eu-2/*: 20}
"#,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    // 400 requests: 320 expected in eu-1, with a standard deviation of 8; 280 to 360 is five
    // of them either way.
    let requests = 400;
    let answers = mesh.curl_bodies("client", url, requests, &[]).unwrap();
    let counts = answers_by_pod(&answers);
    let near = counts.get("cart-1").copied().unwrap_or(0);
    let far = counts.get("cart-2").copied().unwrap_or(0);
    assert!(
        (280..=360).contains(&near) && near + far == requests as usize,
        "an 80/20 split over {requests} requests: {counts:?}\n{}",
        mesh.logs()
    );
    assert_eq!(counts.get("cart-3"), None, "us is not named: {counts:?}");

    // `enabled: false`: no locality load balancing at all, every endpoint takes its turn.
    mesh.write_waypoint_config(
        "waypoint",
        "cart-distribute.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {enabled: false}
"#,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let answers = mesh.curl_bodies("client", url, 30, &[]).unwrap();
    assert_eq!(
        answers_by_pod(&answers)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        pods(&["cart-1", "cart-2", "cart-3"]),
        "{answers:?}"
    );
}
