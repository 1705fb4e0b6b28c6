//! The upstream's byte streams to endpoints' applications: HBONE tunnels (one
//! [`weft_hbone::Pool`] per worker, dialed through the shared [`HboneDialer`] with the
//! waypoint's certificate) and plain TCP to endpoints outside the mesh, under the cluster's
//! connect timeout; when the cluster originates TLS ([`super::tls`]), the handshake goes over
//! either, inside the tunnel for a mesh endpoint (as Istio's waypoint wraps a DestinationRule's
//! TLS socket in the internal upstream that the tunnel carries). The HTTP client connections
//! over them are pooled in [`super`].
//!
//! A cluster with a PROXY protocol setting gets the header first on each stream
//! ([`super::proxy_protocol`]): inside the HBONE tunnel, where Istio's waypoint writes it (its
//! PROXY transport socket wraps the internal upstream that the tunnel carries), and before the
//! TLS the waypoint originates, as Envoy's socket wraps the TLS one.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_hbone::{ClientTls, ConnectRequest, Connector, HboneDialer, PlainSocketFactory};
use weft_identity::SpiffeId;

use super::proxy_protocol::{self, Downstream};
use super::{BoxedIo, OriginatedTls, Upstream, UpstreamError, UpstreamIo};
use crate::model::{Cluster, Endpoint, Tunnel};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TunnelKey {
    dial: SocketAddr,
    identity: SpiffeId,
}

/// Dials endpoints' HBONE ports with the waypoint's certificate, from the waypoint's own
/// network namespace.
pub(super) struct EndpointDialer {
    dialer: HboneDialer,
    identity: SpiffeId,
}

impl EndpointDialer {
    pub(super) fn new(dialer: HboneDialer, identity: SpiffeId) -> Self {
        Self { dialer, identity }
    }
}

impl Connector<TunnelKey> for EndpointDialer {
    type Io = ClientTls;

    async fn connect(&self, key: &TunnelKey) -> io::Result<ClientTls> {
        Ok(self
            .dialer
            .dial(&PlainSocketFactory, key.dial, &self.identity, &key.identity)
            .await?)
    }
}

impl Upstream {
    /// Opens a byte stream to `endpoint`'s application: an HBONE tunnel with CONNECT authority
    /// `ip:port` and `forwarded: for=<the downstream's source>`, or TCP for endpoints outside
    /// the mesh; the cluster's PROXY header first on either, then the TLS it originates. Settings
    /// whose credential cannot be used fail before any connection is opened.
    pub async fn open_stream(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        downstream: &Downstream,
    ) -> Result<BoxedIo, UpstreamError> {
        let failure = |reason: String| UpstreamError::ConnectFailure {
            endpoint: endpoint.address,
            reason,
        };
        let header = cluster.proxy_protocol.map(|version| {
            proxy_protocol::header(version, downstream.source, downstream.destination)
        });
        let header = header.as_deref();
        if let Some(reason) = cluster.tls.as_ref().and_then(OriginatedTls::unusable) {
            return Err(failure(format!("tls: {reason}")));
        }
        let connect = async {
            match (endpoint.tunnel, &endpoint.identity) {
                (Tunnel::Hbone, Some(identity)) => {
                    // Through a waypoint: its HBONE port, CONNECT still to the address.
                    let tunnel_end = endpoint.tunnel_via.map_or(endpoint.address, |via| {
                        SocketAddr::new(via, endpoint.address.port())
                    });
                    let key = TunnelKey {
                        dial: (self.inner.resolve)(tunnel_end),
                        identity: identity.clone(),
                    };
                    let request = ConnectRequest::new(endpoint.address)
                        .with_forwarded_for(downstream.source.ip());
                    let mut stream = self
                        .pools()
                        .tunnels
                        .connect(&key, &request)
                        .await
                        .map_err(|e| failure(e.to_string()))?;
                    write_header(&mut stream, header)
                        .await
                        .map_err(|e| failure(format!("proxy protocol: {e}")))?;
                    originate(cluster, endpoint, stream).await.map_err(failure)
                }
                _ => {
                    let mut tcp = TcpStream::connect(endpoint.address)
                        .await
                        .map_err(|e| failure(e.to_string()))?;
                    // Kept-alive connections carry one request after another: no Nagle delay.
                    // HBONE tunnels are shared by every service, so only these take the
                    // cluster's keepalive.
                    let keepalive = cluster.limits.tcp_keepalive.unwrap_or_default();
                    weft_hbone::tune_tcp_with(&tcp, &keepalive)
                        .map_err(|e| failure(e.to_string()))?;
                    write_header(&mut tcp, header)
                        .await
                        .map_err(|e| failure(format!("proxy protocol: {e}")))?;
                    originate(cluster, endpoint, tcp).await.map_err(failure)
                }
            }
        };
        match cluster.limits.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect)
                .await
                .map_err(|_| failure("connect timeout".to_owned()))?,
            None => connect.await,
        }
    }
}

/// `io` as the application reads it: inside the TLS the cluster originates, if any.
async fn originate(
    cluster: &Cluster,
    endpoint: &Endpoint,
    io: impl UpstreamIo,
) -> Result<BoxedIo, String> {
    match &cluster.tls {
        Some(tls) => tls
            .connect(io, endpoint.host.as_deref())
            .await
            .map(|s| Box::new(s) as BoxedIo)
            .map_err(|e| format!("tls: {e}")),
        None => Ok(Box::new(io) as BoxedIo),
    }
}

/// Writes the PROXY header, if any, before anything else goes on `io`.
async fn write_header(io: &mut (impl AsyncWrite + Unpin), header: Option<&[u8]>) -> io::Result<()> {
    match header {
        Some(header) => io.write_all(header).await,
        None => Ok(()),
    }
}
