//! The server side: HTTP/2 on one accepted (already TLS-terminated) connection, one tunnel per
//! CONNECT stream.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span, warn};

use crate::config::H2Config;
use crate::copy::{CopyError, TunnelStats, copy_bidirectional};
use crate::request::{ConnectRequest, parse_connect_request};
use crate::stream::HboneStream;

/// Why a handler refuses a tunnel; each maps to the status the client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request is not acceptable (400).
    #[error("bad request")]
    BadRequest,
    /// The peer's identity could not be established (401).
    #[error("peer not authenticated")]
    Unauthorized,
    /// Policy denies the peer this destination (403).
    #[error("denied by policy")]
    Forbidden,
    /// An authorization policy denies the peer this destination, answered as ztunnel answers
    /// it (401, with `AuthorizationPolicyDenied` in its records).
    #[error("denied by authorization policy")]
    PolicyDenied,
    /// The destination refused or could not be reached (503).
    #[error("upstream unavailable")]
    UpstreamUnavailable,
}

impl Refusal {
    /// The HTTP status sent to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::PolicyDenied => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Decides what to do with each well-formed CONNECT on a connection.
///
/// Shared by every stream of the connection (and usually by every connection of a listener);
/// peer identity is the caller's business: it knows the TLS session it handed to
/// [`serve_connection`] and can capture what it needs in the handler.
pub trait ConnectHandler: Send + Sync + 'static {
    /// The upstream byte stream, typically a `TcpStream` to the destination.
    type Upstream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Authorizes the tunnel and connects its upstream. The client gets `200` when this returns
    /// `Ok`, the refusal's status otherwise.
    fn connect(
        &self,
        request: &ConnectRequest,
    ) -> impl Future<Output = Result<Self::Upstream, Refusal>> + Send;

    /// Called once per accepted tunnel after both directions finished or one failed, with the
    /// bytes carried (for metrics and access logs).
    fn tunnel_closed(&self, request: &ConnectRequest, outcome: &Result<TunnelStats, CopyError>) {
        let _ = (request, outcome);
    }
}

/// What one connection carried, returned by [`serve_connection`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// Tunnels answered `200`.
    pub tunnels: u64,
    /// Tunnels among them that ended with an error.
    pub failed_tunnels: u64,
    /// Requests the handler refused.
    pub refused: u64,
    /// Requests answered 400/405 without consulting the handler.
    pub malformed: u64,
    /// Bytes carried by all tunnels, in each direction.
    pub bytes: TunnelStats,
}

/// The HTTP/2 connection itself failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The HTTP/2 preface or settings exchange failed.
    #[error("http/2 handshake with the hbone client failed")]
    Handshake(#[source] h2::Error),
    /// The connection failed after the handshake.
    #[error("hbone connection failed after {} tunnels", summary.tunnels)]
    Connection {
        /// What h2 reported.
        #[source]
        source: h2::Error,
        /// What the connection carried until it failed.
        summary: ConnectionSummary,
    },
}

enum StreamOutcome {
    Malformed,
    Refused,
    /// The client went away before the 200 could be sent.
    Abandoned,
    Tunnel(Result<TunnelStats, CopyError>),
}

impl ConnectionSummary {
    fn record(&mut self, outcome: StreamOutcome) {
        match outcome {
            StreamOutcome::Malformed => self.malformed += 1,
            StreamOutcome::Refused | StreamOutcome::Abandoned => self.refused += 1,
            StreamOutcome::Tunnel(result) => {
                self.tunnels += 1;
                let stats = match result {
                    Ok(stats) => stats,
                    Err(error) => {
                        self.failed_tunnels += 1;
                        error.stats
                    }
                };
                self.bytes.from_tunnel += stats.from_tunnel;
                self.bytes.to_tunnel += stats.to_tunnel;
            }
        }
    }
}

/// Serves HBONE on one accepted connection (already TLS-terminated, ALPN `h2`) until the client
/// closes it, running every tunnel on its own task. The number of concurrent tunnels is bounded
/// by `config.max_concurrent_streams`, which the client is told in the HTTP/2 settings and which
/// h2 enforces.
pub async fn serve_connection<IO, H>(
    io: IO,
    handler: Arc<H>,
    config: H2Config,
) -> Result<ConnectionSummary, ServerError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: ConnectHandler,
{
    serve_connection_until(io, handler, config, std::future::pending()).await
}

/// [`serve_connection`], draining once `drain` completes: the client gets a GOAWAY, so it opens
/// no more tunnels here, and the connection ends when the tunnels in flight have finished. A
/// connection that has carried no tunnel yet (one accepted during a drain) gets its GOAWAY
/// with its first tunnel, as Envoy answers a new HTTP/2 connection's first request before its
/// GOAWAY: sent at once, it could overtake the client's first CONNECT (the client's answer to
/// its PING ends the grace for streams in flight) and leave the client nothing to retry on but
/// another new connection, which would fare the same.
pub async fn serve_connection_until<IO, H>(
    io: IO,
    handler: Arc<H>,
    config: H2Config,
    drain: impl Future<Output = ()> + Send,
) -> Result<ConnectionSummary, ServerError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: ConnectHandler,
{
    let mut connection = config
        .server_builder()
        .handshake::<IO, Bytes>(io)
        .await
        .map_err(ServerError::Handshake)?;
    let mut streams = JoinSet::new();
    let mut summary = ConnectionSummary::default();
    let mut drain = std::pin::pin!(drain);
    // The drain started; and whether the client was told (a GOAWAY sent).
    let mut draining = false;
    let mut told = false;
    let mut accepted_any = false;
    let failure = loop {
        if draining && accepted_any && !told {
            debug!("draining the hbone connection");
            told = true;
            connection.graceful_shutdown();
        }
        tokio::select! {
            () = &mut drain, if !draining => draining = true,
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    accepted_any = true;
                    let span = debug_span!("hbone_stream", stream_id = ?respond.stream_id());
                    streams.spawn(serve_stream(request, respond, Arc::clone(&handler)).instrument(span));
                }
                Some(Err(error)) => break Some(error),
                None => break None,
            },
            Some(finished) = streams.join_next(), if !streams.is_empty() => {
                record_finished(&mut summary, finished);
            }
        }
    };
    // Streams of a closed connection fail promptly; waiting keeps their stats in the summary.
    while let Some(finished) = streams.join_next().await {
        record_finished(&mut summary, finished);
    }
    match failure {
        None => Ok(summary),
        Some(source) => Err(ServerError::Connection { source, summary }),
    }
}

fn record_finished(
    summary: &mut ConnectionSummary,
    finished: Result<StreamOutcome, tokio::task::JoinError>,
) {
    match finished {
        Ok(outcome) => summary.record(outcome),
        Err(error) => warn!(%error, "hbone stream task failed"),
    }
}

async fn serve_stream<H: ConnectHandler>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: Arc<H>,
) -> StreamOutcome {
    let (parts, body) = request.into_parts();
    let request = match parse_connect_request(parts) {
        Ok(request) => request,
        Err(malformed) => {
            debug!(error = %malformed, "rejecting malformed hbone request");
            send_status(&mut respond, malformed.status());
            return StreamOutcome::Malformed;
        }
    };
    let (authority, forwarded_for) = (request.authority, request.forwarded_for);
    let mut upstream = match handler.connect(&request).await {
        Ok(upstream) => upstream,
        Err(refusal) => {
            debug!(dst = %authority, src = ?forwarded_for, %refusal, "hbone tunnel refused");
            send_status(&mut respond, refusal.status());
            return StreamOutcome::Refused;
        }
    };
    let send = match respond.send_response(response(StatusCode::OK), false) {
        Ok(send) => send,
        Err(error) => {
            debug!(dst = %authority, %error, "hbone client left before the tunnel was up");
            return StreamOutcome::Abandoned;
        }
    };
    let mut tunnel = HboneStream::new(send, body, None);
    let outcome = copy_bidirectional(&mut tunnel, &mut upstream).await;
    match &outcome {
        Ok(stats) => debug!(
            dst = %authority,
            src = ?forwarded_for,
            from_tunnel = stats.from_tunnel,
            to_tunnel = stats.to_tunnel,
            "hbone tunnel complete"
        ),
        Err(error) => debug!(dst = %authority, src = ?forwarded_for, %error, "hbone tunnel failed"),
    }
    handler.tunnel_closed(&request, &outcome);
    StreamOutcome::Tunnel(outcome)
}

fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

fn send_status(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    if let Err(error) = respond.send_response(response(status), true) {
        debug!(%status, %error, "could not answer hbone request");
    }
}
