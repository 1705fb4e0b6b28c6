//! The inbound proxies of a served pod: HBONE on 15008 (mutual TLS, then one HTTP/2 CONNECT per
//! tunnel) and plaintext on 15006 (connections `sk_lookup` steers from the pod's application
//! ports). Both check the destination address, authorize with the pod's L4 policy, and connect
//! to the application from inside the pod's namespace. Every connection and tunnel stays
//! registered with what it was authorized on while it is open (see `connections`).

use std::{io, net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use weft_hbone::{
    ConnectHandler, ConnectRequest, H2Config, MeteredClient, MeteredStream, Refusal,
    serve_connection_until,
};
use weft_identity::SpiffeId;
use weft_proxy_core::drain::DrainWatch;
use weft_proxy_core::metrics::{Reporter, SecurityPolicy};

use super::{
    connections::{Tracked, copy_error},
    context::ProxyContext,
    copy,
    error::ProxyError,
    plan::{authorize_inbound, inbound_service, inbound_source},
    record::{ConnectionGuard, ConnectionLog, Failed},
    served::ServedPod,
};

/// Serves one connection steered to a pod's plaintext inbound listener. The accepted socket's
/// local address is the original destination: `sk_lookup` selects the listener without
/// rewriting the packet.
pub(super) async fn handle_plaintext(
    context: Arc<ProxyContext>,
    pod: Arc<ServedPod>,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let _ = downstream.set_nodelay(true);
    let target = match downstream.local_addr() {
        Ok(target) => target,
        Err(error) => {
            tracing::warn!(%peer, %error, "inbound plaintext: no local address");
            return;
        }
    };
    let workload = context
        .store
        .wait_for_workload_by_uid(&pod.uid, super::WAIT_FOR_WORKLOAD)
        .await;
    let source = context.store.workload_by_ip(peer.ip());
    let service = workload
        .as_ref()
        .and_then(|w| inbound_service(&context.store, w, target.port()));
    let mut guard = context.metrics.connection_opened_between(
        Reporter::Destination,
        source.as_ref(),
        workload.as_ref(),
        service.as_ref(),
        SecurityPolicy::Unknown,
        ConnectionLog::between(peer, Some(target)),
    );
    // Registered before the decision: a change meanwhile decides it again.
    let registration = context.connections.register(
        pod.uid.clone(),
        Tracked::Inbound {
            peer: None,
            source_ip: peer.ip(),
            target,
        },
    );
    let result = async {
        let workload = workload.ok_or_else(|| ProxyError::UnknownPod(pod.uid.clone()))?;
        authorize_inbound(&context.store, &workload, None, peer.ip(), target)?;
        let upstream = pod
            .netns
            .connect_from(peer.ip(), Some(peer.port()), target)
            .await
            .map_err(|e| ProxyError::Connect(target, e))?;
        // Bytes are counted as they pass, so a long connection shows before it ends.
        let mut downstream = MeteredClient::new(&mut downstream, &guard);
        copy::tcp_both_ways(&mut downstream, &mut registration.wrap(upstream))
            .await
            .map(drop)
            .map_err(copy_error)
    }
    .await;
    match result {
        Ok(()) => {}
        Err(error) => {
            guard.failed(&error);
            tracing::warn!(%peer, %target, %error, "inbound plaintext connection refused");
        }
    }
}

/// Serves one connection accepted on a pod's HBONE listener: mutual TLS with the pod's own
/// certificate, the peer's identity checked against the trust domain, then the tunnels.
pub(super) async fn handle_hbone(
    context: Arc<ProxyContext>,
    pod: Arc<ServedPod>,
    downstream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatch,
) {
    if let Err(error) = serve_hbone(&context, &pod, downstream, peer, drain).await {
        tracing::warn!(%peer, %error, "inbound hbone connection refused");
    }
}

async fn serve_hbone(
    context: &Arc<ProxyContext>,
    pod: &Arc<ServedPod>,
    downstream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatch,
) -> Result<(), ProxyError> {
    let workload = context
        .store
        .wait_for_workload_by_uid(&pod.uid, super::WAIT_FOR_WORKLOAD)
        .await
        .ok_or_else(|| ProxyError::UnknownPod(pod.uid.clone()))?;
    let identity = workload
        .identity()
        .map_err(|e| ProxyError::PeerIdentity(e.to_string()))?;
    let accepted = pod.acceptor.accept(downstream, &identity).await?;
    let handler = Arc::new(InboundTunnels {
        context: context.clone(),
        pod: pod.clone(),
        peer: accepted.peer,
        peer_address: peer,
    });
    // The connection itself ends only with the pod's enrollment; its tunnels are decided one
    // by one.
    let registration = context
        .connections
        .register(pod.uid.clone(), Tracked::Carrier);
    // When the agent drains, the client gets a GOAWAY: its tunnels in flight finish here, its
    // next ones go on a new connection.
    match serve_connection_until(
        registration.wrap(accepted.tls),
        handler,
        H2Config::default(),
        drain.signaled(),
    )
    .await
    {
        Ok(summary) => {
            tracing::debug!(%peer, tunnels = summary.tunnels, refused = summary.refused, "hbone connection closed");
            Ok(())
        }
        Err(error) if registration.revoked().is_some() => {
            tracing::debug!(%peer, %error, "hbone connection closed: the pod left the mesh");
            Ok(())
        }
        Err(error) => Err(ProxyError::Copy(io::Error::other(error))),
    }
}

/// Authorizes and connects each CONNECT of one mutual-TLS connection.
struct InboundTunnels {
    context: Arc<ProxyContext>,
    pod: Arc<ServedPod>,
    peer: SpiffeId,
    /// The HBONE connection's TCP peer (the source pod's, or its waypoint's, address).
    peer_address: SocketAddr,
}

impl ConnectHandler for InboundTunnels {
    type Upstream = Metered;

    async fn connect(&self, request: &ConnectRequest) -> Result<Self::Upstream, Refusal> {
        let context = &self.context;
        let target = request.authority;
        let workload = context.store.workload_by_uid(&self.pod.uid);
        let source_ip = workload.as_ref().map_or(self.peer_address.ip(), |w| {
            inbound_source(
                &context.store,
                w,
                &self.peer,
                request.forwarded_for,
                self.peer_address.ip(),
            )
        });
        // On-demand mode: a source of another node is asked for first. Only the connection's
        // labels, resolved here once, use it: used now, it need not stay held. A crowded
        // source is not asked for and the connection goes on with it unknown (it is
        // authenticated; only its labels would be missing).
        let _ = context.store.fetch_address(source_ip).await;
        let source = context.store.workload_by_ip(source_ip);
        let service = workload
            .as_ref()
            .and_then(|w| inbound_service(&context.store, w, target.port()));
        let mut guard = context.metrics.connection_opened_between(
            Reporter::Destination,
            source.as_ref(),
            workload.as_ref(),
            service.as_ref(),
            SecurityPolicy::MutualTls,
            ConnectionLog::between(self.peer_address, Some(target)),
        );
        let registration = context.connections.register(
            self.pod.uid.clone(),
            Tracked::Inbound {
                peer: Some(self.peer.clone()),
                source_ip,
                target,
            },
        );
        let result = async {
            let workload = workload.ok_or_else(|| ProxyError::UnknownPod(self.pod.uid.clone()))?;
            authorize_inbound(
                &context.store,
                &workload,
                Some(&self.peer),
                source_ip,
                target,
            )?;
            self.pod
                .netns
                .connect_from(source_ip, None, target)
                .await
                .map_err(|e| ProxyError::Connect(target, e))
        }
        .await;
        match result {
            Ok(stream) => Ok(MeteredStream::new(stream, guard, registration)),
            Err(error) => {
                guard.failed(&error);
                tracing::warn!(peer = %self.peer, %source_ip, %target, %error, "hbone tunnel refused");
                Err(error.refusal())
            }
        }
    }
}

/// A tunnel's upstream socket: counts its bytes into the connection's record and fails once
/// the tunnel is revoked; dropping it (when the tunnel ends) unregisters the tunnel and closes
/// its record, which says why a revoked tunnel ended.
type Metered = MeteredStream<TcpStream, ConnectionGuard, String, Tracked>;
