//! The served pods' open connections, with what their authorization was decided on, and what
//! ends them: every change of the workload store (a policy, a workload, a waypoint) decides
//! each open inbound connection again with the checks a new connection gets, and closes the
//! ones they no longer allow, as ztunnel's policy watcher does; a pod that leaves the mesh
//! loses every connection it has, as ztunnel drains a removed pod's proxy at once.
//!
//! A closed connection is recorded like any other: `istio_tcp_connections_closed_total` with
//! `response_flags="DENY"` and an access-log line whose error says why.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use weft_hbone::{ConnectionRegistry, Revoked};
use weft_identity::SpiffeId;

use super::{error::ProxyError, plan::authorize_connection};
use crate::state::{Workload, WorkloadStore};

/// What a connection of a served pod was allowed on.
#[derive(Debug)]
pub(crate) enum Tracked {
    /// Into the pod (plaintext, one HBONE tunnel, or from a pod of this node): decided again
    /// by the pod's inbound rules on every change.
    Inbound {
        peer: Option<SpiffeId>,
        source_ip: IpAddr,
        target: SocketAddr,
    },
    /// An HBONE connection into the pod (its tunnels are tracked one by one), or a connection
    /// the pod opened: ends only when the pod leaves the mesh.
    Carrier,
}

/// Open connections by served pod (uid).
pub(crate) type PodConnections = ConnectionRegistry<String, Tracked>;
/// One connection's place in [`PodConnections`].
pub(crate) type PodRegistration = weft_hbone::Registration<String, Tracked>;

/// Decides every open inbound connection again against the store and closes those it no
/// longer allows; returns how many it closed.
pub(crate) fn revalidate(store: &WorkloadStore, connections: &PodConnections) -> usize {
    // Connections come grouped by pod: look each pod up once.
    let mut pod: Option<(String, Option<Arc<Workload>>)> = None;
    connections.revoke_where(|uid, tracked| {
        let Tracked::Inbound {
            peer,
            source_ip,
            target,
        } = tracked
        else {
            return None;
        };
        if pod.as_ref().is_none_or(|(known, _)| known != uid) {
            pod = Some((uid.clone(), store.workload_by_uid(uid)));
        }
        let Some(workload) = pod.as_ref().and_then(|(_, w)| w.as_ref()) else {
            return Some(ProxyError::UnknownPod(uid.clone()).to_string());
        };
        let refusal =
            authorize_connection(store, workload, peer.as_ref(), *source_ip, *target).err()?;
        tracing::info!(
            pod = %uid,
            peer = peer.as_ref().map_or_else(|| "plaintext".to_owned(), ToString::to_string),
            src = %source_ip,
            dst = %target,
            reason = %refusal,
            "connection closed: no longer allowed after a policy update"
        );
        Some(refusal.to_string())
    })
}

/// The error of a copy that failed: the connection's revocation when it was revoked (the
/// stream failed because of it), else the copy's own.
pub(crate) fn copy_error(error: io::Error) -> ProxyError {
    match error.get_ref().and_then(|e| e.downcast_ref::<Revoked>()) {
        Some(revoked) => ProxyError::revoked(&revoked.0),
        None => ProxyError::Copy(error),
    }
}
