//! Every way a proxied connection can fail, mapped in one place to the `response_flags` label
//! and the log line.

use std::{io, net::SocketAddr};

use weft_hbone::Refusal;
use weft_proxy_core::metrics::ResponseFlag;

use super::plan::{InboundRefusal, OutboundError};

/// Why the connections of a pod that left the mesh were closed.
pub(crate) const POD_LEFT: &str = "the pod left the mesh";

/// A proxied connection failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no original destination recorded for the connection from {0}")]
    NoOriginalDestination(SocketAddr),
    #[error("reading the original destination: {0}")]
    OriginalDestination(String),
    #[error("pod {0} is not known to the controller yet")]
    UnknownPod(String),
    #[error(transparent)]
    Plan(#[from] OutboundError),
    #[error(transparent)]
    Refused(#[from] InboundRefusal),
    /// The mutual-TLS side of an HBONE connection: certificate, handshake, peer identity.
    #[error(transparent)]
    Tls(#[from] weft_hbone::TlsError),
    /// `REGISTRY_ONLY` refused a destination the mesh does not know (Istio's
    /// `BlackHoleCluster`).
    #[error(
        "{0} is no known service, ServiceEntry or workload and the outbound traffic policy is REGISTRY_ONLY"
    )]
    BlackHole(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("hbone to {0}: {1}")]
    Hbone(SocketAddr, #[source] weft_hbone::ClientError),
    #[error("peer identity: {0}")]
    PeerIdentity(String),
    #[error("copying: {0}")]
    Copy(#[source] io::Error),
    /// Open while allowed, closed when a change of policy or workloads no longer allowed it
    /// (ztunnel's words).
    #[error("connection closed due to policy change: {0}")]
    PolicyChanged(String),
    #[error("connection closed: {POD_LEFT}")]
    PodLeft,
    /// Too many connections already wait for the destination to be fetched on demand.
    #[error(transparent)]
    Crowded(#[from] crate::state::Crowded),
}

impl ProxyError {
    /// The error of a connection revoked for `reason` (see `connections`).
    pub(crate) fn revoked(reason: &str) -> Self {
        if reason == POD_LEFT {
            Self::PodLeft
        } else {
            Self::PolicyChanged(reason.to_owned())
        }
    }

    /// The `response_flags` label value (ztunnel's vocabulary).
    pub fn response_flags(&self) -> ResponseFlag {
        match self {
            Self::Refused(InboundRefusal::Denied(_) | InboundRefusal::WaypointBypass { .. })
            | Self::PolicyChanged(_) => ResponseFlag::Denied,
            Self::Copy(_) | Self::PodLeft => ResponseFlag::None,
            // Envoy's `BlackHoleCluster` has no endpoint: `UH`, as Istio reports it.
            Self::BlackHole(_) => ResponseFlag::NoHealthyUpstream,
            _ => ResponseFlag::ConnectFailure,
        }
    }

    /// How an HBONE CONNECT this error refused is answered. A policy refusal is `401`, as
    /// ztunnel answers it, the `DENY` flag in the records saying why.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Refused(InboundRefusal::NotServedHere(_) | InboundRefusal::AgentPort(_)) => {
                Refusal::BadRequest
            }
            Self::Refused(InboundRefusal::Denied(_) | InboundRefusal::WaypointBypass { .. }) => {
                Refusal::PolicyDenied
            }
            _ => Refusal::UpstreamUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn each_refusal_is_answered_with_ztunnels_status_and_flag() {
        let target: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let cases = [
            (
                ProxyError::Refused(InboundRefusal::Denied("denied by shop/deny-all".into())),
                StatusCode::UNAUTHORIZED,
                ResponseFlag::Denied,
            ),
            (
                ProxyError::Refused(InboundRefusal::WaypointBypass {
                    peer: "spiffe://cluster.local/ns/shop/sa/client".into(),
                    waypoint: "spiffe://cluster.local/ns/shop/sa/waypoint".into(),
                }),
                StatusCode::UNAUTHORIZED,
                ResponseFlag::Denied,
            ),
            (
                ProxyError::Refused(InboundRefusal::NotServedHere(target)),
                StatusCode::BAD_REQUEST,
                ResponseFlag::ConnectFailure,
            ),
            (
                ProxyError::Refused(InboundRefusal::AgentPort(target)),
                StatusCode::BAD_REQUEST,
                ResponseFlag::ConnectFailure,
            ),
            (
                ProxyError::Connect(target, io::ErrorKind::ConnectionRefused.into()),
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::ConnectFailure,
            ),
            (
                ProxyError::UnknownPod("uid-1".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::ConnectFailure,
            ),
        ];
        for (error, status, flag) in cases {
            assert_eq!(error.refusal().status(), status, "{error}");
            assert_eq!(error.response_flags(), flag, "{error}");
        }
    }
}
