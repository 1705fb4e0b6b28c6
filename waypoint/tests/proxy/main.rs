//! Tests through the real proxy: HBONE client -> waypoint (TLS 1.3, HTTP/2 CONNECT) -> HTTP
//! inside the tunnel -> HBONE to fake endpoints with their own certificates. They use the
//! waypoint's public API and its `testing` fakes only.

mod harness;

mod access_log;

mod certificate;
mod configuration;
mod drain;
mod endpoint_weights;
mod hash_cookie;
mod hostile;
mod jwt;
mod live;
mod mesh_tls;
mod otlp_http;
mod outlier;
mod policy;
mod proxy_protocol;
mod resilience;
mod routing;
mod slow_start;
mod tcp;
mod tunneling;
mod upstream_protocol;
