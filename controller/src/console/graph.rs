//! The service graph of a namespace, built from Prometheus' answers to [`super::queries`]: a
//! pure function, tested against Prometheus' own answer format. Nodes are workloads and
//! services, as in Kiali's versioned-app graph with service nodes: a request from `productpage`
//! to `reviews` is an edge from the workload to the service and one from the service to the
//! workload (version) that served it, so a canary's split reads on the service's out-edges.
//! Traffic an authorization policy denied (a node agent's response flag `DENY`, or a 403 the
//! waypoint answered without a destination workload, as Envoy's RBAC filter reports it) is kept
//! on edges of its own.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::prometheus::Sample;

/// Istio's value for a connection over mutual TLS.
const MUTUAL_TLS: &str = "mutual_tls";
/// The response flag of a request or connection an authorization policy refused.
const DENIED: &str = "DENY";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Workload,
    Service,
    /// A caller the destination could not name (outside the mesh, or plaintext).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    pub namespace: String,
    pub name: String,
    /// The canonical service and revision (Istio's app and version) of a workload.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// One edge's traffic: HTTP from the waypoint, TCP from the destination's agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    /// Traffic an authorization policy refused; never merged with what was allowed.
    pub denied: bool,
    /// Requests per second.
    pub request_rate: f64,
    /// The share of requests answered 5xx (or not answered), 0 to 1.
    pub error_rate: f64,
    /// The 99th percentile of request duration, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Requests per second by response code.
    pub response_codes: BTreeMap<String, f64>,
    pub tcp_bytes_per_second: f64,
    pub tcp_connections_per_second: f64,
    /// The share of the traffic (requests, else connections) carried over mutual TLS, 0 to 1.
    pub mtls: f64,
    #[serde(skip)]
    errors: f64,
    #[serde(skip)]
    mtls_requests: f64,
    #[serde(skip)]
    mtls_connections: f64,
}

impl Edge {
    /// Whether the edge carries HTTP (else only TCP).
    pub fn is_http(&self) -> bool {
        self.request_rate > 0.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub namespace: String,
    pub window: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// What Prometheus answered to the graph's queries.
#[derive(Debug, Default)]
pub struct Answers {
    pub requests: Vec<Sample>,
    pub p99_by_source: Vec<Sample>,
    pub p99_by_workload: Vec<Sample>,
    pub tcp_bytes: Vec<Sample>,
    pub tcp_connections: Vec<Sample>,
}

/// A workload node is one version of a workload (Kiali's versioned app graph), so that each
/// version of a canary is a node of its own.
fn workload_id(namespace: &str, name: &str, version: &str) -> String {
    if known(version) {
        format!("workload:{namespace}/{name}/{version}")
    } else {
        format!("workload:{namespace}/{name}")
    }
}

fn known(value: &str) -> bool {
    !value.is_empty() && value != "unknown"
}

#[derive(Default)]
struct Builder {
    nodes: BTreeMap<String, Node>,
    edges: BTreeMap<(String, String, bool), Edge>,
    /// Workloads that proxy for others (waypoints): hidden, as Kiali hides them by default,
    /// since the waypoint's own reports already name the real caller and callee.
    hidden: BTreeSet<(String, String)>,
}

impl Builder {
    fn workload(&mut self, namespace: &str, name: &str, app: &str, version: &str) -> String {
        if !known(name) {
            let id = "unknown".to_owned();
            self.nodes.entry(id.clone()).or_insert_with(|| Node {
                id: id.clone(),
                kind: NodeKind::Unknown,
                namespace: String::new(),
                name: "unknown".into(),
                app: String::new(),
                version: String::new(),
            });
            return id;
        }
        let id = workload_id(namespace, name, version);
        let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: NodeKind::Workload,
            namespace: namespace.into(),
            name: name.into(),
            app: String::new(),
            version: String::new(),
        });
        if node.app.is_empty() && known(app) {
            node.app = app.into();
        }
        if node.version.is_empty() && known(version) {
            node.version = version.into();
        }
        id
    }

    fn service(&mut self, namespace: &str, name: &str) -> String {
        let id = format!("service:{namespace}/{name}");
        self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: NodeKind::Service,
            namespace: namespace.into(),
            name: name.into(),
            app: String::new(),
            version: String::new(),
        });
        id
    }

    fn edge(&mut self, source: &str, target: &str, denied: bool) -> &mut Edge {
        self.edges
            .entry((source.to_owned(), target.to_owned(), denied))
            .or_insert_with(|| Edge {
                source: source.to_owned(),
                target: target.to_owned(),
                denied,
                ..Edge::default()
            })
    }

    fn is_hidden(&self, namespace: &str, workload: &str) -> bool {
        self.hidden
            .contains(&(namespace.to_owned(), workload.to_owned()))
    }

    /// The edges one sample adds to: caller to service and, when allowed and served, service
    /// to the workload that served it.
    fn hops(&mut self, sample: &Sample) -> Option<(String, String, Option<String>, bool)> {
        let l = |name| sample.label(name);
        let (source_ns, source) = (l("source_workload_namespace"), l("source_workload"));
        let (service_ns, service) = (
            l("destination_service_namespace"),
            l("destination_service_name"),
        );
        let (target_ns, target) = (
            l("destination_workload_namespace"),
            l("destination_workload"),
        );
        if !known(service) || self.is_hidden(source_ns, source) || self.is_hidden(target_ns, target)
        {
            return None;
        }
        // A node agent's refusal carries `DENY`; the waypoint's, as Envoy's RBAC filter, is a
        // 403 it answered itself, before any destination workload was picked.
        let denied =
            l("response_flags") == DENIED || (l("response_code") == "403" && !known(target));
        let source = self.workload(
            source_ns,
            source,
            l("source_canonical_service"),
            l("source_canonical_revision"),
        );
        let service = self.service(service_ns, service);
        let target = (!denied && known(target)).then(|| {
            self.workload(
                target_ns,
                target,
                l("destination_canonical_service"),
                l("destination_canonical_revision"),
            )
        });
        Some((source, service, target, denied))
    }

    fn request(&mut self, sample: &Sample) {
        let Some((source, service, target, denied)) = self.hops(sample) else {
            return;
        };
        let code = sample.label("response_code").to_owned();
        let error = code.starts_with('5') || code == "0";
        let mtls = sample.label("connection_security_policy") == MUTUAL_TLS;
        let add = |edge: &mut Edge| {
            edge.request_rate += sample.value;
            *edge.response_codes.entry(code.clone()).or_default() += sample.value;
            if error {
                edge.errors += sample.value;
            }
            if mtls {
                edge.mtls_requests += sample.value;
            }
        };
        add(self.edge(&source, &service, denied));
        if let Some(target) = target {
            add(self.edge(&service, &target, false));
        }
    }

    fn tcp(&mut self, sample: &Sample, connections: bool) {
        // The caller's agent reported it already; the destination's report is for callers
        // without an agent.
        if sample.label("reporter") == "destination" && known(sample.label("source_workload")) {
            return;
        }
        let Some((source, service, target, denied)) = self.hops(sample) else {
            return;
        };
        let mtls = sample.label("connection_security_policy") == MUTUAL_TLS;
        let add = |edge: &mut Edge| {
            if connections {
                edge.tcp_connections_per_second += sample.value;
                if mtls {
                    edge.mtls_connections += sample.value;
                }
            } else {
                edge.tcp_bytes_per_second += sample.value;
            }
        };
        add(self.edge(&source, &service, denied));
        if let Some(target) = target {
            add(self.edge(&service, &target, false));
        }
    }

    fn p99(&mut self, sample: &Sample, by_source: bool) {
        if !sample.value.is_finite() {
            return;
        }
        let l = |name| sample.label(name);
        let service = format!(
            "service:{}/{}",
            l("destination_service_namespace"),
            l("destination_service_name")
        );
        let (source, target) = if by_source {
            let source = if known(l("source_workload")) {
                workload_id(
                    l("source_workload_namespace"),
                    l("source_workload"),
                    l("source_canonical_revision"),
                )
            } else {
                "unknown".to_owned()
            };
            (source, service)
        } else {
            let target = workload_id(
                l("destination_workload_namespace"),
                l("destination_workload"),
                l("destination_canonical_revision"),
            );
            (service, target)
        };
        if let Some(edge) = self.edges.get_mut(&(source, target, false)) {
            edge.p99_ms = Some(sample.value);
        }
    }
}

/// The graph of `namespace` from Prometheus' answers; `hidden` names the workloads (namespace,
/// name) drawn through rather than as nodes (waypoints).
pub fn build(
    namespace: &str,
    window: &str,
    answers: &Answers,
    hidden: BTreeSet<(String, String)>,
) -> Graph {
    let mut builder = Builder {
        hidden,
        ..Builder::default()
    };
    for sample in &answers.requests {
        builder.request(sample);
    }
    for sample in &answers.tcp_bytes {
        builder.tcp(sample, false);
    }
    for sample in &answers.tcp_connections {
        builder.tcp(sample, true);
    }
    for sample in &answers.p99_by_source {
        builder.p99(sample, true);
    }
    for sample in &answers.p99_by_workload {
        builder.p99(sample, false);
    }
    let edges = builder
        .edges
        .into_values()
        .map(|mut edge| {
            if edge.request_rate > 0.0 {
                edge.error_rate = edge.errors / edge.request_rate;
                edge.mtls = edge.mtls_requests / edge.request_rate;
            } else if edge.tcp_connections_per_second > 0.0 {
                edge.mtls = edge.mtls_connections / edge.tcp_connections_per_second;
            }
            edge
        })
        .collect();
    Graph {
        namespace: namespace.to_owned(),
        window: window.to_owned(),
        nodes: builder.nodes.into_values().collect(),
        edges,
    }
}

#[cfg(test)]
mod tests;
