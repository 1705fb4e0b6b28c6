//! One waypoint's `WaypointConfig`: the services that use it, their routes compiled from
//! VirtualServices, the clusters those routes name (DestinationRule subsets resolved to label
//! selectors and endpoints, traffic policies merged), and the L7 AuthorizationPolicies that
//! target the waypoint or its services.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort as KubeServicePort};
use weft_proto::waypoint as wp;

use super::{
    TranslateConfig, TranslateError, TranslateProblem, WaypointFor, WaypointRef, authorization,
    labels, meta_key, pod_enrolled, pod_healthy, pod_ips, pod_service_account, pod_terminated,
    requested_waypoint, resolve_target_port, selector_matches, service_selector, service_vips,
    workload::pod_uid,
};
use crate::index::Snapshot;
use crate::model::networking::{
    self as net, ConnectionPoolSettings, HttpRoute, LoadBalancerSettings, OutlierDetection,
    TrafficPolicy,
};
use crate::model::security::AuthorizationAction;
use crate::model::{
    AuthorizationPolicy, DestinationRule, DurationString, KubernetesGateway, ResourceKind,
    VirtualService,
};

/// Collects translation problems for one resource being compiled.
struct Reporter<'a> {
    kind: ResourceKind,
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    errors: &'a mut Vec<TranslateError>,
}

impl Reporter<'_> {
    fn report(&mut self, problem: TranslateProblem) {
        let error = TranslateError::new(self.kind, self.meta, problem);
        if !self.errors.contains(&error) {
            self.errors.push(error);
        }
    }
}

/// A cluster some route or default needs: (host, subset, port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ClusterKey {
    host: String,
    subset: String,
    port: u32,
}

impl ClusterKey {
    fn name(&self) -> String {
        format!("outbound|{}|{}|{}", self.port, self.subset, self.host)
    }
}

struct Compiler<'a> {
    snapshot: &'a Snapshot,
    config: &'a TranslateConfig,
    /// Services by hostname.
    services: BTreeMap<String, &'a Service>,
    clusters: BTreeSet<ClusterKey>,
}

pub(super) fn compile(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    gateway: &KubernetesGateway,
    errors: &mut Vec<TranslateError>,
) -> wp::WaypointConfig {
    let (namespace, name) = meta_key(&gateway.metadata);
    let wref = WaypointRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut compiler = Compiler {
        snapshot,
        config,
        services: snapshot
            .services()
            .map(|s| {
                let (ns, n) = meta_key(&s.metadata);
                (config.service_hostname(ns, n), s)
            })
            .collect(),
        clusters: BTreeSet::new(),
    };
    let served: Vec<&Service> = if WaypointFor::of(gateway).serves_services() {
        compiler
            .services
            .values()
            .copied()
            .filter(|s| requested_waypoint(snapshot, &s.metadata).as_ref() == Some(&wref))
            .collect()
    } else {
        Vec::new()
    };
    let services = served
        .iter()
        .map(|service| compiler.service(service, errors))
        .collect::<Vec<_>>();
    let clusters = std::mem::take(&mut compiler.clusters)
        .into_iter()
        .map(|key| compiler.cluster(&key, errors))
        .collect();
    let authorization_policies = snapshot
        .authorization_policies()
        .filter_map(|policy| {
            let mut reporter = Reporter {
                kind: ResourceKind::AuthorizationPolicy,
                meta: &policy.metadata,
                errors,
            };
            l7_policy(config, policy, &wref, &served, &mut reporter)
        })
        .collect();
    wp::WaypointConfig {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        services,
        clusters,
        authorization_policies,
    }
}

fn service_ports(service: &Service) -> &[KubeServicePort] {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

/// Protocol from `appProtocol`, else from the port name prefix (`http-web`), as Istio does.
fn port_protocol(port: &KubeServicePort) -> wp::Protocol {
    let declared = port
        .app_protocol
        .as_deref()
        .or_else(|| {
            port.name
                .as_deref()
                .map(|n| n.split('-').next().unwrap_or(n))
        })
        .unwrap_or("")
        .to_ascii_lowercase();
    match declared.as_str() {
        "http" | "http1" => wp::Protocol::Http,
        "http2" | "kubernetes.io/h2c" => wp::Protocol::Http2,
        "grpc" | "grpc-web" => wp::Protocol::Grpc,
        "tcp" | "mongo" | "mysql" | "redis" => wp::Protocol::Tcp,
        "tls" | "https" => wp::Protocol::Tls,
        _ => wp::Protocol::Unspecified,
    }
}

fn is_l4_only(protocol: wp::Protocol) -> bool {
    matches!(protocol, wp::Protocol::Tcp | wp::Protocol::Tls)
}

/// `*.example.com` matches any name under it; `*` matches all.
fn host_matches(pattern: &str, hostname: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => hostname.ends_with(suffix),
        None => pattern == hostname,
    }
}

fn creation_order<'a, T: kube::Resource + 'a>(items: impl Iterator<Item = &'a T>) -> Vec<&'a T> {
    let mut items: Vec<&T> = items.collect();
    items.sort_by(|a, b| {
        let key = |r: &T| {
            let meta = r.meta();
            (
                meta.creation_timestamp.clone().map(|t| t.0),
                meta.namespace.clone(),
                meta.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    items
}

impl<'a> Compiler<'a> {
    fn service(
        &mut self,
        service: &Service,
        errors: &mut Vec<TranslateError>,
    ) -> wp::WaypointService {
        let (namespace, name) = meta_key(&service.metadata);
        let hostname = self.config.service_hostname(namespace, name);
        let ports: Vec<wp::ServicePort> = service_ports(service)
            .iter()
            .map(|port| {
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                wp::ServicePort {
                    port: u32::try_from(port.port).unwrap_or(0),
                    name: port.name.clone().unwrap_or_default(),
                    protocol: port_protocol(port) as i32,
                    target_port: match &port.target_port {
                        None => u32::try_from(port.port).unwrap_or(0),
                        Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
                        // Named: resolved per endpoint in each cluster.
                        Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
                    },
                }
            })
            .collect();
        let vips = service_vips(service)
            .unwrap_or_default()
            .into_iter()
            .map(|ip| ip.to_string())
            .collect();

        let virtual_services: Vec<&VirtualService> =
            creation_order(self.snapshot.virtual_services().filter(|vs| {
                let vs_ns = vs.metadata.namespace.as_deref().unwrap_or("");
                let for_mesh =
                    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
                for_mesh
                    && vs
                        .spec
                        .hosts
                        .iter()
                        .any(|h| host_matches(&self.config.qualify_host(h, vs_ns), &hostname))
            }));

        let mut http_routes = Vec::new();
        let mut tcp_routes = Vec::new();
        for vs in virtual_services {
            let mut reporter = Reporter {
                kind: ResourceKind::VirtualService,
                meta: &vs.metadata,
                errors,
            };
            let vs_ns = vs.metadata.namespace.as_deref().unwrap_or("");
            let vs_key = format!("{vs_ns}/{}", vs.metadata.name.as_deref().unwrap_or(""));
            for (i, route) in vs.spec.http.iter().enumerate() {
                match self.http_route(route, vs_ns, &format!("spec.http[{i}]"), &mut reporter) {
                    Ok(mut compiled) => {
                        compiled.virtual_service = vs_key.clone();
                        http_routes.push(compiled);
                    }
                    Err(problem) => reporter.report(problem),
                }
            }
            for route in &vs.spec.tcp {
                let compiled = wp::TcpRoute {
                    r#match: route
                        .matches
                        .iter()
                        .map(|m| wp::L4MatchAttributes {
                            destination_subnets: m.destination_subnets.clone(),
                            port: m.port.unwrap_or(0),
                            source_labels: to_hash(&m.source_labels),
                            source_namespace: m.source_namespace.clone().unwrap_or_default(),
                        })
                        .collect(),
                    route: route
                        .route
                        .iter()
                        .filter_map(|d| {
                            Some(wp::RouteDestination {
                                destination: Some(self.destination(
                                    d.destination.as_ref()?,
                                    vs_ns,
                                    &mut reporter,
                                )),
                                weight: d.weight.unwrap_or(0),
                            })
                        })
                        .collect(),
                    virtual_service: vs_key.clone(),
                };
                tcp_routes.push(compiled);
            }
            if !vs.spec.tls.is_empty() {
                reporter.report(TranslateProblem::Unsupported {
                    path: "spec.tls".to_owned(),
                    reason: "TLS routes are not served by waypoints; ignored".to_owned(),
                });
            }
        }

        // The default: straight to the service, for whatever no route matched.
        let own = net::Destination {
            host: hostname.clone(),
            subset: None,
            port: None,
        };
        let mut reporter = Reporter {
            kind: ResourceKind::Service,
            meta: &service.metadata,
            errors,
        };
        let default_destination = self.destination(&own, namespace, &mut reporter);
        let protocols: Vec<wp::Protocol> =
            service_ports(service).iter().map(port_protocol).collect();
        if protocols.iter().any(|p| !is_l4_only(*p)) {
            http_routes.push(wp::HttpRoute {
                name: "default".to_owned(),
                route: vec![wp::HttpRouteDestination {
                    destination: Some(default_destination.clone()),
                    weight: 0,
                    headers: None,
                }],
                ..Default::default()
            });
        }
        tcp_routes.push(wp::TcpRoute {
            r#match: Vec::new(),
            route: vec![wp::RouteDestination {
                destination: Some(default_destination),
                weight: 0,
            }],
            virtual_service: String::new(),
        });

        wp::WaypointService {
            hostname,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            vips,
            ports,
            http_routes,
            tcp_routes,
        }
    }

    /// Resolves a destination to its cluster, registering the clusters it needs.
    fn destination(
        &mut self,
        destination: &net::Destination,
        namespace: &str,
        reporter: &mut Reporter<'_>,
    ) -> wp::Destination {
        let host = self.config.qualify_host(&destination.host, namespace);
        let subset = destination.subset.clone().unwrap_or_default();
        let explicit = destination.port.as_ref().map(|p| p.number);
        let service_ports: Vec<u32> = match self.services.get(&host) {
            Some(service) => service_ports(service)
                .iter()
                .filter_map(|p| u32::try_from(p.port).ok())
                .collect(),
            None => {
                reporter.report(TranslateProblem::UnknownHost(host.clone()));
                Vec::new()
            }
        };
        if !subset.is_empty() && self.services.contains_key(&host) {
            let defined = self
                .destination_rule(&host)
                .is_some_and(|rule| rule.spec.subsets.iter().any(|s| s.name == subset));
            if !defined {
                // The cluster is still emitted, without endpoints: requests routed to it fail
                // (503) rather than reach pods the subset was meant to exclude.
                reporter.report(TranslateProblem::UnknownSubset {
                    host: host.clone(),
                    subset: subset.clone(),
                });
            }
        }
        let single_port = match service_ports.as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        let port = explicit.or(single_port);
        let cluster = match port {
            Some(port) => {
                let key = ClusterKey {
                    host: host.clone(),
                    subset: subset.clone(),
                    port,
                };
                let name = key.name();
                self.clusters.insert(key);
                name
            }
            None => {
                // Several ports and none chosen: the waypoint uses the cluster of the port the
                // request arrived on, `outbound|<port>|<subset>|<host>`; all of them exist.
                for port in &service_ports {
                    self.clusters.insert(ClusterKey {
                        host: host.clone(),
                        subset: subset.clone(),
                        port: *port,
                    });
                }
                String::new()
            }
        };
        wp::Destination {
            host,
            subset,
            port: explicit.unwrap_or(0),
            cluster,
        }
    }

    fn http_route(
        &mut self,
        route: &HttpRoute,
        namespace: &str,
        path: &str,
        reporter: &mut Reporter<'_>,
    ) -> Result<wp::HttpRoute, TranslateProblem> {
        if route.delegate.is_some() {
            return Err(TranslateProblem::Unsupported {
                path: format!("{path}.delegate"),
                reason: "delegation applies to gateways only; route ignored".to_owned(),
            });
        }
        let destinations = route
            .route
            .iter()
            .filter_map(|d| {
                Some(wp::HttpRouteDestination {
                    destination: Some(self.destination(
                        d.destination.as_ref()?,
                        namespace,
                        reporter,
                    )),
                    weight: d.weight.unwrap_or(0),
                    headers: d.headers.as_ref().map(headers),
                })
            })
            .collect();
        let mut mirrors: Vec<wp::HttpMirrorPolicy> = Vec::new();
        if let Some(mirror) = &route.mirror {
            let percentage = route
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(route.mirror_percent.map(f64::from))
                .map(|value| wp::Percent { value });
            mirrors.push(wp::HttpMirrorPolicy {
                destination: Some(self.destination(mirror, namespace, reporter)),
                percentage,
            });
        }
        for mirror in &route.mirrors {
            if let Some(destination) = &mirror.destination {
                mirrors.push(wp::HttpMirrorPolicy {
                    destination: Some(self.destination(destination, namespace, reporter)),
                    percentage: mirror
                        .percentage
                        .as_ref()
                        .map(|p| wp::Percent { value: p.value }),
                });
            }
        }
        Ok(wp::HttpRoute {
            name: route.name.clone().unwrap_or_default(),
            r#match: route.matches.iter().map(http_match).collect(),
            route: destinations,
            redirect: route.redirect.as_ref().map(redirect),
            direct_response: route.direct_response.as_ref().map(direct_response),
            rewrite: route.rewrite.as_ref().map(|r| wp::HttpRewrite {
                uri: r.uri.clone().unwrap_or_default(),
                authority: r.authority.clone().unwrap_or_default(),
                uri_regex_rewrite: r.uri_regex_rewrite.as_ref().map(|rr| wp::RegexRewrite {
                    r#match: rr.pattern.clone(),
                    rewrite: rr.rewrite.clone(),
                }),
            }),
            timeout: optional_duration(route.timeout.as_ref(), &format!("{path}.timeout"))?,
            retries: route
                .retries
                .as_ref()
                .map(|r| {
                    Ok::<_, TranslateProblem>(wp::HttpRetry {
                        attempts: r.attempts,
                        per_try_timeout: optional_duration(
                            r.per_try_timeout.as_ref(),
                            &format!("{path}.retries.perTryTimeout"),
                        )?,
                        retry_on: r.retry_on.clone().unwrap_or_default(),
                    })
                })
                .transpose()?,
            fault: route
                .fault
                .as_ref()
                .map(|f| fault(f, path, reporter))
                .transpose()?,
            mirrors,
            cors_policy: route
                .cors_policy
                .as_ref()
                .map(|c| cors(c, path))
                .transpose()?,
            headers: route.headers.as_ref().map(headers),
            virtual_service: String::new(),
        })
    }

    fn cluster(&self, key: &ClusterKey, errors: &mut Vec<TranslateError>) -> wp::Cluster {
        let mut cluster = wp::Cluster {
            name: key.name(),
            host: key.host.clone(),
            subset: key.subset.clone(),
            port: key.port,
            ..Default::default()
        };
        let rule = self.destination_rule(&key.host);
        // A subset no DestinationRule defines has no endpoints (reported where it is named).
        let subset = match (&key.subset, rule) {
            (s, _) if s.is_empty() => None,
            (s, Some(rule)) => match rule.spec.subsets.iter().find(|sub| &sub.name == s) {
                Some(subset) => Some(subset),
                None => return cluster,
            },
            (_, None) => return cluster,
        };
        let subset_labels = subset.map(|s| s.labels.clone()).unwrap_or_default();
        cluster.subset_labels = to_hash(&subset_labels);
        if let Some(rule) = rule {
            let (namespace, name) = meta_key(&rule.metadata);
            cluster.destination_rule = format!("{namespace}/{name}");
            let policy = effective_policy(
                rule.spec.traffic_policy.as_ref(),
                subset.and_then(|s| s.traffic_policy.as_ref()),
                key.port,
            );
            let mut reporter = Reporter {
                kind: ResourceKind::DestinationRule,
                meta: &rule.metadata,
                errors,
            };
            match traffic_policy(&policy) {
                Ok((lb, pool, outlier)) => {
                    cluster.load_balancer = lb;
                    cluster.connection_pool = pool;
                    cluster.outlier_detection = outlier;
                }
                Err(problem) => reporter.report(problem),
            }
        }
        if let Some(service) = self.services.get(&key.host) {
            cluster.endpoints = self.endpoints(service, key.port, &subset_labels);
        }
        cluster
    }

    /// The DestinationRule for a host: an exact host match first, else the most specific
    /// wildcard; the oldest among equals.
    fn destination_rule(&self, host: &str) -> Option<&'a DestinationRule> {
        let candidates = creation_order(self.snapshot.destination_rules().filter(|dr| {
            let ns = dr.metadata.namespace.as_deref().unwrap_or("");
            host_matches(&self.config.qualify_host(&dr.spec.host, ns), host)
        }));
        candidates.into_iter().rev().max_by_key(|dr| {
            let ns = dr.metadata.namespace.as_deref().unwrap_or("");
            let qualified = self.config.qualify_host(&dr.spec.host, ns);
            // Exact beats wildcard, longer wildcard beats shorter; `max_by_key` keeps the last
            // maximum, so walking newest to oldest prefers the oldest.
            (!qualified.starts_with('*'), qualified.len())
        })
    }

    fn endpoints(
        &self,
        service: &Service,
        port: u32,
        subset_labels: &BTreeMap<String, String>,
    ) -> Vec<wp::Endpoint> {
        let (namespace, _) = meta_key(&service.metadata);
        let selector = service_selector(service);
        let Some(service_port) = service_ports(service)
            .iter()
            .find(|p| u32::try_from(p.port).ok() == Some(port))
        else {
            return Vec::new();
        };
        let mut endpoints: Vec<wp::Endpoint> = self
            .snapshot
            .pods()
            .filter(|pod| {
                let pod_labels = labels(&pod.metadata);
                pod.metadata.namespace.as_deref() == Some(namespace)
                    && !pod_terminated(pod)
                    && selector_matches(&selector, &pod_labels)
                    && subset_labels
                        .iter()
                        .all(|(k, v)| pod_labels.get(k) == Some(v))
            })
            .flat_map(|pod| self.pod_endpoints(pod, service_port))
            .collect();
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints
    }

    fn pod_endpoints(&self, pod: &Pod, port: &KubeServicePort) -> Vec<wp::Endpoint> {
        let Some(target) = resolve_target_port(port, pod) else {
            return Vec::new();
        };
        let Ok(ips) = pod_ips(pod) else {
            return Vec::new();
        };
        let (namespace, name) = meta_key(&pod.metadata);
        let tunnel = if pod_enrolled(self.snapshot, pod) {
            wp::EndpointTunnel::Hbone
        } else {
            wp::EndpointTunnel::None
        };
        ips.into_iter()
            .map(|ip| wp::Endpoint {
                address: ip.to_string(),
                port: target,
                identity: self.config.spiffe_id(namespace, pod_service_account(pod)),
                labels: to_hash(&labels(&pod.metadata)),
                workload_uid: pod_uid(self.config, namespace, name),
                tunnel: tunnel as i32,
                healthy: pod_healthy(pod),
                weight: 0,
            })
            .collect()
    }
}

/// The settings of a cluster: top-level policy, overridden field by field by its port-level
/// settings, then by the subset's policy and the subset's port-level settings.
fn effective_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u32,
) -> (
    Option<LoadBalancerSettings>,
    Option<ConnectionPoolSettings>,
    Option<OutlierDetection>,
) {
    let mut lb = None;
    let mut pool = None;
    let mut outlier = None;
    for policy in [top, subset].into_iter().flatten() {
        if policy.load_balancer.is_some() {
            lb = policy.load_balancer.clone();
        }
        if policy.connection_pool.is_some() {
            pool = policy.connection_pool.clone();
        }
        if policy.outlier_detection.is_some() {
            outlier = policy.outlier_detection.clone();
        }
        let port_level = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().map(|s| s.number) == Some(port));
        if let Some(port_level) = port_level {
            if port_level.load_balancer.is_some() {
                lb = port_level.load_balancer.clone();
            }
            if port_level.connection_pool.is_some() {
                pool = port_level.connection_pool.clone();
            }
            if port_level.outlier_detection.is_some() {
                outlier = port_level.outlier_detection.clone();
            }
        }
    }
    (lb, pool, outlier)
}

type CompiledPolicy = (
    Option<wp::LoadBalancerSettings>,
    Option<wp::ConnectionPoolSettings>,
    Option<wp::OutlierDetection>,
);

fn traffic_policy(
    (lb, pool, outlier): &(
        Option<LoadBalancerSettings>,
        Option<ConnectionPoolSettings>,
        Option<OutlierDetection>,
    ),
) -> Result<CompiledPolicy, TranslateProblem> {
    use wp::load_balancer_settings::{
        ConsistentHashLb, LbPolicy, SimpleLb, consistent_hash_lb::HashKey,
        consistent_hash_lb::HttpCookie,
    };
    let path = "spec.trafficPolicy";
    let lb = match lb {
        None => None,
        Some(lb) => {
            let policy = if let Some(hash) = &lb.consistent_hash {
                let key = if let Some(header) = &hash.http_header_name {
                    Some(HashKey::HttpHeaderName(header.clone()))
                } else if let Some(cookie) = &hash.http_cookie {
                    Some(HashKey::HttpCookie(HttpCookie {
                        name: cookie.name.clone(),
                        path: cookie.path.clone().unwrap_or_default(),
                        ttl: optional_duration(
                            cookie.ttl.as_ref(),
                            &format!("{path}.loadBalancer.consistentHash.httpCookie.ttl"),
                        )?,
                    }))
                } else if hash.use_source_ip == Some(true) {
                    Some(HashKey::UseSourceIp(true))
                } else {
                    hash.http_query_parameter_name
                        .clone()
                        .map(HashKey::HttpQueryParameterName)
                };
                Some(LbPolicy::ConsistentHash(ConsistentHashLb { hash_key: key }))
            } else {
                lb.simple.map(|simple| {
                    let simple = match simple {
                        net::SimpleLb::Unspecified => SimpleLb::Unspecified,
                        net::SimpleLb::LeastConn => SimpleLb::LeastConn,
                        net::SimpleLb::Random => SimpleLb::Random,
                        net::SimpleLb::Passthrough => SimpleLb::Passthrough,
                        net::SimpleLb::RoundRobin => SimpleLb::RoundRobin,
                        net::SimpleLb::LeastRequest => SimpleLb::LeastRequest,
                    };
                    LbPolicy::Simple(simple as i32)
                })
            };
            Some(wp::LoadBalancerSettings { lb_policy: policy })
        }
    };
    let pool = match pool {
        None => None,
        Some(pool) => {
            let p = format!("{path}.connectionPool");
            Some(wp::ConnectionPoolSettings {
                tcp: pool
                    .tcp
                    .as_ref()
                    .map(|tcp| {
                        Ok::<_, TranslateProblem>(wp::connection_pool_settings::TcpSettings {
                            max_connections: tcp.max_connections.unwrap_or(0),
                            connect_timeout: optional_duration(
                                tcp.connect_timeout.as_ref(),
                                &format!("{p}.tcp.connectTimeout"),
                            )?,
                            max_connection_duration: optional_duration(
                                tcp.max_connection_duration.as_ref(),
                                &format!("{p}.tcp.maxConnectionDuration"),
                            )?,
                            idle_timeout: optional_duration(
                                tcp.idle_timeout.as_ref(),
                                &format!("{p}.tcp.idleTimeout"),
                            )?,
                        })
                    })
                    .transpose()?,
                http: pool
                    .http
                    .as_ref()
                    .map(|http| {
                        Ok::<_, TranslateProblem>(wp::connection_pool_settings::HttpSettings {
                            http1_max_pending_requests: http
                                .http1_max_pending_requests
                                .unwrap_or(0),
                            http2_max_requests: http.http2_max_requests.unwrap_or(0),
                            max_requests_per_connection: http
                                .max_requests_per_connection
                                .unwrap_or(0),
                            max_retries: http.max_retries.unwrap_or(0),
                            idle_timeout: optional_duration(
                                http.idle_timeout.as_ref(),
                                &format!("{p}.http.idleTimeout"),
                            )?,
                            max_concurrent_streams: http.max_concurrent_streams.unwrap_or(0),
                        })
                    })
                    .transpose()?,
            })
        }
    };
    let outlier = match outlier {
        None => None,
        Some(o) => {
            let p = format!("{path}.outlierDetection");
            Some(wp::OutlierDetection {
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                // `consecutiveErrors` is the deprecated spelling of the 5xx count.
                consecutive_5xx_errors: o
                    .consecutive5xx_errors
                    .or(o.consecutive_errors.and_then(|n| u32::try_from(n).ok())),
                interval: optional_duration(o.interval.as_ref(), &format!("{p}.interval"))?,
                base_ejection_time: optional_duration(
                    o.base_ejection_time.as_ref(),
                    &format!("{p}.baseEjectionTime"),
                )?,
                max_ejection_percent: o.max_ejection_percent.unwrap_or(0),
                min_health_percent: o.min_health_percent.unwrap_or(0),
            })
        }
    };
    Ok((lb, pool, outlier))
}

fn optional_duration(
    value: Option<&DurationString>,
    path: &str,
) -> Result<Option<prost_types::Duration>, TranslateProblem> {
    let Some(value) = value else {
        return Ok(None);
    };
    let invalid = || TranslateProblem::InvalidDuration {
        path: path.to_owned(),
        value: value.0.clone(),
    };
    let parsed = value.parse().map_err(|_| invalid())?;
    if parsed.negative {
        return Err(invalid());
    }
    Ok(Some(prost_types::Duration {
        seconds: i64::try_from(parsed.magnitude.as_secs()).map_err(|_| invalid())?,
        nanos: i32::try_from(parsed.magnitude.subsec_nanos()).map_err(|_| invalid())?,
    }))
}

fn to_hash<V: Clone>(map: &BTreeMap<String, V>) -> HashMap<String, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn string_match(m: &net::StringMatch) -> wp::StringMatch {
    use wp::string_match::MatchType;
    let match_type = if let Some(exact) = &m.exact {
        Some(MatchType::Exact(exact.clone()))
    } else if let Some(prefix) = &m.prefix {
        Some(MatchType::Prefix(prefix.clone()))
    } else {
        m.regex.clone().map(MatchType::Regex)
    };
    wp::StringMatch { match_type }
}

fn string_map(map: &BTreeMap<String, net::StringMatch>) -> HashMap<String, wp::StringMatch> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), string_match(v)))
        .collect()
}

fn http_match(m: &net::HttpMatchRequest) -> wp::HttpMatchRequest {
    wp::HttpMatchRequest {
        name: m.name.clone().unwrap_or_default(),
        uri: m.uri.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        headers: string_map(&m.headers),
        port: m.port.unwrap_or(0),
        source_labels: to_hash(&m.source_labels),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), string_match(v)))
            .collect(),
        ignore_uri_case: m.ignore_uri_case,
        without_headers: string_map(&m.without_headers),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
    }
}

fn header_operations(ops: &net::HeaderOperations) -> wp::HeaderOperations {
    wp::HeaderOperations {
        set: to_hash(&ops.set),
        add: to_hash(&ops.add),
        remove: ops.remove.clone(),
    }
}

fn headers(h: &net::Headers) -> wp::Headers {
    wp::Headers {
        request: h.request.as_ref().map(header_operations),
        response: h.response.as_ref().map(header_operations),
    }
}

fn redirect(r: &net::HttpRedirect) -> wp::HttpRedirect {
    use wp::http_redirect::{RedirectPort, RedirectPortSelection};
    let redirect_port = match (r.port, r.derive_port) {
        (Some(port), _) => Some(RedirectPort::Port(port)),
        (None, Some(net::RedirectPortSelection::FromRequestPort)) => Some(
            RedirectPort::DerivePort(RedirectPortSelection::FromRequestPort as i32),
        ),
        (None, Some(net::RedirectPortSelection::FromProtocolDefault)) => Some(
            RedirectPort::DerivePort(RedirectPortSelection::FromProtocolDefault as i32),
        ),
        (None, None) => None,
    };
    wp::HttpRedirect {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
        redirect_port,
        scheme: r.scheme.clone().unwrap_or_default(),
        redirect_code: r.redirect_code.unwrap_or(0),
    }
}

fn direct_response(d: &net::HttpDirectResponse) -> wp::HttpDirectResponse {
    use wp::http_body::Specifier;
    let body = d.body.as_ref().and_then(|b| {
        let specifier = if let Some(text) = &b.string {
            Specifier::String(text.clone())
        } else {
            Specifier::Bytes(decode_base64(b.bytes.as_deref()?)?)
        };
        Some(wp::HttpBody {
            specifier: Some(specifier),
        })
    });
    wp::HttpDirectResponse {
        status: d.status,
        body,
    }
}

/// Standard base64 (padding optional), as Istio writes `directResponse.body.bytes`.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

fn fault(
    f: &net::HttpFaultInjection,
    path: &str,
    reporter: &mut Reporter<'_>,
) -> Result<wp::HttpFaultInjection, TranslateProblem> {
    use wp::http_fault_injection::{Abort, Delay, abort::ErrorType};
    let percent = |percentage: &Option<net::Percent>, legacy: Option<i32>| {
        percentage
            .as_ref()
            .map(|p| p.value)
            .or(legacy.map(f64::from))
            .map(|value| wp::Percent { value })
    };
    let delay = match &f.delay {
        None => None,
        Some(delay) => {
            if delay.exponential_delay.is_some() {
                reporter.report(TranslateProblem::Unsupported {
                    path: format!("{path}.fault.delay.exponentialDelay"),
                    reason: "not supported; ignored".to_owned(),
                });
            }
            Some(Delay {
                fixed_delay: optional_duration(
                    delay.fixed_delay.as_ref(),
                    &format!("{path}.fault.delay.fixedDelay"),
                )?,
                percentage: percent(&delay.percentage, delay.percent),
            })
        }
    };
    let abort = f.abort.as_ref().and_then(|abort| {
        let error_type = if let Some(status) = abort.http_status {
            ErrorType::HttpStatus(status)
        } else if let Some(status) = &abort.grpc_status {
            ErrorType::GrpcStatus(status.clone())
        } else {
            reporter.report(TranslateProblem::Unsupported {
                path: format!("{path}.fault.abort.http2Error"),
                reason: "not supported; abort ignored".to_owned(),
            });
            return None;
        };
        Some(Abort {
            error_type: Some(error_type),
            percentage: percent(&abort.percentage, None),
        })
    });
    Ok(wp::HttpFaultInjection { delay, abort })
}

fn cors(c: &net::CorsPolicy, path: &str) -> Result<wp::CorsPolicy, TranslateProblem> {
    use wp::string_match::MatchType;
    let mut allow_origins: Vec<wp::StringMatch> =
        c.allow_origins.iter().map(string_match).collect();
    // `allowOrigin` is the deprecated exact-match list.
    allow_origins.extend(c.allow_origin.iter().map(|o| wp::StringMatch {
        match_type: Some(MatchType::Exact(o.clone())),
    }));
    Ok(wp::CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: optional_duration(c.max_age.as_ref(), &format!("{path}.corsPolicy.maxAge"))?,
        allow_credentials: c.allow_credentials,
    })
}

/// An AuthorizationPolicy for this waypoint: `targetRefs` naming the waypoint Gateway (all its
/// services) or Services it serves (those services only).
fn l7_policy(
    config: &TranslateConfig,
    policy: &AuthorizationPolicy,
    waypoint: &WaypointRef,
    served: &[&Service],
    reporter: &mut Reporter<'_>,
) -> Option<wp::L7Authorization> {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
    let refs = policy
        .spec
        .target_ref
        .iter()
        .chain(&policy.spec.target_refs);
    let mut whole_waypoint = false;
    let mut target_services = BTreeSet::new();
    for target in refs {
        // A policy only targets objects of its own namespace.
        if target
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            continue;
        }
        let group = target.group.as_deref().unwrap_or("");
        match target.kind.as_str() {
            "Gateway"
                if group == "gateway.networking.k8s.io"
                    && namespace == waypoint.namespace
                    && target.name == waypoint.name =>
            {
                whole_waypoint = true;
            }
            "Service"
                if (group.is_empty() || group == "core")
                    && served
                        .iter()
                        .any(|s| meta_key(&s.metadata) == (namespace, target.name.as_str())) =>
            {
                target_services.insert(config.service_hostname(namespace, &target.name));
            }
            _ => {}
        }
    }
    if !whole_waypoint && target_services.is_empty() {
        return None;
    }
    let action = match policy.spec.action.unwrap_or_default() {
        AuthorizationAction::Allow => wp::l7_authorization::Action::Allow,
        AuthorizationAction::Deny => wp::l7_authorization::Action::Deny,
        AuthorizationAction::Audit => wp::l7_authorization::Action::Audit,
        AuthorizationAction::Custom => {
            reporter.report(TranslateProblem::UnsupportedAction {
                action: "CUSTOM",
                proxy: "waypoints",
            });
            return None;
        }
    };
    let rules = policy
        .spec
        .rules
        .iter()
        .flatten()
        .map(|rule| wp::Rule {
            from: rule
                .from
                .iter()
                .flatten()
                .map(|from| wp::rule::From {
                    source: from.source.as_ref().map(|s| wp::Source {
                        principals: s.principals.clone(),
                        request_principals: s.request_principals.clone(),
                        namespaces: s.namespaces.clone(),
                        ip_blocks: s.ip_blocks.clone(),
                        not_principals: s.not_principals.clone(),
                        not_request_principals: s.not_request_principals.clone(),
                        not_namespaces: s.not_namespaces.clone(),
                        not_ip_blocks: s.not_ip_blocks.clone(),
                        remote_ip_blocks: s.remote_ip_blocks.clone(),
                        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                    }),
                })
                .collect(),
            to: rule
                .to
                .iter()
                .flatten()
                .map(|to| wp::rule::To {
                    operation: to.operation.as_ref().map(|o| wp::Operation {
                        hosts: o.hosts.clone(),
                        ports: authorization::ports(&o.ports),
                        methods: o.methods.clone(),
                        paths: o.paths.clone(),
                        not_hosts: o.not_hosts.clone(),
                        not_ports: authorization::ports(&o.not_ports),
                        not_methods: o.not_methods.clone(),
                        not_paths: o.not_paths.clone(),
                    }),
                })
                .collect(),
            when: rule
                .when
                .iter()
                .map(|c| wp::Condition {
                    key: c.key.clone(),
                    values: c.values.clone(),
                    not_values: c.not_values.clone(),
                })
                .collect(),
        })
        .collect();
    Some(wp::L7Authorization {
        name: policy.metadata.name.clone().unwrap_or_default(),
        namespace: namespace.to_owned(),
        action: action as i32,
        rules,
        dry_run: policy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("istio.io/dry-run"))
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        target_services: target_services.into_iter().collect(),
    })
}
