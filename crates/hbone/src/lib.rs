//! HBONE tunnels: HTTP/2 `CONNECT` over TLS 1.3 mutual TLS on port 15008, as Istio speaks it.
//! Owns the client, its connection pool, the server side, the byte copy between a tunnel and
//! a socket, and what an accepting side allows peers that have not authenticated yet
//! ([`admission`]); knows nothing of policy or config, and never creates sockets or TLS
//! configurations: callers hand in established TLS streams (or a connector producing them) and
//! decide, in a [`ConnectHandler`], which tunnels to accept. [`ConnectionRegistry`] and
//! [`Revocable`] let a proxy end established connections that its configuration no longer
//! allows; what allows them is the caller's decision.

pub mod admission;
mod client;
mod config;
mod copy;
mod pool;
mod request;
mod revoke;
mod server;
mod socket;
mod stream;

#[cfg(test)]
mod tests;

pub use client::{ClientError, connect};
pub use config::{
    DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_LIST_SIZE, DEFAULT_MAX_SEND_BUFFER, DEFAULT_STREAM_WINDOW, H2Config,
    HBONE_PORT,
};
pub use copy::{CopyDirection, CopyError, TunnelStats, copy_bidirectional};
pub use pool::{Connector, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Pool, PoolConfig};
pub use request::{BAGGAGE, ConnectRequest, TRACEPARENT};
pub use revoke::{ConnectionRegistry, Registration, Revocable, Revocation, Revoked};
pub use server::{ConnectHandler, ConnectionSummary, Refusal, ServerError, serve_connection};
pub use socket::{TLS_READ_BUFFER, read_buffered, tune_tcp};
pub use stream::HboneStream;
