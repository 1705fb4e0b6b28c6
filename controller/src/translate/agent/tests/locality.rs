//! Localities and routing preferences as the agents receive them. Each case names the rule of
//! istio/istio `pilot/pkg/serviceregistry/ambient/` it checks: `nodeLocality` and
//! `getPodLocality` (`nodes.go`, `workloads.go`), `constructService` and
//! `constructServiceEntries` (`services.go`) over `model.GetTrafficDistribution`.

use super::*;
use workload::load_balancing::{HealthPolicy, Mode, Scope};

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node1
  labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1, topology.istio.io/subzone: rack-3, kubernetes.io/hostname: node1}
---
apiVersion: v1
kind: Node
metadata:
  name: node2
  labels: {topology.kubernetes.io/zone: eu-2}
"#;

fn locality(region: &str, zone: &str, subzone: &str) -> Option<workload::Locality> {
    Some(workload::Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: subzone.into(),
    })
}

/// `getPodLocality` over `nodeLocality`: a pod's locality is its node's topology labels.
#[test]
fn a_pod_takes_the_locality_of_its_node() {
    let unscheduled = r#"
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: cart}}
spec: {serviceAccountName: cart, containers: [{name: app, image: cart}]}
status: {podIP: 10.251.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: shop, labels: {app: cart, istio-locality: us.us-1}}
spec: {nodeName: node9, serviceAccountName: cart, containers: [{name: app, image: cart}]}
status: {podIP: 10.251.9.2}
---
apiVersion: v1
kind: Node
metadata: {name: bare, labels: {kubernetes.io/hostname: bare}}
---
apiVersion: v1
kind: Pod
metadata: {name: on-bare, namespace: shop, labels: {app: cart}}
spec: {nodeName: bare, serviceAccountName: cart, containers: [{name: app, image: cart}]}
status: {podIP: 10.251.9.3}
"#;
    let index = index(&format!("{NODES}\n---\n{unscheduled}"));
    let addresses = addresses(&index, &MeshSettings::default());
    let cases = [
        (
            "every label of the node, subzone from Istio's label",
            "cart-1",
            locality("eu", "eu-1", "rack-3"),
        ),
        (
            "a node with a zone alone: the other parts empty",
            "pay-1",
            locality("", "eu-2", ""),
        ),
        ("a node without topology labels: none", "on-bare", None),
        ("not scheduled yet: none", "pending", None),
        // istiod's ambient index reads no `istio-locality` label on pods.
        (
            "an unknown node: none, the label is not read",
            "elsewhere",
            None,
        ),
    ];
    for (rule, pod, expected) in cases {
        assert_eq!(workload_of(&addresses, pod).locality, expected, "{rule}");
    }
}

fn service_lb(
    addresses: &BTreeMap<String, workload::Address>,
    key: &str,
) -> Option<workload::LoadBalancing> {
    match addresses.get(key).and_then(|a| a.r#type.as_ref()) {
        Some(workload::address::Type::Service(s)) => s.load_balancing.clone(),
        other => panic!("no service {key}: {other:?}"),
    }
}

fn lb(scopes: &[Scope], mode: Mode) -> Option<workload::LoadBalancing> {
    Some(workload::LoadBalancing {
        routing_preference: scopes.iter().map(|s| *s as i32).collect(),
        mode: mode as i32,
        ..Default::default()
    })
}

const SAME_ZONE: &[Scope] = &[Scope::Network, Scope::Region, Scope::Zone];
const SAME_NODE: &[Scope] = &[
    Scope::Network,
    Scope::Region,
    Scope::Zone,
    Scope::Subzone,
    Scope::Node,
];

/// `constructService`: `internalTrafficPolicy: Local` first, then `GetTrafficDistribution`
/// (spec, the Service's annotation, its namespace's), then `publishNotReadyAddresses`.
#[test]
fn a_service_carries_istiods_routing_preferences() {
    let service = |name: &str, namespace: &str, annotation: Option<&str>, spec: &str| {
        let annotations = annotation
            .map(|a| format!(", annotations: {{networking.istio.io/traffic-distribution: {a}}}"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}{annotations}}}\n\
             spec: {{selector: {{app: cart}}, ports: [{{port: 80}}]{spec}}}\n---\n"
        )
    };
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: close, annotations: {networking.istio.io/traffic-distribution: PreferClose}}\n---\n",
    );
    let cases: Vec<(&str, String, &str, Option<workload::LoadBalancing>)> = vec![
        (
            "nothing asked: none",
            service("plain", "shop", None, ""),
            "shop/plain.shop.svc.cluster.local",
            None,
        ),
        (
            "spec PreferClose: same zone, failing over",
            service("close", "shop", None, ", trafficDistribution: PreferClose"),
            "shop/close.shop.svc.cluster.local",
            lb(SAME_ZONE, Mode::Failover),
        ),
        (
            "spec PreferSameZone: as PreferClose",
            service(
                "zone",
                "shop",
                None,
                ", trafficDistribution: PreferSameZone",
            ),
            "shop/zone.shop.svc.cluster.local",
            lb(SAME_ZONE, Mode::Failover),
        ),
        (
            "spec PreferSameNode: node, failing over",
            service(
                "node",
                "shop",
                None,
                ", trafficDistribution: PreferSameNode",
            ),
            "shop/node.shop.svc.cluster.local",
            lb(SAME_NODE, Mode::Failover),
        ),
        (
            "the annotation, in any case",
            service("annotated", "shop", Some("preferclose"), ""),
            "shop/annotated.shop.svc.cluster.local",
            lb(SAME_ZONE, Mode::Failover),
        ),
        (
            "the spec wins over the annotation",
            service(
                "both",
                "shop",
                Some("PreferSameNode"),
                ", trafficDistribution: PreferClose",
            ),
            "shop/both.shop.svc.cluster.local",
            lb(SAME_ZONE, Mode::Failover),
        ),
        (
            "a spec value istiod does not know falls to the annotation",
            service(
                "future",
                "shop",
                Some("PreferSameNode"),
                ", trafficDistribution: PreferNearby",
            ),
            "shop/future.shop.svc.cluster.local",
            lb(SAME_NODE, Mode::Failover),
        ),
        (
            "an annotation value istiod does not know: none",
            service("unknown", "shop", Some("Nearby"), ""),
            "shop/unknown.shop.svc.cluster.local",
            None,
        ),
        (
            "inherited from the namespace's annotation",
            service("inherits", "close", None, ""),
            "close/inherits.close.svc.cluster.local",
            lb(SAME_ZONE, Mode::Failover),
        ),
        (
            "the Service's annotation over its namespace's",
            service("overrides", "close", Some("PreferSameNode"), ""),
            "close/overrides.close.svc.cluster.local",
            lb(SAME_NODE, Mode::Failover),
        ),
        (
            "internalTrafficPolicy Local: this node only, strictly, over any distribution",
            service(
                "local",
                "shop",
                None,
                ", internalTrafficPolicy: Local, trafficDistribution: PreferClose",
            ),
            "shop/local.shop.svc.cluster.local",
            lb(&[Scope::Node], Mode::Strict),
        ),
        (
            "internalTrafficPolicy Cluster: as unset",
            service("cluster", "shop", None, ", internalTrafficPolicy: Cluster"),
            "shop/cluster.shop.svc.cluster.local",
            None,
        ),
        (
            "publishNotReadyAddresses: any endpoint, no preference",
            service("unready", "shop", None, ", publishNotReadyAddresses: true"),
            "shop/unready.shop.svc.cluster.local",
            Some(workload::LoadBalancing {
                health_policy: HealthPolicy::AllowAll as i32,
                ..Default::default()
            }),
        ),
        (
            "publishNotReadyAddresses with a distribution: both",
            service(
                "unready-close",
                "shop",
                None,
                ", publishNotReadyAddresses: true, trafficDistribution: PreferClose",
            ),
            "shop/unready-close.shop.svc.cluster.local",
            lb(SAME_ZONE, Mode::Failover).map(|lb| workload::LoadBalancing {
                health_policy: HealthPolicy::AllowAll as i32,
                ..lb
            }),
        ),
    ];
    for (_, yaml_case, _, _) in &cases {
        yaml.push_str(yaml_case);
    }
    let index = index(&yaml);
    let addresses = addresses(&index, &MeshSettings::default());
    for (rule, _, key, expected) in cases {
        assert_eq!(service_lb(&addresses, key), expected, "{rule}");
    }
}

/// `constructServiceEntries`: no spec field, the annotation (its own, else its namespace's);
/// `resolution: NONE` passes through whatever is asked.
#[test]
fn a_service_entry_carries_the_annotated_routing_preference() {
    let entry = |name: &str, namespace: &str, annotation: Option<&str>, resolution: &str| {
        let endpoints = if resolution == "NONE" {
            ""
        } else {
            ", endpoints: [{address: 192.0.2.1}]"
        };
        let annotations = annotation
            .map(|a| format!(", annotations: {{networking.istio.io/traffic-distribution: {a}}}"))
            .unwrap_or_default();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {namespace}{annotations}}}\n\
             spec: {{hosts: [{name}.example.com], addresses: [240.240.0.{}], ports: [{{number: 80, name: http, protocol: HTTP}}], resolution: {resolution}{endpoints}}}\n---\n",
            name.len()
        )
    };
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: close, annotations: {networking.istio.io/traffic-distribution: PreferSameNode}}\n---\n",
    );
    let cases = [
        (
            "nothing asked: none",
            entry("a", "shop", None, "STATIC"),
            "shop/a.example.com",
            None,
        ),
        (
            "annotated PreferClose",
            entry("bb", "shop", Some("PreferClose"), "STATIC"),
            "shop/bb.example.com",
            lb(SAME_ZONE, Mode::Failover),
        ),
        (
            "inherited from the namespace",
            entry("ccc", "close", None, "STATIC"),
            "close/ccc.example.com",
            lb(SAME_NODE, Mode::Failover),
        ),
        (
            "NONE: passthrough, the annotation is not read",
            entry("dddd", "shop", Some("PreferClose"), "NONE"),
            "shop/dddd.example.com",
            Some(workload::LoadBalancing {
                mode: Mode::Passthrough as i32,
                ..Default::default()
            }),
        ),
    ];
    for (_, yaml_case, _, _) in &cases {
        yaml.push_str(yaml_case);
    }
    let index = index(&yaml);
    let addresses = addresses(&index, &MeshSettings::default());
    for (rule, _, key, expected) in cases {
        assert_eq!(service_lb(&addresses, key), expected, "{rule}");
    }
}
