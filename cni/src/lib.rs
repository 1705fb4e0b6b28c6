//! The CNI side of a node, in the roles Istio's CNI component plays for ztunnel:
//!
//! - [`plugin`]: the `weft-cni` plugin the container runtime runs for every pod sandbox, chained
//!   after the node's network plugin. It decides from the pod's and its namespace's labels
//!   ([`decide`]) and, for a pod in the mesh, returns only once the node agent acknowledged it.
//! - [`daemon`]: the node daemon (`weft-cni-node`, a container of the node agent's DaemonSet).
//!   It holds the node's one enrollment connection to the agent (resending its snapshot when the
//!   agent restarts), serves the plugin's requests ([`protocol`]), and [`watch`]es pods and
//!   namespaces so that running pods join or leave the mesh when their namespace's label
//!   changes, finding their network namespace through `/proc` ([`netns`]).
//! - [`install`]: puts the plugin on the node (binary, configuration list entry, kubeconfig),
//!   keeps it there while the primary plugin rewrites its configuration, removes it on exit.
//!
//! This crate never captures traffic itself: that is the node agent's, over its enrollment API.

pub mod config;
pub mod daemon;
pub mod decide;
pub mod install;
pub mod kube;
pub mod netns;
pub mod plugin;
pub mod protocol;
pub mod spec;
pub mod watch;
