//! The Envoy delta ADS protocol (`DeltaAggregatedResources`), both ends, generic over resources.
//!
//! This crate owns the stream mechanics: subscriptions (wildcard or by name), full state then
//! deltas, nonces, ACK/NACK, debouncing, scoping hooks, reconnects with backoff. A resource here
//! is only a type URL, a name, a version and packed bytes: this crate must not know what any
//! resource means. The controller fills a [`ResourceStore`] and serves it with
//! [`DeltaAdsServer`]; the node agent and the waypoint run a [`DeltaClient`] whose [`Handler`]s
//! turn resources into their own domain types.

pub mod backoff;
pub mod client;
mod cost;
pub mod metrics;
pub mod server;
pub mod store;

pub use backoff::Backoff;
pub use client::{
    ClientError, ConnectionState, DeltaClient, Demand, DemandError, Handler, MAX_DEMANDED_NAMES,
    MAX_WAITERS_PER_NAME, Target, TokenSource, Update,
};
pub use metrics::{NoMetrics, Rejection, StreamEvent, TypeCounts, XdsCounters, XdsMetrics};
pub use server::{
    Admission, AdsService, DeltaAdsServer, DeltaResponse, Exceeded, MAX_NAMES, MAX_TYPES,
    ProxyIdentity, Scope, SentResource, ServerConfig, StreamError, Unscoped,
};
pub use store::{
    AliasIndex, Audience, ChangeSummary, ResourceStore, Snapshot, SnapshotReader, StoredResource,
    TypeChange,
};

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
