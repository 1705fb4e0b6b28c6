//! Producers of configuration for the [`crate::index`]: each reads from somewhere (a local
//! directory; the Kubernetes API elsewhere) and writes through the index's one mutator.

pub mod file;
