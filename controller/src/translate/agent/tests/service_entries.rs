//! ServiceEntries and WorkloadEntries as the agents receive them.

use super::*;

fn service_of(addresses: &BTreeMap<String, workload::Address>, key: &str) -> workload::Service {
    match addresses.get(key).and_then(|a| a.r#type.clone()) {
        Some(workload::address::Type::Service(s)) => s,
        other => panic!("no service {key}: {other:?}"),
    }
}

#[test]
fn service_entries_become_services_and_workloads_as_istiod_sends_them() {
    let index = index(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments-api, namespace: shop, labels: {app: payments-api}}
spec:
  hosts: [api.payments.example, pay.example]
  addresses: [240.0.0.10, 240.0.1.0/24]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}, {number: 443, name: tls, protocol: TLS}]
  endpoints:
  - {address: 192.0.2.5, ports: {http: 9090}, weight: 3, network: edge, serviceAccount: payments}
  - {address: 192.0.2.6}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress-only-cart, namespace: shop}
spec:
  selector: {matchLabels: {app: payments-api}}
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/cart]}}]}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: resolved, namespace: shop}
spec:
  hosts: [db.example]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: original-destination, namespace: shop}
spec:
  hosts: [legacy.example]
  addresses: [240.0.2.1]
  resolution: NONE
  ports: [{number: 7000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart-internal, namespace: shop, labels: {istio.io/use-waypoint: shop-waypoint}}
spec:
  hosts: [cart.internal]
  addresses: [240.0.3.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 81, name: http, targetPort: 8080}]
  workloadSelector: {labels: {app: cart}}
"#,
    );
    let settings = MeshSettings::default();
    let addresses = addresses(&index, &settings);

    // One Service per host, named by the ServiceEntry; VIPs as written (a CIDR's address, as
    // istiod's toNetworkAddressFromCidr); a port's target is its targetPort, else its number.
    for host in ["api.payments.example", "pay.example"] {
        let service = service_of(&addresses, &format!("shop/{host}"));
        assert_eq!(service.name, "payments-api");
        let vips: Vec<_> = service
            .addresses
            .iter()
            .map(|a| a.address.clone())
            .collect();
        assert_eq!(vips, vec![vec![240, 0, 0, 10], vec![240, 0, 1, 0]]);
        let ports: Vec<_> = service
            .ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect();
        assert_eq!(ports, vec![(80, 8080), (443, 443)]);
        assert!(service.waypoint.is_none() && service.load_balancing.is_none());
    }

    // STATIC endpoints: one workload each, outside the mesh, backing every host; the endpoint's
    // port of the same name overrides the target port; weight is capacity; the selector policy
    // matching the ServiceEntry's labels is attached.
    let first = match addresses
        .get("Kubernetes/networking.istio.io/ServiceEntry/shop/payments-api/192.0.2.5")
        .and_then(|a| a.r#type.clone())
    {
        Some(workload::address::Type::Workload(w)) => w,
        other => panic!("no endpoint workload: {other:?} in {:?}", addresses.keys()),
    };
    assert_eq!(first.addresses, vec![vec![192, 0, 2, 5]]);
    assert_eq!(first.tunnel_protocol, workload::TunnelProtocol::None as i32);
    assert_eq!(
        (first.network.as_str(), first.service_account.as_str()),
        ("edge", "payments")
    );
    assert_eq!(first.capacity, Some(3));
    assert_eq!(first.authorization_policies, vec!["shop/egress-only-cart"]);
    let ports = &first.services["shop/api.payments.example"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 9090));
    assert_eq!((ports[1].service_port, ports[1].target_port), (443, 443));
    assert!(first.services.contains_key("shop/pay.example"));
    let Some(workload::address::Type::Workload(second)) =
        addresses["Kubernetes/networking.istio.io/ServiceEntry/shop/payments-api/192.0.2.6"]
            .r#type
            .clone()
    else {
        panic!("the second endpoint is not a workload");
    };
    assert_eq!(second.capacity, None);
    let ports = &second.services["shop/api.payments.example"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));

    // DNS without endpoints: the host itself is the endpoint, by hostname.
    let resolved = workload_of(&addresses, "resolved");
    assert!(resolved.addresses.is_empty());
    assert_eq!(resolved.hostname, "db.example");
    assert!(resolved.services.contains_key("shop/db.example"));

    // NONE: no endpoints, the connection keeps its original destination.
    let none = service_of(&addresses, "shop/legacy.example");
    assert_eq!(
        none.load_balancing.map(|lb| lb.mode),
        Some(workload::load_balancing::Mode::Passthrough as i32)
    );
    assert!(
        !addresses
            .keys()
            .any(|k| k.contains("ServiceEntry/shop/original-destination"))
    );

    // workloadSelector: the selected pods back the host (over HBONE, being in the mesh), and
    // the ServiceEntry's waypoint label is honoured as on a Service.
    let cart = workload_of(&addresses, "cart-1");
    let ports = &cart.services["shop/cart.internal"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (81, 8080));
    assert_eq!(cart.tunnel_protocol, workload::TunnelProtocol::Hbone as i32);
    assert!(
        service_of(&addresses, "shop/cart.internal")
            .waypoint
            .is_some()
    );
    assert!(
        !workload_of(&addresses, "pay-1")
            .services
            .contains_key("shop/cart.internal")
    );
}

#[test]
fn a_workload_selector_picks_pods_and_workload_entries_of_its_own_namespace() {
    let index = index(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart-internal, namespace: shop}
spec:
  hosts: [cart.internal]
  addresses: [240.0.3.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 81, name: http, targetPort: 8080}, {number: 9000, name: grpc}]
  workloadSelector: {labels: {app: cart}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: everything, namespace: shop}
spec:
  hosts: [all.internal]
  addresses: [240.0.3.2]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cart-vm, namespace: shop, labels: {app: cart}}
spec: {address: 192.0.2.40, ports: {http: 9080}, serviceAccount: cart, network: vms}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cart-vm-hbone, namespace: shop, labels: {networking.istio.io/tunnel: http}}
spec: {address: 192.0.2.41, labels: {app: cart, version: v9}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cart-elsewhere, namespace: legacy, labels: {app: cart}}
spec: {address: 192.0.2.42}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-legacy, namespace: legacy, labels: {app: cart}}
spec: {nodeName: node2, containers: [{name: app, image: cart}]}
status: {podIP: 10.251.2.12}
"#,
    );
    let addresses = addresses(&index, &MeshSettings::default());
    let host = "shop/cart.internal";

    // The pod of the entry's namespace: the host's ports to its targetPort, else its number.
    let pod = workload_of(&addresses, "cart-1");
    let ports: Vec<_> = pod.services[host]
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(ports, vec![(81, 8080), (9000, 9000)]);
    // Selecting across namespaces is not possible: the same labels in `legacy` back nothing.
    assert!(
        !workload_of(&addresses, "cart-legacy")
            .services
            .contains_key(host)
    );

    // A WorkloadEntry is a workload of its own (istiod's uid), backing the host; its port of the
    // same name as the entry's port wins over `targetPort`.
    let Some(workload::address::Type::Workload(vm)) =
        addresses["Kubernetes/networking.istio.io/WorkloadEntry/shop/cart-vm"]
            .r#type
            .clone()
    else {
        panic!("no WorkloadEntry workload in {:?}", addresses.keys());
    };
    assert_eq!(vm.addresses, vec![vec![192, 0, 2, 40]]);
    assert_eq!(vm.tunnel_protocol, workload::TunnelProtocol::None as i32);
    assert_eq!(
        (vm.service_account.as_str(), vm.network.as_str()),
        ("cart", "vms")
    );
    let ports: Vec<_> = vm.services[host]
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(ports, vec![(81, 9080), (9000, 9000)]);
    // `spec.labels` count for selection; the tunnel label makes it an HBONE endpoint.
    let hbone = workload_of(&addresses, "cart-vm-hbone");
    assert!(hbone.services.contains_key(host));
    assert_eq!(
        hbone.tunnel_protocol,
        workload::TunnelProtocol::Hbone as i32
    );
    assert_eq!(hbone.canonical_revision, "v9");
    let elsewhere = workload_of(&addresses, "cart-elsewhere");
    assert!(elsewhere.services.is_empty(), "{elsewhere:?}");

    // An empty selector selects nothing (istiod's FilterSelectsNonEmpty), pod or entry.
    assert!(
        addresses.values().all(|a| match &a.r#type {
            Some(workload::address::Type::Workload(w)) =>
                !w.services.contains_key("shop/all.internal"),
            _ => true,
        }),
        "an empty workloadSelector selected a workload"
    );
    // With a selector, the host balances over its endpoints (not a passthrough).
    assert!(service_of(&addresses, host).load_balancing.is_none());
}

/// istiod's `PILOT_ENABLE_IP_AUTOALLOCATE` (on by default): off, a host that declares no
/// address gets none, not even one its entry carries in `status.addresses`
/// (`shouldV2AutoAllocateIPFromPieces` in pilot/pkg/networking/serviceentry); declared
/// addresses are unaffected.
#[test]
fn auto_allocation_switched_off_gives_no_addresses() {
    let index = index(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http}]
status: {addresses: [{host: api.example.com, value: 240.240.3.4}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: declared, namespace: shop}
spec:
  hosts: [declared.example.com]
  addresses: [192.0.2.80]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http}]
"#,
    );
    let vips = |settings: &MeshSettings, host: &str| -> Vec<Vec<u8>> {
        service_of(&addresses(&index, settings), &format!("shop/{host}"))
            .addresses
            .into_iter()
            .map(|a| a.address)
            .collect()
    };
    let on = MeshSettings::default();
    assert_eq!(
        vips(&on, "api.example.com")[0],
        vec![240, 240, 3, 4],
        "on by default, the address in status kept"
    );
    let off = MeshSettings {
        auto_allocate: None,
        ..MeshSettings::default()
    };
    assert!(vips(&off, "api.example.com").is_empty());
    assert_eq!(
        vips(&off, "declared.example.com"),
        vec![vec![192, 0, 2, 80]]
    );
}

/// The names of the workloads backing the service `key`: the endpoints an agent finds for it
/// (a workload backs the services its `services` names).
fn endpoints_of(addresses: &BTreeMap<String, workload::Address>, key: &str) -> Vec<String> {
    addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(workload::address::Type::Workload(w)) if w.services.contains_key(key) => {
                Some(w.name.clone())
            }
            _ => None,
        })
        .collect()
}

/// Replaces (or adds) the objects of `yaml` in `index`, as a watch event does.
fn apply(index: &mut ConfigIndex, yaml: &str) {
    let report = loader::load_str(Path::new("change.yaml"), yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for resource in report.resources {
        index.insert(resource.resource, Vec::new());
    }
}

/// The ServiceEntry `shop/api` for `svc.example.internal`, selecting `app: <app>`.
fn api_entry(app: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: shop}}
spec:
  hosts: [svc.example.internal]
  addresses: [240.0.4.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, targetPort: 8080}}]
  workloadSelector: {{labels: {{app: {app}}}}}
"#
    )
}

/// A WorkloadEntry backs a ServiceEntry's host while the entry's `workloadSelector` selects
/// its labels, and only then: istiod's `workloadEntryWorkloadBuilder`
/// (pilot/pkg/serviceregistry/ambient/workloads.go) fetches the services of the entry's own
/// namespace that select its labels at every change (`FilterIndex` by namespace,
/// `FilterSelectsNonEmpty`), so a relabelled entry leaves the host, a selector that changes
/// drops it, and an entry of another namespace is never picked, whatever its labels.
#[test]
fn a_workload_entry_backs_a_selecting_service_entry_only_while_selected() {
    let workload_entries = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-vm, namespace: shop, labels: {app: api}}
spec: {address: 192.0.2.60}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-vm-labels-in-spec, namespace: shop}
spec: {address: 192.0.2.61, labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-vm-elsewhere, namespace: legacy, labels: {app: api}}
spec: {address: 192.0.2.62}
"#;
    let mut index = index(&format!("{}---{workload_entries}", api_entry("api")));
    let settings = MeshSettings::default();
    let key = "shop/svc.example.internal";

    // Selected by either set of labels: both entries are endpoints of the host, on the port's
    // targetPort; the other namespace's entry is not.
    let before = addresses(&index, &settings);
    assert_eq!(
        endpoints_of(&before, key),
        vec!["api-vm", "api-vm-labels-in-spec"]
    );
    let vm = workload_of(&before, "api-vm");
    let ports = &vm.services[key].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    assert!(workload_of(&before, "api-vm-elsewhere").services.is_empty());

    // Relabelled, `api-vm` is still a workload, without the host; the service stays with the
    // entry still selected.
    apply(
        &mut index,
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-vm, namespace: shop, labels: {app: retired}}
spec: {address: 192.0.2.60}
"#,
    );
    let relabelled = addresses(&index, &settings);
    assert_eq!(
        endpoints_of(&relabelled, key),
        vec!["api-vm-labels-in-spec"]
    );
    assert!(workload_of(&relabelled, "api-vm").services.is_empty());
    assert!(relabelled.contains_key(key));

    // The selector changes: the entry that matched the old one leaves too.
    apply(&mut index, &api_entry("retired"));
    assert_eq!(
        endpoints_of(&addresses(&index, &settings), key),
        vec!["api-vm"]
    );
}
