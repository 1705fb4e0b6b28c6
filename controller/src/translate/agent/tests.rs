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

fn policy(
    authorizations: &BTreeMap<String, security::Authorization>,
    key: &str,
) -> security::Authorization {
    authorizations
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("no policy {key}: {:?}", authorizations.keys()))
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
fn authorization_policies_keep_their_l4_meaning() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-from-legacy, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [legacy]}}]
    to: [{operation: {paths: ["/admin"], ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/pay"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: legacy}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  action: DENY
  rules: [{when: [{key: source.ip, values: [192.0.2.0/24]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-the-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: pay}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
"#,
    );
    let settings = MeshSettings::default();
    let authorizations = authorizations(&index, &settings);

    // DENY with L7 parts keeps its L4 part: the namespace and the port still deny.
    let deny = policy(&authorizations, "shop/deny-admin-from-legacy");
    assert_eq!(deny.action, security::Action::Deny as i32);
    assert_eq!(deny.scope, security::Scope::Namespace as i32);
    let clauses = &deny.rules[0].clauses;
    assert_eq!(clauses.len(), 2);
    assert_eq!(clauses[1].matches[0].destination_ports, vec![8080]);

    // ALLOW: the L7-only rule is dropped (it must never allow at L4); the L4 rule stays.
    let allow = policy(&authorizations, "shop/allow-get");
    assert_eq!(allow.scope, security::Scope::WorkloadSelector as i32);
    assert_eq!(allow.rules.len(), 1);
    assert_eq!(
        allow.rules[0].clauses[0].matches[0].principals[0].match_type,
        Some(security::string_match::MatchType::Exact(
            "cluster.local/ns/shop/sa/pay".into()
        ))
    );
    // The selected workload lists it.
    let addresses = addresses(&index, &settings);
    assert!(
        workload_of(&addresses, "cart-1")
            .authorization_policies
            .contains(&"shop/allow-get".to_string())
    );
    assert!(
        workload_of(&addresses, "pay-1")
            .authorization_policies
            .is_empty()
    );

    // `spec: {}` is an ALLOW with no rules: denies everything in its namespace.
    let deny_all = policy(&authorizations, "legacy/deny-all");
    assert_eq!(
        (deny_all.action, deny_all.rules.len()),
        (security::Action::Allow as i32, 0)
    );

    // Root namespace without selector: mesh-wide.
    assert_eq!(
        policy(&authorizations, "istio-system/mesh-wide").scope,
        security::Scope::Global as i32
    );
    // targetRefs policies are for the waypoint only.
    assert!(!authorizations.contains_key("shop/for-the-waypoint"));
}

#[test]
fn a_deny_on_http_attributes_fails_safe_at_the_agents_and_is_reported() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-or-port, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["9000"]}}, {operation: {methods: [DELETE]}}]
    from: [{source: {namespaces: [legacy]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jwt-on-a-port, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: "request.headers[x-debug]", values: ["1"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-l4-only, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-the-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: pay}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
"#,
    );
    let authorizations = authorizations(&index, &MeshSettings::default());
    let rules = |key: &str| policy(&authorizations, key).rules;
    let matches_everything =
        |rules: &[security::Rule]| rules.len() == 1 && rules[0].clauses.is_empty();
    // A path alone: at L4 the DENY covers every connection (a rule without conditions).
    assert!(matches_everything(&rules("shop/deny-admin")));
    // A `to` clause ORs a port with a method: the method entry alone matches everything, so
    // the clause does; the `from` clause still narrows the rule.
    let or_port = rules("shop/deny-admin-or-port");
    assert_eq!(or_port[0].clauses.len(), 1, "{or_port:?}");
    assert_eq!(or_port[0].clauses[0].matches[0].namespaces.len(), 1);
    // A request principal and a header condition dropped: the port alone remains.
    let jwt = rules("shop/deny-jwt-on-a-port");
    assert_eq!(jwt[0].clauses.len(), 1, "{jwt:?}");
    assert_eq!(jwt[0].clauses[0].matches[0].destination_ports, vec![8080]);
    // Without HTTP attributes nothing changes.
    assert_eq!(rules("shop/deny-l4-only")[0].clauses.len(), 1);
    // An ALLOW rule on a method allows nothing.
    assert!(rules("shop/allow-get").is_empty());

    // Each policy enforced without some of its attributes is reported once, naming them; the
    // waypoint's and the L4-only one are not.
    let problems: Vec<String> = authorization_problems(&index)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    let about = |name: &str| {
        problems
            .iter()
            .find(|p| p.contains(&format!("shop/{name}:")))
            .unwrap_or_else(|| panic!("{name} not reported: {problems:#?}"))
            .clone()
    };
    let deny = about("deny-admin");
    assert!(
        deny.contains("spec.rules[0].to[0].operation.paths"),
        "{deny}"
    );
    assert!(deny.contains("refuses every connection"), "{deny}");
    let jwt = about("deny-jwt-on-a-port");
    assert!(
        jwt.contains("spec.rules[0].from[0].source.requestPrincipals")
            && jwt.contains("spec.rules[0].when[0] (request.headers[x-debug])"),
        "{jwt}"
    );
    assert!(about("allow-get").contains("allow nothing"));
}

#[test]
fn peer_authentication_strict_becomes_a_deny_on_plaintext() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: cart-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9090": {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: permissive, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
"#,
    );
    let settings = MeshSettings::default();
    let authorizations = authorizations(&index, &settings);
    let prefix = weft_policy::l4::PEER_AUTHENTICATION_POLICY_PREFIX;
    let strict = policy(&authorizations, &format!("shop/{prefix}default"));
    assert_eq!(
        (strict.action, strict.scope),
        (
            security::Action::Deny as i32,
            security::Scope::Namespace as i32
        )
    );
    let selected = policy(&authorizations, &format!("shop/{prefix}cart-metrics"));
    assert_eq!(selected.scope, security::Scope::WorkloadSelector as i32);
    let exempt: Vec<u32> = selected.rules[0]
        .clauses
        .iter()
        .flat_map(|c| {
            c.matches
                .iter()
                .flat_map(|m| m.not_destination_ports.clone())
        })
        .collect();
    assert_eq!(exempt, vec![9090], "the PERMISSIVE port is exempt");
    assert!(!authorizations.contains_key(&format!("legacy/{prefix}permissive")));
    let addresses = addresses(&index, &settings);
    assert!(
        workload_of(&addresses, "cart-1")
            .authorization_policies
            .contains(&format!("shop/{prefix}cart-metrics"))
    );
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

mod locality;
mod service_entries;
mod workload_entries;
