//! What gateway proxies receive: the waypoint's engine in the gateway role. Every pod an Istio
//! `Gateway` (networking.istio.io) selects by `selector` (in any namespace, as istiod does by
//! default) gets one `WaypointConfig` named `namespace/pod` whose `gateway` section lists the
//! ports it listens on: the servers of every Gateway selecting it, merged by port, and the
//! VirtualServices bound to each Gateway by `gateways:` compiled per server (HTTP routes per
//! Host, `tls` routes by SNI for PASSTHROUGH servers, `tcp` routes) with the same route compiler
//! as the waypoint's. Clusters are the waypoint's (DestinationRules, endpoints over HBONE);
//! AuthorizationPolicies apply as they apply to any workload: mesh-wide from the root
//! namespace, namespace-wide, or by a selector matching the gateway's pod.
//!
//! Certificates never travel here: a server names its `credentialName` or `credentialNames` (a
//! directory of the proxy's in local mode) and the SDS resources the controller serves them as
//! in Kubernetes mode ([`crate::translate::credentials`]), or the paths of the files mounted in
//! the gateway's pod ([`certificates`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use weft_proto::waypoint as wp;

use super::route::{Binding, PortContext, RouteContext, Served};
use super::telemetry::TelemetryProxy;
use super::{ClusterKey, Compiler, age_key, exported_to};
use crate::index::ConfigIndex;
use crate::model::ResourceKind;
use crate::model::networking::{
    Gateway, Server, ServerTlsMode, TlsProtocolVersion, VirtualService,
};
use crate::translate::gateway_api::ingress::{IngressGateway, ingress_gateways};
use crate::translate::gateway_api::{self, MeshRoute};
use crate::translate::resolve::{
    self, WaypointRef, host_covers, name_of, namespace_of, qualify_host,
};
use crate::translate::{MeshSettings, TranslateError, TranslateProblem};
use certificates::{ServerCertificates, server_certificates};

/// Every gateway proxy's configuration, by resource name `namespace/pod`.
pub fn gateway_configs(
    index: &ConfigIndex,
    settings: &MeshSettings,
    problems: &mut Vec<TranslateError>,
) -> BTreeMap<String, wp::WaypointConfig> {
    let routes = gateway_api::all_routes(index);
    let ingress = ingress_gateways(index, &routes);
    let mut configs = BTreeMap::new();
    for pod in index.pods.values().filter(|p| !resolve::pod_terminated(p)) {
        let labels = resolve::labels(&pod.metadata);
        // The same rule as `is_gateway_pod`, keeping the Gateways.
        let mut gateways: Vec<&Gateway> = index
            .istio_gateways
            .values()
            .filter(|g| !g.spec.selector.is_empty() && resolve::selects(&g.spec.selector, &labels))
            .collect();
        let kubernetes = listeners::serving(&ingress, pod);
        if gateways.is_empty() && kubernetes.is_empty() {
            continue;
        }
        gateways.sort_by(|a, b| age_key(&a.metadata).cmp(&age_key(&b.metadata)));
        let key = format!("{}/{}", namespace_of(&pod.metadata), name_of(&pod.metadata));
        let served = Gateways {
            istio: &gateways,
            kubernetes: &kubernetes,
            routes: &routes,
        };
        configs.insert(key, gateway_config(index, settings, pod, served, problems));
    }
    configs
}

/// Whether a gateway proxy runs in `pod` (an Istio Gateway selects it, or it is the pod of a
/// Gateway API Gateway of class `istio`), with its own identity from the mesh CA.
pub fn is_gateway_pod(index: &ConfigIndex, pod: &Pod) -> bool {
    let labels = resolve::labels(&pod.metadata);
    index
        .istio_gateways
        .values()
        .any(|g| !g.spec.selector.is_empty() && resolve::selects(&g.spec.selector, &labels))
        || listeners::is_ingress_pod(index, pod)
}

/// The Gateways one gateway proxy serves.
#[derive(Clone, Copy)]
pub struct Gateways<'g, 'a> {
    /// Istio Gateways selecting the pod, oldest first.
    pub istio: &'g [&'a Gateway],
    /// Gateway API Gateways of class `istio` whose pod it is.
    pub kubernetes: &'g [&'g IngressGateway<'a>],
    /// The routes their listeners were resolved against.
    pub routes: &'g [MeshRoute<'a>],
}

/// One gateway proxy's configuration.
pub fn gateway_config<'a>(
    index: &'a ConfigIndex,
    settings: &MeshSettings,
    pod: &Pod,
    gateways: Gateways<'_, 'a>,
    problems: &mut Vec<TranslateError>,
) -> wp::WaypointConfig {
    let proxy = WaypointRef {
        namespace: namespace_of(&pod.metadata).to_owned(),
        name: name_of(&pod.metadata).to_owned(),
    };
    let mut compiler = Compiler::new(index, settings, proxy, problems);
    compiler.gateway = true;
    let mut listeners: BTreeMap<u32, wp::GatewayListener> = BTreeMap::new();
    for gateway in gateways.istio {
        for (i, server) in gateway.spec.servers.iter().enumerate() {
            let Some(mut compiled) = compiler.server(gateway, server, i) else {
                continue;
            };
            edge_limits(ResourceKind::Gateway, &gateway.metadata, &mut compiled.1);
            let origin = (
                ResourceKind::Gateway,
                &gateway.metadata,
                format!("spec.servers[{i}].port"),
            );
            add_server(&mut compiler, &mut listeners, compiled, origin);
        }
    }
    for gateway in gateways.kubernetes {
        let servers = compiler.listener_servers(gateway, gateways.routes);
        for (i, mut compiled) in servers.into_iter().enumerate() {
            edge_limits(
                ResourceKind::KubernetesGateway,
                gateway.meta(),
                &mut compiled.1,
            );
            let origin = (
                ResourceKind::KubernetesGateway,
                gateway.meta(),
                format!("spec.listeners[{i}].port"),
            );
            add_server(&mut compiler, &mut listeners, compiled, origin);
        }
    }
    let clusters: Vec<wp::Cluster> = std::mem::take(&mut compiler.clusters)
        .into_iter()
        .map(|key| compiler.cluster(&key))
        .collect();
    let mut authorization_policies: Vec<wp::L7Authorization> = index
        .authorization_policies
        .values()
        .filter(|policy| applies_to_pod(settings, policy, pod))
        .filter_map(|policy| compiler.l7_policy(policy, Vec::new()))
        .collect();
    authorization_policies.sort_by_key(|p| p.action != wp::l7_authorization::Action::Deny as i32);
    let workload = resolve::pod_ips(pod).first().map(|ip| wp::SourceWorkload {
        address: ip.to_string(),
        identity: compiler.pod_identity(pod),
        labels: resolve::labels(&pod.metadata),
        workload_uid: resolve::pod_uid(&settings.cluster_id, pod),
        workload_name: resolve::workload_name(pod),
    });
    let telemetry = compiler.telemetry(TelemetryProxy::Gateway(pod));
    wp::WaypointConfig {
        name: compiler.waypoint.name.clone(),
        namespace: compiler.waypoint.namespace.clone(),
        clusters,
        authorization_policies,
        gateway: Some(wp::GatewayConfig {
            listeners: listeners.into_values().collect(),
            workload,
            num_trusted_proxies: trusted_proxies(&mut compiler, settings, pod),
        }),
        tracing: telemetry.tracing,
        access_log_disabled: telemetry.access_log_disabled,
        metric_overrides: telemetry.metric_overrides,
        access_logs: telemetry.access_logs,
        instances: super::locality::proxy_instance(index, settings, pod)
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// The Gateway's `weft.dev/edge-limits` on one of its servers, its connection rate limit and
/// connection cap on every kind of server (HTTP ones limit requests by route as well).
/// Validation refuses a Gateway whose annotation does not parse, so none is left here to
/// report.
fn edge_limits(
    kind: ResourceKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    server: &mut wp::GatewayServer,
) {
    use crate::model::edge::ConnectionRateLimitPer;
    let Some(Ok(limits)) = crate::model::edge::edge_limits(meta.annotations.as_ref()) else {
        return;
    };
    let duration =
        |d: Option<std::time::Duration>| d.and_then(|d| prost_types::Duration::try_from(d).ok());
    server.limits = Some(wp::EdgeLimits {
        max_request_headers_kb: limits.max_request_headers_kb.unwrap_or(0),
        request_headers_timeout: duration(limits.request_headers_timeout),
        idle_timeout: duration(limits.idle_timeout),
        http2_max_concurrent_streams: limits.http2_max_concurrent_streams.unwrap_or(0),
        per_connection_buffer_limit_bytes: limits.per_connection_buffer_limit_bytes.unwrap_or(0),
        request_timeout: duration(limits.request_timeout),
        max_request_bytes: limits.max_request_bytes.unwrap_or(0),
        max_connections: limits.max_connections.unwrap_or(0),
    });
    let Some(rate) = limits.connection_rate_limit else {
        return;
    };
    let scope = match rate.per {
        ConnectionRateLimitPer::Server => wp::RateLimitScope::Route,
        ConnectionRateLimitPer::Client => wp::RateLimitScope::Client,
    };
    server.connection_rate_limit = Some(wp::LocalRateLimit {
        // One bucket (set) per server of one Gateway, as Envoy's filter is per filter chain.
        key: format!(
            "{kind:?}/{}/{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            server.name
        ),
        max_tokens: rate.max_tokens,
        tokens_per_fill: rate.tokens_per_fill,
        fill_interval: duration(Some(rate.fill_interval)),
        scope: scope as i32,
    });
}

/// The pod's `proxy.istio.io/config` `gatewayTopology.numTrustedProxies`, else the mesh
/// config's default, as istiod merges a gateway's proxy configuration. An annotation that does
/// not parse is reported on the pod and the mesh default applies.
fn trusted_proxies(compiler: &mut Compiler<'_, '_>, settings: &MeshSettings, pod: &Pod) -> u32 {
    let default = settings.mesh.gateway_trusted_proxies();
    match crate::model::edge::pod_num_trusted_proxies(pod.metadata.annotations.as_ref()) {
        Ok(found) => found.unwrap_or(default),
        Err(error) => {
            compiler.report(
                ResourceKind::Pod,
                &pod.metadata,
                TranslateProblem::Unsupported {
                    path: error.path,
                    reason: format!("{}; the mesh default ({default}) applies", error.reason),
                },
            );
            default
        }
    }
}

/// Adds a compiled server to its port's listener, unless the port already carries servers
/// that terminate differently (plain and TLS on one port): then it is reported and left out.
fn add_server(
    compiler: &mut Compiler<'_, '_>,
    listeners: &mut BTreeMap<u32, wp::GatewayListener>,
    (port, server): (u32, wp::GatewayServer),
    (kind, meta, path): (
        ResourceKind,
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        String,
    ),
) {
    let listener = listeners
        .entry(port)
        .or_insert_with(|| wp::GatewayListener {
            port,
            servers: Vec::new(),
        });
    let terminates_here = |s: &wp::GatewayServer| {
        s.protocol == wp::GatewayProtocol::Http as i32
            || s.protocol == wp::GatewayProtocol::Tcp as i32
    };
    if let Some(first) = listener.servers.first()
        && terminates_here(first) != terminates_here(&server)
    {
        compiler.report(
            kind,
            meta,
            TranslateProblem::Unsupported {
                path,
                reason: format!(
                    "port {port} is already served in{} TLS by {}; this server is ignored",
                    if terminates_here(first) { "out" } else { "" },
                    first.gateway
                ),
            },
        );
        return;
    }
    listener.servers.push(server);
}

/// An AuthorizationPolicy applies to the gateway's pod as to any workload: from the root
/// namespace without a selector (mesh-wide), from its namespace without a selector, or with a
/// selector matching its labels. `targetRefs` name Gateway API resources, never an Istio
/// Gateway's pods.
fn applies_to_pod(
    settings: &MeshSettings,
    policy: &crate::model::security::AuthorizationPolicy,
    pod: &Pod,
) -> bool {
    if policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty() {
        return false;
    }
    let namespace = namespace_of(&policy.metadata);
    match &policy.spec.selector {
        None => namespace == settings.root_namespace || namespace == namespace_of(&pod.metadata),
        Some(selector) => {
            namespace == namespace_of(&pod.metadata)
                && resolve::selects(&selector.match_labels, &resolve::labels(&pod.metadata))
        }
    }
}

/// A server host, `namespace/host` split: which VirtualServices' namespaces it admits.
struct ServerHost<'a> {
    /// `*` any, `.` the Gateway's, `~` none, else one namespace.
    namespace: &'a str,
    host: &'a str,
}

impl<'a> ServerHost<'a> {
    fn parse(value: &'a str) -> Self {
        match value.split_once('/') {
            Some((namespace, host)) => ServerHost { namespace, host },
            None => ServerHost {
                namespace: "*",
                host: value,
            },
        }
    }

    fn admits(&self, vs_namespace: &str, gateway_namespace: &str) -> bool {
        match self.namespace {
            "*" => true,
            "." => vs_namespace == gateway_namespace,
            "~" => false,
            ns => ns == vs_namespace,
        }
    }
}

/// The narrower of two host patterns when one covers the other (`*` and `a.example.com` give
/// `a.example.com`), as Istio intersects VirtualService hosts with a server's.
fn intersect(a: &str, b: &str) -> Option<String> {
    if host_covers(b, a) {
        Some(a.to_owned())
    } else if host_covers(a, b) {
        Some(b.to_owned())
    } else {
        None
    }
}

fn protocol_version(version: Option<TlsProtocolVersion>) -> i32 {
    (match version {
        None | Some(TlsProtocolVersion::Auto) => wp::TlsProtocolVersion::TlsAuto,
        Some(TlsProtocolVersion::V1_0) => wp::TlsProtocolVersion::Tlsv10,
        Some(TlsProtocolVersion::V1_1) => wp::TlsProtocolVersion::Tlsv11,
        Some(TlsProtocolVersion::V1_2) => wp::TlsProtocolVersion::Tlsv12,
        Some(TlsProtocolVersion::V1_3) => wp::TlsProtocolVersion::Tlsv13,
    }) as i32
}

impl<'a> Compiler<'a, '_> {
    /// One server, compiled with the routes bound to it; `None` (reported) when the gateway
    /// proxy cannot serve it.
    fn server(
        &mut self,
        gateway: &'a Gateway,
        server: &'a Server,
        index: usize,
    ) -> Option<(u32, wp::GatewayServer)> {
        let path = format!("spec.servers[{index}]");
        let unsupported = |this: &mut Self, field: &str, reason: String| {
            this.report(
                ResourceKind::Gateway,
                &gateway.metadata,
                TranslateProblem::Unsupported {
                    path: format!("{path}{field}"),
                    reason,
                },
            );
        };
        let port = server.port.as_ref()?;
        if u16::try_from(port.number).is_err() || port.number == 0 {
            unsupported(
                self,
                ".port.number",
                "not a TCP port; the server is ignored".into(),
            );
            return None;
        }
        let tls = server.tls.as_ref();
        let mode = tls.and_then(|t| t.mode);
        let protocol = match (port.protocol.to_ascii_uppercase().as_str(), mode) {
            ("HTTP" | "HTTP2" | "GRPC", _) => wp::GatewayProtocol::Http,
            ("HTTPS", Some(ServerTlsMode::Passthrough)) => wp::GatewayProtocol::Tls,
            ("HTTPS", _) => wp::GatewayProtocol::Https,
            ("TLS", _) => wp::GatewayProtocol::Tls,
            ("TCP" | "MONGO" | "MYSQL" | "REDIS", _) => wp::GatewayProtocol::Tcp,
            (other, _) => {
                unsupported(
                    self,
                    ".port.protocol",
                    format!("{other} servers are not supported by gateways; the server is ignored"),
                );
                return None;
            }
        };
        let tls_mode = match (protocol, mode) {
            (wp::GatewayProtocol::Http | wp::GatewayProtocol::Tcp, _) => {
                wp::ServerTlsMode::Unspecified
            }
            (_, Some(ServerTlsMode::Passthrough)) => wp::ServerTlsMode::Passthrough,
            (_, Some(ServerTlsMode::Simple) | None) => wp::ServerTlsMode::Simple,
            (_, Some(ServerTlsMode::Mutual)) => wp::ServerTlsMode::Mutual,
            (_, Some(ServerTlsMode::OptionalMutual)) => wp::ServerTlsMode::OptionalMutual,
            (_, Some(ServerTlsMode::IstioMutual)) => wp::ServerTlsMode::IstioMutual,
            (_, Some(other)) => {
                unsupported(
                    self,
                    ".tls.mode",
                    format!(
                        "{} is not supported by gateways yet; the server is ignored",
                        other.as_str()
                    ),
                );
                return None;
            }
        };
        // ISTIO_MUTUAL terminates with the gateway's own mesh certificate: no credential.
        let terminates = matches!(
            tls_mode,
            wp::ServerTlsMode::Simple
                | wp::ServerTlsMode::Mutual
                | wp::ServerTlsMode::OptionalMutual
        );
        let certificates = match tls.filter(|_| terminates) {
            None => ServerCertificates::default(),
            Some(tls) => {
                let Some(certificates) = server_certificates(tls, &self.waypoint.namespace) else {
                    unsupported(
                        self,
                        ".tls",
                        "a terminating server needs credentialName, credentialNames, serverCertificate and privateKey, or tlsCertificates; the server is ignored".into(),
                    );
                    return None;
                };
                certificates
            }
        };
        let hosts: Vec<ServerHost<'a>> =
            server.hosts.iter().map(|h| ServerHost::parse(h)).collect();
        let gateway_ns = namespace_of(&gateway.metadata);
        let mut compiled = wp::GatewayServer {
            gateway: format!("{gateway_ns}/{}", name_of(&gateway.metadata)),
            name: server.name.clone().unwrap_or_else(|| {
                format!(
                    "{}.{}.{}.{}.{}",
                    port.protocol.to_ascii_lowercase(),
                    port.number,
                    port.name,
                    name_of(&gateway.metadata),
                    gateway_ns
                )
            }),
            protocol: protocol as i32,
            hosts: hosts.iter().map(|h| h.host.to_owned()).collect(),
            tls: tls.map(|t| wp::ServerTls {
                mode: tls_mode as i32,
                https_redirect: t.https_redirect.unwrap_or(false),
                min_protocol_version: protocol_version(t.min_protocol_version),
                max_protocol_version: protocol_version(t.max_protocol_version),
                cipher_suites: t.cipher_suites.clone(),
                subject_alt_names: t.subject_alt_names.clone(),
                // Istio's `ApplyCredentialSDSToServerCommonTLSContext` pins client
                // certificates for MUTUAL and OPTIONAL_MUTUAL only.
                verify_certificate_spki: pins(tls_mode, &t.verify_certificate_spki),
                verify_certificate_hash: pins(tls_mode, &t.verify_certificate_hash),
                credential_resource: certificates.credential_resource,
                credential_name: certificates.credential_name,
                additional_credentials: certificates.additional,
                files: certificates.files,
            }),
            ..Default::default()
        };
        let binding = Binding::Gateway {
            namespace: gateway_ns,
            name: name_of(&gateway.metadata),
        };
        let served = Served {
            hostname: format!("gateway {}", compiled.gateway),
            http_ports: vec![port.number],
            tcp_ports: vec![port.number],
        };
        let context = PortContext {
            port: port.number,
            restrict: false,
        };
        for vs in self.bound_virtual_services(binding, gateway_ns) {
            let vs_namespace = namespace_of(&vs.metadata);
            let domains: Vec<String> = vs
                .spec
                .hosts
                .iter()
                .map(|h| qualify_host(self.settings, h, vs_namespace))
                .flat_map(|vs_host| {
                    hosts
                        .iter()
                        .filter(|h| h.admits(vs_namespace, gateway_ns))
                        .filter_map(move |h| intersect(&vs_host, h.host))
                        .collect::<Vec<_>>()
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if domains.is_empty() {
                continue;
            }
            let mut route = GatewayRoutes {
                compiler: self,
                vs,
                served: &served,
                context,
                binding,
            };
            match protocol {
                wp::GatewayProtocol::Http | wp::GatewayProtocol::Https => {
                    if let Some(host) = route.virtual_host(domains) {
                        compiled.virtual_hosts.push(host);
                    }
                }
                wp::GatewayProtocol::Tls if tls_mode == wp::ServerTlsMode::Passthrough => {
                    compiled.tls_routes.extend(route.tls_routes(&domains));
                }
                _ => compiled.tcp_routes.extend(route.tcp_routes()),
            }
        }
        Some((port.number, compiled))
    }

    /// VirtualServices whose `gateways` name this Gateway and that its namespace may see, oldest
    /// first (Istio's precedence among equals).
    fn bound_virtual_services(
        &self,
        binding: Binding<'_>,
        gateway_namespace: &str,
    ) -> Vec<&'a VirtualService> {
        let mut bound: Vec<&'a VirtualService> = self
            .index
            .virtual_services
            .values()
            .filter(|vs| {
                let namespace = namespace_of(&vs.metadata);
                exported_to(&vs.spec.export_to, namespace, gateway_namespace)
                    && vs
                        .spec
                        .gateways
                        .iter()
                        .any(|g| binding.named_by(g, namespace))
            })
            .collect();
        bound.sort_by(|a, b| age_key(&a.metadata).cmp(&age_key(&b.metadata)));
        bound
    }
}

/// One VirtualService's routes compiled for one server.
struct GatewayRoutes<'c, 'a, 'p> {
    compiler: &'c mut Compiler<'a, 'p>,
    vs: &'a VirtualService,
    served: &'c Served,
    context: PortContext,
    binding: Binding<'c>,
}

impl GatewayRoutes<'_, '_, '_> {
    fn vs_key(&self) -> String {
        format!(
            "{}/{}",
            namespace_of(&self.vs.metadata),
            name_of(&self.vs.metadata)
        )
    }

    /// Runs `compile` with a route context; problems are reported on the VirtualService, and
    /// the clusters it names are kept only when it succeeded.
    fn with_context<T>(
        &mut self,
        path: &str,
        compile: impl FnOnce(&mut RouteContext<'_, '_, '_>) -> Result<T, TranslateProblem>,
    ) -> Option<T> {
        let mut clusters = BTreeSet::<ClusterKey>::new();
        let mut notes = Vec::new();
        let result = {
            let mut context = RouteContext {
                compiler: self.compiler,
                served: self.served,
                vs: self.vs,
                path,
                clusters: &mut clusters,
                notes: &mut notes,
                context: self.context,
                binding: self.binding,
            };
            compile(&mut context)
        };
        for note in notes {
            self.compiler
                .report(ResourceKind::VirtualService, &self.vs.metadata, note);
        }
        match result {
            Ok(value) => {
                self.compiler.clusters.extend(clusters);
                Some(value)
            }
            Err(problem) => {
                self.compiler
                    .report(ResourceKind::VirtualService, &self.vs.metadata, problem);
                None
            }
        }
    }

    /// The `http` routes for `domains`; a value that cannot be translated skips the whole
    /// VirtualService on this server, as on a waypoint.
    fn virtual_host(&mut self, domains: Vec<String>) -> Option<wp::GatewayVirtualHost> {
        let vs = self.vs;
        let vs_key = self.vs_key();
        let mut http_routes = Vec::new();
        for (i, route) in vs.spec.http.iter().enumerate() {
            let path = format!("spec.http[{i}]");
            if route.delegate.is_some() {
                self.compiler.report(
                    ResourceKind::VirtualService,
                    &vs.metadata,
                    TranslateProblem::Unsupported {
                        path: format!("{path}.delegate"),
                        reason: "delegation is not supported by gateways yet; the route is ignored"
                            .to_owned(),
                    },
                );
                continue;
            }
            let compiled = self.with_context(&path, |cx| cx.http_route(route, true))?;
            if let Some(mut compiled) = compiled {
                compiled.virtual_service = vs_key.clone();
                http_routes.push(compiled);
            }
        }
        (!http_routes.is_empty()).then_some(wp::GatewayVirtualHost {
            domains,
            http_routes,
            virtual_service: vs_key,
        })
    }

    /// The `tls` routes whose matches bind this server, by SNI (within the server's hosts).
    fn tls_routes(&mut self, domains: &[String]) -> Vec<wp::GatewayTlsRoute> {
        let vs = self.vs;
        let vs_namespace = namespace_of(&vs.metadata);
        let port = self.context.port;
        let binding = self.binding;
        let mut out = Vec::new();
        for (i, route) in vs.spec.tls.iter().enumerate() {
            let mut sni_hosts = BTreeSet::new();
            for m in &route.matches {
                let bound = m.gateways.is_empty()
                    || m.gateways.iter().any(|g| binding.named_by(g, vs_namespace));
                if !bound || m.port.is_some_and(|p| p != port) {
                    continue;
                }
                sni_hosts.extend(
                    m.sni_hosts
                        .iter()
                        .flat_map(|sni| domains.iter().filter_map(|d| intersect(sni, d))),
                );
            }
            if sni_hosts.is_empty() {
                continue;
            }
            let path = format!("spec.tls[{i}]");
            let destinations = self.with_context(&path, |cx| {
                Ok(cx
                    .destinations(&route.route, |d| d.destination.as_ref())
                    .into_iter()
                    .map(|(d, destination)| wp::RouteDestination {
                        destination: Some(destination),
                        weight: d.weight.unwrap_or(0).max(0),
                    })
                    .collect())
            });
            if let Some(route) = destinations {
                out.push(wp::GatewayTlsRoute {
                    sni_hosts: sni_hosts.into_iter().collect(),
                    route,
                    virtual_service: self.vs_key(),
                });
            }
        }
        out
    }

    /// The `tcp` routes whose matches bind this server.
    fn tcp_routes(&mut self) -> Vec<wp::TcpRoute> {
        let vs = self.vs;
        let mut out = Vec::new();
        for (i, route) in vs.spec.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}]");
            if let Some(Some(mut compiled)) =
                self.with_context(&path, |cx| cx.tcp_route(route, true))
            {
                compiled.virtual_service = self.vs_key();
                out.push(compiled);
            }
        }
        out
    }
}

/// A server's client-certificate pins (`verifyCertificateSpki` or `verifyCertificateHash`):
/// applied by MUTUAL and OPTIONAL_MUTUAL servers only, as Istio applies them (validation warns
/// when another mode sets them).
fn pins(mode: wp::ServerTlsMode, listed: &[String]) -> Vec<String> {
    match mode {
        wp::ServerTlsMode::Mutual | wp::ServerTlsMode::OptionalMutual => listed.to_vec(),
        _ => Vec::new(),
    }
}

mod certificates;
mod listeners;

#[cfg(test)]
mod tests;
