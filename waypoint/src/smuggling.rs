//! Request smuggling guard for HTTP/1.1 inside tunnels.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` the way
//! RFC 9112 allows (chunked wins, the connection closes afterwards) and hides the conflict from
//! the service. Envoy, and this mesh, refuse such a request outright with 400, because a
//! different proxy in front may have framed it the other way. [`FramingGuard`] follows the
//! HTTP/1.1 framing of the byte stream (heads, fixed-length and chunked bodies) so it sees every
//! request head whole before hyper does; a conflicting head is made unparsable (its
//! `Transfer-Encoding` name gets a byte no header name may contain), so hyper answers 400 and
//! closes. HTTP/2 (the preface) and upgraded connections are passed through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads larger than this are passed on as they are; hyper rejects them by its own limit.
const MAX_HEAD: usize = 96 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd(u8),
    Trailer,
    Opaque,
}

/// What a request head says about framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Both `Content-Length` and `Transfer-Encoding`: refused.
    Conflict,
    Chunked,
    Length(u64),
    /// Anything after the head is not HTTP/1.1 framing any more (HTTP/2 preface, upgrade).
    Opaque,
    /// No body: the next head follows.
    None,
}

/// Classifies a complete request head (up to and including the blank line).
pub(crate) fn classify_head(head: &[u8]) -> (Framing, Option<usize>) {
    if head.starts_with(b"PRI * HTTP/2.0") {
        return (Framing::Opaque, None);
    }
    let mut content_length = None;
    let mut transfer_encoding: Option<(usize, bool)> = None;
    let mut upgrade = false;
    let mut offset = 0;
    for (index, line) in head.split(|b| *b == b'\n').enumerate() {
        let start = offset;
        offset += line.len() + 1;
        if index == 0 {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = value.parse::<u64>().ok().or(Some(0));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            transfer_encoding = Some((start, chunked));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    match (content_length, transfer_encoding) {
        (Some(_), Some((start, _))) => (Framing::Conflict, Some(start)),
        (_, Some((_, true))) => (Framing::Chunked, None),
        // A non-chunked transfer coding cannot be framed; hyper refuses it.
        (_, Some((_, false))) => (Framing::Opaque, None),
        _ if upgrade => (Framing::Opaque, None),
        (Some(0), None) | (None, None) => (Framing::None, None),
        (Some(n), None) => (Framing::Length(n), None),
    }
}

/// Wraps the server side of an HTTP/1.1 connection; see the module documentation.
#[derive(Debug)]
pub struct FramingGuard<T> {
    inner: T,
    state: State,
    pending_head: Vec<u8>,
    line: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T) -> Self {
        FramingGuard {
            inner,
            state: State::Head,
            pending_head: Vec::new(),
            line: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; READ_CHUNK],
        }
    }

    fn finish_head(&mut self) {
        let mut head = std::mem::take(&mut self.pending_head);
        let (framing, conflict_at) = classify_head(&head);
        self.state = match framing {
            Framing::Conflict => {
                if let Some(at) = conflict_at {
                    // '(' is a delimiter, never part of a header name: the head fails to parse.
                    head[at] = b'(';
                }
                State::Opaque
            }
            Framing::Chunked => State::ChunkSize,
            Framing::Length(n) => State::Fixed(n),
            Framing::Opaque => State::Opaque,
            Framing::None => State::Head,
        };
        self.out.extend_from_slice(&head);
    }

    fn process(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Opaque => {
                    self.out.extend_from_slice(bytes);
                    return;
                }
                State::Head => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    // Empty lines before a request line are allowed and skipped by hyper.
                    if self.pending_head.is_empty() && (byte == b'\r' || byte == b'\n') {
                        self.out.push(byte);
                        continue;
                    }
                    self.pending_head.push(byte);
                    if self.pending_head.ends_with(b"\r\n\r\n")
                        || self.pending_head.ends_with(b"\n\n")
                    {
                        self.finish_head();
                    } else if self.pending_head.len() > MAX_HEAD {
                        let head = std::mem::take(&mut self.pending_head);
                        self.out.extend_from_slice(&head);
                        self.state = State::Opaque;
                    }
                }
                State::Fixed(remaining) | State::ChunkData(remaining) => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    self.out.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let left = remaining - take as u64;
                    self.state = match (self.state, left) {
                        (State::Fixed(_), 0) => State::Head,
                        (State::Fixed(_), n) => State::Fixed(n),
                        (_, 0) => State::ChunkEnd(2),
                        (_, n) => State::ChunkData(n),
                    };
                }
                State::ChunkEnd(left) => {
                    self.out.push(bytes[0]);
                    bytes = &bytes[1..];
                    self.state = if left <= 1 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left - 1)
                    };
                }
                State::ChunkSize | State::Trailer => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.out.push(byte);
                    self.line.push(byte);
                    if byte != b'\n' {
                        if self.line.len() > 4096 {
                            self.state = State::Opaque;
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    self.state = if self.state == State::Trailer {
                        if line == b"\r\n" || line == b"\n" {
                            State::Head
                        } else {
                            State::Trailer
                        }
                    } else {
                        let text = String::from_utf8_lossy(&line);
                        let size = text.split(';').next().unwrap_or("").trim();
                        match u64::from_str_radix(size, 16) {
                            Ok(0) => State::Trailer,
                            Ok(n) => State::ChunkData(n),
                            // hyper rejects the malformed chunk itself.
                            Err(_) => State::Opaque,
                        }
                    };
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Opaque && this.pending_head.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut scratch = std::mem::take(&mut this.scratch);
            let mut read = ReadBuf::new(&mut scratch);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let filled = read.filled().len();
            let result = match polled {
                Poll::Ready(Ok(())) if filled == 0 => {
                    // End of stream: release a partial head so hyper reports it.
                    let head = std::mem::take(&mut this.pending_head);
                    if head.is_empty() {
                        Some(Poll::Ready(Ok(())))
                    } else {
                        this.out.extend_from_slice(&head);
                        this.state = State::Opaque;
                        None
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.process(&scratch[..filled]);
                    None
                }
                Poll::Ready(Err(e)) => Some(Poll::Ready(Err(e))),
                Poll::Pending => Some(Poll::Pending),
            };
            this.scratch = scratch;
            if let Some(result) = result {
                return result;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn heads_are_classified_by_their_framing_headers() {
        let cases: [(&[u8], Framing); 7] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Conflict,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n",
                Framing::Conflict,
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Framing::Opaque),
            (
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                Framing::Opaque,
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(
                classify_head(head).0,
                expected,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    async fn through_guard(input: &[u8]) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guard = FramingGuard::new(server);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // Small writes: heads and chunks split across reads.
            for piece in input.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn pipelined_requests_pass_unchanged_and_a_conflict_is_poisoned() {
        let clean: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nX: y\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        assert_eq!(through_guard(clean).await, clean);

        let smuggled: &[u8] =
            b"GET /ok HTTP/1.1\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let out = through_guard(smuggled).await;
        assert_eq!(out.len(), smuggled.len());
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("GET /ok HTTP/1.1\r\n\r\n"), "{text}");
        assert!(text.contains("\r\n(ransfer-Encoding: chunked"), "{text}");
    }
}
