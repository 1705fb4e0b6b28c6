//! Istio's names and defaults that more than one Weft component reads: the labels and
//! annotations of the mesh ([`labels`], Istio's `istio.io/api` `label` and `annotation`
//! packages), the values istiod and Envoy apply when configuration is silent ([`defaults`]) and
//! the mesh's fixed ports ([`ports`]). The controller translates with them and the proxies
//! interpret what it sends with them, so each is declared once, with one type.
//!
//! Constants only: no dependencies, no logic, nothing that would make a crate that reads a
//! label depend on one that acts on it.

pub mod defaults;
pub mod labels;
pub mod ports;
