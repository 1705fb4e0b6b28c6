//! Translation for node agents: YAML in, expected resources out, one rule per case.

use std::path::Path;

use weft_proto::istio::{security, workload};

use super::*;
use crate::{index::ConfigIndex, loader};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart, version: v2}}
spec:
  nodeName: node1
  serviceAccountName: cart
  containers: [{name: app, image: cart, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.251.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: shop, labels: {app: batch, istio.io/dataplane-mode: none}}
spec: {nodeName: node1, containers: [{name: app, image: batch}]}
status: {podIP: 10.251.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy, labels: {app: old}}
spec: {nodeName: node2, containers: [{name: app, image: old}]}
status: {podIP: 10.251.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: pay-1, namespace: shop, labels: {app: pay, istio.io/use-waypoint: shop-waypoint}}
spec: {nodeName: node2, serviceAccountName: pay, containers: [{name: app, image: pay}]}
status: {podIP: 10.251.2.11}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: shop-waypoint-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: shop-waypoint}}
spec: {nodeName: node2, serviceAccountName: shop-waypoint, containers: [{name: proxy, image: waypoint}]}
status: {podIP: 10.251.2.20}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: pay, namespace: shop, labels: {istio.io/use-waypoint: shop-waypoint}}
spec:
  clusterIP: 10.96.0.11
  selector: {app: pay}
  ports: [{port: 443, targetPort: 8443}]
"#;

fn index(extra: &str) -> ConfigIndex {
    let text = format!("{MESH}\n---\n{extra}");
    let report = loader::load_str(Path::new("mesh.yaml"), &text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    index
}

fn workload_of(addresses: &BTreeMap<String, workload::Address>, name: &str) -> workload::Workload {
    addresses
        .values()
        .find_map(|a| match &a.r#type {
            Some(workload::address::Type::Workload(w)) if w.name == name => Some(w.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no workload {name}"))
}

#[test]
fn workloads_and_services() {
    let index = index("");
    let settings = MeshSettings::default();
    let addresses = addresses(&index, &settings);

    let cart = workload_of(&addresses, "cart-1");
    assert_eq!(
        cart.tunnel_protocol,
        workload::TunnelProtocol::Hbone as i32,
        "enrolled by namespace"
    );
    assert_eq!(cart.addresses, vec![vec![10, 251, 1, 10]]);
    assert_eq!(
        (cart.service_account.as_str(), cart.node.as_str()),
        ("cart", "node1")
    );
    assert_eq!(
        (
            cart.canonical_name.as_str(),
            cart.canonical_revision.as_str()
        ),
        ("cart", "v2")
    );
    assert_eq!(cart.trust_domain, "cluster.local");
    // The named target port resolves through the container port.
    let ports = &cart.services["shop/cart.shop.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));

    assert_eq!(
        workload_of(&addresses, "opted-out").tunnel_protocol,
        workload::TunnelProtocol::None as i32
    );
    assert_eq!(
        workload_of(&addresses, "old").tunnel_protocol,
        workload::TunnelProtocol::None as i32
    );

    // Waypoints: by pod label, and by service label; the waypoint itself has none.
    let waypoint_ip = vec![10, 251, 2, 20];
    let pay = workload_of(&addresses, "pay-1");
    let Some(workload::gateway_address::Destination::Address(a)) =
        pay.waypoint.as_ref().and_then(|w| w.destination.clone())
    else {
        panic!("pay has no waypoint: {:?}", pay.waypoint);
    };
    assert_eq!(a.address, waypoint_ip);
    assert!(
        workload_of(&addresses, "shop-waypoint-0")
            .waypoint
            .is_none()
    );
    let Some(workload::address::Type::Service(pay_service)) =
        &addresses["shop/pay.shop.svc.cluster.local"].r#type
    else {
        panic!("no pay service");
    };
    assert_eq!(pay_service.addresses[0].address, vec![10, 96, 0, 11]);
    assert_eq!(
        (
            pay_service.ports[0].service_port,
            pay_service.ports[0].target_port
        ),
        (443, 8443)
    );
    assert!(pay_service.waypoint.is_some());
}

#[test]
fn a_pod_of_a_headless_service_carries_its_hostname_as_istiod_sends_it() {
    let index = index(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {nodeName: node1, hostname: db-0, subdomain: db, containers: [{name: db, image: db}]}
status: {podIP: 10.251.1.30}
"#,
    );
    let addresses = addresses(&index, &MeshSettings::default());
    let db = workload_of(&addresses, "db-0");
    assert_eq!(db.hostname, "db-0");
    assert!(db.services.contains_key("shop/db.shop.svc.cluster.local"));
    let Some(workload::address::Type::Service(service)) =
        &addresses["shop/db.shop.svc.cluster.local"].r#type
    else {
        panic!("no db service");
    };
    assert!(service.addresses.is_empty(), "headless: no VIP");
    // A pod without `spec.hostname` carries none.
    assert_eq!(workload_of(&addresses, "cart-1").hostname, "");
}

#[test]
fn readiness_comes_from_the_pod_ready_condition() {
    let index = index(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop, labels: {app: cart}}
spec: {nodeName: node1, containers: [{name: app, image: cart}]}
status:
  podIP: 10.251.1.30
  conditions: [{type: PodScheduled, status: "True"}, {type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: running, namespace: shop, labels: {app: cart}}
spec: {nodeName: node1, containers: [{name: app, image: cart}]}
status:
  podIP: 10.251.1.31
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: leaving, namespace: shop, labels: {app: cart}, deletionTimestamp: "2025-01-01T00:00:00Z"}
spec: {nodeName: node1, containers: [{name: app, image: cart}]}
status:
  podIP: 10.251.1.32
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: cart}}
spec: {containers: [{name: app, image: cart}]}
status:
  conditions: [{type: PodScheduled, status: "True"}]
"#,
    );
    let addresses = addresses(&index, &MeshSettings::default());
    let status = |name: &str| workload_of(&addresses, name).status;
    let healthy = workload::WorkloadStatus::Healthy as i32;
    let unhealthy = workload::WorkloadStatus::Unhealthy as i32;
    assert_eq!(status("starting"), unhealthy, "Ready=False");
    assert_eq!(status("running"), healthy);
    assert_eq!(status("leaving"), unhealthy, "terminating");
    assert_eq!(
        status("cart-1"),
        healthy,
        "no conditions at all: local mode"
    );
    // Still a service endpoint (the agent skips it while unhealthy), as istiod does.
    assert!(
        workload_of(&addresses, "starting")
            .services
            .contains_key("shop/cart.shop.svc.cluster.local")
    );
    let pending = addresses.values().any(
        |a| matches!(&a.r#type, Some(workload::address::Type::Workload(w)) if w.name == "pending"),
    );
    assert!(!pending, "a pod without an address is no workload");
}

#[test]
fn selectorless_services_take_their_endpoints_from_endpoint_slices() {
    let index = index(
        r#"
apiVersion: v1
kind: Service
metadata: {name: legacy-db, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: sql, port: 5432}, {name: metrics, port: 9100}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-db-abc, namespace: shop, labels: {kubernetes.io/service-name: legacy-db}}
addressType: IPv4
ports: [{name: sql, port: 15432}, {name: metrics, port: 9100}]
endpoints:
- addresses: [192.0.2.10]
  conditions: {ready: true}
  nodeName: node2
- addresses: [192.0.2.11]
  conditions: {ready: false}
- addresses: [192.0.2.12]
- addresses: [10.251.1.10]
  targetRef: {kind: Pod, name: cart-1, namespace: shop}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cart-xyz, namespace: shop, labels: {kubernetes.io/service-name: cart}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [192.0.2.99]
"#,
    );
    let settings = MeshSettings::default();
    let addresses = addresses(&index, &settings);
    let host = "shop/legacy-db.shop.svc.cluster.local";
    let endpoint = |ip: &str| {
        let uid = format!("Kubernetes/discovery.k8s.io/EndpointSlice/shop/legacy-db-abc/{ip}");
        match addresses.get(&uid).and_then(|a| a.r#type.clone()) {
            Some(workload::address::Type::Workload(w)) => w,
            other => panic!("no endpoint workload {uid}: {other:?}"),
        }
    };
    let vm = endpoint("192.0.2.10");
    assert_eq!(vm.addresses, vec![vec![192, 0, 2, 10]]);
    assert_eq!(vm.node, "node2");
    assert_eq!(vm.tunnel_protocol, workload::TunnelProtocol::None as i32);
    assert_eq!(vm.status, workload::WorkloadStatus::Healthy as i32);
    let ports: Vec<_> = vm.services[host]
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(ports, [(5432, 15432), (9100, 9100)], "mapped by port name");
    assert_eq!(
        endpoint("192.0.2.11").status,
        workload::WorkloadStatus::Unhealthy as i32,
        "ready: false"
    );
    assert_eq!(
        endpoint("192.0.2.12").status,
        workload::WorkloadStatus::Healthy as i32,
        "ready unset reads as ready"
    );
    // A slice endpoint naming a known pod adds the service to that pod's workload instead.
    let cart = workload_of(&addresses, "cart-1");
    assert!(
        cart.services.contains_key(host),
        "{:?}",
        cart.services.keys()
    );
    assert!(
        cart.services
            .contains_key("shop/cart.shop.svc.cluster.local")
    );
    assert!(
        !addresses.keys().any(|k| k.ends_with("/10.251.1.10")),
        "no second workload for the pod"
    );
    // Slices of a Service with a selector add nothing: the pods are its endpoints.
    assert!(!addresses.keys().any(|k| k.contains("cart-xyz")));
}

mod authorization;
mod locality;
mod service_entries;
mod workload_entries;
