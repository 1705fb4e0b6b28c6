//! The controller: ingests Kubernetes and Istio configuration (from the API server or a local
//! directory), validates and translates it, pushes it to node agents and waypoints over delta ADS,
//! and is the mesh's certificate authority. It carries no application traffic.
//!
//! This crate holds the configuration model ([`model`]: Istio's API types and the Kubernetes kinds
//! the mesh reads), the YAML [`loader`], the semantic [`validation`] that follows Istio's rules,
//! the [`crd`] definitions generated from the model, the [`index`] of valid resources and the
//! [`translate`]ion into what node agents and waypoints consume. None of these perform network
//! I/O; [`push`] (what each proxy receives), [`server`], [`source`], [`ca`], [`tls`] and [`webhook`]
//! (the validating admission webhook) do; [`syncz`] is what each proxy was sent and answered; [`analysis`] is `istioctl analyze`'s cross-resource
//! checks; [`console`] is the service-graph console (traffic from Prometheus, configuration from
//! the index); [`mesh_config`] follows the mesh configuration file (Istio's `MeshConfig`).

pub mod analysis;
pub mod ca;
pub mod console;
pub mod crd;
pub mod index;
pub mod jwks;
pub mod loader;
pub mod mesh_config;
pub mod model;
pub mod monitoring;
pub mod push;
pub mod server;
pub mod source;
pub mod syncz;
pub mod tls;
pub mod translate;
pub mod validation;
pub mod webhook;
