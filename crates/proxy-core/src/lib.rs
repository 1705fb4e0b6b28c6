//! What the node agent and the waypoint run besides their data path, once for both (the role
//! linkerd's `app-core` plays under its proxies): the certificate manager ([`certificates`]),
//! the admin, metrics and readiness server ([`admin`], which the controller's monitoring port
//! uses too), the configuration kit ([`config`]), the way to the controller ([`controller`]), endpoint names resolved ([`dns`]), graceful shutdown ([`drain`]) and Istio's metric labels with the
//! per-connection TCP record ([`metrics`]).
//!
//! It owns no traffic: it never decides routing or policy, never parses an application's
//! bytes, never loads eBPF; the HBONE transport is `weft-hbone`'s, decisions are
//! `weft-policy`'s, and each proxy keeps its own data path.

pub mod admin;
pub mod certificates;
pub mod config;
pub mod controller;
pub mod dns;
pub mod drain;
pub mod metrics;
