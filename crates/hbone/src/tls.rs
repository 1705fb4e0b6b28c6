//! The mutual-TLS connections HBONE runs on, both ends: the [`HboneDialer`] opens them from a
//! socket a [`SocketFactory`] makes, the [`HboneAcceptor`] terminates them on accepted
//! sockets. Both take certificates from a [`CertificateSource`]; both put the 64 KiB read
//! buffer under TLS and tune the socket; the acceptor bounds the handshake in time and checks
//! the peer's identity and trust domain, so that every HBONE server of the mesh (the agents'
//! and the waypoints') makes the same checks in the same order.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_identity::{
    CertificateError, CertificateSource, PeerIdentityError, SpiffeId, TlsConfigError,
    WorkloadCertificate, client_config, hbone_server_name, peer_identity_in, server_config,
};

use crate::admission::HANDSHAKE_TIMEOUT;
use crate::socket::{SocketFactory, connect, read_buffered, tune_tcp};

/// A client's HBONE connection.
pub type ClientTls = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;
/// A server's HBONE connection.
pub type ServerTls = tokio_rustls::server::TlsStream<BufReader<TcpStream>>;

/// Why no TLS connection was established.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("certificate: no trust roots yet")]
    NoTrustRoots,
    #[error("tls configuration: {0}")]
    Configuration(#[from] TlsConfigError),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("tls handshake: {0}")]
    Handshake(#[source] io::Error),
    #[error("peer identity: {0}")]
    PeerIdentity(#[from] PeerIdentityError),
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> Self {
        match error {
            TlsError::Connect(_, error) | TlsError::Handshake(error) => error,
            other => io::Error::other(other),
        }
    }
}

/// Opens HBONE connections with the certificates of `certificates`.
#[derive(Clone)]
pub struct HboneDialer {
    certificates: Arc<dyn CertificateSource>,
}

impl std::fmt::Debug for HboneDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneDialer").finish_non_exhaustive()
    }
}

impl HboneDialer {
    pub fn new(certificates: Arc<dyn CertificateSource>) -> Self {
        Self { certificates }
    }

    /// A mutual-TLS connection to the HBONE port at `gateway`, from a socket `sockets`
    /// creates, presenting `local`'s certificate and accepting only `expected` on the other
    /// side. The certificate is asked for before anything is sent, so that a connection never
    /// waits on the CA with a socket open.
    pub async fn dial(
        &self,
        sockets: &dyn SocketFactory,
        gateway: SocketAddr,
        local: &SpiffeId,
        expected: &SpiffeId,
    ) -> Result<ClientTls, TlsError> {
        let certificate = self.certificates.fetch(local).await?;
        let roots = self
            .certificates
            .trust_roots()
            .ok_or(TlsError::NoTrustRoots)?;
        let config = client_config(&certificate, &roots, expected.clone())?;
        let tcp = connect(sockets, gateway)
            .await
            .map_err(|e| TlsError::Connect(gateway, e))?;
        TlsConnector::from(config)
            .connect(hbone_server_name(gateway.ip()), read_buffered(tcp))
            .await
            .map_err(TlsError::Handshake)
    }
}

/// An accepted HBONE connection whose peer proved who it is.
#[derive(Debug)]
pub struct Accepted {
    pub tls: ServerTls,
    /// The peer's identity, in the acceptor's trust domain.
    pub peer: SpiffeId,
}

/// Terminates HBONE connections for one listener group (a pod's HBONE listeners, a
/// waypoint's).
pub struct HboneAcceptor {
    certificates: Arc<dyn CertificateSource>,
    /// The mesh's trust domain: peers from any other are refused, whoever signed them.
    trust_domain: String,
    /// The server configuration for the last certificate presented, rebuilt only when the
    /// certificate changes (not per connection).
    server: Mutex<Option<(Arc<WorkloadCertificate>, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for HboneAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneAcceptor")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl HboneAcceptor {
    pub fn new(certificates: Arc<dyn CertificateSource>, trust_domain: impl Into<String>) -> Self {
        Self {
            certificates,
            trust_domain: trust_domain.into(),
            server: Mutex::new(None),
        }
    }

    /// Mutual TLS on `tcp` with `local`'s certificate: the certificate and the handshake within
    /// [`HANDSHAKE_TIMEOUT`] of the accept (the peer is nobody until it completes, so it holds
    /// the connection for a bounded time only), then the peer's identity, which must belong to
    /// the trust domain.
    pub async fn accept(&self, tcp: TcpStream, local: &SpiffeId) -> Result<Accepted, TlsError> {
        let _ = tune_tcp(&tcp);
        let handshake = async {
            let certificate = self.certificates.fetch(local).await?;
            let config = self.server_config(certificate)?;
            TlsAcceptor::from(config)
                .accept(read_buffered(tcp))
                .await
                .map_err(TlsError::Handshake)
        };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TlsError::Handshake(io::ErrorKind::TimedOut.into()))??;
        let peer = peer_identity_in(tls.get_ref().1, &self.trust_domain)?;
        Ok(Accepted { tls, peer })
    }

    fn server_config(
        &self,
        certificate: Arc<WorkloadCertificate>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut cached = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_for, config)) = cached.as_ref()
            && Arc::ptr_eq(built_for, &certificate)
        {
            return Ok(Arc::clone(config));
        }
        let roots = self
            .certificates
            .trust_roots()
            .ok_or(TlsError::NoTrustRoots)?;
        let config = server_config(&certificate, &roots)?;
        *cached = Some((certificate, Arc::clone(&config)));
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
