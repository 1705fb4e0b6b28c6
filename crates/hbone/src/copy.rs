//! Moving bytes between a tunnel and a plain byte stream (usually a TCP socket).
//!
//! Tunnel data is written to the upstream straight from the received HTTP/2 DATA buffers, and
//! upstream data is read into one reused buffer whose filled part is handed to h2 without a
//! copy; the buffer's memory is reclaimed once h2 has written it out.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use crate::stream::HboneStream;

/// First read size from the upstream; small so idle or chatty tunnels stay cheap.
const INITIAL_READ_SIZE: usize = 16 * 1024;
/// Reads grow (doubling each time one fills the buffer) up to this size for bulk transfers.
const MAX_READ_SIZE: usize = 256 * 1024;

/// Bytes carried by one tunnel, in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Bytes received from the tunnel peer and written to the upstream.
    pub from_tunnel: u64,
    /// Bytes read from the upstream and sent to the tunnel peer.
    pub to_tunnel: u64,
}

/// Which direction of a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// Tunnel peer -> upstream.
    FromTunnel,
    /// Upstream -> tunnel peer.
    ToTunnel,
}

impl fmt::Display for CopyDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FromTunnel => "tunnel to upstream",
            Self::ToTunnel => "upstream to tunnel",
        })
    }
}

/// A copy that ended with an error, with what had been carried until then.
#[derive(Debug, thiserror::Error)]
#[error("copy {direction} failed after {} bytes from and {} bytes to the tunnel", stats.from_tunnel, stats.to_tunnel)]
pub struct CopyError {
    /// The direction that failed.
    pub direction: CopyDirection,
    /// Bytes carried before the failure.
    pub stats: TunnelStats,
    /// The underlying failure.
    #[source]
    pub source: io::Error,
}

#[derive(Default)]
struct FromTunnel {
    done: bool,
    needs_flush: bool,
    bytes: u64,
}

struct ToTunnel {
    buf: BytesMut,
    read_size: usize,
    upstream_eof: bool,
    done: bool,
    bytes: u64,
}

/// Copies both ways between `tunnel` and `upstream` until both directions have finished.
///
/// END_STREAM from the tunnel peer becomes `shutdown()` (a TCP FIN) on the upstream, and EOF from
/// the upstream becomes END_STREAM, so half-closed connections keep working in the other
/// direction. Returns the byte counts; on failure the error carries the counts so far, and the
/// caller drops the tunnel, which resets the stream.
pub async fn copy_bidirectional<S>(
    tunnel: &mut HboneStream,
    upstream: &mut S,
) -> Result<TunnelStats, CopyError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut from_tunnel = FromTunnel::default();
    let mut to_tunnel = ToTunnel {
        buf: BytesMut::new(),
        read_size: INITIAL_READ_SIZE,
        upstream_eof: false,
        done: false,
        bytes: 0,
    };
    poll_fn(|cx| {
        let stats = |f: &FromTunnel, t: &ToTunnel| TunnelStats {
            from_tunnel: f.bytes,
            to_tunnel: t.bytes,
        };
        if !from_tunnel.done {
            match poll_from_tunnel(tunnel, upstream, &mut from_tunnel, cx) {
                Poll::Ready(Ok(())) => from_tunnel.done = true,
                Poll::Ready(Err(source)) => {
                    return Poll::Ready(Err(CopyError {
                        direction: CopyDirection::FromTunnel,
                        stats: stats(&from_tunnel, &to_tunnel),
                        source,
                    }));
                }
                Poll::Pending => {}
            }
        }
        if !to_tunnel.done {
            match poll_to_tunnel(tunnel, upstream, &mut to_tunnel, cx) {
                Poll::Ready(Ok(())) => to_tunnel.done = true,
                Poll::Ready(Err(source)) => {
                    return Poll::Ready(Err(CopyError {
                        direction: CopyDirection::ToTunnel,
                        stats: stats(&from_tunnel, &to_tunnel),
                        source,
                    }));
                }
                Poll::Pending => {}
            }
        }
        if from_tunnel.done && to_tunnel.done {
            Poll::Ready(Ok(stats(&from_tunnel, &to_tunnel)))
        } else {
            Poll::Pending
        }
    })
    .await
}

fn poll_from_tunnel<S>(
    tunnel: &mut HboneStream,
    upstream: &mut S,
    state: &mut FromTunnel,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    loop {
        let has_data = match tunnel.poll_chunk(cx) {
            Poll::Ready(result) => result?,
            Poll::Pending => {
                // Nothing more to write for now: push out what a buffering upstream (TLS) holds.
                if state.needs_flush {
                    ready!(Pin::new(&mut *upstream).poll_flush(cx))?;
                    state.needs_flush = false;
                }
                return Poll::Pending;
            }
        };
        if !has_data {
            ready!(Pin::new(&mut *upstream).poll_shutdown(cx))?;
            return Poll::Ready(Ok(()));
        }
        let written = ready!(Pin::new(&mut *upstream).poll_write(cx, &tunnel.pending))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        tunnel.release(written);
        state.bytes += written as u64;
        state.needs_flush = true;
    }
}

fn poll_to_tunnel<S>(
    tunnel: &mut HboneStream,
    upstream: &mut S,
    state: &mut ToTunnel,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>>
where
    S: AsyncRead + Unpin + ?Sized,
{
    loop {
        if state.buf.is_empty() {
            if state.upstream_eof {
                tunnel.close_write()?;
                return Poll::Ready(Ok(()));
            }
            if state.buf.capacity() < state.read_size / 2 {
                // Reuses the previous allocation when h2 has released every chunk cut from it.
                state.buf.reserve(state.read_size);
            }
            let space = state.buf.capacity();
            let read = ready!(poll_read_buf(Pin::new(&mut *upstream), cx, &mut state.buf))?;
            if read == 0 {
                state.upstream_eof = true;
                continue;
            }
            if read == space && state.read_size < MAX_READ_SIZE {
                state.read_size *= 2;
            }
        }
        let sendable = ready!(tunnel.poll_send_capacity(cx, state.buf.len()))?;
        let chunk = state.buf.split_to(sendable).freeze();
        tunnel.send_data(chunk)?;
        state.bytes += sendable as u64;
    }
}
