//! One open HBONE tunnel as a byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::slot::StreamSlot;

/// An established tunnel: the HTTP/2 stream of one accepted `CONNECT`.
///
/// Reading returns the peer's bytes (flow-control capacity is released as they are consumed,
/// so a slow reader throttles the sender); writing waits for send capacity; shutdown sends
/// END_STREAM, the HTTP/2 form of a TCP half-close. Dropping it before both directions
/// finished resets the stream.
pub struct HboneStream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// The part of the last received DATA frame not yet handed to the reader.
    pub(crate) pending: Bytes,
    pub(crate) read_closed: bool,
    pub(crate) write_closed: bool,
    /// Keeps the pooled connection's stream count while the tunnel lives.
    _slot: Option<StreamSlot>,
}

impl std::fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneStream")
            .field("stream_id", &self.send.stream_id())
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl HboneStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, slot: Option<StreamSlot>) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            read_closed: false,
            write_closed: false,
            _slot: slot,
        }
    }

    /// Next chunk of peer data, or `None` at END_STREAM. Capacity of the returned chunk is not
    /// yet released: the caller releases it with [`Self::release`] as it consumes bytes.
    pub(crate) fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.pending.is_empty() {
            if self.read_closed {
                return Poll::Ready(Ok(false));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => self.read_closed = true,
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Marks `consumed` bytes of the pending chunk as delivered and returns their flow-control
    /// capacity to the peer.
    pub(crate) fn release(&mut self, consumed: usize) {
        self.pending.advance(consumed);
        // Fails only when the stream is already gone, in which case the capacity is moot.
        let _ = self.recv.flow_control().release_capacity(consumed);
    }

    /// Waits until at least one byte of send capacity is assigned (asking for `wanted`) and
    /// returns how many bytes may be sent now.
    pub(crate) fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "hbone stream already shut down for writing",
            )));
        }
        self.send.reserve_capacity(wanted);
        loop {
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(wanted)));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "hbone stream closed by peer",
                    )));
                }
            }
        }
    }

    /// Sends `data`, which must fit in the capacity granted by [`Self::poll_send_capacity`].
    pub(crate) fn send_data(&mut self, data: Bytes) -> io::Result<()> {
        self.send.send_data(data, false).map_err(h2_to_io)
    }

    /// Sends END_STREAM once.
    pub(crate) fn close_write(&mut self) -> io::Result<()> {
        if self.write_closed {
            return Ok(());
        }
        self.write_closed = true;
        self.send.send_data(Bytes::new(), true).map_err(h2_to_io)
    }
}

impl AsyncRead for HboneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !ready!(this.poll_chunk(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send_data(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes queued frames as soon as it can; nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().close_write())
    }
}

/// h2 errors as I/O errors, keeping the underlying I/O error when there is one.
pub(crate) fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        return error
            .into_io()
            .unwrap_or_else(|| io::Error::other("http/2 i/o error"));
    }
    let kind = if error.is_reset() || error.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, error)
}
