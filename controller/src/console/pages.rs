//! What the service and workload pages show of the configuration as applied: the resources the
//! index holds (only valid ones enter it), found for one service or workload. Pure functions
//! over an index snapshot; the traffic beside them comes from Prometheus.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use weft_istio::labels::{DATAPLANE_MODE, DATAPLANE_MODE_AMBIENT, GATEWAY_NAME, USE_WAYPOINT};

use crate::index::ConfigIndex;
use crate::translate::resolve::{label, namespace_of, workload_name};

/// A resource as applied, by kind, name and spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub namespace: String,
    pub name: String,
    /// Whether the index knows the Service.
    pub exists: bool,
    /// The waypoint its traffic goes through (`istio.io/use-waypoint` on the Service, else on
    /// its namespace), if any.
    pub waypoint: Option<String>,
    /// VirtualServices, HTTPRoutes, GRPCRoutes and TCPRoutes for it.
    pub routes: Vec<Applied>,
    pub destination_rules: Vec<Applied>,
    /// AuthorizationPolicies that can apply to it: attached to it, selecting its pods, or
    /// namespace-wide (its namespace's and the root namespace's).
    pub policies: Vec<Applied>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodView {
    pub name: String,
    pub node: String,
    pub version: String,
    pub service_account: String,
    pub identity: String,
    /// Captured by its node's agent (`istio.io/dataplane-mode=ambient` on the pod or, unless the
    /// pod opts out, on its namespace).
    pub enrolled: bool,
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadConfig {
    pub namespace: String,
    pub name: String,
    pub pods: Vec<PodView>,
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn applied(kind: &'static str, resource: &Value) -> Applied {
    let meta = &resource["metadata"];
    Applied {
        kind,
        namespace: meta["namespace"].as_str().unwrap_or_default().to_owned(),
        name: meta["name"].as_str().unwrap_or_default().to_owned(),
        spec: resource["spec"].clone(),
    }
}

/// Whether `host` (as written in a VirtualService or DestinationRule of `from`) names the
/// service `name` in `namespace`: its short name in its own namespace, or a longer form.
fn names_service(host: &str, from: &str, name: &str, namespace: &str) -> bool {
    host == format!("{name}.{namespace}")
        || host == format!("{name}.{namespace}.svc")
        || host.starts_with(&format!("{name}.{namespace}.svc."))
        || (host == name && from == namespace)
}

fn string_list(value: &Value) -> impl Iterator<Item = &str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether a route's `parentRefs` attach it to the Service (the GAMMA pattern).
fn attached_to_service(resource: &Value, name: &str, namespace: &str) -> bool {
    let own = resource["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    resource["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|parent| {
            parent["kind"] == "Service"
                && parent["name"] == name
                && parent["namespace"].as_str().unwrap_or(own) == namespace
        })
}

fn labels_match(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selector.as_object().is_some_and(|m| {
        m.iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    })
}

pub fn service(index: &ConfigIndex, namespace: &str, name: &str, root: &str) -> ServiceConfig {
    let service = index.services.get(&format!("{namespace}/{name}")).map(json);
    let selector: BTreeMap<String, String> = service
        .as_ref()
        .and_then(|s| serde_json::from_value(s["spec"]["selector"].clone()).ok())
        .unwrap_or_default();
    let waypoint = service
        .as_ref()
        .and_then(|s| {
            s["metadata"]["labels"][USE_WAYPOINT]
                .as_str()
                .map(str::to_owned)
        })
        .or_else(|| index.namespace_labels(namespace).get(USE_WAYPOINT).cloned());

    let mut routes = Vec::new();
    for vs in index.virtual_services.values().map(json) {
        let from = vs["metadata"]["namespace"].as_str().unwrap_or_default();
        if string_list(&vs["spec"]["hosts"]).any(|h| names_service(h, from, name, namespace)) {
            routes.push(applied("VirtualService", &vs));
        }
    }
    let gateway_routes = [
        (
            "HTTPRoute",
            index.http_routes.values().map(json).collect::<Vec<_>>(),
        ),
        ("GRPCRoute", index.grpc_routes.values().map(json).collect()),
        ("TCPRoute", index.tcp_routes.values().map(json).collect()),
    ];
    for (kind, resources) in gateway_routes {
        for route in resources {
            if attached_to_service(&route, name, namespace) {
                routes.push(applied(kind, &route));
            }
        }
    }
    let destination_rules = index
        .destination_rules
        .values()
        .map(json)
        .filter(|dr| {
            let from = dr["metadata"]["namespace"].as_str().unwrap_or_default();
            dr["spec"]["host"]
                .as_str()
                .is_some_and(|h| names_service(h, from, name, namespace))
        })
        .map(|dr| applied("DestinationRule", &dr))
        .collect();
    let policies = index
        .authorization_policies
        .values()
        .map(json)
        .filter(|policy| {
            let from = policy["metadata"]["namespace"].as_str().unwrap_or_default();
            let spec = &policy["spec"];
            let targets: Vec<&Value> = spec["targetRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec.get("targetRef").filter(|t| !t.is_null()))
                .collect();
            if !targets.is_empty() {
                return from == namespace
                    && targets
                        .iter()
                        .any(|t| t["kind"] == "Service" && t["name"] == name);
            }
            let labels = &spec["selector"]["matchLabels"];
            if labels.as_object().is_none_or(serde_json::Map::is_empty) {
                return from == namespace || from == root;
            }
            // A policy selecting pods applies to the service when the service's pods carry
            // what it selects (the service's selector names labels every one of them has).
            from == namespace && labels_match(labels, &selector)
        })
        .map(|p| applied("AuthorizationPolicy", &p))
        .collect();
    ServiceConfig {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        exists: service.is_some(),
        waypoint,
        routes,
        destination_rules,
        policies,
    }
}

/// The pods of workload `name` in `namespace` (the workload name the proxies report: the pod's
/// `app` label, else its name).
pub fn workload(
    index: &ConfigIndex,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> WorkloadConfig {
    let namespace_enrolled = index
        .namespace_labels(namespace)
        .get(DATAPLANE_MODE)
        .map(String::as_str)
        == Some(DATAPLANE_MODE_AMBIENT);
    // The pods of the workload as the metrics name it (its Deployment, ...), as Kiali lists them.
    let pods = index
        .pods
        .values()
        .filter(|pod| workload_name(pod) == name)
        .map(json)
        .filter(|pod| {
            let meta = &pod["metadata"];
            meta["namespace"] == namespace && meta["labels"][GATEWAY_NAME].is_null()
        })
        .map(|pod| {
            let meta = &pod["metadata"];
            let labels = &meta["labels"];
            let account = pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            let enrolled = match labels[DATAPLANE_MODE].as_str() {
                Some(mode) => mode == DATAPLANE_MODE_AMBIENT,
                None => namespace_enrolled,
            };
            PodView {
                name: meta["name"].as_str().unwrap_or_default().to_owned(),
                node: pod["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                version: labels["version"].as_str().unwrap_or_default().to_owned(),
                identity: format!("spiffe://{trust_domain}/ns/{namespace}/sa/{account}"),
                service_account: account,
                enrolled,
                ip: pod["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }
        })
        .collect();
    WorkloadConfig {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pods,
    }
}

/// The waypoints' workloads (namespace, workload name): drawn through, not as nodes.
pub fn waypoints(index: &ConfigIndex) -> std::collections::BTreeSet<(String, String)> {
    index
        .pods
        .values()
        .filter(|pod| label(&pod.metadata, GATEWAY_NAME).is_some())
        .map(|pod| (namespace_of(&pod.metadata).to_owned(), workload_name(pod)))
        .collect()
}

/// The namespaces the index knows, for the page's picker.
pub fn namespaces(index: &ConfigIndex) -> Vec<String> {
    let mut names: std::collections::BTreeSet<String> = index.namespaces.keys().cloned().collect();
    names.extend(
        index
            .pods
            .keys()
            .filter_map(|k| k.split_once('/').map(|(ns, _)| ns.to_owned())),
    );
    names.into_iter().collect()
}

#[cfg(test)]
mod tests;
