//! The clusters routes name: the DestinationRule that applies to each (merged as Istio merges
//! them), its traffic policy in the waypoint's form, and the endpoints behind it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use weft_istio::defaults::{DEFAULT_CONSECUTIVE_5XX, DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE};
use weft_proto::waypoint as wp;

use super::{
    ClusterKey, Compiler, age_key, duration, exported_to, port_number, specificity,
    tcp_service_ports,
};
use crate::model::networking::{
    self as net, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection,
    Subset, TrafficPolicy, WorkloadEntry,
};
use crate::model::{DurationString, ResourceKind};
use crate::translate::TranslateProblem;
use crate::translate::agent::locality::{split_locality, topology_labels, workload_network};
use crate::translate::resolve::{
    self, host_covers, labels, name_of, namespace_of, qualify_host, selects, service_selects,
    service_waypoint,
};

/// The DestinationRule(s) that apply to a host, merged as Istio merges rules for the same host
/// in one namespace: the first (oldest) traffic policy, subsets by first definition.
pub(super) struct MergedRule<'a> {
    first: &'a DestinationRule,
    traffic_policy: Option<&'a TrafficPolicy>,
    subsets: Vec<&'a Subset>,
}

impl MergedRule<'_> {
    fn key(&self) -> String {
        format!(
            "{}/{}",
            namespace_of(&self.first.metadata),
            name_of(&self.first.metadata)
        )
    }

    pub(super) fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().copied().find(|s| s.name == name)
    }
}

impl<'a> Compiler<'a, '_> {
    /// The DestinationRule(s) for `host` as the waypoint sees them: Istio looks in the
    /// waypoint's namespace, then the service's, then the root namespace (then any other that
    /// exports to it); the most specific host wins in that namespace, and rules for that exact
    /// host there are merged.
    pub(super) fn destination_rule(&self, host: &str) -> Option<MergedRule<'a>> {
        let viewer = self.waypoint.namespace.as_str();
        let service_namespace = match self.services.get(host) {
            Some(service) => Some(namespace_of(&service.metadata)),
            None => self
                .entries
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, e)| namespace_of(&e.metadata)),
        };
        let rank = |namespace: &str| {
            if namespace == viewer {
                0
            } else if Some(namespace) == service_namespace {
                1
            } else if namespace == self.settings.root_namespace {
                2
            } else {
                3
            }
        };
        let mut candidates: Vec<(&'a DestinationRule, String)> = self
            .index
            .destination_rules
            .values()
            .filter(|dr| {
                exported_to(&dr.spec.export_to, namespace_of(&dr.metadata), viewer)
                    && dr
                        .spec
                        .workload_selector
                        .as_ref()
                        .is_none_or(|s| s.match_labels.is_empty())
            })
            .filter_map(|dr| {
                let qualified =
                    qualify_host(self.settings, &dr.spec.host, namespace_of(&dr.metadata));
                host_covers(&qualified, host).then_some((dr, qualified))
            })
            .collect();
        candidates.sort_by(|(a, ha), (b, hb)| {
            rank(namespace_of(&a.metadata))
                .cmp(&rank(namespace_of(&b.metadata)))
                .then_with(|| namespace_of(&a.metadata).cmp(namespace_of(&b.metadata)))
                .then_with(|| specificity(hb, host).cmp(&specificity(ha, host)))
                .then_with(|| age_key(&a.metadata).cmp(&age_key(&b.metadata)))
        });
        let (first, first_host) = candidates.first()?.clone();
        let mut merged = MergedRule {
            first,
            traffic_policy: None,
            subsets: Vec::new(),
        };
        for (dr, _) in candidates.iter().filter(|(dr, h)| {
            h == &first_host && namespace_of(&dr.metadata) == namespace_of(&first.metadata)
        }) {
            if merged.traffic_policy.is_none() {
                merged.traffic_policy = dr.spec.traffic_policy.as_ref();
            }
            for subset in &dr.spec.subsets {
                if merged.subset(&subset.name).is_none() {
                    merged.subsets.push(subset);
                }
            }
        }
        Some(merged)
    }

    pub(super) fn cluster(&mut self, key: &ClusterKey) -> wp::Cluster {
        let mut cluster = wp::Cluster {
            name: key.name(),
            host: key.host.clone(),
            subset: key.subset.clone(),
            port: key.port,
            ..Default::default()
        };
        let rule = self.destination_rule(&key.host);
        let subset = rule.as_ref().and_then(|r| {
            (!key.subset.is_empty())
                .then(|| r.subset(&key.subset))
                .flatten()
        });
        let subset_labels = subset.map(|s| s.labels.clone()).unwrap_or_default();
        let external =
            self.entry_ports(&key.host).is_some() && !self.services.contains_key(&key.host);
        let mut locality_setting = None;
        let mut outlier_detection = false;
        let mut zone_aware = false;
        let mut http_settings = None;
        if let Some(rule) = &rule {
            cluster.destination_rule = rule.key();
            let effective = effective_policy(
                rule.traffic_policy,
                subset.and_then(|s| s.traffic_policy.as_ref()),
                key.port,
            );
            outlier_detection = effective.outlier_detection.is_some();
            locality_setting = effective
                .load_balancer
                .as_ref()
                .and_then(|lb| lb.locality_lb_setting.clone());
            zone_aware = effective
                .load_balancer
                .as_ref()
                .is_some_and(|lb| lb.zone_aware_lb_setting.is_some());
            let (policy, notes) = effective.compile();
            // SIMPLE and MUTUAL go to every endpoint: over TCP outside the mesh, inside the
            // HBONE tunnel to a mesh endpoint (Istio's waypoint wraps the rule's TLS socket in
            // the internal upstream the tunnel carries).
            cluster.tls = effective
                .tls
                .as_ref()
                .and_then(super::entries::upstream_tls);
            cluster.load_balancer = policy.0;
            cluster.connection_pool = policy.1;
            cluster.outlier_detection = policy.2;
            cluster.retry_budget = effective.retry_budget.as_ref().map(retry_budget);
            cluster.proxy_protocol = effective.proxy_protocol.as_ref().map(proxy_protocol);
            http_settings = effective.connection_pool.and_then(|pool| pool.http);
            cluster.tcp_tunneling = tunnel::tcp_tunneling(rule, &key.subset);
            let meta = rule.first.metadata.clone();
            for note in notes {
                self.report(ResourceKind::DestinationRule, &meta, note);
            }
        }
        if external {
            cluster.endpoints = self.entry_endpoints(&key.host, key.port, &subset_labels);
            cluster.dynamic_dns = self.entry_dynamic_dns(&key.host);
        }
        if let Some(service) = self.services.get(&key.host).copied() {
            cluster.endpoints = self.endpoints(service, key.port, &subset_labels);
            if let Some(other) = service_waypoint(self.index, service)
                && other != self.waypoint
            {
                if self.gateway && resolve::ingress_uses_waypoint(self.index, service) {
                    cluster.endpoints = self.through_waypoint(service, key.port, &other);
                } else {
                    let problem = TranslateProblem::OtherWaypoint {
                        from: self.waypoint.to_string(),
                        to: other.to_string(),
                    };
                    self.report(ResourceKind::Service, &service.metadata, problem);
                }
            }
        }
        // A zone-aware setting wins over every locality setting (istiod's
        // `GetEffectiveLbSetting`), and istiod's waypoints skip it: no priorities at all.
        cluster.locality_lb = (!zone_aware)
            .then(|| {
                super::locality::locality_load_balancing(
                    locality_setting.as_ref(),
                    self.host_distribution(&key.host),
                    self.settings.mesh.locality_lb_setting().as_ref(),
                    outlier_detection,
                )
            })
            .flatten();
        cluster.subset_labels = subset_labels;
        cluster.set_upstream_protocol(upstream_protocol::upstream_protocol(
            http_settings.as_ref(),
            self.declared_protocol(&key.host, key.port),
            self.settings.mesh.h2_upgrade(),
            self.gateway,
        ));
        cluster
    }

    /// A gateway's way to `service` through its `waypoint`: an HBONE tunnel to each of the
    /// waypoint's pods, CONNECT to the service's VIP and `port`, as a node agent sends a
    /// client's connection; the waypoint then routes and applies the service's policies.
    fn through_waypoint(
        &self,
        service: &Service,
        port: u32,
        waypoint: &resolve::WaypointRef,
    ) -> Vec<wp::Endpoint> {
        let Some(vip) = resolve::service_vips(service).into_iter().next() else {
            return Vec::new();
        };
        resolve::waypoint_pods(self.index, waypoint)
            .filter(|pod| !resolve::pod_terminated(pod))
            .filter_map(|pod| {
                let ip = resolve::pod_ips(pod).into_iter().next()?;
                let (locality, topology_labels) =
                    super::locality::pod_topology(self.index, self.settings, pod);
                Some(wp::Endpoint {
                    address: vip.to_string(),
                    port,
                    identity: self.pod_identity(pod),
                    tunnel: wp::EndpointTunnel::Hbone as i32,
                    healthy: resolve::pod_healthy(pod),
                    tunnel_address: ip.to_string(),
                    locality,
                    topology_labels,
                    ..Default::default()
                })
            })
            .collect()
    }

    fn endpoints(
        &self,
        service: &Service,
        port: u32,
        subset_labels: &BTreeMap<String, String>,
    ) -> Vec<wp::Endpoint> {
        let Some(service_port) = tcp_service_ports(service).find(|p| port_number(p) == port) else {
            return Vec::new();
        };
        let mut endpoints: Vec<wp::Endpoint> =
            crate::index::in_namespace(&self.index.pods, namespace_of(&service.metadata))
                .filter(|pod| {
                    service_selects(service, pod)
                        && !resolve::pod_terminated(pod)
                        && selects(subset_labels, &labels(&pod.metadata))
                })
                .flat_map(|pod| self.pod_endpoints(pod, service_port))
                .collect();
        endpoints.extend(self.entry_endpoints_of(service, service_port, subset_labels));
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints
    }

    /// The WorkloadEntries a Service selects, as endpoints next to its pods (the agents list
    /// them among its endpoints too): at their address (or name, resolved by the waypoint), the
    /// target port as [`resolve::workload_entry_target_port`] maps it, HBONE or plain TCP as
    /// the agents reach them, weighted by `weight`.
    fn entry_endpoints_of(
        &self,
        service: &Service,
        port: &ServicePort,
        subset_labels: &BTreeMap<String, String>,
    ) -> Vec<wp::Endpoint> {
        let namespace = namespace_of(&service.metadata);
        crate::index::in_namespace(&self.index.workload_entries, namespace)
            .filter_map(|entry| {
                let entry_labels = resolve::workload_entry_labels(entry);
                if !resolve::service_selects_labels(service, namespace, &entry_labels)
                    || !selects(subset_labels, &entry_labels)
                {
                    return None;
                }
                let target = resolve::workload_entry_target_port(port, &entry.spec)?;
                self.workload_entry_endpoint(entry, entry_labels, target)
            })
            .collect()
    }

    /// A WorkloadEntry as an endpoint on port `target`: at its address (or name, resolved by
    /// the waypoint), HBONE or plain TCP as the agents reach it, weighted by `weight`. `None`
    /// without an address the waypoint can reach, or with a port that is none.
    pub(super) fn workload_entry_endpoint(
        &self,
        entry: &WorkloadEntry,
        entry_labels: BTreeMap<String, String>,
        target: u32,
    ) -> Option<wp::Endpoint> {
        u16::try_from(target).ok().filter(|p| *p > 0)?;
        let namespace = namespace_of(&entry.metadata);
        let address = entry.spec.address.clone().filter(|a| !a.is_empty())?;
        if address.starts_with("unix://") {
            return None;
        }
        let (address, hostname) = match address.parse::<std::net::IpAddr>() {
            Ok(_) => (address, String::new()),
            Err(_) => (String::new(), address),
        };
        let (hbone, _) = resolve::workload_entry_tunnel(entry);
        let locality = split_locality(entry.spec.locality.as_deref());
        let network = workload_network(
            self.index,
            &self.settings.root_namespace,
            &entry.metadata,
            entry.spec.network.as_deref(),
        );
        let topology_labels =
            topology_labels(locality.as_ref(), &self.settings.cluster_id, None, network);
        Some(wp::Endpoint {
            locality: super::locality::to_proto(locality),
            topology_labels,
            address,
            hostname,
            port: target,
            identity: self.entry_identity(entry),
            workload_uid: crate::translate::agent::workload_entry_uid(
                &self.settings.cluster_id,
                namespace,
                name_of(&entry.metadata),
            ),
            workload_name: super::workloads::entry_workload_name(entry, &entry_labels),
            labels: entry_labels,
            tunnel: if hbone {
                wp::EndpointTunnel::Hbone
            } else {
                wp::EndpointTunnel::None
            } as i32,
            healthy: true,
            weight: entry.spec.weight.unwrap_or(0),
            tunnel_address: String::new(),
        })
    }

    fn pod_endpoints(&self, pod: &Pod, port: &ServicePort) -> Vec<wp::Endpoint> {
        match resolve::target_port(port, pod) {
            Some(target) => self.pod_endpoints_on(pod, target),
            None => Vec::new(),
        }
    }

    /// A pod's endpoints (one per address) on port `target`; none for a port that is none.
    pub(super) fn pod_endpoints_on(&self, pod: &Pod, target: u32) -> Vec<wp::Endpoint> {
        if !u16::try_from(target).is_ok_and(|p| p > 0) {
            return Vec::new();
        }
        let tunnel = if resolve::enrolled(self.index, pod) {
            wp::EndpointTunnel::Hbone
        } else {
            wp::EndpointTunnel::None
        };
        let (locality, topology_labels) =
            super::locality::pod_topology(self.index, self.settings, pod);
        resolve::pod_ips(pod)
            .into_iter()
            .map(|ip| wp::Endpoint {
                locality: locality.clone(),
                topology_labels: topology_labels.clone(),
                address: ip.to_string(),
                port: target,
                identity: self.pod_identity(pod),
                labels: labels(&pod.metadata),
                workload_uid: resolve::pod_uid(&self.settings.cluster_id, pod),
                workload_name: resolve::workload_name(pod),
                tunnel: tunnel as i32,
                healthy: resolve::pod_healthy(pod),
                weight: 0,
                hostname: String::new(),
                tunnel_address: String::new(),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic policies.

/// Istio's `applyRetryBudget`: `percent` 20 when unset, `minRetryConcurrency` 3 when unset or
/// 0 (`budgetInterval` is reported not applied).
fn retry_budget(budget: &net::RetryBudget) -> wp::RetryBudget {
    wp::RetryBudget {
        percent: budget.percent.unwrap_or(20.0),
        min_retry_concurrency: budget.min_retry_concurrency.filter(|n| *n > 0).unwrap_or(3),
    }
}

/// Istio's `applyUpstreamProxyProtocol`: the version as Envoy's `ProxyProtocolConfig` takes
/// it, V1 when unset.
fn proxy_protocol(setting: &net::ProxyProtocol) -> wp::UpstreamProxyProtocol {
    use wp::upstream_proxy_protocol::Version;
    let version = match setting.version {
        None | Some(net::ProxyProtocolVersion::V1) => Version::V1,
        Some(net::ProxyProtocolVersion::V2) => Version::V2,
    };
    wp::UpstreamProxyProtocol {
        version: version as i32,
    }
}

/// A cluster's settings before translation.
#[derive(Debug, Default, Clone)]
pub(super) struct EffectivePolicy {
    pub(super) load_balancer: Option<LoadBalancerSettings>,
    pub(super) connection_pool: Option<ConnectionPoolSettings>,
    pub(super) outlier_detection: Option<OutlierDetection>,
    pub(super) tls: Option<net::ClientTlsSettings>,
    /// Port-level settings have none: the rule's or the subset's stays.
    pub(super) retry_budget: Option<net::RetryBudget>,
    /// As `retry_budget`.
    pub(super) proxy_protocol: Option<net::ProxyProtocol>,
}

impl EffectivePolicy {
    pub(super) fn of(policy: &TrafficPolicy) -> Self {
        Self {
            load_balancer: policy.load_balancer.clone(),
            connection_pool: policy.connection_pool.clone(),
            outlier_detection: policy.outlier_detection.clone(),
            tls: policy.tls.clone(),
            retry_budget: policy.retry_budget.clone(),
            proxy_protocol: policy.proxy_protocol.clone(),
        }
    }

    /// Port-level settings replace the destination-level ones entirely: Istio documents that
    /// they are not inherited field by field, and omitted ones fall back to the defaults.
    fn with_port_level(mut self, policy: &TrafficPolicy, port: u32) -> Self {
        if let Some(port_level) = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().map(|s| s.number) == Some(port))
        {
            self = Self {
                load_balancer: port_level.load_balancer.clone(),
                connection_pool: port_level.connection_pool.clone(),
                outlier_detection: port_level.outlier_detection.clone(),
                tls: port_level.tls.clone(),
                retry_budget: self.retry_budget,
                proxy_protocol: self.proxy_protocol,
            };
        }
        self
    }
}

/// Istio's `MergeTrafficPolicy`: the rule's policy (with its port-level settings for `port`),
/// overridden field by field by the subset's, then by the subset's port-level settings.
pub(super) fn effective_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u32,
) -> EffectivePolicy {
    let mut merged = top
        .map(|p| EffectivePolicy::of(p).with_port_level(p, port))
        .unwrap_or_default();
    if let Some(subset) = subset {
        if subset.load_balancer.is_some() {
            merged.load_balancer = subset.load_balancer.clone();
        }
        if subset.connection_pool.is_some() {
            merged.connection_pool = subset.connection_pool.clone();
        }
        if subset.outlier_detection.is_some() {
            merged.outlier_detection = subset.outlier_detection.clone();
        }
        if subset.tls.is_some() {
            merged.tls = subset.tls.clone();
        }
        if subset.retry_budget.is_some() {
            merged.retry_budget = subset.retry_budget.clone();
        }
        if subset.proxy_protocol.is_some() {
            merged.proxy_protocol = subset.proxy_protocol.clone();
        }
        merged = merged.with_port_level(subset, port);
    }
    merged
}

type CompiledPolicy = (
    Option<wp::LoadBalancerSettings>,
    Option<wp::ConnectionPoolSettings>,
    Option<wp::OutlierDetection>,
);

impl EffectivePolicy {
    /// The proto form, with notes on what waypoints leave out.
    pub(super) fn compile(&self) -> (CompiledPolicy, Vec<TranslateProblem>) {
        let mut notes = Vec::new();
        let mut note = |path: &str, reason: &str| {
            notes.push(TranslateProblem::Unsupported {
                path: format!("spec.trafficPolicy.{path}"),
                reason: reason.to_owned(),
            })
        };
        let mut optional_duration = |value: &Option<DurationString>, path: &str| {
            value.as_ref().and_then(|v| match duration(v) {
                Ok(d) => Some(d),
                Err(reason) => {
                    note(path, &format!("{:?}: {reason}; ignored", v.0));
                    None
                }
            })
        };
        let pool = self
            .connection_pool
            .as_ref()
            .map(|pool| wp::ConnectionPoolSettings {
                tcp: pool
                    .tcp
                    .as_ref()
                    .map(|tcp| wp::connection_pool_settings::TcpSettings {
                        max_connections: tcp.max_connections.unwrap_or(0),
                        connect_timeout: optional_duration(
                            &tcp.connect_timeout,
                            "connectionPool.tcp.connectTimeout",
                        ),
                        max_connection_duration: optional_duration(
                            &tcp.max_connection_duration,
                            "connectionPool.tcp.maxConnectionDuration",
                        ),
                        idle_timeout: optional_duration(
                            &tcp.idle_timeout,
                            "connectionPool.tcp.idleTimeout",
                        ),
                        tcp_keepalive: tcp.tcp_keepalive.as_ref().map(|k| {
                            wp::connection_pool_settings::TcpKeepalive {
                                probes: k.probes.unwrap_or(0),
                                time: optional_duration(
                                    &k.time,
                                    "connectionPool.tcp.tcpKeepalive.time",
                                ),
                                interval: optional_duration(
                                    &k.interval,
                                    "connectionPool.tcp.tcpKeepalive.interval",
                                ),
                            }
                        }),
                    }),
                http: pool
                    .http
                    .as_ref()
                    .map(|http| wp::connection_pool_settings::HttpSettings {
                        http1_max_pending_requests: http.http1_max_pending_requests.unwrap_or(0),
                        http2_max_requests: http.http2_max_requests.unwrap_or(0),
                        max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
                        max_retries: http.max_retries.unwrap_or(0),
                        idle_timeout: optional_duration(
                            &http.idle_timeout,
                            "connectionPool.http.idleTimeout",
                        ),
                        max_concurrent_streams: http.max_concurrent_streams.unwrap_or(0),
                        http2_keep_alive: http.http2_keep_alive.as_ref().and_then(|k| {
                            // Istio requires both; without either the rule sets no pings.
                            let interval = optional_duration(
                                &k.interval,
                                "connectionPool.http.http2KeepAlive.interval",
                            )?;
                            let timeout = optional_duration(
                                &k.timeout,
                                "connectionPool.http.http2KeepAlive.timeout",
                            )?;
                            Some(wp::connection_pool_settings::Http2KeepAlive {
                                interval: Some(interval),
                                timeout: Some(timeout),
                            })
                        }),
                    }),
            });
        let outlier = self.outlier_detection.as_ref().map(|o| {
            // Istio: the deprecated `consecutiveErrors` counts gateway errors (502, 503, 504)
            // and turns the 5xx count off; without either, Envoy's default of 5 consecutive
            // 5xx applies.
            let split = o.split_external_local_origin_errors == Some(true);
            let legacy = o
                .consecutive_errors
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0);
            wp::OutlierDetection {
                consecutive_gateway_errors: o.consecutive_gateway_errors.or(legacy),
                consecutive_5xx_errors: match (o.consecutive5xx_errors, legacy) {
                    (Some(n), _) => Some(n),
                    (None, Some(_)) => Some(0),
                    (None, None) => Some(DEFAULT_CONSECUTIVE_5XX),
                },
                interval: optional_duration(&o.interval, "outlierDetection.interval"),
                base_ejection_time: optional_duration(
                    &o.base_ejection_time,
                    "outlierDetection.baseEjectionTime",
                ),
                max_ejection_percent: o.max_ejection_percent.unwrap_or(0),
                min_health_percent: o.min_health_percent.unwrap_or(0),
                // Istio's applyOutlierDetection: the local-origin threshold only with the
                // split, and only when above 0 (else Envoy's default of 5).
                split_external_local_origin_errors: split,
                consecutive_local_origin_failures: split.then(|| {
                    o.consecutive_local_origin_failures
                        .filter(|n| *n > 0)
                        .unwrap_or(DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
                }),
                // Istio's applyOutlierDetectionErrorCodes: only these statuses are errors.
                http_error_codes: o.outlier_detection_http_error_codes.clone(),
            }
        });
        let lb = self
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(lb, &mut note));
        ((lb, pool, outlier), notes)
    }
}

fn load_balancer(
    lb: &LoadBalancerSettings,
    note: &mut impl FnMut(&str, &str),
) -> Option<wp::LoadBalancerSettings> {
    use wp::load_balancer_settings::{
        ConsistentHashLb, LbPolicy, SimpleLb,
        consistent_hash_lb::{CookieAttribute, HashKey, HttpCookie, Maglev, RingHash, Table},
    };
    let slow_start = slow_start(lb, note);
    // Istio gives Envoy slow start only with round robin and least request
    // (`applyRoundRobinLoadBalancer`, `applyLeastRequestLoadBalancer`); a hash policy replaces
    // the load balancer config (`ApplyRingHashLoadBalancer`), RANDOM and PASSTHROUGH have none.
    let ignore_slow_start = |policy: &str, note: &mut dyn FnMut(&str, &str)| {
        if let Some((path, _)) = &slow_start {
            note(
                path,
                &format!(
                    "slow start applies to ROUND_ROBIN and LEAST_REQUEST only (as in Istio); ignored with {policy}"
                ),
            );
        }
    };
    if let Some(hash) = &lb.consistent_hash {
        ignore_slow_start("consistentHash", note);
        // Istio's `ApplyRingHashLoadBalancer`: Maglev when set, else a ring whose minimum
        // size comes from `ringHash`, else the deprecated `minimumRingSize` (0 is unset in
        // both), the waypoint's default (1024) otherwise.
        let table = if let Some(maglev) = &hash.maglev {
            Table::Maglev(Maglev {
                table_size: maglev.table_size.unwrap_or(0),
            })
        } else {
            let minimum_ring_size = match &hash.ring_hash {
                Some(ring) => ring.minimum_ring_size.unwrap_or(0),
                None => hash.minimum_ring_size.unwrap_or(0),
            };
            Table::RingHash(RingHash { minimum_ring_size })
        };
        let key = if let Some(header) = &hash.http_header_name {
            HashKey::HttpHeaderName(header.clone())
        } else if let Some(cookie) = &hash.http_cookie {
            HashKey::HttpCookie(HttpCookie {
                name: cookie.name.clone(),
                path: cookie.path.clone().unwrap_or_default(),
                ttl: cookie.ttl.as_ref().and_then(|t| duration(t).ok()),
                // Istio's `ConsistentHashToHashPolicy` copies them in order, an unset value
                // as empty (an attribute without `=value`).
                attributes: cookie
                    .attributes
                    .iter()
                    .map(|a| CookieAttribute {
                        name: a.name.clone(),
                        value: a.value.clone().unwrap_or_default(),
                    })
                    .collect(),
            })
        } else if hash.use_source_ip == Some(true) {
            HashKey::UseSourceIp(true)
        } else if let Some(name) = &hash.http_query_parameter_name {
            HashKey::HttpQueryParameterName(name.clone())
        } else {
            note(
                "loadBalancer.consistentHash",
                "no hash key; the default load balancer is used",
            );
            return None;
        };
        return Some(wp::LoadBalancerSettings {
            lb_policy: Some(LbPolicy::ConsistentHash(ConsistentHashLb {
                hash_key: Some(key),
                table: Some(table),
            })),
            slow_start: None,
        });
    }
    let simple = match lb.simple {
        // Istio's default (`applySimpleDefaultLoadBalancer`) is least request, slow start
        // included.
        None if slow_start.is_some() => SimpleLb::Unspecified,
        None => return None,
        Some(net::SimpleLb::Unspecified) => SimpleLb::Unspecified,
        Some(net::SimpleLb::LeastConn) => SimpleLb::LeastConn,
        Some(net::SimpleLb::RoundRobin) => SimpleLb::RoundRobin,
        Some(net::SimpleLb::LeastRequest) => SimpleLb::LeastRequest,
        Some(net::SimpleLb::Random) => {
            ignore_slow_start("RANDOM", note);
            return Some(wp::LoadBalancerSettings {
                lb_policy: Some(LbPolicy::Simple(SimpleLb::Random as i32)),
                slow_start: None,
            });
        }
        Some(net::SimpleLb::Passthrough) => {
            ignore_slow_start("PASSTHROUGH", note);
            note(
                "loadBalancer.simple",
                "PASSTHROUGH needs the original destination, which waypoints do not route to; the default load balancer is used",
            );
            return None;
        }
    };
    Some(wp::LoadBalancerSettings {
        lb_policy: Some(LbPolicy::Simple(simple as i32)),
        slow_start: slow_start.map(|(_, s)| s),
    })
}

/// Istio's `setWarmup` (`warmup`, defaults: 10% minimum weight, aggression 1: a linear ramp),
/// else `setSlowStartConfig` (the deprecated `warmupDurationSecs`: a window alone, Envoy's
/// same defaults) (`cluster_traffic_policy.go`); with the path of the field it came from.
fn slow_start(
    lb: &LoadBalancerSettings,
    note: &mut impl FnMut(&str, &str),
) -> Option<(&'static str, wp::load_balancer_settings::SlowStart)> {
    let (path, window, min_weight_percent, aggression) =
        match (&lb.warmup, &lb.warmup_duration_secs) {
            (Some(warmup), _) => (
                "loadBalancer.warmup",
                warmup.duration.as_ref()?,
                warmup.minimum_percent,
                warmup.aggression,
            ),
            (None, Some(window)) => ("loadBalancer.warmupDurationSecs", window, None, None),
            (None, None) => return None,
        };
    let window = match duration(window) {
        Ok(window) if window.seconds > 0 || window.nanos > 0 => window,
        Ok(_) => {
            note(path, "a zero window is no slow start; ignored");
            return None;
        }
        Err(reason) => {
            note(path, &format!("{:?}: {reason}; ignored", window.0));
            return None;
        }
    };
    Some((
        path,
        wp::load_balancer_settings::SlowStart {
            window: Some(window),
            min_weight_percent: min_weight_percent.unwrap_or(DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT),
            aggression: aggression.unwrap_or(DEFAULT_SLOW_START_AGGRESSION),
        },
    ))
}

/// Istio's `setWarmup` defaults, which are Envoy's.
const DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT: f64 = 10.0;
const DEFAULT_SLOW_START_AGGRESSION: f64 = 1.0;

mod tunnel;

#[cfg(test)]
mod tests;
mod upstream_protocol;
