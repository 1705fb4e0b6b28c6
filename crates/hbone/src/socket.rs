//! The sockets HBONE runs on: where they are created (a [`SocketFactory`], ztunnel's model),
//! their options, and the read buffer under TLS.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::io::BufReader;
use tokio::net::{TcpSocket, TcpStream};

/// Creates the sockets a proxy connects and listens with, where they must live: the node
/// agent's are created inside a pod's network namespace (so that they carry the pod's address
/// and its listeners receive what is sent to the pod), the waypoint's in its own.
pub trait SocketFactory: Send + Sync {
    /// A TCP socket of `target`'s address family, to connect to `target`.
    fn new_tcp(&self, target: SocketAddr) -> io::Result<TcpSocket>;

    /// A non-blocking listening socket bound to `address`, in an `SO_REUSEPORT` group with the
    /// others of the same address when `reuse_port`.
    fn listen(&self, address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener>;
}

/// Sockets in the process's own network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainSocketFactory;

impl SocketFactory for PlainSocketFactory {
    fn new_tcp(&self, target: SocketAddr) -> io::Result<TcpSocket> {
        new_tcp_socket(target)
    }

    fn listen(&self, address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
        listen_socket(address, reuse_port)
    }
}

/// A TCP socket for `target`'s address family, in the calling thread's network namespace.
pub fn new_tcp_socket(target: SocketAddr) -> io::Result<TcpSocket> {
    if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// Listen backlog: connection bursts must not be refused by the kernel.
const BACKLOG: i32 = 1024;

/// A non-blocking listener bound to `address`, in the calling thread's network namespace.
pub fn listen_socket(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Connects to `target` from a socket `sockets` creates, tuned as [`tune_tcp`] says.
pub async fn connect(sockets: &dyn SocketFactory, target: SocketAddr) -> io::Result<TcpStream> {
    let stream = sockets.new_tcp(target)?.connect(target).await?;
    tune_tcp(&stream)?;
    Ok(stream)
}

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
pub fn tune_tcp(stream: &TcpStream) -> io::Result<()> {
    tune_tcp_with(stream, &Keepalive::default())
}

/// TCP keepalive as a DestinationRule's `connectionPool.tcp.tcpKeepalive` sets it on upstream
/// connections (Envoy's `upstream_connection_options.tcp_keepalive`): each field given replaces
/// the default (idle time [`KEEPALIVE_IDLE`], the kernel's interval and probe count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`).
    pub time: Option<Duration>,
    /// Between probes (`TCP_KEEPINTVL`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub probes: Option<u32>,
}

/// [`tune_tcp`] with `keepalive`'s settings. The kernel counts in whole seconds: a time or
/// interval is rounded up to one (Envoy's fields are seconds too).
pub fn tune_tcp_with(stream: &TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let seconds =
        |d: Duration| Duration::from_secs((d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1));
    let mut settings =
        TcpKeepalive::new().with_time(keepalive.time.map_or(KEEPALIVE_IDLE, seconds));
    if let Some(interval) = keepalive.interval {
        settings = settings.with_interval(seconds(interval));
    }
    if let Some(probes) = keepalive.probes.filter(|p| *p > 0) {
        settings = settings.with_retries(probes);
    }
    SockRef::from(stream).set_tcp_keepalive(&settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options read back from a connected socket are the ones asked for.
    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let read = |stream: &TcpStream| {
            let socket = SockRef::from(stream);
            (
                socket.keepalive().unwrap(),
                socket.tcp_keepalive_time().unwrap(),
                socket.tcp_keepalive_interval().unwrap(),
                socket.tcp_keepalive_retries().unwrap(),
            )
        };
        tune_tcp(&stream).unwrap();
        let (on, time, default_interval, default_probes) = read(&stream);
        assert!(on);
        assert_eq!(time, KEEPALIVE_IDLE);
        tune_tcp_with(
            &stream,
            &Keepalive {
                time: Some(Duration::from_secs(45)),
                interval: Some(Duration::from_millis(2500)),
                probes: Some(4),
            },
        )
        .unwrap();
        assert_eq!(
            read(&stream),
            (true, Duration::from_secs(45), Duration::from_secs(3), 4)
        );
        assert_ne!(
            (default_interval, default_probes),
            (Duration::from_secs(3), 4),
            "the kernel's defaults differ from what was set"
        );
        // Only the time given: the interval and probes stay as they were.
        let fresh = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_tcp_with(
            &fresh,
            &Keepalive {
                time: Some(Duration::from_millis(10)),
                ..Keepalive::default()
            },
        )
        .unwrap();
        assert_eq!(
            read(&fresh),
            (
                true,
                Duration::from_secs(1),
                default_interval,
                default_probes
            )
        );
    }
}
