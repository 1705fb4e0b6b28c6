//! What a connection's first bytes say: HTTP or opaque TCP on a port without a declared
//! protocol, HTTP/1.1 or HTTP/2 on an HTTP one; the bytes read to tell are replayed
//! ([`PrefixedIo`]).

use std::time::Duration;

/// The HTTP version of a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HttpVersion {
    Http1,
    Http2,
}

/// HTTP/2's connection preface: a connection that starts with it speaks HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The version `bytes` start with: HTTP/2 once they hold its whole preface, HTTP/1.1 at the
/// first byte that departs from it. `None`: not enough bytes to tell.
fn version_of(bytes: &[u8]) -> Option<HttpVersion> {
    let common = bytes.len().min(H2_PREFACE.len());
    if bytes[..common] != H2_PREFACE[..common] {
        return Some(HttpVersion::Http1);
    }
    (common == H2_PREFACE.len()).then_some(HttpVersion::Http2)
}

/// Reads the first bytes of a connection (at most HTTP/2's preface, within `limit`) for its
/// version; the bytes read are replayed. `None`: the client closed or sent nothing in time.
pub(super) async fn read_http_version<IO>(
    mut io: IO,
    limit: Duration,
) -> Option<(HttpVersion, PrefixedIo<IO>)>
where
    IO: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut prefix = [0u8; H2_PREFACE.len()];
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + limit;
    let version = loop {
        if let Some(version) = version_of(&prefix[..read]) {
            break version;
        }
        match tokio::time::timeout_at(deadline, io.read(&mut prefix[read..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => read += n,
        }
    };
    Some((version, PrefixedIo::new(prefix[..read].to_vec(), io)))
}

/// How long a port without a declared protocol waits for the client's first bytes before it
/// is treated as TCP (a server-first protocol sends nothing).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes enough to recognise a request line or the HTTP/2 preface.
const SNIFF_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniffed {
    Http,
    Opaque,
}

/// Whether `bytes` start like HTTP: the HTTP/2 preface, or `METHOD SP` with an upper-case
/// token method. `None`: not enough bytes to tell.
fn classify_prefix(bytes: &[u8]) -> Option<Sniffed> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    if !bytes.is_empty() && PREFACE.starts_with(&bytes[..bytes.len().min(PREFACE.len())]) {
        return (bytes.len() >= PREFACE.len()).then_some(Sniffed::Http);
    }
    for (index, byte) in bytes.iter().enumerate() {
        match byte {
            b'A'..=b'Z' | b'-' if index < 20 => continue,
            b' ' if index > 0 => return Some(Sniffed::Http),
            _ => return Some(Sniffed::Opaque),
        }
    }
    if bytes.len() >= 20 {
        Some(Sniffed::Opaque)
    } else {
        None
    }
}

/// Reads the first bytes of a tunnel to tell HTTP from opaque TCP; the bytes read are replayed.
pub(super) async fn sniff_protocol(
    mut io: tokio::io::DuplexStream,
) -> (Sniffed, PrefixedIo<tokio::io::DuplexStream>) {
    use tokio::io::AsyncReadExt;
    let mut prefix = Vec::with_capacity(SNIFF_BYTES);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let kind = loop {
        if let Some(kind) = classify_prefix(&prefix) {
            break kind;
        }
        let mut chunk = [0u8; SNIFF_BYTES];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break Sniffed::Opaque,
            Ok(Ok(n)) => prefix.extend_from_slice(&chunk[..n]),
        }
    };
    (kind, PrefixedIo::new(prefix, io))
}

/// Replays `prefix` before reading from `inner`.
pub(crate) struct PrefixedIo<T> {
    prefix: Vec<u8>,
    position: usize,
    inner: T,
}

impl<T> PrefixedIo<T> {
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Self {
        PrefixedIo {
            prefix,
            position: 0,
            inner,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.position < self.prefix.len() {
            let n = (self.prefix.len() - self.position).min(buf.remaining());
            let start = self.position;
            buf.put_slice(&self.prefix[start..start + n]);
            self.position += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    // TLS writes its queued records in one vectored write when the stream can take one.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_http_from_tcp() {
        let cases: [(&[u8], Option<Sniffed>); 9] = [
            (b"GET / HTTP/1.1\r\n", Some(Sniffed::Http)),
            (b"M-SEARCH * HTTP/1.1", Some(Sniffed::Http)),
            (b"PRI * HTTP/2.0\r\n\r\nSM", Some(Sniffed::Http)),
            (b"PRI * HT", None),
            (b"GE", None),
            (b"", None),
            (b"\x16\x03\x01\x02\x00", Some(Sniffed::Opaque)),
            (b"get / HTTP/1.1", Some(Sniffed::Opaque)),
            (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", Some(Sniffed::Opaque)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                classify_prefix(bytes),
                expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn the_first_bytes_tell_the_http_version() {
        let cases: [(&[u8], Option<HttpVersion>); 7] = [
            (b"", None),
            (b"PRI * HT", None),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Some(HttpVersion::Http2),
            ),
            (b"GET / HTTP/1.1\r\n", Some(HttpVersion::Http1)),
            (b"G", Some(HttpVersion::Http1)),
            (b"PRI / HTTP/1.1\r\n", Some(HttpVersion::Http1)),
            (
                b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
                Some(HttpVersion::Http1),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                version_of(bytes),
                expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    /// The bytes read to tell the version are replayed, whatever pieces they came in.
    #[tokio::test]
    async fn the_version_is_read_and_the_bytes_replayed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (pieces, version) in [
            (
                vec![&b"PRI * HTTP/2.0\r\n"[..], b"\r\nSM\r\n\r\nmore"],
                HttpVersion::Http2,
            ),
            (vec![&b"P"[..], b"OST / HTTP/1.1\r\n"], HttpVersion::Http1),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            let sent: Vec<u8> = pieces.concat();
            let writer = tokio::spawn(async move {
                for piece in pieces {
                    client.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            let (read, mut io) = read_http_version(server, Duration::from_secs(5))
                .await
                .expect("a version");
            assert_eq!(read, version);
            writer.await.unwrap();
            let mut replayed = vec![0u8; sent.len()];
            io.read_exact(&mut replayed).await.unwrap();
            assert_eq!(replayed, sent);
        }
        // Nothing sent in time, or a closed connection: no version.
        let (_client, server) = tokio::io::duplex(1024);
        assert!(
            read_http_version(server, Duration::from_millis(50))
                .await
                .is_none()
        );
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        assert!(
            read_http_version(server, Duration::from_secs(5))
                .await
                .is_none()
        );
    }
}
