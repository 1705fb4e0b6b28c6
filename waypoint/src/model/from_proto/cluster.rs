//! Clusters: endpoints and the DestinationRule's traffic policy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_proto::waypoint as proto;

use super::locality::LocalInstance;
use super::{header_name, identity, ip, optional_duration, port, tunnel, workload_info};
use crate::model::{
    Cluster, ConfigError, ConnectionLimits, CookieTemplate, DEFAULT_BASE_EJECTION_TIME,
    DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE, DEFAULT_MAGLEV_TABLE_SIZE,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MINIMUM_RING_SIZE, DEFAULT_OUTLIER_INTERVAL, Endpoint,
    HashCookie, HashKey, HashTable, LoadBalancer, MAGLEV_TABLE_LIMIT, MAXIMUM_RING_SIZE,
    OutlierPolicy, ResolvedNames, RetryBudget, SlowStart, UpstreamProtocol, WorkloadInfo, invalid,
};
use crate::upstream::{OriginatedTls, OriginationCredentials, ProxyProtocolVersion, TcpTunneling};

fn load_balancer(
    lb: Option<&proto::LoadBalancerSettings>,
    context: &str,
) -> Result<LoadBalancer, ConfigError> {
    use proto::load_balancer_settings::consistent_hash_lb::HashKey as H;
    use proto::load_balancer_settings::{LbPolicy, SimpleLb};
    Ok(match lb.and_then(|l| l.lb_policy.as_ref()) {
        None => LoadBalancer::LeastRequest,
        Some(LbPolicy::Simple(simple)) => match SimpleLb::try_from(*simple) {
            Ok(SimpleLb::RoundRobin) => LoadBalancer::RoundRobin,
            Ok(SimpleLb::Random) => LoadBalancer::Random,
            Ok(SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest) => {
                LoadBalancer::LeastRequest
            }
            Ok(SimpleLb::Passthrough) | Err(_) => {
                return Err(invalid(
                    context,
                    format!("unsupported load balancer {simple}"),
                ));
            }
        },
        Some(LbPolicy::ConsistentHash(hash)) => LoadBalancer::ConsistentHash(
            match &hash.hash_key {
                Some(H::HttpHeaderName(name)) => HashKey::Header(header_name(name, context)?),
                Some(H::HttpCookie(cookie)) => HashKey::Cookie(hash_cookie(cookie, context)?),
                Some(H::UseSourceIp(true)) => HashKey::SourceIp,
                Some(H::HttpQueryParameterName(name)) => HashKey::QueryParameter(name.clone()),
                Some(H::UseSourceIp(false)) | None => {
                    return Err(invalid(context, "consistentHash without a hash key"));
                }
            },
            hash_table(hash.table.as_ref(), context)?,
        ),
    })
}

/// A cookie hash key. A `ttl` (any, 0 included) makes a request without the cookie get one, as
/// Envoy's `HashPolicyImpl` reads `has_ttl()`; a generated cookie's `Set-Cookie` must be a
/// header value, which is checked here with a value of the generated kind.
fn hash_cookie(
    cookie: &proto::load_balancer_settings::consistent_hash_lb::HttpCookie,
    context: &str,
) -> Result<HashCookie, ConfigError> {
    if cookie.name.is_empty() {
        return Err(invalid(context, "httpCookie without a name"));
    }
    let generated = cookie.ttl.as_ref().map(|ttl| CookieTemplate {
        max_age: ttl.seconds,
        path: cookie.path.clone(),
        attributes: cookie
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect(),
    });
    let key = HashCookie {
        name: cookie.name.clone(),
        generated,
    };
    if let Some(template) = &key.generated
        && http::HeaderValue::try_from(template.set_cookie(&key.name, "0123456789abcdef")).is_err()
    {
        return Err(invalid(
            context,
            format!(
                "httpCookie {:?}: its name, path or attributes cannot be written in a Set-Cookie header",
                key.name
            ),
        ));
    }
    Ok(key)
}

/// The consistent hash's table, with Envoy's defaults for sizes left 0, and refused where
/// Envoy refuses the cluster: a Maglev table whose size is not a prime (below Istio's bound),
/// a ring whose minimum size is above the maximum.
fn hash_table(
    table: Option<&proto::load_balancer_settings::consistent_hash_lb::Table>,
    context: &str,
) -> Result<HashTable, ConfigError> {
    use proto::load_balancer_settings::consistent_hash_lb::Table;
    let or_default = |size: u64, default: u64| if size == 0 { default } else { size };
    match table {
        Some(Table::Maglev(maglev)) => {
            let table_size = or_default(maglev.table_size, DEFAULT_MAGLEV_TABLE_SIZE);
            if table_size >= MAGLEV_TABLE_LIMIT || !is_prime(table_size) {
                return Err(invalid(
                    context,
                    format!(
                        "maglev.tableSize {table_size} must be a prime number below {MAGLEV_TABLE_LIMIT}"
                    ),
                ));
            }
            Ok(HashTable::Maglev { table_size })
        }
        Some(Table::RingHash(ring)) if ring.minimum_ring_size > MAXIMUM_RING_SIZE => Err(invalid(
            context,
            format!(
                "ringHash.minimumRingSize {} is above the maximum ring size {MAXIMUM_RING_SIZE}",
                ring.minimum_ring_size
            ),
        )),
        Some(Table::RingHash(ring)) => Ok(HashTable::Ring {
            minimum_size: or_default(ring.minimum_ring_size, DEFAULT_MINIMUM_RING_SIZE),
        }),
        None => Ok(HashTable::Ring {
            minimum_size: DEFAULT_MINIMUM_RING_SIZE,
        }),
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// Envoy's bounds (`SlowStartConfig`): a window, a percentage, and an aggression above 0 (Envoy
/// falls back to 1 at run time for a bad one; here it is refused with the configuration).
fn slow_start(
    s: &proto::load_balancer_settings::SlowStart,
    context: &str,
) -> Result<SlowStart, ConfigError> {
    let window = optional_duration(s.window.as_ref(), context)?
        .filter(|w| !w.is_zero())
        .ok_or_else(|| invalid(context, "slow start without a window"))?;
    if !(0.0..=100.0).contains(&s.min_weight_percent) {
        return Err(invalid(
            context,
            format!(
                "slow start minimum weight {}% is not between 0 and 100",
                s.min_weight_percent
            ),
        ));
    }
    if !(s.aggression.is_finite() && s.aggression > 0.0) {
        return Err(invalid(
            context,
            format!("slow start aggression {} is not above 0", s.aggression),
        ));
    }
    Ok(SlowStart {
        window,
        min_weight: s.min_weight_percent / 100.0,
        aggression: s.aggression,
    })
}

fn limit(value: i32) -> Option<usize> {
    usize::try_from(value).ok().filter(|v| *v > 0)
}

fn limits(
    p: Option<&proto::ConnectionPoolSettings>,
    context: &str,
) -> Result<ConnectionLimits, ConfigError> {
    let Some(p) = p else {
        return Ok(ConnectionLimits::default());
    };
    let mut limits = ConnectionLimits::default();
    if let Some(tcp) = &p.tcp {
        limits.max_connections = limit(tcp.max_connections);
        limits.connect_timeout = optional_duration(tcp.connect_timeout.as_ref(), context)?;
        if let Some(k) = &tcp.tcp_keepalive {
            limits.tcp_keepalive = Some(weft_hbone::Keepalive {
                time: optional_duration(k.time.as_ref(), context)?.filter(|d| !d.is_zero()),
                interval: optional_duration(k.interval.as_ref(), context)?.filter(|d| !d.is_zero()),
                probes: (k.probes > 0).then_some(k.probes),
            });
        }
    }
    if let Some(http) = &p.http {
        limits.max_pending_requests = limit(http.http1_max_pending_requests);
        limits.max_requests = limit(http.http2_max_requests);
        limits.max_requests_per_connection = limit(http.max_requests_per_connection);
        limits.max_retries = limit(http.max_retries);
        limits.idle_timeout = optional_duration(http.idle_timeout.as_ref(), context)?;
        if let Some(k) = &http.http2_keep_alive {
            let interval = optional_duration(k.interval.as_ref(), context)?
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid(context, "http2 keepalive without an interval"))?;
            let timeout = optional_duration(k.timeout.as_ref(), context)?
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid(context, "http2 keepalive without a timeout"))?;
            limits.http2_keepalive = Some((interval, timeout));
        }
    }
    Ok(limits)
}

fn outlier(
    o: Option<&proto::OutlierDetection>,
    context: &str,
) -> Result<Option<OutlierPolicy>, ConfigError> {
    let Some(o) = o else { return Ok(None) };
    if o.consecutive_5xx_errors.is_none() && o.consecutive_gateway_errors.is_none() {
        return Ok(None);
    }
    let percent = |v: i32, name: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v <= 100)
            .ok_or_else(|| invalid(context, format!("{name} {v} outside 0..100")))
    };
    Ok(Some(OutlierPolicy {
        consecutive_gateway_errors: o.consecutive_gateway_errors.filter(|v| *v > 0),
        consecutive_5xx: o.consecutive_5xx_errors.filter(|v| *v > 0),
        interval: optional_duration(o.interval.as_ref(), context)?
            .unwrap_or(DEFAULT_OUTLIER_INTERVAL),
        base_ejection_time: optional_duration(o.base_ejection_time.as_ref(), context)?
            .unwrap_or(DEFAULT_BASE_EJECTION_TIME),
        max_ejection_percent: if o.max_ejection_percent == 0 {
            DEFAULT_MAX_EJECTION_PERCENT
        } else {
            percent(o.max_ejection_percent, "maxEjectionPercent")?
        },
        min_health_percent: percent(o.min_health_percent, "minHealthPercent")?,
        local_origin_failures: o.split_external_local_origin_errors.then(|| {
            o.consecutive_local_origin_failures
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
        }),
        http_error_codes: o
            .http_error_codes
            .iter()
            .map(|code| {
                u16::try_from(*code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| {
                        invalid(
                            context,
                            format!("outlierDetectionHttpErrorCodes {code} outside 100..599"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    }))
}

/// The endpoints `e` stands for: itself, or for an endpoint by name (outside the mesh) one
/// per address `names` last resolved it to (none before its first answer).
fn endpoints(
    e: &proto::Endpoint,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
    names: &ResolvedNames,
    context: &str,
) -> Result<Vec<Endpoint>, ConfigError> {
    let identity = identity(&e.identity, context)?;
    let principal: Option<Arc<str>> = identity.as_ref().map(|i| Arc::from(i.to_string()));
    let addresses = if e.hostname.is_empty() {
        vec![ip(&e.address, context)?]
    } else {
        if e.tunnel != proto::EndpointTunnel::None as i32 {
            return Err(invalid(
                context,
                format!("endpoint {} by name must be outside the mesh", e.hostname),
            ));
        }
        names.get(&e.hostname).cloned().unwrap_or_default()
    };
    let port = port(e.port, context)?;
    let tunnel_via = match e.tunnel_address.as_str() {
        "" => None,
        _ if e.tunnel != proto::EndpointTunnel::Hbone as i32 => {
            return Err(invalid(
                context,
                format!("endpoint {}: a tunnel address needs HBONE", e.address),
            ));
        }
        via => Some(ip(via, context)?),
    };
    addresses
        .into_iter()
        .map(|address| {
            let tunnel = tunnel(e.tunnel, identity.as_ref(), "endpoint", &e.address, context)?;
            let workload = workload_info(workloads, address, || WorkloadInfo {
                uid: e.workload_uid.clone(),
                name: e.workload_name.clone(),
                labels: e.labels.clone(),
                identity: identity.clone(),
            });
            Ok(Endpoint {
                address: SocketAddr::new(address, port),
                principal: principal.clone(),
                identity: identity.clone(),
                workload,
                tunnel,
                tunnel_via,
                host: None,
                healthy: e.healthy,
                weight: e.weight.max(1),
                priority: 0,
                locality: 0,
            })
        })
        .collect()
}

pub(super) fn cluster(
    c: &proto::Cluster,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
    names: &ResolvedNames,
    credentials: &OriginationCredentials,
    local: Option<&LocalInstance>,
) -> Result<Cluster, ConfigError> {
    let context = format!("cluster {}", c.name);
    let context = context.as_str();
    if c.name.is_empty() {
        return Err(invalid("cluster", "empty name"));
    }
    let priorities = match &c.locality_lb {
        Some(lb) => super::locality::priorities(lb, local, &c.endpoints),
        None => vec![0; c.endpoints.len()],
    };
    let weighed = c
        .locality_lb
        .as_ref()
        .and_then(|lb| super::locality::locality_weights(lb, local, &c.endpoints));
    let localities: Vec<Option<u32>> = match &weighed {
        Some(weighed) => weighed.of_endpoint.clone(),
        None => vec![Some(0); c.endpoints.len()],
    };
    let endpoints = c
        .endpoints
        .iter()
        .zip(&priorities)
        .zip(&localities)
        // An endpoint in a locality `distribute` gives no weight is left out, as istiod does.
        .filter_map(|((e, priority), locality)| Some((e, priority, (*locality)?)))
        .map(|(e, priority, locality)| {
            let mut expanded = endpoints(e, workloads, names, context)?;
            for endpoint in &mut expanded {
                endpoint.priority = *priority;
                endpoint.locality = locality;
            }
            Ok(expanded)
        })
        .collect::<Result<Vec<_>, ConfigError>>()?
        .into_iter()
        .flatten()
        .collect();
    let load_balancer = load_balancer(c.load_balancer.as_ref(), context)?;
    let slow_start = match load_balancer {
        LoadBalancer::RoundRobin | LoadBalancer::LeastRequest => c
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.slow_start.as_ref())
            .map(|s| slow_start(s, context))
            .transpose()?,
        LoadBalancer::Random | LoadBalancer::ConsistentHash(..) => None,
    };
    Ok(Cluster {
        priorities: priorities.iter().max().map_or(1, |p| p + 1),
        locality_weights: weighed.map(|w| w.weights).unwrap_or_default(),
        name: c.name.clone(),
        host: c.host.clone(),
        service: Arc::new(crate::model::service_of_host(&c.host)),
        subset: c.subset.clone(),
        port: port(c.port, context)?,
        endpoints,
        hostnames: c
            .endpoints
            .iter()
            .filter(|e| !e.hostname.is_empty())
            .map(|e| e.hostname.clone())
            .collect(),
        tls: c
            .tls
            .as_ref()
            .map(|tls| originated_tls(c, tls, credentials).map_err(|e| invalid(context, e)))
            .transpose()?,
        load_balancer,
        slow_start,
        limits: ConnectionLimits {
            retry_budget: c
                .retry_budget
                .as_ref()
                .map(|b| retry_budget(b, context))
                .transpose()?,
            ..limits(c.connection_pool.as_ref(), context)?
        },
        outlier: outlier(c.outlier_detection.as_ref(), context)?,
        destination_rule: c.destination_rule.clone(),
        dynamic_dns: c.dynamic_dns,
        proxy_protocol: c
            .proxy_protocol
            .as_ref()
            .map(|p| proxy_protocol(p, context))
            .transpose()?,
        upstream_protocol: upstream_protocol(c.upstream_protocol, context)?,
        tcp_tunneling: c
            .tcp_tunneling
            .as_ref()
            .map(|t| tcp_tunneling(t, context))
            .transpose()?,
        plan: std::sync::OnceLock::new(),
    })
}

/// The upstream HTTP version, one the waypoint knows.
fn upstream_protocol(value: i32, context: &str) -> Result<UpstreamProtocol, ConfigError> {
    use proto::UpstreamHttpProtocol as P;
    match P::try_from(value) {
        Ok(P::Default) => Ok(UpstreamProtocol::Default),
        Ok(P::Http2) => Ok(UpstreamProtocol::Http2),
        Ok(P::Client) => Ok(UpstreamProtocol::Client),
        Err(_) => Err(invalid(
            context,
            format!("upstream_protocol {value} is not DEFAULT, HTTP2 or CLIENT"),
        )),
    }
}

/// The PROXY protocol version, one Envoy knows.
fn proxy_protocol(
    setting: &proto::UpstreamProxyProtocol,
    context: &str,
) -> Result<ProxyProtocolVersion, ConfigError> {
    use proto::upstream_proxy_protocol::Version;
    match Version::try_from(setting.version) {
        Ok(Version::V1) => Ok(ProxyProtocolVersion::V1),
        Ok(Version::V2) => Ok(ProxyProtocolVersion::V2),
        Err(_) => Err(invalid(
            context,
            format!("proxy_protocol version {} is not V1 or V2", setting.version),
        )),
    }
}

/// The tunnel's target, one that can be sent in a request head, and a method Envoy knows.
fn tcp_tunneling(
    setting: &proto::TcpTunneling,
    context: &str,
) -> Result<TcpTunneling, ConfigError> {
    use proto::tcp_tunneling::Method;
    let use_post = match Method::try_from(setting.method) {
        Ok(Method::Connect) => false,
        Ok(Method::Post) => true,
        Err(_) => {
            return Err(invalid(
                context,
                format!(
                    "tcp_tunneling method {} is not CONNECT or POST",
                    setting.method
                ),
            ));
        }
    };
    TcpTunneling::new(&setting.target_host, setting.target_port, use_post)
        .map_err(|e| invalid(context, e))
}

/// The retry budget, its percent within [0, 100].
fn retry_budget(budget: &proto::RetryBudget, context: &str) -> Result<RetryBudget, ConfigError> {
    if !(0.0..=100.0).contains(&budget.percent) {
        return Err(invalid(
            context,
            format!("retryBudget percent {} must be in [0, 100]", budget.percent),
        ));
    }
    Ok(RetryBudget {
        percent: budget.percent,
        min_retry_concurrency: usize::try_from(budget.min_retry_concurrency).unwrap_or(usize::MAX),
    })
}

/// The cluster's TLS origination. A `credentialName` the proxy cannot use does not reject the
/// configuration: it is reported (the DestinationRule, the field, why) and the cluster's
/// connections fail, as Envoy's do while a cluster's SDS secret is missing.
fn originated_tls(
    c: &proto::Cluster,
    tls: &proto::UpstreamTls,
    credentials: &OriginationCredentials,
) -> Result<OriginatedTls, String> {
    let originated = OriginatedTls::new(tls, &c.host, credentials)?;
    // A delivered credential may arrive after the configuration: it is checked when used.
    if let Some(reason) = originated.unusable().filter(|_| !originated.is_delivered()) {
        tracing::warn!(
            destination_rule = %c.destination_rule,
            field = "spec.trafficPolicy.tls.credentialName",
            credential = %tls.credential_name,
            cluster = %c.name,
            %reason,
            "tls origination credential unusable: the cluster's connections fail"
        );
    }
    Ok(originated)
}

#[cfg(test)]
mod tests;
