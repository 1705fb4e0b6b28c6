//! The generated cluster of the scale section: namespaces, pods, services, AuthorizationPolicies
//! and waypoints as the API server holds them, and the edits made to it while proxies watch.
//!
//! Shape: service `svc-<j>` lives in namespace `ns-<j mod namespaces>` and selects pods labelled
//! `app: svc-<j>`; pod `pod-<k>` belongs to service `k mod services` and runs on node
//! `node-<k mod agents>`; policy `ap-<m>` selects service `m mod services`'s pods and allows one
//! other service's account on port 8080. The first `waypoints` namespaces each have a waypoint
//! (a Gateway of class `istio-waypoint` and its pod) that every service of the namespace uses,
//! and namespace `ns-0` has the VirtualService the edits change.

use controller::model::ResourceKind;
use controller::source::kube::api_resource;
use serde_json::{Value, json};

/// How big the generated cluster is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub pods: usize,
    pub services: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub waypoints: usize,
    /// Node agents, one per node.
    pub agents: usize,
}

impl Size {
    /// The three sizes of a full run; a quick run takes the first only.
    pub const CURVE: [Size; 3] = [
        Size {
            pods: 1_000,
            services: 100,
            namespaces: 20,
            policies: 200,
            waypoints: 5,
            agents: 10,
        },
        Size {
            pods: 3_000,
            services: 300,
            namespaces: 60,
            policies: 600,
            waypoints: 15,
            agents: 30,
        },
        Size {
            pods: 10_000,
            services: 1_000,
            namespaces: 200,
            policies: 2_000,
            waypoints: 50,
            agents: 100,
        },
    ];

    pub fn describe(&self) -> String {
        format!(
            "{} pods, {} services, {} namespaces, {} policies, {} waypoints, {} agents",
            self.pods, self.services, self.namespaces, self.policies, self.waypoints, self.agents
        )
    }
}

/// The namespace of the controller, its CA and the node agents' service account.
pub const SYSTEM_NAMESPACE: &str = "istio-system";
/// The node agents' service account (the controller's default).
pub const AGENT_ACCOUNT: &str = "weft-node-agent";
/// Every waypoint's Gateway name and service account, one per namespace that has one.
pub const WAYPOINT: &str = "waypoint";
/// The namespace holding the edited VirtualService; it has a waypoint.
pub const EDITED_NAMESPACE: &str = "ns-0";
/// The service the edited VirtualService routes.
pub const EDITED_SERVICE: &str = "svc-0";

fn api_version(kind: ResourceKind) -> String {
    api_resource(kind).api_version
}

pub fn namespace_name(index: usize) -> String {
    format!("ns-{index}")
}

pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// The namespace of service `index`.
fn service_namespace(size: &Size, index: usize) -> String {
    namespace_name(index % size.namespaces)
}

/// A pod address no other object of any size takes: 10.64.0.0/10 by index (the services are
/// in 10.96.0.0/16, the waypoints in 10.32.0.0/16).
fn pod_ip(index: usize) -> String {
    format!(
        "10.{}.{}.{}",
        64 + (index >> 16),
        (index >> 8) & 0xff,
        index & 0xff
    )
}

fn pod(name: &str, namespace: &str, labels: Value, account: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": account,
                 "containers": [{"name": "app", "image": "sample-app"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// Pod `index` of the generated cluster (also used for pods added later, past the last index).
pub fn app_pod(size: &Size, index: usize, name: &str) -> Value {
    let service = index % size.services;
    pod(
        name,
        &service_namespace(size, service),
        json!({"app": format!("svc-{service}"), "version": "v1"}),
        &format!("svc-{service}"),
        &node_name(index % size.agents),
        &pod_ip(index),
    )
}

/// The AuthorizationPolicy `ap-<index>`, allowing `principal_suffix`'s variant of one service's
/// account (edits change the suffix).
pub fn policy(size: &Size, index: usize, principal_suffix: &str) -> Value {
    let service = index % size.services;
    let caller = (index * 7 + 1) % size.services;
    json!({
        "apiVersion": api_version(ResourceKind::AuthorizationPolicy),
        "kind": "AuthorizationPolicy",
        "metadata": {"name": format!("ap-{index}"), "namespace": service_namespace(size, service)},
        "spec": {
            "selector": {"matchLabels": {"app": format!("svc-{service}")}},
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": [format!(
                    "cluster.local/ns/{}/sa/svc-{caller}{principal_suffix}",
                    service_namespace(size, caller)
                )]}}],
                "to": [{"operation": {"ports": ["8080"]}}]
            }]
        }
    })
}

/// The edited VirtualService, its one route named `route`.
pub fn virtual_service(route: &str) -> Value {
    json!({
        "apiVersion": api_version(ResourceKind::VirtualService),
        "kind": "VirtualService",
        "metadata": {"name": "edited", "namespace": EDITED_NAMESPACE},
        "spec": {
            "hosts": [EDITED_SERVICE],
            "http": [{"name": route, "route": [{"destination": {"host": EDITED_SERVICE}}]}]
        }
    })
}

/// The waypoint pod's address in namespace `index`.
/// Service `index`'s cluster IP, in 10.96.0.0/16.
pub fn service_vip(index: usize) -> String {
    format!("10.96.{}.{}", index >> 8, index & 0xff)
}

pub fn waypoint_ip(index: usize) -> String {
    format!("10.32.{}.{}", index >> 8, index & 0xff)
}

/// Every object of the cluster, in an order the API server takes (namespaces first).
pub fn objects(size: &Size) -> Vec<Value> {
    let mut objects = Vec::with_capacity(
        size.namespaces + 2 * size.waypoints + size.services + size.pods + size.policies + 1,
    );
    for n in 0..size.namespaces {
        let mut labels = json!({"istio.io/dataplane-mode": "ambient"});
        if n < size.waypoints {
            labels["istio.io/use-waypoint"] = json!(WAYPOINT);
        }
        objects.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace_name(n), "labels": labels}
        }));
    }
    for w in 0..size.waypoints {
        let namespace = namespace_name(w);
        objects.push(json!({
            "apiVersion": api_version(ResourceKind::KubernetesGateway),
            "kind": "Gateway",
            "metadata": {"name": WAYPOINT, "namespace": namespace},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }));
        objects.push(pod(
            &format!("{WAYPOINT}-0"),
            &namespace,
            json!({weft_e2e::GATEWAY_NAME_LABEL: WAYPOINT}),
            WAYPOINT,
            &node_name(w % size.agents),
            &waypoint_ip(w),
        ));
    }
    for s in 0..size.services {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{s}"), "namespace": service_namespace(size, s)},
            "spec": {"clusterIP": service_vip(s),
                     "selector": {"app": format!("svc-{s}")},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
    }
    for p in 0..size.pods {
        objects.push(app_pod(size, p, &format!("pod-{p}")));
    }
    for m in 0..size.policies {
        objects.push(policy(size, m, ""));
    }
    objects.push(virtual_service("initial"));
    objects
}
