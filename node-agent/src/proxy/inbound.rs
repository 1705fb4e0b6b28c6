//! The inbound proxies of a served pod: HBONE on 15008 (mutual TLS, then one HTTP/2 CONNECT per
//! tunnel) and plaintext on 15006 (connections `sk_lookup` steers from the pod's application
//! ports). Both check the destination address, authorize with the pod's L4 policy, and connect
//! to the application from inside the pod's namespace. Every connection and tunnel stays
//! registered with what it was authorized on while it is open (see `connections`).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsAcceptor;
use weft_hbone::{
    ConnectHandler, ConnectRequest, H2Config, Refusal, Registration, Revocable,
    admission::HANDSHAKE_TIMEOUT, serve_connection,
};
use weft_identity::{SpiffeId, WorkloadCertificate, peer_identity_in, server_config};

use super::{
    ProxyContext, ProxyError,
    connections::{Tracked, copy_error},
    copy,
    outbound::connect_in,
    plan::{InboundRefusal, authorize_inbound, inbound_service, inbound_source},
    pods::ServedPod,
};
use crate::{certificates::CertificateSource, metrics::ConnectionGuard};

/// Serves one connection steered to a pod's plaintext inbound listener. The accepted socket's
/// local address is the original destination: `sk_lookup` selects the listener without
/// rewriting the packet.
pub(super) async fn handle_plaintext<C: CertificateSource>(
    context: Arc<ProxyContext<C>>,
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
    let workload = context.store.workload_by_uid(&pod.uid);
    let source = context.store.workload_by_ip(peer.ip());
    let service = workload
        .as_ref()
        .and_then(|w| inbound_service(&context.store, w, target.port()));
    let mut guard = context.metrics.connection_opened_between(
        "destination",
        source.as_ref(),
        workload.as_ref(),
        service.as_ref(),
        "unknown",
    );
    guard.set_source(peer);
    guard.set_destination(target);
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
        let upstream = connect_in(&pod.netns, target)
            .await
            .map_err(|e| ProxyError::Connect(target, e))?;
        copy::tcp_both_ways(&mut downstream, &mut registration.wrap(upstream))
            .await
            .map_err(copy_error)
    }
    .await;
    match result {
        Ok((received, sent)) => {
            guard.add_received(received);
            guard.add_sent(sent);
        }
        Err(error) => {
            guard.set_response_flags(error.response_flags());
            guard.set_error(&error);
            tracing::warn!(%peer, %target, %error, "inbound plaintext connection refused");
        }
    }
}

/// Serves one connection accepted on a pod's HBONE listener: mutual TLS with the pod's own
/// certificate, the peer's identity checked against the trust domain, then the tunnels.
pub(super) async fn handle_hbone<C: CertificateSource>(
    context: Arc<ProxyContext<C>>,
    pod: Arc<ServedPod>,
    downstream: TcpStream,
    peer: SocketAddr,
) {
    if let Err(error) = serve_hbone(&context, &pod, downstream, peer).await {
        tracing::warn!(%peer, %error, "inbound hbone connection refused");
    }
}

async fn serve_hbone<C: CertificateSource>(
    context: &Arc<ProxyContext<C>>,
    pod: &Arc<ServedPod>,
    downstream: TcpStream,
    peer: SocketAddr,
) -> Result<(), ProxyError> {
    let _ = weft_hbone::tune_tcp(&downstream);
    let workload = context
        .store
        .workload_by_uid(&pod.uid)
        .ok_or_else(|| ProxyError::UnknownPod(pod.uid.clone()))?;
    let identity = workload
        .identity()
        .map_err(|e| ProxyError::PeerIdentity(e.to_string()))?;
    let handshake = async {
        let certificate = context
            .certificates
            .fetch(&identity)
            .await
            .map_err(|e| ProxyError::Certificate(e.to_string()))?;
        let config = pod_server_config(context, pod, certificate)?;
        TlsAcceptor::from(config)
            .accept(weft_hbone::read_buffered(downstream))
            .await
            .map_err(ProxyError::Tls)
    };
    // The peer is nobody until its handshake completes: it holds the connection for a bounded
    // time only.
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ProxyError::Tls(io::ErrorKind::TimedOut.into()))??;
    let peer_id = peer_identity_in(tls.get_ref().1, &context.trust_domain)
        .map_err(|e| ProxyError::PeerIdentity(e.to_string()))?;
    let handler = Arc::new(InboundTunnels {
        context: context.clone(),
        pod: pod.clone(),
        peer: peer_id,
        peer_address: peer,
    });
    // The connection itself ends only with the pod's enrollment; its tunnels are decided one
    // by one.
    let registration = context
        .connections
        .register(pod.uid.clone(), Tracked::Carrier);
    match serve_connection(registration.wrap(tls), handler, H2Config::default()).await {
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

/// The pod's HBONE server configuration for `certificate`, from the pod's cache when the
/// certificate is the one it was built for.
fn pod_server_config<C: CertificateSource>(
    context: &ProxyContext<C>,
    pod: &ServedPod,
    certificate: Arc<WorkloadCertificate>,
) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let mut cached = pod.server_tls.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((built_for, config)) = cached.as_ref()
        && Arc::ptr_eq(built_for, &certificate)
    {
        return Ok(config.clone());
    }
    let roots = context
        .certificates
        .trust_roots()
        .ok_or_else(|| ProxyError::Certificate("no trust roots yet".into()))?;
    let config =
        server_config(&certificate, &roots).map_err(|e| ProxyError::Certificate(e.to_string()))?;
    *cached = Some((certificate, config.clone()));
    Ok(config)
}

/// Authorizes and connects each CONNECT of one mutual-TLS connection.
struct InboundTunnels<C> {
    context: Arc<ProxyContext<C>>,
    pod: Arc<ServedPod>,
    peer: SpiffeId,
    /// The HBONE connection's TCP peer (the source pod's, or its waypoint's, address).
    peer_address: SocketAddr,
}

impl<C: CertificateSource> ConnectHandler for InboundTunnels<C> {
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
        let source = context.store.workload_by_ip(source_ip);
        let service = workload
            .as_ref()
            .and_then(|w| inbound_service(&context.store, w, target.port()));
        let mut guard = context.metrics.connection_opened_between(
            "destination",
            source.as_ref(),
            workload.as_ref(),
            service.as_ref(),
            "mutual_tls",
        );
        guard.set_source(self.peer_address);
        guard.set_destination(target);
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
            connect_in(&self.pod.netns, target)
                .await
                .map_err(|e| ProxyError::Connect(target, e))
        }
        .await;
        match result {
            Ok(stream) => Ok(Metered {
                stream: registration.wrap(stream),
                guard,
                registration,
            }),
            Err(error) => {
                guard.set_response_flags(error.response_flags());
                guard.set_error(&error);
                tracing::warn!(peer = %self.peer, %source_ip, %target, %error, "hbone tunnel refused");
                Err(match error {
                    ProxyError::Refused(
                        InboundRefusal::NotServedHere(_) | InboundRefusal::AgentPort(_),
                    ) => Refusal::BadRequest,
                    ProxyError::Refused(_) => Refusal::Forbidden,
                    _ => Refusal::UpstreamUnavailable,
                })
            }
        }
    }
}

/// A tunnel's upstream socket: counts its bytes into the connection's metrics guard and fails
/// once the tunnel is revoked; dropping it (when the tunnel ends) unregisters the tunnel and
/// closes its record, which says why a revoked tunnel ended.
pub(crate) struct Metered {
    stream: Revocable<TcpStream>,
    guard: ConnectionGuard,
    registration: Registration<String, Tracked>,
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(reason) = self.registration.revoked() {
            let error = ProxyError::revoked(reason);
            self.guard.set_response_flags(error.response_flags());
            self.guard.set_error(&error);
        }
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        // Read from the application: the response direction, `sent` in Istio's terms.
        self.guard.add_sent((buf.filled().len() - before) as u64);
        poll
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.guard.add_received(*n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
