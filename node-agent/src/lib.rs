//! The node agent: one per node. It loads and owns the eBPF programs that steer enrolled pods'
//! TCP connections (and DNS queries) into it, terminates those connections inside each pod's
//! network namespace, applies L4 policy and carries the bytes over HBONE mutual TLS; it answers
//! DNS for the mesh's names. It never parses application HTTP.
//! What it shares with the waypoint (certificates, admin server, configuration kit, Istio's
//! metric labels) is `weft-proxy-core`'s, the HBONE transport `weft-hbone`'s.

pub mod admin;
pub mod agent;
pub mod config;
pub mod dns;
pub mod dns_proxy;
pub mod ebpf;
/// The enrollment API (its own crate, shared with the CNI side).
pub use weft_enrollment as enrollment;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod pods;
pub mod proxy;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod xds;
