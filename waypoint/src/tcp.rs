//! What the waypoint forwards at L4 (TCP ports, and undeclared ports that do not sniff as
//! HTTP): connection-level authorization of the same policies (HTTP-only attributes handled as
//! Istio handles them for TCP), the TCP route or the workload's own address, one endpoint, and
//! a stream that counts its bytes into Istio's `istio_tcp_*` metrics and logs the connection
//! when it ends (`weft_hbone::MeteredStream` over the connection's record).
//!
//! Open connections stay registered with what authorized them and are decided again on every
//! configuration applied ([`revalidate`]): one the policies now deny, or whose destination the
//! waypoint no longer serves, is closed at once. (Envoy rebuilds the filter chain of a changed
//! policy and drains the old chain's TCP connections, closing them when its drain time ends;
//! closing at once only what is no longer allowed is what ztunnel does at L4.) The endpoint a
//! connection was routed to stays its endpoint: TCP routes apply to new connections, as Envoy's
//! `tcp_proxy` picks its cluster per connection.
//!
//! A cluster with DestinationRule `tunnel` settings is reached through its endpoint, a tunnel
//! proxy, by a CONNECT (or POST) to the target once the stream to it is open
//! ([`crate::upstream::TcpTunneling`]), as Envoy's `tcp_proxy` does with `tunneling_config`;
//! a refusal is a connect failure of that endpoint (`UF`, counted by outlier detection).

use std::sync::Arc;

use tracing::{debug, info};
use weft_hbone::{ConnectionRegistry, MeteredStream, Refusal};
use weft_policy::Decision;
use weft_policy::l7::{TcpAuthzRequest, evaluate_tcp};
use weft_policy::route::pick_weighted;

use crate::metrics::{ConnectionInfo, Peer, RecordText, ResponseFlag};
use crate::model::{Cluster, Target, WaypointConfig};
use crate::proxy::{LocalReply, ProxyShared, TunnelContext, rbac_details};
use crate::upstream::dynamic_dns::under_wildcard;
use crate::upstream::{BoxedIo, HashInput, Outcome};

/// The connections the waypoint carries as a stream of bytes, each with the tunnel it arrived
/// on (what it is decided again on), grouped by what they carry.
pub type TcpConnections = ConnectionRegistry<Carried, Arc<TunnelContext>>;

/// What a registered connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carried {
    /// An L4 connection: authorized per connection, so decided again on every configuration.
    Tcp,
    /// An HTTP/1.1 connection upgraded after its endpoint's `101` (WebSocket): its request was
    /// authorized at L7 when it was made (Envoy's RBAC filter decides per request, so a policy
    /// change leaves it be), and it ends when its destination no longer uses this waypoint.
    Upgraded,
}

/// Why a connection is not (or no longer) allowed, as Envoy's termination details say it.
const NOT_SERVED: &str = "destination_not_served";

/// Whether `config` allows the connection of `context`: its destination is served here and the
/// policies allow it. `Err`: the termination details.
fn authorize(config: &WaypointConfig, context: &TunnelContext) -> Result<(), String> {
    let target = context
        .target(config, None)
        .ok_or_else(|| NOT_SERVED.to_owned())?;
    let decision = evaluate_tcp(
        config.policies_for(&target),
        &TcpAuthzRequest {
            source_identity: context.peer.as_ref(),
            source_ip: context.source_ip,
            remote_ip: context.source_ip,
            destination_ip: context.destination.ip(),
            port: target.port(),
        },
    );
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => {
            debug!(%reason, "connection denied");
            Err(rbac_details(&reason))
        }
    }
}

/// Decides every open connection again under `config` (just applied) and closes those it no
/// longer allows.
pub fn revalidate(connections: &TcpConnections, config: &WaypointConfig) {
    let closed = connections.revoke_where(|carried, context| match carried {
        Carried::Tcp => authorize(config, context).err(),
        Carried::Upgraded => (!context.still_served(config)).then(|| NOT_SERVED.to_owned()),
    });
    if closed > 0 {
        info!(
            closed,
            "connections closed: no longer allowed after a configuration change"
        );
    }
}

/// Where a connection goes: a cluster, or why there is none (the response flag).
enum TcpDestination {
    Cluster(Arc<Cluster>),
    /// The route names a cluster that does not exist (an undefined subset, host or port).
    MissingCluster(String),
    NoRoute,
}

fn tcp_destination(
    config: &WaypointConfig,
    target: &Target<'_>,
    context: &TunnelContext,
) -> TcpDestination {
    let target = match target {
        Target::Workload(target) => return TcpDestination::Cluster(target.cluster()),
        Target::Service(target) => target,
    };
    let service = target.service;
    let source = config.workload(context.source_ip);
    let namespace = context.peer.as_ref().map(|p| p.namespace());
    let route = service.tcp_routes.iter().find(|r| {
        r.matches.is_empty()
            || r.matches.iter().any(|m| {
                m.matches(
                    context.destination,
                    source.as_ref().map(|w| &w.labels),
                    namespace,
                )
            })
    });
    let name = match route {
        Some(route) => {
            let weights: Vec<u32> = route.destinations.iter().map(|d| d.1).collect();
            match pick_weighted(&weights, rand::random()).and_then(|i| route.destinations.get(i)) {
                Some((name, _)) => name.clone(),
                None => return TcpDestination::NoRoute,
            }
        }
        None => match config.default_cluster(&service.hostname, target.port.port) {
            Some(cluster) => return TcpDestination::Cluster(Arc::clone(cluster)),
            None => return TcpDestination::NoRoute,
        },
    };
    match config.cluster(&name) {
        Some(cluster) => TcpDestination::Cluster(Arc::clone(cluster)),
        None => TcpDestination::MissingCluster(name),
    }
}

/// What the metrics and the access log say about a connection to `target`, as it opens.
/// `target`: the connection's route table; `None` for a connection closed before one is known
/// (an HTTP server's, whose table comes with each request's Host).
fn connection_info(
    config: &WaypointConfig,
    context: &TunnelContext,
    target: Option<&Target<'_>>,
) -> ConnectionInfo {
    let telemetry = config.telemetry_for(target);
    let mut info = ConnectionInfo {
        source: Peer {
            workload: config.workload(context.source_ip),
            principal: context
                .peer
                .as_ref()
                .map(|p| RecordText::Owned(p.to_string())),
            namespace: context
                .peer
                .as_ref()
                .map(|p| RecordText::Owned(p.namespace().to_owned())),
        },
        destination: Peer {
            namespace: target.map(|t| RecordText::Owned(t.namespace().to_owned())),
            ..Peer::default()
        },
        destination_service: match target {
            Some(Target::Service(t)) => Some(Arc::clone(&t.service.names)),
            Some(Target::Workload(_)) | None => None,
        },
        mtls: context.peer.is_some(),
        response_flags: ResponseFlag::None,
        downstream_local: context.destination.to_string(),
        downstream_remote: context.peer_address.to_string(),
        access_log_disabled: telemetry.access_log_disabled,
        access_logs: telemetry.access_logs.clone(),
        metric_overrides: telemetry.metrics.clone(),
        ..ConnectionInfo::default()
    };
    if context.edge.is_some() {
        info.at_edge = true;
        info.source = TunnelContext::edge_source(config);
        info.destination_service = None;
    }
    info
}

/// A connection a gateway server's connection rate limit closed before anything else: counted
/// (`response_flags="RL"`) and logged as it closes.
pub fn rate_limited(shared: &ProxyShared, context: &TunnelContext) {
    let config = shared.store.snapshot();
    let target = context.target(&config, None);
    let mut info = connection_info(&config, context, target.as_ref());
    info.response_flags = ResponseFlag::RateLimited;
    info.termination_details = Some("local_rate_limited".to_owned());
    drop(shared.metrics.connection_opened(info));
}

/// Authorizes the connection, picks its endpoint and opens the stream to it. Every outcome is
/// one connection in the metrics and one access-log line; a carried connection stays
/// registered in `shared.tcp_connections` while it lives.
pub async fn open_tcp_upstream(
    shared: &ProxyShared,
    context: &Arc<TunnelContext>,
    server_name: Option<&str>,
) -> Result<BoxedIo, Refusal> {
    // Registered before the decision: a configuration applied meanwhile decides it again.
    let registration = shared
        .tcp_connections
        .register(Carried::Tcp, Arc::clone(context));
    let config = shared.store.snapshot();
    let Some(target) = context.target(&config, None) else {
        debug!(authority = %context.destination, "tcp connection for a destination this waypoint does not serve");
        return Err(Refusal::BadRequest);
    };
    let mut info = connection_info(&config, context, Some(&target));
    if let Err(details) = authorize(&config, context) {
        info.termination_details = Some(details);
        drop(shared.metrics.connection_opened(info));
        return Err(Refusal::Forbidden);
    }
    let cluster = match tcp_destination(&config, &target, context) {
        TcpDestination::Cluster(cluster) => cluster,
        TcpDestination::MissingCluster(name) => {
            info.response_flags = flags_of(LocalReply::ClusterNotFound(
                http::StatusCode::SERVICE_UNAVAILABLE,
            ));
            info.upstream_cluster = Some(name);
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        }
        TcpDestination::NoRoute => {
            info.response_flags = flags_of(LocalReply::RouteNotFound);
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        }
    };
    info.upstream_cluster = Some(cluster.name.clone());
    if context.edge.is_some() {
        info.destination_service = Some(Arc::clone(&cluster.service));
    }
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: None,
        source_ip: context.source_ip,
    };
    let upstream = &shared.upstream;
    let chosen = if cluster.dynamic_dns {
        // Only a server name under the service's wildcard is resolved (Istio's SNI dynamic
        // forward proxy, on the service's port); any other finds no route.
        let Some(name) = server_name.filter(|name| {
            target
                .dynamic_dns_wildcard()
                .is_some_and(|wildcard| under_wildcard(wildcard, name))
        }) else {
            debug!(?server_name, "server name outside the wildcard");
            info.response_flags = flags_of(LocalReply::RouteNotFound);
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        };
        let authority = format!("{name}:{}", cluster.port);
        upstream
            .dynamic_endpoint(&cluster, &authority)
            .await
            .map(std::borrow::Cow::Owned)
    } else {
        upstream
            .choose_endpoint(&cluster, &hash, &[])
            .map(std::borrow::Cow::Borrowed)
    };
    let endpoint = match chosen {
        Ok(endpoint) => endpoint,
        Err(error) => {
            info.response_flags = flags_of(error.into());
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        }
    };
    info.upstream_host = Some(endpoint.address.to_string());
    info.destination.workload = Some(Arc::clone(&endpoint.workload));
    info.destination.principal = endpoint
        .identity
        .as_ref()
        .map(|p| RecordText::Owned(p.to_string()));
    let opened = match upstream
        .open_stream(&cluster, &endpoint, &context.downstream)
        .await
    {
        Ok(stream) => match &cluster.tcp_tunneling {
            Some(tunneling) => {
                let timeout = cluster
                    .limits
                    .connect_timeout
                    .unwrap_or(TUNNEL_ANSWER_TIMEOUT);
                tunneling.establish(stream, endpoint.address, timeout).await
            }
            None => Ok(stream),
        },
        Err(error) => Err(error),
    };
    match opened {
        Ok(stream) => {
            upstream.record_outcome(&cluster, endpoint.address, Outcome::Response(200));
            Ok(Box::new(MeteredStream::new(
                stream,
                shared.metrics.connection_opened(info),
                registration,
            )))
        }
        Err(error) => {
            upstream.record_outcome(&cluster, endpoint.address, Outcome::ConnectFailed);
            debug!(%error, "tcp forward failed");
            info.response_flags = flags_of(error.into());
            drop(shared.metrics.connection_opened(info));
            Err(Refusal::UpstreamUnavailable)
        }
    }
}

/// How long a tunnel proxy may take to answer the CONNECT (or POST) when the cluster sets no
/// connect timeout: Istio's default connect timeout.
const TUNNEL_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TLS connection to a `DYNAMIC_DNS` host, carried on `inside`: the ClientHello's SNI names
/// the endpoint (read within the ClientHello's bounds, then replayed to it untouched). A hello
/// that cannot be read, or names no server, closes the connection.
pub async fn carry_by_server_name(
    shared: &ProxyShared,
    context: &Arc<TunnelContext>,
    mut inside: tokio::io::DuplexStream,
) {
    use tokio::io::AsyncWriteExt;
    let hello = match crate::gateway::client_hello::read_client_hello(&mut inside).await {
        Ok(hello) => hello,
        Err(error) => {
            debug!(%error, "no ClientHello to take the server name from");
            return;
        }
    };
    let Ok(mut upstream) = open_tcp_upstream(shared, context, hello.sni.as_deref()).await else {
        return;
    };
    if let Err(error) = upstream.write_all(&hello.bytes).await {
        debug!(%error, "replaying the ClientHello failed");
        return;
    }
    if let Err(error) = tokio::io::copy_bidirectional(&mut inside, &mut upstream).await {
        debug!(%error, "tls stream ended");
    }
}

/// The `response_flags` of a connection refused for the reason an HTTP request would get
/// `reply` for.
fn flags_of(reply: LocalReply) -> ResponseFlag {
    reply.reply().response_flags.unwrap_or_default()
}
