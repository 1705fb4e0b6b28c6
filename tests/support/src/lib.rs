//! What the workspace's tests share, so that each exists once: a fake Istio CA served over gRPC
//! ([`ca`]), a capture of what `tracing` logs ([`logs`]), a reader of Prometheus text
//! ([`prometheus`]) and temporary directories removed when dropped ([`temp`]).
//!
//! It depends on the mesh's lower crates only (identity, protocol), never on a proxy or the
//! controller, so that any crate's own unit tests can use it; it is never linked into a binary
//! that ships.

pub mod ca;
pub mod logs;
pub mod prometheus;
pub mod temp;
