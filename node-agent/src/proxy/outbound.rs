//! The outbound proxy: connections an enrolled pod's applications make, redirected by eBPF to the
//! pod's `127.0.0.1:15001`, carried to their destination over HBONE, to a pod served by this very
//! agent directly, or as plain TCP to destinations outside the mesh.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::net::TcpStream;
use weft_hbone::{ConnectRequest, MeteredClient, MeteredStream, Revocable, connect_tcp};
use weft_proxy_core::metrics::TcpConnection;
use weft_proxy_core::metrics::{Reporter, SecurityPolicy};

use super::{
    connections::{PodRegistration, Tracked, copy_error},
    context::ProxyContext,
    copy,
    error::ProxyError,
    plan::{OutboundPlan, authorize_connection, inbound_service, plan_outbound},
    pool::PoolKey,
    record::{ConnectionLog, Failed},
    served::ServedPod,
};
use crate::{
    metrics::{black_hole_cluster, passthrough_cluster},
    state::Workload,
};

/// Serves one connection accepted on a pod's outbound listener.
pub(super) async fn handle(
    context: Arc<ProxyContext>,
    pod: Arc<ServedPod>,
    app: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    let _ = app.set_nodelay(true);
    // Ends when the pod leaves the mesh.
    let registration = context
        .connections
        .register(pod.uid.clone(), Tracked::Carrier);
    let app = registration.wrap(app);
    let source = context
        .store
        .wait_for_workload_by_uid(&pod.uid, super::WAIT_FOR_WORKLOAD)
        .await;
    let original = match &source {
        None => Err(ProxyError::UnknownPod(pod.uid.clone())),
        Some(_) => context
            .original_destination
            .take_original_dst(pod.netns_cookie, peer)
            .map_err(|e| ProxyError::OriginalDestination(e.to_string()))
            .and_then(|found| found.ok_or(ProxyError::NoOriginalDestination(peer))),
    };
    // On-demand mode: a destination the agent does not know yet is asked for first, and
    // what it is known by stays subscribed while the connection is open.
    let fetched = match &original {
        Ok(original) => context
            .store
            .fetch_destination(original.ip())
            .await
            .map_err(ProxyError::from),
        Err(_) => Ok(Default::default()),
    };
    let (original, _lease) = match (original, fetched) {
        (Ok(original), Ok(lease)) => (Ok(original), lease),
        (Err(error), _) | (_, Err(error)) => (Err(error), Default::default()),
    };
    let planned = match &source {
        None => Err(ProxyError::UnknownPod(pod.uid.clone())),
        Some(source) => original.and_then(|original| {
            let roll = context.round_robin.fetch_add(1, Ordering::Relaxed);
            plan_outbound(
                &context.store,
                source,
                original,
                |uid| context.pods.contains(uid),
                roll,
            )
            .map_err(ProxyError::from)
            .map(|plan| (original, plan))
        }),
    };
    let (original, plan) = match planned {
        Ok(planned) => planned,
        Err(error) => {
            let mut guard = context.metrics.connection_opened_between(
                Reporter::Source,
                source.as_ref(),
                None,
                None,
                SecurityPolicy::Unknown,
                ConnectionLog::outbound(peer, pod_addresses(source.as_deref()), None),
            );
            guard.failed(&error);
            tracing::warn!(%peer, %error, "outbound connection refused");
            return;
        }
    };
    let source = source.expect("planned only with a source");
    let (destination, service, security) = match &plan {
        OutboundPlan::Passthrough { .. } => (
            None,
            Some(passthrough_cluster().clone()),
            SecurityPolicy::Unknown,
        ),
        OutboundPlan::BlackHole { .. } => (
            None,
            Some(black_hole_cluster().clone()),
            SecurityPolicy::Unknown,
        ),
        OutboundPlan::External {
            destination,
            service,
            ..
        } => (
            destination.clone(),
            Some(service.clone()),
            SecurityPolicy::Unknown,
        ),
        OutboundPlan::Hbone {
            destination,
            service,
            ..
        } => (
            destination.clone(),
            service.clone(),
            SecurityPolicy::MutualTls,
        ),
        // Reported as ztunnel reports a connection between two pods of its node (over HBONE,
        // to itself): the source is the one the agent vouches for.
        OutboundPlan::Local {
            destination,
            service,
            ..
        } => (
            Some(destination.clone()),
            service.clone(),
            SecurityPolicy::MutualTls,
        ),
    };
    let mut guard = context.metrics.connection_opened_between(
        Reporter::Source,
        Some(&source),
        destination.as_ref(),
        service.as_ref(),
        security,
        ConnectionLog::outbound(peer, &source.addresses, Some(original)),
    );
    // Bytes are counted as they pass, so a long connection shows before it ends.
    let mut app = MeteredClient::new(app, &guard);
    let result = execute(&context, &pod, &source, &mut app, peer, plan).await;
    drop(app);
    match result {
        Ok(()) => {
            tracing::debug!(%peer, %original, elapsed_ms = started.elapsed().as_millis() as u64, "outbound connection complete");
        }
        Err(error) => {
            guard.failed(&error);
            tracing::warn!(%peer, %original, %error, "outbound connection failed");
        }
    }
}

/// The addresses of the pod a connection came from, none when it is not known yet.
fn pod_addresses(pod: Option<&Workload>) -> &[std::net::IpAddr] {
    pod.map(|pod| pod.addresses.as_slice()).unwrap_or_default()
}

/// Carries the connection; returns (bytes from the app, bytes to the app).
async fn execute(
    context: &ProxyContext,
    pod: &ServedPod,
    source: &Arc<Workload>,
    app: &mut MeteredClient<'_, Revocable<TcpStream>, TcpConnection<ConnectionLog>>,
    peer: SocketAddr,
    plan: OutboundPlan,
) -> Result<(), ProxyError> {
    match plan {
        OutboundPlan::BlackHole { target } => Err(ProxyError::BlackHole(target)),
        OutboundPlan::Passthrough { target } => {
            let mut upstream = connect_tcp(&pod.netns, target)
                .await
                .map_err(|e| ProxyError::Connect(target, e))?;
            copy::tcp_both_ways(app, &mut upstream)
                .await
                .map(drop)
                .map_err(copy_error)
        }
        OutboundPlan::External {
            target,
            destination,
            ..
        } => {
            // A ServiceEntry endpoint has no agent of its own: its L4 policy is decided here,
            // and again on every change like a connection into a pod of this node.
            let registration = match destination.filter(|d| d.is_service_entry_endpoint()) {
                Some(destination) => Some(authorized(context, source, &destination, target)?),
                None => None,
            };
            let upstream = connect_tcp(&pod.netns, target)
                .await
                .map_err(|e| ProxyError::Connect(target, e))?;
            match &registration {
                Some(registration) => {
                    copy::tcp_both_ways(app, &mut registration.wrap(upstream)).await
                }
                None => copy::tcp_both_ways(app, &mut { upstream }).await,
            }
            .map(drop)
            .map_err(copy_error)
        }
        OutboundPlan::Local {
            target,
            destination,
            service,
        } => {
            // Same node: no TLS, but the destination's inbound rules still apply, with the
            // source identity the agent itself vouches for, and the destination's side is
            // reported as the HBONE inbound side reports it: under the service the client
            // addressed, else the one the HBONE side would guess from the port.
            let service =
                service.or_else(|| inbound_service(&context.store, &destination, target.port()));
            let mut inbound = context.metrics.connection_opened_between(
                Reporter::Destination,
                Some(source),
                Some(&destination),
                service.as_ref(),
                SecurityPolicy::MutualTls,
                ConnectionLog::outbound(peer, &source.addresses, Some(target)),
            );
            let connected = async {
                let registration = authorized(context, source, &destination, target)?;
                let destination_pod = context
                    .pods
                    .get(&destination.uid)
                    .ok_or_else(|| ProxyError::UnknownPod(destination.uid.clone()))?;
                let source_ip = source.addresses.first().copied().unwrap_or(target.ip());
                let upstream = destination_pod
                    .netns
                    .connect_from(source_ip, None, target)
                    .await
                    .map_err(|e| ProxyError::Connect(target, e))?;
                Ok((registration, upstream))
            }
            .await;
            let (registration, upstream) = match connected {
                Ok(connected) => connected,
                Err(error) => {
                    inbound.failed(&error);
                    return Err(error);
                }
            };
            copy::tcp_both_ways(
                app,
                &mut MeteredStream::new(upstream, inbound, registration),
            )
            .await
            .map(drop)
            .map_err(copy_error)
        }
        OutboundPlan::Hbone {
            gateway,
            target,
            expected_identity,
            ..
        } => {
            let source_identity = source
                .identity()
                .map_err(|e| ProxyError::PeerIdentity(e.to_string()))?;
            let key = PoolKey {
                source_uid: pod.uid.clone(),
                source_identity,
                destination_identity: expected_identity,
                gateway,
            };
            let mut request = ConnectRequest::new(target);
            if let Some(ip) = source.addresses.first() {
                request = request.with_forwarded_for(*ip);
            }
            let mut tunnel = context
                .pool()
                .connect(&key, &request)
                .await
                .map_err(|e| ProxyError::Hbone(gateway, e))?;
            weft_hbone::copy_bidirectional(&mut tunnel, app)
                .await
                .map(drop)
                .map_err(|e| match app.get_ref().revoked() {
                    Some(reason) => ProxyError::revoked(reason),
                    None => ProxyError::Copy(io::Error::other(e)),
                })
        }
    }
}

/// Registers a connection from `source` to `destination` at `target` under the destination, so
/// that every change decides it again like one that arrived over HBONE, and decides it now by
/// the destination's inbound rules with the source identity the agent itself vouches for.
fn authorized(
    context: &ProxyContext,
    source: &Workload,
    destination: &Workload,
    target: SocketAddr,
) -> Result<PodRegistration, ProxyError> {
    let identity = source
        .identity()
        .map_err(|e| ProxyError::PeerIdentity(e.to_string()))?;
    let source_ip = source.addresses.first().copied().unwrap_or(target.ip());
    let registration = context.connections.register(
        destination.uid.clone(),
        Tracked::Inbound {
            peer: Some(identity.clone()),
            source_ip,
            target,
        },
    );
    authorize_connection(
        &context.store,
        destination,
        Some(&identity),
        source_ip,
        target,
    )?;
    Ok(registration)
}
