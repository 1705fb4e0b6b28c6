//! The data path: per-pod listeners inside each enrolled pod's network namespace, the outbound
//! (15001) and inbound (15006 plaintext, 15008 HBONE) proxies, and the plans they execute.
//!
//! Listeners stay thin: accept, hand the connection to a task, move on. Decisions live in
//! [`plan`] (pure functions over the store); the handlers (`outbound`, `inbound`) only execute
//! them, over the HBONE transport of `weft-hbone` with sockets made inside the pods. The
//! modules depend one way: `listeners` -> handlers -> `context`, `pool`, `served`,
//! `connections`, `record` -> `error`, `plan`.

mod connections;
mod context;
mod copy;
mod error;
mod inbound;
mod listeners;
mod outbound;
pub mod plan;
mod pool;
mod record;
mod served;

pub use context::ProxyContext;
pub use error::ProxyError;
pub use listeners::PodProxy;
pub use record::{ConnectionGuard, ConnectionLog};
pub use served::{ServedPod, ServedPods};
pub use weft_hbone::admission::ConnectionLimits;
pub use weft_workers::Workers;

/// How long a pod's connection (outbound from it, inbound to it) waits for the controller to
/// describe the pod before it is refused, failing closed: the gap between a pod's enrollment
/// and its workload's arrival (a new pod, or the next agent of a rolling update before its
/// first configuration). The inbound listeners bound connections per client address, so an
/// unauthenticated peer holds at most those for this long.
const WAIT_FOR_WORKLOAD: std::time::Duration = std::time::Duration::from_secs(5);
