//! Generated protobuf and gRPC code for the mesh's wire protocols: the delta ADS stream, Istio's
//! workload and authorization resources, the certificate service and the waypoint's L7 resource;
//! and the container runtime's CRI, which the test harness speaks as the kubelet does.
//! This crate holds generated code only, plus the names it is spoken with on the wire (type URLs,
//! the certificate service's metadata keys);
//! domain types, validation and any other logic live with their users (`TryFrom<proto::X>`).
//!
//! The `.proto` files under `proto/` are written from the public interface definitions of Envoy
//! and Istio, with the same packages, field names and field numbers, so a real ztunnel or istiod
//! can talk to the mesh. Every message implements [`prost::Name`], so
//! `prost_types::Any::from_msg(&address)` packs it under the type URL ztunnel expects.
//!
//! Modules follow the protobuf packages, with three shorter names: [`istio::ca`] for
//! `istio.v1.auth`, [`waypoint`] for `weft.waypoint.v1` and [`cri`] for `runtime.v1`.

/// Envoy's xDS API, reduced to what the delta ADS stream and the gRPC access-log service use.
pub mod envoy {
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`: the node identity sent on the discovery stream.
            #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }

    /// `envoy.data.*`
    pub mod data {
        /// `envoy.data.accesslog.*`
        pub mod accesslog {
            /// `envoy.data.accesslog.v3`: the HTTP and TCP entries sent to a gRPC access-log
            /// service.
            #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.data.accesslog.v3.rs"));
            }
        }
    }

    /// `envoy.extensions.*`
    pub mod extensions {
        /// `envoy.extensions.transport_sockets.*`
        pub mod transport_sockets {
            /// `envoy.extensions.transport_sockets.tls.*`
            pub mod tls {
                /// `envoy.extensions.transport_sockets.tls.v3`: SDS `Secret` resources, the
                /// gateways' credentials.
                #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
                pub mod v3 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.extensions.transport_sockets.tls.v3.rs"
                    ));
                }
            }
        }
    }

    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.accesslog.*`
        pub mod accesslog {
            /// `envoy.service.accesslog.v3`: the `AccessLogService` stream client and server.
            #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.accesslog.v3.rs"));
            }
        }

        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: delta discovery messages and the
            /// `AggregatedDiscoveryService` client and server.
            #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

/// Google's shared API types.
pub mod google {
    /// `google.rpc`: the status carried in a NACK.
    #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// Istio's ambient data plane APIs.
pub mod istio {
    /// `istio.workload`: workloads and services, served as `Address` resources.
    #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }

    /// `istio.security`: L4 authorization policies, served as `Authorization` resources.
    #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }

    /// `istio.v1.*`
    pub mod v1 {
        /// `istio.v1.auth`: the certificate signing service.
        #[allow(clippy::all, clippy::pedantic, rustdoc::all)]
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }

    /// `istio.v1.auth` under a shorter name, with the request metadata the certificate
    /// service reads (keys on the wire, like the type URLs below).
    pub mod ca {
        pub use super::v1::auth::*;

        /// The caller's node name, which the controller checks against the caller's credential.
        pub const NODE_HEADER: &str = "x-weft-node";
        /// Istio's header naming the caller's cluster (what ztunnel sends).
        pub const CLUSTER_ID_HEADER: &str = "clusterid";
        /// Istio's request metadata key (in `IstioCertificateRequest.metadata`) naming the
        /// identity asked for (what ztunnel sends).
        pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

        impl IstioCertificateRequest {
            /// The identity asked for in the [`IMPERSONATED_IDENTITY`] metadata, when set to a
            /// string.
            pub fn impersonated_identity(&self) -> Option<&str> {
                let value = self.metadata.as_ref()?.fields.get(IMPERSONATED_IDENTITY)?;
                match &value.kind {
                    Some(prost_types::value::Kind::StringValue(text)) => Some(text),
                    _ => None,
                }
            }
        }
    }
}

/// `weft.waypoint.v1`: the waypoint's compiled L7 configuration, served as `WaypointConfig`
/// resources.
#[allow(clippy::all, clippy::pedantic, rustdoc::all)]
pub mod waypoint {
    include!(concat!(env!("OUT_DIR"), "/weft.waypoint.v1.rs"));
}

/// `weft.mesh.v1`: the mesh-wide settings node agents apply, served as one `MeshConfig`
/// resource named [`MESH_CONFIG_NAME`].
#[allow(clippy::all, clippy::pedantic, rustdoc::all)]
pub mod mesh {
    include!(concat!(env!("OUT_DIR"), "/weft.mesh.v1.rs"));
}

/// `weft.sample.v1`: the sample application's gRPC echo service.
pub mod sample {
    include!(concat!(env!("OUT_DIR"), "/weft.sample.v1.rs"));
}

/// `runtime.v1`: the subset of the Kubernetes Container Runtime Interface the test harness
/// drives containerd with, as the kubelet does.
#[allow(clippy::all, clippy::pedantic, rustdoc::all)]
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

/// Type URL of `istio.workload.Address` resources (workloads and services) on the ADS stream.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// An address as `istio.workload` carries it (4 or 16 bytes); `None` for any other length.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The name an on-demand proxy subscribes to whatever is at `ip` by: istiod's
/// `<network>/<ip>`. The workload at that address, or the service whose VIP it is together
/// with the service's endpoints, go by it.
pub fn address_subscription(network: &str, ip: std::net::IpAddr) -> String {
    format!("{network}/{ip}")
}

/// The name an on-demand node agent subscribes to the workloads of its node by
/// (`node:<name>`; istiod sends an on-demand ztunnel its node's workloads unasked, from the
/// node its stream names). No workload uid or `namespace/hostname` has this form.
pub fn node_subscription(node: &str) -> String {
    format!("node:{node}")
}

/// The name an on-demand node agent subscribes to a service by its hostname alone
/// (`host:<hostname>`), whatever its namespace: its DNS proxy asked for a name such as a
/// ServiceEntry host, whose namespace the query does not tell (a Kubernetes Service's name
/// does: it asks istiod's `namespace/hostname` for that). The service and its endpoints go
/// by it. No `<network>/<ip>`, workload uid or `namespace/hostname` has this form.
pub fn hostname_subscription(hostname: &str) -> String {
    format!("host:{hostname}")
}

/// Type URL of `istio.security.Authorization` resources (L4 policies) on the ADS stream.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of Envoy's SDS `Secret` resources: gateway credentials, named as istiod names them
/// (`kubernetes://<namespace>/<name>` for an Istio Gateway's `credentialName`,
/// `kubernetes-gateway://<namespace>/<name>` for a Gateway API listener's `certificateRefs`; a
/// `-cacert` suffix for the CA that verifies MUTUAL clients).
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Type URL of `weft.waypoint.v1.WaypointConfig` resources (waypoint L7 configuration).
pub const WAYPOINT_CONFIG_TYPE_URL: &str = "type.googleapis.com/weft.waypoint.v1.WaypointConfig";

/// Type URL of `weft.mesh.v1.MeshConfig`, the mesh-wide settings node agents apply.
pub const MESH_CONFIG_TYPE_URL: &str = "type.googleapis.com/weft.mesh.v1.MeshConfig";

/// The name of the one `MeshConfig` resource.
pub const MESH_CONFIG_NAME: &str = "mesh";

/// Type URL of `weft.waypoint.v1.SourceWorkload` resources: the mesh's workloads as request
/// sources, one resource per address, for every waypoint.
pub const SOURCE_WORKLOAD_TYPE_URL: &str = "type.googleapis.com/weft.waypoint.v1.SourceWorkload";

#[cfg(test)]
mod tests;
