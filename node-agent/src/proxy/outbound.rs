//! The outbound proxy: connections an enrolled pod's applications make, redirected by eBPF to the
//! pod's `127.0.0.1:15001`, carried to their destination over HBONE, to a pod served by this very
//! agent directly, or as plain TCP to destinations outside the mesh.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::{
    io::BufReader,
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::TlsConnector;
use weft_hbone::{ConnectRequest, Connector, Pool, PoolConfig, Revocable};
use weft_identity::{SpiffeId, client_config, hbone_server_name};

use super::{
    ProxyContext, ProxyError,
    connections::{Tracked, copy_error},
    copy,
    plan::{OutboundPlan, authorize_inbound, plan_outbound},
    pods::{ServedPod, ServedPods},
};
use crate::{certificates::CertificateSource, netns::PodNetns, state::Workload};

/// HBONE connections are shared per source pod (its address), the two identities and the
/// destination gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    source_uid: String,
    source_identity: SpiffeId,
    destination_identity: SpiffeId,
    gateway: SocketAddr,
}

pub(crate) type HbonePool<C> = Pool<PoolKey, HboneConnector<C>>;

pub(crate) fn new_pool<C: CertificateSource>(
    certificates: Arc<C>,
    pods: ServedPods,
) -> HbonePool<C> {
    Pool::new(HboneConnector { certificates, pods }, PoolConfig::default())
}

/// Opens the TLS connections the pool multiplexes: a TCP socket inside the source pod's
/// namespace (so it carries the pod's address), mutual TLS with the source's certificate,
/// accepting only the expected destination identity.
pub(crate) struct HboneConnector<C> {
    certificates: Arc<C>,
    pods: ServedPods,
}

impl<C: CertificateSource> Connector<PoolKey> for HboneConnector<C> {
    type Io = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;

    async fn connect(&self, key: &PoolKey) -> io::Result<Self::Io> {
        let pod = self.pods.get(&key.source_uid).ok_or_else(|| {
            io::Error::other(format!("source pod {} is no longer served", key.source_uid))
        })?;
        let certificate = self
            .certificates
            .fetch(&key.source_identity)
            .await
            .map_err(io::Error::other)?;
        let roots = self
            .certificates
            .trust_roots()
            .ok_or_else(|| io::Error::other("no trust roots yet"))?;
        let config = client_config(&certificate, &roots, key.destination_identity.clone())
            .map_err(io::Error::other)?;
        let tcp = connect_in(&pod.netns, key.gateway).await?;
        TlsConnector::from(config)
            .connect(
                hbone_server_name(key.gateway.ip()),
                weft_hbone::read_buffered(tcp),
            )
            .await
    }
}

/// Connects to `target` from a socket created inside `netns`, marked as the agent's own
/// ([`weft_ebpf_common::AGENT_SOCKET_MARK`]): the capture programs run for every socket of an
/// enrolled pod's namespace and must leave the agent's connections where they go.
pub(crate) async fn connect_in(netns: &PodNetns, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = netns.run(|| {
        if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    })??;
    socket2::SockRef::from(&socket).set_mark(weft_ebpf_common::AGENT_SOCKET_MARK)?;
    let stream = socket.connect(target).await?;
    weft_hbone::tune_tcp(&stream)?;
    Ok(stream)
}

/// Serves one connection accepted on a pod's outbound listener.
pub(super) async fn handle<C: CertificateSource>(
    context: Arc<ProxyContext<C>>,
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
    let mut app = registration.wrap(app);
    let source = context.store.workload_by_uid(&pod.uid);
    let planned = match &source {
        None => Err(ProxyError::UnknownPod(pod.uid.clone())),
        Some(source) => context
            .original_destination
            .take_original_dst(pod.netns_cookie, peer)
            .map_err(|e| ProxyError::OriginalDestination(e.to_string()))
            .and_then(|found| found.ok_or(ProxyError::NoOriginalDestination(peer)))
            .and_then(|original| {
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
                "source",
                source.as_ref(),
                None,
                None,
                "unknown",
            );
            guard.set_response_flags(error.response_flags());
            guard.set_source(peer);
            guard.set_error(&error);
            tracing::warn!(%peer, %error, "outbound connection refused");
            return;
        }
    };
    let source = source.expect("planned only with a source");
    let (destination, service, security) = match &plan {
        OutboundPlan::Passthrough { .. } => (None, None, "unknown"),
        OutboundPlan::Hbone {
            destination,
            service,
            ..
        } => (Some(destination.clone()), service.clone(), "mutual_tls"),
        OutboundPlan::Local {
            destination,
            service,
            ..
        } => (Some(destination.clone()), service.clone(), "unknown"),
    };
    let mut guard = context.metrics.connection_opened_between(
        "source",
        Some(&source),
        destination.as_ref(),
        service.as_ref(),
        security,
    );
    guard.set_source(peer);
    guard.set_destination(original);
    match execute(&context, &pod, &source, &mut app, plan).await {
        Ok((received, sent)) => {
            guard.add_received(received);
            guard.add_sent(sent);
            tracing::debug!(%peer, %original, elapsed_ms = started.elapsed().as_millis() as u64, "outbound connection complete");
        }
        Err(error) => {
            guard.set_response_flags(error.response_flags());
            guard.set_error(&error);
            tracing::warn!(%peer, %original, %error, "outbound connection failed");
        }
    }
}

/// Carries the connection; returns (bytes from the app, bytes to the app).
async fn execute<C: CertificateSource>(
    context: &ProxyContext<C>,
    pod: &ServedPod,
    source: &Workload,
    app: &mut Revocable<TcpStream>,
    plan: OutboundPlan,
) -> Result<(u64, u64), ProxyError> {
    match plan {
        OutboundPlan::Passthrough { target } => {
            let mut upstream = connect_in(&pod.netns, target)
                .await
                .map_err(|e| ProxyError::Connect(target, e))?;
            copy::tcp_both_ways(app, &mut upstream)
                .await
                .map_err(copy_error)
        }
        OutboundPlan::Local {
            target,
            destination,
            ..
        } => {
            // Same node: no TLS, but the destination's inbound rules still apply, with the
            // source identity the agent itself vouches for.
            let identity = source
                .identity()
                .map_err(|e| ProxyError::PeerIdentity(e.to_string()))?;
            let source_ip = source.addresses.first().copied().unwrap_or(target.ip());
            // The destination pod's connection, decided again on every change like one that
            // arrived over HBONE.
            let registration = context.connections.register(
                destination.uid.clone(),
                Tracked::Inbound {
                    peer: Some(identity.clone()),
                    source_ip,
                    target,
                },
            );
            authorize_inbound(
                &context.store,
                &destination,
                Some(&identity),
                source_ip,
                target,
            )?;
            let destination_pod = context
                .pods
                .get(&destination.uid)
                .ok_or_else(|| ProxyError::UnknownPod(destination.uid.clone()))?;
            let upstream = connect_in(&destination_pod.netns, target)
                .await
                .map_err(|e| ProxyError::Connect(target, e))?;
            copy::tcp_both_ways(app, &mut registration.wrap(upstream))
                .await
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
            let stats = weft_hbone::copy_bidirectional(&mut tunnel, app)
                .await
                .map_err(|e| match app.revoked() {
                    Some(reason) => ProxyError::revoked(reason),
                    None => ProxyError::Copy(io::Error::other(e)),
                })?;
            Ok((stats.to_tunnel, stats.from_tunnel))
        }
    }
}
