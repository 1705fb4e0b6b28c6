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
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(KEEPALIVE_IDLE))
}
