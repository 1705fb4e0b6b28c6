//! What the controller deploys for each Gateway API Gateway it owns, as Istio's deployment
//! controller does (`pilot/pkg/config/kube/gateway/deploymentcontroller.go` and its
//! `kube-gateway.yaml` and `waypoint.yaml` templates): a ServiceAccount, a Deployment running
//! the proxy and a Service, named `<gateway>-istio` for class `istio` and `<gateway>` for class
//! `istio-waypoint`, labelled `gateway.networking.k8s.io/gateway-name` (the label the gateway
//! proxy's configuration is found by) and `istio.io/gateway-name`, owner-referenced to the
//! Gateway so that they go with it. The Service is a LoadBalancer for an ingress Gateway (the
//! `networking.istio.io/service-type` annotation may say otherwise, as in Istio) with a port per
//! listener port, and a ClusterIP with the HBONE port for a waypoint. A pure function of the
//! Gateway: `source::kube::provision` writes the objects.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::model::KubernetesGateway;
use crate::model::gateway_api::{INGRESS_GATEWAY_CLASS, WAYPOINT_GATEWAY_CLASS};
use crate::translate::gateway_api::ingress::GATEWAY_NAME_LABEL;
use crate::translate::resolve::{name_of, namespace_of};

/// Istio's older label for a gateway's name, kept on what it provisions.
pub const ISTIO_GATEWAY_NAME_LABEL: &str = "istio.io/gateway-name";
/// The class label the Gateway API puts on a gateway's objects.
pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
/// Marks what this controller provisioned (Istio's value).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
pub const MANAGED_VALUE: &str = "istio.io-gateway-controller";
/// What Istio's gateway and waypoint pods carry so that a Prometheus with its `kubernetes-pods`
/// relabelling (the Weft chart's `weft-prometheus` ConfigMap, Istio's addon) scrapes them.
pub const PROMETHEUS_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "15020"),
    ("prometheus.io/path", "/stats/prometheus"),
];
/// Istio's annotation choosing the Service type of an ingress Gateway.
pub const SERVICE_TYPE_ANNOTATION: &str = "networking.istio.io/service-type";

/// How provisioned proxies are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionSettings {
    /// The proxy's image (the `waypoint` binary, in either role).
    pub proxy_image: String,
    /// The controller's namespace: proxies reach it at `istiod.<namespace>.svc:15012`.
    pub controller_namespace: String,
    /// The audience of the token the proxies present to the CA.
    pub token_audience: String,
    pub trust_domain: String,
}

#[cfg(test)]
impl ProvisionSettings {
    /// Settings tests provision with.
    pub(crate) fn for_tests() -> Self {
        ProvisionSettings {
            proxy_image: "example.com/weft/waypoint:1".into(),
            controller_namespace: "istio-system".into(),
            token_audience: "istio-ca".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

/// The objects one Gateway gets, in the order they are written (ServiceAccount, Deployment,
/// Service); `None` for a Gateway of a class that is not ours or without a `uid` (not stored
/// by an API server, so nothing can be owner-referenced to it).
pub fn gateway_objects(
    gateway: &KubernetesGateway,
    settings: &ProvisionSettings,
) -> Option<Vec<Value>> {
    let class = gateway.spec.gateway_class_name.as_str();
    let waypoint = match class {
        INGRESS_GATEWAY_CLASS => false,
        WAYPOINT_GATEWAY_CLASS => true,
        _ => return None,
    };
    let uid = gateway.metadata.uid.as_deref()?;
    let name = name_of(&gateway.metadata);
    let namespace = namespace_of(&gateway.metadata);
    let object_name = if waypoint {
        name.to_owned()
    } else {
        format!("{name}-istio")
    };
    let labels: BTreeMap<&str, &str> = [
        (GATEWAY_NAME_LABEL, name),
        (ISTIO_GATEWAY_NAME_LABEL, name),
        (GATEWAY_CLASS_LABEL, class),
        (MANAGED_LABEL, MANAGED_VALUE),
    ]
    .into();
    let metadata = json!({
        "name": object_name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": name,
            "uid": uid,
        }],
    });
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
    });
    let deployment = deployment(gateway, settings, &metadata, &object_name, waypoint);
    let service = service(gateway, &metadata, waypoint);
    Some(vec![service_account, deployment, service])
}

fn deployment(
    gateway: &KubernetesGateway,
    settings: &ProvisionSettings,
    metadata: &Value,
    object_name: &str,
    waypoint: bool,
) -> Value {
    let name = name_of(&gateway.metadata);
    let mut pod_labels = metadata["labels"].clone();
    // The proxy carries HBONE itself: its pod is not captured by the node agent.
    pod_labels["istio.io/dataplane-mode"] = json!("none");
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        json!({"name": "PROXY_ROLE", "value": if waypoint { "waypoint" } else { "gateway" }}),
        json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
        json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
        json!({"name": "INSTANCE_IP", "valueFrom": field("status.podIP")}),
        json!({"name": "NODE_NAME", "valueFrom": field("spec.nodeName")}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "TRUST_DOMAIN", "value": settings.trust_domain}),
        json!({"name": "XDS_ADDRESS", "value": format!("https://istiod.{}.svc:15012", settings.controller_namespace)}),
        json!({"name": "CA_ADDRESS", "value": format!("https://istiod.{}.svc:15012", settings.controller_namespace)}),
        json!({"name": "ROOT_CERT_FILE", "value": "/var/run/secrets/istio/root-cert.pem"}),
        json!({"name": "BOOTSTRAP_TOKEN_FILE", "value": "/var/run/secrets/tokens/istio-token"}),
    ];
    let mut ports = vec![
        json!({"name": "http-metrics", "containerPort": 15020}),
        json!({"name": "status-port", "containerPort": 15021}),
    ];
    // A gateway's credentials come from the controller over its xDS stream (no directory).
    if waypoint {
        env.push(json!({"name": "WAYPOINT_NAME", "value": name}));
        ports.push(json!({"name": "mesh", "containerPort": 15008}));
    }
    let volumes = vec![
        json!({"name": "root-cert", "configMap": {"name": "istio-ca-root-cert"}}),
        json!({"name": "token", "projected": {"sources": [{"serviceAccountToken": {
            "path": "istio-token",
            "audience": settings.token_audience,
            "expirationSeconds": 43200,
        }}]}}),
    ];
    let mounts = vec![
        json!({"name": "root-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true}),
        json!({"name": "token", "mountPath": "/var/run/secrets/tokens", "readOnly": true}),
    ];
    let selector: BTreeMap<&str, &str> = [(GATEWAY_NAME_LABEL, name)].into();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": BTreeMap::from(PROMETHEUS_ANNOTATIONS),
                },
                "spec": {
                    "serviceAccountName": object_name,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "istio-proxy",
                        "image": settings.proxy_image,
                        "env": env,
                        "ports": ports,
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// A Service port name for a listener: its name when it is a valid port name (at most 15
/// lowercase letters, digits and dashes), else `<protocol>-<port>`, as Istio names them.
fn port_name(listener_name: &str, protocol: &str, port: i32) -> String {
    let valid = !listener_name.is_empty()
        && listener_name.len() <= 15
        && listener_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !listener_name.starts_with('-')
        && !listener_name.ends_with('-');
    if valid {
        listener_name.to_owned()
    } else {
        format!("{}-{port}", protocol.to_ascii_lowercase())
    }
}

fn service(gateway: &KubernetesGateway, metadata: &Value, waypoint: bool) -> Value {
    let name = name_of(&gateway.metadata);
    let mut ports = vec![
        json!({"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"}),
    ];
    let service_type = if waypoint {
        ports.push(json!({"name": "mesh", "port": 15008, "protocol": "TCP", "appProtocol": "all"}));
        "ClusterIP".to_owned()
    } else {
        let mut seen = BTreeSet::new();
        for listener in &gateway.spec.listeners {
            if !seen.insert(listener.port) {
                continue;
            }
            ports.push(json!({
                "name": port_name(&listener.name, &listener.protocol, listener.port),
                "port": listener.port,
                "protocol": "TCP",
            }));
        }
        gateway
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVICE_TYPE_ANNOTATION))
            .cloned()
            .unwrap_or_else(|| "LoadBalancer".to_owned())
    };
    let selector: BTreeMap<&str, &str> = [(GATEWAY_NAME_LABEL, name)].into();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": service_type,
            "selector": selector,
            "ports": ports,
        },
    })
}

#[cfg(test)]
mod tests;
