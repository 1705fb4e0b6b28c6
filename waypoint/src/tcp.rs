//! What the waypoint forwards at L4 (TCP ports, and undeclared ports that do not sniff as
//! HTTP): connection-level authorization of the same policies (HTTP-only attributes handled as
//! Istio handles them for TCP), the TCP route or the workload's own address, one endpoint, and
//! a stream that counts its bytes into Istio's `istio_tcp_*` metrics and logs the connection
//! when it ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;
use weft_hbone::Refusal;
use weft_policy::l7::{TcpAuthzRequest, evaluate_tcp};
use weft_policy::route::pick_weighted;
use weft_policy::{Decision, DenyReason, PeerIdentity};

use crate::metrics::{ConnectionInfo, ConnectionRecord, Peer};
use crate::model::{Cluster, Target};
use crate::proxy::{ProxyShared, TunnelContext};
use crate::upstream::{BoxedIo, HashInput};

/// Where a connection goes: a cluster, or why there is none (the response flag).
enum TcpDestination {
    Cluster(Arc<Cluster>),
    /// The route names a cluster that does not exist (an undefined subset, host or port).
    MissingCluster(String),
    NoRoute,
}

fn tcp_destination(shared: &ProxyShared, context: &TunnelContext) -> TcpDestination {
    let config = shared.store.snapshot();
    let target = match &context.target {
        Target::Workload(target) => return TcpDestination::Cluster(Arc::new(target.cluster())),
        Target::Service(target) => target,
    };
    let service = &target.service;
    let source = config.workload(context.source_ip);
    let namespace = context.peer.as_ref().map(|p| p.namespace());
    let route = service.tcp_routes.iter().find(|r| {
        r.matches.is_empty()
            || r.matches
                .iter()
                .any(|m| m.matches(context.destination, source.map(|w| &w.labels), namespace))
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

/// Authorizes the connection, picks its endpoint and opens the stream to it. Every outcome is
/// one connection in the metrics and one access-log line.
pub async fn open_tcp_upstream(
    shared: &ProxyShared,
    context: &TunnelContext,
) -> Result<BoxedIo, Refusal> {
    let config = shared.store.snapshot();
    let peer_identity = context
        .peer
        .as_ref()
        .map(|id| PeerIdentity::new(id.trust_domain(), id.namespace(), id.service_account()));
    let mut info = ConnectionInfo {
        source: Peer {
            workload: config.workload(context.source_ip).cloned(),
            principal: context.peer.as_ref().map(ToString::to_string),
            namespace: context.peer.as_ref().map(|p| p.namespace().to_owned()),
        },
        destination: Peer {
            namespace: Some(context.target.namespace().to_owned()),
            ..Peer::default()
        },
        destination_service: match &context.target {
            Target::Service(t) => Some((
                t.service.hostname.clone(),
                t.service.name.clone(),
                t.service.namespace.clone(),
            )),
            Target::Workload(_) => None,
        },
        mtls: context.peer.is_some(),
        response_flags: "-",
        downstream_local: context.destination.to_string(),
        downstream_remote: context.peer_address.to_string(),
        ..ConnectionInfo::default()
    };
    let decision = evaluate_tcp(
        config.policies_for(&context.target),
        &TcpAuthzRequest {
            source_identity: peer_identity.as_ref(),
            source_ip: context.source_ip,
            remote_ip: context.source_ip,
            destination_ip: context.destination.ip(),
            port: context.target.port(),
        },
    );
    if let Decision::Deny(reason) = decision {
        debug!(%reason, "connection denied");
        info.termination_details = Some(match &reason {
            DenyReason::DeniedBy(policy) => format!(
                "rbac_access_denied_matched_policy[ns[{}]-policy[{}]-rule[0]]",
                policy.namespace, policy.name
            ),
            _ => "rbac_access_denied_matched_policy[none]".to_owned(),
        });
        drop(shared.metrics.connection_opened(info));
        return Err(Refusal::Forbidden);
    }
    let cluster = match tcp_destination(shared, context) {
        TcpDestination::Cluster(cluster) => cluster,
        TcpDestination::MissingCluster(name) => {
            info.response_flags = "NC";
            info.upstream_cluster = Some(name);
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        }
        TcpDestination::NoRoute => {
            info.response_flags = "NR";
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        }
    };
    info.upstream_cluster = Some(cluster.name.clone());
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        headers: &headers,
        query: None,
        source_ip: context.source_ip,
    };
    let upstream = &shared.upstream;
    let endpoint = match upstream.choose_endpoint(&cluster, &hash, &[]) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            info.response_flags = error.response_flag();
            drop(shared.metrics.connection_opened(info));
            return Err(Refusal::UpstreamUnavailable);
        }
    };
    info.upstream_host = Some(endpoint.address.to_string());
    info.destination.workload = Some(Arc::clone(&endpoint.workload));
    info.destination.principal = endpoint.identity.as_ref().map(ToString::to_string);
    match upstream
        .open_stream(&cluster, &endpoint, context.source_ip)
        .await
    {
        Ok(stream) => {
            upstream.record_outcome(&cluster, endpoint.address, Some(200));
            Ok(Box::new(MeteredIo {
                inner: stream,
                record: shared.metrics.connection_opened(info),
            }))
        }
        Err(error) => {
            upstream.record_outcome(&cluster, endpoint.address, None);
            debug!(%error, "tcp forward failed");
            info.response_flags = error.response_flag();
            drop(shared.metrics.connection_opened(info));
            Err(Refusal::UpstreamUnavailable)
        }
    }
}

/// The upstream stream of one connection: what is read from it was sent to the client, what is
/// written to it was received from the client. The record ends with the stream.
struct MeteredIo {
    inner: BoxedIo,
    record: ConnectionRecord,
}

impl AsyncRead for MeteredIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.record.add_sent((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl AsyncWrite for MeteredIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.record.add_received(written as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
