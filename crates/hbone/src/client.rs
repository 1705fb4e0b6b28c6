//! The client side: one HTTP/2 connection to a peer's port 15008 and the CONNECTs sent on it.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, debug};

use crate::config::H2Config;
use crate::request::ConnectRequest;
use crate::slot::StreamSlot;
use crate::stream::HboneStream;

/// Failure to open a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connector could not produce a (TLS) connection to the peer.
    #[error("connecting to the hbone peer failed: {0}")]
    Connect(#[source] io::Error),
    /// Connecting plus the HTTP/2 handshake took longer than allowed.
    #[error("connecting to the hbone peer timed out after {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// The HTTP/2 preface or settings exchange failed.
    #[error("http/2 handshake with the hbone peer failed: {0}")]
    Handshake(#[source] h2::Error),
    /// The CONNECT could not be sent or its response not received.
    #[error("CONNECT {authority} failed: {source}")]
    Request {
        /// Destination of the tunnel.
        authority: SocketAddr,
        /// What h2 reported.
        #[source]
        source: h2::Error,
    },
    /// The peer answered with a status other than 200.
    #[error("CONNECT {authority} refused with status {status}")]
    Status {
        /// Destination of the tunnel.
        authority: SocketAddr,
        /// The status the peer answered.
        status: StatusCode,
    },
}

impl ClientError {
    /// The HTTP status the peer refused the tunnel with, if that is what happened.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the failure says nothing about the request itself but about the connection
    /// it was sent on (closed, going away, refused before processing): the request can be
    /// retried on a fresh connection.
    pub(crate) fn is_connection_failure(&self) -> bool {
        match self {
            Self::Request { source, .. } => {
                source.is_io()
                    || source.is_go_away()
                    || source.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}

/// Runs the HTTP/2 client handshake on an established (TLS) connection. The returned
/// connection must be driven (awaited) for any stream to make progress.
pub(crate) async fn handshake<IO>(
    io: IO,
    config: &H2Config,
) -> Result<(SendRequest<Bytes>, Connection<IO, Bytes>), ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    config
        .client_builder()
        .handshake::<IO, Bytes>(io)
        .await
        .map_err(ClientError::Handshake)
}

/// Sends one CONNECT on `sender` and waits for the response.
pub(crate) async fn open_tunnel(
    mut sender: SendRequest<Bytes>,
    request: &ConnectRequest,
    slot: Option<StreamSlot>,
) -> Result<HboneStream, ClientError> {
    let authority = request.authority;
    let request_error = |source| ClientError::Request { authority, source };
    poll_fn(|cx| sender.poll_ready(cx))
        .await
        .map_err(request_error)?;
    let (response, send) = sender
        .send_request(request.to_http(), false)
        .map_err(request_error)?;
    let response = response.await.map_err(request_error)?;
    let status = response.status();
    if status != StatusCode::OK {
        return Err(ClientError::Status { authority, status });
    }
    Ok(HboneStream::new(send, response.into_body(), slot))
}

/// Opens a single tunnel on a fresh connection `io` (already TLS-established with ALPN `h2`).
///
/// The HTTP/2 connection is driven by a spawned task and closes once the returned stream is
/// dropped. Use [`Pool`](crate::Pool) to share connections between tunnels.
pub async fn connect<IO>(
    io: IO,
    request: &ConnectRequest,
    config: &H2Config,
) -> Result<HboneStream, ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = handshake(io, config).await?;
    tokio::spawn(
        async move {
            if let Err(error) = connection.await {
                debug!(%error, "hbone connection ended with an error");
            }
        }
        .in_current_span(),
    );
    open_tunnel(sender, request, None).await
}
