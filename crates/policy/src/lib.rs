//! Decisions without I/O: L4 authorization, L7 route matching and L7 authorization over plain
//! data, shared by the node agent, the waypoint and the controller. Nothing here touches a socket,
//! a clock or a random source: callers pass the random rolls in. Types are built from protobuf
//! elsewhere (`TryFrom` at the proxy boundary), name peers by `weft_identity::SpiffeId`, and follow
//! Istio's and Envoy's documented semantics;
//! each module says where it had to choose between readings.

mod decision;
mod error;
pub mod l4;
pub mod l7;
pub mod path;
pub mod request_auth;
pub mod route;
mod string_match;

pub use decision::{
    ACCESS_DENIED_BODY, ACCESS_DENIED_STATUS, Decision, DenyReason, PolicyAction, PolicyRef,
};
pub use error::{PathError, PolicyError};
pub use string_match::{FullRegex, StringMatch, WildcardMatch};
