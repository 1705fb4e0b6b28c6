//! How long a connection has carried nothing: the bytes it read or wrote, stamped on a shared
//! clock, so that the HTTP server's loop can close a connection idle for its limit (Envoy's
//! `idle_timeout`, one hour by default, the HTTP connection manager's and so the one of Istio's
//! gateways and waypoints). Counting bytes rather than requests is never stricter than Envoy:
//! a request that carries nothing for that long would have been ended by Envoy's five-minute
//! `stream_idle_timeout` already.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last carried a byte.
#[derive(Debug, Clone)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte.
    last: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// When the connection will have been idle for `limit`, if nothing moves until then.
    pub fn deadline(&self, limit: Duration) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed)) + limit
    }

    /// Whether nothing moved for `limit`.
    pub fn idle_for(&self, limit: Duration) -> bool {
        Instant::now() >= self.deadline(limit)
    }

    /// `io`, stamping this clock whenever it reads or writes a byte.
    pub fn watch<T>(&self, io: T) -> ActivityIo<T> {
        ActivityIo {
            inner: io,
            activity: self.clone(),
        }
    }
}

/// An I/O whose bytes stamp an [`Activity`].
#[derive(Debug)]
pub struct ActivityIo<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_either_way_push_the_deadline() {
        let limit = Duration::from_secs(3600);
        let activity = Activity::default();
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = activity.watch(near);
        let first = activity.deadline(limit);
        assert!(!activity.idle_for(limit));
        assert!(activity.idle_for(Duration::ZERO));

        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(activity.deadline(limit), first, "time alone moves nothing");
        far.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        let after_read = activity.deadline(limit);
        assert!(
            after_read >= first + Duration::from_millis(20),
            "a read is activity"
        );

        tokio::time::sleep(Duration::from_millis(20)).await;
        io.write_all(b"pong").await.unwrap();
        assert!(
            activity.deadline(limit) >= after_read + Duration::from_millis(20),
            "a write is activity"
        );
    }
}
