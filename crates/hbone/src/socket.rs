//! Socket options for the TCP connections that carry tunnels.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// Read buffer under the TLS layer of an HBONE connection.
pub const TLS_READ_BUFFER: usize = 64 * 1024;

/// A TCP socket to put under TLS, with a read buffer of [`TLS_READ_BUFFER`] bytes.
///
/// rustls reads ciphertext at most 4 KiB beyond what it holds (and its buffer shrinks back to
/// 4 KiB whenever it has consumed every record), so on a bulk transfer the receiving side made
/// about sixteen `recvfrom` calls per 64 KiB. With this buffer one call fetches whatever the
/// socket holds, up to 64 KiB, and rustls's small reads are served from memory. Writes pass
/// straight through.
pub fn read_buffered(stream: TcpStream) -> BufReader<TcpStream> {
    BufReader::with_capacity(TLS_READ_BUFFER, stream)
}

/// Keepalive probes start after this much silence, so dead peers are noticed on idle tunnels.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(180);

/// Tunes a TCP socket that carries HBONE or a tunnel's upstream: `TCP_NODELAY` (tunnels carry
/// interactive protocols, and h2 already writes in large batches, so Nagle only adds latency)
/// and TCP keepalive.
///
/// The pool and server never create sockets; callers apply this to the sockets they create.
pub fn tune_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(KEEPALIVE_IDLE))
}
