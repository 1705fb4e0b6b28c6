//! Socket options for the TCP connections that carry tunnels.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

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
