//! HBONE tunnels: HTTP/2 `CONNECT` over TLS 1.3 mutual TLS on port 15008, as Istio speaks it,
//! the one transport of the node agent and the waypoint. Owns the mutual-TLS connections
//! ([`HboneDialer`], [`HboneAcceptor`]: certificates from a `CertificateSource`, the socket
//! options, the read buffer under TLS, the handshake timeout, the peer's identity and trust
//! domain), what an accepting side allows peers that have not authenticated yet
//! ([`admission`]), the client, its connection pool, the server side, the byte copy between a
//! tunnel and a socket, and the metered, revocable upstream stream ([`MeteredStream`]).
//!
//! It creates sockets only through a [`SocketFactory`] the caller hands in (the agent's makes
//! them inside a pod's network namespace), knows nothing of policy, configuration or metric
//! names, and decides nothing about tunnels: callers decide, in a [`ConnectHandler`], which to
//! accept, and which established connections a change no longer allows
//! ([`ConnectionRegistry`], [`Revocable`]).

pub mod admission;
mod client;
mod config;
mod copy;
mod metered;
mod pool;
mod request;
mod revoke;
mod server;
mod slot;
mod socket;
mod stream;
mod tls;

#[cfg(test)]
mod tests;

pub use client::{ClientError, connect};
pub use config::{
    DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_LIST_SIZE, DEFAULT_MAX_SEND_BUFFER, DEFAULT_STREAM_WINDOW, H2Config,
    HBONE_PORT,
};
pub use copy::{CopyDirection, CopyError, TunnelStats, copy_bidirectional};
pub use metered::{ByteMeter, MeteredClient, MeteredStream};
pub use pool::{Connector, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Pool, PoolConfig};
pub use request::{BAGGAGE, ConnectRequest, MalformedRequest, TRACEPARENT, parse_connect_request};
pub use revoke::{ConnectionRegistry, Registration, Revocable, Revocation, Revoked};
pub use server::{
    ConnectHandler, ConnectionSummary, Refusal, ServerError, serve_connection,
    serve_connection_until,
};
pub use socket::{
    Keepalive, PlainSocketFactory, SocketFactory, TLS_READ_BUFFER, connect as connect_tcp,
    listen_socket, new_tcp_socket, read_buffered, tune_tcp, tune_tcp_with,
};
pub use stream::HboneStream;
pub use tls::{Accepted, ClientTls, HboneAcceptor, HboneDialer, ServerTls, TlsError};
