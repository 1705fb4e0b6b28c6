//! Conversion of the `WaypointConfig` resource into the model: protobuf stops here. Every
//! value is checked once and a bad one rejects the whole resource with the field it came from;
//! `route`, `cluster` and `authorization` convert their parts.

mod authorization;
mod cluster;
mod locality;

pub use locality::LocalInstance;
mod route;

pub(super) use route::local_rate_limit;

use crate::telemetry::Telemetry;
use crate::upstream::OriginationCredentials;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use weft_identity::SpiffeId;
use weft_policy::PolicyError;
use weft_proto::waypoint as proto;

use super::{
    Cluster, ConfigError, DirectWorkload, L4Match, Protocol, ResolvedNames, Service, ServicePort,
    SourceTable, TcpRoute, Tunnel, WaypointConfig, WorkloadInfo, gateway, invalid,
};

fn duration(d: &prost_types::Duration, context: &str) -> Result<Duration, ConfigError> {
    let error = || ConfigError::Duration {
        context: context.to_owned(),
    };
    let secs = u64::try_from(d.seconds).map_err(|_| error())?;
    let nanos = u32::try_from(d.nanos).map_err(|_| error())?;
    if nanos >= 1_000_000_000 {
        return Err(error());
    }
    Ok(Duration::new(secs, nanos))
}

fn optional_duration(
    d: Option<&prost_types::Duration>,
    context: &str,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(d, context)).transpose()
}

fn port(value: u32, context: &str) -> Result<u16, ConfigError> {
    u16::try_from(value).map_err(|_| ConfigError::Port {
        context: context.to_owned(),
        value,
    })
}

/// A gateway server's limits: positive durations, counts within Envoy's bounds.
pub(super) fn edge_limits(
    l: &proto::EdgeLimits,
    context: &str,
) -> Result<gateway::EdgeLimits, ConfigError> {
    let context = format!("{context} limits");
    let timeout = |d: Option<&prost_types::Duration>| {
        optional_duration(d, &context)?
            .map(|d| {
                (!d.is_zero())
                    .then_some(d)
                    .ok_or_else(|| invalid(&context, "a timeout must be positive"))
            })
            .transpose()
    };
    if l.max_request_headers_kb > gateway::MAX_REQUEST_HEADERS_KB {
        return Err(invalid(&context, "max_request_headers_kb over 8192"));
    }
    let streams = i32::try_from(l.http2_max_concurrent_streams)
        .map_err(|_| invalid(&context, "http2_max_concurrent_streams over 2^31-1"))?;
    let set = |v: u32| (v > 0).then_some(v);
    Ok(gateway::EdgeLimits {
        max_request_header_bytes: set(l.max_request_headers_kb).map(|kb| kb as usize * 1024),
        request_headers_timeout: timeout(l.request_headers_timeout.as_ref())?,
        idle_timeout: timeout(l.idle_timeout.as_ref())?,
        http2_max_concurrent_streams: set(streams.unsigned_abs()),
        per_connection_buffer_limit_bytes: set(l.per_connection_buffer_limit_bytes)
            .map(|b| b as usize),
        request_timeout: timeout(l.request_timeout.as_ref())?,
        max_request_bytes: set(l.max_request_bytes).map(u64::from),
        max_connections: set(l.max_connections),
    })
}

pub(super) fn nonzero_port(value: u32, context: &str) -> Result<Option<u16>, ConfigError> {
    Ok(if value == 0 {
        None
    } else {
        Some(port(value, context)?)
    })
}

fn ip(value: &str, context: &str) -> Result<IpAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Address {
        context: context.to_owned(),
        value: value.to_owned(),
    })
}

fn cidr(value: &str, context: &str) -> Result<IpNet, ConfigError> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ConfigError::Address {
            context: context.to_owned(),
            value: value.to_owned(),
        })
}

fn cidrs(values: &[String], context: &str) -> Result<Vec<IpNet>, ConfigError> {
    values.iter().map(|v| cidr(v, context)).collect()
}

fn header_name(name: &str, context: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
        ConfigError::HeaderName {
            context: context.to_owned(),
            name: name.to_owned(),
        }
    })
}

fn header_value(name: &str, value: &str, context: &str) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(value).map_err(|_| ConfigError::HeaderValue {
        context: context.to_owned(),
        name: name.to_owned(),
    })
}

fn policy_error(context: &str) -> impl FnOnce(PolicyError) -> ConfigError + '_ {
    move |source| ConfigError::Policy {
        context: context.to_owned(),
        source,
    }
}

/// An optional SPIFFE identity: empty means none.
fn identity(value: &str, context: &str) -> Result<Option<SpiffeId>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<SpiffeId>()
        .map(Some)
        .map_err(|_| ConfigError::Identity {
            context: context.to_owned(),
            value: value.to_owned(),
        })
}

/// How the `kind` (endpoint, workload) at `address` is reached: HBONE needs an identity.
fn tunnel(
    value: i32,
    identity: Option<&SpiffeId>,
    kind: &str,
    address: &str,
    context: &str,
) -> Result<Tunnel, ConfigError> {
    let tunnel = match proto::EndpointTunnel::try_from(value) {
        Ok(proto::EndpointTunnel::Hbone) => Tunnel::Hbone,
        Ok(proto::EndpointTunnel::None) => Tunnel::Plain,
        Err(_) => return Err(invalid(context, format!("unknown tunnel {value}"))),
    };
    if tunnel == Tunnel::Hbone && identity.is_none() {
        return Err(invalid(
            context,
            format!("HBONE {kind} {address} has no identity"),
        ));
    }
    Ok(tunnel)
}

/// The facts known of the workload at `address`: the first description of it wins.
fn workload_info(
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
    address: IpAddr,
    describe: impl FnOnce() -> WorkloadInfo,
) -> Arc<WorkloadInfo> {
    Arc::clone(
        workloads
            .entry(address)
            .or_insert_with(|| Arc::new(describe())),
    )
}

/// A request source the controller described; an endpoint at the same address already said it.
fn source_workload(
    w: &proto::SourceWorkload,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
) -> Result<(), ConfigError> {
    let context = format!("source workload {}", w.workload_uid);
    let address = ip(&w.address, &context)?;
    let identity = identity(&w.identity, &context)?;
    workload_info(workloads, address, || WorkloadInfo {
        uid: w.workload_uid.clone(),
        name: w.workload_name.clone(),
        labels: w.labels.clone(),
        identity,
    });
    Ok(())
}

/// The gateway proxy's own workload, as request metrics name their source.
pub(super) fn source_workload_info(
    w: &proto::SourceWorkload,
    context: &str,
) -> Result<Arc<WorkloadInfo>, ConfigError> {
    Ok(Arc::new(WorkloadInfo {
        uid: w.workload_uid.clone(),
        name: w.workload_name.clone(),
        labels: w.labels.clone(),
        identity: identity(&w.identity, context)?,
    }))
}

/// A route table at the edge as a service without addresses named `name`, on `port`: HTTP
/// routes or TCP routes, converted exactly as a service's.
pub(super) fn gateway_table(
    name: &str,
    namespace: &str,
    port: u16,
    http_routes: &[proto::HttpRoute],
    tcp_routes: &[proto::TcpRoute],
    context: &str,
) -> Result<(Service, ServicePort), ConfigError> {
    let protocol = gateway::table_protocol(tcp_routes.is_empty());
    let table = service(&proto::WaypointService {
        hostname: name.to_owned(),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        vips: Vec::new(),
        ports: Vec::new(),
        http_routes: http_routes.to_vec(),
        tcp_routes: tcp_routes.to_vec(),
        dynamic_dns: false,
        telemetry: None,
    })
    .map_err(|e| invalid(context, e.to_string()))?;
    Ok((
        table,
        ServicePort {
            port,
            name: name.to_owned(),
            protocol,
            target_port: port,
        },
    ))
}

/// A workload served at its own address; its facts also describe it as a request source.
fn direct_workload(
    w: &proto::WaypointWorkload,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
) -> Result<DirectWorkload, ConfigError> {
    let context = format!("workload {}", w.workload_uid);
    let context = context.as_str();
    let address = ip(&w.address, context)?;
    let identity = identity(&w.identity, context)?;
    let tunnel = tunnel(w.tunnel, identity.as_ref(), "workload", &w.address, context)?;
    let mut ports = HashMap::with_capacity(w.ports.len());
    for p in &w.ports {
        ports
            .entry(port(p.port, context)?)
            .or_insert(protocol(p.protocol, context)?);
    }
    let info = workload_info(workloads, address, || WorkloadInfo {
        uid: w.workload_uid.clone(),
        name: w.workload_name.clone(),
        labels: w.labels.clone(),
        identity: identity.clone(),
    });
    Ok(DirectWorkload {
        address,
        namespace: w.namespace.clone(),
        identity,
        tunnel,
        info,
        services: w.services.clone(),
        ports,
        clusters: Default::default(),
    })
}

fn protocol(value: i32, context: &str) -> Result<Protocol, ConfigError> {
    Ok(match proto::Protocol::try_from(value) {
        Ok(proto::Protocol::Unspecified) => Protocol::Unspecified,
        Ok(proto::Protocol::Http) => Protocol::Http,
        Ok(proto::Protocol::Http2) => Protocol::Http2,
        Ok(proto::Protocol::Grpc) => Protocol::Grpc,
        Ok(proto::Protocol::Tcp) => Protocol::Tcp,
        Ok(proto::Protocol::Tls) => Protocol::Tls,
        Err(_) => return Err(invalid(context, format!("unknown protocol {value}"))),
    })
}

fn service(s: &proto::WaypointService) -> Result<Service, ConfigError> {
    let context = format!("service {}", s.hostname);
    let context = context.as_str();
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let service_port = port(p.port, context)?;
            Ok(ServicePort {
                port: service_port,
                name: p.name.clone(),
                protocol: protocol(p.protocol, context)?,
                target_port: nonzero_port(p.target_port, context)?.unwrap_or(service_port),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let mut route_matches = Vec::with_capacity(s.http_routes.len());
    let mut http_routes = Vec::with_capacity(s.http_routes.len());
    for (index, r) in s.http_routes.iter().enumerate() {
        let route_context = format!("{context} http route {index} ({})", r.virtual_service);
        let (m, r) = route::route(r, &route_context)?;
        route_matches.push(m);
        http_routes.push(r);
    }
    let tcp_routes = s
        .tcp_routes
        .iter()
        .map(|t| {
            let matches = t
                .r#match
                .iter()
                .map(|m| {
                    Ok(L4Match {
                        destination_subnets: cidrs(&m.destination_subnets, context)?,
                        port: nonzero_port(m.port, context)?,
                        source_labels: m.source_labels.clone(),
                        source_namespace: (!m.source_namespace.is_empty())
                            .then(|| m.source_namespace.clone()),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let destinations = t
                .route
                .iter()
                .map(|d| {
                    let (cluster, _) = route::destination_cluster(d.destination.as_ref(), context)?;
                    Ok((
                        cluster,
                        u32::try_from(d.weight).map_err(|_| invalid(context, "negative weight"))?,
                    ))
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            Ok(TcpRoute {
                matches,
                destinations,
                virtual_service: t.virtual_service.clone(),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(Service {
        hostname: s.hostname.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        names: Arc::new(crate::model::ServiceName {
            hostname: Arc::from(s.hostname.as_str()),
            name: Arc::from(s.name.as_str()),
            namespace: Arc::from(s.namespace.as_str()),
        }),
        vips: s
            .vips
            .iter()
            .map(|v| ip(v, context))
            .collect::<Result<_, _>>()?,
        ports,
        route_matches,
        http_routes,
        tcp_routes,
        dynamic_dns: s.dynamic_dns && s.hostname.starts_with("*."),
        // Converted with the waypoint's names (`service_telemetry`).
        telemetry: None,
    })
}

/// A service's own tracing and access logging, its spans reported as the waypoint's.
fn service_telemetry(
    s: &proto::WaypointService,
    waypoint: &str,
    namespace: &str,
) -> Result<Option<Telemetry>, ConfigError> {
    let Some(telemetry) = &s.telemetry else {
        return Ok(None);
    };
    let tracing = telemetry
        .tracing
        .as_ref()
        .map(|t| {
            crate::telemetry::tracing_config(t, waypoint, namespace, false, &process_environment)
                .map(Arc::new)
                .map_err(|e| invalid(&format!("service {}: telemetry", s.hostname), e.to_string()))
        })
        .transpose()?;
    let metrics = crate::metrics::metric_overrides(
        &telemetry.metric_overrides,
        &format!("service {}: telemetry.metric_overrides", s.hostname),
    )?;
    let access_logs = crate::access_log::AccessLogs::compile(
        &telemetry.access_logs,
        &format!("service {}: telemetry.access_logs", s.hostname),
    )?;
    Ok(Some(Telemetry {
        tracing,
        access_log_disabled: telemetry.access_log_disabled,
        access_logs,
        metrics,
    }))
}

impl TryFrom<proto::WaypointConfig> for WaypointConfig {
    type Error = ConfigError;

    fn try_from(config: proto::WaypointConfig) -> Result<Self, Self::Error> {
        WaypointConfig::from_proto(config, &ResolvedNames::default())
    }
}

impl WaypointConfig {
    /// `config`, its endpoints given by name taken at the addresses `names` holds for them.
    pub fn from_proto(
        config: proto::WaypointConfig,
        names: &ResolvedNames,
    ) -> Result<Self, ConfigError> {
        Self::from_proto_with(config, names, &OriginationCredentials::default())
    }

    /// [`WaypointConfig::from_proto`], TLS origination credentials named by `credentialName`
    /// found in `credentials` (none: such clusters fail closed).
    pub fn from_proto_with(
        config: proto::WaypointConfig,
        names: &ResolvedNames,
        credentials: &OriginationCredentials,
    ) -> Result<Self, ConfigError> {
        Self::from_proto_at(config, names, credentials, None)
    }

    /// [`WaypointConfig::from_proto_with`] for the pod at `instance` (its IP): clusters with
    /// locality load balancing rank (or weigh) their endpoints relative to that pod's entry in the
    /// configuration's `instances`.
    pub fn from_proto_at(
        config: proto::WaypointConfig,
        names: &ResolvedNames,
        credentials: &OriginationCredentials,
        instance: Option<IpAddr>,
    ) -> Result<Self, ConfigError> {
        let local = instance.and_then(|ip| LocalInstance::find(&config.instances, ip));
        let mut workloads = HashMap::new();
        let mut clusters = HashMap::with_capacity(config.clusters.len());
        for c in &config.clusters {
            let converted =
                cluster::cluster(c, &mut workloads, names, credentials, local.as_ref())?;
            if clusters
                .insert(converted.name.clone(), Arc::new(converted))
                .is_some()
            {
                return Err(ConfigError::DuplicateCluster {
                    name: c.name.clone(),
                });
            }
        }
        // In the configuration's order, so that of two clusters for one service port (which
        // the controller never sends) the first is the default, whatever the hashing.
        let mut default_clusters: HashMap<String, Vec<(u16, Arc<Cluster>)>> = HashMap::new();
        for c in &config.clusters {
            let Some(cluster) = clusters.get(&c.name) else {
                continue;
            };
            if !cluster.subset.is_empty() {
                continue;
            }
            let ports = default_clusters.entry(cluster.host.clone()).or_default();
            if ports.iter().all(|(port, _)| *port != cluster.port) {
                ports.push((cluster.port, Arc::clone(cluster)));
            }
        }
        let mut direct = HashMap::with_capacity(config.workloads.len());
        for w in &config.workloads {
            let converted = direct_workload(w, &mut workloads)?;
            // An address listed twice (a pod's IP reused while the old pod terminates): the
            // first entry, which the controller lists first because it is the ready one.
            direct
                .entry(converted.address)
                .or_insert_with(|| Arc::new(converted));
        }
        for w in &config.source_workloads {
            source_workload(w, &mut workloads)?;
        }
        let services = config
            .services
            .iter()
            .map(|s| {
                let mut converted = service(s)?;
                converted.telemetry = service_telemetry(s, &config.name, &config.namespace)?;
                Ok(Arc::new(converted))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_vip = HashMap::new();
        for (service_index, s) in services.iter().enumerate() {
            for (port_index, p) in s.ports.iter().enumerate() {
                for vip in &s.vips {
                    by_vip.insert(SocketAddr::new(*vip, p.port), (service_index, port_index));
                }
            }
        }
        let policies = config
            .authorization_policies
            .iter()
            .map(authorization::authorization)
            .collect::<Result<_, _>>()?;
        let gateway = config
            .gateway
            .as_ref()
            .map(|g| gateway::gateway(g, &config.namespace).map(Arc::new))
            .transpose()?;
        let authentications = config
            .request_authentications
            .iter()
            .map(crate::authn::authentication)
            .collect::<Result<_, _>>()?;
        let tracing = config
            .tracing
            .as_ref()
            .map(|t| {
                let edge = config.gateway.is_some();
                crate::telemetry::tracing_config(
                    t,
                    &config.name,
                    &config.namespace,
                    edge,
                    &process_environment,
                )
                .map(Arc::new)
            })
            .transpose()?;
        let metrics =
            crate::metrics::metric_overrides(&config.metric_overrides, "metric_overrides")?;
        let access_logs =
            crate::access_log::AccessLogs::compile(&config.access_logs, "access_logs")?;
        Ok(WaypointConfig {
            gateway,
            telemetry: Telemetry {
                tracing,
                access_log_disabled: config.access_log_disabled,
                access_logs,
                metrics,
            },
            name: config.name,
            namespace: config.namespace,
            services,
            clusters,
            policies,
            authentications,
            by_vip,
            default_clusters,
            direct,
            workloads,
            sources: SourceTable::default(),
        })
    }
}

/// The proxy's own environment, which Telemetry's `environment` custom tags read.
fn process_environment(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
