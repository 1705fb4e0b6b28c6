//! WorkloadEntries and workload metadata as the agents receive them. Each case names the rule of
//! istio/istio `pilot/pkg/serviceregistry/kube/controller/ambient/workloads.go` it checks
//! (`workloadEntryWorkloadBuilder`, `constructServicesFromWorkloadEntry`,
//! `getWorkloadEntryLocality`, `podWorkloadBuilder`).

use super::*;
use crate::model::ResourceKind;
use crate::translate::TranslateProblem;
use crate::translate::resolve;

const ENTRIES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: vms, labels: {istio.io/use-waypoint: vms-waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: vms-waypoint, namespace: vms, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: vm-waypoint, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec: {clusterIP: 10.96.0.12, selector: {app: plain}, ports: [{port: 7000}]}
---
apiVersion: v1
kind: Service
metadata: {name: everything, namespace: shop}
spec: {clusterIP: 10.96.0.13, selector: {}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cart-vm, namespace: shop, labels: {app: cart}}
spec: {address: 192.0.2.50, ports: {http: 9080, https: 9443}, serviceAccount: cart, locality: eu/eu-1/rack-3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cart-vm-no-port, namespace: shop, labels: {app: cart}}
spec: {address: 192.0.2.51}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: pay-vm, namespace: shop, labels: {app: pay}}
spec: {address: 192.0.2.52, ports: {https: 9443}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: plain-vm, namespace: shop}
spec: {address: 192.0.2.53, labels: {app: plain}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: relabelled, namespace: shop, labels: {app: other}}
spec: {address: 192.0.2.54, labels: {app: cart}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cart-vm-legacy, namespace: legacy, labels: {app: cart}}
spec: {address: 192.0.2.55, ports: {http: 9080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: own-waypoint, namespace: shop, labels: {istio.io/use-waypoint: vm-waypoint}}
spec: {address: 192.0.2.56}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: service-waypoint, namespace: shop, labels: {istio.io/use-waypoint: shop-waypoint}}
spec: {address: 192.0.2.57}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: spec-label-waypoint, namespace: shop}
spec: {address: 192.0.2.58, labels: {istio.io/use-waypoint: vm-waypoint}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: by-namespace, namespace: vms}
spec: {address: 192.0.2.60}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: opted-out, namespace: vms, labels: {istio.io/use-waypoint: none}}
spec: {address: 192.0.2.61}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: registered
  namespace: shop
  annotations: {istio.io/autoRegistrationGroup: cart-group}
  labels: {service.istio.io/workload-name: overridden}
spec: {address: 192.0.2.62}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: named, namespace: shop, labels: {service.istio.io/workload-name: billing, app: billing-app}}
spec: {address: 192.0.2.63}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: redirected, namespace: shop, annotations: {ambient.istio.io/redirection: enabled}}
spec: {address: 192.0.2.64}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: native, namespace: shop, labels: {networking.istio.io/tunnel: http}}
spec: {address: 192.0.2.65}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: located, namespace: shop}
spec:
  hosts: [located.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  endpoints: [{address: 192.0.2.70, locality: us-east/us-east-1}, {address: 192.0.2.71}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1-7d4f9c6b58-x2k4p
  generateName: reviews-v1-7d4f9c6b58-
  namespace: shop
  labels: {app: reviews, pod-template-hash: 7d4f9c6b58}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: reviews-v1-7d4f9c6b58, uid: u1, controller: true}]
spec: {nodeName: node1, containers: [{name: app, image: reviews}]}
status: {podIP: 10.251.1.30}
"#;

fn translated() -> (ConfigIndex, BTreeMap<String, workload::Address>) {
    let index = index(ENTRIES);
    let addresses = addresses(&index, &MeshSettings::default());
    (index, addresses)
}

fn entry(addresses: &BTreeMap<String, workload::Address>, key: &str) -> workload::Workload {
    let uid = format!("Kubernetes/networking.istio.io/WorkloadEntry/{key}");
    match addresses.get(&uid).and_then(|a| a.r#type.clone()) {
        Some(workload::address::Type::Workload(w)) => w,
        other => panic!("no workload {uid}: {other:?}"),
    }
}

fn ports(list: &workload::PortList) -> Vec<(u32, u32)> {
    list.ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect()
}

/// `constructServicesFromWorkloadEntry` for a Kubernetes Service: selection by the entry's
/// labels in its namespace (`FilterSelectsNonEmpty`), named target ports through the entry's
/// `ports`, numeric ones as they are.
#[test]
fn kubernetes_services_select_workload_entries() {
    let (_, addresses) = translated();
    let cart = "shop/cart.shop.svc.cluster.local";
    let pay = "shop/pay.shop.svc.cluster.local";
    let plain = "shop/plain.shop.svc.cluster.local";
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Option<Vec<(u32, u32)>>,
    );
    let cases: Vec<Case> = vec![
        (
            "a named targetPort is the entry's port of that name",
            "shop/cart-vm",
            cart,
            Some(vec![(80, 9080)]),
        ),
        (
            "an entry without that named port is listed, the service port left out",
            "shop/cart-vm-no-port",
            cart,
            Some(vec![]),
        ),
        (
            "a numeric targetPort is taken as it is; the entry's ports are not consulted",
            "shop/pay-vm",
            pay,
            Some(vec![(443, 8443)]),
        ),
        (
            "without a targetPort, the service port (the API server's default); spec.labels \
             select like the object's labels",
            "shop/plain-vm",
            plain,
            Some(vec![(7000, 7000)]),
        ),
        (
            "ConvertClientWorkloadEntry: the object's label wins over spec.labels",
            "shop/relabelled",
            cart,
            None,
        ),
        (
            "only Services of the entry's own namespace select it",
            "legacy/cart-vm-legacy",
            "legacy/cart.shop.svc.cluster.local",
            None,
        ),
        (
            "an empty selector selects nothing",
            "shop/cart-vm",
            "shop/everything.shop.svc.cluster.local",
            None,
        ),
    ];
    for (rule, key, service, expected) in cases {
        let workload = entry(&addresses, key);
        assert_eq!(
            workload.services.get(service).map(ports),
            expected,
            "{rule}: {key} in {service} ({:?})",
            workload.services.keys()
        );
    }
    let legacy = entry(&addresses, "legacy/cart-vm-legacy");
    assert!(legacy.services.is_empty(), "{:?}", legacy.services);
    // The entry is an endpoint like the pods: outside the mesh (no tunnel label), at its address,
    // with its identity.
    let vm = entry(&addresses, "shop/cart-vm");
    assert_eq!(vm.addresses, vec![vec![192, 0, 2, 50]]);
    assert_eq!(vm.tunnel_protocol, workload::TunnelProtocol::None as i32);
    assert_eq!(vm.service_account, "cart");
    // The pods of the Service keep backing it.
    assert!(
        workload_of(&addresses, "cart-1")
            .services
            .contains_key(cart)
    );
}

/// `workloadEntryWorkloadBuilder` → `computeWaypoint` → `fetchWaypointForWorkload`: the entry's
/// `istio.io/use-waypoint` (its labels, spec.labels merged), else its namespace's, for a waypoint
/// that takes workload traffic; `none` opts out. A Service's waypoint is the Service's, not the
/// entry's.
#[test]
fn a_workload_entry_uses_the_waypoint_its_labels_or_namespace_name() {
    let (index, addresses) = translated();
    let hostname_of =
        |w: &workload::Workload| match w.waypoint.as_ref().and_then(|g| g.destination.clone()) {
            Some(workload::gateway_address::Destination::Hostname(h)) => {
                Some(format!("{}/{}", h.namespace, h.hostname))
            }
            Some(other) => panic!("waypoint by address: {other:?}"),
            None => None,
        };
    let cases = [
        (
            "its own label, for a waypoint of workloads",
            "shop/own-waypoint",
            Some("shop/vm-waypoint.shop.svc.cluster.local"),
        ),
        (
            "a label in spec.labels counts as the object's",
            "shop/spec-label-waypoint",
            Some("shop/vm-waypoint.shop.svc.cluster.local"),
        ),
        (
            "its namespace's label",
            "vms/by-namespace",
            Some("vms/vms-waypoint.vms.svc.cluster.local"),
        ),
        ("`none` opts out of the namespace's", "vms/opted-out", None),
        (
            "a waypoint for services only is not the entry's",
            "shop/service-waypoint",
            None,
        ),
        (
            "the waypoint of a Service selecting it stays the Service's",
            "shop/pay-vm",
            None,
        ),
        ("no label anywhere: none", "shop/cart-vm", None),
    ];
    for (rule, key, expected) in cases {
        assert_eq!(
            hostname_of(&entry(&addresses, key)).as_deref(),
            expected,
            "{rule}: {key}"
        );
    }
    // The entry naming a waypoint that takes no workload traffic is reported, on the entry.
    let problems = resolve::assignment_problems(&index);
    assert!(
        problems
            .iter()
            .any(|p| p.kind == ResourceKind::WorkloadEntry
                && p.name == "service-waypoint"
                && matches!(p.problem, TranslateProblem::WaypointNotFor { .. })),
        "{problems:?}"
    );
}

/// `getWorkloadEntryLocality` over `SplitLocalityLabel`, for WorkloadEntries and ServiceEntry
/// endpoints alike.
#[test]
fn localities_are_split_as_istiod_splits_them() {
    let split = |region: &str, zone: &str, subzone: &str| {
        Some(workload::Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        })
    };
    let cases = [
        ("unset: no locality", None, None),
        ("empty: no locality", Some(""), None),
        ("a region alone", Some("eu"), split("eu", "", "")),
        ("region and zone", Some("eu/eu-1"), split("eu", "eu-1", "")),
        (
            "all three",
            Some("eu/eu-1/rack-3"),
            split("eu", "eu-1", "rack-3"),
        ),
        (
            "parts after the third are dropped",
            Some("eu/eu-1/rack-3/x"),
            split("eu", "eu-1", "rack-3"),
        ),
        (
            "an empty region keeps the zone",
            Some("/eu-1"),
            split("", "eu-1", ""),
        ),
        ("only separators: no locality", Some("//"), None),
    ];
    for (rule, value, expected) in cases {
        assert_eq!(
            super::super::locality::split_locality(value),
            expected,
            "{rule}"
        );
    }
    let (_, addresses) = translated();
    assert_eq!(
        entry(&addresses, "shop/cart-vm").locality,
        split("eu", "eu-1", "rack-3")
    );
    assert_eq!(entry(&addresses, "shop/cart-vm-no-port").locality, None);
    let endpoint = |address: &str| match addresses
        .get(&endpoint_uid("Kubernetes", "shop", "located", address))
        .and_then(|a| a.r#type.clone())
    {
        Some(workload::address::Type::Workload(w)) => w,
        other => panic!("no endpoint {address}: {other:?}"),
    };
    assert_eq!(
        endpoint("192.0.2.70").locality,
        split("us-east", "us-east-1", "")
    );
    assert_eq!(endpoint("192.0.2.71").locality, None);
}

/// Workload names, types and tunnels: `WorkloadNameFromWorkloadEntry` and `CanonicalService`
/// for entries, `podWorkloadBuilder`'s `WorkloadType_POD // backwards compatibility` for pods,
/// `setTunnelProtocol` for both.
#[test]
fn workload_metadata_follows_istiod() {
    let (_, addresses) = translated();
    let pod = workload::WorkloadType::Pod as i32;
    // (rule, workload, workload name, canonical name, type, tunnel, native tunnel)
    let cases = [
        (
            "the autoRegistrationGroup annotation names an entry's workload, over the label; the \
             canonical name falls back to it",
            entry(&addresses, "shop/registered"),
            "cart-group",
            "cart-group",
            pod,
            workload::TunnelProtocol::None,
            false,
        ),
        (
            "else the service.istio.io/workload-name label; `app` is the canonical name",
            entry(&addresses, "shop/named"),
            "billing",
            "billing-app",
            pod,
            workload::TunnelProtocol::None,
            false,
        ),
        (
            "else the entry's name; istiod sends POD for an entry (`HACK to impersonate pod`)",
            entry(&addresses, "shop/cart-vm"),
            "cart-vm",
            "cart",
            pod,
            workload::TunnelProtocol::None,
            false,
        ),
        (
            "ambient.istio.io/redirection: enabled makes it HBONE, not a native tunnel",
            entry(&addresses, "shop/redirected"),
            "redirected",
            "redirected",
            pod,
            workload::TunnelProtocol::Hbone,
            false,
        ),
        (
            "the tunnel label makes it HBONE and a native tunnel",
            entry(&addresses, "shop/native"),
            "native",
            "native",
            pod,
            workload::TunnelProtocol::Hbone,
            true,
        ),
        (
            "a Deployment's pod: the Deployment's name (GetWorkloadMetaFromPod), still POD, as \
             istiod sends it since it stopped sending DEPLOYMENT, JOB and CRONJOB",
            workload_of(&addresses, "reviews-v1-7d4f9c6b58-x2k4p"),
            "reviews-v1",
            "reviews",
            pod,
            workload::TunnelProtocol::Hbone,
            false,
        ),
    ];
    for (rule, workload, name, canonical, kind, tunnel, native) in cases {
        assert_eq!(
            (
                workload.workload_name.as_str(),
                workload.canonical_name.as_str(),
                workload.workload_type,
                workload.tunnel_protocol,
                workload.native_tunnel,
            ),
            (name, canonical, kind, tunnel as i32, native),
            "{rule}"
        );
    }
}
