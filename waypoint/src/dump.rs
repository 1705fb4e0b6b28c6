//! What `/config_dump` on the admin port (127.0.0.1:15000) shows: the configuration in force
//! (services and their routes, clusters with their endpoints and each endpoint's outlier state,
//! the workloads served directly, the policies), the certificate (identity, serial, validity;
//! never the key), the xDS connection and the last version applied and rejected, and the
//! binary's settings. Built from plain data by [`config_dump`], so tests read it without a
//! listener.

use std::time::Duration;

use serde::Serialize;
use weft_identity::CertificateSummary;
use weft_policy::l7::HttpRule;
use weft_policy::route::HttpMatch;
use weft_xds::ConnectionState;

use crate::model::gateway::{EdgeLimits, EdgeProtocol, EdgeServer, Gateway, ServerTlsMode};
use crate::model::{
    AbortKind, Cluster, HashKey, LoadBalancer, Protocol, RedirectPort, Route, RouteAction,
    SlowStart, StatefulSession, TcpRoute, Tunnel, WaypointConfig,
};
use crate::store::XdsHistory;
use crate::upstream::{BuiltTable, EndpointStatus, ProxyProtocolVersion, Upstream};

/// The whole dump.
#[derive(Debug, Serialize)]
pub struct ConfigDump {
    pub waypoint: String,
    pub settings: serde_json::Value,
    /// `None` until the first certificate arrived.
    pub certificate: Option<CertificateSummary>,
    pub xds: XdsDump,
    pub services: Vec<ServiceDump>,
    pub clusters: Vec<ClusterDump>,
    pub workloads: Vec<WorkloadDump>,
    pub policies: Vec<PolicyDump>,
    /// In the gateway role: the ports at the edge, their servers and each server's limits.
    pub gateway: Option<GatewayDump>,
}

#[derive(Debug, Serialize)]
pub struct XdsDump {
    /// `None` when the waypoint runs without a controller.
    pub connected: Option<bool>,
    pub synced: Option<bool>,
    pub last_error: Option<String>,
    /// Streams opened so far.
    pub connections: u64,
    #[serde(flatten)]
    pub history: XdsHistory,
}

#[derive(Debug, Serialize)]
pub struct PortDump {
    pub port: u16,
    pub name: String,
    pub protocol: &'static str,
    pub target_port: u16,
}

#[derive(Debug, Serialize)]
pub struct ServiceDump {
    pub hostname: String,
    pub vips: Vec<String>,
    pub ports: Vec<PortDump>,
    pub http_routes: Vec<RouteDump>,
    pub tcp_routes: Vec<TcpRouteDump>,
}

#[derive(Debug, Serialize)]
pub struct DestinationDump {
    pub cluster: String,
    pub weight: u32,
    /// The cluster is not defined: what is routed there is answered 503 `NC`.
    pub missing: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionDump {
    Forward(Vec<DestinationDump>),
    Redirect {
        uri: Option<String>,
        prefix_rewrite: Option<String>,
        authority: Option<String>,
        scheme: Option<String>,
        port: String,
        status: u16,
    },
    DirectResponse {
        status: u16,
        body_bytes: usize,
    },
}

#[derive(Debug, Serialize)]
pub struct RouteDump {
    pub name: Option<String>,
    pub virtual_service: String,
    pub matches: Vec<HttpMatch>,
    pub action: ActionDump,
    pub timeout_ms: Option<u64>,
    pub retries: RetryDump,
    pub fault: Option<String>,
    pub mirrors: Vec<(String, f64)>,
    pub cors: bool,
    /// The stateful session that keeps a client on one endpoint (a Gateway API rule's
    /// `sessionPersistence`): `cookie <name>` with its `Set-Cookie` attributes, or
    /// `header <name>`.
    pub session: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RetryDump {
    pub attempts: u32,
    pub per_try_timeout_ms: Option<u64>,
    pub retry_on: String,
    pub retry_ignore_previous_hosts: Option<bool>,
    pub backoff_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct TcpRouteDump {
    pub virtual_service: String,
    pub matches: Vec<String>,
    pub destinations: Vec<DestinationDump>,
}

#[derive(Debug, Serialize)]
pub struct EndpointDump {
    pub address: String,
    pub identity: Option<String>,
    pub workload_uid: String,
    pub workload_name: String,
    pub tunnel: &'static str,
    pub healthy: bool,
    pub weight: u32,
    /// Load, consecutive failures and ejection, once the endpoint has seen traffic.
    pub outlier: EndpointStatus,
    /// With slow start: the share of its weight the endpoint has now, in percent (100 once
    /// its window is over).
    pub slow_start_weight_percent: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ClusterDump {
    pub name: String,
    pub destination_rule: String,
    pub load_balancer: String,
    /// The consistent-hash tables the balancer built for the configuration in force, one per
    /// locality priority (index 0 the closest), as Envoy builds them; empty without a
    /// consistent hash.
    pub hash_tables: Vec<HashTableDump>,
    pub limits: String,
    pub outlier_detection: Option<String>,
    /// The PROXY protocol header written first on each new upstream connection
    /// (DestinationRule `proxyProtocol`): `V1` or `V2`.
    pub proxy_protocol: Option<&'static str>,
    pub endpoints: Vec<EndpointDump>,
}

/// A consistent-hash table as built for one locality priority: `kind` is `ring_hash`, `maglev`
/// or `none` (no healthy endpoint in the priority to build one over); `size` the ring's points
/// or the Maglev table's entries (0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HashTableDump {
    pub kind: &'static str,
    pub size: usize,
}

impl HashTableDump {
    fn of(table: Option<BuiltTable>) -> Self {
        let (kind, size) = match table {
            None => ("none", 0),
            Some(BuiltTable::Ring { points }) => ("ring_hash", points),
            Some(BuiltTable::Maglev { entries }) => ("maglev", entries),
        };
        HashTableDump { kind, size }
    }
}

#[derive(Debug, Serialize)]
pub struct WorkloadDump {
    pub address: String,
    pub identity: Option<String>,
    pub namespace: String,
    pub services: Vec<String>,
    pub ports: Vec<(u16, &'static str)>,
}

#[derive(Debug, Serialize)]
pub struct PolicyDump {
    pub name: String,
    pub namespace: String,
    pub action: String,
    pub dry_run: bool,
    /// Empty: every service of the waypoint.
    pub target_services: Vec<String>,
    pub rules: Vec<HttpRule>,
}

#[derive(Debug, Serialize)]
pub struct GatewayDump {
    pub namespace: String,
    pub num_trusted_proxies: u32,
    pub listeners: Vec<EdgeListenerDump>,
}

#[derive(Debug, Serialize)]
pub struct EdgeListenerDump {
    pub port: u16,
    pub servers: Vec<EdgeServerDump>,
}

#[derive(Debug, Serialize)]
pub struct EdgeServerDump {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    pub name: String,
    pub protocol: &'static str,
    pub hosts: Vec<String>,
    /// `None`: plain (HTTP, TCP).
    pub tls_mode: Option<&'static str>,
    pub https_redirect: bool,
    pub credential_name: Option<String>,
    /// `credentialNames` after the first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_credentials: Vec<String>,
    /// Istio's file-mounted certificates: each chain's path, then the CA's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificate_files: Vec<String>,
    /// SANs a client certificate must carry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// The domains of each virtual host, in their order.
    pub virtual_hosts: Vec<Vec<String>>,
    /// The SNI names of each PASSTHROUGH route.
    pub sni_routes: Vec<Vec<String>>,
    /// From the Gateway's `weft.dev/edge-limits`.
    pub limits: EdgeLimitsDump,
}

/// A server's limits in Envoy's names; `None`: the proxy's own (its settings).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EdgeLimitsDump {
    pub max_request_headers_kb: Option<usize>,
    pub request_headers_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub per_connection_buffer_limit_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub max_request_bytes: Option<u64>,
    pub max_connections: Option<u32>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Unspecified => "unspecified (sniffed)",
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
        Protocol::Tls => "tls",
    }
}

fn tunnel(t: Tunnel) -> &'static str {
    match t {
        Tunnel::Hbone => "hbone",
        Tunnel::Plain => "tcp",
    }
}

fn load_balancer(lb: &LoadBalancer, slow_start: Option<&SlowStart>) -> String {
    let name = load_balancer_name(lb);
    match slow_start {
        Some(s) => format!(
            "{name}, warmup {} ms (minimumPercent {}, aggression {})",
            millis(s.window),
            s.min_weight * 100.0,
            s.aggression
        ),
        None => name,
    }
}

fn load_balancer_name(lb: &LoadBalancer) -> String {
    match lb {
        LoadBalancer::RoundRobin => "ROUND_ROBIN".to_owned(),
        LoadBalancer::LeastRequest => "LEAST_REQUEST".to_owned(),
        LoadBalancer::Random => "RANDOM".to_owned(),
        LoadBalancer::ConsistentHash(key, _) => match key {
            HashKey::Header(name) => format!("consistentHash httpHeaderName {name}"),
            HashKey::Cookie(cookie) => format!("consistentHash httpCookie {}", cookie.name),
            HashKey::SourceIp => "consistentHash useSourceIp".to_owned(),
            HashKey::QueryParameter(name) => {
                format!("consistentHash httpQueryParameterName {name}")
            }
        },
    }
}

fn destination(config: &WaypointConfig, cluster: &str, weight: u32) -> DestinationDump {
    DestinationDump {
        cluster: cluster.to_owned(),
        weight,
        missing: config.cluster(cluster).is_none(),
    }
}

fn route(config: &WaypointConfig, r: &Route, matches: Vec<HttpMatch>) -> RouteDump {
    let action = match &r.action {
        RouteAction::Forward(destinations) => ActionDump::Forward(
            destinations
                .iter()
                .map(|d| destination(config, &d.cluster, d.weight))
                .collect(),
        ),
        RouteAction::Redirect(redirect) => ActionDump::Redirect {
            uri: redirect.uri.clone(),
            prefix_rewrite: redirect.prefix_rewrite.clone(),
            authority: redirect.authority.clone(),
            scheme: redirect.scheme.clone(),
            port: match redirect.port {
                RedirectPort::SchemeDefault => "scheme default".to_owned(),
                RedirectPort::FromRequest => "from request".to_owned(),
                RedirectPort::Explicit(port) => port.to_string(),
            },
            status: redirect.status.as_u16(),
        },
        RouteAction::DirectResponse { status, body } => ActionDump::DirectResponse {
            status: status.as_u16(),
            body_bytes: body.len(),
        },
    };
    let on = &r.retries.on;
    let mut retry_on: Vec<String> = [
        (on.five_xx, "5xx"),
        (on.gateway_error, "gateway-error"),
        (on.reset, "reset"),
        (on.connect_failure, "connect-failure"),
        (on.refused_stream, "refused-stream"),
        (on.retriable_4xx, "retriable-4xx"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_owned())
    .collect();
    retry_on.extend(on.retriable_status_codes.iter().map(u16::to_string));
    retry_on.extend(on.grpc.iter().map(|code| format!("grpc {code}")));
    RouteDump {
        name: r.name.as_deref().map(str::to_owned),
        virtual_service: r.virtual_service.clone(),
        matches,
        action,
        timeout_ms: r.timeout.map(millis),
        retries: RetryDump {
            attempts: r.retries.attempts,
            per_try_timeout_ms: r.retries.per_try_timeout.map(millis),
            retry_on: retry_on.join(","),
            retry_ignore_previous_hosts: r.retries.ignore_previous_hosts,
            backoff_ms: r.retries.backoff.map(millis),
        },
        fault: r.fault.as_ref().map(|f| {
            let delay = f
                .delay
                .map(|(d, percent)| format!("delay {} ms for {percent}%", millis(d)));
            let abort = f.abort.as_ref().map(|(kind, percent)| match kind {
                AbortKind::Http(status) => format!("abort {} for {percent}%", status.as_u16()),
                AbortKind::Grpc(code) => format!("abort grpc {code} for {percent}%"),
            });
            [delay, abort]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
        }),
        mirrors: r
            .mirrors
            .iter()
            .map(|m| (m.cluster.clone(), m.percent))
            .collect(),
        cors: r.cors.is_some(),
        session: r.session.as_ref().map(session),
    }
}

/// A route's stateful session as the dump reads it: `cookie <name>` and the attributes its
/// `Set-Cookie` carries, or `header <name>`.
fn session(session: &StatefulSession) -> String {
    match session {
        StatefulSession::Cookie { name, template } => {
            let mut parts = vec![format!("cookie {name}")];
            if template.max_age != 0 {
                parts.push(format!("Max-Age={}", template.max_age));
            }
            if !template.path.is_empty() {
                parts.push(format!("Path={}", template.path));
            }
            parts.extend(template.attributes.iter().map(|(attribute, value)| {
                if value.is_empty() {
                    attribute.clone()
                } else {
                    format!("{attribute}={value}")
                }
            }));
            parts.join("; ")
        }
        StatefulSession::Header { name } => format!("header {name}"),
    }
}

fn tcp_route(config: &WaypointConfig, r: &TcpRoute) -> TcpRouteDump {
    TcpRouteDump {
        virtual_service: r.virtual_service.clone(),
        matches: r
            .matches
            .iter()
            .map(|m| {
                let mut parts = Vec::new();
                if !m.destination_subnets.is_empty() {
                    let subnets: Vec<String> = m
                        .destination_subnets
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    parts.push(format!("destinationSubnets {}", subnets.join(",")));
                }
                if let Some(port) = m.port {
                    parts.push(format!("port {port}"));
                }
                if !m.source_labels.is_empty() {
                    parts.push(format!("sourceLabels {:?}", m.source_labels));
                }
                if let Some(namespace) = &m.source_namespace {
                    parts.push(format!("sourceNamespace {namespace}"));
                }
                parts.join(" ")
            })
            .collect(),
        destinations: r
            .destinations
            .iter()
            .map(|(cluster, weight)| destination(config, cluster, *weight))
            .collect(),
    }
}

fn cluster(c: &Cluster, upstream: &Upstream) -> ClusterDump {
    let mut status = upstream.endpoint_status(&c.name);
    let now = std::time::Instant::now();
    let limits = &c.limits;
    let limit = |name: &str, value: Option<usize>| value.map(|v| format!("{name} {v}"));
    let duration =
        |name: &str, value: Option<Duration>| value.map(|v| format!("{name} {} ms", millis(v)));
    ClusterDump {
        name: c.name.clone(),
        destination_rule: c.destination_rule.clone(),
        load_balancer: load_balancer(&c.load_balancer, c.slow_start.as_ref()),
        // Built by the store before the configuration went in force: reading it costs nothing.
        hash_tables: c.plan().built_tables().map(HashTableDump::of).collect(),
        limits: [
            limit("maxConnections", limits.max_connections),
            duration("connectTimeout", limits.connect_timeout),
            limit("http1MaxPendingRequests", limits.max_pending_requests),
            limit("http2MaxRequests", limits.max_requests),
            limit(
                "maxRequestsPerConnection",
                limits.max_requests_per_connection,
            ),
            limit("maxRetries", limits.max_retries),
            limits
                .retry_budget
                .map(|b| format!("retryBudget {}% min {}", b.percent, b.min_retry_concurrency)),
            duration("idleTimeout", limits.idle_timeout),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", "),
        outlier_detection: c.outlier.as_ref().map(|o| {
            let mut parts = Vec::new();
            if let Some(n) = o.consecutive_5xx {
                parts.push(format!("consecutive5xxErrors {n}"));
            }
            if let Some(n) = o.consecutive_gateway_errors {
                parts.push(format!("consecutiveGatewayErrors {n}"));
            }
            parts.push(format!("interval {} ms", millis(o.interval)));
            parts.push(format!(
                "baseEjectionTime {} ms",
                millis(o.base_ejection_time)
            ));
            parts.push(format!("maxEjectionPercent {}", o.max_ejection_percent));
            parts.push(format!("minHealthPercent {}", o.min_health_percent));
            if let Some(n) = o.local_origin_failures {
                parts.push(format!("consecutiveLocalOriginFailures {n} (split)"));
            }
            if !o.http_error_codes.is_empty() {
                let codes: Vec<String> = o.http_error_codes.iter().map(u16::to_string).collect();
                parts.push(format!(
                    "outlierDetectionHttpErrorCodes {}",
                    codes.join(" ")
                ));
            }
            parts.join(", ")
        }),
        proxy_protocol: c.proxy_protocol.map(|version| match version {
            ProxyProtocolVersion::V1 => "V1",
            ProxyProtocolVersion::V2 => "V2",
        }),
        endpoints: c
            .endpoints
            .iter()
            .map(|e| EndpointDump {
                address: e.address.to_string(),
                identity: e.identity.as_ref().map(ToString::to_string),
                workload_uid: e.workload.uid.clone(),
                workload_name: e.workload.name.clone(),
                tunnel: tunnel(e.tunnel),
                healthy: e.healthy,
                weight: e.weight,
                slow_start_weight_percent: c.slow_start.as_ref().map(|slow| {
                    let since = status.get(&e.address).and_then(|s| s.warming_since);
                    crate::upstream::slow_start_factor(slow, since, now) * 100.0
                }),
                outlier: status.remove(&e.address).unwrap_or_default(),
            })
            .collect(),
    }
}

/// Everything `/config_dump` answers, from the configuration in force, the upstream's runtime
/// state, the certificate's summary, the xDS state (when there is a controller) and history,
/// and the settings.
fn edge_limits(l: &EdgeLimits) -> EdgeLimitsDump {
    EdgeLimitsDump {
        max_request_headers_kb: l.max_request_header_bytes.map(|b| b / 1024),
        request_headers_timeout_ms: l.request_headers_timeout.map(millis),
        idle_timeout_ms: l.idle_timeout.map(millis),
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        per_connection_buffer_limit_bytes: l.per_connection_buffer_limit_bytes,
        request_timeout_ms: l.request_timeout.map(millis),
        max_request_bytes: l.max_request_bytes,
        max_connections: l.max_connections,
    }
}

fn edge_server(s: &EdgeServer) -> EdgeServerDump {
    EdgeServerDump {
        gateway: s.gateway.clone(),
        name: s.name.clone(),
        protocol: match s.protocol {
            EdgeProtocol::Http => "HTTP",
            EdgeProtocol::Https => "HTTPS",
            EdgeProtocol::Tls => "TLS",
            EdgeProtocol::Tcp => "TCP",
        },
        hosts: s.hosts.clone(),
        tls_mode: s.tls.as_ref().filter(|_| s.is_tls()).map(|t| match t.mode {
            ServerTlsMode::Passthrough => "PASSTHROUGH",
            ServerTlsMode::Simple => "SIMPLE",
            ServerTlsMode::Mutual => "MUTUAL",
            ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
            ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }),
        https_redirect: s.tls.as_ref().is_some_and(|t| t.https_redirect),
        credential_name: s
            .tls
            .as_ref()
            .map(|t| t.credential_name.clone())
            .filter(|name| !name.is_empty()),
        additional_credentials: s.tls.as_ref().map_or_else(Vec::new, |t| {
            t.additional_credentials
                .iter()
                .map(|c| c.name.clone())
                .collect()
        }),
        certificate_files: s.tls.as_ref().and_then(|t| t.files.as_ref()).map_or_else(
            Vec::new,
            |f| {
                f.certificates
                    .iter()
                    .map(|c| c.certificate_chain.clone())
                    .chain(f.ca_certificates.clone())
                    .collect()
            },
        ),
        subject_alt_names: s
            .tls
            .as_ref()
            .map_or_else(Vec::new, |t| t.subject_alt_names.clone()),
        virtual_hosts: s.virtual_hosts.iter().map(|v| v.domains.clone()).collect(),
        sni_routes: s.sni_routes.iter().map(|r| r.sni_hosts.clone()).collect(),
        limits: edge_limits(&s.limits),
    }
}

/// What the dump shows of a gateway's configuration.
pub fn gateway(g: &Gateway) -> GatewayDump {
    GatewayDump {
        namespace: g.namespace.to_string(),
        num_trusted_proxies: g.num_trusted_proxies,
        listeners: g
            .listeners
            .iter()
            .map(|l| EdgeListenerDump {
                port: l.port,
                servers: l.servers.iter().map(|s| edge_server(s)).collect(),
            })
            .collect(),
    }
}

pub fn config_dump(
    config: &WaypointConfig,
    upstream: &Upstream,
    certificate: Option<CertificateSummary>,
    xds: Option<&ConnectionState>,
    history: XdsHistory,
    settings: serde_json::Value,
) -> ConfigDump {
    let mut clusters: Vec<ClusterDump> = config
        .clusters
        .values()
        .map(|c| cluster(c, upstream))
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut workloads: Vec<WorkloadDump> = config
        .direct_workloads()
        .map(|w| {
            let mut ports: Vec<(u16, &'static str)> = w
                .ports
                .iter()
                .map(|(port, p)| (*port, protocol(*p)))
                .collect();
            ports.sort();
            WorkloadDump {
                address: w.address.to_string(),
                identity: w.identity.as_ref().map(ToString::to_string),
                namespace: w.namespace.clone(),
                services: w.services.clone(),
                ports,
            }
        })
        .collect();
    workloads.sort_by(|a, b| a.address.cmp(&b.address));
    ConfigDump {
        waypoint: format!("{}/{}", config.namespace, config.name),
        settings,
        certificate,
        xds: XdsDump {
            connected: xds.map(|s| s.connected),
            synced: xds.map(|s| s.synced),
            last_error: xds.and_then(|s| s.last_error.clone()),
            connections: xds.map_or(0, |s| s.connections),
            history,
        },
        services: config
            .services
            .iter()
            .map(|s| ServiceDump {
                hostname: s.hostname.clone(),
                vips: s.vips.iter().map(ToString::to_string).collect(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| PortDump {
                        port: p.port,
                        name: p.name.clone(),
                        protocol: protocol(p.protocol),
                        target_port: p.target_port,
                    })
                    .collect(),
                http_routes: s
                    .http_routes
                    .iter()
                    .zip(&s.route_matches)
                    .map(|(r, m)| route(config, r, m.matches.clone()))
                    .collect(),
                tcp_routes: s.tcp_routes.iter().map(|r| tcp_route(config, r)).collect(),
            })
            .collect(),
        clusters,
        workloads,
        policies: config
            .policies
            .iter()
            .map(|p| PolicyDump {
                name: p.policy.name.clone(),
                namespace: p.policy.namespace.clone(),
                action: format!("{:?}", p.policy.action).to_uppercase(),
                dry_run: p.policy.dry_run,
                target_services: p.target_services.clone(),
                rules: p.policy.rules.clone(),
            })
            .collect(),
        gateway: config.gateway.as_deref().map(gateway),
    }
}

#[cfg(test)]
mod tests;
