//! The upstream stream of one carried connection: it counts the bytes that pass into the
//! connection's record as they flow, fails once its connection is revoked, and, when dropped,
//! tells the record why a revoked connection ended before the record writes its access-log
//! event. Both proxies carry their connections' upstreams in it; what a record is (its metric
//! families, its log format) is theirs.

use std::hash::Hash;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::revoke::{Registration, Revocable};

/// Where a metered stream counts.
pub trait ByteMeter: Send + Sync + 'static {
    /// Bytes read from the upstream: sent toward the client (the response direction, `sent`
    /// in Istio's terms).
    fn add_sent(&self, bytes: u64);
    /// Bytes written to the upstream: received from the client.
    fn add_received(&self, bytes: u64);
    /// The connection was revoked for `reason`: called once, as the stream is dropped.
    fn revoked(&mut self, reason: &str);
}

/// A connection's upstream stream, metered and revocable. Dropping it (when the connection
/// ends) ends its registration and its record, in that order after the record learned why a
/// revoked connection ended.
pub struct MeteredStream<S, M: ByteMeter, G: Eq + Hash + Clone, K> {
    inner: Revocable<S>,
    meter: M,
    registration: Registration<G, K>,
}

impl<S, M: ByteMeter, G: Eq + Hash + Clone, K> std::fmt::Debug for MeteredStream<S, M, G, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStream")
            .field("revoked", &self.registration.revoked())
            .finish_non_exhaustive()
    }
}

impl<S, M: ByteMeter, G: Eq + Hash + Clone, K> MeteredStream<S, M, G, K> {
    /// `stream`, failing once `registration` is revoked, counted into `meter`.
    pub fn new(stream: S, meter: M, registration: Registration<G, K>) -> Self {
        Self {
            inner: registration.wrap(stream),
            meter,
            registration,
        }
    }
}

impl<S, M: ByteMeter, G: Eq + Hash + Clone, K> Drop for MeteredStream<S, M, G, K> {
    fn drop(&mut self) {
        if let Some(reason) = self.registration.revoked() {
            self.meter.revoked(reason);
        }
    }
}

impl<S: AsyncRead + Unpin, M: ByteMeter, G: Eq + Hash + Clone, K> AsyncRead
    for MeteredStream<S, M, G, K>
where
    Self: Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        counted_read(&mut this.inner, cx, buf, |n| this.meter.add_sent(n))
    }
}

impl<S: AsyncWrite + Unpin, M: ByteMeter, G: Eq + Hash + Clone, K> AsyncWrite
    for MeteredStream<S, M, G, K>
where
    Self: Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        counted_write(&mut this.inner, cx, data, |n| this.meter.add_received(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A read from `inner`, its bytes given to `count`.
fn counted_read<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    count: impl FnOnce(u64),
) -> Poll<io::Result<()>> {
    let before = buf.filled().len();
    let poll = Pin::new(inner).poll_read(cx, buf);
    if let Poll::Ready(Ok(())) = poll {
        count((buf.filled().len() - before) as u64);
    }
    poll
}

/// A write to `inner`, the bytes it took given to `count`.
fn counted_write<S: AsyncWrite + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    data: &[u8],
    count: impl FnOnce(u64),
) -> Poll<io::Result<usize>> {
    let poll = Pin::new(inner).poll_write(cx, data);
    if let Poll::Ready(Ok(written)) = poll {
        count(written as u64);
    }
    poll
}

/// A connection's client side, counted into its meter as bytes pass: what is read from the
/// client is received, what is written to it is sent. For the connections whose upstream is
/// not a [`MeteredStream`], so that their bytes too show while they flow (as ztunnel counts).
pub struct MeteredClient<'m, S, M: ?Sized> {
    inner: S,
    meter: &'m M,
}

impl<'m, S, M: ByteMeter + ?Sized> MeteredClient<'m, S, M> {
    pub fn new(inner: S, meter: &'m M) -> Self {
        Self { inner, meter }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin, M: ByteMeter + ?Sized> AsyncRead for MeteredClient<'_, S, M> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        counted_read(&mut this.inner, cx, buf, |n| this.meter.add_received(n))
    }
}

impl<S: AsyncWrite + Unpin, M: ByteMeter + ?Sized> AsyncWrite for MeteredClient<'_, S, M> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        counted_write(&mut this.inner, cx, data, |n| this.meter.add_sent(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::revoke::ConnectionRegistry;

    #[derive(Default)]
    struct Counted {
        sent: AtomicU64,
        received: AtomicU64,
        revoked: Mutex<Option<String>>,
    }

    impl ByteMeter for Arc<Counted> {
        fn add_sent(&self, bytes: u64) {
            self.sent.fetch_add(bytes, Ordering::Relaxed);
        }
        fn add_received(&self, bytes: u64) {
            self.received.fetch_add(bytes, Ordering::Relaxed);
        }
        fn revoked(&mut self, reason: &str) {
            *self.revoked.lock().unwrap() = Some(reason.to_owned());
        }
    }

    #[tokio::test]
    async fn counts_both_directions_and_reports_why_a_revoked_stream_ended() {
        let registry = ConnectionRegistry::<&'static str, ()>::default();
        let counted = Arc::new(Counted::default());
        let (upstream, mut app) = tokio::io::duplex(1024);
        let mut stream =
            MeteredStream::new(upstream, counted.clone(), registry.register("pod", ()));
        stream.write_all(b"request").await.unwrap();
        app.write_all(b"a longer response").await.unwrap();
        let mut response = [0u8; 17];
        stream.read_exact(&mut response).await.unwrap();
        assert_eq!(counted.received.load(Ordering::Relaxed), 7);
        assert_eq!(counted.sent.load(Ordering::Relaxed), 17);
        assert_eq!(
            registry.revoke_group(&"pod", "connection closed due to policy change"),
            1
        );
        assert!(
            stream.write_all(b"more").await.is_err(),
            "revoked streams fail"
        );
        assert_eq!(
            *counted.revoked.lock().unwrap(),
            None,
            "told once, when dropped"
        );
        drop(stream);
        assert_eq!(
            counted.revoked.lock().unwrap().as_deref(),
            Some("connection closed due to policy change")
        );
        assert!(registry.is_empty());
    }
}
