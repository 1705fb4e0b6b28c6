//! Byte copying between two TCP sockets, with reused per-direction buffers sized for bulk
//! transfers, and half-close carried across.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Per-direction buffer: large enough for bulk throughput, allocated once per connection.
const BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides are done; returns (a -> b, b -> a) byte counts.
pub async fn tcp_both_ways<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let result = tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER, BUFFER).await;
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
    result
}
