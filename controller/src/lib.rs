//! The controller: ingests Kubernetes and Istio configuration (from the API server or a local
//! directory), validates and translates it, pushes it to node agents and waypoints over delta ADS,
//! and is the mesh's certificate authority. It carries no application traffic.
//!
//! This crate holds the configuration model ([`model`]: Istio's API types and the Kubernetes kinds
//! the mesh reads), the YAML [`loader`], the semantic [`validation`] that follows Istio's rules,
//! the [`crd`] definitions generated from the model, the [`index`] of valid configuration that
//! [`source`]s feed (a watched local directory), and the pure [`translate`] functions that turn
//! an index snapshot into the resources node agents and waypoints receive. Only the sources
//! perform I/O (filesystem); translation never does.

pub mod crd;
pub mod index;
pub mod loader;
pub mod model;
pub mod source;
pub mod translate;
pub mod validation;
